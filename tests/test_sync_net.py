"""/dso/sync/1.0.0 between REAL py-libp2p hosts in separate processes on 127.0.0.N.

Each process is `python -m qa.sync_probe` with its own LMDB store in a tmp dir; every
wait is bounded and every process is stopped in a `finally`. One in-process test drives an
honest responder with a misbehaving requester (garbage, oversize, slow) over real sockets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from netutil import JsonProcess

from dsonode.core.wire import item_hash

SPACE = hashlib.sha256(b"dsonode sync probe space").digest()


class SyncProbe(JsonProcess):
    """One sync_probe process; its JSON lines are read by a thread."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        super().__init__(tmp, name, "qa.sync_probe", *args)


def store_hashes(path: Path) -> set[bytes]:
    from dsonode.store.lmdb_store import Store

    with Store(path, readonly=True) as store:
        exps = {item_hash(r.raw) for r in store.iter_experiences_by_time()}
        subs = {item_hash(r.raw) for r in store.iter_submissions_by_time()}
    return exps | subs


@pytest.mark.slow
def test_late_node_pulls_everything_and_a_second_pull_finds_nothing(tmp_path):
    procs: list[SyncProbe] = []
    try:
        a = SyncProbe(tmp_path, "a", "--store", str(tmp_path / "a"), "--listen",
                      "/ip4/127.0.0.31/tcp/0", "--make-items", "300")  # fmt: skip
        procs.append(a)
        ready = a.wait_for("ready", 60)
        assert ready["items"] == 600  # 300 experiences + 300 submissions
        addr = ready["addrs"][0]

        def pull() -> dict:
            b = SyncProbe(tmp_path, "b", "--store", str(tmp_path / "b"), "--listen",
                          "/ip4/127.0.0.32/tcp/0", "--pull-from", addr,
                          "--exit-after-pull")  # fmt: skip
            procs.append(b)
            try:
                return b.wait_for("synced", 60)
            finally:
                b.stop()

        first = pull()
        report = first["report"]
        assert first["items"] == 600
        assert report["received"] == 600 and report["stored"] == 600
        assert report["rejected"] == {} and report["duplicates"] == 0
        assert report["session"]["unavailable"] == 0

        # B restarts on its own store: every bucket is equal now, nothing is listed or sent.
        second = pull()["report"]
        assert second["received"] == 0
        assert second["session"]["hashes_seen"] == 0
        assert second["session"]["buckets_differ"] == 0
    finally:
        for p in procs:
            p.stop()
    # Byte for byte the same items on both sides, read back from the two LMDB stores.
    a_hashes, b_hashes = store_hashes(tmp_path / "a"), store_hashes(tmp_path / "b")
    assert len(a_hashes) == 600 and a_hashes == b_hashes


@pytest.mark.slow
def test_misbehaving_responders_give_typed_errors(tmp_path):
    expected = {
        "garbage": "MalformedError",
        "oversize": "FrameError",
        "slow": "SyncTimeoutError",
        "wrong-item": "SyncError",
    }
    servers: dict[str, SyncProbe] = {}
    pullers: dict[str, SyncProbe] = {}
    try:
        for i, mode in enumerate(expected):
            servers[mode] = SyncProbe(tmp_path, f"bad-{mode}", "--store",
                                      str(tmp_path / f"s{i}"), "--listen",
                                      f"/ip4/127.0.0.{40 + i}/tcp/0", "--misbehave", mode,
                                      "--make-items", "3")  # fmt: skip
        addrs = {m: s.wait_for("ready", 60)["addrs"][0] for m, s in servers.items()}
        for i, mode in enumerate(expected):
            pullers[mode] = SyncProbe(tmp_path, f"pull-{mode}", "--store",
                                      str(tmp_path / f"p{i}"), "--listen",
                                      f"/ip4/127.0.0.{50 + i}/tcp/0", "--pull-from", addrs[mode],
                                      "--exit-after-pull", "--frame-timeout", "2")  # fmt: skip
        for mode, error in expected.items():
            ev = pullers[mode].wait_for("sync_error", 60)
            assert ev["error"] == error, (mode, ev)
            # The puller survives the bad peer: it shuts down cleanly with its stats.
            pullers[mode].wait_for("stats", 20)
            assert pullers[mode].proc.wait(timeout=20) == 0
        for i in range(len(expected)):
            assert store_hashes(tmp_path / f"p{i}") == set()  # nothing bad was stored
    finally:
        for p in [*servers.values(), *pullers.values()]:
            p.stop()


def test_honest_responder_survives_misbehaving_requesters(tmp_path):
    """One process, two real hosts over TCP: bad requests reset the stream, nothing crashes,
    and the same responder then serves an honest pull completely."""
    import multiaddr
    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from libp2p.peer.peerinfo import PeerInfo

    from dsonode.core import sync as core
    from dsonode.net.host import HostConfig, build_host
    from dsonode.net.sync import PROTOCOL, SyncConfig, SyncServer, sync_with
    from dsonode.store.lmdb_store import Store
    from qa.sync_probe import make_items

    store_a = Store(tmp_path / "a", space_id=SPACE)
    store_b = Store(tmp_path / "b", space_id=SPACE)
    make_items(store_a, SPACE, 20)
    cfg_a = HostConfig(listen="/ip4/127.0.0.61/tcp/0")
    cfg_b = HostConfig(listen="/ip4/127.0.0.62/tcp/0")
    host_a = build_host(Ed25519PrivateKey.generate(), cfg_a)
    host_b = build_host(Ed25519PrivateKey.generate(), cfg_b)
    server = SyncServer(host_a, store_a, SyncConfig(idle_timeout_s=1.0))
    server.register()
    results: dict = {}

    async def bad_request(payload: bytes) -> bytes:
        stream = await host_b.new_stream(host_a.get_id(), [PROTOCOL])
        await stream.write(payload)
        data = b""
        with trio.move_on_after(5):
            try:
                while chunk := await stream.read(4096):
                    data += chunk
            except Exception:  # the reset the server sends
                pass
        return data

    async def main() -> None:
        async with (
            host_a.run([multiaddr.Multiaddr(cfg_a.listen_addr.tcp_multiaddr)]),
            host_b.run([multiaddr.Multiaddr(cfg_b.listen_addr.tcp_multiaddr)]),
        ):
            addr = multiaddr.Multiaddr(host_a.get_addrs()[0].decapsulate_code(421))
            with trio.fail_after(15):
                await host_b.connect(PeerInfo(host_a.get_id(), [addr]))
            results["garbage"] = await bad_request(b"\x04\xc1\xc1\xc1\xc1")
            results["oversize"] = await bad_request(b"\xff\xff\xff\x0f")
            results["response_as_request"] = await bad_request(
                core.encode_frame(core.encode_message(core.Hashes(())))
            )
            results["slow"] = await bad_request(b"\x10\x96")  # 2 of 16 bytes, then silence
            results["report"] = await sync_with(host_b, host_a.get_id(), store_b, SPACE)

    try:
        trio.run(main)
    finally:
        store_a.close()
        store_b.close()
    for key in ("garbage", "oversize", "response_as_request", "slow"):
        assert results[key] == b"", key  # no answer to a bad request, just a reset
    errors = server.stats.errors
    assert errors["MalformedError"] == 1 and errors["FrameError"] == 1
    assert errors["SyncError"] == 1 and errors["SyncTimeoutError"] == 1
    report = results["report"]
    assert report.received == 40 and report.stored == 40 and not report.rejected
