"""Partition and heal (issue 7): the loopback relay, the plan hook, and 5 real nodes split 2 + 3.

The slow test runs `qa.partition.run_partition`: five `dsonode run`
processes whose every dial goes through a `LinkRelay`; the links between nodes 1-2 and 3-5
are cut while both sides publish, then healed, and every node must end with the same
experiences and the same consensus (code bytes, confirmed, every node's submission).
Before the fixes in dsonode/net/host.py (auto-connector) and dialer.py (configured address
only) the sides reconnected straight to each other's listen ports within seconds of the cut.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from dsonode.testnet import PlanError, free_ports, plan_testnet
from dsonode.testnet.plan import host_ip
from qa.partition import NodeView, converged, run_partition
from qa.relay import LinkRelay, RelayError, RelaySet


class EchoServer:
    """A loopback TCP server that echoes every byte (bounded: daemon threads, short timeouts)."""

    def __init__(self, ip: str = "127.0.0.2") -> None:
        self.sock = socket.socket()
        self.sock.bind((ip, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def _roundtrip(addr, payload: bytes) -> bytes:
    with socket.create_connection(addr, timeout=5) as c:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def test_relay_forwards_bytes_both_ways(echo):
    relay = LinkRelay("127.0.0.2", *echo.addr)
    try:
        payload = os.urandom(300_000)  # several chunks each way
        assert _roundtrip(("127.0.0.2", relay.port), payload) == payload
        deadline = time.monotonic() + 5  # the pump counts a chunk just after sending it
        while relay.stats.bytes_forwarded < 2 * len(payload) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert relay.stats.accepted == 1 and relay.stats.bytes_forwarded == 2 * len(payload)
    finally:
        relay.close()


def test_cut_resets_live_connections_and_refuses_new_ones_until_heal(echo):
    relay = LinkRelay("127.0.0.2", *echo.addr)
    try:
        live = socket.create_connection(("127.0.0.2", relay.port), timeout=5)
        live.sendall(b"ping")
        assert live.recv(4) == b"ping"
        deadline = time.monotonic() + 5
        while relay.live() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert relay.cut() == 1 and relay.is_cut
        live.settimeout(5)
        try:
            ended = live.recv(4) == b""  # EOF
        except ConnectionError:
            ended = True
        live.close()
        assert ended
        # a new connection is accepted by the kernel, then reset at once: no echo comes back
        assert _roundtrip_or_reset(("127.0.0.2", relay.port), b"x") == b""
        assert relay.stats.refused >= 1
        relay.heal()
        assert _roundtrip(("127.0.0.2", relay.port), b"back") == b"back"
    finally:
        relay.close()


def _roundtrip_or_reset(addr, payload):
    try:
        return _roundtrip(addr, payload)
    except ConnectionError:  # reset or broken pipe: the relay refused it
        return b""


def test_relay_refuses_non_loopback_addresses():
    with pytest.raises(RelayError, match="loopback"):
        LinkRelay("0.0.0.0", "127.0.0.2", 4001)
    with pytest.raises(RelayError, match="loopback"):
        LinkRelay("127.0.0.2", "10.0.0.1", 4001)
    with pytest.raises(RelayError, match="not an IP"):
        LinkRelay("127.0.0.2", "localhost", 4001)
    with pytest.raises(RelayError, match="ports"):
        LinkRelay("127.0.0.2", "127.0.0.3", 0)


def test_relay_set_cuts_only_the_links_between_the_groups(echo):
    addrs = [echo.addr] * 3
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    with RelaySet.for_nodes(addrs, pairs, avoid_ports=[echo.addr[1]]) as relays:
        assert len(relays.between([0], [1, 2])) == 4
        relays.cut([0], [1, 2])
        assert {r.name for r in relays.links.values() if r.is_cut} == {
            "0->1",
            "0->2",
            "1->0",
            "2->0",
        }
        port = int(relays.addresses()[(1, 2)].rsplit("/", 1)[1])
        assert _roundtrip(("127.0.0.2", port), b"ok") == b"ok"  # 1 -> 2 is not cut
        relays.heal([0], [1, 2])
        assert not any(r.is_cut for r in relays.links.values())


def test_plan_with_relays_rewrites_only_the_relayed_dials():
    ports = free_ports([host_ip(i) for i in range(3)])
    plan = plan_testnet(3, ports=ports, full_mesh=True)
    ids = ["A", "B", "C"]
    relayed = plan.with_relays({(0, 1): "/ip4/127.0.0.3/tcp/50001"})
    assert relayed.peer_multiaddrs(0, ids) == [
        "/ip4/127.0.0.3/tcp/50001/p2p/B",
        f"/ip4/127.0.0.4/tcp/{ports[2]}/p2p/C",
    ]
    assert relayed.peer_multiaddrs(1, ids) == plan.peer_multiaddrs(1, ids)
    for bad, why in (
        ({(0, 0): "/ip4/127.0.0.2/tcp/1"}, "two nodes"),
        ({(0, 5): "/ip4/127.0.0.2/tcp/1"}, "two nodes"),
        ({(0, 1): "/ip4/10.0.0.1/tcp/1"}, "loopback"),
        ({(0, 1): "/ip4/127.0.0.3/tcp/1/p2p/B"}, "without /p2p/"),
    ):
        with pytest.raises(PlanError, match=why):
            plan.with_relays(bad)


def test_converged_needs_same_ids_same_consensus_and_every_submission():
    ok = NodeView(frozenset({"e1"}), {"e1": (True, 5, "h")})
    assert converged([ok, ok], {"e1"}, 5)
    assert not converged([ok, NodeView(frozenset({"e1"}), {"e1": (True, 5, "other")})], {"e1"}, 5)
    assert not converged([ok, NodeView(frozenset(), {})], {"e1"}, 5)
    assert not converged([ok, ok], {"e1", "e2"}, 5)  # an expected id is missing
    partial = NodeView(frozenset({"e1"}), {"e1": (True, 3, "h")})
    assert not converged([partial, partial], {"e1"}, 5)  # not every node's submission yet
    unconfirmed = NodeView(frozenset({"e1"}), {"e1": (False, 5, "h")})
    assert not converged([unconfirmed, unconfirmed], {"e1"}, 5)


@pytest.mark.slow
def test_five_nodes_split_two_three_converge_after_heal(tmp_path):
    result = run_partition(tmp_path, hold_s=10.0, per_side=2, converge_timeout_s=90.0)
    summary = result.summary()
    # every process is stopped
    assert set(result.exit_codes) == {f"node{i}" for i in range(1, 6)}
    assert all(code is not None for code in result.exit_codes.values())
    for pid in result.pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
    # the cut held: connected lists showed only the own side, no process connected to
    # another node's listen port directly, no item crossed, each side got its own items
    assert result.split_s is not None
    assert result.direct_check == "psutil"
    assert result.isolated, summary
    assert result.side_delivery == {"a": True, "b": True}, summary
    assert summary["published"] == {"before": 1, "a": 2, "b": 2}
    # every node-to-node connection went through a relay: each cross pair had one cut
    for a in (0, 1):
        for b in (2, 3, 4):
            cut = sum(result.relays[f"{x}->{y}"]["cut_connections"] for x, y in ((a, b), (b, a)))
            assert cut >= 1, (a, b, result.relays)
    # healed: same experiences and consensus everywhere, within the bounded wait
    assert result.converged, (summary, result.last_views)
    assert result.converge_s is not None
    assert result.connected_after == [4, 4, 4, 4, 4]
    for view in result.last_views:
        assert view["experiences"] == 5 and view["missing"] == []
        assert view["confirmed"] == 5 and view["counts"] == [5] * 5


def _auto_connector_dials(original: bool) -> bool:
    """Does the swarm's auto-connector dial a peer it only knows from the peerstore?"""
    import multiaddr
    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from libp2p.network.auto_connector import AutoConnector

    from dsonode.net.host import HostConfig, build_host, peer_id_of

    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(4)
    listener.settimeout(2.0)
    host = build_host(Ed25519PrivateKey.generate(), HostConfig(listen="/ip4/127.0.0.2/tcp/0"))
    network = host.get_network()
    if original:
        network.auto_connector = AutoConnector(swarm=network)
    known = multiaddr.Multiaddr(f"/ip4/127.0.0.2/tcp/{listener.getsockname()[1]}")
    host.get_peerstore().add_addrs(peer_id_of(Ed25519PrivateKey.generate()), [known], 3600)

    async def one_cycle() -> None:
        await network.auto_connector.start()
        with trio.move_on_after(3):
            await network.auto_connector.maybe_connect()

    trio.run(one_cycle)
    try:
        listener.accept()[0].close()
        return True
    except TimeoutError:
        return False
    finally:
        listener.close()


def test_host_auto_connector_never_dials_peerstore_peers():
    # control: py-libp2p's own one dials even with low_watermark = min_connections = 0
    assert _auto_connector_dials(original=True)
    assert not _auto_connector_dials(original=False)
