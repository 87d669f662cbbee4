"""`dsonode bench node`: a full node's memory, ingest rate and time to its first search.

Three parts, each on a real `dsonode run` subprocess (real model, LMDB, Unix socket) except the
paired ingest figure, which must run old and new kernels side by side in one process:

- ``rss_idle_mb``: resident memory (VmRSS of the node process) of a full node holding ``--n``
  items (default 100,000), ``--idle-s`` seconds after it answered its first search;
  ``rss_load_mb``: the peak over ``--load-s`` seconds of socket traffic (``--clients``
  connections sending text searches, plus one client opening and dropping connections), and
  ``rss_after_load_mb`` once the load stops (a bounded cache levels off, a leak keeps growing:
  ``rss_load_samples_mb`` shows the curve).
- ``ingest_texts_per_s``: texts/s through the exact path a node embeds an experience with
  (the lean embedder's `embed_query` in a child process without torch, as a node runs it, else
  the torch one's; then the BitDelta code), one text per call as the socket and gossip hand
  them in; ``ingest_texts_per_s_torch``: the torch
  embedder's exact path; ``ingest_texts_per_s_baseline``: the kernel before issue 16 (torch
  encoder, the int8 GEMM form of the head's fc2, at the same torch threads), interleaved in
  rounds (torch ones in the same process); ``ingest_ratio`` = node path / baseline (target >= 2). The torch
  path's and the baseline's codes are compared byte for byte (``ingest_codes_identical``); the
  lean path's sign bits that differ from the torch path's are counted
  (``ingest_code_bits_differ_mean``/``_max``). ``ingest_socket_texts_per_s`` is the end-to-end
  figure: ``add_experience`` over the socket from ``--clients`` clients (signing, LMDB commit).
- ``start_to_first_search_s``: from spawning a node on a store of ``--start-n`` items (default
  1,000,000) to its first answered text search over the socket (the int8 query model already
  cached in the data dir by an earlier start; ``first_start_s`` is that earlier start).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dsonode.argtypes import SubParsers
from dsonode.bench.common import report, search_bench_env

#: How often the load phase samples the node's resident memory.
RSS_SAMPLE_S = 1.0
#: The parts of the benchmark (`--parts`), in the order they run.
PARTS = ("memory", "ingest", "socket-ingest", "start")


def register(bench_sub: SubParsers) -> None:
    p = bench_sub.add_parser("node", help="a full node's memory, ingest rate and start time")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--n", type=int, default=100_000, help="items for the memory figures")
    p.add_argument("--idle-s", type=float, default=10.0, help="idle time before rss_idle_mb")
    p.add_argument("--load-s", type=float, default=60.0, help="socket load for rss_load_mb")
    p.add_argument("--clients", type=int, default=4, help="concurrent socket clients")
    p.add_argument("--ingest-texts", type=int, default=60, help="texts per ingest round")
    p.add_argument("--ingest-rounds", type=int, default=3, help="paired ingest rounds")
    p.add_argument(
        "--start-n", type=int, default=1_000_000, help="items for start_to_first_search_s (0: skip)"
    )
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)}",
    )
    p.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="a checkout of the previous code (e.g. the main branch): its node runs the same "
        "memory part on the same store, side by side",
    )
    p.add_argument(
        "--arena-ab",
        action="store_true",
        help="repeat the memory part with glibc's default malloc arena count",
    )
    p.set_defaults(func=run)


def _log(msg: str) -> None:
    print(f"[bench node] {msg}", file=sys.stderr, flush=True)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MiB from /proc: VmRSS (all), RssAnon (its own heap and
    weights), RssFile (mapped files: libraries, and the LMDB pages it has read, which the
    kernel can drop)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} for pid {pid}")


def lesson_texts(count: int, salt: str) -> list[str]:
    """Distinct lesson-like sentences (8-30 words), none from a benchmark's data set."""
    from dsonode.bench._socket import QUERY_TEXTS

    return [
        f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]}: when case {i} of batch {salt} fails, check the "
        f"inputs of step {i % 13} and the assumption about {['units', 'types', 'order'][i % 3]}"
        for i in range(count)
    ]


