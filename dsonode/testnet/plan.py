"""The topology of a local testnet, planned without touching anything (pure: no I/O).

A plan says, for every node: its name, its own loopback address (127.0.0.2, 127.0.0.3, ...),
its TCP port, which other nodes it dials, whether it is Byzantine (and with which attack), and
optionally the public seed of its testnet key. `dsonode.testnet.supervisor` turns a plan into
running `dsonode run` processes; `dsonode.testnet.compose` builds a plan from
docker-compose.yml + configs/ (same topology, addresses rewritten to loopback).

Two kinds of plans:

* `plan_testnet(n, ...)`: n nodes that are given only node 1's address (the bootstrap; they
  find each other by discovery, dsonode/net/README.md "Discovery"), or with `full_mesh=True`
  every node dials every other one (small tests); the K Byzantine nodes sit just before the last node, so
  node 1 (where the testnet seeds) and node n (where it queries) are always honest;
* `plan_from_services(...)`: any topology given as named services with peer lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dsonode.core.attacks import ATTACKS as _NODE_ATTACKS
from dsonode.core.errors import DsoError

#: Mirrors `dsonode run --byzantine-attack` (dsonode.core.attacks).
ATTACKS = _NODE_ATTACKS
#: 127.0.0.2 .. 127.0.0.65: one address per node, never 127.0.0.1 (other services live there).
FIRST_HOST = 2
MAX_NODES = 64


class PlanError(DsoError, ValueError):
    """The requested testnet cannot be planned (the message names the option)."""


@dataclass(frozen=True)
class NodePlan:
    index: int  # 0-based; humans see index + 1
    name: str
    ip: str
    port: int
    attack: str | None = None  # None: honest
    dials: tuple[int, ...] = ()  # indices of the nodes this one dials
    key_seed: str | None = None  # public testnet key seed (compose); None: a fresh random key

    @property
    def listen(self) -> str:
        return f"/ip4/{self.ip}/tcp/{self.port}"

    @property
    def byzantine(self) -> bool:
        return self.attack is not None


@dataclass(frozen=True)
class TestnetPlan:
    nodes: tuple[NodePlan, ...]
    #: Optional relays (partition tests): (i, j, "/ip4/127.x/tcp/P") makes node i dial node j
    #: at that loopback address instead of j's listen address (same /p2p/ id: Noise still
    #: authenticates j). See `with_relays` and qa.relay.
    relays: tuple[tuple[int, int, str], ...] = ()
    #: True: nodes are expected to find each other beyond their dial lists (discovery), so a
    #: node counts as joined with min(net.low_water, n - 1) peers, not its planned neighbours.
    discovered: bool = False

    __test__ = False  # not a pytest test class despite its name

    def with_relays(self, links: Mapping[tuple[int, int], str]) -> TestnetPlan:
        """This plan with node i dialling node j through `links[(i, j)]` (loopback only)."""
        from dsonode.core.peerinfo import PeerAddrError, parse_multiaddr

        out = []
        for (i, j), addr in sorted(links.items()):
            if not (0 <= i < len(self.nodes) and 0 <= j < len(self.nodes)) or i == j:
                raise PlanError(f"relay link ({i}, {j}) does not join two nodes of the plan")
            if j not in self.nodes[i].dials:
                raise PlanError(f"relay link ({i}, {j}): node {i + 1} does not dial node {j + 1}")
            if "/p2p/" in addr:
                raise PlanError(f"relay link ({i}, {j}): give the address without /p2p/")
            try:
                parse_multiaddr(addr)  # loopback only (no allow_non_loopback)
            except PeerAddrError as exc:
                raise PlanError(f"relay link ({i}, {j}): {exc}") from None
            out.append((i, j, addr))
        return dataclasses.replace(self, relays=tuple(out))

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def byzantine(self) -> list[int]:
        return [n.index for n in self.nodes if n.byzantine]

    @property
    def honest(self) -> list[int]:
        return [n.index for n in self.nodes if not n.byzantine]

    @property
    def seed_node(self) -> int:
        """Where sample experiences are added: the first honest node."""
        return self.honest[0]

    @property
    def query_node(self) -> int:
        """Where the final query is asked: the last honest node."""
        return self.honest[-1]

    def wanted_peers(self, i: int, low_water: int) -> int:
        """Connected peers node i must have before the testnet counts as joined."""
        if self.discovered:
            return min(low_water, len(self.nodes) - 1)
        return len(self.neighbours(i))

    def neighbours(self, i: int) -> set[int]:
        """Nodes connected to node i once everything runs (dialled by it or dialling it)."""
        out = set(self.nodes[i].dials)
        out.update(n.index for n in self.nodes if i in n.dials)
        out.discard(i)
        return out

    def peer_multiaddrs(self, i: int, peer_ids: Sequence[str]) -> list[str]:
        """The `--peer` arguments of node i, given every node's peer id."""
        if len(peer_ids) != len(self.nodes):
            raise PlanError("need one peer id per node")
        via = {(a, b): addr for a, b, addr in self.relays}
        return [
            f"{via.get((i, j), self.nodes[j].listen)}/p2p/{peer_ids[j]}"
            for j in self.nodes[i].dials
        ]


