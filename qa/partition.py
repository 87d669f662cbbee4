"""Partition and heal a real 5-process testnet; measure how long it takes to converge.

    result = run_partition(Path("/tmp/p"), hold_s=15)
    result.converged, result.converge_s       # every node: same experiences, same consensus

The scenario (one call, every wait bounded, every process and relay stopped at the end):

1. five `dsonode run` processes (`dsonode.testnet.Testnet`, full mesh) whose every dial goes
   through a loopback `LinkRelay` (one per directed link, `TestnetPlan.with_relays`); one
   experience is added at node 1 and confirmed everywhere (the relays carry the traffic);
2. **cut**: the links between side A = nodes 1-2 and side B = nodes 3-5 are cut (live
   connections reset, new ones refused); we wait until every node's connected-peers list
   (`stats.network.connected`) holds exactly its own side;
3. **publish on both sides** (`add_experience` over each node's socket, spread over the
   side's nodes) and hold the partition for `hold_s`: every second every node's connected
   list is checked for a peer of the other side, and every node process's TCP connections
   (psutil) for one to another node's real listen port (a route around the relays). Each
   side must receive its own experiences and none of the other side's;
4. **heal**; from that instant, every 0.5 s each node's LMDB store is read (read-only, beside
   the running writer): converged = all five hold the same experience ids (all of them) and,
   for each, a consensus with the same code bytes, confirmed, with the same submission count
   (every node's submission). `converge_s` = heal -> first poll that sees it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsonode.core.errors import DsoError
from qa.relay import RelaySet

SIDE_A = (0, 1)
SIDE_B = (2, 3, 4)
N_NODES = 5
POLL_S = 0.5


def lesson(k: int, side: str) -> tuple[str, str]:
    """A distinct, realistic experience text (domain, text) for publish number k."""
    topics = [
        ("code", "pin a parser's behaviour with golden-file tests before refactoring it"),
        ("ops", "put a timeout on every network call and retry with jittered backoff"),
        ("math", "strengthen the induction hypothesis when the inductive step stalls"),
        ("code", "close file handles in a finally block or a context manager"),
        ("ops", "alert on the rate of errors, not on single failures"),
        ("math", "check the base case before proving the inductive step"),
        ("code", "reproduce a flaky test in a loop with a fixed seed before fixing it"),
        ("ops", "roll out configuration changes to one host before the fleet"),
    ]
    domain, text = topics[k % len(topics)]
    return domain, f"Lesson {k} from side {side} of the partition: {text}."


@dataclass
class NodeView:
    """What one node's store holds: experience ids and consensus per experience."""

    experiences: frozenset[str]
    consensus: dict[str, tuple[bool, int, str]]  # id -> (confirmed, count, sha256 of code)


@dataclass
class PartitionResult:
    nodes: int = N_NODES
    side_a: tuple[int, ...] = SIDE_A
    side_b: tuple[int, ...] = SIDE_B
    hold_s: float = 0.0
    published: dict[str, list[str]] = field(default_factory=dict)  # before / a / b -> ids
    split_s: float | None = None  # cut -> every connected list shows only its own side
    cross_peers_seen: list[str] = field(default_factory=list)  # connected lists, while cut
    direct_connections_seen: list[str] = field(default_factory=list)  # psutil, whole run
    direct_check: str = "psutil"
    leaked_across: list[str] = field(default_factory=list)  # an item crossed while cut
    side_delivery: dict[str, bool] = field(default_factory=dict)
    converged: bool = False
    converge_s: float | None = None
    polls: int = 0
    last_views: list[dict[str, Any]] = field(default_factory=list)
    relays: dict[str, Any] = field(default_factory=dict)
    sync: list[dict[str, Any]] = field(default_factory=list)
    connected_after: list[int] = field(default_factory=list)
    remeshed_s: float | None = None  # heal -> every node connected to all 4 others again
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # every node, after stop
    pids: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def isolated(self) -> bool:
        """The cut held: no cross-side peer, no direct connection, no item crossed."""
        return not (self.cross_peers_seen or self.direct_connections_seen or self.leaked_across)

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "sides": [[i + 1 for i in self.side_a], [i + 1 for i in self.side_b]],
            "hold_s": self.hold_s,
            "published": {k: len(v) for k, v in self.published.items()},
            "split_s": self.split_s,
            "isolated": self.isolated,
            "cross_peers_seen": self.cross_peers_seen[:10],
            "direct_connections_seen": self.direct_connections_seen[:10],
            "direct_check": self.direct_check,
            "leaked_across": self.leaked_across[:10],
            "side_delivery": self.side_delivery,
            "converged": self.converged,
            "converge_s": self.converge_s,
            "polls": self.polls,
            "relays": self.relays,
            "sync": self.sync,
            "connected_after": self.connected_after,
            "remeshed_s": self.remeshed_s,
            "exit_codes": self.exit_codes,
            "elapsed_s": self.elapsed_s,
        }


