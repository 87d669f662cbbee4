"""The query encoder: ONNX Runtime with int8 weights, for searches that never leave the node.

A search query's vector is compared with codes on this node and then thrown away, so it may
come from a faster, slightly inexact encoder; anything that becomes a code (a signed
submission) keeps the exact path (the lean embedder's float32 graph, or torch; ARCHITECTURE.md
"Lean embedder"). Measured side by side on this machine (BENCHMARKS.md, "query path"): ONNX
Runtime with dynamic int8 quantisation per output channel was the fastest candidate that kept
cosine >= 0.99 to the exact vector; per-tensor int8 (ONNX Runtime or torch's dynamic
quantisation) fell to ~0.95, and the float32 ONNX graph was exact but about 2.4x slower than
int8. The recipe itself (smoothing, one layer kept float) is dsonode.embed.quantize's.

For the torch embedder the int8 model is built here, offline, from the encoder it already
loaded (torch's ONNX export, then the recipe), and cached in a directory with a JSON sidecar
holding its sha256 and what it was built from (encoder digest, recipe, library versions); the
lean embedder's is part of its compiled folder. A file whose checksum or provenance does not
match is rebuilt; a build that fails, or whose vectors miss the cosine gate on fixed probe
sentences, leaves the exact path in place. onnxruntime and onnx are an optional extra
(`pip install dsonode[onnx]`): without them the query path is the exact one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.embed.quantize import CALIBRATION_TEXTS
from dsonode.embed.quantize import RECIPE as QUANT_RECIPE

log = logging.getLogger("dsonode.embed.runtime")

#: Query encoder runtimes: "onnx-int8" (falls back to "torch" when it cannot be built), or
#: "torch" (the exact encoder for queries too).
QUERY_RUNTIMES = ("onnx-int8", "torch")
#: Version of the build recipe (the export here, the quantisation in dsonode.embed.quantize):
#: part of the cache key, so a change rebuilds every cached model.
RECIPE = f"{QUANT_RECIPE}+export-opset17"
#: The gate on fixed probe sentences: every probe's cosine between the int8 and the exact pooled
#: vector at least MIN_PROBE_COSINE, their mean at least MIN_MEAN_COSINE.
MIN_PROBE_COSINE = 0.985
MIN_MEAN_COSINE = 0.99
#: Texts of fewer tokens (special tokens included) take the exact encoder: int8 error does not
#: average out over one to four words (measured: cosine 0.97-0.98 for "ok", "I love it"),
#: while every Vaswani query (6-40 tokens) stayed at 0.99 (BENCHMARKS.md, "query path").
MIN_INT8_TOKENS = 8
#: Fixed sentences the gate embeds both ways (not from any benchmark's data).
PROBES = (
    "how do I prove a statement by induction",
    "the parser crashes on empty input",
    "why does my bread not rise",
    "retry a request after a network timeout",
    "check the units before substituting numbers into a formula",
    "a slow query over a large table needs an index on the join column",
)
#: Intra-op threads of a query: one. A query is small; on a shared 2-core machine a second
#: spinning thread cost more than it gave (measured), and the other core serves the next call.
QUERY_THREADS = 1
_OPSET = 17


class QueryRuntimeError(RuntimeError):
    """The int8 query encoder could not be built or loaded (the exact path stays)."""


def available() -> bool:
    """True when onnxruntime and onnx (the optional extra) are installed. Only their metadata is
    read: onnx (~11 MB resident) is imported only to build the model."""
    try:
        _versions()
    except PackageNotFoundError:
        return False
    return True


def default_cache_dir() -> Path:
    """Where a process without a data directory caches the model (DSONODE_CACHE_DIR, else
    $XDG_CACHE_HOME/dsonode, else ~/.cache/dsonode: the encoder digests' cache folder)."""
    explicit = os.environ.get("DSONODE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "dsonode"


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "onnx", "onnxruntime")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_paths(cache_dir: Path, encoder_sha256: str) -> tuple[Path, Path]:
    """(model file, sidecar) for one encoder in `cache_dir`."""
    stem = f"query-int8-{encoder_sha256[:16]}"
    return cache_dir / f"{stem}.onnx", cache_dir / f"{stem}.json"


def _provenance(encoder_sha256: str) -> dict[str, Any]:
    return {"recipe": RECIPE, "encoder_sha256": encoder_sha256, **_versions()}


def _cached(cache_dir: Path, encoder_sha256: str) -> Path | None:
    """The cached model if its sidecar matches its content and provenance, else None."""
    model, sidecar = cache_paths(cache_dir, encoder_sha256)
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not model.is_file():
        return None
    if meta.get("provenance") != _provenance(encoder_sha256):
        return None
    if meta.get("sha256") != _sha256(model):
        log.warning("cached query model %s does not match its checksum: rebuilding", model)
        return None
    return model


def export_float32(torch_model: Any, pad_id: int, dest: Path) -> None:
    """The torch encoder's token states as a float32 ONNX graph at `dest` (inputs input_ids and
    attention_mask, output hidden; batch and length dynamic)."""
    import torch

    class _Hidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    ids = torch.full((1, 8), pad_id, dtype=torch.int64)
    mask = torch.ones_like(ids)
    axes = {0: "batch", 1: "tokens"}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            _Hidden(torch_model).eval(),
            (ids, mask),
            str(dest),
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
            opset_version=_OPSET,
            dynamo=False,
        )


