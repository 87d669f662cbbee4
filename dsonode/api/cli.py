"""Commands: `dsonode run` (serve retrieval) and the socket clients `search`, `add`, `stats`.

The client commands find the node through `--data-dir` (default $DSONODE_DATA_DIR or
~/.dsonode) or an explicit `--socket`, and fail with a clear message when no node runs there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from dsonode.api.cliargs import add_data_dir_arg, add_node_args, node_client
from dsonode.argtypes import bounded_float, bounded_int
from dsonode.core.attacks import ATTACKS


def _add_client_args(p: argparse.ArgumentParser) -> None:
    add_node_args(p, timeout=60.0)
    p.add_argument("--json", action="store_true", help="print the raw JSON result")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a node (serves the retrieval socket; joins the network with --listen/--config)",
        description="Run a node: opens the store in DATA_DIR, loads the embedding model, and "
        "serves JSON-RPC on DATA_DIR/dsonode.sock until SIGTERM or Ctrl-C. With --config F the "
        "settings come from the TOML file F (plus DSONODE_<SECTION>_<KEY> environment "
        "overrides); flags given explicitly override both.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config (see `dsonode init`, `dsonode config check`)",
    )
    add_data_dir_arg(p)
    # Defaults are None so that an explicit flag can be told apart from the file's value;
    # RUN_DEFAULTS fills what neither gives.
    p.add_argument("--encoder", default=None, help="local Hugging Face encoder folder")
    p.add_argument("--head", default=None, help="trained head (.safetensors); default: seeded")
    p.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--threads", type=bounded_int(1), default=None, help="torch CPU threads")
    p.add_argument(
        "--max-connections",
        type=bounded_int(1),
        default=None,
        help="open socket connections (default 64)",
    )
    p.add_argument(
        "--idle-timeout",
        type=bounded_float(0, open_low=True),
        default=None,
        help="seconds before an idle connection is closed (default 300)",
    )
    p.add_argument(
        "--listen",
        default=None,
        help="join the network: libp2p listen address, e.g. /ip4/127.0.0.2/tcp/4001",
    )
    p.add_argument(
        "--peer",
        action="append",
        default=None,
        help="a peer to dial, /ip4/IP/tcp/PORT/p2p/PEER_ID (repeat; needs --listen; replaces "
        "the config's net.bootstrap)",
    )
    p.add_argument(
        "--byzantine-attack",
        default=None,
        choices=list(ATTACKS),
        help="TESTNET ONLY: poison this node's own submissions (to test the median)",
    )
    p.add_argument(
        "--attack-scale",
        type=bounded_float(0, 100),
        default=None,
        help="TESTNET ONLY: strength of the attack (default 1.0)",
    )
    p.add_argument(
        "--committee",
        type=_committee,
        default=None,
        help='expected submitters per experience (1..1000), or "all" (default 7)',
    )
    p.add_argument(
        "--sync-interval",
        type=bounded_float(1, 86_400),
        default=None,
        help="seconds between catch-up pulls from each peer (default 60)",
    )
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default=None, choices=["text", "json"], help="stderr format")
    p.add_argument("--metrics-listen", default=None, help="serve Prometheus metrics, HOST:PORT")
    p.add_argument(
        "--metrics-allow-non-loopback",
        action="store_true",
        default=None,
        help="let --metrics-listen be a non-loopback address",
    )
    p.add_argument(
        "--gateway-listen",
        default=None,
        help="serve the HTTP gateway (embeddings, rerank) on HOST:PORT; token from the "
        "config's [gateway] token or $DSONODE_GATEWAY_TOKEN (required beyond loopback)",
    )
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("search", help="search the running node's experiences")
    p.add_argument("query", help="what to look for (free text)")
    p.add_argument("-k", type=bounded_int(1), default=5, help="results (1..100, default 5)")
    p.add_argument("--domain", default=None, help="only this domain")
    p.add_argument("--min-score", type=float, default=None, help="drop results below it")
    p.add_argument("--confirmed-only", action="store_true", help="only confirmed consensus")
    _add_client_args(p)
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("add", help="add an experience (signed by the node) to the node")
    p.add_argument("text", help="the lesson, at most 1,024 bytes of UTF-8")
    p.add_argument("--domain", required=True, help="its domain, e.g. math")
    p.add_argument("--tags", default="", help="comma-separated tags, e.g. algebra,proofs")
    _add_client_args(p)
    p.set_defaults(func=cmd_add)

    p = subparsers.add_parser("stats", help="counts and state of the running node")
    _add_client_args(p)
    p.set_defaults(func=cmd_stats)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _committee(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be 1..1000 or "all", got {text!r}') from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f'must be 1..1000 or "all", got {value}')
    return value


#: What `dsonode run` uses for a setting that neither a flag nor --config gives.
RUN_DEFAULTS = {"device": "auto", "max_connections": 64, "idle_timeout": 300.0}


def run_config(args: argparse.Namespace) -> Any:
    """The NodeConfig of `dsonode run`: --config F (with environment overrides) if given,
    else the defaults; then every flag given explicitly. Raises ConfigError/DaemonError/
    NodeError (DsoError: a clean message, exit 2) before anything heavy is loaded."""
    import dataclasses

    from dsonode.node import SOCKET_NAME, NodeConfig, NodeError, daemon_config, default_data_dir

    flags: dict[str, Any] = {
        "encoder": args.encoder,
        "head": args.head,
        "device": args.device,
        "threads": args.threads,
        "max_connections": args.max_connections,
        "idle_timeout": args.idle_timeout,
        "listen": args.listen,
        "peers": tuple(args.peer) if args.peer is not None else None,
        "byzantine_attack": args.byzantine_attack,
        "attack_scale": args.attack_scale,
        "sync_interval_s": args.sync_interval,
        "committee": args.committee,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "metrics_listen": args.metrics_listen,
        "metrics_allow_non_loopback": args.metrics_allow_non_loopback,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if given.get("committee") == "all":
        given["committee"] = None  # NodeConfig's spelling of "everyone submits"
    if args.config is not None:
        from dsonode.config.loader import load_config

        loaded = load_config(args.config)
        base = loaded.node_config()
        if args.data_dir is not None:
            given["data_dir"] = args.data_dir
            if loaded.api.socket == loaded.node.data_dir / SOCKET_NAME:
                given["socket"] = None  # the default socket moves with the data directory
    else:
        base = NodeConfig(data_dir=args.data_dir or default_data_dir())
        given = {**{k: v for k, v in RUN_DEFAULTS.items() if k not in given}, **given}
    config = dataclasses.replace(base, **given)
    if args.gateway_listen is not None:  # on, at this address (other settings: config's)
        from dsonode.gateway.config import GatewayConfig, parse_listen

        host, port = parse_listen(args.gateway_listen)
        gateway = config.gateway or GatewayConfig.from_mapping({})
        gateway = dataclasses.replace(gateway, host=host, port=port)
        gateway.validate()
        config = dataclasses.replace(config, gateway=gateway)
    if config.listen is None and (config.peers or config.byzantine_attack):
        raise NodeError("--peer and --byzantine-attack need --listen (or net.enabled)")
    if config.listen is not None:  # bad addresses stop the node before the model loads
        daemon_config(config)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from dsonode.node import run_node

    config = run_config(args)
    logging.basicConfig(
        level=getattr(logging, config.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run_node(config)


def cmd_search(args: argparse.Namespace) -> int:
    with node_client(args) as client:
        result = client.call(
            "search",
            {
                k: v
                for k, v in {
                    "query": args.query,
                    "k": args.k,
                    "domain": args.domain,
                    "min_score": args.min_score,
                    "confirmed_only": args.confirmed_only or None,
                }.items()
                if v is not None
            },
        )
    if args.json:
        _print_json(result)
        return 0
    hits = result["results"]
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        flag = "confirmed" if hit["confirmed"] else f"{hit['submissions']} submission(s)"
        tags = f" [{', '.join(hit['tags'])}]" if hit["tags"] else ""
        print(f"{rank:>3}. {hit['score']:.4f}  {hit['domain']}{tags}  ({flag})  {hit['id'][:12]}")
        print(f"     {hit['text']}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    with node_client(args) as client:
        result = client.add_experience(args.text, args.domain, tags)
    if args.json:
        _print_json(result)
    else:
        state = "added" if result.get("new") else "already known"
        print(f"{state}: {result['id']} ({result['domain']})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with node_client(args) as client:
        result = client.stats()
    if args.json:
        _print_json(result)
        return 0
    store = result.get("store", {})
    print(f"version      {result['version']}  (up {result['uptime_s']:.0f} s)")
    print(f"model        {result['model']}  ({result['dim']}-d)")
    print(f"space        {result['space_id']}")
    print(f"author       {result['author']}")
    print(f"indexed      {result['indexed']}")
    for name, count in store.items():
        print(f"store.{name:<8}{count}" if len(name) < 8 else f"store.{name} {count}")
    conns = result.get("connections", {})
    print(
        f"connections  {conns.get('open', 0)} open, {conns.get('served', 0)} served, "
        f"{conns.get('requests', 0)} requests, {conns.get('errors', 0)} errors"
    )
    return 0
