"""`make bench-faults` (`python -m qa.faults`): the full fault, fuzz and crash run
(RELIABILITY.md has the method).

Four parts, each the full-size version of a CI test:

1. wire fuzzing (tests/test_fuzz_wire.py): `--wire-inputs` mutated inputs per decoder (item,
   batch, sync message, sync frame), typed errors only, 2 s per-input bound;
   plus a coverage-guided atheris run of the same targets (`--atheris-runs`, if installed);
2. socket abuse (tests/test_socket_abuse.py): `--socket-requests` malformed requests against
   a real node, which must keep answering a real `search` between rounds;
3. SIGKILL loop (tests/test_kill9.py): `--kill9-runs` kills during ingest on one data dir;
   `--kill9-consensus-runs` / `--kill9-sync-runs` kill a node recomputing consensus from a
   peer's gossip / pulling `--kill9-sync-items` by sync (tests/test_kill9_net.py);
4. partition (`--partition-runs`, qa/partition.py, tests/test_partition.py):
   5 nodes split 2 + 3 through loopback relays, both sides publish, healed; the median time
   from heal to identical experiences and consensus everywhere (`partition_converge_s`);
5. hostile peers (`--flood-runs`, qa/flood.py + hostile.py,
   tests/test_hostile.py): a `--flood-nodes` testnet attacked at once by a flooder, a
   replayer, a forger and an oversize peer (real processes) while node 1 keeps adding
   experiences; medians of `flood_graylist_s`, `flood_honest_delivered_fraction`, and the
   max `flood_peak_rss_mb` (null when skipped);
6. colluding Byzantine submitters (`byzantine_live` block, `--skip-byzantine-live`,
   qa/byzantine_live.py, tests/test_byzantine_live.py): 11 real nodes,
   every attack of `dsonode bench byzantine` at 1/3/5 attackers; honest consensus quality
   vs clean, detection, reputation.

Figures: `crashes` = decoder inputs that raised anything but a WireError + atheris crashes +
socket contract violations (a reply that is not JSON-RPC, an internal error, a connection
not closed cleanly, a failed search check); `hangs` = inputs over the per-input bound +
atheris timeouts; `items_lost` = acknowledged items missing after the kills.
Targets: crashes = hangs = items_lost = 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsonode.argtypes import bounded_int
from dsonode.bench.common import add_output_args, report

NOT_MEASURED = "not measured yet: needs the multi-node `dsonode testnet` (next round)"
LESSONS = [
    ("code", "Write a failing unit test before fixing a bug in the parser."),
    ("code", "Close file handles in a finally block or use a context manager."),
    ("math", "When proving a statement for all natural numbers, check the base case first."),
    ("ops", "Set a timeout on every network call and retry with backoff."),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qa.faults",
        description="fuzzing, socket abuse and SIGKILL loops (crashes/hangs/items lost)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--wire-inputs", type=int, default=250_000, help="mutated inputs per decoder (4 decoders)"
    )
    parser.add_argument(
        "--atheris-runs", type=int, default=500_000, help="atheris executions (0: skip)"
    )
    parser.add_argument(
        "--socket-requests", type=int, default=10_000, help="malformed socket requests (0: skip)"
    )
    parser.add_argument("--kill9-runs", type=int, default=20, help="SIGKILL cycles (0: skip)")
    parser.add_argument(
        "--kill9-consensus-runs",
        type=int,
        default=20,
        help="SIGKILLs of a node recomputing consensus from a peer's gossip (0: skip)",
    )
    parser.add_argument(
        "--kill9-sync-runs",
        type=int,
        default=20,
        help="SIGKILLs of a node pulling --kill9-sync-items by sync (0: skip)",
    )
    parser.add_argument(
        "--kill9-sync-items",
        type=int,
        default=4000,
        help="items the late node pulls (enough that the kills come mid-pull)",
    )
    parser.add_argument(
        "--partition-runs",
        type=int,
        default=3,
        help="5-node partition/heal runs, median reported (0: skip; ~90 s each)",
    )
    parser.add_argument(
        "--partition-hold", type=float, default=15.0, help="seconds each partition lasts"
    )
    parser.add_argument(
        "--flood-runs",
        type=bounded_int(0, 20),
        default=3,
        help="hostile-peer runs on one testnet, medians reported (0: skip; ~30 s each)",
    )
    parser.add_argument(
        "--flood-nodes", type=bounded_int(2, 8), default=4, help="honest nodes (2..8)"
    )
    parser.add_argument(
        "--flood-duration", type=bounded_int(2, 120), default=10, help="attack seconds (2..120)"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch directory")
    parser.add_argument(
        "--skip-byzantine-live",
        action="store_true",
        help="skip the live colluding-Byzantine sweep (11 processes, every attack at 1/3/5 "
        "attackers; about 15-30 min on 2 cores)",
    )
    parser.add_argument(
        "--byzantine-live-experiences",
        type=bounded_int(1, 10),
        default=2,
        help="new experiences per (attack, fraction) of the live Byzantine sweep (1..10)",
    )
    add_output_args(parser, "faults")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dsonode.core.errors import DsoError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DsoError as exc:
        print(f"qa.faults: {exc}", file=sys.stderr)
        return 2


def _say(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


def _check_args(args) -> None:
    from dsonode.core.errors import DsoError

    for name, top in (
        ("wire_inputs", 10_000_000),
        ("atheris_runs", 100_000_000),
        ("socket_requests", 1_000_000),
        ("kill9_runs", 1_000),
        ("kill9_consensus_runs", 1_000),
        ("kill9_sync_runs", 1_000),
        ("kill9_sync_items", 100_000),
        ("partition_runs", 20),
    ):
        value = getattr(args, name)
        if not 0 <= value <= top:
            raise DsoError(f"--{name.replace('_', '-')} must be in 0..{top}")


def run_wire(args, seed: int, work: Path) -> dict[str, Any]:
    from qa import atheris_fuzz
    from qa.fuzz import run_fuzz

    _say(f"wire fuzz: {args.wire_inputs} inputs per decoder, seed {seed}")
    result = run_fuzz(
        args.wire_inputs, seed=seed, progress=lambda t, n: n % 50_000 or _say(f"  {t}: {n}")
    )
    out: dict[str, Any] = {"mutation": result.summary()}
    if args.atheris_runs and atheris_fuzz.available():
        _say(f"atheris: {args.atheris_runs} runs")
        out["atheris"] = atheris_fuzz.run_atheris(work / "atheris" / "corpus", args.atheris_runs)
    elif args.atheris_runs:
        out["atheris"] = {"skipped": "atheris is not installed (pip install atheris==3.0.0)"}
    return out


def run_socket(args, seed: int, work: Path) -> dict[str, Any]:
    from dsonode.testnet.process import NodeProcess
    from qa.socket_abuse import run_abuse

    max_connections, idle = 16, 2
    node = NodeProcess(
        work / "abuse-node",
        "--max-connections",
        str(max_connections),
        "--idle-timeout",
        str(idle),
    )
    _say(f"socket abuse: {args.socket_requests} requests (starting a node)")
    with node:
        with node.client() as c:
            for domain, text in LESSONS:
                c.add_experience(text, domain)
        result = run_abuse(
            node.socket_path,
            node.pid,
            args.socket_requests,
            random.Random(seed),
            max_connections=max_connections,
            idle_timeout=idle,
            rounds=10,
            progress=lambda r: _say(f"  {r.requests} requests, {len(r.violations)} violations"),
        )
        alive = node.proc is not None and node.proc.poll() is None
    out = result.summary()
    out["node_alive_at_end"] = alive
    return out


def run_kill9_part(args, seed: int, work: Path) -> dict[str, Any]:
    from qa.kill9 import run_kill9

    _say(f"kill9: {args.kill9_runs} SIGKILL cycles")
    result = run_kill9(
        work / "kill9-node",
        args.kill9_runs,
        random.Random(seed),
        progress=lambda r: _say(f"  run {r.runs}: {r.acknowledged} acknowledged so far"),
    )
    return result.summary()


def run_kill9_net_part(args, seed: int, work: Path, phase: str) -> dict[str, Any]:
    """SIGKILLs during consensus updates or a sync pull (qa.kill9)."""
    from qa.kill9 import run_kill9_net

    runs = args.kill9_consensus_runs if phase == "consensus" else args.kill9_sync_runs
    _say(f"kill9 {phase}: {runs} SIGKILL cycles (two nodes)")
    result = run_kill9_net(
        work / f"kill9-{phase}",
        phase,
        runs,
        random.Random(seed + (1 if phase == "consensus" else 2)),
        items=args.kill9_sync_items,
        progress=lambda r: _say(
            f"  run {r.runs}: {r.experiences_at_kill[-1]} experiences, "
            f"{r.pending_at_kill[-1]} pending at the kill"
        ),
    )
    return result.summary()


def run_byzantine_live_part(args, work: Path) -> dict[str, Any]:
    from qa.byzantine_live import run_byzantine_live

    _say("byzantine_live: 11-node testnet, every attack at 1, 3 and 5 colluders")
    return run_byzantine_live(
        work / "byzantine-live",
        experiences=args.byzantine_live_experiences,
        progress=lambda m: _say(f"  {m}"),
    )


def run_partition_part(args, work: Path) -> dict[str, Any]:
    """`--partition-runs` partition/heal runs (qa.partition); the median."""
    import statistics

    from dsonode.core.errors import DsoError
    from qa.partition import run_partition

    if not 0 <= args.partition_hold <= 600:
        raise DsoError("--partition-hold must be in 0..600 seconds")
    runs, times = [], []
    for k in range(args.partition_runs):
        _say(f"partition run {k + 1}/{args.partition_runs}: 5 nodes, split 2 + 3, heal")
        r = run_partition(work / f"partition-{k}", hold_s=args.partition_hold, log=_say)
        runs.append(r.summary())
        if r.converged and r.converge_s is not None:
            times.append(r.converge_s)
    return {
        "runs": len(runs),
        "converged_runs": len(times),
        "isolated_runs": sum(bool(r["isolated"]) for r in runs),
        "converge_s": times,
        "median_converge_s": statistics.median(times)
        if len(times) == len(runs) and all(r["isolated"] for r in runs)
        else None,
        "details": runs,
    }


def run_flood_part(args, work: Path) -> dict[str, Any]:
    """`--flood-runs` hostile-peer runs on one testnet (qa.flood)."""
    import statistics

    from dsonode.testnet import Testnet, free_ports, plan_testnet
    from dsonode.testnet.plan import host_ip
    from qa.flood import run_hostile

    n = args.flood_nodes
    plan = plan_testnet(n, ports=free_ports([host_ip(i) for i in range(n)]))
    runs = []
    _say(f"flood: {n}-node testnet, {args.flood_runs} runs of {args.flood_duration} s")
    with Testnet(plan, work / "flood", start_timeout=300, mesh_timeout=120) as net:
        for k in range(args.flood_runs):
            r = run_hostile(net, duration=float(args.flood_duration), seed=k + 1, log=_say)
            _say(
                f"  run {k + 1}: graylist {r['flood_graylist_s']} s, delivered "
                f"{r['flood_honest_delivered_fraction']}, peak RSS {r['flood_peak_rss_mb']} MB"
            )
            runs.append(r)
        alive = all(node.proc.poll() is None for node in net.nodes)
    gl = [r["flood_graylist_s"] for r in runs]
    return {
        "runs": len(runs),
        "nodes": n,
        "nodes_alive_at_end": alive,
        # null if the flooder escaped the graylist of some node in any run
        "median_graylist_s": statistics.median(gl) if None not in gl else None,
        "median_delivered_fraction": statistics.median(
            r["flood_honest_delivered_fraction"] or 0.0 for r in runs
        ),
        "peak_rss_mb": max(r["flood_peak_rss_mb"] for r in runs),
        "baseline_rss_mb": max(r["baseline_rss_mb"] for r in runs),
        "forged_accepted": sum(r["forged_accepted"] for r in runs),
        "oversize_accepted": sum(r["oversize_accepted"] for r in runs),
        "details": runs,
    }


def _flood_ok(flood: dict[str, Any] | None) -> bool:
    """Skipped counts as met; run: graylisted within 10 s, >= 99 % delivered, nothing
    forged or oversize accepted, every node alive."""
    if flood is None:
        return True
    gl = flood.get("median_graylist_s")
    return (
        gl is not None
        and gl <= 10
        and flood["median_delivered_fraction"] >= 0.99
        and flood["forged_accepted"] == 0
        and flood["oversize_accepted"] == 0
        and flood["nodes_alive_at_end"]
    )


def _partition_ok(part: dict[str, Any] | None) -> bool:
    """Skipped counts as met; run, it must converge (and stay isolated) within 30 s."""
    if part is None:
        return True
    median = part.get("median_converge_s")
    return median is not None and median <= 30


def run(args) -> int:
    _check_args(args)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsonode-faults-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        work.chmod(0o700)
        wire = run_wire(args, seed, work) if args.wire_inputs else None
        sock = run_socket(args, seed, work) if args.socket_requests else None
        kill = run_kill9_part(args, seed, work) if args.kill9_runs else None
        kill_cons = (
            run_kill9_net_part(args, seed, work, "consensus") if args.kill9_consensus_runs else None
        )
        kill_sync = run_kill9_net_part(args, seed, work, "sync") if args.kill9_sync_runs else None
        part = run_partition_part(args, work) if args.partition_runs else None
        byz_live = None if args.skip_byzantine_live else run_byzantine_live_part(args, work)
        flood = run_flood_part(args, work) if args.flood_runs else None

    mutation = (wire or {}).get("mutation") or {}
    atheris = (wire or {}).get("atheris") or {}
    atheris_crashes = int(bool(atheris.get("crashed")))
    atheris_timeouts = sum(1 for f in atheris.get("crash_files", []) if f.startswith("timeout"))
    socket_violations = (sock or {}).get("violations", 0) + int(
        sock is not None and not sock["node_alive_at_end"]
    )
    kill_failures = sum(len((k or {}).get("failures", [])) for k in (kill, kill_cons, kill_sync))
    result: dict[str, Any] = {
        "seed": seed,
        "fuzz_wire_inputs": mutation.get("inputs", 0),
        "fuzz_wire_inputs_per_decoder": {
            name: t["inputs"] for name, t in mutation.get("per_target", {}).items()
        },
        "atheris_runs": atheris.get("runs"),
        "fuzz_socket_inputs": (sock or {}).get("requests", 0),
        "crashes": mutation.get("crashes", 0) + atheris_crashes + socket_violations,
        "hangs": mutation.get("hangs", 0) + atheris_timeouts,
        # every SIGKILL: during ingest, consensus updates and sync (each phase also apart)
        "kill9_runs": sum((k or {}).get("runs", 0) for k in (kill, kill_cons, kill_sync)),
        "kill9_ingest_runs": (kill or {}).get("runs", 0),
        "kill9_consensus_runs": (kill_cons or {}).get("runs", 0),
        "kill9_sync_runs": (kill_sync or {}).get("runs", 0),
        "items_lost": (kill or {}).get("items_lost", 0),
        "kill9_failures": kill_failures,
        # null when skipped or when any run failed to converge (see partition.details)
        "partition_converge_s": (part or {}).get("median_converge_s"),
        "flood_graylist_s": (flood or {}).get("median_graylist_s"),
        "flood_honest_delivered_fraction": (flood or {}).get("median_delivered_fraction"),
        "flood_peak_rss_mb": (flood or {}).get("peak_rss_mb"),
        "not_measured": {
            **(
                {}
                if (part or {}).get("median_converge_s") is not None
                else {
                    "partition_converge_s": "skipped (--partition-runs 0)"
                    if part is None
                    else "a run did not converge or its cut leaked (see partition)"
                }
            ),
            **(
                {}
                if flood is not None
                else {
                    k: "skipped (--flood-runs 0)"
                    for k in (
                        "flood_graylist_s",
                        "flood_honest_delivered_fraction",
                        "flood_peak_rss_mb",
                    )
                }
            ),
        },
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "wire": wire,
        "socket": sock,
        "kill9": kill,
        "kill9_consensus": kill_cons,
        "kill9_sync": kill_sync,
        "partition": part,
        "byzantine_live": byz_live,
        "flood": flood,
    }
    met = result["crashes"] == 0 and result["hangs"] == 0 and result["items_lost"] == 0
    result["targets"] = {
        "crashes": 0,
        "hangs": 0,
        "items_lost": 0,
        "partition_converge_s_max": 30,
        "flood_graylist_s_max": 10,
        "flood_honest_delivered_fraction_min": 0.99,
        "met": met and kill_failures == 0 and _partition_ok(part) and _flood_ok(flood),
    }
    report(result, args.json, args)
    return 0 if result["targets"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
