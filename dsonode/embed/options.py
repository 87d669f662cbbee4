"""How an encoder turns token states into one vector: pooling, instruction prefixes, max
length and dtype. Part of the space definition (they enter `space_id`, ARCHITECTURE.md "Space
identity"); torch-free, so a light node can compute a space id too.

Where the values come from, first found wins, per field:

1. the arguments of `Embedder(...)` (programmatic use; None = not given),
2. `dsonode_space.json` in the encoder folder (the operator's declaration, checked strictly):
   ``{"pooling": "last_token", "query_prefix": "...", "document_prefix": "",
   "max_length": 512, "dtype": "float32"}``, every key optional,
3. the folder's own sentence-transformers files, as the model's authors ship them:
   `1_Pooling/config.json` (pooling_mode_mean_tokens / _cls_token / _lasttoken),
   `config_sentence_transformers.json` ("prompts": {"query": ..., "document" or "passage": ...}),
   `sentence_bert_config.json` (max_seq_length),
4. the defaults: mean pooling, no prefixes, the tokenizer's max length, float32.

The packaged MiniLM folder declares mean pooling, no prompts and max length 256, so the default
space is unchanged: `space_id_of` adds a field to the hash only when it differs from these
defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsonode.embed.errors import ModelLoadError

#: How token states become one vector: the masked mean, the first token, the last real token.
POOLINGS = ("mean", "cls", "last_token")
#: Weights' precision on the device (float32: exact and fastest on a CPU without native bf16).
DTYPES = ("float32", "bfloat16", "float16")
#: The operator's declaration in an encoder folder.
SPACE_FILE = "dsonode_space.json"
#: Bounds on what a folder may declare (a prefix is tokenised with every text).
MAX_PREFIX_CHARS = 1024
_FILE_MAX_BYTES = 64 * 1024
_KEYS = ("pooling", "query_prefix", "document_prefix", "max_length", "dtype")


@dataclass(frozen=True)
class EncoderOptions:
    """Resolved options; `max_length` None = the tokenizer's (see encoder.max_seq_length)."""

    pooling: str = "mean"
    query_prefix: str = ""
    document_prefix: str = ""
    max_length: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_options(
            self.pooling, self.query_prefix, self.document_prefix, self.max_length, self.dtype
        )

    def prefix(self, kind: str) -> str:
        """The instruction prefix of a text of this kind ("query" or "document")."""
        if kind == "query":
            return self.query_prefix
        if kind == "document":
            return self.document_prefix
        raise ModelLoadError(f"kind must be 'query' or 'document', got {kind!r}")


def check_options(
    pooling: Any, query_prefix: Any, document_prefix: Any, max_length: Any, dtype: Any
) -> None:
    if pooling not in POOLINGS:
        raise ModelLoadError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    for name, value in (("query_prefix", query_prefix), ("document_prefix", document_prefix)):
        if not isinstance(value, str) or len(value) > MAX_PREFIX_CHARS:
            raise ModelLoadError(f"{name} must be a string of <= {MAX_PREFIX_CHARS} characters")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise ModelLoadError(f"max_length must be a positive int, got {max_length!r}")
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _read_json(path: Path) -> Any:
    """A small JSON file, or None when absent; a file that exists but is bad is an error."""
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > _FILE_MAX_BYTES:
            raise ModelLoadError(f"{path} is larger than {_FILE_MAX_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _from_sentence_transformers(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pool = _read_json(folder / "1_Pooling" / "config.json")
    if isinstance(pool, dict):
        modes = [
            name
            for key, name in (
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_lasttoken", "last_token"),
            )
            if pool.get(key) is True
        ]
        others = [
            k
            for k, v in pool.items()
            if k.startswith("pooling_mode_")
            and v is True
            and k
            not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_lasttoken")
        ]
        if len(modes) != 1 or others:
            raise ModelLoadError(
                f"{folder / '1_Pooling' / 'config.json'}: exactly one of mean, cls or last-token "
                f"pooling is supported; set pooling in {SPACE_FILE}"
            )
        out["pooling"] = modes[0]
    st = _read_json(folder / "config_sentence_transformers.json")
    prompts = st.get("prompts") if isinstance(st, dict) else None
    if isinstance(prompts, dict):
        if "query" in prompts:
            out["query_prefix"] = prompts["query"]
        for key in ("document", "passage"):
            if key in prompts:
                out["document_prefix"] = prompts[key]
                break
    return out


def read_options(folder: Path, **given: Any) -> EncoderOptions:
    """The resolved options of the encoder in `folder` (see the module docstring);
    `given` holds the explicit ones (None = not given)."""
    unknown = set(given) - set(_KEYS)
    if unknown:
        raise ModelLoadError(f"unknown encoder options: {', '.join(sorted(unknown))}")
    declared = _read_json(folder / SPACE_FILE)
    if declared is None:
        declared = {}
    if not isinstance(declared, dict) or set(declared) - set(_KEYS):
        raise ModelLoadError(
            f"{folder / SPACE_FILE} must be a JSON object with keys among {', '.join(_KEYS)}"
        )
    found = {**_from_sentence_transformers(folder), **declared}
    values = dict(found)
    values.update({k: v for k, v in given.items() if v is not None})
    return EncoderOptions(**values)
