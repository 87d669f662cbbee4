"""Byzantine-robust aggregation of the embeddings several peers submit for one experience.

Pure numpy, no I/O. `aggregate` takes an (n, d) array of float rows (one per submitter) and
returns an `AggregateResult`: the consensus direction (unit L2), which rows were accepted, and
each row's cosine to the consensus. `aggregate_codes` does the same on 964-byte BitDelta codes
(decode, aggregate, re-encode), as the network does.

The rule (ARCHITECTURE.md "The pure core", Aggregation)
-----------------------------------
1. Every row is scaled to unit length first (``normalize=True``). Retrieval ranks by cosine, so
   a row's length carries no information; left alone it would let one row with a huge norm (or
   a code with a huge scale) dominate the mean, and would turn "inner product manipulation"
   into a free win against it. Rows are divided by their largest |value| first: no overflow,
   and a decoded code (+-a, zero reference) becomes exactly +-1, so decoded rows have equal
   magnitudes, a tied vote gives a median of exactly 0 (bit 1 when re-encoded, the codec's
   d >= 0) and every node derives the same consensus code, with no float noise deciding.
2. A consensus is estimated from the rows with the chosen ``method``:

   - ``median``: coordinate-wise median (the default; with ``weights``, the coordinate-wise
     weighted median, for networks that fear Sybils and weigh peers by stake or allow-list),
   - ``trimmed_mean``: per coordinate, drop the ``floor(trim * n)`` lowest and highest values
     and average the rest (``trim`` = 0.25 by default; it should be at least the share of
     attackers you expect, Yin et al. 2018),
   - ``geometric_median``: the point minimising the sum of Euclidean distances (Weiszfeld's
     algorithm with the Vardi-Zhang step when the estimate sits on a row; bounded iterations),
   - ``mean``: the plain average, the vulnerable baseline.

3. Outlier rule: with ``cos`` the rows' cosines to the consensus,
   ``cutoff = max(floor, median(cos) - k_mad * max(1.4826 * MAD(cos), min_mad))`` and rows with
   ``cos < cutoff`` are rejected. The median and MAD are weighted when ``weights`` are given.
   Defaults and why:

   - ``floor = 0.5``: codes of the same text from honest peers agree far above that (a code
     keeps a cosine of about 0.8 to its own vector, identical inputs give identical codes),
     while a row at cosine < 0.5 points somewhere else (unrelated 7680-d vectors sit near 0).
   - ``k_mad = 3`` with the MAD scaled by 1.4826 (a standard deviation for Gaussian data):
     the usual "three sigma" robust cut, which a sane honest row fails about 0.1% of the time.
   - ``min_mad = 0.02``: honest peers embedding the same text agree almost exactly, so the MAD
     of their cosines is ~0 and a bare MAD rule would reject an honest row that differs by float
     rounding or a few flipped bits. The spread is never taken below 0.02, i.e. rows within
     0.06 of the median cosine are always kept (the floor still applies).

4. Iteration: the consensus is recomputed from the accepted rows and the rule re-applied to
   *all* rows against the new consensus (a row rejected against a poisoned first estimate can
   come back), until the accepted set stops changing or ``max_rounds`` is reached (default 5;
   it is usually 2: one rejection, one confirmation). If no row passes (or, with weights, no
   accepted row has positive weight), the last consensus is kept, nothing is accepted and the
   result is not confirmed.

5. ``confirmed`` is true when at least ``quorum`` rows are accepted (default 3); with
   ``weights``, only accepted rows of positive weight count.

Honest majority is an assumption, not a result: the median holds while fewer than half of the
submitters (or, weighted, less than half of the weight) are Byzantine. A Sybil majority of
unweighted submitters moves the consensus wherever it likes (see README, "Limits").
`dsonode bench byzantine` measures the methods against published attacks (BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dsonode.core import bitdelta
from dsonode.core.constants import CODE_BYTES, DIM
from dsonode.core.errors import AggregateError, CodecError

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_K_MAD",
    "DEFAULT_MIN_MAD",
    "DEFAULT_QUORUM",
    "DEFAULT_TRIM",
    "MAD_SCALE",
    "METHODS",
    "AggregateResult",
    "aggregate",
    "aggregate_codes",
    "is_confirmed",
    "weighted_median",
]

METHODS = ("median", "trimmed_mean", "geometric_median", "mean")
#: Methods that accept per-row weights (a weighted trimmed mean has no single standard form).
WEIGHTED_METHODS = ("median", "geometric_median", "mean")

DEFAULT_FLOOR = 0.5
DEFAULT_K_MAD = 3.0
#: Scales the MAD to a standard deviation for Gaussian data (1 / Phi^-1(3/4)).
MAD_SCALE = 1.4826
DEFAULT_MIN_MAD = 0.02
DEFAULT_TRIM = 0.25
DEFAULT_QUORUM = 3
DEFAULT_MAX_ROUNDS = 5
DEFAULT_MAX_ITER = 200
DEFAULT_TOL = 1e-7


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of one aggregation. Arrays are read-only."""

    #: (d,) float32, unit L2: the consensus direction.
    consensus: np.ndarray
    #: (n,) bool: rows the final consensus was computed from.
    accepted: np.ndarray
    #: (n,) float64: each row's cosine to the final consensus.
    cosines: np.ndarray
    method: str
    weighted: bool
    #: The cut-off of the last round (-inf when rejection is off).
    cutoff: float
    #: Median of the cosines and the spread (scaled MAD, floored at min_mad) behind the cut-off.
    center: float
    spread: float
    #: Rejection rounds evaluated, and whether the accepted set reached a fixed point.
    rounds: int
    converged: bool
    #: Weiszfeld iterations of the final estimate (0 for the other methods).
    solver_iterations: int
    quorum: int
    confirmed: bool
    #: The consensus as a 964-byte BitDelta code (set by aggregate_codes only).
    code: bytes | None = None

    @property
    def n_accepted(self) -> int:
        return int(np.count_nonzero(self.accepted))

    @property
    def rejected(self) -> np.ndarray:
        """Indices of the rejected rows (to count against their authors)."""
        return np.flatnonzero(~self.accepted)


