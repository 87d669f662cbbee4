"""`dsonode bench retrieval --data vaswani`: the code index at millions of items, on codes that
look like real ones, and the start of a node from its saved index (``--start``).

Data: the 11,429 Vaswani abstracts (``$DSONODE_VASWANI``) through the real encoder and
projection head are the first items; the others are synthetic neighbours of a random
abstract: ``normalise(v + s * z)`` in the 7680-d space, ``z`` a unit Gaussian mix of
MIX_DOCS centred real abstracts (a fresh set per chunk of 4096) (so its covariance is the abstracts' own: it follows the
directions real sentences vary along, not uniform noise), ``s`` uniform in [NOISE_LO,
NOISE_HI] (cosine ~0.7-0.94 to the abstract); then the BitDelta codec with the space's
reference vector, as a node encodes its own experiences. Queries: the 93 real Vaswani queries
through the same encoder (never used to tune the index: ``recall_at_10``) and synthetic
neighbours of random abstracts that are not in the index (``recall_at_10_synthetic``; the
lists' ``nprobe`` was tuned on these).

Codes go straight into the index in chunks (n x 964 bytes are held once, by the index), the
exhaustive asymmetric truth is computed from the index's own arrays. The base vectors of the
collection are cached in ``--cache`` (embedding them takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.bench.common import default_vaswani_dir, percentile
from dsonode.core.constants import SCALE_BYTES

NOISE_LO = 0.35
NOISE_HI = 1.0
MIX_DOCS = 64
CHUNK = 4096


def _log(msg: str) -> None:
    print(f"[bench retrieval] {msg}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "dsonode" / "bench"


def vaswani_base(emb: Any, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(doc base vectors, query base vectors) of the Vaswani collection, cached per space."""
    from dsonode.bench.embed import load_vaswani

    path = cache / f"vaswani-base-{emb.space_id[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["docs"], z["queries"]
    _log("embedding the Vaswani collection once (cached in " + str(path) + ")")
    _, docs, _, queries, _ = load_vaswani(default_vaswani_dir())
    qb = emb.encode_base(queries)
    db = emb.encode_base(docs)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, docs=db, queries=qb)
    os.replace(tmp, path)
    return db, qb


def project(emb: Any, base: np.ndarray, step: int = 1024) -> np.ndarray:
    """The head on base vectors, in small batches (the head's temporaries grow with the batch:
    4096 rows measured +1.5 GB)."""
    return np.concatenate([emb.project(base[s : s + step]) for s in range(0, len(base), step)])


class Neighbours:
    """Synthetic 7680-d vectors around the real ones (see the module docstring)."""

    def __init__(self, docs: np.ndarray, seed: int) -> None:
        self.docs = np.ascontiguousarray(docs, dtype=np.float32)
        self.mean = self.docs.mean(axis=0)
        self.rng = np.random.default_rng(seed)
        self._gathered = np.zeros((0, self.docs.shape[1]), dtype=np.float32)

    def draw(self, m: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(m unit vectors, the document each surrounds); written into ``out`` (m, 7680)
        float32 when given (a chunk loop reuses its buffers: fresh 126 MB arrays per chunk
        cost more in page faults than the arithmetic).

        ``v = normalise(d + s z)``: ``z`` a Gaussian mix of MIX_DOCS centred real abstracts
        (drawn afresh for every call; its covariance is that of the abstracts, so it follows
        the directions real sentences vary along), normalised, ``s`` uniform in [NOISE_LO,
        NOISE_HI]. ``|z|`` comes from the mix's 64x64 Gram matrix and ``s / |z|`` is folded
        into the mixing weights, so the 7680-d work is one matrix product, one gather, one
        add and one normalisation."""
        rng = self.rng
        docs = self.docs
        if out is None:
            out = np.empty((m, docs.shape[1]), dtype=np.float32)
        if out.shape != (m, docs.shape[1]) or out.dtype != np.float32:
            raise ValueError("out must be float32 (m, dim)")
        src = rng.integers(0, len(docs), m)
        mix = min(MIX_DOCS, len(docs))
        basis = docs[rng.choice(len(docs), mix, replace=False)] - self.mean
        w = rng.standard_normal((m, mix), dtype=np.float32)
        z_norm = np.sqrt(np.maximum(np.einsum("ij,ij->i", w @ (basis @ basis.T), w), 1e-30))
        s = rng.uniform(NOISE_LO, NOISE_HI, m).astype(np.float32)
        w *= (s / z_norm)[:, None]
        np.matmul(w, basis, out=out)  # s * z, |z| = 1
        if self._gathered.shape != out.shape:
            self._gathered = np.empty_like(out)
        np.take(docs, src, axis=0, out=self._gathered, mode="clip")  # src < len(docs)
        out += self._gathered
        out /= np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
        return out, src


def _encode(emb: Any, vecs: np.ndarray) -> np.ndarray:
    from dsonode.core import bitdelta

    return np.asarray(bitdelta.encode(vecs, ref=emb.reference), dtype=np.uint8)


def index_bytes_estimate(n: int) -> int:
    """Memory the index of n rows will hold (BENCHMARKS.md, "index at scale": codes 964, id
    32, metadata 5, id map ~135, lists ~136 bytes per row), plus 5% for the run's buffers."""
    return int(n * (964 + 32 + 5 + 140 + (136 if n >= 1_000_000 else 0)) * 1.05)


def check_memory(n: int) -> None:
    """Refuse clearly, before hours of work, when the index cannot fit in available memory."""
    need = index_bytes_estimate(n) + 2 * 2**30  # + encoder, head, the collection's vectors
    try:
        with open("/proc/meminfo") as f:
            info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f if ":" in ln}
        avail = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return  # not Linux: no check
    if need > avail:
        raise SystemExit(
            f"bench retrieval: {n:,} items need about {need / 2**30:.1f} GiB of memory, "
            f"{avail / 2**30:.1f} GiB available; lower --n or free memory"
        )
    _log(f"memory: about {need / 2**30:.1f} GiB needed, {avail / 2**30:.1f} GiB available")


