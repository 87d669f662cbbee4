"""The pure parts of discovery (dsonode/core/peerbook.py) and the `known_peers` store."""

from __future__ import annotations

import pytest

from dsonode.core.peerbook import (
    ConnInfo,
    KnownPeer,
    PeerBookError,
    choose_dials,
    choose_prunes,
    decode_peer,
    encode_peer,
    evict,
)
from dsonode.core.peerinfo import peer_id_from_public_key
from dsonode.store import Store

PID = peer_id_from_public_key(bytes(32))


def peer(i: int, score: float = 0.0, seen: int = 0, source: str = "dht") -> KnownPeer:
    return KnownPeer(
        f"P{i:03d}", (f"/ip4/127.0.0.{2 + i % 60}/tcp/{4000 + i}",), seen, source, score
    )


def test_record_round_trips_and_garbage_is_refused():
    p = KnownPeer("P1", ("/ip4/127.0.0.2/tcp/4001", "/ip6/::1/tcp/9"), 1234, "config", -3.0)
    assert decode_peer("P1", encode_peer(p)) == p
    for raw in (b"", b"\xc1", b"\x90", encode_peer(p)[:-3]):
        with pytest.raises(PeerBookError):
            decode_peer("P1", raw)
    with pytest.raises(PeerBookError, match="without /p2p/"):
        KnownPeer("P1", (f"/ip4/127.0.0.2/tcp/1/p2p/{PID}",))
    with pytest.raises(PeerBookError, match="source"):
        KnownPeer("P1", (), source="gossip")
    assert p.scored(+100).score == 20.0 and p.scored(-100).score == -20.0
    assert len(p.with_addrs([f"/ip4/127.0.0.9/tcp/{i}" for i in range(1, 9)]).addrs) == 4


def test_choose_dials_fills_up_to_low_water_with_the_best():
    known = {p.peer_id: p for p in (peer(i, score=i % 5, seen=i) for i in range(20))}
    assert choose_dials(known, set(known), low_water=8) == []
    picked = choose_dials(known, {"P000", "P001"}, low_water=8, excluded={"P019"}, dialing=1)
    assert len(picked) == 5
    assert "P019" not in picked and "P000" not in picked
    assert [known[p].score for p in picked] == [4.0, 4.0, 4.0, 3.0, 3.0]
    assert picked[0] == "P014"  # equal score: the most recently seen first


def test_choose_prunes_keeps_mesh_and_useful_and_never_goes_below_low_water():
    conns = [ConnInfo(f"P{i:03d}", in_mesh=i < 4, last_useful_s=float(i)) for i in range(20)]
    assert choose_prunes(conns[:16], low_water=8, high_water=16) == []
    out = choose_prunes(conns, low_water=8, high_water=16)
    assert out == ["P004", "P005", "P006", "P007"]  # the least recently useful non-mesh peers
    conns[4] = ConnInfo("P004", protected=True)
    assert "P004" not in choose_prunes(conns, low_water=8, high_water=16)
    assert len(choose_prunes(conns, low_water=18, high_water=18)) == 2
    assert len(choose_prunes(conns, low_water=19, high_water=10)) == 1  # floor: low water


def test_evict_forgets_the_worst_but_never_kept_ones():
    known = {p.peer_id: p for p in (peer(i, score=float(i)) for i in range(10))}
    assert evict(known, 10) == []
    assert evict(known, 7, keep={"P000"}) == ["P001", "P002", "P003"]


def test_known_peers_persist_in_their_own_database(tmp_path):
    a, b = peer(1, 2.0, 10, "config"), peer(2, -1.0, 20)
    with Store(tmp_path / "s") as store:
        assert store.load_known_peers() == []
        store.save_known_peers([a, b])
        store.save_known_peers([], forget=["P002"])
        # a record of another format (e.g. a hand-edited or foreign one) is skipped, not fatal
        with store.env.begin(write=True) as txn:
            txn.put(b"P777", b"garbage", db=store._dbs["known_peers"])
    with Store(tmp_path / "s") as store:
        assert store.load_known_peers() == [a]
        assert store.counts()["known_peers"] == 2


def test_an_older_stores_unused_peers_database_is_left_alone(tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "s"), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"old", b"\x01\x02", db=env.open_db(b"peers", txn=txn))
    env.close()
    with Store(tmp_path / "s") as store:
        assert store.load_known_peers() == []
        store.save_known_peers([peer(1)])
        assert [p.peer_id for p in store.load_known_peers()] == ["P001"]
