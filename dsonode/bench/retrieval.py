"""`dsonode bench retrieval`: the code index and the LMDB store at scale.

Synthetic data of realistic structure: ``n`` items drawn around ``n / 100`` cluster centres in
a 384-d latent space (the width of the default encoder), spread 1.5 per coordinate around a
unit-variance centre (items of one cluster have cosine ~0.3), pushed through one fixed random
384 -> 7680 map (like the seeded projection head), L2-normalised and encoded to 964-byte
BitDelta codes in chunks (1M float vectors are never held at once). Queries are noisy copies
of random items (latent noise 0.75 per coordinate: the query's own item scores ~0.6, its 10th
neighbour ~0.2, background ~0.08).

Reported (one query at a time, after a warm-up):
- ``p50_ms``/``p99_ms``: ``CodeIndex.search(k=10)`` wall time;
- ``recall_at_10``: overlap of its top 10 with exhaustive asymmetric scoring over all codes
  (``dot(q, decode(code))`` for every code, computed in float32 chunks);
- ``faiss_p50_ms``: faiss ``IndexBinaryFlat`` (exhaustive SIMD Hamming) over the same full
  7680-bit codes, best of 1 and 2 OpenMP threads, with its own Hamming-only recall;
  ``faiss_prefix_p50_ms`` the same over the 1024-bit prefixes;
- ``index_bytes_per_item``: every array, list and dict of the index / n;
- ``ingest_per_s``: signed wire items (experiences and submissions, signed with
  ``dsonode.core.wire``) through ``Store.put_items`` in batches of 500, each verified on put,
  with LMDB's durable sync on commit; ``ingest_preverified_per_s`` when the caller passes the
  already verified items (the network path);
- ``rss_mb``: resident set of the benchmark process at the end (peak in ``peak_rss_mb``);
- ``socket_p50_ms``: from ``dsonode.bench._socket.measure_socket_search`` (n = 100,000).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.argtypes import SubParsers, bounded_int
from dsonode.bench.common import add_output_args, code_rows, percentile, report
from dsonode.core.constants import BITS_BYTES, DIM, SCALE_BYTES

LATENT = 384
ITEMS_PER_CLUSTER = 100
CLUSTER_SPREAD = 1.5
QUERY_NOISE = 0.75
CHUNK = 8192


def register(bench_sub: SubParsers) -> None:
    p = bench_sub.add_parser("retrieval", help="code index search and LMDB ingest at scale")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--n", type=int, default=100_000, help="items in the index")
    p.add_argument("--queries", type=int, default=200, help="timed queries (one at a time)")
    p.add_argument("--recall-queries", type=int, default=100, help="queries for recall_at_10")
    p.add_argument("--ingest", type=int, default=20_000, help="signed items put into LMDB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="also write the n codes as consensus records to LMDB and time the index rebuild",
    )
    p.add_argument("--candidates", type=int, default=None, help="CodeIndex candidates")
    p.add_argument("--rescore", type=int, default=None, help="CodeIndex rescore")
    p.add_argument(
        "--socket",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure a full search over the retrieval socket (n = 100,000)",
    )
    p.add_argument("--socket-queries", type=int, default=100)
    add_output_args(p, "retrieval", save_as="retrieval-n{n}")
    # Scale (issue 16): realistic codes, the inverted lists, the saved index at start.
    p.add_argument(
        "--data",
        choices=("auto", "synthetic", "vaswani"),
        default="auto",
        help="synthetic clusters (as before) or codes around the real Vaswani abstracts "
        "(dsonode/bench/_scale.py); auto = vaswani above 1,000,000 items",
    )
    p.add_argument(
        "--nprobe",
        type=bounded_int(1, 65_536),
        default=None,
        help="CodeIndex nprobe (lists probed)",
    )
    p.add_argument(
        "--ivf-min-rows",
        type=bounded_int(1, 100_000_000),
        default=None,
        help="CodeIndex ivf_min_rows",
    )
    p.add_argument(
        "--start",
        action="store_true",
        help="(vaswani data) also time a fresh process from import to its first search, with "
        "the saved index and with a rebuild from LMDB",
    )
    p.add_argument("--cache", default=None, help="cache of the Vaswani base vectors")
    p.set_defaults(func=run)


def _log(msg: str) -> None:
    print(f"[bench retrieval] {msg}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic(n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 (n, 964), queries float32 (q, 7680), source item of each query)."""
    from dsonode.core import bitdelta

    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((LATENT, DIM), dtype=np.float32) / np.float32(np.sqrt(LATENT))
    centers = rng.standard_normal((max(1, n // ITEMS_PER_CLUSTER), LATENT), dtype=np.float32)
    sources = rng.choice(n, size=n_queries, replace=n_queries > n)
    query_latent = np.empty((n_queries, LATENT), dtype=np.float32)
    codes = np.empty((n, SCALE_BYTES + BITS_BYTES), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        lat = centers[rng.integers(0, len(centers), m)]
        lat = lat + CLUSTER_SPREAD * rng.standard_normal((m, LATENT), dtype=np.float32)
        mine = (sources >= start) & (sources < start + m)
        query_latent[mine] = lat[sources[mine] - start]
        vec = lat @ proj
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        codes[start : start + m] = bitdelta.encode(vec)
    query_latent += QUERY_NOISE * rng.standard_normal(query_latent.shape, dtype=np.float32)
    queries = query_latent @ proj
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return codes, queries.astype(np.float32), sources


def exact_top(
    queries: np.ndarray, codes: np.ndarray, k: int = 10, chunk: int = 16384
) -> np.ndarray:
    """Exhaustive asymmetric scores dot(q, decode(code)) of every query against every code,
    in chunks (float32 matmul on unpacked signs); returns the top-k rows per query."""
    nq = len(queries)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, k), dtype=np.int64)
    for start in range(0, len(codes), chunk):
        part = codes[start : start + chunk]
        signs = np.unpackbits(part[:, SCALE_BYTES:], axis=1, bitorder="little").astype(np.float32)
        signs *= 2.0
        signs -= 1.0
        scales = part[:, :SCALE_BYTES].copy().view("<f4").ravel()
        s = (queries @ signs.T) * scales  # (nq, m)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, start + len(part)), s.shape)], axis=1
        )
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_i = np.take_along_axis(all_i, top, axis=1)
    return best_i


def _time_queries(
    fn: Callable[[np.ndarray], object], queries: np.ndarray, warmup: int = 10
) -> list[float]:
    for q in queries[:warmup]:
        fn(q)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_faiss(codes: np.ndarray, queries: np.ndarray, prefix: bool, n_q: int) -> dict[str, Any]:
    import faiss

    from dsonode.core import bitdelta

    nbits = 1024 if prefix else DIM
    bits = codes[:, SCALE_BYTES : SCALE_BYTES + nbits // 8]
    index = faiss.IndexBinaryFlat(nbits)
    for s in range(0, len(bits), 65536):
        index.add(np.ascontiguousarray(bits[s : s + 65536]))
    qbits = code_rows(bitdelta.sign_bits(queries[:n_q]))[:, : nbits // 8]
    out: dict[str, Any] = {}
    default = faiss.omp_get_max_threads()
    for threads in sorted({1, min(2, default)}):
        faiss.omp_set_num_threads(threads)
        t = _time_queries(lambda q: index.search(q[None, :], 10), qbits, warmup=3)
        out[f"p50_ms_threads_{threads}"] = percentile(t, 50)
    faiss.omp_set_num_threads(default)
    _, found = index.search(qbits, 10)
    out["p50_ms"] = min(v for k, v in out.items() if k.startswith("p50_ms_"))
    out["found"] = found
    return out


def bench_ingest(n_items: int, codes: np.ndarray, seed: int) -> dict[str, Any]:
    """Signed experiences and submissions (half each) into a fresh LMDB store."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core import wire
    from dsonode.store import Store

    key = Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))
    space = bytes(32)
    t0 = time.perf_counter()
    items: list[wire.Item] = []
    for i in range(n_items // 2):
        exp = wire.make_experience(key, "bench", f"synthetic lesson {i} of the benchmark")
        sub = wire.make_submission(key, exp.id, space, codes[i % len(codes)].tobytes())
        items += [exp, sub]
    raws = [wire.encode_item(x) for x in items]
    sign_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "ingest_items": f"{len(raws)} signed wire items (experience + submission), batches of 500",
        "sign_per_s": len(raws) / sign_s,
    }
    batch = 500
    for label, preverified in (("ingest_per_s", False), ("ingest_preverified_per_s", True)):
        with tempfile.TemporaryDirectory(prefix="dso-bench-") as tmp, Store(Path(tmp)) as store:
            t0 = time.perf_counter()
            new = 0
            for s in range(0, len(raws), batch):
                flags = store.put_items(
                    raws[s : s + batch], decoded=items[s : s + batch] if preverified else None
                )
                new += sum(flags)
            result[label] = len(raws) / (time.perf_counter() - t0)
            if new != len(raws):
                raise RuntimeError(f"ingest stored {new} of {len(raws)} distinct items")
            if not preverified:
                result["store_bytes_per_item"] = os.path.getsize(Path(tmp) / "data.mdb") / len(raws)
    return result


def bench_rebuild(codes: np.ndarray) -> dict[str, Any]:
    """n consensus records into LMDB (bulk, unsafe_nosync), then CodeIndex.from_store."""
    from dsonode.store import CodeIndex, ConsensusRecord, Store

    space = bytes(32)
    with tempfile.TemporaryDirectory(prefix="dso-bench-") as tmp:
        with Store(Path(tmp), space_id=space, unsafe_nosync=True) as store:
            t0 = time.perf_counter()
            for s in range(0, len(codes), 10_000):
                store.put_consensus(
                    [
                        ConsensusRecord(
                            space, i.to_bytes(32, "big"), codes[i].tobytes(), 3, True, "d"
                        )
                        for i in range(s, min(s + 10_000, len(codes)))
                    ]
                )
            put_s = time.perf_counter() - t0
        with Store(Path(tmp), space_id=space) as store:
            t0 = time.perf_counter()
            index = CodeIndex.from_store(store, space, progress=False)
            rebuild_s = time.perf_counter() - t0
            if len(index) != len(codes):
                raise RuntimeError(f"rebuilt {len(index)} of {len(codes)} codes")
    return {"consensus_put_nosync_s": put_s, "index_rebuild_s": rebuild_s}


def run(args: argparse.Namespace) -> int:
    from dsonode.core.errors import DsoError
    from dsonode.store import CodeIndex

    n = args.n
    if not 1_000 <= n <= 20_000_000:
        raise DsoError("--n must be in [1000, 20000000]")
    for name, lo, hi in (
        ("queries", 10, 100_000),
        ("recall_queries", 1, 1_000),
        ("ingest", 2, 10**6),
    ):
        if not lo <= getattr(args, name) <= hi:
            raise DsoError(f"--{name.replace('_', '-')} must be in [{lo}, {hi}]")
    if args.data == "vaswani" or (args.data == "auto" and n > 1_000_000):
        return _run_vaswani(args)
    if n > 5_000_000:
        raise DsoError("--data synthetic holds every code twice: --n must be <= 5000000")
    n_q = max(args.queries, args.recall_queries)
    load_before = os.getloadavg()
    _log(f"generating {n} synthetic codes")
    t0 = time.perf_counter()
    codes, queries, _ = synthetic(n, n_q, args.seed)
    gen_s = time.perf_counter() - t0

    kwargs = {
        k: v
        for k, v in (
            ("candidates", args.candidates),
            ("rescore", args.rescore),
            ("nprobe", args.nprobe),
            ("ivf_min_rows", args.ivf_min_rows),
        )
        if v is not None
    }
    _log(f"building the index ({gen_s:.0f} s to generate)")
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    index = CodeIndex(capacity=n, **kwargs)
    ids = [i.to_bytes(32, "big") for i in range(n)]
    for s in range(0, n, 65536):
        index.add(ids[s : s + 65536], codes[s : s + 65536])
    add_s = time.perf_counter() - t0
    build_rss_mb = _rss_mb() - rss0
    mem = index.memory_bytes()
    del ids

    _log("timing searches")
    times = _time_queries(lambda q: index.search(q, 10), queries[: args.queries])
    cpu0 = time.process_time()
    for q in queries[: args.queries]:
        index.search(q, 10)
    cpu_ms = (time.process_time() - cpu0) * 1e3 / args.queries

    _log("exhaustive asymmetric scoring for recall")
    rq = queries[: args.recall_queries]
    truth = exact_top(rq, codes)
    recall = np.mean(
        [
            len({int.from_bytes(i, "big") for i, _ in index.search(q, 10)} & set(t.tolist())) / 10
            for q, t in zip(rq, truth, strict=True)
        ]
    )

    _log("faiss IndexBinaryFlat over the same codes")
    fq = min(30, len(queries))
    faiss_full = bench_faiss(codes, queries, prefix=False, n_q=fq)
    faiss_prefix = bench_faiss(codes, queries, prefix=True, n_q=fq)
    m = min(fq, len(truth))
    faiss_recall = np.mean(
        [
            len(set(f.tolist()) & set(t.tolist())) / 10
            for f, t in zip(faiss_full["found"][:m], truth[:m], strict=True)
        ]
    )

    _log("LMDB ingest")
    ingest = bench_ingest(min(args.ingest, 2 * n), codes, args.seed + 1)
    if args.rebuild:
        _log("consensus into LMDB and index rebuild")
        ingest.update(bench_rebuild(codes))

    result: dict[str, Any] = {
        "n": n,
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "cpu_ms_per_query": cpu_ms,
        "recall_at_10": float(recall),
        "faiss_p50_ms": faiss_full["p50_ms"],
        "faiss_recall_at_10_hamming_only": float(faiss_recall),
        "faiss_prefix_p50_ms": faiss_prefix["p50_ms"],
        "faiss_threads": {
            "full": {k: v for k, v in faiss_full.items() if k.startswith("p50_ms_threads")},
            "prefix": {k: v for k, v in faiss_prefix.items() if k.startswith("p50_ms_threads")},
        },
        "index_bytes_per_item": mem["total"] / n,
        "index_bytes": {k: v for k, v in mem.items() if k != "total"},
        "index_build_rss_mb": build_rss_mb,
        "index_params": {"candidates": index.candidates, "rescore": index.rescore},
        "index_add_s": add_s,
        "generate_s": gen_s,
        **ingest,
        "rss_mb": _rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "queries": args.queries,
        "recall_queries": args.recall_queries,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "data": (
            f"{n} codes of clustered unit vectors ({LATENT}-d latent, {ITEMS_PER_CLUSTER} items"
            f" per cluster, spread {CLUSTER_SPREAD}, query noise {QUERY_NOISE}), seed {args.seed}"
        ),
    }
    # Drop the index and codes (about 100 MB) before the socket run; a lambda above closes
    # over `index`, so rebinding (not del) is what frees it.
    index = codes = None  # type: ignore[assignment]
    if args.socket:
        result.update(_socket(args.socket_queries))
    else:
        result["socket_p50_ms"] = None
        result["socket_note"] = "not measured (--no-socket)"
    report(result, args.json, args)
    return 0


def _run_vaswani(args: argparse.Namespace) -> int:
    """The scale run on codes around real sentences (dsonode/bench/_scale.py)."""
    from dsonode.bench._scale import default_cache_dir, run_scale

    kwargs = {
        k: v
        for k, v in (
            ("candidates", args.candidates),
            ("rescore", args.rescore),
            ("nprobe", args.nprobe),
            ("ivf_min_rows", args.ivf_min_rows),
        )
        if v is not None
    }
    if args.cache is None:
        args.cache = str(default_cache_dir())
    result = run_scale(args, kwargs)
    if args.socket:
        result.update(_socket(args.socket_queries))
    else:
        result["socket_p50_ms"] = None
        result["socket_note"] = "not measured (--no-socket)"
    report(result, args.json)
    return 0


def _socket(queries: int) -> dict[str, Any]:
    try:
        from dsonode.bench._socket import measure_socket_search
    except ImportError as exc:
        return {"socket_p50_ms": None, "socket_note": f"dsonode/bench/_socket.py missing ({exc})"}
    _log("socket search end to end (n = 100,000)")
    out = measure_socket_search(n=100_000, queries=queries)
    parts = {k: out.get(k) for k in ("embed_ms", "search_ms", "rpc_ms")}
    return {"socket_p50_ms": out.get("p50_ms", out.get("socket_p50_ms")), **parts, "socket": out}
