"""Text -> the native 7680-d DSO space (encoder, mean pooling, projection head, prefixes).

Names are imported lazily (PEP 562) so that `import dsonode.embed.cli`, which every `dsonode`
command does, does not pay for importing torch and transformers.
"""

from __future__ import annotations

from typing import Any

from dsonode.lazy import lazy_attribute

_EXPORTS = {
    "Embedder": "dsonode.embed.embedder",
    "get_embedder": "dsonode.embed.embedder",
    "space_id_of": "dsonode.embed.space",
    "default_space_id": "dsonode.embed.space",
    "VALID_DIMS": "dsonode.embed.defaults",
    "EmbedError": "dsonode.embed.errors",
    "ModelLoadError": "dsonode.embed.errors",
    "DEFAULT_HEAD_SEED": "dsonode.embed.defaults",
    "ProjectionHead": "dsonode.embed.head",
    "build_seeded_head": "dsonode.embed.head",
    "head_weights_sha256": "dsonode.embed.head",
    "load_head": "dsonode.embed.head",
    "save_head": "dsonode.embed.head",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _EXPORTS, name)