def _check_ports(ports: Sequence[int], n: int) -> None:
    if len(ports) != n:
        raise PlanError(f"need {n} ports, got {len(ports)}")
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise PlanError(f"--base-port: port {p!r} is not in 1..65535")


def host_ip(index: int) -> str:
    """The loopback address of node `index` (0-based): 127.0.0.2 upwards."""
    if not 0 <= index < MAX_NODES:
        raise PlanError(f"node index {index} out of range 0..{MAX_NODES - 1}")
    return f"127.0.0.{FIRST_HOST + index}"


def plan_testnet(
    n: int,
    *,
    ports: Sequence[int],
    byzantine: int = 0,
    attack: str = "gaussian",
    full_mesh: bool = False,
) -> TestnetPlan:
    """n nodes on 127.0.0.2.., K of them Byzantine (just before the last); every node dials
    node 1 only, or every other node with `full_mesh`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NODES:
        raise PlanError(f"--nodes must be 1..{MAX_NODES}")
    if isinstance(byzantine, bool) or not isinstance(byzantine, int) or byzantine < 0:
        raise PlanError("--byzantine must be >= 0")
    if byzantine and byzantine > n - 2:
        raise PlanError(
            f"--byzantine {byzantine} with --nodes {n}: at most {max(n - 2, 0)} "
            "(the first and the last node stay honest: they seed and answer the query)"
        )
    if attack not in ATTACKS:
        raise PlanError(f"--attack must be one of {', '.join(ATTACKS)}")
    _check_ports(ports, n)
    liars = set(range(n - 1 - byzantine, n - 1)) if byzantine else set()
    nodes = tuple(
        NodePlan(
            index=i,
            name=f"node{i + 1}",
            ip=host_ip(i),
            port=ports[i],
            attack=attack if i in liars else None,
            dials=tuple(j for j in range(n) if j != i) if full_mesh else ((0,) if i else ()),
        )
        for i in range(n)
    )
    return TestnetPlan(nodes, discovered=not full_mesh)


@dataclass(frozen=True)
class ServiceSpec:
    """One service of a topology described elsewhere (e.g. docker-compose + its config)."""

    name: str
    dials: tuple[str, ...]  # names of the services it dials
    attack: str | None = None
    key_seed: str | None = None


def plan_from_services(services: Sequence[ServiceSpec], ports: Sequence[int]) -> TestnetPlan:
    """The same topology on loopback: service i runs on 127.0.0.(2+i) at ports[i]."""
    if not 1 <= len(services) <= MAX_NODES:
        raise PlanError(f"a testnet has 1..{MAX_NODES} services, got {len(services)}")
    _check_ports(ports, len(services))
    index: Mapping[str, int] = {s.name: i for i, s in enumerate(services)}
    if len(index) != len(services):
        raise PlanError("service names must be unique")
    nodes = []
    for i, s in enumerate(services):
        if s.attack is not None and s.attack not in ATTACKS:
            raise PlanError(f"{s.name}: attack {s.attack!r} is not one of {', '.join(ATTACKS)}")
        dials = []
        for target in s.dials:
            if target not in index:
                raise PlanError(f"{s.name}: dials {target!r}, which is no service")
            if target == s.name:
                raise PlanError(f"{s.name}: dials itself")
            dials.append(index[target])
        nodes.append(
            NodePlan(
                index=i,
                name=s.name,
                ip=host_ip(i),
                port=ports[i],
                attack=s.attack,
                dials=tuple(dials),
                key_seed=s.key_seed,
            )
        )
    plan = TestnetPlan(tuple(nodes))
    if not plan.honest:
        raise PlanError("every service is Byzantine: nothing honest to seed or query")
    return plan
