"""The daemon in this process (a real Node: LMDB store, packaged encoder, libp2p host), against
sync probes in other processes on 127.0.0.N, and its committee filter on real signed items.

- Items pulled by sync take the gossip ingest path: stored, our own submission made (embedded
  by the real model), consensus recomputed and indexed.
- A responder that answers garbage is penalised in the pipeline like invalid gossip; one that
  is merely slow (a timeout) is not.
- Committee sampling: with a large estimated network, submissions outside their author's draw
  are ignored (not stored, not penalised), the experience author's always counts, and the
  node does not submit for an experience outside its own draw.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from netutil import JsonProcess

from dsonode.core import committee, wire
from dsonode.core.constants import CODE_BYTES
from dsonode.identity import public_key_bytes
from dsonode.node import Node, NodeConfig


def _open_node(tmp_path, **kw) -> Node:
    node = Node(
        NodeConfig(data_dir=tmp_path / "node", threads=1, listen="/ip4/127.0.0.81/tcp/0", **kw)
    )
    node.open()
    return node


def _probe(tmp_path, name: str, ip: str, space: str, *args: str) -> JsonProcess:
    return JsonProcess(tmp_path, name, "qa.sync_probe", "--store",
                       str(tmp_path / name), "--listen", f"/ip4/{ip}/tcp/0", "--space", space,
                       "--run-seconds", "150", *args)  # fmt: skip


@pytest.mark.slow
def test_sync_ingests_like_gossip_and_penalises_only_misbehaviour(tmp_path):
    from libp2p.peer.id import ID

    from dsonode.net.daemon import NetDaemon
    from dsonode.net.sync import SyncConfig

    probes: list[JsonProcess] = []
    node = _open_node(tmp_path)
    try:
        space = node.embedder.space_id  # the probes serve our space
        honest = _probe(tmp_path, "honest", "127.0.0.82", space, "--make-items", "4")
        garbage = _probe(tmp_path, "garbage", "127.0.0.83", space, "--misbehave", "garbage")
        slow = _probe(tmp_path, "slow", "127.0.0.84", space, "--misbehave", "slow")
        probes = [honest, garbage, slow]
        addrs = {p: p.wait_for("ready", 60)["addrs"][0] for p in probes}
        peer_ids = {p: addrs[p].rsplit("/", 1)[1] for p in probes}
        # The node's daemon, now with the probes as peers and a short frame timeout (so the
        # slow peer times out within the test).
        config = dataclasses.replace(
            node.daemon.config,
            peers=tuple(addrs.values()),
            sync=SyncConfig(frame_timeout_s=2.0),
            sync_mesh_wait_s=1.0,  # the probes join no gossip mesh
        )
        daemon = NetDaemon(config, library=node.library)
        node.service.network = node.daemon = daemon

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                with trio.fail_after(90):
                    while daemon.sync_stats["runs"] < 3 or daemon._syncing:
                        await trio.sleep(0.2)
                nursery.cancel_scope.cancel()

        trio.run(main)
        st = daemon.sync_stats
        assert st["ok"] == 1 and st["items_stored"] == 8 and st["items_rejected"] == 0
        assert st["timeouts"] == 1 and st["failures"] == 1 and st["penalised"] == 1
        assert node.library.counters()["own_submissions"] == 4  # embedded what sync brought
        assert node.library.counters()["consensus_updates"] >= 4
        assert len(node.index) == 4
        now = time.monotonic()

        def score(p):
            return daemon.pipeline.score(ID.from_base58(peer_ids[p]).to_bytes(), now)

        assert score(garbage) > 0  # misbehaved: penalised like invalid gossip
        assert score(slow) == 0 and score(honest) == 0  # too slow / honest: not penalised
        for exp in node.store.iter_experiences_by_time():
            rec = node.store.get_consensus(bytes.fromhex(space), exp.id)
            assert rec is not None and rec.stats["submissions"] == 2  # the probe's and ours
    finally:
        for p in probes:
            p.stop()
        node.close()


def _submission(key, exp_id: bytes, space: bytes) -> tuple[bytes, wire.Submission]:
    code = bytes([0, 0, 0x80, 0x3F]) + bytes(range(256)) * 3 + bytes(CODE_BYTES - 4 - 768)
    sub = wire.make_submission(key, exp_id, space, code)
    raw = wire.encode_item(sub)
    return raw, wire.decode_item(raw, wire.now_ms())


@pytest.mark.slow
def test_submissions_outside_the_committee_draw_are_ignored(tmp_path):
    node = _open_node(tmp_path, committee=1)
    try:
        daemon = node.daemon
        space = bytes.fromhex(node.embedder.space_id)
        # An estimated network of 100 authors: own draw 1/100, verifier bound 4/100.
        for i in range(99):
            node.store.update_reputation(bytes([i + 1]) * 32, lambda r: {"accepted": 1})
        assert node.library.network_size() == 100
        limit = committee.verify_threshold(1, 100)

        author_key = Ed25519PrivateKey.generate()
        # An experience outside our own draw (almost all are: p = 0.01).
        n = 0
        while True:
            exp = wire.make_experience(author_key, "ops", f"Lesson {n}: drain before restart.")
            n += 1
            if committee.draw(exp.id, node.library.author) >= committee.threshold(1, 100):
                break
        keys = [Ed25519PrivateKey.generate() for _ in range(120)]
        inside = [k for k in keys if committee.draw(exp.id, public_key_bytes(k)) < limit]
        outside = [k for k in keys if committee.draw(exp.id, public_key_bytes(k)) >= limit]
        assert inside and outside
        items = [(wire.encode_item(exp), exp)]
        items += [_submission(k, exp.id, space) for k in [author_key, *inside, *outside[:5]]]
        outbound = node.library.accept_items(items)
        assert outbound == []  # not in our own draw: no submission of ours
        assert node.library.counters()["not_in_committee"] == 1
        assert node.library.counters()["committee_ignored"] == 5
        stored = {s.author for s in node.store.get_submissions(exp.id, space)}
        assert stored == {public_key_bytes(k) for k in [author_key, *inside]}
        rec = node.store.get_consensus(space, exp.id)
        assert rec is not None and rec.stats["submissions"] == 1 + len(inside)
        # Ignored, not penalised: nothing went through the pipeline's penalties.
        assert daemon.pipeline.rejected == {}
        # "all": the same submissions would all count.
        assert committee.verify_threshold(None, 100) == 1.0
    finally:
        node.close()


@pytest.mark.slow
def test_byzantine_node_poisons_its_locally_added_submission_too(tmp_path):
    from dsonode.api.jsonrpc import AddExperienceParams
    from dsonode.core import bitdelta

    text = "Pin the random seed before comparing two training runs."
    node = _open_node(tmp_path, byzantine_attack="sign_flip")
    try:
        service = node.service
        assert service.network is node.daemon and node.library.attack == "sign_flip"
        honest = node.library.embed(text)
        out = service.add_experience(AddExperienceParams(text=text, domain="ml"))
        code = node.library.own_code(bytes.fromhex(out["id"]))
        ref = node.embedder.reference
        # poisoned as for gossiped experiences: the negated vector's bits (the 4-byte scale
        # may differ in its last bit: the attack renormalises in float64)
        assert code[4:] == bitdelta.encode(-honest, ref=ref)[4:]
        assert code[4:] != bitdelta.encode(honest, ref=ref)[4:]
    finally:
        node.close()
    honest_node = _open_node(tmp_path / "h")  # the same path without an attack: honest code
    try:
        out = honest_node.service.add_experience(AddExperienceParams(text=text, domain="ml"))
        code = honest_node.library.own_code(bytes.fromhex(out["id"]))
        assert code == bitdelta.encode(honest, ref=honest_node.embedder.reference)
    finally:
        honest_node.close()


def test_a_faulty_batch_is_not_forwarded_but_its_valid_items_are_kept(tmp_path):
    """libp2p forwards what its validator passes; the pipeline runs there (`_prevalidate`).
    A batch with one bad item must not be forwarded, yet its valid items must still reach
    our handler: the pipeline has marked them seen, so dropping them would lose them here."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2

    from dsonode.net.gossip import Gossip, GossipConfig, topic_for_space
    from dsonode.net.host import HostConfig, build_host

    node = _open_node(tmp_path)
    try:
        daemon = node.daemon
        origin = ID.from_pubkey(create_new_key_pair().public_key)
        key = Ed25519PrivateKey.generate()
        good = wire.encode_item(wire.make_experience(key, "ops", "Drain the queue first."))
        bad = bytearray(wire.encode_item(wire.make_experience(key, "ops", "Tampered text.")))
        bad[-1] ^= 1  # the signature no longer verifies
        faulty = wire.encode_batch([good, bytes(bad)])

        forward, verdict = daemon._prevalidate(origin, faulty)
        assert forward is False and verdict.penalty > 0
        assert [raw for raw, _ in verdict.accepted] == [good]
        # The same good item again (a replay): not forwarded and nothing left to deliver.
        assert daemon._prevalidate(origin, wire.encode_batch([good])) == (False, None)
        # A clean batch with something new: forwarded, with its verdict for the handler.
        fresh = wire.encode_item(wire.make_experience(key, "ops", "Check disk before a deploy."))
        forward, verdict = daemon._prevalidate(origin, wire.encode_batch([fresh]))
        assert forward is True and [raw for raw, _ in verdict.accepted] == [fresh]
        # New items beside a duplicate: forwarded (a duplicate costs a little, it is no fault).
        newer = wire.encode_item(wire.make_experience(key, "ops", "Rotate logs before a deploy."))
        forward, verdict = daemon._prevalidate(origin, wire.encode_batch([fresh, newer]))
        assert forward is True and verdict.penalty > 0
        assert [raw for raw, _ in verdict.accepted] == [newer]

        # The gossip layer: a rejected message whose verdict has items goes to our inbox only.
        verdicts = iter([(False, "valid items inside"), (False, None)])
        gossip = Gossip(
            build_host(Ed25519PrivateKey.generate(), HostConfig(listen="/ip4/127.0.0.85/tcp/0")),
            GossipConfig(),
            wire.encode_batch,
            handler=None,
            prevalidate=lambda _origin, _data: next(verdicts),
        )
        topic = topic_for_space(bytes(32))
        gossip.pubsub.dso_inboxes[topic] = gossip._inbox_send
        for seq in (1, 2):
            msg = rpc_pb2.Message(
                from_id=origin.to_bytes(), data=faulty, seqno=seq.to_bytes(8, "big"),
                topicIDs=[topic],
            )  # fmt: skip
            assert gossip._validate(origin, msg) is False  # never forwarded
        delivered = gossip._inbox_recv.receive_nowait()
        assert delivered[0] == topic and delivered[2] == faulty
        assert delivered[4] == "valid items inside"
        with pytest.raises(trio.WouldBlock):  # the one without valid items was not delivered
            gossip._inbox_recv.receive_nowait()
        assert gossip.stats.rejected_before_forward == 2
        # An oversize message is dropped before the pipeline and reported for a penalty,
        # which the daemon turns into the origin's score.
        reported: list[tuple[ID, str]] = []
        gossip.on_invalid = lambda peer, reason: reported.append((peer, reason))
        huge = rpc_pb2.Message(
            from_id=origin.to_bytes(), data=bytes(GossipConfig().max_message_bytes + 1),
            seqno=(3).to_bytes(8, "big"), topicIDs=[topic],
        )  # fmt: skip
        assert gossip._validate(origin, huge) is False
        assert reported == [(origin, "oversize")] and gossip.stats.dropped_oversize == 1
        before = daemon.pipeline.score(origin.to_bytes(), time.monotonic())
        daemon._penalise_gossip(origin, "oversize")
        assert daemon.pipeline.score(origin.to_bytes(), time.monotonic()) > before
    finally:
        node.close()


