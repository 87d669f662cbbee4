"""Text -> the native 7680-d space: encoder, pooling, projection head, Matryoshka prefixes.

Pooling (mean, cls or last token), the query and document instruction prefixes, the max
length and the dtype come from `dsonode.embed.options` and are part of the space id.

One `Embedder` holds one loaded encoder and head (loading takes seconds: keep one per process,
see `get_embedder`). Its `space_id` names the space its vectors live in; vectors from two
embedders are comparable only when their space ids are equal.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsonode.core.constants import DIM
from dsonode.embed import encoder as _enc
from dsonode.embed import runtime as _rt
from dsonode.embed.defaults import DEFAULT_DEVICE, DEFAULT_HEAD_SEED
from dsonode.embed.errors import EmbedError, ModelLoadError
from dsonode.embed.fastpath import FastHead, HadamardSignLinear, fast_head
from dsonode.embed.head import (
    ProjectionHead,
    build_seeded_head,
    head_weights_sha256,
    load_head,
)
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
from dsonode.embed.options import EncoderOptions, read_options
from dsonode.embed.space import (  # torch-free: light nodes compute it too
    checked_reference,
    embedder_info,
    embedder_space_id,
)

_log = logging.getLogger("dsonode.embed")


def _resolve_device(device: str) -> torch.device:
    if not isinstance(device, str):
        raise EmbedError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise EmbedError(f"device {device!r} requested but CUDA is not available")
        return torch.device(device)
    raise EmbedError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def _cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bfloat16 natively (AVX512-BF16/AMX); elsewhere it is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Embedder:
    """Encoder + projection head: texts -> unit-norm float32 vectors in one named space."""

    def __init__(
        self,
        encoder: str | Path | None = None,
        head: str | Path | None = None,
        device: str = DEFAULT_DEVICE,
        threads: int | None = None,
        reference: np.ndarray | None = None,
        *,
        pooling: str | None = None,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        max_length: int | None = None,
        dtype: str | None = None,
    ) -> None:
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise EmbedError(f"threads must be a positive int or None, got {threads!r}")
            # Process-wide: torch has one intra-op pool. Set before the first op runs.
            torch.set_num_threads(threads)
        self.device = _resolve_device(device)
        folder, self.encoder_name = _enc.resolve_encoder(encoder)
        self.encoder_path = folder
        # None = from the folder (dsonode_space.json, then its sentence-transformers files).
        self.options: EncoderOptions = read_options(
            folder,
            pooling=pooling,
            query_prefix=query_prefix,
            document_prefix=document_prefix,
            max_length=max_length,
            dtype=dtype,
        )
        self.model, self.tokenizer = _enc.load_encoder(folder, str(self.device))
        if self.options.dtype != "float32":
            self.model = self.model.to(getattr(torch, self.options.dtype))
        self.hidden_size = int(self.model.config.hidden_size)
        self.max_length = _max_length(self.options, folder, self.tokenizer, self.model.config)
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.encoder_sha256 = _enc.encoder_sha256(folder)

        self.head_path: Path | None = None if head is None else Path(head)
        float_head, self.head_metadata = self._load_float_head()
        if float_head.in_dim != self.hidden_size:
            raise ModelLoadError(
                f"head expects {float_head.in_dim}-d input but encoder {self.encoder_name} "
                f"gives {self.hidden_size}-d"
            )
        self.dim = int(float_head.out_dim)
        if self.dim != DIM:
            raise ModelLoadError(f"head output is {self.dim}-d; the protocol's dimension is {DIM}")
        self.head_sha256 = head_weights_sha256(float_head)
        # The same function, faster: a +-scale fc2 runs as an exact int8 GEMM, the seeded
        # head's from its Hadamard structure (bit-identical, no matrix held). fc2's float32
        # matrix (189 MB) is then dropped; `head` rebuilds it for whoever asks.
        self._run_head = fast_head(float_head, seed=DEFAULT_HEAD_SEED if head is None else None)
        self._float_head: ProjectionHead | None = (
            float_head if self._run_head is float_head else None
        )
        del float_head

        self.reference = checked_reference(reference)
        self.space_id = embedder_space_id(self)
        short = "minilm-l6" if self.encoder_name == _enc.DEFAULT_ENCODER_NAME else self.encoder_name
        self.model_name = f"dso-{short.lower()}-{self.dim}"
        if head is not None:
            self.model_name += f"-{self.space_id[:8]}"
        self._lock = threading.Lock()  # one forward pass at a time (shared buffers, threads)
        self._tok_lock = threading.Lock()
        self._search_encoder: torch.nn.Module | None = None
        #: What `embed_query(for_search=True)` encodes with (see prepare_query_runtime).
        self._query: _rt.OnnxQueryEncoder | None = None
        self._query_prepared = False
        self.query_runtime = "torch"
        # torch threads follow the free cores unless `threads` pins them (runtime.py).
        self._governor = (
            None if threads is not None else _rt.ThreadGovernor(torch.get_num_threads())
        )

    def _load_float_head(self) -> tuple[ProjectionHead, dict[str, str]]:
        """(head in float32 on this embedder's device, metadata): seeded, or from its file."""
        if self.head_path is None:
            built = build_seeded_head(self.hidden_size, DEFAULT_HEAD_SEED)
            metadata = {"seed": str(DEFAULT_HEAD_SEED)}
        else:
            built, metadata = load_head(self.head_path)
        return built.to(self.device).eval(), metadata

    # ----------------------------------------------------------------- public API

    @property
    def head(self) -> ProjectionHead:
        """The head as a plain float32 module (rebuilt on each call when only its fast form is
        kept: benchmarks and training ask for it, the embedding paths never do)."""
        if self._float_head is not None:
            return self._float_head
        return self._load_float_head()[0]

    @property
    def token_pad_id(self) -> int:
        """The id padded batches are filled with."""
        return int(self._pad_id)

    @property
    def head_runner(self) -> Any:
        """What runs the head on the exact path: the int8 kernel, or the float32 head."""
        return self._run_head

    def token_ids(self, texts: Sequence[str], kind: str = "document") -> list[list[int]]:
        """Token ids per text as the encoder sees them (prefix and special tokens included,
        after truncation)."""
        return self._tokenize(validate_texts(texts), kind)

    def count_tokens(self, texts: Sequence[str], kind: str = "document") -> list[int]:
        """Tokens per text as the encoder sees it (prefix and special tokens included, after
        truncation)."""
        return [len(ids) for ids in self._tokenize(validate_texts(texts), kind)]

    def encode_base(
        self, texts: Sequence[str], batch_size: int = 64, kind: str = "document"
    ) -> np.ndarray:
        """(n, hidden_size) float32: the encoder's own L2-normalised pooled vectors."""
        texts = validate_texts(texts)
        batch_size = validate_batch_size(batch_size)
        out = np.empty((len(texts), self.hidden_size), dtype=np.float32)
        self._run(texts, batch_size, False, out, lambda p: p.cpu().numpy(), kind)
        return out

    def embed(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        batch_size: int = 64,
        progress: bool | None = None,
        kind: str = "document",
    ) -> np.ndarray:
        """(n, dim) float32 unit-norm vectors; dim 1024/2048/4096 gives renormalised prefixes.

        `kind` ("document" or "query") picks the space's instruction prefix.

        Texts are sorted by token length into batches (little padding) and returned in input
        order. An empty string is valid (it embeds the special tokens alone); texts longer than
        the encoder's max length are truncated. progress=None shows a bar on a terminal for
        long inputs.
        """
        texts = validate_texts(texts)
        dim = validate_dim(dim)
        batch_size = validate_batch_size(batch_size)
        progress = show_progress(progress, len(texts))
        out = np.empty((len(texts), dim), dtype=np.float32)
        self._run(texts, batch_size, bool(progress), out, lambda p: self._project(p, dim), kind)
        return out

    def embed_query(
        self, text: str, dim: int | None = None, for_search: bool = False, kind: str | None = None
    ) -> np.ndarray:
        """(dim,) float32 unit vector for one text.

        By default exactly `embed([text])[0]`: use it for anything that becomes a code or a
        submission. `for_search=True` is the low-latency path for a search query that never
        leaves this node: a bfloat16 copy of the encoder (where the CPU has native bfloat16)
        and a 2-limb integer fc2; it lands within cosine ~0.9999 of the exact vector (the
        benchmark reports its retrieval quality as `native_search_path`).
        `kind` picks the instruction prefix; None = "query" for a search, else "document".
        """
        if not isinstance(text, str):
            raise EmbedError(f"text must be str, got {type(text).__name__}")
        if kind is None:
            kind = "query" if for_search else "document"
        if not for_search:
            return self.embed([text], dim=dim, batch_size=1, progress=False, kind=kind)[0]
        dim = validate_dim(dim)
        ids = self._tokenize(validate_texts([text]), kind)[0]
        if not self._query_prepared:
            self.prepare_query_runtime()
        query = self._query if len(ids) >= _rt.MIN_INT8_TOKENS else None
        # The int8 encoder runs outside the torch lock (it has its own): a code being
        # computed on the exact path does not hold up a search's encoder.
        base = torch.from_numpy(query.pooled(ids))[None, :] if query is not None else None
        with self._lock, torch.inference_mode():
            if base is not None:
                pooled = base
            else:
                if self._governor is not None:
                    self._governor.update()
                input_ids = torch.tensor([ids], dtype=torch.int64, device=self.device)
                # A short text beside the int8 model takes the exact encoder (no second,
                # bfloat16 copy of it just for short queries).
                model = self._search_model() if self._query is None else self.model
                hidden = model(input_ids=input_ids).last_hidden_state.float()
                pooled = self._pool(hidden, torch.ones(input_ids.shape, device=self.device))
            if isinstance(self._run_head, FastHead):
                vec = self._run_head(pooled, limbs=2)
            else:
                vec = self._run_head(pooled)
            if dim != vec.shape[1]:
                vec = torch.nn.functional.normalize(vec[:, :dim], p=2.0, dim=-1)
            return vec[0].cpu().numpy().astype(np.float32, copy=False)

    def prepare_query_runtime(
        self, runtime: str = "onnx-int8", cache_dir: Path | None = None
    ) -> str:
        """Choose the encoder of `embed_query(for_search=True)`; returns the one in use.

        "onnx-int8" builds (first time, ~15 s) or loads the int8 model from `cache_dir`
        (default: the user cache) and keeps it only if it passes the cosine gate on fixed
        probes; on any failure, or with "torch", searches use the torch encoder. Codes never
        depend on this choice. Called once by the node at start, else on the first search.
        """
        if runtime not in _rt.QUERY_RUNTIMES:
            raise EmbedError(f"query runtime must be one of {_rt.QUERY_RUNTIMES}, got {runtime!r}")
        self._query_prepared = True
        self._query, self.query_runtime = None, "torch"
        if runtime == "torch" or self.device.type != "cpu" or not _rt.available():
            return self.query_runtime
        if self.options.pooling != "mean" or self.options.dtype != "float32":
            # The int8 model is exported for mean pooling over a float32 encoder (runtime.py).
            _log.info(
                "query encoder: %s pooling / %s: searches use the exact encoder",
                self.options.pooling,
                self.options.dtype,
            )
            return self.query_runtime
        folder = cache_dir if cache_dir is not None else _rt.default_cache_dir()
        try:
            calibration = _rt.calibration_ids(self.token_ids)
            with self._lock:  # the export runs the torch model
                path, built = _rt.build_or_load(
                    self.model, self._pad_id, self.encoder_sha256, folder, calibration
                )
            query = _rt.OnnxQueryEncoder(path, _rt.QUERY_THREADS)
            probes = list(_rt.PROBES)
            cosines = _rt.probe_cosines(query, self.encode_base(probes), self._tokenize(probes))
        except _rt.QueryRuntimeError as exc:
            _log.warning("query encoder: %s; searches use the exact encoder", exc)
            return self.query_runtime
        if cosines.min() < _rt.MIN_PROBE_COSINE or cosines.mean() < _rt.MIN_MEAN_COSINE:
            _log.warning(
                "int8 query encoder at cosine min %.4f / mean %.4f on the probes (gate %.3f / "
                "%.2f): searches use the exact encoder",
                float(cosines.min()),
                float(cosines.mean()),
                _rt.MIN_PROBE_COSINE,
                _rt.MIN_MEAN_COSINE,
            )
            return self.query_runtime
        if built:
            _log.info("built the int8 query encoder %s", path)
        self._query, self.query_runtime = query, runtime
        return self.query_runtime

    def _search_model(self) -> torch.nn.Module:
        """The encoder used by `embed_query(for_search=True)` (built on first use)."""
        if self._search_encoder is None:
            if (
                self.device.type == "cpu"
                and _cpu_has_native_bf16()
                and self.options.dtype == "float32"
            ):
                self._search_encoder = copy.deepcopy(self.model).to(torch.bfloat16).eval()
            else:
                self._search_encoder = self.model
        return self._search_encoder

    def project(self, base: np.ndarray, dim: int | None = None) -> np.ndarray:
        """Apply the head to encoder vectors from `encode_base` (n, hidden) -> (n, dim)."""
        dim = validate_dim(dim)
        base = np.asarray(base, dtype=np.float32)
        if base.ndim != 2 or base.shape[1] != self.hidden_size or not np.isfinite(base).all():
            raise EmbedError(f"base must be a finite (n, {self.hidden_size}) array")
        with self._lock, torch.inference_mode():
            return self._project(torch.from_numpy(base).to(self.device), dim)

    def info(self) -> dict[str, object]:
        """What defines this embedder's space (for status output and logs)."""
        return embedder_info(
            self,
            device=str(self.device),
            head_kernel=self._head_kernel(),
            threads=torch.get_num_threads(),
        )

    # ----------------------------------------------------------------- internals

    def _head_kernel(self) -> str:
        if not isinstance(self._run_head, FastHead):
            return "float32"
        return (
            "hadamard-limbs"
            if isinstance(self._run_head.fc2, HadamardSignLinear)
            else ("int8-limbs")
        )

    def _tokenize(self, texts: list[str], kind: str = "document") -> list[list[int]]:
        if not texts:
            return []
        clipped = clip_for_tokenizer(texts, self.options.prefix(kind), self.max_length)
        # A fast (Rust) tokenizer mutates its truncation state per call and raises "Already
        # borrowed" when two threads call it at once (the socket server embeds from threads).
        with self._tok_lock:
            enc = self.tokenizer(
                clipped,
                truncation=True,
                max_length=self.max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        return enc["input_ids"]

    def _run(
        self,
        texts: list[str],
        batch_size: int,
        progress: bool,
        out: np.ndarray,
        fn: Callable[[torch.Tensor], np.ndarray],
        kind: str = "document",
    ) -> None:
        """out[i] = fn(pooled batch)[row] over length-sorted batches, in input order."""
        ids = self._tokenize(texts, kind)
        bar = Progress(len(ids)) if progress else None
        try:
            for idx in length_sorted_batches(ids, batch_size):
                input_ids, mask = padded([ids[i] for i in idx], self._pad_id)
                with self._lock, torch.inference_mode():
                    if self._governor is not None:
                        self._governor.update()
                    pooled = self._encode_ids(
                        torch.from_numpy(input_ids).to(self.device),
                        torch.from_numpy(mask).to(self.device),
                    )
                    out[np.asarray(idx)] = fn(pooled)
                if bar:
                    bar.advance(len(idx))
        finally:
            if bar:
                bar.close()

    def _encode_ids(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return self._pool(hidden, mask)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, hidden) unit vectors from token states; rows are right-padded (`_run`), so
        the last real token of a row sits at its length - 1 (a causal model never sees the
        padding after it)."""
        pooling = self.options.pooling
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "last_token":
            last = mask.sum(dim=1).long().clamp(min=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2.0, dim=-1)

    def _project(self, pooled: torch.Tensor, dim: int) -> np.ndarray:
        with torch.inference_mode():
            vec = self._run_head(pooled.float())
            if dim != vec.shape[1]:
                vec = torch.nn.functional.normalize(vec[:, :dim], p=2.0, dim=-1)
            return vec.cpu().numpy().astype(np.float32, copy=False)


def _max_length(options: EncoderOptions, folder: Path, tokenizer: Any, config: Any) -> int:
    """The declared max length, bounded by the model's positions and the cap; else the
    folder's (encoder.max_seq_length, as before options existed)."""
    if options.max_length is None:
        return _enc.max_seq_length(folder, tokenizer)
    positions = getattr(config, "max_position_embeddings", None)
    bound = _enc.MAX_SEQ_LENGTH_CAP
    if isinstance(positions, int) and positions > 0:
        bound = min(bound, positions)
    if options.max_length > bound:
        raise ModelLoadError(
            f"max_length {options.max_length} exceeds what the encoder supports ({bound})"
        )
    return options.max_length


_CACHE: dict[tuple, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(
    encoder: str | Path | None = None,
    head: str | Path | None = None,
    device: str = DEFAULT_DEVICE,
    threads: int | None = None,
    **options: Any,
) -> Embedder:
    """One Embedder per (encoder, head, device, options) per process: loading takes seconds.
    `options`: Embedder's pooling, query_prefix, document_prefix, max_length, dtype."""
    key = (
        str(Path(encoder).resolve()) if encoder is not None else None,
        str(Path(head).resolve()) if head is not None else None,
        device,
        threads,
        tuple(sorted(options.items())),
    )
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Embedder(encoder, head, device=device, threads=threads, **options)
        return _CACHE[key]
