"""End-to-end latency of a `search` over the retrieval socket (helper of `dsonode bench retrieval`).

`measure_socket_search(n, queries)` builds a node data directory with `n` signed experiences
and synthetic consensus codes, starts a real `dsonode run` subprocess on it (real model, real
LMDB, real Unix socket, index rebuilt at start), and times full `search` calls with a text
query through `dsonode.api.Client`: JSON-RPC framing, embedding the query, the index search,
reading the results from LMDB and shaping them, one query at a time.

The synthetic codes are BitDelta codes of clustered unit vectors (a few hundred topics with
per-item noise), so the index's inverted file has realistic structure to work with; the
query texts are real sentences embedded by the node's model. Run it with `nice` on a shared
machine; the numbers are medians and percentiles of `queries` sequential calls.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.bench.common import code_rows, percentile, search_bench_env
from dsonode.core.constants import DIM

QUERY_TEXTS = [
    "how do I prove a statement by induction",
    "the parser crashes on empty input",
    "why does my bread not rise",
    "speed up a slow database query",
    "memory keeps growing in a long running process",
    "choosing a chess opening as black",
    "deducting home office costs on a tax return",
    "improve clay soil for vegetables",
    "retry a request after a network timeout",
    "sort a list of records by two keys",
    "check the units before substituting numbers",
    "read the error message before changing code",
]
DOMAINS = ["math", "code", "cooking", "db", "ops", "chess", "tax", "garden"]


def _synthetic_codes(
    rng: np.random.Generator, count: int, centres: np.ndarray, noise: float = 0.9
) -> np.ndarray:
    from dsonode.core import bitdelta

    topic = rng.integers(0, len(centres), size=count)
    vecs = centres[topic] + noise * rng.standard_normal((count, DIM), dtype=np.float32) / np.sqrt(
        DIM
    )
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return code_rows(bitdelta.encode(vecs))


def populate(data_dir: Path, space_id: str, n: int, seed: int = 0, chunk: int = 5000) -> None:
    """Write n signed experiences and their synthetic consensus codes into the node's store."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core import wire
    from dsonode.store import ConsensusRecord, Store

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    key = Ed25519PrivateKey.generate()
    space = bytes.fromhex(space_id)
    created = wire.now_ms() - 10_000
    with Store(data_dir / "store", space_id=space_id, unsafe_nosync=True) as store:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            codes = _synthetic_codes(rng, m, centres)
            exps = []
            for i in range(start, start + m):
                domain = DOMAINS[i % len(DOMAINS)]
                text = (
                    f"Synthetic lesson {i}: in {domain}, when step {i % 17} fails, re-check "
                    f"assumption {i % 101} and the inputs of stage {i % 7} first."
                )
                exps.append(wire.make_experience(key, domain, text, created=created))
            store.put_items([wire.encode_item(e) for e in exps], decoded=exps)
            store.put_consensus(
                [
                    ConsensusRecord(
                        space_id=space,
                        experience_id=e.id,
                        code=codes[j].tobytes(),
                        count=1,
                        confirmed=bool(j % 3 == 0),
                        domain=e.domain,
                        updated=created,
                    )
                    for j, e in enumerate(exps)
                ]
            )
        store.env.sync(True)


def measure_socket_search(n: int, queries: int, k: int = 10, warmup: int = 5) -> dict[str, Any]:
    """Time `queries` text searches over the socket against a node holding n items."""
    from dsonode.testnet.process import NodeProcess

    if n < 1 or queries < 1:
        raise ValueError("n and queries must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="dso-sock-"))  # short path: sun_path is 108 bytes
    try:
        data_dir = work / "node"
        t0 = time.perf_counter()
        with (
            NodeProcess(data_dir, env=search_bench_env()) as node,
            node.client() as c,
        ):  # creates the store and key
            space_id = c.health()["space_id"]
        populate(data_dir, space_id, n)
        t1 = time.perf_counter()
        node = NodeProcess(data_dir, env=search_bench_env())
        try:
            node.start()  # rebuilds the index from LMDB
            t2 = time.perf_counter()
            with node.client(timeout=120) as c:
                indexed = c.health()["indexed"]
                runtime = c.stats().get("query_runtime", "unknown")
                for i in range(warmup):
                    c.search(QUERY_TEXTS[i % len(QUERY_TEXTS)], k=k)
                health = []  # the bare round trip (no thread, no work), side by side
                for _ in range(min(queries, 200)):
                    h0 = time.perf_counter()
                    c.health()
                    health.append((time.perf_counter() - h0) * 1000)
                times, embed, search, overhead = [], [], [], []
                for i in range(queries):
                    text = f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} ({i})"
                    q0 = time.perf_counter()
                    result = c.call("search", {"query": text, "k": k})
                    times.append((time.perf_counter() - q0) * 1000)
                    # what the socket adds: framing, JSON, thread hops, the client
                    overhead.append(times[-1] - result["took_ms"]["total"])
                    embed.append(result["took_ms"]["embed"])
                    search.append(result["took_ms"]["search"])
                    if not result["results"]:
                        raise RuntimeError(
                            f"socket search for {text!r} returned nothing ({indexed} indexed); "
                            f"node log:\n{node.log_tail()}"
                        )
        finally:
            node.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "socket_n": n,
        "socket_indexed": indexed,
        "socket_queries": queries,
        "socket_p50_ms": statistics.median(times),
        "socket_p99_ms": percentile(times, 99),
        # The parts of a query (medians): embedding the text, the index search, and what the
        # socket adds (JSON-RPC framing, thread hops, reading and shaping the results).
        "embed_ms": statistics.median(embed),
        "search_ms": statistics.median(search),
        "rpc_ms": statistics.median(overhead),
        "query_runtime": runtime,
        "socket_embed_p50_ms": statistics.median(embed),
        "socket_index_search_p50_ms": statistics.median(search),
        "socket_overhead_p50_ms": statistics.median(overhead),
        "socket_health_p50_ms": statistics.median(health),
        "socket_populate_s": round(t1 - t0, 1),
        "socket_node_start_s": round(t2 - t1, 1),
    }


if __name__ == "__main__":  # pragma: no cover - manual runs: python -m dsonode.bench._socket N Q
    import json
    import sys

    n_arg = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    q_arg = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    print(json.dumps(measure_socket_search(n_arg, q_arg), indent=2))
