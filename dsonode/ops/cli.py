"""Commands: `dsonode status` and `dsonode peers`, read from the running node's socket.

Both call the socket's `stats` method (the same figures Prometheus scrapes) and print a
summary; `--json` prints the summary as one JSON document instead. No node on the socket is
exit code 1 with a message saying so. Building these commands imports nothing heavy
(tests/test_cli.py): the client is plain `socket`, tables are rich.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from dsonode.api.cliargs import add_node_args, node_client
from dsonode.argtypes import SubParsers


def _add_client_args(p: argparse.ArgumentParser) -> None:
    add_node_args(p, timeout=30.0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "status",
        help="summary of the running node (peer id, items, consensus, peers, gossip)",
        description="Ask the running node for its state and print a summary.",
    )
    _add_client_args(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "peers",
        help="the running node's known peers: traffic, penalties, reputation",
        description="One row a known peer: connected or not, items accepted and rejected from "
        "it, its penalty and graylisting, and the reputation of its submissions.",
    )
    _add_client_args(p)
    p.set_defaults(func=cmd_peers)


# ----------------------------------------------------------------------------------------
# From the `stats` result to summaries (pure)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _sum(values: Any) -> int:
    return sum(_int(v) for v in values.values()) if isinstance(values, Mapping) else 0


def status_summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    """What `dsonode status` shows, as plain data."""
    store = stats.get("store") or {}
    consensus = stats.get("consensus") or {}
    out: dict[str, Any] = {
        "version": stats.get("version"),
        "uptime_s": stats.get("uptime_s"),
        "author": stats.get("author"),
        "space_id": stats.get("space_id"),
        "model": stats.get("model"),
        "indexed": _int(stats.get("indexed")),
        "experiences": _int(store.get("experiences")),
        "submissions": _int(store.get("submissions")),
        "consensus": {
            "confirmed": _int(consensus.get("confirmed")),
            "total": _int(consensus.get("total", stats.get("indexed"))),
        },
        "network": None,
    }
    net = stats.get("network")
    if isinstance(net, Mapping):
        pipe = net.get("pipeline") or {}
        rejected = {str(k): _int(v) for k, v in (pipe.get("rejected") or {}).items()}
        counters = net.get("counters") or {}
        net_consensus = net.get("consensus") or {}
        mesh = net.get("mesh") or {}
        book = net.get("known_peers")  # the persisted peer book (dsonode.net.connmgr)
        book = book if isinstance(book, list) else []
        discovered = sum(1 for p in book if isinstance(p, Mapping) and p.get("source") == "dht")
        out["network"] = {
            "running": bool(net.get("running")),
            "peer_id": net.get("peer_id"),
            "listen": list(net.get("listen") or []),
            "connected": len(net.get("connected") or []),
            "space_peers": _int(net.get("space_peers")),
            "known": len(book),
            "discovered": discovered if book else None,
            "mesh": _int(net.get("mesh_peers")),
            "mesh_by_topic": {str(k): _int(v) for k, v in mesh.items()}
            if isinstance(mesh, Mapping)
            else {},
            "network_size": _int(net_consensus.get("network_size")),
            "committee_n": _int(net_consensus.get("committee_n")),
            "graylisted": len(pipe.get("graylisted") or []),
            "accepted": _int(pipe.get("accepted")),
            "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "dropped_graylisted": _int(pipe.get("dropped_graylisted")),
            "own_submissions": _int(counters.get("own_submissions")),
            "consensus_updates": _int(counters.get("consensus_updates")),
        }
    return out


def peer_rows(stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What `dsonode peers` shows: one row a peer the node knows of (connected, heard from,
    or judged by consensus), sorted connected first, then by peer id."""
    net = stats.get("network")
    if not isinstance(net, Mapping):
        return []
    own = net.get("peer_id")
    connected = set(net.get("connected") or [])
    graylisted = set((net.get("pipeline") or {}).get("graylisted") or [])
    traffic = net.get("peers") or {}
    reputation: dict[str, Mapping[str, Any]] = {}
    for author, rec in (net.get("reputation") or {}).items():
        if isinstance(rec, Mapping):
            reputation[str(rec.get("peer_id") or author)] = rec
    rows = []
    for pid in sorted(connected | set(traffic) | set(reputation)):
        t = traffic.get(pid) or {}
        rep = reputation.get(pid)
        rejected = t.get("rejected") or {}
        rows.append(
            {
                "peer_id": pid,
                "self": pid == own,
                "connected": pid in connected,
                "accepted": _int(t.get("accepted")),
                "rejected": _sum(rejected),
                "rejected_by_reason": {str(k): _int(v) for k, v in rejected.items()}
                if isinstance(rejected, Mapping)
                else {},
                "penalty": float(t.get("penalty") or 0.0),
                "graylisted": bool(t.get("graylisted")) or pid in graylisted,
                "reputation": None
                if rep is None
                else {
                    "score": float(rep.get("score") or 0.0),
                    "accepted": _int(rep.get("accepted")),
                    "rejected": _int(rep.get("rejected")),
                },
            }
        )
    rows.sort(key=lambda r: (r["self"], not r["connected"], r["peer_id"]))
    return rows


