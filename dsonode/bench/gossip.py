"""`dsonode bench gossip`: the daemon's network stack across N real processes on 127.0.0.x.

Each of the N processes (`python -m dsonode.bench.gossip --worker ...`) runs what a
`dsonode run` node runs on its network path, and nothing else: a libp2p host (TCP, Noise,
yamux; `dsonode.net.host.build_host`), `dsonode.net.gossip.Gossip` on one space topic with
the default `GossipConfig` (batching, pacing at 10 msgs/s, back-pressure), the daemon's
validation `Pipeline` (envelope, duplicates, per-origin rate, schema, Ed25519 signature, clock
skew, already-stored check) and a real LMDB `Store.put_items` commit in a worker thread, as
`NetDaemon._handle` does. An item counts as arrived at a node when its commit returned there.
Not included: embedding (a full node embeds every new experience, which would measure the
encoder, not the network), consensus recomputation and the socket. The nodes dial each other
in a full mesh, as `dsonode testnet` does.

The items are real signed wire items made before the run: experiences and 964-byte-code
submissions (1 experience : 3 submissions) from 8 authors, unique per run. Three phases
in the same processes, one after the other:

1. latency: node 1 publishes `--latency-items` at a steady `--latency-rate` items/s;
   `p50_ms`/`p99_ms` = enqueue at node 1 to the commit at the *last* node to get the item
   (one clock: same machine);
2. throughput: every node enqueues its share of `--items` at once; `items_per_s` =
   items / (last commit anywhere - first enqueue), network-wide;
3. unbatched: every node publishes its share of `--raw-items`, one item per GossipSub
   message, as fast as the receivers' queues allow (the pacer raised to 1000 msgs/s);
   `raw_msgs_per_s` = items / (last commit anywhere - first publish).

`delivered_fraction` = batched items (phases 1 and 2) committed at every node by the end;
`wire_bytes_per_item` = gossip message bytes published per batched item (the batch envelope
included; protobuf, yamux and Noise framing not, nor the copies forwarded to each peer).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dsonode.bench.common import add_output_args, percentile, report
from dsonode.core.errors import DsoError

N_AUTHORS = 8
SUBMISSIONS_PER_EXPERIENCE = 3
#: Upper bounds on everything the bench is asked to do (every loop bounded).
MAX_NODES = 16
MAX_ITEMS = 200_000
DEFAULT_PHASE_TIMEOUT_S = 300.0


class GossipBenchError(DsoError):
    """A bad option, or a worker that died or did not answer in time (with its log tail)."""


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).digest()[:8].hex()


# ----------------------------------------------------------------------------------------
# The parent: plan, items, processes, phases, figures


def register(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser(
        "gossip",
        help="N processes with the daemon's network stack: delivery, latency, batched vs raw",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--nodes", type=int, default=5, help=f"processes (2..{MAX_NODES}, default 5)")
    p.add_argument("--items", type=int, default=3000, help="throughput-phase items (all nodes)")
    p.add_argument("--latency-items", type=int, default=200, help="latency-phase items")
    p.add_argument("--latency-rate", type=float, default=20.0, help="latency-phase items/s")
    p.add_argument("--raw-items", type=int, default=400, help="unbatched-phase items")
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=DEFAULT_PHASE_TIMEOUT_S,
        help="seconds each phase may take before the bench gives up on missing items",
    )
    p.add_argument("--keep", type=Path, default=None, help="keep stores and logs in this dir")
    add_output_args(p, "gossip", plot=False)
    p.set_defaults(func=cmd_gossip)


def _check_args(args: argparse.Namespace) -> None:
    if not 2 <= args.nodes <= MAX_NODES:
        raise GossipBenchError(f"--nodes must be 2..{MAX_NODES}")
    for name in ("items", "latency_items", "raw_items"):
        if not 1 <= getattr(args, name) <= MAX_ITEMS:
            raise GossipBenchError(f"--{name.replace('_', '-')} must be 1..{MAX_ITEMS}")
    if not 0.1 <= args.latency_rate <= 10_000:
        raise GossipBenchError("--latency-rate must be 0.1..10000")
    if not 1 <= args.phase_timeout <= 3600:
        raise GossipBenchError("--phase-timeout must be 1..3600")


def make_items(n: int, space: bytes, nonce: str) -> list[bytes]:
    """n signed wire items: experiences and submissions (real 964-byte codes) by 8 authors."""
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core import bitdelta, wire
    from dsonode.core.constants import DIM

    keys = [Ed25519PrivateKey.generate() for _ in range(N_AUTHORS)]
    rng = np.random.default_rng()
    out: list[bytes] = []
    k = 0
    while len(out) < n:
        author = keys[k % N_AUTHORS]
        exp = wire.make_experience(
            author, "bench", f"Benchmark lesson {nonce}-{k}: check the invariant first.", ["b"]
        )
        out.append(wire.encode_item(exp))
        for s in range(1, SUBMISSIONS_PER_EXPERIENCE + 1):
            if len(out) >= n:
                break
            v = rng.normal(size=DIM).astype(np.float32)
            code = bitdelta.encode(v / np.linalg.norm(v))
            sub = wire.make_submission(keys[(k + s) % N_AUTHORS], exp.id, space, code)
            out.append(wire.encode_item(sub))
        k += 1
    return out


class Worker:
    """One worker process, driven by JSON lines on its stdin; replies read by a thread."""

    def __init__(self, index: int, cmd: list[str], log_path: Path) -> None:
        self.index = index
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.replies.put(json.loads(line))

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise GossipBenchError(
                    f"worker {self.index + 1}: no {event!r} (exit {self.proc.poll()}); "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                msg = self.replies.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if msg.get("event") == event:
                return msg

    def ask(self, cmd: dict[str, Any], event: str, timeout: float = 30.0) -> dict[str, Any]:
        self.send(cmd)
        return self.expect(event, timeout)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"cmd": "quit"})
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_items(path: Path, raws: list[bytes]) -> str:
    import msgpack

    path.write_bytes(msgpack.packb(raws, use_bin_type=True))
    return str(path)


def _wait_delivered(workers: list[Worker], expected: int, timeout: float) -> list[dict[str, Any]]:
    """Poll every worker's arrival count until all hold `expected` items (bounded)."""
    deadline = time.monotonic() + timeout
    replies: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        replies = [w.ask({"cmd": "count"}, "count") for w in workers]
        if all(r["n"] >= expected for r in replies):
            break
        time.sleep(0.25)
    return replies


