"""`dsonode bench codec`: speed and fidelity of the 964-byte BitDelta code.

One batch of random unit vectors (default 10,000 x 7680 float32). Every timed operation runs
once per round, side by side in the same round, and the report gives medians over rounds
and the median of the per-round ratios, because this machine is shared and noisy:

* ``packbits_per_s``: bare ``np.packbits(signs, bitorder="little")`` of the batch's
  precomputed sign array (bool, n x 7680): the limit set by the issue.
* ``signs_per_s``: bare ``np.greater_equal(vectors, 0, out=...)``, the one pass over the
  float32 data that any encoder must make; shown to explain the encode/packbits ratio.
* ``encode_per_s``, ``decode_per_s`` (full 7680-d), ``decode_1024_per_s`` (prefix),
  ``hamming_per_s`` / ``hamming_prefix_per_s`` (codes scanned per second by one query),
  ``asymmetric_scores_per_s`` (codes rescored per second, on a few thousand codes as the
  index does).

Fidelity: ``cos_mean``/``cos_min`` between each vector and its decoded code, and the rejected
variant (ARCHITECTURE.md "The pure core": "1-bit deltas between neighbouring dimensions", decoded as a running
sum) as ``rejected_neighbour_delta_cos_mean``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from dsonode.argtypes import SubParsers
from dsonode.bench.common import add_common_args, add_output_args, code_rows, report
from dsonode.core import bitdelta
from dsonode.core.constants import CODE_BYTES, DIM, FLOAT32_BYTES
from dsonode.core.errors import DsoError

#: Target from the issue: encode at least half as fast as bare packbits of the signs.
TARGET_ENCODE_VS_PACKBITS = 0.5
#: Codes rescored per asymmetric_scores call (the index rescores a few thousand survivors).
RESCORE_CODES = 2000
#: Vectors used for the (slow, pure-numpy) rejected variant.
_NEIGHBOUR_SAMPLE = 1000
_MAX_N = 200_000


class BenchArgsError(DsoError, ValueError):
    """A benchmark argument is out of range."""


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "codec", help="BitDelta codec: encode/decode/hamming/rescoring speed and fidelity"
    )
    add_common_args(parser)
    add_output_args(parser, "codec", plot=False)
    parser.add_argument("--n", type=int, default=10_000, help="vectors in the batch")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(func=run)


def random_unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair, without BLAS (threaded BLAS is erratic on a busy machine)."""
    dot = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    na = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b, dtype=np.float64))
    return dot / np.maximum(na * nb, 1e-300)


def neighbour_delta_roundtrip(x: np.ndarray) -> np.ndarray:
    """The rejected reading: bit i = sign(e[i] - e[i-1]), decoded as a running sum.

    The first value and the mean |step| are kept exactly (as generously as possible); the
    reconstruction is e[0] + cumsum(a * (2 * bit - 1)), a random walk that drifts away.
    """
    steps = np.diff(x.astype(np.float64), axis=1)
    a = np.abs(steps).mean(axis=1, keepdims=True)
    walk = np.cumsum(np.where(steps >= 0, a, -a), axis=1)
    return np.concatenate([x[:, :1], x[:, :1] + walk], axis=1)