def build(
    emb: Any, docs: np.ndarray, n: int, seed: int, index_kwargs: dict[str, Any]
) -> tuple[Any, float, float]:
    """(index of n codes, seconds spent in the index's add and list training, generation s)."""
    from dsonode.store import CodeIndex

    gen = Neighbours(docs, seed)
    index = CodeIndex(capacity=n, ref=emb.reference, **index_kwargs)
    add_s = gen_s = 0.0
    done = 0
    buf = np.empty((CHUNK, docs.shape[1]), dtype=np.float32)
    t_start = time.perf_counter()
    with index.bulk_load():
        while done < n:
            m = min(CHUNK, n - done)
            t0 = time.perf_counter()
            if done < len(docs):
                m = min(m, len(docs) - done)
                vecs = docs[done : done + m]
            else:
                vecs, _ = gen.draw(m, buf[:m])
            codes = _encode(emb, vecs)
            t1 = time.perf_counter()
            index.add([i.to_bytes(32, "big") for i in range(done, done + m)], codes)
            t2 = time.perf_counter()
            gen_s += t1 - t0
            add_s += t2 - t1
            done += m
            if done % (CHUNK * 64) < CHUNK or done == n:
                rate = done / (time.perf_counter() - t_start)
                _log(
                    f"{done:,}/{n:,} codes ({gen_s:.0f} s generating, {add_s:.0f} s adding, "
                    f"{rate:,.0f}/s, ~{(n - done) / rate:.0f} s left)"
                )
        _log("training the inverted lists and assigning every row (if n >= ivf_min_rows)")
        t0 = time.perf_counter()
    add_s += time.perf_counter() - t0  # bulk_load's exit trained and filled the lists
    return index, add_s, gen_s


def exact_top(index: Any, queries: np.ndarray, k: int = 10, chunk: int = 1024) -> np.ndarray:
    """Exhaustive asymmetric scoring (dot(q, a * signs); the reference term is the same for
    every row) of every query against every row of the index, all queries as one matrix
    product per chunk of decoded rows; top-k rows per query."""
    arrays = index.state()["arrays"]
    prefix, rest, scales = arrays["prefix"], arrays["rest"], arrays["scales"]
    n, nq = len(scales), len(queries)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, k), dtype=np.int64)
    qt = np.ascontiguousarray(queries.T, dtype=np.float32)
    qsum = qt.sum(axis=0)
    signs = np.empty((chunk, qt.shape[0]), dtype=np.float32)  # reused: no page faults per chunk
    bits = np.empty((chunk, prefix.shape[1] + rest.shape[1]), dtype=np.uint8)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        m = stop - start
        bits[:m, : prefix.shape[1]] = prefix[start:stop]
        bits[:m, prefix.shape[1] :] = rest[start:stop]
        np.copyto(signs[:m], np.unpackbits(bits[:m], axis=1, bitorder="little"))
        s = 2.0 * (signs[:m] @ qt) - qsum  # (m, nq) = signs(+-1) . q
        s = (s * scales[start:stop, None]).T
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, stop), s.shape)], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_i = np.take_along_axis(all_i, top, axis=1)
        if (start // chunk) % 1024 == 1023:
            rate = stop / (time.perf_counter() - t0)
            _log(f"exhaustive scoring: {stop:,}/{n:,} rows, ~{(n - stop) / rate:.0f} s left")
    return best_i


def _recall(index: Any, queries: np.ndarray, truth: np.ndarray) -> float:
    hits = [
        len({int.from_bytes(i, "big") for i, _ in index.search(q, 10)} & set(t.tolist())) / 10
        for q, t in zip(queries, truth, strict=True)
    ]
    return float(np.mean(hits))


def _times(index: Any, queries: np.ndarray, warmup: int = 10) -> list[float]:
    for q in queries[:warmup]:
        index.search(q, 10)
    out = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q, 10)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _nprobe_curve(
    index: Any, timed: np.ndarray, rq: np.ndarray, sq: np.ndarray, truth: np.ndarray
) -> list[dict[str, float]]:
    """p50, CPU and recall (real and synthetic queries) for a few nprobe values, same run."""
    default = index.nprobe
    out = []
    for nprobe in sorted({8, 16, 32, default, 2 * default, 4 * default}):
        if nprobe > index.nlist:
            continue
        index.nprobe = nprobe
        times = _times(index, timed[:100], warmup=3)
        cpu0 = time.process_time()
        for q in timed[:100]:
            index.search(q, 10)
        out.append(
            {
                "nprobe": nprobe,
                "p50_ms": percentile(times, 50),
                "cpu_ms_per_query": (time.process_time() - cpu0) * 1e3 / len(timed[:100]),
                "recall_at_10": _recall(index, rq, truth[: len(rq)]),
                "recall_at_10_synthetic": _recall(index, sq, truth[len(rq) :]),
            }
        )
    index.nprobe = default
    return out


