"""Commands: `dsonode status` and `dsonode peers`, read from the running node's socket.

Both call the socket's `stats` method (the same figures Prometheus scrapes) and print a
summary; `--json` prints the summary as one JSON document instead. `dsonode peers add
MULTIADDR` and `dsonode peers forget PEER_ID` call the socket's `add_peer` / `forget_peer`.
No node on the socket is exit code 1 with a message saying so; so is a refused request. Building these commands imports nothing heavy
(tests/test_cli.py): the client is plain `socket`, tables are rich.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from dsonode.api.cliargs import add_node_args, node_client
from dsonode.argtypes import SubParsers


def _add_client_args(p: argparse.ArgumentParser) -> None:
    add_node_args(p, timeout=30.0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_sub_client_args(p: argparse.ArgumentParser) -> None:
    """The client arguments again on `peers add|forget`, without defaults of their own:
    argparse would otherwise overwrite `dsonode peers --data-dir X add ...`'s X with the
    subcommand's default (a subparser copies every attribute it sets onto the namespace)."""
    add_node_args(p, timeout=30.0, inherit=True)
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the summary as JSON"
    )


def register(subparsers: SubParsers) -> None:
    from dsonode.ops import trust_cli  # block/unblock/allow/disallow/forget/trust

    trust_cli.register(subparsers)
    p = subparsers.add_parser(
        "status",
        help="summary of the running node (peer id, items, consensus, peers, gossip)",
        description="Ask the running node for its state and print a summary.",
    )
    _add_client_args(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "peers",
        help="the running node's known peers (list, add, forget)",
        description="Without a subcommand: one row a peer the node knows of (its book of "
        "known peers, connected peers, peers it heard from or judged): in the book or not, "
        "connected or not, how it was learned (config, operator, dht, inbound, stored), when "
        "it was last connected, items accepted and rejected from it, its penalty and "
        "graylisting, and the reputation of its submissions.",
    )
    _add_client_args(p)
    p.set_defaults(func=cmd_peers)
    sub = p.add_subparsers(dest="peers_command", metavar="{add,forget}")
    a = sub.add_parser(
        "add",
        help="remember a peer and dial it when the node wants peers",
        description="Add a peer to the running node's book (source operator, kept in its "
        "store): /ip4/<ip>/tcp/<port>/p2p/<peer id> (or /ip6/...). Loopback only unless the "
        "node runs with net.allow_non_loopback. It is dialled while the node has fewer than "
        "net.low_water peers.",
    )
    a.add_argument("multiaddr", help="/ip4/<ip>/tcp/<port>/p2p/<peer id>")
    _add_sub_client_args(a)
    a.set_defaults(func=cmd_peers_add)
    f = sub.add_parser(
        "forget",
        help="drop a peer from the node's book",
        description="Remove a peer from the running node's book of known peers (and its "
        "store): it is no longer dialled from the book. An open connection stays until "
        "either side closes it; the peer may still dial this node, and a Kademlia lookup may "
        "find it again; a --peer given at start comes back at the next start.",
    )
    f.add_argument("peer_id", help="base58 peer id (12D3KooW...)")
    _add_sub_client_args(f)
    f.set_defaults(func=cmd_peers_forget)


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
        "trust": _trust_summary(stats),
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


