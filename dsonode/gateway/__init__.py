"""HTTP gateway: OpenAI-compatible embeddings and Cohere/Jina-style rerank over the node's model.

`serve_gateway(embedder, config)` runs it in a trio nursery (the daemon does this when the
gateway is enabled); `dsonode gateway --listen 127.0.0.1:PORT` runs it on its own.
"""

from typing import TYPE_CHECKING

from dsonode.gateway.config import TOKEN_ENV, GatewayConfig, GatewayError, parse_listen

if TYPE_CHECKING:  # at run time through __getattr__ below, so the checker sees the real types
    from dsonode.gateway.app import create_app, serve_gateway

__all__ = [
    "TOKEN_ENV",
    "GatewayConfig",
    "GatewayError",
    "create_app",
    "parse_listen",
    "serve_gateway",
]


def __getattr__(name: str) -> object:
    # Starlette and hypercorn load only when the server is actually wanted.
    if name in ("create_app", "serve_gateway"):
        from dsonode.gateway import app

        return getattr(app, name)
    raise AttributeError(name)