def run_scale(args: argparse.Namespace, index_kwargs: dict[str, Any]) -> dict[str, Any]:
    from dsonode.embed.embedder import get_embedder

    n = args.n
    load_before = os.getloadavg()
    emb = get_embedder()
    docs_base, real_q = vaswani_base(emb, Path(args.cache))
    docs = project(emb, docs_base)
    queries_real = project(emb, real_q)
    gen = Neighbours(docs, args.seed + 10_000)  # queries: fresh neighbours, not indexed
    queries_syn, _ = gen.draw(max(args.queries - len(real_q), args.recall_queries, 10))
    check_memory(n)
    _log(f"generating and indexing {n:,} codes around {len(docs)} Vaswani abstracts")
    rss0 = _rss_mb()
    index, build_s, gen_s = build(emb, docs, n, args.seed, index_kwargs)
    mem = index.memory_bytes()
    timed = np.concatenate([queries_real, queries_syn])[: args.queries]
    _log("timing searches")
    times = _times(index, timed)
    cpu0 = time.process_time()
    for q in timed:
        index.search(q, 10)
    cpu_ms = (time.process_time() - cpu0) * 1e3 / len(timed)
    flat: dict[str, Any] = {}
    if index.centroids is not None:
        index.use_lists = False
        flat_times = _times(index, timed[:50], warmup=3)
        cpu0 = time.process_time()
        for q in timed[:50]:
            index.search(q, 10)
        flat_cpu = (time.process_time() - cpu0) * 1e3 / len(timed[:50])
        index.use_lists = True
        flat = {"flat_p50_ms": percentile(flat_times, 50), "flat_cpu_ms_per_query": flat_cpu}
    _log("exhaustive asymmetric scoring for recall")
    rq = queries_real[: args.recall_queries]
    sq = queries_syn[: args.recall_queries]
    truth = exact_top(index, np.concatenate([rq, sq]))
    recall_real = _recall(index, rq, truth[: len(rq)])
    recall_syn = _recall(index, sq, truth[len(rq) :])
    if index.centroids is not None:
        index.use_lists = False
        flat["flat_recall_at_10"] = _recall(index, rq, truth[: len(rq)])
        index.use_lists = True
        flat["nprobe_curve"] = _nprobe_curve(index, timed, rq, sq, truth)
    result: dict[str, Any] = {
        "n": n,
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "cpu_ms_per_query": cpu_ms,
        "recall_at_10": recall_real,
        "recall_at_10_synthetic": recall_syn,
        **flat,
        "index_bytes_per_item": mem["total"] / n,
        "index_bytes": {k: v for k, v in mem.items() if k != "total"},
        "build_s": build_s,
        "generate_s": gen_s,
        "index_build_rss_mb": _rss_mb() - rss0,
        "index_params": {
            "candidates": index.candidates,
            "rescore": index.rescore,
            "lists": index.centroids is not None,
            "nlist": index.nlist,
            "nprobe": index.nprobe,
            "ivf_min_rows": index.ivf_min_rows,
        },
        "queries": len(timed),
        "recall_queries": {"real": len(rq), "synthetic": len(sq)},
        "data": (
            f"{len(docs)} Vaswani abstracts + {max(0, n - len(docs))} synthetic neighbours "
            f"(noise {NOISE_LO}-{NOISE_HI} along the abstracts' covariance), real encoder + head, "
            f"seed {args.seed}"
        ),
    }
    if args.start:
        result["start"] = bench_start(index, emb.space_id, emb.reference)
    result.update(
        {
            "rss_mb": _rss_mb(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        }
    )
    return result


# ---------------------------------------------------------------------------- start


_START_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
import numpy as np
from dsonode.store import Store, CodeIndex
from dsonode.store.snapshot import load_index, snapshot_path
store_dir, space, mode = sys.argv[1], sys.argv[2], sys.argv[3]
ref = np.load(sys.argv[4]) if sys.argv[4] != "-" else None
q = np.load(sys.argv[5])
t1 = time.perf_counter()
with Store(store_dir, space_id=space) as store:
    if mode == "saved":
        index, stamp = load_index(store, space, ref, snapshot_path(Path(store_dir), space))
        assert stamp is not None, "the saved index was not used"
    else:
        index = CodeIndex.from_store(store, space, ref=ref, progress=False)
    t2 = time.perf_counter()
    hits = index.search(q, 10)
    t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_search_s": t3 - t2,
                  "total_s": t3 - t0, "cpu_s": time.process_time(), "items": len(index),
                  "hits": len(hits)}))
