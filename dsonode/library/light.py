"""The light form of the library's embedder: a space without an encoder (ARCHITECTURE.md).

A light node (`[node] role = "light"`) validates, stores, relays and serves sync and vector
searches, and recomputes consensus (numpy only: `core.consensus` with the space's reference),
but never embeds text: it loads no encoder, so torch and transformers are never imported in
its process. `LightEmbedder` names the space it serves; asking it to embed raises
`LightNodeError`, whose message tells the caller to use a full node.
"""

from __future__ import annotations

import re

import numpy as np

from dsonode.core.constants import DIM
from dsonode.core.errors import DsoError

#: The role names of `[node] role` (dsonode.config.settings).
FULL = "full"
LIGHT = "light"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LightNodeError(DsoError):
    """Something that needs an encoder was asked of a light node (the message says what)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs the encoder, and this node runs with role light (no encoder "
            "loaded): send it to a full node"
        )
        self.what = what


class LightEmbedder:
    """An `Embedder` (dsonode.library.library) that knows its space but cannot embed."""

    #: Light nodes serve spaces whose reference vector is zero (PROTOCOL.md 7.3: r = 0 when
    #: absent); consensus and the index decode codes against it.
    reference: np.ndarray | None = None
    dim: int = DIM

    def __init__(self, space_id: str, model_name: str) -> None:
        if not isinstance(space_id, str) or not _HEX64.fullmatch(space_id):
            raise ValueError(f"space_id must be 64 lowercase hex characters, got {space_id!r}")
        self.space_id = space_id
        self.model_name = model_name

    def embed_query(self, text: str, *, for_search: bool = False) -> np.ndarray:
        raise LightNodeError("embedding a text")

    def encode_base(self, texts: list[str]) -> np.ndarray:
        raise LightNodeError("embedding texts")
