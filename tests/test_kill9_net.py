"""SIGKILL during consensus updates and during sync (CI subset; `dsonode bench faults` runs
20+ of each). Two real nodes on loopback: the victim recomputes consensus from its peer's
gossip (phase "consensus") or pulls a few hundred generated items by sync (phase "sync") and
is killed at random moments. After each kill, with the victim dead: the store opens, every
item verifies, every consensus record not marked pending equals a fresh computation from the
stored submissions; the next start recomputes exactly the pending ones; the last start
finishes the work and its index equals a rebuild from LMDB (qa/kill9.py).
"""

from __future__ import annotations

import random

import pytest

from qa.kill9 import (
    Kill9Failure,
    check_consensus_offline,
    exact_scores,
    index_answers,
    random_queries,
    run_kill9_net,
)

pytestmark = pytest.mark.slow


# Sync: 300 items and a kill within 1.5 s of the first arriving (the pull takes longer).
@pytest.mark.parametrize(
    "phase, runs, items, delay", [("consensus", 2, 0, 3.0), ("sync", 1, 300, 1.5)]
)
def test_sigkill_during_consensus_updates_and_sync_leaves_consistent_consensus(
    tmp_path, phase, runs, items, delay, seed
):
    result = run_kill9_net(
        tmp_path, phase, runs, random.Random(seed), items=items, max_delay_s=delay
    )
    summary = result.summary()
    print(f"kill9 {phase}: seed {seed}: {summary}")
    assert result.failures == [], (seed, summary)
    assert result.runs == runs
    assert all(n >= 1 for n in result.experiences_at_kill), (seed, summary)
    # each restart recomputed exactly what its kill left pending (checked inside, and here)
    assert result.repaired_at_start == result.pending_at_kill
    # the last start finished the work: everything the peer holds, all of it consistent
    assert result.final_experiences >= result.peer_experiences > 0
    if phase == "sync":
        assert result.final_experiences == items
        assert result.kills_before_complete == runs, "the kill came after the sync ended"
    final = check_consensus_offline(tmp_path / "victim")
    assert final.pending == 0
    assert final.consensus == final.experiences
    assert final.recomputed_equal + final.local_single == final.consensus


def test_the_consensus_check_catches_a_stale_record(tmp_path):
    """A consensus that no longer matches the stored submissions, unmarked, is reported."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core.aggregate import aggregate_codes
    from dsonode.core.constants import CODE_BYTES
    from dsonode.core.wire import encode_item, make_experience, make_submission
    from dsonode.identity import load_or_create_key
    from dsonode.store import ConsensusRecord, Store

    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    key = load_or_create_key(data_dir / "node.key")
    peer = Ed25519PrivateKey.generate()
    space = hashlib.sha256(b"stale").digest()
    code = bytes([0, 0, 0x80, 0x3F]) + bytes(CODE_BYTES - 4)
    exp = make_experience(key, "d", "a lesson two nodes found")
    own = make_submission(key, exp.id, space, code)
    theirs = make_submission(peer, exp.id, space, bytes([0, 0, 0x80, 0x3F]) + b"\xff" * 960)
    with Store(data_dir / "store", space_id=space) as store:
        # what Library.add_experience writes: our code as the aggregation re-encodes it
        single = aggregate_codes([code]).code
        assert single is not None
        record = ConsensusRecord(space, exp.id, single, 1, False, "d", updated=1)
        store.put_items(
            [encode_item(exp), encode_item(own)], decoded=[exp, own], consensus_if_absent=[record]
        )
    assert check_consensus_offline(data_dir).local_single == 1
    # exact_scores (the live-index check) scores stored codes as the rebuilt index does,
    # and an id without a consensus never matches a live score
    query = random_queries(random.Random(5), 1)
    rows, answers = index_answers(data_dir, query)
    assert rows == 1
    assert exact_scores(data_dir, query[0], [exp.id.hex()]) == dict(answers[0])
    missing = exact_scores(data_dir, query[0], ["00" * 32])["00" * 32]
    assert missing != missing  # NaN: equal to no score
    with Store(data_dir / "store", space_id=space) as store:
        store.put_items([encode_item(theirs)], decoded=[theirs])
    assert check_consensus_offline(data_dir).pending == 1  # marked: allowed, redone at start
    with Store(data_dir / "store", space_id=space) as store:
        store.clear_pending([exp.id])  # what a crash-unsafe writer would leave
    with pytest.raises(Kill9Failure, match="not marked pending"):
        check_consensus_offline(data_dir)