def _fresh_node(work: Path, n: int) -> tuple[Path, float]:
    """A data dir holding n items (first start builds the key, store and query model)."""
    from dsonode.bench._socket import populate
    from dsonode.testnet.process import NodeProcess

    data_dir = work / f"node-{n}"
    t0 = time.perf_counter()
    with (
        NodeProcess(data_dir, start_timeout=600, env=search_bench_env()) as node,
        node.client() as c,
    ):
        space_id = c.health()["space_id"]
    first_start = time.perf_counter() - t0
    if n:
        populate(data_dir, space_id, n)
    return data_dir, first_start


def measure_memory(
    data_dir: Path,
    n: int,
    idle_s: float,
    load_s: float,
    clients: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    from dsonode.bench._socket import QUERY_TEXTS
    from dsonode.testnet.process import NodeProcess

    node = NodeProcess(data_dir, start_timeout=600, env=search_bench_env(env))
    node.start()
    try:
        with node.client(timeout=120) as c:
            c.search(QUERY_TEXTS[0], k=10)
            stats = c.stats()
        time.sleep(idle_s)
        idle = rss_mb(node.pid)
        idle_anon, idle_file = rss_mb(node.pid, "RssAnon"), rss_mb(node.pid, "RssFile")
        _log(f"idle rss {idle:.0f} MiB at n={n}; load for {load_s:.0f} s")
        stop = threading.Event()
        counts = [0] * (clients + 1)
        errors: list[str] = []

        def searcher(slot: int) -> None:
            try:
                with node.client(timeout=120) as cl:
                    i = 0
                    while not stop.is_set():
                        cl.search(f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} {slot}-{i}", k=10)
                        i += 1
                        counts[slot] += 1
            except Exception as exc:  # reported, not raised: the figure says what happened
                errors.append(repr(exc))

        def churner() -> None:  # connections opened, used once and dropped
            try:
                while not stop.is_set():
                    with node.client(timeout=30) as cl:
                        cl.health()
                    counts[clients] += 1
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=searcher, args=(i,)) for i in range(clients)]
        threads.append(threading.Thread(target=churner))
        for t in threads:
            t.start()
        samples = []
        deadline = time.monotonic() + load_s
        while time.monotonic() < deadline:
            time.sleep(RSS_SAMPLE_S)
            samples.append(rss_mb(node.pid))
        stop.set()
        for t in threads:
            t.join(timeout=120)
        time.sleep(min(idle_s, 10.0))
        after = rss_mb(node.pid)
        after_anon = rss_mb(node.pid, "RssAnon")
    finally:
        node.stop()
    return {
        "n": n,
        "rss_idle_mb": round(idle, 1),
        "rss_idle_anon_mb": round(idle_anon, 1),
        "rss_idle_file_mb": round(idle_file, 1),
        "rss_load_mb": round(max(samples), 1) if samples else None,
        "rss_after_load_mb": round(after, 1),
        "rss_after_load_anon_mb": round(after_anon, 1),
        "rss_load_samples_mb": [round(s) for s in samples[:: max(1, len(samples) // 20)]],
        "load_searches": sum(counts[:clients]),
        "load_connections": counts[clients],
        "load_errors": errors[:5],
        "query_runtime": stats.get("query_runtime"),
    }


def _bits_differ(a: Any, b: Any) -> int:
    import numpy as np

    xor = np.frombuffer(a[:-4], np.uint8) ^ np.frombuffer(b[:-4], np.uint8)
    return int(np.unpackbits(xor).sum())


class _LeanWorker:
    """The lean embedder in a child process without torch (dsonode.bench._lean_ingest)."""

    def __init__(self) -> None:
        import json
        import subprocess

        self._json = json
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dsonode.bench._lean_ingest"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        if ready.get("ready") is not True:
            self.close()
            raise RuntimeError(f"the lean ingest worker did not start cleanly: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the lean ingest worker exited")
        out: dict[str, Any] = self._json.loads(line)
        return out

    def round(self, texts: list[str]) -> tuple[float, list[bytes]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(self._json.dumps(texts) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        return float(out["s"]), [bytes.fromhex(c) for c in out["codes"]]

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write("\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # a stuck child is killed below
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def measure_ingest(texts_per_round: int, rounds: int) -> dict[str, Any]:
    """The node's exact path (the lean embedder, in a child process without torch, as a node
    runs it) vs the torch path and the kernel before issue 16 (torch encoder, int8 GEMM fc2)
    in this process, round by round, one text per call."""
    import numpy as np
    import torch

    from dsonode.core import bitdelta
    from dsonode.embed import lean
    from dsonode.embed.embedder import get_embedder
    from dsonode.embed.fastpath import fast_head

    emb = get_embedder()
    worker: _LeanWorker | None = None
    try:
        lean.load_or_compile()  # compiled here first: the worker only loads
        worker = _LeanWorker()
    except (lean.LeanUnavailable, RuntimeError) as exc:
        _log(f"lean embedder unavailable ({exc}): the node would run torch")
    old_head = fast_head(emb.head)  # the int8 GEMM fc2 (today's kernel before this change)
    lean_t: list[float] = []
    new_t, old_t, identical, total, bits = [], [], 0, 0, []
    texts_all = lesson_texts(texts_per_round * rounds + 4, "ingest")
    try:
        for t in texts_all[:4]:  # warm-up all
            emb.embed_query(t)
        if worker is not None:
            worker.round(texts_all[:4])
        for r in range(rounds):
            texts = texts_all[4 + r * texts_per_round : 4 + (r + 1) * texts_per_round]
            lean_codes: list[bytes] = []
            if worker is not None:
                took, lean_codes = worker.round(texts)
                lean_t.append(took)
            t0 = time.perf_counter()
            new_codes = [bitdelta.encode(emb.embed_query(t), ref=emb.reference) for t in texts]
            new_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            old_codes = []
            for t in texts:
                # The threads the governor chose for the new path: the ratio is the kernel's
                # alone (fixed threads cost far more on a loaded box; README "Embed text").
                base = torch.from_numpy(emb.encode_base([t]))
                with torch.inference_mode():
                    vec = old_head(base)[0].numpy().astype(np.float32)
                old_codes.append(bitdelta.encode(vec, ref=emb.reference))
            old_t.append(time.perf_counter() - t0)
            identical += sum(a == b for a, b in zip(new_codes, old_codes, strict=True))
            bits += [_bits_differ(a, b) for a, b in zip(lean_codes, new_codes, strict=False)]
            total += len(texts)
    finally:
        if worker is not None:
            worker.close()
    torch_rate = texts_per_round / statistics.median(new_t)
    base_rate = texts_per_round / statistics.median(old_t)
    rate = texts_per_round / statistics.median(lean_t) if lean_t else torch_rate
    return {
        "ingest_texts_per_s": round(rate, 1),
        "ingest_runtime": "onnx" if lean_t else "torch",
        "ingest_texts_per_s_torch": round(torch_rate, 1),
        "ingest_texts_per_s_baseline": round(base_rate, 1),
        "ingest_ratio": round(rate / base_rate, 2),
        "ingest_codes_identical": f"{identical}/{total}",
        "ingest_code_bits_differ_mean": round(float(np.mean(bits)), 2) if bits else None,
        "ingest_code_bits_differ_max": max(bits) if bits else None,
        "ingest_round_s": [round(x, 2) for x in (lean_t or new_t)],
        "ingest_round_s_torch": [round(x, 2) for x in new_t],
        "ingest_round_s_baseline": [round(x, 2) for x in old_t],
    }


def measure_socket_ingest(work: Path, count: int, clients: int) -> dict[str, Any]:
    from dsonode.testnet.process import NodeProcess

    data_dir, _ = _fresh_node(work, 0)
    texts = lesson_texts(count, "socket")
    with NodeProcess(data_dir, start_timeout=600, env=search_bench_env()) as node:
        with node.client(timeout=120) as c:
            c.add_experience(texts[0] + " warm-up", domain="bench")
        errors: list[str] = []

        def adder(slot: int) -> None:
            try:
                with node.client(timeout=300) as cl:
                    for text in texts[slot::clients]:
                        cl.add_experience(text, domain="bench")
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=adder, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        took = time.perf_counter() - t0
    return {
        "ingest_socket_texts_per_s": round(count / took, 1),
        "ingest_socket_errors": errors[:5],
    }


def _time_first_search(data_dir: Path) -> tuple[float, int, int]:
    """Spawn a node on `data_dir`, time until its first search is answered over the socket;
    (seconds, rows indexed, results). The node is stopped (SIGTERM: it saves its index)."""
    from dsonode.api.client import Client, ClientError
    from dsonode.bench._socket import QUERY_TEXTS
    from dsonode.testnet.process import NodeProcess

    node = NodeProcess(data_dir, start_timeout=600, env=search_bench_env())
    t0 = time.perf_counter()
    node.spawn()
    answered = None
    result: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            node.check_alive()
            if node.socket_path.exists():
                try:
                    with Client(node.socket_path, timeout=120) as c:
                        result = c.search(QUERY_TEXTS[1], k=10)
                    answered = time.perf_counter() - t0
                    break
                except (ClientError, OSError):
                    pass
            time.sleep(0.05)
        with Client(node.socket_path, timeout=120) as c:
            indexed = c.health()["indexed"]
    finally:
        node.stop()
    if answered is None:
        raise RuntimeError(f"no search answered within 600 s:\n{node.log_tail()}")
    return answered, indexed, len(result)


def measure_start(work: Path, n: int) -> dict[str, Any]:
    """Two starts of a node whose store was filled offline: the first rebuilds the index
    from LMDB (and saves it at its clean stop), the second is an ordinary restart that loads
    the saved index (ARCHITECTURE.md "The code index")."""
    data_dir, first_start = _fresh_node(work, n)
    rebuild_s, _, _ = _time_first_search(data_dir)
    saved_s, indexed, results = _time_first_search(data_dir)
    return {
        "start_n": n,
        "start_indexed": indexed,
        "start_to_first_search_s": round(saved_s, 2),
        "start_rebuild_to_first_search_s": round(rebuild_s, 2),
        "start_first_results": results,
        "first_start_s": round(first_start, 1),
    }


def run(args: argparse.Namespace) -> int:
    for name in ("n", "clients", "ingest_texts", "ingest_rounds"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        print(f"--parts: unknown {unknown}; choose from {','.join(PARTS)}", file=sys.stderr)
        return 2
    if args.start_n < 1 and "start" in parts:
        print("--start-n must be >= 1 for the start part", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="dso-bn-"))  # short path: sun_path is 108 bytes
    try:
        if "memory" in parts:
            _log(f"memory: a full node with {args.n} items")
            data_dir, _ = _fresh_node(work, args.n)
            result.update(measure_memory(data_dir, args.n, args.idle_s, args.load_s, args.clients))
            if args.baseline_src:
                # The same store and load on the code in another checkout (today's main).
                _log(f"memory again on the code in {args.baseline_src}")
                base = measure_memory(
                    data_dir,
                    args.n,
                    args.idle_s,
                    args.load_s,
                    args.clients,
                    # PYTHONSAFEPATH: `python -m` must not put the cwd (maybe this checkout)
                    # ahead of PYTHONPATH on sys.path.
                    {"PYTHONPATH": str(args.baseline_src), "PYTHONSAFEPATH": "1"},
                )
                keys = ("rss_idle_mb", "rss_idle_anon_mb", "rss_load_mb", "rss_after_load_mb")
                result["baseline"] = {k: base[k] for k in (*keys, "load_searches")}
            if args.arena_ab:
                # The same node and load with glibc's default arena count (8 per core): what
                # `dsonode run`'s cap of 2 arenas (dsonode/node/cli.py) changes.
                _log("memory again with glibc's default malloc arenas")
                default_arenas = {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}
                ab = measure_memory(
                    data_dir, args.n, args.idle_s, args.load_s, args.clients, default_arenas
                )
                keys = ("rss_idle_mb", "rss_load_mb", "rss_after_load_mb", "rss_load_samples_mb")
                result["default_arenas"] = {k: ab[k] for k in (*keys, "load_searches")}
        if "ingest" in parts:
            _log("ingest: new exact path vs the previous kernel, interleaved")
            result.update(measure_ingest(args.ingest_texts, args.ingest_rounds))
        if "socket-ingest" in parts:
            _log("ingest over the socket")
            result.update(measure_socket_ingest(work, args.ingest_texts, args.clients))
        if "start" in parts:
            _log(f"start: a node with {args.start_n} items")
            result.update(measure_start(work, args.start_n))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["targets"] = {
        "rss_idle_mb<=450": result["rss_idle_mb"] <= 450 if "rss_idle_mb" in result else None,
        "ingest_ratio>=2": result["ingest_ratio"] >= 2 if "ingest_ratio" in result else None,
        "start_to_first_search_s<=3": (
            result["start_to_first_search_s"] <= 3 if "start_to_first_search_s" in result else None
        ),
    }
    report(result, args.json)
    return 0