def read_view(data_dir: Path, space: bytes) -> NodeView:
    """One node's experiences and consensus records, from its LMDB store opened read-only."""
    import hashlib

    from dsonode.store import Store

    with Store(data_dir / "store", readonly=True) as store:
        ids = frozenset(r.id.hex() for r in store.iter_experiences_by_time())
        cons = {
            c.experience_id.hex(): (
                bool(c.confirmed),
                int(c.count),
                hashlib.sha256(c.code).hexdigest(),
            )
            for c in store.iter_consensus(space)
        }
    return NodeView(ids, cons)


def converged(views: list[NodeView], expected: set[str], submitters: int) -> bool:
    """Same ids (all expected), same consensus everywhere, each confirmed by every submitter."""
    first = views[0]
    if not expected <= first.experiences:
        return False
    for v in views:
        if v.experiences != first.experiences or v.consensus != first.consensus:
            return False
    return all(
        (c := first.consensus.get(exp_id)) is not None and c[0] and c[1] == submitters
        for exp_id in first.experiences
    )


def direct_connections(net: Any) -> list[str]:
    """Node-to-node TCP connections that bypass the relays: a node process connected to
    another node's real listen (ip, port). Empty when every link goes through a relay."""
    import psutil

    listens = {(n.listen.split("/")[2], int(n.listen.split("/")[4])): n.name for n in net.nodes}
    found = []
    for node in net.nodes:
        if not node.running():
            continue
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(node.proc.pid).net_connections(kind="tcp"):
                if c.raddr and (c.raddr.ip, c.raddr.port) in listens:
                    target = listens[(c.raddr.ip, c.raddr.port)]
                    if target != node.name:
                        found.append(f"{node.name}->{target} ({c.status})")
    return found


def run_partition(
    root: Path,
    *,
    hold_s: float = 15.0,
    per_side: int = 3,
    converge_timeout_s: float = 90.0,
    start_timeout_s: float = 240.0,
    log: Callable[[str], None] | None = None,
) -> PartitionResult:
    """The whole scenario (module docstring); raises TestnetError if a setup wait runs out."""
    from dsonode.testnet import Testnet, free_ports, plan_testnet
    from dsonode.testnet.plan import host_ip

    if not 0 <= hold_s <= 600 or not 1 <= per_side <= 50 or not 1 <= converge_timeout_s <= 900:
        raise DsoError("partition: need hold_s 0..600, per_side 1..50, converge_timeout_s 1..900")
    say = log or (lambda _m: None)
    t_start = time.monotonic()
    result = PartitionResult(hold_s=hold_s)
    ports = free_ports([host_ip(i) for i in range(N_NODES)])
    plan = plan_testnet(N_NODES, ports=ports, full_mesh=True)  # every link through a relay
    pairs = [(n.index, j) for n in plan.nodes for j in n.dials]
    relays = RelaySet.for_nodes([(n.ip, n.port) for n in plan.nodes], pairs, avoid_ports=ports)
    with relays:
        plan = plan.with_relays(relays.addresses())
        with Testnet(plan, root, start_timeout=start_timeout_s, mesh_timeout=120, log=say) as net:
            result.pids = [n.proc.pid for n in net.nodes if n.proc is not None]
            _scenario(net, relays, result, hold_s, per_side, converge_timeout_s, say)
            result.exit_codes = net.stop()
    result.relays = relays.stats()
    result.elapsed_s = round(time.monotonic() - t_start, 1)
    return result


def _connected(net: Any, i: int) -> set[str]:
    return set(net.stats(i, timeout=10.0)["network"].get("connected", []))


