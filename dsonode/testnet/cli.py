"""`dsonode testnet`: a local testnet of separate `dsonode run` processes on 127.0.0.2...

    dsonode testnet --nodes 5 --byzantine 1 --attack sign_flip --duration 60
    dsonode testnet --compose docker-compose.yml          # the compose topology, locally

Steps (each wait bounded): create every node's identity (so peer ids are known), start the
processes, wait until all answer `health` and are meshed, seed the sample experiences at the
first node over its socket, wait until every node holds every one with a confirmed consensus,
ask the query at the last node and print the top results, then keep showing the live status
table for --duration seconds (0: stop at once; default: until Ctrl-C or SIGTERM). Every
process is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dsonode.argtypes import SubParsers, bounded_float, bounded_int
from dsonode.core.attacks import ATTACKS

DEFAULT_QUERY = "How do I make sure the answer to an equation is right?"
#: `dsonode run`'s default quorum: accepted submissions that confirm a consensus.
QUORUM = 3


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "testnet",
        help="run a local testnet of N node processes on 127.0.0.2.. (seed, consensus, query)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=bounded_int(1, 64), default=3, help="nodes (default 3)")
    p.add_argument(
        "--byzantine", type=bounded_int(0, 62), default=0, help="Byzantine nodes among them"
    )
    p.add_argument(
        "--attack",
        choices=list(ATTACKS),
        default="gaussian",
        help="their attack (see `dsonode run --byzantine-attack`)",
    )
    p.add_argument(
        "--compose",
        type=Path,
        default=None,
        help="run the topology of this docker-compose.yml (and its configs/) as local "
        "processes instead of --nodes/--byzantine",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep every node's data, key and node.log here (default: a temporary directory, "
        "removed at the end)",
    )
    p.add_argument(
        "--base-port",
        type=bounded_int(1, 65535 - 64),
        default=None,
        help="node i listens on BASE_PORT + i (default: a free port per node)",
    )
    p.add_argument(
        "--seed-file",
        type=Path,
        action="append",
        default=[],
        help="JSONL of {domain, text, tags} to seed with (repeat); default: the samples",
    )
    p.add_argument(
        "--rollouts",
        type=Path,
        action="append",
        default=[],
        help="rollouts JSONL (e.g. examples/rollouts/math.jsonl) to seed through the seed "
        "node's `submit_rollouts` (offline extractor; repeat)",
    )
    p.add_argument("--no-samples", action="store_true", help="do not seed the packaged samples")
    p.add_argument("--query", default=DEFAULT_QUERY, help="asked at the last node at the end")
    p.add_argument("-k", type=bounded_int(1, 100), default=3, help="results shown (default 3)")
    p.add_argument(
        "--duration",
        type=bounded_float(0, 7 * 24 * 3600),
        default=None,
        help="seconds to keep running after the query (0: stop at once; default: until Ctrl-C)",
    )
    p.add_argument(
        "--start-timeout",
        type=bounded_float(1, 3600),
        default=300.0,
        help="seconds for every node to load its model and answer (default 300)",
    )
    p.add_argument(
        "--consensus-timeout",
        type=bounded_float(1, 3600),
        default=300.0,
        help="seconds for every seeded experience to be confirmed everywhere (default 300)",
    )
    p.add_argument("--threads", type=bounded_int(1, 64), default=1, help="torch threads per node")
    p.add_argument(
        "--full-mesh",
        action="store_true",
        help="every node dials every other one (small tests); default: every node is given "
        "node 1's address only and the rest is found by discovery",
    )
    p.set_defaults(func=cmd_testnet)


def build_plan(args: argparse.Namespace) -> Any:
    from dsonode.testnet.compose import read_compose, services_from_compose
    from dsonode.testnet.plan import host_ip, plan_from_services, plan_testnet
    from dsonode.testnet.supervisor import free_ports

    if args.compose is not None:
        services = services_from_compose(read_compose(args.compose), args.compose.parent)
        n = len(services)
    else:
        n = args.nodes
    ips = [host_ip(i) for i in range(n)]
    ports = [args.base_port + i for i in range(n)] if args.base_port else free_ports(ips)
    if args.compose is not None:
        return plan_from_services(services, ports)
    return plan_testnet(
        n, ports=ports, byzantine=args.byzantine, attack=args.attack, full_mesh=args.full_mesh
    )


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def render_table(rows: list[dict[str, Any]], seeded: int, phase: str) -> Any:
    """The live status table (rich), one row per node."""
    from rich.table import Table

    table = Table(title=f"dsonode testnet - {phase}", title_justify="left")
    for col in (
        "node",
        "address",
        "peer id",
        "exps",
        "subs",
        f"conf/{seeded}",
        "peers",
        "acc",
        "rej",
        "byzantine",
        "byzantine node's reputation here",
    ):
        table.add_column(col, no_wrap=True)
    for r in rows:
        rep = ", ".join(
            f"{name} {v.get('score', 0):.2f} +{v.get('accepted', 0)}/-{v.get('rejected', 0)}"
            for name, v in r["liar_reputation"].items()
        )
        name = r["name"] if r["running"] else f"{r['name']} (down)"
        table.add_row(
            name,
            r["listen"].removeprefix("/ip4/").replace("/tcp/", ":"),
            r["peer_id"][-6:],
            _fmt(r["experiences"]),
            _fmt(r["submissions"]),
            _fmt(r["confirmed"]),
            _fmt(r["connected"]),
            _fmt(r["accepted"]),
            _fmt(r["rejected"]),
            r["byzantine"] or "",
            rep or ("" if r["byzantine"] else "-"),
        )
    return table


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_testnet(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from dsonode.testnet.samples import load_rollouts, load_samples, load_seed_file
    from dsonode.testnet.supervisor import Testnet

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the whole table
        console = Console(width=140)
    plan = build_plan(args)
    experiences = [] if args.no_samples else load_samples()
    for path in args.seed_file:
        experiences += load_seed_file(path)
    rollouts = [(path, load_rollouts(path)) for path in args.rollouts]
    if (experiences or rollouts) and len(plan.honest) < QUORUM:
        from dsonode.testnet.plan import PlanError

        raise PlanError(
            f"{len(plan.honest)} honest node(s) can never confirm a consensus (quorum "
            f"{QUORUM}): use at least {QUORUM} honest nodes, or --no-samples to only run it"
        )
    owned_tmp = args.data_dir is None
    root = Path(tempfile.mkdtemp(prefix="dsonode-testnet-")) if owned_tmp else args.data_dir
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops like Ctrl-C
    net = Testnet(
        plan,
        root,
        threads=args.threads,
        start_timeout=args.start_timeout,
        log=lambda m: console.print(f"[dim]{m}[/dim]"),
    )
    try:
        byz = ", ".join(plan.nodes[i].name for i in plan.byzantine) or "none"
        console.print(
            f"[bold]testnet[/bold] of {len(plan)} nodes in {root} (Byzantine: {byz}); "
            "loading the model in every node takes a while"
        )
        with net:
            ids: list[str] = []
            if experiences:
                seed_name = plan.nodes[plan.seed_node].name
                console.print(f"seeding {len(experiences)} experiences at {seed_name}")
                ids = net.seed(experiences)
            for path, batch in rollouts:
                with net.client(plan.seed_node, timeout=600.0) as c:
                    done = c.submit_rollouts(batch)
                added = [a["id"] for a in done.get("added", [])]
                console.print(
                    f"{path.name}: {len(batch)} rollouts -> {len(added)} new lessons "
                    f"({done.get('merged', 0)} merged, {done.get('existing', 0)} known)"
                )
                ids += [i for i in added if i not in ids]
            with Live(console=console, refresh_per_second=2, auto_refresh=False) as live:

                def show(phase: str) -> list[dict[str, Any]]:
                    rows = net.status(ids)
                    live.update(render_table(rows, len(ids), phase), refresh=True)
                    return rows

                deadline = time.monotonic() + args.consensus_timeout
                while ids:
                    net.check_alive()
                    rows = show("waiting for confirmed consensus at every node")
                    if all(r["confirmed"] == len(ids) for r in rows):
                        break
                    if time.monotonic() > deadline:
                        net.fail_waiting(
                            "confirmed consensus at every node",
                            [
                                n
                                for n, r in zip(net.nodes, rows, strict=True)
                                if r["confirmed"] != len(ids)
                            ],
                            [r["confirmed"] for r in rows],
                        )
                    time.sleep(1.0)
                show("consensus confirmed" if ids else "running (nothing seeded)")
            _print_query(console, net, args)
            if args.duration != 0:
                until = "Ctrl-C" if args.duration is None else f"{args.duration:g} s"
                console.print(f"running; stops after {until}")
                end = None if args.duration is None else time.monotonic() + args.duration
                with Live(console=console, refresh_per_second=1, auto_refresh=False) as live:
                    while end is None or time.monotonic() < end:
                        net.check_alive()
                        rows = net.status(ids)
                        live.update(render_table(rows, len(ids), "running"), refresh=True)
                        time.sleep(2.0)
        console.print("every node stopped")
        return 0
    finally:
        net.stop()
        signal.signal(signal.SIGTERM, previous)
        if owned_tmp:
            shutil.rmtree(root, ignore_errors=True)


def _print_query(console: Any, net: Any, args: argparse.Namespace) -> None:
    node = net.plan.nodes[net.plan.query_node]
    console.print(f"\n[bold]query[/bold] at {node.name} ({node.listen}): {args.query!r}")
    hits = net.query(args.query, k=args.k)
    if not hits:
        console.print("  no results")
    for rank, hit in enumerate(hits, 1):
        state = "confirmed" if hit["confirmed"] else "unconfirmed"
        console.print(
            f"  {rank}. [{hit['score']:.3f}] ({hit['domain']}) {hit['text']}\n"
            f"     consensus: {state}, {hit['submissions']} accepted submission(s)"
        )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
