"""The HTTP gateway: an OpenAI-compatible embeddings API and a Cohere/Jina-style rerank API.

Starlette app served by hypercorn's trio worker. Routes:
  POST /v1/embeddings          OpenAI shape (+ `encoding_format: "bitdelta"` extension)
  POST /v1/rerank, /v2/rerank  Cohere/Jina shape
  GET  /v1/models, /v1/models/{id}, /health

Everything the encoder does goes through one MicroBatcher (one worker thread owns the model);
rendering large responses also runs off the event loop. Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

`serve_gateway(embedder, config)` runs it inside an existing trio nursery:
    url = await nursery.start(serve_gateway, embedder, config)
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:  # hypercorn loads when the server starts (serve_gateway)
    from hypercorn.config import Config

from dsonode.gateway.batcher import BatcherClosed, MicroBatcher, Overloaded
from dsonode.gateway.config import GatewayConfig
from dsonode.gateway.schema import (
    ApiError,
    embeddings_response,
    matryoshka_prefix,
    parse_embeddings_request,
    parse_rerank_request,
    rerank_response,
)

log = logging.getLogger(__name__)

#: Bodies up to this many times the limit are read to the end (and dropped) before the 413.
DRAIN_FACTOR = 4


class EmbedderLike(Protocol):
    """What the gateway needs of `dsonode.embed.Embedder` (see notes/INTERFACES.md)."""

    model_name: str
    space_id: str
    dim: int

    def embed(
        self, texts: Any, dim: int | None = None, batch_size: int = 64, progress: Any = None
    ) -> np.ndarray: ...
    def count_tokens(self, texts: Any) -> list[int]: ...


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    return json_response(err.body(), status=err.status, headers=headers)


def _encode_bitdelta(vectors: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """(n, 964) uint8 BitDelta codes of full-dimension vectors against the space's reference."""
    from dsonode.core import bitdelta

    return np.asarray(bitdelta.encode(vectors, ref=reference), dtype=np.uint8).reshape(
        len(vectors), -1
    )