def _scenario(net, relays, result, hold_s, per_side, converge_timeout_s, say) -> None:
    names = {n.peer_id: n.name for n in net.nodes}
    side_of = {i: "a" for i in SIDE_A} | {i: "b" for i in SIDE_B}
    space = bytes.fromhex(net.stats(0)["space_id"])

    def check_direct() -> None:
        try:
            result.direct_connections_seen += direct_connections(net)
        except ImportError:
            result.direct_check = "skipped: psutil not installed"

    # 1. one experience before the cut, confirmed everywhere (through the relays)
    domain, text = lesson(0, "none (before the cut)")
    result.published["before"] = net.seed([{"domain": domain, "text": text}], node=0)
    net.wait_confirmed(result.published["before"], timeout=90)
    check_direct()
    say("baseline experience confirmed at every node")

    # 2. cut, and wait until every node sees only its own side
    t_cut = time.monotonic()
    reset = relays.cut(SIDE_A, SIDE_B)
    say(f"cut: {reset} relayed connections reset")
    own = {
        i: {net.nodes[j].peer_id for j in range(N_NODES) if side_of[j] == side_of[i] and j != i}
        for i in range(N_NODES)
    }
    deadline = t_cut + 30.0
    while time.monotonic() < deadline:
        with contextlib.suppress(DsoError, OSError, KeyError):
            if all(_connected(net, i) == own[i] for i in range(N_NODES)):
                result.split_s = round(time.monotonic() - t_cut, 2)
                break
        time.sleep(POLL_S)
    if result.split_s is None:
        net.fail_waiting("the split (connected lists per side)", net.nodes)
    say(f"split seen after {result.split_s} s")

    # 3. publish on both sides, spread over each side's nodes; hold, watching for leaks
    published = {"a": [], "b": []}
    for k in range(per_side):
        for side, group in (("a", SIDE_A), ("b", SIDE_B)):
            node = group[k % len(group)]
            domain, text = lesson(1 + 2 * k + (side == "b"), side.upper())
            published[side] += net.seed([{"domain": domain, "text": text}], node=node)
    result.published["a"], result.published["b"] = published["a"], published["b"]
    hold_until = t_cut + max(hold_s, result.split_s + 1.0)
    while True:
        for i in range(N_NODES):
            with contextlib.suppress(DsoError, OSError):
                for peer in _connected(net, i) - own[i]:
                    result.cross_peers_seen.append(
                        f"{net.nodes[i].name} saw {names.get(peer, peer)}"
                    )
        check_direct()
        if time.monotonic() >= hold_until:
            break
        time.sleep(1.0)
    # each side got its own items (gossip + sync inside the side), none of the other's
    for side, group in (("a", SIDE_A), ("b", SIDE_B)):
        mine, theirs = set(published[side]), set(published["b" if side == "a" else "a"])
        ok = True
        for i in group:
            held = read_view(net.nodes[i].data_dir, space).experiences
            ok &= mine <= held
            result.leaked_across += [f"{net.nodes[i].name} holds {x[:12]}" for x in theirs & held]
        result.side_delivery[side] = ok
    say(f"held {round(time.monotonic() - t_cut, 1)} s; delivery per side {result.side_delivery}")

    # 4. heal and poll the stores until they agree
    expected = set(result.published["before"]) | set(published["a"]) | set(published["b"])
    t_heal = time.monotonic()
    relays.heal(SIDE_A, SIDE_B)
    views: list[NodeView] = []
    while time.monotonic() - t_heal < converge_timeout_s:
        net.check_alive()
        result.polls += 1
        with contextlib.suppress(DsoError, OSError):
            views = [read_view(n.data_dir, space) for n in net.nodes]
            if converged(views, expected, N_NODES):
                result.converged = True
                result.converge_s = round(time.monotonic() - t_heal, 2)
                break
        time.sleep(POLL_S)
    say(f"converged={result.converged} after {result.converge_s} s ({result.polls} polls)")
    result.last_views = [
        {
            "node": n.name,
            "experiences": len(v.experiences),
            "missing": sorted(x[:12] for x in expected - v.experiences),
            "confirmed": sum(c[0] for c in v.consensus.values()),
            "counts": sorted(c[1] for c in v.consensus.values()),
        }
        for n, v in zip(net.nodes, views, strict=False)
    ]
    check_direct()
    # Convergence can come through a few healed links (gossip and sync relay the rest); the
    # full mesh returns as each dialer's backoff (capped at redial_max_s) runs out. Bounded.
    full_until = time.monotonic() + 30.0
    while True:
        counts = []
        for i in range(N_NODES):
            with contextlib.suppress(DsoError, OSError, KeyError):
                counts.append(len(_connected(net, i)))
        if counts == [N_NODES - 1] * N_NODES:
            result.remeshed_s = round(time.monotonic() - t_heal, 2)
            break
        if time.monotonic() >= full_until:
            break
        time.sleep(POLL_S)
    result.connected_after = counts
    for i in range(N_NODES):
        with contextlib.suppress(DsoError, OSError):
            st = net.stats(i, timeout=10.0)["network"]
            sync = st.get("sync", {})
            result.sync.append({k: sync.get(k) for k in ("runs", "ok", "failures", "items_stored")})