def format_duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h:02d}h {m:02d}m"
    if h:
        return f"{h}h {m:02d}m {s:02d}s"
    return f"{m}m {s:02d}s" if m else f"{s}s"


# ----------------------------------------------------------------------------------------
# The commands


def _fetch_stats(args: argparse.Namespace) -> Mapping[str, Any] | None:
    """The node's `stats`, or None after telling the user that no node runs there."""
    from dsonode.api.client import NodeNotRunning

    try:
        with node_client(args) as client:
            return client.stats()
    except NodeNotRunning as exc:
        print(f"dsonode: {exc}", file=sys.stderr)
        return None


def _print_table(table: Any) -> None:
    """Print a rich table; into a pipe at full width (peer ids are 52 characters: never cut
    one) and without the padding rich adds at the end of lines."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    with console.capture() as captured:
        console.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


def cmd_status(args: argparse.Namespace) -> int:
    stats = _fetch_stats(args)
    if stats is None:
        return 1
    s = status_summary(stats)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    net = s["network"]
    t.add_row("node", f"dsonode {s['version']}, up {format_duration(s['uptime_s'])}")
    t.add_row("peer id", (net or {}).get("peer_id") or "-")
    t.add_row("author", str(s["author"]))
    if net is not None:
        t.add_row("listen", "\n".join(net["listen"]) or "-")
    t.add_row("space", f"{s['space_id']} ({s['model']})")
    t.add_row(
        "items",
        f"{s['indexed']} indexed; {s['experiences']} experiences, {s['submissions']} submissions",
    )
    c = s["consensus"]
    t.add_row("consensus", f"{c['confirmed']} confirmed / {c['total']}")
    if net is None:
        t.add_row("network", "off (run with --listen to join peers)")
    else:
        state = "" if net["running"] else "  (network not running)"
        discovered = "" if net["discovered"] is None else f", {net['discovered']} discovered"
        t.add_row(
            "peers",
            f"{net['connected']} connected ({net['space_peers']} in our space), "
            f"{net['known']} known{discovered}, {net['mesh']} in mesh, "
            f"{net['graylisted']} graylisted{state}",
        )
        degrees = ", ".join(f"{k} {v}" for k, v in sorted(net["mesh_by_topic"].items()))
        t.add_row("mesh degree", degrees or "-")
        t.add_row(
            "network size",
            f"~{net['network_size']} nodes; committee draw n = {net['committee_n']} "
            "(submitting authors)",
        )
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(net["rejected_by_reason"].items()))
        t.add_row(
            "gossip",
            f"{net['accepted']} accepted, {net['rejected']} rejected"
            + (f" ({reasons})" if reasons else "")
            + f", {net['dropped_graylisted']} dropped from graylisted peers",
        )
        t.add_row(
            "own work",
            f"{net['own_submissions']} own submissions for peers' experiences, "
            f"{net['consensus_updates']} consensus updates",
        )
    _print_table(t)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    stats = _fetch_stats(args)
    if stats is None:
        return 1
    rows = peer_rows(stats)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not isinstance(stats.get("network"), Mapping):
        print("networking is off on this node (run it with --listen to join peers)")
        return 0
    if not rows:
        print("no known peers")
        return 0
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for name in ("peer id", "connected", "accepted", "rejected", "penalty", "graylisted"):
        t.add_column(name, no_wrap=True, justify="left" if name == "peer id" else "right")
    t.add_column("reputation (score, ok/rejected)", no_wrap=True, justify="right")
    for r in rows:
        rep = r["reputation"]
        t.add_row(
            r["peer_id"] + (" (self)" if r["self"] else ""),
            "-" if r["self"] else "yes" if r["connected"] else "no",
            str(r["accepted"]),
            str(r["rejected"]),
            f"{r['penalty']:.1f}",
            "YES" if r["graylisted"] else "no",
            "-" if rep is None else f"{rep['score']:.3f}, {rep['accepted']}/{rep['rejected']}",
        )
    _print_table(t)
    return 0