def is_confirmed(n_accepted: int, quorum: int = DEFAULT_QUORUM) -> bool:
    """A consensus is confirmed once `quorum` submissions agree with it."""
    return n_accepted >= quorum


# --------------------------------------------------------------------------------------------
# Validation


def _as_matrix(vectors: Any) -> np.ndarray:
    try:
        arr = np.asarray(vectors)
    except (TypeError, ValueError) as exc:
        raise AggregateError(f"vectors are not a numeric array: {exc}") from exc
    if arr.dtype.kind not in "fiu":
        raise AggregateError(f"vectors must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise AggregateError(f"vectors must be a 2-D (n, d) array, got shape {arr.shape}")
    n, d = arr.shape
    if n == 0:
        raise AggregateError("no rows to aggregate (n = 0)")
    if d == 0:
        raise AggregateError("rows have no dimensions (d = 0)")
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise AggregateError(f"rows contain NaN or inf: rows {_few(bad)}")
    return arr


def _as_weights(weights: Any, n: int) -> np.ndarray:
    try:
        w = np.asarray(weights)
    except (TypeError, ValueError) as exc:
        raise AggregateError(f"weights are not a numeric array: {exc}") from exc
    if w.dtype.kind not in "fiu":
        raise AggregateError(f"weights must be real numbers, got dtype {w.dtype}")
    if w.shape != (n,):
        raise AggregateError(f"weights must have shape ({n},) (one per row), got {w.shape}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise AggregateError(
            f"weights contain NaN or inf: rows {_few(np.flatnonzero(~np.isfinite(w)))}"
        )
    if (w < 0).any():
        raise AggregateError(f"weights must be >= 0: rows {_few(np.flatnonzero(w < 0))}")
    if not w.sum() > 0:
        raise AggregateError("weights are all zero")
    return w


def _few(indices: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def _check_float(name: str, value: Any, lo: float, hi: float, *, hi_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise AggregateError(f"{name} must be a number, got {value!r}") from exc
    ok = math.isfinite(v) and lo <= v and (v < hi if hi_open else v <= hi)
    if not ok:
        bracket = ")" if hi_open else "]"
        raise AggregateError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}")
    return v


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise AggregateError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Estimators (rows are float64, weights None or positive-sum float64)


def weighted_median(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Median along axis 0, weighted when `weights` is given (one weight per row).

    Where the cumulative weight lands exactly on half the total (e.g. equal weights and an even
    count) the two neighbouring values are averaged, so equal weights give `np.median`.
    """
    x = np.asarray(values, dtype=np.float64)
    if weights is None:
        # np.sort along axis 0 is about 2.5x faster than np.median here (measured, n=20, d=7680)
        xs = np.sort(x, axis=0)
        n = xs.shape[0]
        mid = 0.5 * (xs[(n - 1) // 2] + xs[n // 2])
        return float(mid) if x.ndim == 1 else mid
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    cw = np.cumsum(w[order], axis=0)
    total = cw[-1]
    half = total / 2.0
    eps = total * 1e-12
    lo = np.argmax(cw >= half - eps, axis=0)
    hi = np.argmax(cw > half + eps, axis=0)
    if x.ndim == 1:
        return float(0.5 * (xs[lo] + xs[hi]))
    lo_v = np.take_along_axis(xs, lo[None, :], axis=0)[0]
    hi_v = np.take_along_axis(xs, hi[None, :], axis=0)[0]
    return 0.5 * (lo_v + hi_v)


def _trimmed_mean(x: np.ndarray, trim: float) -> np.ndarray:
    n = x.shape[0]
    k = math.floor(trim * n + 1e-9)
    if 2 * k >= n:  # cannot happen for trim < 0.5, kept as a guard
        k = (n - 1) // 2
    if k == 0:
        return x.mean(axis=0)
    return np.sort(x, axis=0)[k : n - k].mean(axis=0)


def _geometric_median(
    x: np.ndarray, w: np.ndarray | None, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Weiszfeld's algorithm with the Vardi-Zhang step for an estimate that sits on a row.

    Starts from the coordinate-wise (weighted) median, a robust point already near the answer.
    Stops when a step moves the estimate by less than `tol` (relative), or after `max_iter`.
    """
    n = x.shape[0]
    y = np.asarray(weighted_median(x, w), dtype=np.float64)
    w = np.ones(n) if w is None else w
    scale = float(np.max(np.linalg.norm(x, axis=1)))
    coincide = 1e-12 * scale
    for it in range(1, max_iter + 1):
        diff = x - y
        dist = np.linalg.norm(diff, axis=1)
        near = dist <= coincide
        inv = np.zeros(n)
        inv[~near] = w[~near] / dist[~near]
        if inv.sum() == 0:  # every row of positive weight sits on y: y is the answer
            return y, it
        t = inv @ x / inv.sum()
        eta = float(w[near].sum())
        if eta > 0:
            # Vardi & Zhang (2000): y is optimal when the pull of the other rows does not exceed
            # the weight sitting on y; otherwise move only part of the way to the Weiszfeld point.
            r = float(np.linalg.norm(inv @ diff))
            if r <= eta:
                return y, it
            gamma = eta / r
            t = (1.0 - gamma) * t + gamma * y
        step = float(np.linalg.norm(t - y))
        y = t
        if step <= tol * max(float(np.linalg.norm(y)), 1e-300):
            return y, it
    return y, max_iter


def _estimate(
    x: np.ndarray,
    w: np.ndarray | None,
    method: str,
    trim: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, int]:
    if method == "median":
        est, iters = weighted_median(x, w), 0
    elif method == "mean":
        est, iters = (x.mean(axis=0) if w is None else w @ x / w.sum()), 0
    elif method == "trimmed_mean":
        est, iters = _trimmed_mean(x, trim), 0
    else:
        est, iters = _geometric_median(x, w, max_iter, tol)
    est = np.asarray(est, dtype=np.float64)
    norm = float(np.linalg.norm(est))
    if not (norm > 0 and math.isfinite(norm)):
        raise AggregateError(
            f"the {method} of the rows is the zero vector: the rows cancel out, no consensus"
        )
    return est / norm, iters


def _cutoff(
    cos: np.ndarray, w: np.ndarray | None, floor: float, k_mad: float, min_mad: float
) -> tuple[float, float, float]:
    center = float(weighted_median(cos, w))
    mad = float(weighted_median(np.abs(cos - center), w))
    spread = max(MAD_SCALE * mad, min_mad)
    return max(floor, center - k_mad * spread), center, spread


# --------------------------------------------------------------------------------------------
# Public API


def aggregate(
    vectors: Any,
    method: str = "median",
    weights: Any = None,
    *,
    floor: float = DEFAULT_FLOOR,
    k_mad: float = DEFAULT_K_MAD,
    min_mad: float = DEFAULT_MIN_MAD,
    trim: float = DEFAULT_TRIM,
    reject: bool = True,
    normalize: bool = True,
    zero_rows: str = "error",
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    quorum: int = DEFAULT_QUORUM,
) -> AggregateResult:
    """Robust consensus of an (n, d) array of rows; see the module docstring for the rule.

    `zero_rows`: "error" (default) raises on a zero row; "reject" leaves such rows out (they
    get cosine 0 and are never accepted), for callers whose rows come from peers: a zero-scale
    BitDelta code is valid on the wire, so one peer must not be able to stop aggregation.

    Raises AggregateError for: an unknown method, rows that are not a finite non-empty 2-D
    real array, zero rows (unless rejected; all rows zero always raises), weights that are not
    one finite non-negative number per row with a positive sum, weights with `trimmed_mean`,
    parameters out of range, and rows that cancel out to a zero consensus.
    """
    if method not in METHODS:
        raise AggregateError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if zero_rows not in ("error", "reject"):
        raise AggregateError(f"zero_rows must be 'error' or 'reject', got {zero_rows!r}")
    floor = _check_float("floor", floor, -1.0, 1.0)
    k_mad = _check_float("k_mad", k_mad, 0.0, 1e6)
    min_mad = _check_float("min_mad", min_mad, 0.0, 2.0)
    trim = _check_float("trim", trim, 0.0, 0.5, hi_open=True)
    tol = _check_float("tol", tol, 0.0, 1.0)
    max_rounds = _check_int("max_rounds", max_rounds, 1)
    max_iter = _check_int("max_iter", max_iter, 1)
    quorum = _check_int("quorum", quorum, 1)

    x = _as_matrix(vectors)
    n = x.shape[0]
    w = None
    if weights is not None:
        if method not in WEIGHTED_METHODS:
            raise AggregateError(
                f"weights are supported by {', '.join(WEIGHTED_METHODS)}, not {method}"
            )
        w = _as_weights(weights, n)

    # Scale before taking norms, so 1e300 does not overflow and 1e-200 does not underflow.
    peak = np.max(np.abs(x), axis=1)
    live = peak > 0
    if not live.all():
        dead = np.flatnonzero(~live)
        if zero_rows == "error" or not live.any():
            raise AggregateError(
                f"rows {_few(dead)} are zero vectors (no direction); drop them before aggregating"
            )
        if w is not None and not w[live].sum() > 0:
            raise AggregateError("the weights of the non-zero rows are all zero")
    xl, wl = x[live] / peak[live, None], None if w is None else w[live]
    if normalize:
        xl /= np.linalg.norm(xl, axis=1, keepdims=True)
    else:
        # One common factor changes no direction: every estimator is scale-equivariant.
        xl = x[live] / peak.max()
    core = _robust_consensus(
        xl, wl, method, trim, reject, floor, k_mad, min_mad, max_rounds, max_iter, tol
    )
    consensus, live_mask, live_cos, cutoff, center, spread, rounds, converged, iters = core

    mask = np.zeros(n, dtype=bool)
    mask[live] = live_mask
    cos = np.zeros(n)
    cos[live] = live_cos
    counted = mask if w is None else mask & (w > 0)
    out_consensus = consensus.astype(np.float32)
    out_consensus /= np.linalg.norm(out_consensus)
    for arr in (out_consensus, mask, cos):
        arr.flags.writeable = False
    return AggregateResult(
        consensus=out_consensus,
        accepted=mask,
        cosines=cos,
        method=method,
        weighted=w is not None,
        cutoff=float(cutoff),
        center=center,
        spread=float(spread),
        rounds=rounds,
        converged=converged,
        solver_iterations=iters,
        quorum=quorum,
        confirmed=is_confirmed(int(np.count_nonzero(counted)), quorum),
    )


def _robust_consensus(
    x: np.ndarray,
    w: np.ndarray | None,
    method: str,
    trim: float,
    reject: bool,
    floor: float,
    k_mad: float,
    min_mad: float,
    max_rounds: int,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float, int, bool, int]:
    """The estimate / reject / re-estimate loop over non-zero rows (see the module docstring).

    Returns (consensus, accepted, cosines, cutoff, center, spread, rounds, converged, iters).
    """
    n = x.shape[0]
    row_norms = np.linalg.norm(x, axis=1)

    def cosines_to(c: np.ndarray) -> np.ndarray:  # c is unit length
        return np.clip(x @ c / row_norms, -1.0, 1.0)

    mask = np.ones(n, dtype=bool)
    consensus, iters = _estimate(x, w, method, trim, max_iter, tol)
    cos = cosines_to(consensus)
    cutoff, center, spread = -math.inf, float(weighted_median(cos, w)), 0.0
    rounds, converged = 0, not reject
    if not reject:
        return consensus, mask, cos, cutoff, center, spread, rounds, converged, iters
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (rounds is returned)
        cutoff, center, spread = _cutoff(cos, w, floor, k_mad, min_mad)
        new_mask = cos >= cutoff
        if np.array_equal(new_mask, mask):
            converged = True
            break
        if not new_mask.any() or (w is not None and not w[new_mask].sum() > 0):
            # Nothing (of positive weight) is close enough to any consensus: keep the last
            # estimate for the record, accept nothing, so the result is never confirmed.
            mask = np.zeros(n, dtype=bool)
            break
        mask = new_mask
        consensus, iters = _estimate(
            x[mask], None if w is None else w[mask], method, trim, max_iter, tol
        )
        cos = cosines_to(consensus)
    return consensus, mask, cos, cutoff, center, spread, rounds, converged, iters


def _as_codes(codes: Any) -> np.ndarray:
    if isinstance(codes, bytes | bytearray | memoryview):
        raise AggregateError(
            "codes must be several codes: a sequence of bytes or an (n, 964) array"
        )
    if isinstance(codes, np.ndarray):
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != CODE_BYTES:
            raise AggregateError(
                f"codes must be a uint8 array of shape (n, {CODE_BYTES}), "
                f"got {codes.dtype} {codes.shape}"
            )
        arr = codes
    else:
        try:
            items = list(codes)
        except TypeError as exc:
            raise AggregateError(
                f"codes must be a sequence of bytes, got {type(codes).__name__}"
            ) from exc
        for i, item in enumerate(items):
            if not isinstance(item, bytes | bytearray | memoryview):
                raise AggregateError(f"code {i} is not bytes but {type(item).__name__}")
            if len(item) != CODE_BYTES:
                raise AggregateError(f"code {i} has {len(item)} bytes, expected {CODE_BYTES}")
        arr = (
            np.frombuffer(b"".join(bytes(c) for c in items), dtype=np.uint8).reshape(-1, CODE_BYTES)
            if items
            else np.zeros((0, CODE_BYTES), dtype=np.uint8)
        )
    if arr.shape[0] == 0:
        raise AggregateError("no codes to aggregate (n = 0)")
    return arr


def aggregate_codes(
    codes: Any, ref: np.ndarray | None = None, method: str = "median", **kwargs: Any
) -> AggregateResult:
    """`aggregate` over BitDelta codes: decode (n, 964) codes, aggregate, re-encode.

    `codes` is an (n, 964) uint8 array or a sequence of 964-byte strings; `ref` is the space's
    reference vector (None = zero). Keyword arguments are those of `aggregate`; `zero_rows`
    defaults to "reject" here, because a zero-scale code is valid on the wire (with the zero
    reference it decodes to the zero vector) and one peer must not block a consensus. The
    result carries the consensus code in `code` (964 bytes). A code the codec refuses (e.g. a
    NaN scale) raises AggregateError naming the codec's complaint.
    """
    arr = _as_codes(codes)
    try:
        decoded = bitdelta.decode(arr, ref=ref)
    except CodecError as exc:
        raise AggregateError(f"cannot decode codes: {exc}") from exc
    decoded = np.asarray(decoded, dtype=np.float64).reshape(arr.shape[0], DIM)
    kwargs.setdefault("zero_rows", "reject")
    result = aggregate(decoded, method=method, **kwargs)
    try:
        code = bitdelta.encode(result.consensus, ref=ref)
    except CodecError as exc:  # pragma: no cover - a unit finite vector always encodes
        raise AggregateError(f"cannot encode the consensus: {exc}") from exc
    return replace(result, code=bytes(code))
