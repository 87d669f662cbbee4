"""`dsonode bench gateway [--json]`: the HTTP gateway's latency and throughput against the
encoder called in-process on the same texts, in the same run.

The gateway runs as a real `dsonode gateway` subprocess on 127.0.0.1 (its own process, as
deployed); clients are httpx in this process. Each repeat measures, back to back:
  direct   - embedder.embed(texts, batch_size=64) in this process, on a worker thread as the
             gateway runs it (the batch ceiling),
  gateway  - the same texts sent by `--clients` concurrent clients, `--per-request` texts per
             request, base64 (the openai client's default); and again with float JSON.
Reported: medians over repeats; ratio = batch_texts_per_s / direct_texts_per_s (target >= 0.8),
and CPU seconds per text (this process for direct, the server process for the gateway), which
a machine shared with other jobs disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from dsonode.argtypes import SubParsers
from dsonode.bench.common import (
    add_common_args,
    add_output_args,
    default_vaswani_dir,
    percentile,
    report,
)

SHORT_INPUT = "What is the speed of light in a vacuum?"
RATIO_TARGET = 0.8

_T = TypeVar("_T")


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "gateway", help="HTTP gateway latency and micro-batched throughput vs the direct encoder"
    )
    add_common_args(p)
    add_output_args(p, "gateway", plot=False)
    p.add_argument("--texts", type=int, default=256, help="texts per throughput pass")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    p.add_argument("--per-request", type=int, default=1, help="texts per request")
    p.add_argument("--singles", type=int, default=40, help="sequential one-text requests timed")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="gateway batch wait (ms)")
    p.add_argument("--no-float", action="store_true", help="skip the float-JSON pass")
    p.set_defaults(func=run)


def load_texts(n: int) -> tuple[list[str], str]:
    """The first n Vaswani abstracts (about 42 words each), or generated sentences."""
    path = default_vaswani_dir() / "doc-text.trec"
    if path.is_file():
        raw = path.read_text(encoding="utf-8", errors="replace")
        docs = [" ".join(m.split()) for m in re.findall(r"</DOCNO>(.*?)</DOC>", raw, re.S)]
        docs = [d for d in docs if d]
        if len(docs) >= n:
            return docs[:n], "vaswani abstracts"
    words = [
        "energy",
        "field",
        "wave",
        "particle",
        "spin",
        "charge",
        "mass",
        "lattice",
        "beam",
        "detector",
    ]
    out = [
        " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(8 + i % 30)) for i in range(n)
    ]
    return out, "generated sentences"


class GatewayProcess:
    """`dsonode gateway --listen 127.0.0.1:0` in a subprocess; reads its URL from stdout."""

    def __init__(self, max_wait_ms: float) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("DSONODE_GATEWAY_TOKEN", None)
        cmd = [sys.executable, "-m", "dsonode", "gateway", "--listen", "127.0.0.1:0"]
        cmd += ["--max-wait-ms", str(max_wait_ms), "--log-level", "WARNING"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        line = self._readline(timeout=180)
        m = re.search(r"listening on (http://\S+) model=(\S+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"gateway did not start: {line!r}")
        self.url, self.model = m.group(1), m.group(2)

    def _readline(self, timeout: float) -> str:
        box: list[str] = []
        stdout = self.proc.stdout
        assert stdout is not None  # started with stdout=PIPE
        t = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0] if box else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _decode(item: Any, encoding: str) -> np.ndarray:
    """One response `embedding` (JSON: a base64 string or a list of floats, per `encoding`)."""
    if encoding == "base64":
        return np.frombuffer(base64.b64decode(item), dtype="<f4")
    return np.asarray(item, dtype=np.float32)


def concurrent_pass(
    url: str, model: str, texts: list[str], clients: int, per_request: int, encoding: str
) -> float:
    """Send all texts through `clients` concurrent keep-alive clients; returns texts/s."""
    import httpx

    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    lock = threading.Lock()
    next_chunk = [0]
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while True:
                with lock:
                    i = next_chunk[0]
                    next_chunk[0] += 1
                if i >= len(chunks) or errors:
                    return
                body = {"model": model, "input": chunks[i], "encoding_format": encoding}
                r = c.post("/v1/embeddings", json=body)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    return
                data = r.json()["data"]
                if (
                    len(data) != len(chunks[i])
                    or _decode(data[0]["embedding"], encoding).size != 7680
                ):
                    errors.append("wrong response shape")
                    return

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"gateway request failed: {errors[0]}")
    return len(texts) / elapsed


def _in_thread(fn: Callable[[], _T]) -> _T:
    """fn() run on a fresh thread (as the gateway runs the encoder), its result returned."""
    box: list[_T] = []
    t = threading.Thread(target=lambda: box.append(fn()))
    t.start()
    t.join()
    if not box:
        raise RuntimeError("direct measurement failed in its thread")
    return box[0]


def _self_cpu_s() -> float:
    """CPU seconds of this process so far (all threads, torch's pool included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> int:
    import httpx

    from dsonode.embed.lean import load_model

    for name in ("texts", "clients", "per_request", "singles", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    texts, source = load_texts(args.texts)
    embedder = load_model()  # what the gateway process runs too (the lean embedder by default)
    gw = GatewayProcess(args.max_wait_ms)
    n = len(texts)
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            body = {"model": gw.model, "input": SHORT_INPUT, "encoding_format": "base64"}
            for _ in range(3):  # warm up both sides
                c.post("/v1/embeddings", json=body).raise_for_status()
                _in_thread(lambda: embedder.embed_query(SHORT_INPUT))
            singles, direct_singles = [], []

            def direct_single() -> float:
                t0 = time.perf_counter()
                embedder.embed_query(SHORT_INPUT)
                return (time.perf_counter() - t0) * 1000

            for _ in range(args.singles):
                t0 = time.perf_counter()
                c.post("/v1/embeddings", json=body).raise_for_status()
                singles.append((time.perf_counter() - t0) * 1000)
                direct_singles.append(_in_thread(direct_single))
            stats_before = c.get("/health").json()["batches"]

            def direct_pass() -> float:
                t0 = time.perf_counter()
                embedder.embed(texts, batch_size=64, progress=False)
                return n / (time.perf_counter() - t0)

            direct, batched, floats, ratios = [], [], [], []
            direct_cpu, server_cpu, client_cpu = [], [], []
            _in_thread(lambda: embedder.embed(texts[:64], batch_size=64))  # warm-up
            for _ in range(args.repeats):
                # The encoder runs on a worker thread, as in the gateway (on a loaded machine
                # torch is markedly faster there than on the main thread).
                c0 = _self_cpu_s()
                direct.append(_in_thread(direct_pass))
                direct_cpu.append(_self_cpu_s() - c0)
                s0, c0 = _proc_cpu_s(gw.proc.pid), _self_cpu_s()
                batched.append(
                    concurrent_pass(
                        gw.url, gw.model, texts, args.clients, args.per_request, "base64"
                    )
                )
                server_cpu.append(_proc_cpu_s(gw.proc.pid) - s0)
                client_cpu.append(_self_cpu_s() - c0)
                ratios.append(batched[-1] / direct[-1])
                if not args.no_float:
                    floats.append(
                        concurrent_pass(
                            gw.url, gw.model, texts, args.clients, args.per_request, "float"
                        )
                    )
            stats_after = c.get("/health").json()["batches"]
    finally:
        gw.stop()

    batches = stats_after["count"] - stats_before["count"]
    served = stats_after["texts"] - stats_before["texts"]
    direct_tps = statistics.median(direct)
    batch_tps = statistics.median(batched)
    d_cpu = statistics.median(direct_cpu) / n * 1000
    s_cpu = statistics.median(server_cpu) / n * 1000
    k_cpu = statistics.median(client_cpu) / n * 1000
    result = {
        "single_p50_ms": percentile(singles, 50),
        "single_p90_ms": percentile(singles, 90),
        "direct_single_p50_ms": percentile(direct_singles, 50),
        "batch_texts_per_s": batch_tps,
        "direct_texts_per_s": direct_tps,
        "ratio": batch_tps / direct_tps,
        "ratio_paired_median": statistics.median(ratios),
        "ratio_target": RATIO_TARGET,
        "ratio_met": batch_tps / direct_tps >= RATIO_TARGET,
        "batch_texts_per_s_float_json": statistics.median(floats) if floats else None,
        # CPU time per text: steadier than wall time on a shared machine.
        "direct_cpu_ms_per_text": d_cpu,
        "server_cpu_ms_per_text": s_cpu,
        "client_cpu_ms_per_text": k_cpu,
        "cpu_ratio": d_cpu / s_cpu,
        "mean_server_batch": served / batches if batches else None,
        "max_server_batch": stats_after["max_size"],
        "texts": n,
        "texts_source": source,
        "mean_chars": sum(map(len, texts)) / n,
        "clients": args.clients,
        "per_request": args.per_request,
        "repeats": args.repeats,
        "max_wait_ms": args.max_wait_ms,
        "model": gw.model,
        "runs": {"direct": direct, "batch": batched, "float_json": floats},
    }
    report(result, args.json, args)
    return 0
