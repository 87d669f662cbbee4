"""`dsonode bench network`: the real network, N `dsonode run` processes on 127.0.0.2.. .

For each N of `--nodes` (e.g. 10,25,50), a `dsonode.testnet.Testnet` of separate processes,
every node given only node 1's address (the bootstrap; the rest is discovery,
dsonode/net/README.md "Discovery"). The first `--full` nodes are full nodes (the model
loaded, ~765 MiB RSS each), the others `--role light` (~126 MiB, no encoder), so 50 nodes fit
a small machine; node 1 (the bootstrap) is full. Steps, every wait bounded:

1. start the full nodes, wait until they answer `health`; then start every light node at
   once (time t0) and poll every node's `stats` until each has at least min(8, N - 1)
   connected peers (`net.low_water`) and gossip mesh peers;
2. batch 1: `--items` experiences, each added over the socket at a random full node (light
   nodes cannot add: they have no encoder), one after the other;
3. wait until every node holds every one, then SIGKILL node 1 (the bootstrap) and publish
   batch 2 (`--items-after-kill`) from the surviving full nodes; wait again.

Loopback: a node's outbound connections leave from its own 127.0.0.N (dsonode/net/host.py binds
loopback dials), so the per-IP inbound cap sees one IP per node, as on a real network; the
nodes run with their default `net.max_inbound_per_ip` unless `--max-inbound-per-ip` sets it.

Figures per N:

* `discovery_s`: t0 (the light nodes' spawn, interpreter start included) until every node
  has min(8, N - 1) connected peers and a gossip mesh; `joined_healthy_s` is the part until
  all answered `health`. Resolution: one polling round (`poll_round_s`, all nodes asked).
* `connected_min` / `connected_max`: connected peers per node when batch 1 starts;
  `connected_max_seen`: the most any node had at any poll of the run.
* `delivered_fraction`: over (experience, node other than its author) pairs of batch 1, the
  share where the node stored it before the timeout; `..._after_bootstrap_kill` the same for
  batch 2 over the surviving nodes.
* `p50_ms` / `p99_ms`: per such pair, the time the node first stored the experience minus
  the time its author stored it (both `stats.network.arrivals`, `Library.arrivals`: unix ms
  at each node's own commit; one clock, the machine's).
* `coverage_99_ms`: per experience, its author's store until 99 % of the nodes stored it,
  median over experiences (`dsonode bench simulate`'s `coverage_99_s`).
* `msgs_in_per_item_per_node`: gossip messages handed to each node's handler during batch 1
  (`gossip.received_msgs`, submissions' messages included, libp2p's seen-cache duplicates
  not) per experience it received, mean over nodes.
* `bytes_in_per_item_per_node`: gossip message bytes handed to each node's handler during
  batch 1 (`gossip.received_bytes`: the experiences, the committee's submissions, the batch
  envelopes; not libp2p's framing, control messages or the copies libp2p's seen-cache drops)
  divided by the experiences that node received, mean over nodes; `tcp_bytes_in_per_item_per
  _node`: the same from the kernel's TCP counters of the node's sockets (`ss -ti`:
  everything, DHT and sync included; connections that closed during the batch are missed).
* `duplicates_per_item`: items the nodes' pipelines refused as already seen
  (`pipeline.rejected` duplicate + stored) during batch 1, over all nodes, per experience;
  also per node.
* `rss_mb_full` / `rss_mb_light`: median RSS (/proc, as psutil) of the node processes after batch 1.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsonode.argtypes import bounded_float, bounded_int
from dsonode.bench.common import add_output_args, cdf_points, percentile, report
from dsonode.core.errors import DsoError

if TYPE_CHECKING:
    from dsonode.testnet import Testnet

MAX_NODES = 64  # dsonode.testnet.plan.MAX_NODES
POLL_S = 0.5
#: The targets of issue 13, checked at the largest N run (the ratio against the smallest).
TARGETS = {
    "discovery_s": 30.0,
    "delivered_fraction": 0.999,
    "p99_ms": 2000.0,
    "connected_max": 16,
    "bytes_ratio": 1.5,
}


class NetworkBenchError(DsoError):
    """A bad option, or nodes that did not start (with their log tails)."""


def _node_list(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(parts) > 8:
        raise argparse.ArgumentTypeError("give 1 to 8 comma-separated node counts, e.g. 10,25,50")
    parse = bounded_int(3, MAX_NODES)
    return [parse(p) for p in parts]


def register(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser(
        "network",
        help="N real node processes from one bootstrap address: discovery, delivery, latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--nodes", type=_node_list, default=[10], help="node counts, e.g. 10,25,50")
    p.add_argument(
        "--full",
        type=bounded_int(2, MAX_NODES),
        default=3,
        help="full nodes (node 1 = the bootstrap among them); the rest run --role light "
        "(default 3)",
    )
    p.add_argument(
        "--items", type=bounded_int(1, 400), default=100, help="batch 1 experiences (default 100)"
    )
    p.add_argument(
        "--items-after-kill",
        type=bounded_int(1, 400),
        default=50,
        help="batch 2 experiences, after the bootstrap is killed (default 50)",
    )
    p.add_argument(
        "--max-inbound-per-ip",
        type=bounded_int(0, 1000),
        default=0,
        help="net.max_inbound_per_ip of every node (default 0 = the setting's default)",
    )
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="publisher draw")
    p.add_argument(
        "--start-timeout",
        type=bounded_float(1, 3600),
        default=600.0,
        help="seconds for the nodes to answer `health` (default 600)",
    )
    p.add_argument(
        "--discovery-timeout",
        type=bounded_float(1, 3600),
        default=300.0,
        help="seconds for every node to reach its peers (default 300)",
    )
    p.add_argument(
        "--delivery-timeout",
        type=bounded_float(1, 3600),
        default=300.0,
        help="seconds, after a batch is published, for every node to hold it (default 300)",
    )
    p.add_argument("--keep", type=Path, default=None, help="keep data dirs and logs here")
    add_output_args(p, "network")
    p.set_defaults(func=cmd_network)


# ----------------------------------------------------------------------------------------
# Reading the nodes


def _stats(net: Testnet, i: int) -> dict[str, Any] | None:
    try:
        return net.stats(i, timeout=20.0)
    except (DsoError, OSError):
        return None


def _poll(net: Testnet, alive: Sequence[int]) -> dict[int, dict[str, Any]]:
    out = {}
    for i in alive:
        st = _stats(net, i)
        if st is not None:
            out[i] = st.get("network", {})
    return out


def _connected(netstats: dict[str, Any]) -> int:
    return len(netstats.get("connected", []))


def _tcp_bytes_in(pids: Sequence[int]) -> dict[int, int]:
    """Per pid: bytes received on its open TCP sockets (the kernel's tcp_info, via `ss`)."""
    out = dict.fromkeys(pids, 0)
    try:
        text = subprocess.run(
            ["ss", "-tinpH", "state", "established"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    owner: int | None = None
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):  # a socket line: who owns it
            m = re.search(r"pid=(\d+)", line)
            owner = int(m.group(1)) if m else None
            continue
        m = re.search(r"bytes_received:(\d+)", line)
        if m and owner in out:
            out[owner] += int(m.group(1))
    return out


def _rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (/proc/PID/statm, what psutil reads on Linux;
    psutil is no dependency of dsonode)."""
    import os

    try:
        with open(f"/proc/{pid}/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------------------
# One run at N nodes


class _Run:
    def __init__(self, net: Testnet, n: int, full: int, poll_log: list[float]) -> None:
        self.net = net
        self.n = n
        self.full = full
        self.alive = list(range(n))
        self.connected_max_seen = 0
        self.trace: list[tuple[float, int, int]] = []
        self.poll_log = poll_log

    def poll(self) -> dict[int, dict[str, Any]]:
        t = time.monotonic()
        self.net.check_alive()
        snap = _poll(self.net, self.alive)
        for s in snap.values():
            self.connected_max_seen = max(self.connected_max_seen, _connected(s))
        self.poll_log.append(time.monotonic() - t)
        return snap

    def wait_discovered(self, timeout: float) -> tuple[float | None, dict[int, dict[str, Any]]]:
        want = min(8, self.n - 1)
        t0 = time.monotonic()
        snap: dict[int, dict[str, Any]] = {}
        while time.monotonic() - t0 < timeout:
            snap = self.poll()
            conns = [_connected(s) for s in snap.values()]
            # (s, nodes at the target, fewest peers): where the time of discovery goes
            self.trace.append(
                (
                    round(time.monotonic() - t0, 1),
                    sum(c >= want for c in conns),
                    min(conns, default=0),
                )
            )
            if len(snap) == len(self.alive) and all(
                _connected(s) >= want and s.get("mesh_peers", 0) >= min(2, want)
                for s in snap.values()
            ):
                return time.monotonic() - t0, snap
            time.sleep(POLL_S)
        return None, snap

    def publish(
        self, count: int, publishers: Sequence[int], rng: random.Random, tag: str
    ) -> dict[str, int]:
        """`count` experiences, each at a random full node; exp id (hex) -> author index."""
        out: dict[str, int] = {}
        for k in range(count):
            i = rng.choice(list(publishers))
            text = (
                f"Network bench {tag} lesson {k}: when a peer stops answering, ask another "
                f"peer you already know before the bootstrap ({rng.getrandbits(64):x})."
            )
            with self.net.client(i, timeout=120.0) as c:
                added = c.add_experience(text, "bench", ["network"])
            out[str(added["id"])] = i
        return out

    def wait_delivered(self, ids: dict[str, int], timeout: float) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        snap: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            snap = self.poll()
            if len(snap) == len(self.alive) and all(
                all(e in s.get("arrivals", {}) for e in ids) for s in snap.values()
            ):
                break
            time.sleep(POLL_S)
        return snap


def _delivery(
    ids: dict[str, int], snap: dict[int, dict[str, Any]], alive: Sequence[int]
) -> dict[str, Any]:
    pairs = delivered = 0
    lat: list[float] = []
    coverage: list[float] = []
    need = math.ceil(0.99 * len(alive))  # as simulate's coverage_99_s: 99 % of the nodes
    for exp, author in ids.items():
        t_author = snap.get(author, {}).get("arrivals", {}).get(exp)
        times = [snap.get(i, {}).get("arrivals", {}).get(exp) for i in alive]
        got = sorted(t for t in times if t is not None)
        if t_author is not None and len(got) >= need:
            coverage.append(float(got[need - 1] - t_author))
        for i in alive:
            if i == author:
                continue
            pairs += 1
            t = snap.get(i, {}).get("arrivals", {}).get(exp)
            if t is None:
                continue
            delivered += 1
            if t_author is not None:
                lat.append(float(t - t_author))
    return {
        "pairs": pairs,
        "delivered_fraction": round(delivered / pairs, 6) if pairs else None,
        "p50_ms": round(percentile(lat, 50), 1) if lat else None,
        "p99_ms": round(percentile(lat, 99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "coverage_99_ms": round(statistics.median(coverage), 1) if coverage else None,
        "latency_cdf_ms": cdf_points(lat),  # the delivered pairs' latencies, for a CDF
    }


def _counter(s: dict[str, Any], *path: str) -> int:
    v: Any = s
    for k in path:
        v = v.get(k, {}) if isinstance(v, dict) else {}
    return int(v) if isinstance(v, int) else 0


def _dups(s: dict[str, Any]) -> int:
    return _counter(s, "pipeline", "rejected", "duplicate") + _counter(
        s, "pipeline", "rejected", "stored"
    )


def run_one(n: int, args: argparse.Namespace, root: Path, log: Any) -> dict[str, Any]:
    from dsonode.testnet import Testnet, free_ports, plan_testnet
    from dsonode.testnet.plan import host_ip

    full = min(args.full, n)
    plan = plan_testnet(n, ports=free_ports([host_ip(i) for i in range(n)]))
    from dsonode.config.settings import setting

    env = {}
    if args.max_inbound_per_ip:
        env[setting("net.max_inbound_per_ip").env] = str(args.max_inbound_per_ip)
    net = Testnet(
        plan,
        root / f"n{n}",
        env=env,
        start_timeout=args.start_timeout,
        node_args=lambda node: ["--role", "light"] if node.index >= full else [],
        log=log,
    )
    rng = random.Random(args.seed * 1000 + n)
    polls: list[float] = []
    run = _Run(net, n, full, polls)
    out: dict[str, Any] = {
        "nodes": n,
        "full": full,
        "light": n - full,
        "max_inbound_per_ip": args.max_inbound_per_ip or None,  # None: the setting's default
    }
    try:
        net.prepare()
        t_start = time.monotonic()
        for i in range(full):
            net.start_node(i)
        net.wait_healthy(args.start_timeout, range(full))
        out["full_healthy_s"] = round(time.monotonic() - t_start, 1)
        t0 = time.monotonic()
        for i in range(full, n):
            net.start_node(i)
        net.wait_healthy(args.start_timeout, range(full, n))
        joined = time.monotonic() - t0
        disc, snap = run.wait_discovered(max(1.0, args.discovery_timeout - joined))
        out["joined_healthy_s"] = round(joined, 1)
        out["discovery_s"] = round(joined + disc, 1) if disc is not None else None
        conns = [_connected(s) for s in snap.values()]
        out["connected_min"] = min(conns) if conns else None
        out["connected_max"] = max(conns) if conns else None
        if disc is None:  # go on: the delivery figures say what a partial overlay does
            log(f"N={n}: not every node reached min(8, N-1) peers: {sorted(conns)}")
        # batch 1
        before = snap
        pids = {i: net.nodes[i].pid for i in range(n)}
        tcp0 = _tcp_bytes_in(list(pids.values()))
        t_pub = time.monotonic()
        ids = run.publish(args.items, range(full), rng, f"{n}-a")
        out["publish_s"] = round(time.monotonic() - t_pub, 1)
        after = run.wait_delivered(ids, args.delivery_timeout)
        tcp1 = _tcp_bytes_in(list(pids.values()))
        d1 = _delivery(ids, after, run.alive)
        out.update(
            {
                k: d1[k]
                for k in (
                    "delivered_fraction",
                    "p50_ms",
                    "p99_ms",
                    "max_ms",
                    "coverage_99_ms",
                    "latency_cdf_ms",
                )
            }
        )
        per_node_bytes, per_node_tcp, per_node_msgs, dups = [], [], [], 0
        for i in run.alive:
            got = sum(
                1 for e, a in ids.items() if a != i and e in after.get(i, {}).get("arrivals", {})
            )
            if i in after and i in before and got:
                rb = _counter(after[i], "gossip", "received_bytes") - _counter(
                    before[i], "gossip", "received_bytes"
                )
                per_node_bytes.append(rb / got)
                rm = _counter(after[i], "gossip", "received_msgs") - _counter(
                    before[i], "gossip", "received_msgs"
                )
                per_node_msgs.append(rm / got)
                if tcp0 and tcp1:
                    per_node_tcp.append((tcp1[pids[i]] - tcp0[pids[i]]) / got)
            if i in after and i in before:
                dups += _dups(after[i]) - _dups(before[i])
        out["bytes_in_per_item_per_node"] = (
            round(statistics.mean(per_node_bytes), 1) if per_node_bytes else None
        )
        out["tcp_bytes_in_per_item_per_node"] = (
            round(statistics.mean(per_node_tcp), 1) if per_node_tcp else None
        )
        out["msgs_in_per_item_per_node"] = (
            round(statistics.mean(per_node_msgs), 2) if per_node_msgs else None
        )
        out["duplicates_per_item"] = round(dups / len(ids), 2)
        out["duplicates_per_item_per_node"] = round(dups / len(ids) / n, 3)
        rss = {i: _rss_mb(pids[i]) for i in range(n)}
        full_rss = [v for i, v in rss.items() if i < full and v is not None]
        light_rss = [v for i, v in rss.items() if i >= full and v is not None]
        out["rss_mb_full"] = round(statistics.median(full_rss), 1) if full_rss else None
        out["rss_mb_light"] = round(statistics.median(light_rss), 1) if light_rss else None
        out["rss_mb_total"] = round(sum(full_rss) + sum(light_rss), 1)
        # batch 2, after the bootstrap (node 1) is SIGKILLed
        net.kill_node(0)
        run.alive = list(range(1, n))
        ids2 = run.publish(args.items_after_kill, range(1, full), rng, f"{n}-b")
        after2 = run.wait_delivered(ids2, args.delivery_timeout)
        d2 = _delivery(ids2, after2, run.alive)
        out["delivered_fraction_after_bootstrap_kill"] = d2["delivered_fraction"]
        out["p50_ms_after_kill"] = d2["p50_ms"]
        out["p99_ms_after_kill"] = d2["p99_ms"]
        conns2 = [_connected(s) for s in after2.values()]
        out["connected_min_after_kill"] = min(conns2) if conns2 else None
        out["connected_max_after_kill"] = max(conns2) if conns2 else None
        out["connected_max_seen"] = run.connected_max_seen
        out["items"] = len(ids)
        out["items_after_kill"] = len(ids2)
        # one row in ten: (s since the healthy joiners were first polled, nodes with
        # min(8, N - 1) peers, fewest peers of a node)
        out["discovery_trace"] = run.trace[:: max(1, len(run.trace) // 10)] + run.trace[-1:]
        out["poll_round_s"] = round(statistics.median(polls), 2) if polls else None
    finally:
        net.stop()
    return out


def _targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    big = max(runs, key=lambda r: r["nodes"])
    small = min(runs, key=lambda r: r["nodes"])

    def le(v: Any, bound: float) -> bool:
        return v is not None and v <= bound

    def ge(v: Any, bound: float) -> bool:
        return v is not None and v >= bound

    ratio = None
    if big["bytes_in_per_item_per_node"] and small["bytes_in_per_item_per_node"]:
        ratio = round(big["bytes_in_per_item_per_node"] / small["bytes_in_per_item_per_node"], 3)
    return {
        "at_nodes": big["nodes"],
        "discovery_s<=30": le(big["discovery_s"], TARGETS["discovery_s"]),
        "delivered_fraction>=0.999": ge(big["delivered_fraction"], TARGETS["delivered_fraction"]),
        "delivered_fraction_after_bootstrap_kill>=0.999": ge(
            big["delivered_fraction_after_bootstrap_kill"], TARGETS["delivered_fraction"]
        ),
        "p99_ms<=2000": le(big["p99_ms"], TARGETS["p99_ms"]),
        "connected_max<=16": le(big["connected_max_seen"], TARGETS["connected_max"]),
        "bytes_ratio_vs_smallest": ratio,
        "bytes_ratio<=1.5": le(ratio, TARGETS["bytes_ratio"]),
    }


def cmd_network(args: argparse.Namespace) -> int:
    import sys

    if args.full > min(args.nodes):
        raise NetworkBenchError(f"--full {args.full} is more than the smallest --nodes")
    root = args.keep or Path(tempfile.mkdtemp(prefix="dsonode-bench-network-"))
    root.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"bench network: {msg}", file=sys.stderr, flush=True)

    runs = []
    try:
        for n in args.nodes:
            log(f"N={n}: starting ({min(args.full, n)} full, {n - min(args.full, n)} light)")
            runs.append(run_one(n, args, root, lambda _m: None))
            log(f"N={n}: {runs[-1]}")
    finally:
        if args.keep is None:
            with contextlib.suppress(OSError):
                shutil.rmtree(root, ignore_errors=True)
    report({"runs": runs, "targets": _targets(runs)}, args.json, args)
    return 0