"""


def bench_start(index: Any, space_id: str, ref: np.ndarray | None) -> dict[str, Any]:
    """Time a fresh process from import to its first search over n items: with the index
    saved beside the store, and rebuilding it from LMDB (the same store, the same run)."""
    from dsonode.store import ConsensusRecord, Store
    from dsonode.store.snapshot import save_index, snapshot_path, store_stamp

    arrays = index.state()["arrays"]
    n = len(index)
    space = bytes.fromhex(space_id)
    out: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory(prefix="dso-bench-start-") as tmp:
        store_dir = Path(tmp) / "store"
        _log(f"writing {n} consensus records to LMDB for the start measurement")
        t0 = time.perf_counter()
        with Store(store_dir, space_id=space, unsafe_nosync=True) as store:
            for s in range(0, n, 10_000):
                e = min(n, s + 10_000)
                codes = np.empty((e - s, SCALE_BYTES + 960), dtype=np.uint8)
                codes[:, :SCALE_BYTES] = (
                    arrays["scales"][s:e].astype("<f4").view(np.uint8).reshape(-1, 4)
                )
                codes[:, SCALE_BYTES : SCALE_BYTES + 128] = arrays["prefix"][s:e]
                codes[:, SCALE_BYTES + 128 :] = arrays["rest"][s:e]
                store.put_consensus(
                    [
                        ConsensusRecord(
                            space, arrays["ids"][r].tobytes(), codes[r - s].tobytes(), 3, True, ""
                        )
                        for r in range(s, e)
                    ]
                )
            store.env.sync(True)
        out["consensus_put_s"] = time.perf_counter() - t0
        with Store(store_dir, space_id=space) as store:
            t0 = time.perf_counter()
            rebuilt = type(index).from_store(
                store, space, ref=ref, centroids=index.centroids, progress=False
            )
            save_index(
                snapshot_path(store_dir, space_id), rebuilt, store_stamp(store, space_id, ref)
            )
            out["save_s"] = time.perf_counter() - t0
            del rebuilt
        out["index_file_bytes"] = snapshot_path(store_dir, space_id).stat().st_size
        ref_path, q_path = Path(tmp) / "ref.npy", Path(tmp) / "q.npy"
        if ref is not None:
            np.save(ref_path, ref)
        arr = np.hstack([arrays["prefix"][:1], arrays["rest"][:1]])
        np.save(q_path, (np.unpackbits(arr[0], bitorder="little").astype(np.float32) * 2 - 1) / 88)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        # saved twice: the first may read the file from disk, the second from the page cache
        for mode in ("saved", "rebuild", "saved"):
            _log(f"fresh process, index {mode}")
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _START_CHILD,
                    str(store_dir),
                    space_id,
                    mode,
                    str(ref_path) if ref is not None else "-",
                    str(q_path),
                ],
                capture_output=True,
                text=True,
                timeout=3600,
                env=env,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"start child failed: {proc.stderr[-2000:]}")
            out.setdefault(mode, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    saved = out["saved"]
    out["start_to_first_search_s"] = min(r["total_s"] for r in saved)
    out["start_to_first_search_rebuild_s"] = out["rebuild"][0]["total_s"]
    out["note"] = (
        "fresh Python process: import dsonode.store, open the LMDB store, load the saved index "
        "(checksums, stamp, spot checks) or rebuild it from LMDB, one search; page cache warm; "
        "the node's model load is not included (dsonode bench node measures the whole node)"
    )
    return out
