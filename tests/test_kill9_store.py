"""The store's crash-consistency marks (see dsonode/store/lmdb_store.py, Guarantees): an add is
one transaction with its consensus, and whatever a crash can leave half-done is marked
pending until its consensus is written."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core.constants import CODE_BYTES
from dsonode.core.wire import encode_item, make_experience, make_submission
from dsonode.store import ConsensusRecord, Store

SPACE = hashlib.sha256(b"kill9 store test space").digest()
OTHER_SPACE = hashlib.sha256(b"another space").digest()
CODE = bytes([0, 0, 0x80, 0x3F]) + bytes(CODE_BYTES - 4)


def _exp_and_sub(key, text, space=SPACE):
    exp = make_experience(key, "d", text)
    sub = make_submission(key, exp.id, space, CODE)
    return exp, sub


def _record(exp_id):
    return ConsensusRecord(SPACE, exp_id, CODE, 1, False, "d", updated=1)


def test_an_add_with_its_consensus_is_one_commit_and_leaves_nothing_pending(tmp_path):
    key = Ed25519PrivateKey.generate()
    exp, sub = _exp_and_sub(key, "one lesson")
    with Store(tmp_path / "s", space_id=SPACE) as store:
        flags = store.put_items(
            [encode_item(exp), encode_item(sub)],
            decoded=[exp, sub],
            consensus_if_absent=[_record(exp.id)],
        )
        assert flags == [True, True]
        assert store.get_consensus(SPACE, exp.id).code == CODE
        assert store.pending_ids() == []
    # and it is on disk: another open sees both
    with Store(tmp_path / "s", space_id=SPACE) as store:
        assert store.get_consensus(SPACE, exp.id) is not None
        assert store.has_experience(exp.id)


def test_items_without_their_consensus_stay_pending_until_it_is_written(tmp_path):
    key = Ed25519PrivateKey.generate()
    exp, sub = _exp_and_sub(key, "a gossiped lesson")
    _, foreign = _exp_and_sub(key, "a gossiped lesson", space=OTHER_SPACE)
    with Store(tmp_path / "s", space_id=SPACE) as store:
        store.put_items([encode_item(exp)], decoded=[exp])
        assert store.pending_ids() == [exp.id]
        store.put_consensus([_record(exp.id)])
        assert store.pending_ids() == []
        store.put_items([encode_item(foreign)], decoded=[foreign])  # not our space
        assert store.pending_ids() == []
        store.put_items([encode_item(sub)], decoded=[sub])  # a new submission of our space
        assert store.pending_ids() == [exp.id]
        store.put_items([encode_item(sub)], decoded=[sub])  # a duplicate marks nothing new
        store.clear_pending([exp.id])
        assert store.pending_ids() == []


def test_a_local_add_beside_a_peers_submission_stays_pending(tmp_path):
    """The add's single-code consensus lacks the peer's submission: the daemon must redo it."""
    mine, peer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    exp, own = _exp_and_sub(mine, "found by two nodes")
    peer_sub = make_submission(peer, exp.id, SPACE, CODE)
    with Store(tmp_path / "s", space_id=SPACE) as store:
        store.put_items([encode_item(peer_sub)], decoded=[peer_sub])
        store.clear_pending([exp.id])  # what the daemon does while the experience is unknown
        store.put_items(
            [encode_item(exp), encode_item(own)],
            decoded=[exp, own],
            consensus_if_absent=[_record(exp.id)],
        )
        assert store.get_consensus(SPACE, exp.id) is not None
        assert store.pending_ids() == [exp.id]


def test_an_existing_consensus_is_not_replaced_by_consensus_if_absent(tmp_path):
    key = Ed25519PrivateKey.generate()
    exp, sub = _exp_and_sub(key, "already agreed")
    other = bytes([0, 0, 0, 0x40]) + bytes(CODE_BYTES - 4)
    with Store(tmp_path / "s", space_id=SPACE) as store:
        store.put_items([encode_item(exp)], decoded=[exp])
        store.put_consensus([ConsensusRecord(SPACE, exp.id, other, 3, True, "d", updated=1)])
        store.put_items([encode_item(sub)], decoded=[sub], consensus_if_absent=[_record(exp.id)])
        assert store.get_consensus(SPACE, exp.id).code == other
        assert store.pending_ids() == [exp.id]  # the new submission is not in it yet