def _trust_summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The trust part of `dsonode status`: mode, list sizes, tombstones, what was refused."""
    trust = stats.get("trust") or {}
    net = stats.get("network")
    counters = (net.get("counters") if isinstance(net, Mapping) else None) or {}
    return {
        "mode": trust.get("mode"),
        "allowed": _int(trust.get("allowed")),
        "blocked": _int(trust.get("blocked")),
        "tombstones": _int(trust.get("tombstones")),
        "blocked_dropped": _int(counters.get("blocked_dropped")),
        "admission_refused": {
            k: _int(counters.get(k))
            for k in ("stamp_missing", "stamp_too_cheap", "over_quota_rate", "over_quota_bytes")
        },
        "search_withheld": _int(counters.get("search_withheld")),
    }


def peer_rows(stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What `dsonode peers` shows: one row a peer the node knows of (in its book of known
    peers, connected, heard from, or judged by consensus), sorted connected first, then by
    peer id, the node itself last."""
    net = stats.get("network")
    if not isinstance(net, Mapping):
        return []
    own = net.get("peer_id")
    trust = stats.get("trust") or {}
    blocked = set(trust.get("blocked_peer_ids") or [])
    allowed = set(trust.get("allowed_peer_ids") or [])
    connected = set(net.get("connected") or [])
    graylisted = set((net.get("pipeline") or {}).get("graylisted") or [])
    traffic = net.get("peers") or {}
    book: dict[str, Mapping[str, Any]] = {}
    for rec in net.get("known_peers") or []:  # the persisted book (dsonode.net.connmgr)
        if isinstance(rec, Mapping) and isinstance(rec.get("peer_id"), str):
            book[rec["peer_id"]] = rec
    reputation: dict[str, Mapping[str, Any]] = {}
    for author, rec in (net.get("reputation") or {}).items():
        if isinstance(rec, Mapping):
            reputation[str(rec.get("peer_id") or author)] = rec
    rows = []
    for pid in sorted(connected | set(traffic) | set(reputation) | set(book)):
        t = traffic.get(pid) or {}
        rep = reputation.get(pid)
        known = book.get(pid)
        rejected = t.get("rejected") or {}
        seen = _int(known.get("last_seen_ms")) if known is not None else 0
        rows.append(
            {
                "peer_id": pid,
                "self": pid == own,
                "known": known is not None,
                "connected": pid in connected,
                "source": str(known.get("source")) if known is not None else None,
                "last_seen_ms": seen or None,
                "addrs": [str(a) for a in known.get("addrs") or []] if known is not None else [],
                "accepted": _int(t.get("accepted")),
                "rejected": _sum(rejected),
                "rejected_by_reason": {str(k): _int(v) for k, v in rejected.items()}
                if isinstance(rejected, Mapping)
                else {},
                "penalty": float(t.get("penalty") or 0.0),
                "graylisted": bool(t.get("graylisted")) or pid in graylisted,
                # the operator's lists (dsonode block / allow)
                "trust": "blocked" if pid in blocked else "allowed" if pid in allowed else None,
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


def format_ago(ms: int | None, now_ms: int) -> str:
    """How long ago an epoch-milliseconds time was ("-" for never)."""
    if not ms:
        return "-"
    return "now" if now_ms - ms < 1000 else f"{format_duration((now_ms - ms) / 1000)} ago"


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
    tr = s["trust"]
    t.add_row(
        "trust",
        f"mode {tr['mode']}; {tr['allowed']} allowed, {tr['blocked']} blocked authors; "
        f"{tr['tombstones']} forgotten; {tr['blocked_dropped']} items of blocked authors "
        f"refused, {tr['search_withheld']} unvouched search candidates withheld",
    )
    refused = ", ".join(f"{k} {v}" for k, v in tr["admission_refused"].items())
    t.add_row("admission", f"refused: {refused}")
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

    now_ms = int(time.time() * 1000)
    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    names = ("peer id", "known", "connected", "source", "last seen", "accepted", "rejected")
    for name in (*names, "penalty", "graylisted", "trust"):
        t.add_column(name, no_wrap=True, justify="left" if name == "peer id" else "right")
    t.add_column("reputation (score, ok/rejected)", no_wrap=True, justify="right")
    for r in rows:
        rep = r["reputation"]
        t.add_row(
            r["peer_id"] + (" (self)" if r["self"] else ""),
            "-" if r["self"] else "yes" if r["known"] else "no",
            "-" if r["self"] else "yes" if r["connected"] else "no",
            r["source"] or "-",
            format_ago(r["last_seen_ms"], now_ms),
            str(r["accepted"]),
            str(r["rejected"]),
            f"{r['penalty']:.1f}",
            "YES" if r["graylisted"] else "no",
            r["trust"] or "-",
            "-" if rep is None else f"{rep['score']:.3f}, {rep['accepted']}/{rep['rejected']}",
        )
    _print_table(t)
    return 0


def _peer_command(args: argparse.Namespace, method: str, value: str) -> dict[str, Any] | None:
    """Call `add_peer`/`forget_peer`; None after telling the user why not (exit code 1)."""
    from dsonode.api.client import ClientError
    from dsonode.api.jsonrpc import RpcError

    try:
        with node_client(args) as client:
            result: dict[str, Any] = getattr(client, method)(value)
            return result
    except (ClientError, RpcError) as exc:
        message = exc.message if isinstance(exc, RpcError) else str(exc)
        print(f"dsonode: {message}", file=sys.stderr)
        return None


def cmd_peers_add(args: argparse.Namespace) -> int:
    result = _peer_command(args, "add_peer", args.multiaddr)
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        addrs = ", ".join(result.get("addrs") or [])
        print(f"added {result.get('peer_id')} ({addrs}); dialled when the node wants peers")
    return 0


def cmd_peers_forget(args: argparse.Namespace) -> int:
    result = _peer_command(args, "forget_peer", args.peer_id)
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif not result.get("forgotten"):
        print(f"{args.peer_id} was not in the node's book of known peers")
    else:
        still = " (still connected: it may keep the connection or dial again)"
        print(f"forgot {args.peer_id}" + (still if result.get("connected") else ""))
    return 0