def quantize_int8(fp32: Path, dest: Path, calibration_ids: list[list[int]]) -> None:
    """The int8 query model at `dest` from the float32 graph `fp32` (dsonode.embed.quantize's
    recipe; `calibration_ids`: its CALIBRATION_TEXTS tokenised as queries). No torch."""
    from dsonode.embed.quantize import quantize_query_model

    quantize_query_model(fp32, dest, calibration_ids)


def calibration_ids(tokenize: Any) -> list[list[int]]:
    """The recipe's calibration sentences as token ids (`tokenize(texts, kind)`)."""
    ids: list[list[int]] = tokenize(list(CALIBRATION_TEXTS), "query")
    return ids


def _export_and_quantize(
    torch_model: Any, pad_id: int, dest: Path, calibration: list[list[int]]
) -> None:
    """torch encoder -> float32 ONNX (temporary) -> int8 ONNX at `dest`."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_float32(torch_model, pad_id, fp32)
        quantize_int8(fp32, dest, calibration)


def build_or_load(
    torch_model: Any,
    pad_id: int,
    encoder_sha256: str,
    cache_dir: Path,
    calibration: list[list[int]],
) -> tuple[Path, bool]:
    """(path of the int8 model, True if built now). Raises QueryRuntimeError."""
    if not available():
        raise QueryRuntimeError("onnxruntime/onnx not installed (pip install dsonode[onnx])")
    found = _cached(cache_dir, encoder_sha256)
    if found is not None:
        return found, False
    model, sidecar = cache_paths(cache_dir, encoder_sha256)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Nodes starting together on one machine build it once: the others wait, then load.
        with open(cache_dir / ".query-int8.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = _cached(cache_dir, encoder_sha256)
            if found is not None:
                return found, False
            _build(torch_model, pad_id, encoder_sha256, model, sidecar, calibration)
    except QueryRuntimeError:
        raise
    except Exception as exc:  # export/quantisation failures come in many types
        raise QueryRuntimeError(f"cannot build the int8 query encoder: {exc}") from exc
    return model, True


def _build(
    torch_model: Any,
    pad_id: int,
    encoder_sha256: str,
    model: Path,
    sidecar: Path,
    calibration: list[list[int]],
) -> None:
    """Export, quantise, then write the sidecar (its checksum is what makes the model valid)."""
    cache_dir = model.parent
    _export_and_quantize(torch_model, pad_id, model, calibration)
    meta = {"sha256": _sha256(model), "provenance": _provenance(encoder_sha256)}
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".query-int8.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(meta, f, sort_keys=True)
    os.replace(tmp, sidecar)


class OnnxQueryEncoder:
    """Token ids -> the L2-normalised mean-pooled encoder vector, by ONNX Runtime."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: the node's other threads need the core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise QueryRuntimeError(f"cannot load {path}: {exc}") from exc
        self.path = path
        self._lock = threading.Lock()  # one run at a time: the intra-op pool is the parallelism

    def pooled(self, ids: list[int]) -> np.ndarray:
        """(hidden,) float32 unit vector of one text's token ids (no padding, so no mask)."""
        input_ids = np.asarray([ids], dtype=np.int64)
        with self._lock:
            hidden = self._session.run(
                None, {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
            )[0]
        pooled = np.asarray(hidden[0], dtype=np.float32).mean(axis=0)
        norm = float(np.linalg.norm(pooled))
        return pooled / norm if norm > 0 else pooled


def probe_cosines(query: OnnxQueryEncoder, exact: np.ndarray, ids: list[list[int]]) -> np.ndarray:
    """Cosine of the int8 vector to the exact one (rows of `exact`) for each probe."""
    got = np.stack([query.pooled(i) for i in ids])
    return np.asarray((got * exact).sum(axis=1), dtype=np.float64)


def free_cores(cpus: int, load1: float, own_busy: float) -> float:
    """Cores not used by other processes: cpus minus the run queue (1-min load average) net of
    this process's own recent CPU use (cores busy)."""
    return cpus - max(0.0, load1 - own_busy)


def threads_for(cpus: int, load1: float, own_busy: float, cap: int) -> int:
    """torch intra-op threads for the next forward pass: as many as there are free cores (at
    least 1, at most `cap`). On this shared 2-core machine at load ~30, one thread embedded a
    query in 137 ms and two in 1,945 ms (a descheduled OpenMP worker stalls every barrier)."""
    return max(1, min(cap, int(free_cores(cpus, load1, own_busy) + 0.5)))


class ThreadGovernor:
    """Re-chooses torch's thread count from the free cores, at most every `interval_s`."""

    def __init__(self, cap: int, interval_s: float = 2.0) -> None:
        import time

        self.cap = max(1, cap)
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        self.interval_s = interval_s
        self._clock = time.monotonic
        self._cpu = time.process_time
        self._at = self._clock()
        self._cpu_at = self._cpu()
        self.threads = self.cap

    def update(self) -> int:
        """The thread count to use now (changes torch's setting when it changes)."""
        now = self._clock()
        if now - self._at < self.interval_s:
            return self.threads
        cpu = self._cpu()
        own = (cpu - self._cpu_at) / (now - self._at)
        self._at, self._cpu_at = now, cpu
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            return self.threads
        threads = threads_for(self.cpus, load1, own, self.cap)
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
        return self.threads
