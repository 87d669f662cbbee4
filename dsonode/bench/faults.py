"""`dsonode bench faults`: the full fault, fuzz and crash run (RELIABILITY.md has the method).

Four parts, each the full-size version of a CI test:

1. wire fuzzing (tests/test_fuzz_wire.py): `--wire-inputs` mutated inputs per decoder (item,
   batch, sync message, sync frame), typed errors only, 2 s per-input bound;
   plus a coverage-guided atheris run of the same targets (`--atheris-runs`, if installed);
2. socket abuse (tests/test_socket_abuse.py): `--socket-requests` malformed requests against
   a real node, which must keep answering a real `search` between rounds;
3. SIGKILL loop (tests/test_kill9.py): `--kill9-runs` kills during ingest on one data dir;
4. partition and flood: need the multi-node `dsonode testnet`; reported as null until then.

Figures: `crashes` = decoder inputs that raised anything but a WireError + atheris crashes +
socket contract violations (a reply that is not JSON-RPC, an internal error, a connection
not closed cleanly, a failed search check); `hangs` = inputs over the per-input bound +
atheris timeouts; `items_lost` = acknowledged items missing after the kills.
Targets: crashes = hangs = items_lost = 0.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dsonode.bench.common import report

NOT_MEASURED = "not measured yet: needs the multi-node `dsonode testnet` (next round)"
LESSONS = [
    ("code", "Write a failing unit test before fixing a bug in the parser."),
    ("code", "Close file handles in a finally block or use a context manager."),
    ("math", "When proving a statement for all natural numbers, check the base case first."),
    ("ops", "Set a timeout on every network call and retry with backoff."),
]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "faults", help="fuzzing, socket abuse and SIGKILL loops (crashes/hangs/items lost)"
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
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch directory")
    parser.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


def _check_args(args) -> None:
    from dsonode.core.errors import DsoError

    for name, top in (
        ("wire_inputs", 10_000_000),
        ("atheris_runs", 100_000_000),
        ("socket_requests", 1_000_000),
        ("kill9_runs", 1_000),
    ):
        value = getattr(args, name)
        if not 0 <= value <= top:
            raise DsoError(f"--{name.replace('_', '-')} must be in 0..{top}")


def run_wire(args, seed: int, work: Path) -> dict[str, Any]:
    from dsonode.reliability import atheris_fuzz
    from dsonode.reliability.fuzz import run_fuzz

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
    from dsonode.api.testing import NodeProcess
    from dsonode.reliability.socket_abuse import run_abuse

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
    from dsonode.reliability.kill9 import run_kill9

    _say(f"kill9: {args.kill9_runs} SIGKILL cycles")
    result = run_kill9(
        work / "kill9-node",
        args.kill9_runs,
        random.Random(seed),
        progress=lambda r: _say(f"  run {r.runs}: {r.acknowledged} acknowledged so far"),
    )
    return result.summary()


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

    mutation = (wire or {}).get("mutation") or {}
    atheris = (wire or {}).get("atheris") or {}
    atheris_crashes = int(bool(atheris.get("crashed")))
    atheris_timeouts = sum(1 for f in atheris.get("crash_files", []) if f.startswith("timeout"))
    socket_violations = (sock or {}).get("violations", 0) + int(
        sock is not None and not sock["node_alive_at_end"]
    )
    kill_failures = len((kill or {}).get("failures", []))
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
        "kill9_runs": (kill or {}).get("runs", 0),
        "items_lost": (kill or {}).get("items_lost", 0),
        "kill9_failures": kill_failures,
        "partition_converge_s": None,
        "flood_graylist_s": None,
        "flood_honest_delivered_fraction": None,
        "flood_peak_rss_mb": None,
        "not_measured": {
            "partition_converge_s": NOT_MEASURED,
            "flood_graylist_s": NOT_MEASURED,
            "flood_honest_delivered_fraction": NOT_MEASURED,
            "flood_peak_rss_mb": NOT_MEASURED,
        },
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "wire": wire,
        "socket": sock,
        "kill9": kill,
    }
    met = result["crashes"] == 0 and result["hangs"] == 0 and result["items_lost"] == 0
    result["targets"] = {
        "crashes": 0,
        "hangs": 0,
        "items_lost": 0,
        "met": met and kill_failures == 0,
    }
    report(result, args.json)
    return 0 if result["targets"]["met"] else 1