@pytest.mark.slow
def test_equivocating_submissions_converge_in_the_library(tmp_path):
    """PROTOCOL.md 7.2 through the library the daemon uses: `holds` answers "stored" only for
    a submission not smaller than the kept one, a smaller one arriving later replaces it and
    the consensus is recomputed with it, and a smaller one signed with our own key (a key
    reused on a wiped store) becomes what own_code returns."""
    node = _open_node(tmp_path)
    try:
        lib, store = node.library, node.store
        space = bytes.fromhex(node.embedder.space_id)
        exp = wire.make_experience(
            Ed25519PrivateKey.generate(), "ops", "Drain the queue before a restart."
        )
        liar = Ed25519PrivateKey.generate()
        up = bytes([0, 0, 0x80, 0x3F]) + b"\xff" * (CODE_BYTES - 4)
        down = bytes([0, 0, 0x80, 0x3F]) + bytes(CODE_BYTES - 4)
        t = exp.created
        large = wire.make_submission(liar, exp.id, space, up, created=t + 5)
        small = wire.make_submission(liar, exp.id, space, down, created=t + 3)
        lib.accept_items([(wire.encode_item(exp), exp), (wire.encode_item(large), large)])
        mine = lib.own_code(exp.id)
        assert mine is not None  # our own submission, made by the real encoder
        assert lib.holds(large) and not lib.holds(small)
        before = lib.counters().get("consensus_updates", 0)

        lib.accept_items([(wire.encode_item(small), small)])
        assert lib.holds(small) and lib.holds(large)
        kept = {s.author: s for s in store.get_submissions(exp.id, space)}
        assert kept[small.author].raw == wire.encode_item(small) and len(kept) == 2
        assert lib.counters()["consensus_updates"] == before + 1
        assert store.pending_ids() == []
        rec = store.get_consensus(space, exp.id)
        assert rec is not None and rec.stats["submissions"] == 2
        # The larger one again is a duplicate: nothing stored, nothing recomputed.
        lib.accept_items([(wire.encode_item(large), large)])
        assert lib.counters()["consensus_updates"] == before + 1
        assert store.get_consensus(space, exp.id) == rec

        # An older submission of our own key comes back (by sync, say): it is kept.
        ours = wire.make_submission(lib.key, exp.id, space, up, created=t - 1000)
        assert not lib.holds(ours)
        assert lib.accept_items([(wire.encode_item(ours), ours)]) == []
        assert lib.own_code(exp.id) == up != mine
        # Adding the experience again keeps that stored submission and signs nothing new.
        out = lib.add_experience(exp)
        assert out.new is False and lib.own_code(exp.id) == up
        assert {s.raw for s in store.get_submissions(exp.id, space)} == {
            wire.encode_item(small),
            wire.encode_item(ours),
        }
    finally:
        node.close()