def _split(items: list[bytes], parts: int) -> list[list[bytes]]:
    return [items[i::parts] for i in range(parts)]


def run_bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core.peerinfo import peer_id_from_public_key
    from dsonode.identity import private_key_bytes, public_key_bytes
    from dsonode.testnet import free_ports
    from dsonode.testnet.plan import host_ip

    n = args.nodes
    space = os.urandom(32)
    nonce = os.urandom(6).hex()
    lat_items = make_items(args.latency_items, space, nonce + "L")
    burst_items = make_items(args.items, space, nonce + "B")
    raw_items = make_items(args.raw_items, space, nonce + "R")
    ips = [host_ip(i) for i in range(n)]
    ports = free_ports(ips)
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    peer_ids = [peer_id_from_public_key(public_key_bytes(k)) for k in keys]
    addrs = [f"/ip4/{ip}/tcp/{p}" for ip, p in zip(ips, ports, strict=True)]
    workers: list[Worker] = []
    try:
        for i in range(n):
            cmd = [sys.executable, "-m", "dsonode.bench.gossip", "--worker"]
            cmd += ["--listen", addrs[i], "--seed-hex", private_key_bytes(keys[i]).hex()]
            cmd += ["--space", space.hex(), "--store", str(work / f"store{i + 1}")]
            for j in range(n):
                if j != i:
                    cmd += ["--peer", f"{addrs[j]}/p2p/{peer_ids[j]}"]
            workers.append(Worker(i, cmd, work / f"worker{i + 1}.log"))
        for w in workers:
            w.expect("ready", 120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            meshes = [w.ask({"cmd": "mesh"}, "mesh") for w in workers]
            if all(m["connected"] >= n - 1 and m["mesh"] >= min(n - 1, 2) for m in meshes):
                break
            time.sleep(0.25)
        else:
            raise GossipBenchError(f"no full mesh within 60 s: {meshes}")
        total = 0
        phases: dict[str, dict[str, Any]] = {}
        for phase, items, publishers, mode, rate in (
            ("latency", lat_items, [0], "batched", args.latency_rate),
            ("throughput", burst_items, list(range(n)), "batched", 0.0),
            ("unbatched", raw_items, list(range(n)), "unbatched", 0.0),
        ):
            shares = _split(items, len(publishers))
            for pub, share in zip(publishers, shares, strict=True):
                path = _write_items(work / f"{phase}-{pub + 1}.msgpack", share)
                workers[pub].send({"cmd": "publish", "file": path, "mode": mode, "rate": rate})
            for pub in publishers:
                workers[pub].expect("published", args.phase_timeout)
            total += len(items)
            replies = _wait_delivered(workers, total, args.phase_timeout)
            phases[phase] = {
                "items": len(items),
                "publishers": len(publishers),
                "held": [r["n"] for r in replies],  # cumulative, per node
                "rpc_dropped": [r["rpc_dropped"] for r in replies],  # cumulative, per node
                "dropped_rate": [r["dropped_rate"] for r in replies],
            }
        reports = []
        for i, w in enumerate(workers):
            report_path = work / f"report{i + 1}.json"
            w.ask({"cmd": "report", "file": str(report_path)}, "reported", 60)
            reports.append(json.loads(report_path.read_text()))
    finally:
        for w in workers:
            w.stop()
    return summarise(n, reports, lat_items, burst_items, raw_items, phases)


def summarise(
    n: int,
    reports: list[dict[str, Any]],
    lat_items: list[bytes],
    burst_items: list[bytes],
    raw_items: list[bytes],
    phases: dict[str, Any],
) -> dict[str, Any]:
    """The figures, from every node's enqueue and commit times (ns, one clock)."""
    arrivals = [r["arrivals"] for r in reports]
    submits: dict[str, int] = {}
    for r in reports:
        submits.update(r["submits"])

    def last_arrival(d: str) -> int | None:
        times = [a.get(d) for a in arrivals]
        return None if any(t is None for t in times) else max(times)

    def span(items: list[bytes]) -> tuple[float, int]:
        ds = [_digest(r) for r in items]
        firsts = [submits[d] for d in ds if d in submits]
        lasts = [t for a in arrivals for d in ds if (t := a.get(d)) is not None]
        complete = sum(last_arrival(d) is not None for d in ds)
        if not firsts or not lasts:
            return float("nan"), complete
        return (max(lasts) - min(firsts)) / 1e9, complete

    lat = []
    for raw in lat_items:
        d = _digest(raw)
        t = last_arrival(d)
        if t is not None and d in submits:
            lat.append((t - submits[d]) / 1e6)
    burst_s, burst_complete = span(burst_items)
    raw_s, raw_complete = span(raw_items)
    batched = lat_items + burst_items
    delivered = sum(last_arrival(_digest(r)) is not None for r in batched)
    pub_bytes = sum(r["batched_bytes"] for r in reports)
    pub_items = sum(r["batched_items"] for r in reports)
    items_per_s = len(burst_items) / burst_s if burst_s > 0 else float("nan")
    raw_per_s = len(raw_items) / raw_s if raw_s > 0 else float("nan")
    return {
        "nodes": n,
        "items": len(batched),
        "delivered_fraction": round(delivered / len(batched), 6),
        "p50_ms": round(percentile(lat, 50), 2) if lat else None,
        "p99_ms": round(percentile(lat, 99), 2) if lat else None,
        "items_per_s": round(items_per_s, 1),
        "wire_bytes_per_item": round(pub_bytes / pub_items, 1) if pub_items else None,
        "raw_msgs_per_s": round(raw_per_s, 1),
        "batched_over_raw": round(items_per_s / raw_per_s, 2) if raw_per_s else None,
        "raw_delivered_fraction": round(raw_complete / len(raw_items), 6),
        "item_bytes_mean": round(sum(map(len, batched)) / len(batched), 1),
        "latency_items": len(lat_items),
        "throughput_items": len(burst_items),
        "throughput_delivered": burst_complete,
        "phases": phases,
        "targets": {
            "delivered_fraction>=0.999": delivered / len(batched) >= 0.999,
            "p50_ms<=100": bool(lat) and percentile(lat, 50) <= 100,
            "items_per_s>=10*raw_msgs_per_s": items_per_s >= 10 * raw_per_s,
        },
        "per_node": [
            {
                "gossip": r["gossip"],
                "pipeline_rejected": r["pipeline_rejected"],
                "rss_mb": r["rss_mb"],
            }
            for r in reports
        ],
    }


def cmd_gossip(args: argparse.Namespace) -> int:
    _check_args(args)
    work = args.keep or Path(tempfile.mkdtemp(prefix="dsonode-bench-gossip-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run_bench(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report(result, args.json, args)
    return 0


# ----------------------------------------------------------------------------------------
# The worker: one process, the daemon's network path


def _worker_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dsonode.bench.gossip --worker")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--seed-hex", required=True)
    p.add_argument("--space", required=True)
    p.add_argument("--store", type=Path, required=True)
    return p.parse_args(argv)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _worker(args: argparse.Namespace) -> None:
    import msgpack
    import multiaddr
    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core import wire
    from dsonode.core.peerinfo import parse_multiaddr
    from dsonode.net.dialer import BackoffPolicy, Dialer
    from dsonode.net.gossip import Gossip, GossipConfig
    from dsonode.net.host import HostConfig, build_host, connected_peers
    from dsonode.net.pipeline import Pipeline
    from dsonode.store import Store

    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(args.seed_hex))
    space = bytes.fromhex(args.space)
    store = Store(args.store, space_id=space)
    arrivals: dict[str, int] = {}
    submits: dict[str, int] = {}
    batched = {"bytes": 0, "items": 0}

    def is_stored(item: Any) -> bool:  # as NetDaemon._is_stored
        if isinstance(item, wire.Experience):
            return store.has_experience(item.id)
        return any(
            s.author == item.author for s in store.get_submissions(item.experience_id, space)
        )

    pipeline = Pipeline(is_stored=is_stored)
    limiter = trio.CapacityLimiter(1)

    def commit(accepted: list[tuple[bytes, Any]]) -> None:
        store.put_items([r for r, _ in accepted], decoded=[i for _, i in accepted])
        now = time.time_ns()
        for raw, _ in accepted:
            arrivals.setdefault(_digest(raw), now)

    async def handler(topic: str, origin: Any, data: bytes) -> bool:
        out = pipeline.process(
            origin.to_bytes(), data, now_ms=wire.now_ms(), now_s=time.monotonic()
        )
        if out.accepted:
            await trio.to_thread.run_sync(commit, out.accepted, limiter=limiter)
        return not out.dropped_graylisted and out.penalty == 0

    host_config = HostConfig(listen=args.listen)
    host = build_host(key, host_config)
    gossip = Gossip(host, GossipConfig(), wire.encode_batch, handler)
    dialer = Dialer(
        host,
        [parse_multiaddr(p, require_peer_id=True) for p in args.peer],
        BackoffPolicy(initial_s=0.2, max_s=2.0),
        check_interval_s=0.2,
        dial_timeout_s=5.0,
    )

    async def publish(topic: str, cmd: dict[str, Any]) -> None:
        raws = msgpack.unpackb(Path(cmd["file"]).read_bytes(), raw=False)
        decoded = [wire.decode_item(r) for r in raws]
        await trio.to_thread.run_sync(commit, list(zip(raws, decoded, strict=True)))
        rate = float(cmd.get("rate") or 0.0)
        t0 = time.monotonic()
        msgs0 = gossip.stats.published_msgs
        bytes0 = gossip.stats.published_bytes
        if cmd["mode"] == "unbatched":
            # as fast as back-pressure allows, not 10 msgs/s
            with gossip.publish_rate(1000.0, 50):
                for raw in raws:
                    pipeline.remember(raw)
                    submits[_digest(raw)] = time.time_ns()
                    await gossip.publish_raw(topic, wire.encode_batch([raw]))
        else:
            for k, raw in enumerate(raws):
                if rate > 0:
                    await trio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
                pipeline.remember(raw)
                submits[_digest(raw)] = time.time_ns()
                while not gossip.submit(topic, raw):
                    await trio.sleep(0.01)
                if k % 64 == 63:
                    await trio.sleep(0)
        await gossip.drain(120.0)
        if cmd["mode"] != "unbatched":
            batched["bytes"] += gossip.stats.published_bytes - bytes0
            batched["items"] += len(raws)
        _emit(
            {
                "event": "published",
                "items": len(raws),
                "msgs": gossip.stats.published_msgs - msgs0,
                "seconds": round(time.monotonic() - t0, 3),
            }
        )

    def rss_mb() -> float:
        with contextlib.suppress(OSError), open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
        return 0.0

    async def commands(topic: str, nursery: Any) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                nursery.cancel_scope.cancel()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                what = cmd.get("cmd")
                if what == "quit":
                    nursery.cancel_scope.cancel()
                    return
                if what == "mesh":
                    _emit(
                        {
                            "event": "mesh",
                            "connected": len(connected_peers(host)),
                            "mesh": len(gossip.mesh_peers(topic)),
                        }
                    )
                elif what == "count":
                    st = gossip.stats
                    _emit(
                        {
                            "event": "count",
                            "n": len(arrivals),
                            "rpc_dropped": st.rpc_dropped,
                            "dropped_rate": st.dropped_rate,
                        }
                    )
                elif what == "publish":
                    nursery.start_soon(publish, topic, cmd)
                elif what == "report":
                    Path(cmd["file"]).write_text(
                        json.dumps(
                            {
                                "arrivals": arrivals,
                                "submits": submits,
                                "batched_bytes": batched["bytes"],
                                "batched_items": batched["items"],
                                "gossip": gossip.stats.as_dict(),
                                "pipeline_rejected": dict(pipeline.rejected),
                                "rss_mb": rss_mb(),
                            }
                        )
                    )
                    _emit({"event": "reported"})

    listen = [multiaddr.Multiaddr(host_config.listen_addr.tcp_multiaddr)]
    try:
        with trio.move_on_after(3600):  # a worker never outlives an hour, whatever happens
            async with host.run(listen), gossip.running(), trio.open_nursery() as nursery:
                topic = await gossip.join(space)
                nursery.start_soon(dialer.run)
                _emit({"event": "ready", "peer_id": host.get_id().to_base58()})
                nursery.start_soon(commands, topic, nursery)
    finally:
        store.close()


def worker_main(argv: list[str]) -> int:
    import trio

    args = _worker_args(argv)
    # The parent may die: a closed stdin ends the command loop; SIGTERM ends the process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    trio.run(_worker, args)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        raise SystemExit(worker_main(sys.argv[1:]))
    raise SystemExit("run `dsonode bench gossip` (this module's --worker mode is internal)")