def _rounds(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and thread-CPU times of each function, interleaved round by round after a warm-up.

    CPU time is reported too because other jobs share the 2 cores: wall time then includes
    waiting for a core, CPU time does not (it still includes page faults and cache misses).
    """
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0 = time.thread_time()
            t0 = time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return wall, cpu


def _ratio(times: dict[str, list[float]], fast: str, slow: str) -> float:
    """Median over rounds of time(fast) / time(slow): the speed of `slow` relative to `fast`."""
    return statistics.median(f / s for f, s in zip(times[fast], times[slow], strict=True) if s > 0)


def run(args: argparse.Namespace) -> int:
    n, repeats = args.n, args.repeats
    if not 1 <= n <= _MAX_N:
        raise BenchArgsError(f"--n must be between 1 and {_MAX_N}, got {n}")
    if not 1 <= repeats <= 100:
        raise BenchArgsError(f"--repeats must be between 1 and 100, got {repeats}")

    x = random_unit_vectors(n, args.seed)
    signs = x >= 0
    signs_out = np.empty_like(signs)
    codes = code_rows(bitdelta.encode(x))
    rescore_codes = codes[: min(n, RESCORE_CODES)]
    query = random_unit_vectors(1, args.seed + 1)[0]
    query_bits = bitdelta.sign_bits(query)
    # Hamming scans are short: several queries per timed call, so timer noise stays small.
    queries = [bitdelta.sign_bits(v) for v in random_unit_vectors(8, args.seed + 2)]

    fns: dict[str, Callable[[], object]] = {
        "packbits": lambda: np.packbits(signs, bitorder="little"),
        "signs": lambda: np.greater_equal(x, 0, out=signs_out),
        "encode": lambda: bitdelta.encode(x),
        "decode": lambda: bitdelta.decode(codes),
        "decode_1024": lambda: bitdelta.decode(codes, dim=1024),
        "hamming": lambda: [bitdelta.hamming(q, codes) for q in queries],
        "hamming_prefix": lambda: [bitdelta.hamming_prefix(q, codes) for q in queries],
        "asymmetric_scores": lambda: bitdelta.asymmetric_scores(query, rescore_codes),
    }
    times, cpu_times = _rounds(fns, repeats)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_med = {name: statistics.median(ts) for name, ts in cpu_times.items()}
    items = {
        "packbits": n,
        "signs": n,
        "encode": n,
        "decode": n,
        "decode_1024": n,
        "hamming": n * len(queries),
        "hamming_prefix": n * len(queries),
        "asymmetric_scores": len(rescore_codes),
    }
    per_s = {name: items[name] / med[name] for name in fns}
    cpu_per_s = {name: items[name] / max(cpu_med[name], 1e-9) for name in fns}
    ratio = _ratio(times, "packbits", "encode")

    decoded = bitdelta.decode(codes)
    cos = row_cosines(x, decoded)
    sample = x[:_NEIGHBOUR_SAMPLE]
    cos_neighbour = row_cosines(sample, neighbour_delta_roundtrip(sample))
    # Correctness guard: the fast rescoring path must agree with decode-then-dot.
    scores = bitdelta.asymmetric_scores(query, rescore_codes)
    exact = np.einsum("ij,j->i", decoded[: len(rescore_codes)], query, dtype=np.float64)
    max_score_err = float(np.max(np.abs(scores - exact))) if len(exact) else 0.0
    hamming_check = bool(
        np.array_equal(
            bitdelta.hamming(query_bits, codes),
            np.unpackbits(
                np.bitwise_xor(codes[:, 4:], np.frombuffer(query_bits, np.uint8), dtype=np.uint8),
                axis=1,
            ).sum(1),
        )
    )

    result = {
        "dim": DIM,
        "code_bytes": CODE_BYTES,
        "ratio": FLOAT32_BYTES / CODE_BYTES,
        "n": n,
        "repeats": repeats,
        "encode_per_s": per_s["encode"],
        "decode_per_s": per_s["decode"],
        "decode_1024_per_s": per_s["decode_1024"],
        "packbits_per_s": per_s["packbits"],
        "signs_per_s": per_s["signs"],
        "encode_vs_packbits": ratio,
        "signs_vs_packbits": _ratio(times, "packbits", "signs"),
        "cpu_encode_vs_packbits": _ratio(cpu_times, "packbits", "encode"),
        "cpu_signs_vs_packbits": _ratio(cpu_times, "packbits", "signs"),
        "target_encode_vs_packbits": TARGET_ENCODE_VS_PACKBITS,
        "target_met": ratio >= TARGET_ENCODE_VS_PACKBITS,
        "hamming_per_s": per_s["hamming"],
        "hamming_prefix_per_s": per_s["hamming_prefix"],
        "asymmetric_scores_per_s": per_s["asymmetric_scores"],
        "asymmetric_scores_codes": len(rescore_codes),
        "asymmetric_scores_max_abs_err": max_score_err,
        "hamming_matches_unpacked": hamming_check,
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "rejected_neighbour_delta_cos_mean": float(cos_neighbour.mean()),
        "median_s": med,
        "cpu_per_s": cpu_per_s,
    }
    report(result, args.json, args)
    return 0
