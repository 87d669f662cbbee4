"""Discovery with real `dsonode run` processes (issue 13): joining from one bootstrap address,
the bootstrap's death, a restart from the persisted peer book, connection caps under a
flood of local TCP connections, `net.allow_peers`, and the operator's peer commands.

One bootstrap-only testnet (`plan_testnet`: every node is given node 1's address only) of
four nodes serves the tests of the main part, in file order: node 1 (the bootstrap) and
node 2 run with `--role light` (no encoder: cheap to start, they store and relay), nodes 3
and 4 are full nodes (they add experiences); `--committee all`, so every full node submits
for every experience. The allow-list test runs its own three light nodes. Every wait is
bounded; every process is stopped by the harness (checked at the end of each part).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest
from netutil import wait_until

from dsonode.api import RpcError
from dsonode.api import jsonrpc as j
from dsonode.cli import main
from dsonode.core.peerinfo import peer_id_from_public_key
from dsonode.testnet import Testnet, free_ports, plan_testnet
from dsonode.testnet.plan import NodePlan, TestnetPlan, host_ip

pytestmark = pytest.mark.slow

N = 4
BOOT, LIGHT, FULL3, FULL4 = range(N)
TEXTS = [
    "Before you refactor a parser, pin its behaviour with golden-file tests.",
    "When a proof by induction stalls, strengthen the hypothesis before adding cases.",
    "Rest the steak for five minutes after searing so the juices settle.",
    "Close file handles in a finally block or use a context manager.",
]
#: Seconds for an item to travel the testnet (gossip, else a sync round of 5 s).
ARRIVE_S = 90


def _node_args(node) -> list[str]:
    args = ["--committee", "all", "--sync-interval", "5"]
    return args + (["--role", "light"] if node.index in (BOOT, LIGHT) else [])


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    plan = plan_testnet(N, ports=free_ports([host_ip(i) for i in range(N)]))
    assert all(p.dials == ((0,) if p.index else ()) for p in plan.nodes)  # bootstrap only
    testnet = Testnet(
        plan,
        tmp_path_factory.mktemp("disc"),
        start_timeout=240,
        mesh_timeout=120,
        node_args=_node_args,
    )
    with testnet:  # started, healthy, every node at min(low_water, N-1) = 3 peers
        yield testnet
    assert all(not n.running() for n in testnet.nodes)  # the harness stopped every process


def _connected(net: Testnet, i: int) -> set[str]:
    return set(net.stats(i, timeout=20)["network"]["connected"])


def _wait_received(net: Testnet, exp_id: str, nodes: list[int], what: str) -> None:
    def everywhere() -> bool:
        for i in nodes:
            with net.client(i, timeout=20) as c:
                c.get(exp_id)  # NotFound (retried) until it arrived
        return True

    wait_until(what, everywhere, ARRIVE_S, [net.nodes[i] for i in nodes])


def _add(net: Testnet, i: int, text: str) -> str:
    with net.client(i, timeout=120) as c:
        return c.add_experience(text, "coding")["id"]


# ---- joining from one address -----------------------------------------------------------------


def test_join_from_the_bootstrap_alone(net):
    ids = {n.peer_id for n in net.nodes}
    for i, node in enumerate(net.nodes):
        cmd = net.command(i)
        given = [cmd[k + 1] for k, a in enumerate(cmd) if a == "--peer"]
        assert given == (
            [] if i == BOOT else [f"{net.nodes[BOOT].listen}/p2p/{net.nodes[0].peer_id}"]
        )
        # discovery connected every node to all three others (started with one address)
        assert _connected(net, i) == ids - {node.peer_id}, node.name
    # the bootstrap was dialled by all three: inbound, one connection from each address
    conns = net.stats(BOOT)["network"]["connections"]
    assert conns["inbound"] == N - 1
    assert conns["inbound_by_ip"] == {host_ip(i): 1 for i in range(1, N)}

    # node 4 and node 2 were both given only the bootstrap: their direct link was discovered,
    # and node 4's book learns node 2 from libp2p's peerstore (a tick after the connection)
    def book4() -> dict[str, dict] | None:
        st = net.stats(FULL4)["network"]
        book = {p["peer_id"]: p for p in st["known_peers"]}
        return book if len(book) == N - 1 else None

    book = wait_until("node 4's book of the three others", book4, 15, net.nodes)
    assert book[net.nodes[LIGHT].peer_id]["source"] in ("dht", "inbound")
    assert book[net.nodes[LIGHT].peer_id]["addrs"] == [net.nodes[LIGHT].listen]
    assert book[net.nodes[BOOT].peer_id]["source"] == "config"
    assert net.stats(FULL4)["network"]["discovery"]["dht"] is True

    exp_id = _add(net, FULL4, TEXTS[0])
    _wait_received(net, exp_id, [BOOT, LIGHT, FULL3], "node 4's experience at every node")

    def both_submitted() -> bool:  # --committee all: both full nodes submit, seen at node 2
        with net.client(LIGHT) as c:
            return c.get(exp_id)["submissions"] >= 2

    wait_until("both full nodes' submissions at node 2", both_submitted, ARRIVE_S, net.nodes)


# ---- the operator's peer commands on a live node -----------------------------------------------


def test_add_and_forget_peer_on_a_live_node(net, capsys):
    node2, node3 = net.nodes[LIGHT], net.nodes[FULL3]
    sock = ["--socket", str(node2.socket_path)]

    def book() -> dict[str, dict]:
        return {p["peer_id"]: p for p in net.stats(LIGHT)["network"]["known_peers"]}

    assert node3.peer_id in book()
    assert main(["peers", "forget", node3.peer_id, "--json", *sock]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"peer_id": node3.peer_id, "forgotten": True, "connected": True}
    # not learned back from libp2p's peerstore (which still knows its address) while the
    # connection it had stays: 3 s = 3 ticks of the connection manager
    time.sleep(3)
    assert node3.peer_id not in book() and node3.peer_id in _connected(net, LIGHT)
    with net.client(LIGHT) as c:
        assert c.forget_peer(node3.peer_id)["forgotten"] is False  # already gone

    assert main(["peers", "add", f"{node3.listen}/p2p/{node3.peer_id}", *sock]) == 0
    assert "added " + node3.peer_id in capsys.readouterr().out
    rec = book()[node3.peer_id]
    assert rec["source"] == "operator" and rec["addrs"] == [node3.listen]

    # a peer that does not run: remembered, dialled only while below low water (8 > 3 here),
    # and its failed dials lower its score
    ghost = peer_id_from_public_key(bytes(range(32)))
    with net.client(LIGHT) as c:
        added = c.add_peer(f"/ip4/127.0.0.99/tcp/9/p2p/{ghost}")
    assert added == {"peer_id": ghost, "addrs": ["/ip4/127.0.0.99/tcp/9"], "source": "operator"}
    wait_until("a failed dial to the ghost", lambda: book()[ghost]["score"] < 0, 30, net.nodes)

    # refused by the node's policy or malformed: -32602 naming the param
    with net.client(LIGHT) as c:
        for addr, why in (
            (f"/ip4/10.1.2.3/tcp/4001/p2p/{ghost}", "not a loopback address"),
            (f"{node3.listen}/p2p/{node2.peer_id}", "own peer id"),
            (f"{node2.listen}/p2p/{ghost}", "own listen address"),
            (node3.listen, "/p2p/"),
        ):
            with pytest.raises(RpcError) as err:
                c.add_peer(addr)
            assert err.value.code == j.INVALID_PARAMS and why in err.value.message, addr
            assert err.value.data == {"param": "multiaddr"}
        c.forget_peer(ghost)
    assert ghost not in book()

    # `dsonode peers` shows the book's columns
    assert main(["peers", "--json", *sock]) == 0
    rows = {r["peer_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[node3.peer_id]["known"] and rows[node3.peer_id]["source"] == "operator"
    assert rows[node3.peer_id]["connected"] and rows[node3.peer_id]["last_seen_ms"] is not None
    assert main(["peers", *sock]) == 0
    table = capsys.readouterr().out
    assert "source" in table and "last seen" in table and "operator" in table


# ---- connection caps under a flood of local connections ----------------------------------------


def test_connection_caps_hold_under_a_flood(net):
    """10 plain TCP connections to node 3 from one loopback address, then 100 from 25 others
    (4 each): none completes a handshake, so each holds a slot of the pre-handshake caps
    (net.max_inbound 32, net.max_inbound_per_ip 4, the defaults) until we close it; the
    surplus is refused and counted, the legitimate peers keep their connections, and node 3
    still answers a search and gets gossip."""
    target = net.nodes[FULL3]
    host, port = target.listen.split("/")[2], int(target.listen.split("/")[4])
    socks: list[socket.socket] = []
    try:
        sources = ["127.0.0.200"] * 10 + [f"127.0.0.{100 + k}" for k in range(25) for _ in range(4)]
        for src in sources:
            s = socket.socket()
            s.settimeout(5)
            s.bind((src, 0))
            with contextlib.suppress(OSError):  # a refused one may be reset at once
                s.connect((host, port))
            socks.append(s)
        time.sleep(2)  # the node accepts, checks the caps, closes the refused ones
        net_stats = net.stats(FULL3)["network"]
        conns, disc = net_stats["connections"], net_stats["discovery"]
        # 6 of the first 10 over the per-IP cap; of the 100, at most 32 - 4 find a slot
        assert disc.get("inbound_refused_per_ip", 0) >= 6, disc
        assert disc.get("inbound_refused_total", 0) >= 100 - 28, disc
        assert conns["inbound"] <= 32
        assert all(n <= 4 for n in conns["inbound_by_ip"].values()), conns
        assert conns["peers"] == N - 1  # the legitimate peers kept their connections
        # it still answers a search ...
        with target.client(timeout=60) as c:
            hits = c.search(TEXTS[0], k=1)
        assert hits and hits[0]["text"] == TEXTS[0]
        # ... and gossips: node 4's new experience reaches it while the flood holds
        exp_id = _add(net, FULL4, TEXTS[1])
        _wait_received(net, exp_id, [FULL3], "gossip at node 3 during the flood")
    finally:
        for s in socks:
            s.close()


def test_noise_handshakes_count_against_the_per_ip_cap(net):
    """8 real libp2p hosts (Noise, yamux) on one loopback address dial node 3 at once: at
    most net.max_inbound_per_ip (4) are let in, node 3 lists them among its inbound
    connections from that address, and it refuses the others (counted)."""
    import multiaddr
    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from dsonode.net.host import HostConfig, build_host

    target = net.nodes[FULL3]
    source = "127.0.0.201"
    info = info_from_p2p_addr(multiaddr.Multiaddr(f"{target.listen}/p2p/{target.peer_id}"))
    before = net.stats(FULL3)["network"]["discovery"].get("inbound_refused_per_ip", 0)
    seen: dict = {}

    async def one(host, ok: list[bool], done: trio.Event) -> None:
        async with host.run([multiaddr.Multiaddr(f"/ip4/{source}/tcp/0")]):
            with trio.move_on_after(15):
                with contextlib.suppress(Exception):  # refused: the node closed it
                    await host.connect(info)
            ok.append(bool(host.get_network().get_connections(info.peer_id)))
            await done.wait()  # hold the connection until node 3 was asked

    async def main() -> None:
        hosts = [
            build_host(Ed25519PrivateKey.generate(), HostConfig(listen=f"/ip4/{source}/tcp/0"))
            for _ in range(8)
        ]
        ok: list[bool] = []
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for host in hosts:
                nursery.start_soon(one, host, ok, done)
            with trio.fail_after(60):
                while len(ok) < len(hosts):
                    await trio.sleep(0.2)
            seen["ok"] = sum(ok)
            seen["net"] = await trio.to_thread.run_sync(net.stats, FULL3)
            done.set()

    trio.run(main)
    conns = seen["net"]["network"]["connections"]
    refused = seen["net"]["network"]["discovery"].get("inbound_refused_per_ip", 0) - before
    assert 1 <= seen["ok"] <= 4, seen["ok"]
    assert conns["inbound_by_ip"].get(source) == seen["ok"], conns
    assert refused >= 8 - 4, refused
    assert all(n <= 4 for n in conns["inbound_by_ip"].values())


# ---- the bootstrap dies; a restart without it ----------------------------------------------------


def test_bootstrap_death_does_not_split_the_network(net):
    net.kill_node(BOOT)  # SIGKILL: no goodbye
    exp_id = _add(net, FULL3, TEXTS[2])
    _wait_received(net, exp_id, [LIGHT, FULL4], "node 3's experience after the bootstrap died")


def test_restart_without_the_bootstrap_uses_the_persisted_book(net):
    net.stop_node(FULL4)
    from dsonode.store import Store

    with Store(net.nodes[FULL4].data_dir / "store", readonly=True) as store:
        saved = {p.peer_id for p in store.load_known_peers(100)}
    assert {net.nodes[i].peer_id for i in (BOOT, LIGHT, FULL3)} <= saved
    net.start_node(FULL4)
    net.wait_healthy(240, [FULL4])
    alive = {net.nodes[LIGHT].peer_id, net.nodes[FULL3].peer_id}
    wait_until(
        "node 4 back with a live peer",
        lambda: _connected(net, FULL4) & alive,
        60,
        [net.nodes[FULL4]],
    )
    # the bootstrap's --peer is still on node 4's command line, and dead
    assert net.nodes[BOOT].peer_id not in _connected(net, FULL4)
    exp_id = _add(net, FULL3, TEXTS[3])
    _wait_received(net, exp_id, [FULL4], "an experience added after node 4's restart")


# ---- net.allow_peers ----------------------------------------------------------------------------


def test_allow_peers_refuses_a_stranger(tmp_path):
    """Node A allows only B in: B and C both dial A; C's connection is refused after the
    handshake (the peer id is known only then): A counts the refusals, never lists C among
    its connections, and never learns C into its book."""
    ips = [host_ip(i) for i in (10, 11, 12)]
    ports = free_ports(ips)
    plan = TestnetPlan(
        tuple(
            NodePlan(index=i, name=name, ip=ip, port=port, dials=(() if i == 0 else (0,)))
            for i, (name, ip, port) in enumerate(zip("ABC", ips, ports, strict=True))
        )
    )
    testnet = Testnet(plan, tmp_path, start_timeout=120, node_args=lambda n: config_args(n))
    nodes = testnet.prepare()
    _a, b, c = nodes

    def config_args(node) -> list[str]:
        args = ["--role", "light"]
        if node.index == 0:
            cfg = tmp_path / "a.toml"
            cfg.write_text(f'[net]\nallow_peers = ["{b.peer_id}"]\n')
            args += ["--config", str(cfg)]
        return args

    try:
        for i in range(3):
            testnet.start_node(i)
        testnet.wait_healthy(120)
        wait_until("B connected to A", lambda: b.peer_id in _connected(testnet, 0), 60, nodes)

        def refused() -> dict | None:
            disc = testnet.stats(0)["network"]["discovery"]
            return disc if disc.get("inbound_refused_not_allowed", 0) >= 2 else None

        wait_until("A refusing C (twice: C redials)", refused, 60, nodes)
        # A never lists C among its connections (sampled while C keeps redialling); C may
        # see its side for a moment: A closes the connection only after the handshake
        for _ in range(10):
            assert _connected(testnet, 0) == {b.peer_id}
            time.sleep(0.5)
        assert c.peer_id not in {p["peer_id"] for p in testnet.stats(0)["network"]["known_peers"]}
    finally:
        testnet.stop()
    assert all(not n.running() for n in nodes)