class Gateway:
    """The request handlers and their shared state (embedder, batcher, limits)."""

    def __init__(self, embedder: EmbedderLike, config: GatewayConfig, batcher: MicroBatcher):
        self.embedder = embedder
        self.config = config
        self.batcher = batcher
        self.created = int(time.time())
        self._token = config.token.encode() if config.token else None
        # Renders of big responses run in threads; bound how many at once.
        self._render_limiter = trio.CapacityLimiter(4)

    # -- plumbing ---------------------------------------------------------------------------

    def _check_auth(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not supplied:
            raise ApiError(
                401,
                "You didn't provide an API key. Send 'Authorization: Bearer <token>'.",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(supplied.strip().encode(), self._token):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _read_json(self, request: Request) -> Any:
        """The request body as parsed JSON, refusing bodies over the size limit (413)."""
        limit = self.config.max_body_bytes
        too_large = ApiError(
            413,
            f"the request body exceeds the limit of {limit} bytes",
            code="request_too_large",
        )
        # A client still sending when we answer may lose the answer to a TCP reset, so a body
        # somewhat over the limit is read and dropped first; a far larger one is cut off.
        drain_cap = DRAIN_FACTOR * limit
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise ApiError(400, "invalid Content-Length header", code="invalid_body")
            if int(declared) > drain_cap:
                raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                chunks.clear()
                if size > drain_cap:
                    raise too_large
                continue
            chunks.append(chunk)
        if size > limit:
            raise too_large
        raw = b"".join(chunks)
        if not raw:
            raise ApiError(
                400, "the request body is empty; send a JSON object", code="invalid_body"
            )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(
                400,
                f"We could not parse the JSON body of your request ({str(exc)[:120]}).",
                code="invalid_json",
            ) from None

    def endpoint(
        self, fn: Callable[[Request], Awaitable[Response]], *, auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler with auth, the per-request timeout and error rendering."""

        async def handler(request: Request) -> Response:
            try:
                if auth:
                    self._check_auth(request)
                with trio.move_on_after(self.config.request_timeout_s):
                    return await fn(request)
                raise ApiError(
                    504,
                    f"the request took longer than {self.config.request_timeout_s:g} s",
                    type="server_error",
                    code="timeout",
                )
            except ApiError as err:
                headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
                return error_response(err, headers)
            except Overloaded as exc:
                return error_response(
                    ApiError(
                        503,
                        f"the gateway is overloaded ({exc}); retry shortly",
                        type="server_error",
                        code="overloaded",
                    ),
                    {"Retry-After": "1"},
                )
            except BatcherClosed as exc:
                return error_response(
                    ApiError(503, str(exc), type="server_error", code="unavailable")
                )
            except ClientDisconnect:
                return Response(status_code=499)  # nobody is listening; nothing to say
            except Exception:
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return error_response(
                    ApiError(
                        500, "internal server error", type="server_error", code="internal_error"
                    )
                )

        return handler

    async def _render(self, fn: Callable[[], Any]) -> Response:
        body = await trio.to_thread.run_sync(fn, limiter=self._render_limiter)
        return Response(body, media_type="application/json")

    # -- handlers -------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        req = parse_embeddings_request(
            await self._read_json(request), self.embedder.model_name, self.config.limits
        )
        vectors, counts = await self.batcher.submit(req.texts)

        def render() -> bytes:
            vecs = matryoshka_prefix(vectors, req.dim)
            codes = None
            if req.encoding == "bitdelta":
                codes = _encode_bitdelta(vecs, getattr(self.embedder, "reference", None))
            obj = embeddings_response(
                vecs,
                counts,
                self.embedder.model_name,
                req.encoding,
                codes=codes,
                space_id=self.embedder.space_id,
            )
            return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

        return await self._render(render)

    async def rerank(self, request: Request) -> Response:
        req = parse_rerank_request(
            await self._read_json(request), self.embedder.model_name, self.config.limits
        )
        vectors, counts = await self.batcher.submit([req.query, *req.documents])
        obj = rerank_response(
            req,
            vectors[0],
            vectors[1:],
            counts,
            self.embedder.model_name,
            request_id=str(uuid.uuid4()),
        )
        return json_response(obj)

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.embedder.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "dsonode",
        }

    async def models(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if model_id != self.embedder.model_name:
            raise ApiError(
                404,
                f"The model `{model_id[:200]}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return json_response(self._model_card())

    async def health(self, request: Request) -> Response:
        return json_response(
            {
                "status": "ok",
                "model": self.embedder.model_name,
                "space_id": self.embedder.space_id,
                "dim": self.embedder.dim,
                "pending_texts": self.batcher.pending_texts,
                "batches": {
                    "count": self.batcher.stats.batches,
                    "texts": self.batcher.stats.texts,
                    "max_size": self.batcher.stats.max_batch_seen,
                },
            }
        )


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Router errors (unknown route, wrong method) in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path[:200]
    if exc.status_code == 404:
        err = ApiError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
    elif exc.status_code == 405:
        err = ApiError(405, f"Method {method} is not allowed on {path}.", code="method_not_allowed")
    else:
        err = ApiError(exc.status_code, str(exc.detail)[:200])
    return error_response(err, dict(exc.headers) if exc.headers else None)


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(
        ApiError(500, "internal server error", type="server_error", code="internal_error")
    )


def create_app(embedder: EmbedderLike, config: GatewayConfig, batcher: MicroBatcher) -> Starlette:
    gw = Gateway(embedder, config, batcher)
    routes = [
        Route("/v1/embeddings", gw.endpoint(gw.embeddings), methods=["POST"]),
        Route("/v1/rerank", gw.endpoint(gw.rerank), methods=["POST"]),
        Route("/v2/rerank", gw.endpoint(gw.rerank), methods=["POST"]),
        Route("/v1/models", gw.endpoint(gw.models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", gw.endpoint(gw.model), methods=["GET"]),
        Route("/health", gw.endpoint(gw.health, auth=False), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_exception, Exception: _server_error},
    )
    app.state.gateway = gw
    return app


def make_compute(
    embedder: EmbedderLike, batch_size: int
) -> Callable[[list[str]], tuple[np.ndarray, list[int]]]:
    """The batcher's compute step: full-dimension unit vectors and token counts."""

    def compute(texts: list[str]) -> tuple[np.ndarray, list[int]]:
        vectors = embedder.embed(texts, dim=None, batch_size=batch_size, progress=False)
        counts = [int(c) for c in embedder.count_tokens(texts)]
        return np.asarray(vectors, dtype=np.float32), counts

    return compute


def _hypercorn_config(config: GatewayConfig) -> Config:
    from hypercorn.config import Config

    hc = Config()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("dsonode.gateway.server")
    # Reads must outlive the slowest allowed request: the client is silent while it waits.
    hc.read_timeout = int(config.request_timeout_s) + 30
    hc.keep_alive_timeout = 30
    hc.graceful_timeout = 3
    hc.h11_max_incomplete_size = 16 * 1024  # request line + headers
    return hc


async def serve_gateway(
    embedder: EmbedderLike,
    config: GatewayConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    # See api/server.py serve_unix: libp2p's trio-typing stubs shadow trio's TaskStatus.
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Serve until cancelled (or `shutdown_trigger` returns). Reports the base URL on start,
    e.g. "http://127.0.0.1:8080" (with the real port when config.port is 0)."""
    from hypercorn.trio import serve

    config.validate()
    batcher = MicroBatcher(
        make_compute(embedder, config.max_batch_texts),
        max_batch_texts=config.max_batch_texts,
        max_wait_s=config.max_wait_ms / 1000.0,
        max_pending_texts=config.max_pending_texts,
    )
    app = create_app(embedder, config, batcher)
    hc = _hypercorn_config(config)
    async with trio.open_nursery() as nursery:

        async def serve_then_stop(
            task_status: trio.TaskStatus[list[str]],  # type: ignore[name-defined]
        ) -> None:
            # Starlette's ASGI types (MutableMapping scope) and hypercorn's (TypedDict scopes)
            # describe the same protocol but do not unify for mypy.
            await serve(
                app,  # type: ignore[arg-type]
                hc,
                shutdown_trigger=shutdown_trigger,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # graceful shutdown done: stop the batcher too

        await nursery.start(batcher.run)
        binds = await nursery.start(serve_then_stop)
        url = binds[0] if binds else f"http://{config.host}:{config.port}"
        log.info("gateway listening on %s (model %s)", url, embedder.model_name)
        task_status.started(url)