@pytest.mark.slow
def test_the_authors_first_consensus_is_what_every_recomputation_gives(tmp_path):
    """The consensus an add writes at once must be byte-identical to the one any node computes
    from the same single submission: its raw code has another scale, which ranked the node's
    own experiences differently from everyone else's (0.636 vs 0.798 for one query)."""
    from dsonode.api.jsonrpc import AddExperienceParams
    from dsonode.core.consensus import compute_consensus

    node = _open_node(tmp_path)
    try:
        assert node.library is not None and node.service is not None and node.store is not None
        text = "Write the failing test before the fix, then watch it pass."
        out = node.service.add_experience(AddExperienceParams(text=text, domain="ml"))
        exp_id = bytes.fromhex(out["id"])
        space = node.library.space_id
        written = node.store.get_consensus(space, exp_id)
        subs = node.store.get_submissions(exp_id, space)
        assert written is not None and len(subs) == 1
        recomputed = compute_consensus(
            subs,
            experience_id=exp_id,
            space_id=space,
            domain="ml",
            now_ms=wire.now_ms(),
            ref=node.library.embedder.reference,
            quorum=node.library.rules.quorum,
            method=node.library.rules.method,
        )
        assert recomputed is not None
        assert written.code == recomputed.record.code
        assert written.code[4:] == subs[0].code[4:]  # same sign bits as our submission
        assert written.code[:4] != subs[0].code[:4]  # the scale is the median's, not ours
    finally:
        node.close()
