"""`dsonode gateway --listen 127.0.0.1:8080 [--token ...]`: serve the HTTP gateway on its own."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial
from pathlib import Path

from dsonode.argtypes import SubParsers
from dsonode.embed.defaults import DEFAULT_DEVICE
from dsonode.gateway.config import (
    MAX_TOKEN_CHARS,
    TOKEN_ENV,
    GatewayConfig,
    GatewayError,
    parse_listen,
    token_from_env,
)


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="serve OpenAI-compatible /v1/embeddings and Cohere/Jina-style /v1/rerank over HTTP",
        description=(
            "Serve the node's embedding model over HTTP: POST /v1/embeddings (OpenAI shape), "
            "POST /v1/rerank (Cohere/Jina shape), GET /v1/models, GET /health. Listening beyond "
            f"loopback requires a bearer token (--token, --token-file or ${TOKEN_ENV})."
        ),
    )
    listen = f"{GatewayConfig.host}:{GatewayConfig.port}"  # defaults: GatewayConfig's fields
    p.add_argument("--listen", default=listen, help="HOST:PORT or [IPv6]:PORT (port 0 = any free)")
    p.add_argument(
        "--token", default=None, help=f"bearer token clients must send (or ${TOKEN_ENV})"
    )
    p.add_argument("--token-file", default=None, help="read the bearer token from this file")
    p.add_argument("--encoder", default=None, help="local Hugging Face encoder folder")
    p.add_argument("--head", default=None, help="trained head (.safetensors); default: seeded")
    p.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help=f"auto, cpu or cuda[:N] (default: {DEFAULT_DEVICE})",
    )
    p.add_argument("--threads", type=int, default=None, help="encoder intra-op threads")
    p.add_argument(
        "--embed-runtime",
        default="onnx",
        choices=["onnx", "torch"],
        help="onnx: the lean embedder (no torch; compiled once per machine; falls back to "
        "torch), torch: the torch embedder",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=GatewayConfig.max_batch_texts,
        help="max texts per encoder call",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=GatewayConfig.max_wait_ms,
        help="how long a batch waits to fill (ms)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=GatewayConfig.request_timeout_s,
        help="per-request timeout (seconds)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=GatewayConfig.max_body_bytes,
        help="request body limit (bytes)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_run_gateway)


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token is not None and args.token_file is not None:
        raise GatewayError("give either --token or --token-file, not both")
    if args.token_file is not None:
        path = Path(args.token_file)
        try:
            if path.stat().st_size > MAX_TOKEN_CHARS + 2:
                raise GatewayError(f"token file {path} is too large for a token")
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise GatewayError(f"cannot read token file {path}: {exc}") from None
        if not token:
            raise GatewayError(f"token file {path} is empty")
        return token
    if args.token is not None:
        return args.token
    return token_from_env()


def build_config(args: argparse.Namespace) -> GatewayConfig:
    host, port = parse_listen(args.listen)
    config = GatewayConfig(
        host=host,
        port=port,
        token=_read_token(args),
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.timeout,
        max_batch_texts=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    config.validate()  # before loading the model: a refused start should be quick
    return config


def _run_gateway(args: argparse.Namespace) -> int:
    config = build_config(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import trio

    from dsonode.embed.lean import load_model
    from dsonode.gateway.app import serve_gateway

    embedder = load_model(
        args.encoder, args.head, args.device, args.threads, args.embed_runtime, say=None
    )

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def shutdown_trigger() -> None:
                async for _ in signals:
                    return

            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    partial(serve_gateway, embedder, config, shutdown_trigger=shutdown_trigger)
                )
                # One machine-readable line on stdout (tests and benchmarks read the port).
                print(
                    f"dsonode gateway: listening on {url} model={embedder.model_name} "
                    f"space_id={embedder.space_id} auth={'on' if config.token else 'off'}",
                    flush=True,
                )

    trio.run(main)
    return 0
