"""The lean embedder: a full node's encoder and head without torch (ARCHITECTURE.md "Lean
embedder").

torch and transformers cost a node about 240 MB of memory and 1.5 s of imports before any
model loads, for a model a node only ever runs forward. So the model is *compiled* once per
machine by `dsonode.embed.compile`, in a separate process that does import torch, into a
folder of plain files:

- ``tokenizer.json``: the exact fast tokenizer transformers runs (tokenizers, Rust);
- ``encoder.onnx``: the float32 encoder (token states), run by ONNX Runtime;
- ``query-int8.onnx``: the int8 search-query encoder (dsonode.embed.runtime);
- ``head-pre.onnx``: the head's first half, fc1 -> GELU -> ln1, float32;
- ``head-post.npz``: fc2 -> ln2 (dsonode.embed.numpy_head: the seeded head's fc2 from its
  Hadamard factors with exact integer arithmetic);
- ``manifest.json``, written last: what the folder was compiled from (its key), every file's
  sha256, the space it embeds into and the fidelity measured against the torch path at
  compile time.

A node loads the folder in a fraction of a second, never importing torch. The folder's name is
a digest of its key (encoder digest, head, encoder options, recipes, onnx and onnxruntime
versions), so a changed encoder, head or library compiles a new folder, and a folder whose
files do not match their checksums is never loaded (the node compiles again, or falls back to
the torch embedder).

Codes: ONNX Runtime rounds differently from torch, so a few of a code's 7680 sign bits can
differ from the torch path's (measured at compile time and in BENCHMARKS.md "lean node"), but
the lean path itself is deterministic: one text is always run alone (no padding), and ONNX
Runtime's float32 kernels split work over outputs, not over the summed dimension, so the thread
count does not change a bit (tests/test_lean.py checks both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.core.constants import DIM
from dsonode.embed import encoder as _enc
from dsonode.embed import runtime as _rt
from dsonode.embed.defaults import DEFAULT_HEAD_SEED
from dsonode.embed.errors import EmbedError, ModelLoadError
from dsonode.embed.inputs import (
    Progress,
    clip_for_tokenizer,
    length_sorted_batches,
    padded,
    show_progress,
    validate_batch_size,
    validate_dim,
    validate_texts,
)
from dsonode.embed.numpy_head import HeadPost, l2_normalise, load_post
from dsonode.embed.options import EncoderOptions, read_options
from dsonode.embed.space import (
    TokenizerConfig,
    checked_reference,
    embedder_info,
    embedder_space_id,
)

log = logging.getLogger("dsonode.embed.lean")

#: Version of the compiled folder's layout and of the export recipe (part of the key: a change
#: compiles every folder again).
LEAN_RECIPE = "dso/lean/v1"
MANIFEST = "manifest.json"
FILES = ("tokenizer.json", "encoder.onnx", "query-int8.onnx", "head-pre.onnx", "head-post.npz")
#: Default intra-op threads of the float32 encoder: the cores this process may use, at most
#: this many (one short text gains nothing from more).
MAX_DEFAULT_THREADS = 4
#: After an `embed`/`encode_base` call whose largest batch held at least this many tokens, the
#: freed heap goes back to the system (malloc_trim): the encoder's buffers for 64 texts of 256
#: tokens are hundreds of MB, which glibc would otherwise keep for the process's lifetime
#: (measured: 330 MB kept after one 16 x 256 batch). A fixed mmap threshold did the same for
#: every call but cost each index search ~2.5 ms in page faults (BENCHMARKS.md "lean node").
TRIM_AFTER_TOKENS = 4096
#: Bound on manifest.json (a hostile or corrupt file must not be read without limit).
_MANIFEST_MAX_BYTES = 1 << 20


class LeanUnavailable(RuntimeError):
    """The lean embedder cannot serve this configuration (the node uses the torch one)."""


def available() -> bool:
    """True when onnxruntime, onnx and tokenizers are installed (metadata only, no import)."""
    try:
        _versions()
        version("tokenizers")
    except PackageNotFoundError:
        return False
    return True


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("onnx", "onnxruntime")}


def head_identity(head: str | Path | None) -> str:
    """What names a head without loading it: the seed, or the sha256 of its file."""
    if head is None:
        return f"seeded:{DEFAULT_HEAD_SEED}"
    path = Path(head).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"head file not found: {path}")
    return "file:" + _enc.file_sha256(path)


def compile_key(
    encoder: str | Path | None, head: str | Path | None
) -> tuple[dict[str, Any], Path, str, EncoderOptions]:
    """(key document, encoder folder, encoder name, options) of a configuration. The compiled
    folder for it is `folder_for(cache_dir, key)`; both the compiler and the loader call this,
    so the two cannot disagree."""
    folder, name = _enc.resolve_encoder(encoder)
    options = read_options(folder)
    key = {
        "v": LEAN_RECIPE,
        "encoder": name,
        "encoder_sha256": _enc.encoder_sha256(folder),
        "head": head_identity(head),
        "options": asdict(options),
        "int8_recipe": _rt.RECIPE,
        **_versions(),
    }
    return key, folder, name, options


def folder_for(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"lean-{digest[:16]}"


def unsupported_reason(options: EncoderOptions, device: str) -> str | None:
    """Why the lean embedder cannot run this configuration, or None."""
    if device not in ("auto", "cpu"):
        return f"device {device!r} (the lean embedder runs on the CPU)"
    if options.dtype != "float32":
        return f"dtype {options.dtype} (the lean embedder runs float32)"
    return None


def read_manifest(folder: Path, key: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest if it was compiled for `key` and every file matches its checksum;
    else LeanUnavailable saying why."""
    path = folder / MANIFEST
    try:
        if path.stat().st_size > _MANIFEST_MAX_BYTES:
            raise LeanUnavailable(f"{path} is too large")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LeanUnavailable(f"{folder} is not compiled") from exc
    except (OSError, ValueError) as exc:
        raise LeanUnavailable(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        raise LeanUnavailable(f"{path} was compiled for another configuration")
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(FILES):
        raise LeanUnavailable(f"{path} does not list the compiled files")
    for name in FILES:
        try:
            digest = _enc.file_sha256(folder / name)
        except OSError as exc:
            raise LeanUnavailable(f"cannot read {folder / name}: {exc}") from exc
        if digest != files[name]:
            raise LeanUnavailable(f"{folder / name} does not match its checksum")
    for field, kind in (
        ("space_id", str),
        ("model_name", str),
        ("hidden_size", int),
        ("max_length", int),
        ("pad_id", int),
        ("dim", int),
        ("head_sha256", str),
    ):
        if not isinstance(manifest.get(field), kind):
            raise LeanUnavailable(f"{path}: {field} missing or malformed")
    if manifest["dim"] != DIM:
        raise LeanUnavailable(f"{path}: dim {manifest['dim']} is not the protocol's {DIM}")
    return manifest


def default_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between runs (the node's other threads need the cores), and no arena:
    # one long batch would otherwise keep its peak allocation for the node's lifetime.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise LeanUnavailable(f"cannot load {path}: {exc}") from exc


class LeanEmbedder:
    """Texts -> unit-norm float32 vectors in the same space as the torch `Embedder` of the same
    encoder, head and options (same space_id), from a compiled folder (see the module doc)."""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        encoder_path: Path,
        options: EncoderOptions,
        head: str | Path | None = None,
        threads: int | None = None,
        reference: np.ndarray | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256
        ):
            raise EmbedError(f"threads must be in 1..256 or None, got {threads!r}")
        self.folder = folder
        self.compiled = manifest
        self.encoder_path = encoder_path
        self.encoder_name: str = manifest["key"]["encoder"]
        self.encoder_sha256: str = manifest["key"]["encoder_sha256"]
        self.options = options
        self.head_path: Path | None = None if head is None else Path(head)
        self.head_sha256: str = manifest["head_sha256"]
        meta = manifest.get("head_metadata")
        self.head_metadata = (
            {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
        )
        self.hidden_size: int = manifest["hidden_size"]
        self.max_length: int = manifest["max_length"]
        self.dim: int = manifest["dim"]
        self._pad_id: int = manifest["pad_id"]
        self.device = "cpu"
        self.threads = threads if threads is not None else default_threads()
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.tokenizer.no_padding()
            self.tokenizer.enable_truncation(self.max_length)
        except Exception as exc:  # tokenizers raises its own exception types
            raise LeanUnavailable(f"cannot load {folder / 'tokenizer.json'}: {exc}") from exc
        self._encoder = _session(folder / "encoder.onnx", self.threads)
        self._pre = _session(folder / "head-pre.onnx", self.threads)
        try:
            self._post: HeadPost = load_post(folder / "head-post.npz")
        except (OSError, ValueError) as exc:
            raise LeanUnavailable(f"cannot load {folder / 'head-post.npz'}: {exc}") from exc
        self.reference = checked_reference(reference)
        self.space_id = embedder_space_id(self)
        if self.reference is None and self.space_id != manifest["space_id"]:
            raise LeanUnavailable(f"{folder}: the manifest's space_id is not this space's")
        self._check_against_folder()
        self.model_name: str = manifest["model_name"]
        self._tok_lock = threading.Lock()
        self._query: _rt.OnnxQueryEncoder | None = None
        self._query_prepared = False
        self.query_runtime = "onnx-fp32"

    # ----------------------------------------------------------------- public API

    def token_ids(self, texts: Sequence[str], kind: str = "document") -> list[list[int]]:
        """Token ids per text as the encoder sees them (prefix and special tokens included,
        truncated to max_length)."""
        texts = validate_texts(texts)
        if not texts:
            return []
        clipped = clip_for_tokenizer(texts, self.options.prefix(kind), self.max_length)
        with self._tok_lock:
            encodings = self.tokenizer.encode_batch(clipped)
        return [list(e.ids) for e in encodings]

    def count_tokens(self, texts: Sequence[str], kind: str = "document") -> list[int]:
        return [len(ids) for ids in self.token_ids(texts, kind)]

    def encode_base(
        self, texts: Sequence[str], batch_size: int = 64, kind: str = "document"
    ) -> np.ndarray:
        """(n, hidden_size) float32: the encoder's own L2-normalised pooled vectors."""
        return self._run(validate_texts(texts), batch_size, False, None, kind)

    def embed(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        batch_size: int = 64,
        progress: bool | None = None,
        kind: str = "document",
    ) -> np.ndarray:
        """(n, dim) float32 unit-norm vectors (see `dsonode.embed.Embedder.embed`)."""
        texts = validate_texts(texts)
        dim = validate_dim(dim)
        return self._run(texts, batch_size, show_progress(progress, len(texts)), dim, kind)

    def embed_query(
        self, text: str, dim: int | None = None, for_search: bool = False, kind: str | None = None
    ) -> np.ndarray:
        """(dim,) float32 unit vector for one text: exactly `embed([text])[0]` unless
        `for_search` (the int8 query encoder and a 2-limb fc2: vectors that never leave the
        node; see dsonode.embed.runtime)."""
        if not isinstance(text, str):
            raise EmbedError(f"text must be str, got {type(text).__name__}")
        if kind is None:
            kind = "query" if for_search else "document"
        if not for_search:
            return self.embed([text], dim=dim, batch_size=1, progress=False, kind=kind)[0]
        dim = validate_dim(dim)
        ids = self.token_ids([text], kind)[0]
        if not self._query_prepared:
            self.prepare_query_runtime()
        if self._query is not None and len(ids) >= _rt.MIN_INT8_TOKENS:
            pooled = self._query.pooled(ids)[None, :]
        else:
            pooled = self._pooled([ids])
        return self._project(pooled, dim, limbs=2)[0]

    def prepare_query_runtime(
        self, runtime: str = "onnx-int8", cache_dir: Path | None = None
    ) -> str:
        """Choose the encoder of `embed_query(for_search=True)`: the compiled int8 model if it
        passes the cosine gate on the fixed probes (dsonode.embed.runtime), else the float32
        encoder. `cache_dir` is accepted for the torch embedder's signature and unused (the
        int8 model is part of the compiled folder)."""
        del cache_dir
        if runtime not in _rt.QUERY_RUNTIMES:
            raise EmbedError(f"query runtime must be one of {_rt.QUERY_RUNTIMES}, got {runtime!r}")
        self._query_prepared = True
        self._query, self.query_runtime = None, "onnx-fp32"
        if runtime == "torch" or self.options.pooling != "mean":
            return self.query_runtime
        try:
            query = _rt.OnnxQueryEncoder(self.folder / "query-int8.onnx", _rt.QUERY_THREADS)
        except _rt.QueryRuntimeError as exc:
            log.warning("query encoder: %s; searches use the float32 encoder", exc)
            return self.query_runtime
        probes = list(_rt.PROBES)
        cosines = _rt.probe_cosines(query, self.encode_base(probes), self.token_ids(probes))
        if cosines.min() < _rt.MIN_PROBE_COSINE or cosines.mean() < _rt.MIN_MEAN_COSINE:
            log.warning(
                "int8 query encoder at cosine min %.4f / mean %.4f on the probes: searches "
                "use the float32 encoder",
                float(cosines.min()),
                float(cosines.mean()),
            )
            return self.query_runtime
        self._query, self.query_runtime = query, runtime
        return self.query_runtime

    def project(self, base: np.ndarray, dim: int | None = None) -> np.ndarray:
        """Apply the head to encoder vectors from `encode_base` (n, hidden) -> (n, dim)."""
        dim = validate_dim(dim)
        base = np.asarray(base, dtype=np.float32)
        if base.ndim != 2 or base.shape[1] != self.hidden_size or not np.isfinite(base).all():
            raise EmbedError(f"base must be a finite (n, {self.hidden_size}) array")
        return self._project(base, dim)

    def info(self) -> dict[str, object]:
        """What defines this embedder's space (the torch Embedder's keys, same meanings)."""
        info = embedder_info(
            self, device=self.device, head_kernel=self._post.kernel, threads=self.threads
        )
        return {**info, "runtime": "onnx", "compiled": str(self.folder)}

    # ----------------------------------------------------------------- internals

    def _check_against_folder(self) -> None:
        """The manifest's shape facts agree with the encoder folder itself (a manifest edited
        by hand, or written for other files, is refused even if its own fields agree)."""
        try:
            config = json.loads((self.encoder_path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LeanUnavailable(f"cannot read the encoder's config.json: {exc}") from exc
        if isinstance(config, dict) and config.get("hidden_size") not in (None, self.hidden_size):
            raise LeanUnavailable(f"{self.folder}: hidden_size differs from the encoder's")
        declared = self.options.max_length
        if declared is None:
            declared = _enc.max_seq_length(self.encoder_path, TokenizerConfig(self.encoder_path))
        if declared != self.max_length:
            raise LeanUnavailable(f"{self.folder}: max_length differs from the encoder's")
        if self._post.out_features != self.dim:
            raise LeanUnavailable(f"{self.folder}: head-post.npz is not {self.dim}-d")

    def _hidden(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        out: np.ndarray = self._encoder.run(None, feeds)[0]
        return out

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(batch, hidden) unit vectors; rows are right-padded (as the torch embedder's)."""
        pooling = self.options.pooling
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "last_token":
            last = np.maximum(mask.sum(axis=1), 1) - 1
            pooled = hidden[np.arange(hidden.shape[0]), last]
        else:
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))
        return l2_normalise(np.asarray(pooled, dtype=np.float32))

    def _pooled(self, rows: list[list[int]]) -> np.ndarray:
        input_ids, mask = padded(rows, self._pad_id)
        return self._pool(self._hidden(input_ids, mask), mask)

    def _project(self, pooled: np.ndarray, dim: int, limbs: int = 3) -> np.ndarray:
        pre = self._pre.run(None, {"pooled": np.ascontiguousarray(pooled, dtype=np.float32)})[0]
        vec = self._post(pre, limbs)
        if dim != vec.shape[1]:
            vec = l2_normalise(vec[:, :dim])
        return vec

    def _run(
        self, texts: list[str], batch_size: int, progress: bool, dim: int | None, kind: str
    ) -> np.ndarray:
        """Embeddings (dim given) or pooled encoder vectors (dim None), in input order."""
        batch_size = validate_batch_size(batch_size)
        ids = self.token_ids(texts, kind)
        out = np.empty((len(texts), dim if dim is not None else self.hidden_size), np.float32)
        bar = Progress(len(ids)) if progress else None
        largest = 0
        try:
            for idx in length_sorted_batches(ids, batch_size):
                rows = [ids[i] for i in idx]
                largest = max(largest, len(rows) * max(len(r) for r in rows))
                pooled = self._pooled(rows)
                out[np.asarray(idx)] = pooled if dim is None else self._project(pooled, dim)
                if bar:
                    bar.advance(len(idx))
        finally:
            if bar:
                bar.close()
            if largest >= TRIM_AFTER_TOKENS:
                release_free_heap()
        return out


_LIBC: Any = None


def release_free_heap() -> bool:
    """Return glibc's free heap memory to the system (malloc_trim); False where there is no
    glibc."""
    global _LIBC
    import ctypes
    import ctypes.util

    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_LIBC.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False


def load(
    encoder: str | Path | None = None,
    head: str | Path | None = None,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> LeanEmbedder:
    """The lean embedder of a configuration from its compiled folder; LeanUnavailable (saying
    why) when it is not compiled, does not match, or cannot load."""
    if not available():
        raise LeanUnavailable("onnxruntime, onnx or tokenizers not installed (dsonode[onnx])")
    key, encoder_path, _, options = compile_key(encoder, head)
    folder = folder_for(cache_dir if cache_dir is not None else _rt.default_cache_dir(), key)
    manifest = read_manifest(folder, key)
    return LeanEmbedder(folder, manifest, encoder_path, options, head, threads)


#: Bound on one compilation (torch load, export, quantisation, checks: ~12 s on an idle 2-core
#: machine; minutes under heavy load).
COMPILE_TIMEOUT_S = 900.0


def compile_in_subprocess(
    encoder: str | Path | None,
    head: str | Path | None,
    cache_dir: Path | None,
    timeout_s: float = COMPILE_TIMEOUT_S,
) -> None:
    """Run dsonode.embed.compile in a child process (torch stays out of this one); its progress
    goes to this process's stderr. LeanUnavailable when it fails or overruns."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dsonode.embed.compile"]
    if encoder is not None:
        cmd += ["--encoder", str(encoder)]
    if head is not None:
        cmd += ["--head", str(head)]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise LeanUnavailable(f"compiling took over {timeout_s:.0f} s") from exc
    except OSError as exc:
        raise LeanUnavailable(f"cannot run the compiler: {exc}") from exc
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise LeanUnavailable(f"the compiler failed ({done.returncode}): {' | '.join(last)}")


def load_or_compile(
    encoder: str | Path | None = None,
    head: str | Path | None = None,
    cache_dir: Path | None = None,
    threads: int | None = None,
    say: Any = None,
) -> LeanEmbedder:
    """The lean embedder, compiling its folder first (once per machine) when it is missing or
    invalid. LeanUnavailable when it cannot be had (the caller falls back to torch)."""
    try:
        return load(encoder, head, cache_dir, threads)
    except LeanUnavailable as exc:
        import importlib.util

        if not available():
            raise
        if importlib.util.find_spec("torch") is None:
            raise LeanUnavailable(f"{exc}; compiling needs torch, which is not installed") from exc
        if say is not None:
            say(f"compiling the embedding model for ONNX Runtime, once per machine ({exc})")
    compile_in_subprocess(encoder, head, cache_dir)
    return load(encoder, head, cache_dir, threads)


def load_model(
    encoder: str | Path | None = None,
    head: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    runtime: str = "onnx",
    say: Any = None,
) -> Any:
    """What a node or a gateway embeds with: the lean embedder when `runtime` is "onnx" and it
    can be had here (compiling it first if needed), else the torch `Embedder` (imported only
    then). A lean failure is logged with its reason before torch loads; with no torch
    installed either, ModelLoadError says both."""
    if runtime not in ("onnx", "torch"):
        raise ModelLoadError(f"runtime must be 'onnx' or 'torch', got {runtime!r}")
    reason = None
    if runtime == "onnx":
        try:
            _, _, _, options = compile_key(encoder, head)
            unsupported = unsupported_reason(options, device)
            if unsupported is not None:
                raise LeanUnavailable(unsupported)
            return load_or_compile(encoder, head, None, threads, say)
        except LeanUnavailable as exc:
            reason = str(exc)
            log.warning("the lean embedder is unavailable (%s): loading the torch embedder", exc)
    import importlib.util

    if importlib.util.find_spec("torch") is None:  # e.g. the container image (no torch in it)
        raise ModelLoadError(
            f"the lean embedder cannot be loaded ({reason}) and torch is not installed: "
            "install torch, or repair the compiled model ($DSONODE_CACHE_DIR)"
        )
    from dsonode.embed.embedder import get_embedder

    if say is not None:
        say("loading the embedding model (torch)")
    return get_embedder(encoder, head, device, threads)
