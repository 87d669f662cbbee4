"""The space id, computed without torch: what a light node serves (ARCHITECTURE.md "Space
identity", PROTOCOL.md 7.3).

`space_id_of` is the one construction (the full `Embedder` calls it too, so the two cannot
drift). `default_space_id()` gives the id of the default space (the packaged encoder and the
seeded head) from the packaged files alone: the encoder is hashed from its files exactly as
the full embedder hashes it, its max length read from its sentence-transformers config, and
the seeded head's weight digest is the constant `DEFAULT_HEAD_SHA256` (building the head
needs torch; `tests/test_light.py` checks the constant against the real head).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.core.constants import DIM
from dsonode.embed import encoder as _enc
from dsonode.embed.defaults import DEFAULT_HEAD_SEED, HEAD_HIDDEN
from dsonode.embed.errors import EmbedError, ModelLoadError
from dsonode.embed.options import EncoderOptions

#: Version of the space-id construction.
SPACE_LABEL = "dso/space/v1"
#: `head_weights_sha256(build_seeded_head(384, DEFAULT_HEAD_SEED))`: the seeded default head
#: of the packaged 384-d encoder (changes only with the seed, HEAD_HIDDEN, DIM or the recipe).
DEFAULT_HEAD_SHA256 = "99b4e28d352340d6894a1ff13544a7fb4c62767e6d757cd70596058138fb4a45"
#: What DEFAULT_HEAD_SHA256 was computed for (default_space_id refuses anything else).
_DEFAULT_HEAD_SHAPE = (384, HEAD_HIDDEN, DIM, DEFAULT_HEAD_SEED)
#: The model name of the default space (the full embedder's `model_name` for it).
DEFAULT_MODEL_NAME = f"dso-minilm-l6-{DIM}"


def space_id_of(
    encoder_name: str,
    encoder_sha256: str,
    max_length: int,
    head_sha256: str,
    dim: int,
    reference: np.ndarray | None,
    options: EncoderOptions | None = None,
) -> str:
    """sha256 over everything that decides where a text lands in the space (64 hex chars).

    `options` (pooling, instruction prefixes, dtype; None = the defaults): a field enters the
    hashed document only when it differs from its default, so the spaces defined before these
    options existed (mean pooling, no prefixes, float32) keep their ids.
    """
    if reference is None:
        reference = np.zeros(dim, dtype=np.float32)
    ref_sha = hashlib.sha256(np.ascontiguousarray(reference, dtype="<f4").tobytes()).hexdigest()
    doc = {
        "v": SPACE_LABEL,
        "encoder": encoder_name,
        "encoder_sha256": encoder_sha256,
        "max_length": max_length,
        "pooling": "mean+l2",
        "head_sha256": head_sha256,
        "dim": dim,
        "reference_sha256": ref_sha,
    }
    if options is not None:
        doc["pooling"] = f"{options.pooling}+l2"
        if options.query_prefix:
            doc["query_prefix"] = options.query_prefix
        if options.document_prefix:
            doc["document_prefix"] = options.document_prefix
        if options.dtype != "float32":
            doc["dtype"] = options.dtype
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


class TokenizerConfig:
    """The one tokenizer attribute `encoder.max_seq_length` falls back to, read from
    tokenizer_config.json instead of loading the tokenizer (transformers)."""

    def __init__(self, folder: Path) -> None:
        value: Any = None
        try:
            value = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            value = value.get("model_max_length")
        except (OSError, ValueError, AttributeError):
            value = None
        self.model_max_length = value if isinstance(value, int) and value > 0 else 512


def default_space_id() -> str:
    """The default space's id (packaged encoder, seeded head, zero reference), without torch."""
    folder, name = _enc.resolve_encoder(None)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    shape = (config.get("hidden_size"), HEAD_HIDDEN, DIM, DEFAULT_HEAD_SEED)
    if shape != _DEFAULT_HEAD_SHAPE:
        raise ModelLoadError(
            f"the packaged encoder is {shape[0]}-d; DEFAULT_HEAD_SHA256 is for "
            f"{_DEFAULT_HEAD_SHAPE[0]}-d: set node.space_id (a full node's `stats` space_id)"
        )
    max_length = _enc.max_seq_length(folder, TokenizerConfig(folder))
    return space_id_of(
        name, _enc.encoder_sha256(folder), max_length, DEFAULT_HEAD_SHA256, DIM, None
    )


def checked_reference(reference: np.ndarray | None) -> np.ndarray | None:
    """An embedder's reference vector as float32: None, or a finite (DIM,) vector."""
    if reference is None:
        return None
    reference = np.asarray(reference, dtype=np.float32)
    if reference.shape != (DIM,) or not np.isfinite(reference).all():
        raise EmbedError(f"reference must be a finite ({DIM},) vector")
    return reference


def embedder_space_id(emb: Any) -> str:
    """`space_id_of` an embedder's own attributes (the torch `Embedder` and the lean one)."""
    return space_id_of(
        emb.encoder_name,
        emb.encoder_sha256,
        emb.max_length,
        emb.head_sha256,
        emb.dim,
        emb.reference,
        emb.options,
    )


def embedder_info(emb: Any, *, device: str, head_kernel: str, threads: int) -> dict[str, object]:
    """What defines an embedder's space, for status output and logs (the torch `Embedder` and
    the lean one report the same keys)."""
    return {
        "model_name": emb.model_name,
        "space_id": emb.space_id,
        "encoder": emb.encoder_name,
        "encoder_path": str(emb.encoder_path),
        "encoder_sha256": emb.encoder_sha256,
        "hidden_size": emb.hidden_size,
        "max_length": emb.max_length,
        "pooling": emb.options.pooling,
        "query_prefix": emb.options.query_prefix,
        "document_prefix": emb.options.document_prefix,
        "dtype": emb.options.dtype,
        "head": str(emb.head_path) if emb.head_path else f"seeded:{DEFAULT_HEAD_SEED}",
        "head_sha256": emb.head_sha256,
        "dim": emb.dim,
        "device": device,
        "head_kernel": head_kernel,
        "query_runtime": emb.query_runtime,
        "threads": threads,
    }
