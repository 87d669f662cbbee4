"""The LMDB store, on real LMDB environments in temporary directories."""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import bitdelta, wire
from dsonode.core.constants import DIM
from dsonode.core.errors import WireError
from dsonode.store import (
    SCHEMA_VERSION,
    ConsensusRecord,
    Store,
    StoreError,
    StoreSchemaError,
)

SPACE_A = bytes(range(32))
SPACE_B = bytes(range(1, 33))
T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(3)]


def _exp(key, i: int, domain: str = "math", created: int | None = None) -> wire.Experience:
    return wire.make_experience(
        key, domain, f"lesson number {i}", created=T0 + i if created is None else created
    )


def _code(seed: int) -> bytes:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return bitdelta.encode(v / np.linalg.norm(v))


def _sub(key, exp_id: bytes, seed: int, space: bytes = SPACE_A) -> wire.Submission:
    return wire.make_submission(key, exp_id, space, _code(seed), created=T0 + seed)


def test_put_items_is_idempotent_and_reports_new(tmp_path, keys):
    exps = [_exp(keys[0], i) for i in range(5)]
    raws = [wire.encode_item(e) for e in exps]
    with Store(tmp_path / "s", space_id=SPACE_A) as store:
        # A duplicate inside the batch counts once.
        assert store.put_items([*raws[:3], raws[0]]) == [True, True, True, False]
        assert store.put_items(raws) == [False, False, False, True, True]
        assert store.put_items(raws) == [False] * 5
        assert store.counts()["experiences"] == 5
        assert store.counts()["exp_by_time"] == 5
        rec = store.get_experience(exps[2].id)
        assert rec is not None
        assert (rec.text, rec.domain, rec.created) == ("lesson number 2", "math", T0 + 2)
        assert rec.raw == raws[2]
        assert wire.decode_item(rec.raw) == exps[2]
        assert store.get_experience(b"\x00" * 32) is None


def test_same_content_by_two_authors_is_one_experience(tmp_path, keys):
    a = wire.make_experience(keys[0], "math", "the same lesson", created=T0)
    b = wire.make_experience(keys[1], "math", "the same lesson", created=T0 + 5)
    assert a.id == b.id
    with Store(tmp_path / "s") as store:
        assert store.put_items([wire.encode_item(a), wire.encode_item(b)]) == [True, False]
        assert store.get_experience(a.id).author == a.author  # first one kept


def test_one_submission_per_author_the_earliest_is_kept(tmp_path, keys):
    exp = _exp(keys[0], 0)
    first = _sub(keys[1], exp.id, seed=1)
    second = _sub(keys[1], exp.id, seed=2)  # same author, another code, 1 ms later
    other_author = _sub(keys[2], exp.id, seed=3)
    other_space = _sub(keys[1], exp.id, seed=4, space=SPACE_B)
    raws = [wire.encode_item(x) for x in (exp, first, second, other_author, other_space)]
    with Store(tmp_path / "s") as store:
        assert store.put_items(raws) == [True, True, False, True, True]
        subs = store.get_submissions(exp.id, SPACE_A)
        assert sorted(s.author for s in subs) == sorted([first.author, other_author.author])
        mine = next(s for s in subs if s.author == first.author)
        assert mine.code == first.code
        assert mine.raw == raws[1]
        assert len(store.get_submissions(exp.id)) == 3  # every space
        assert len(store.get_submissions(exp.id, SPACE_B.hex())) == 1


def _time_entries(store: Store) -> list[tuple[int, bytes]]:
    """(created, submission key) of every sub_by_time entry, read from LMDB directly."""
    with store.env.begin() as txn:
        cur = txn.cursor(db=store._dbs["sub_by_time"])
        return [(int.from_bytes(k[:8], "big"), bytes(k[8:])) for k, _ in cur]


def test_a_smaller_submission_replaces_the_stored_one_in_either_order(tmp_path, keys):
    """PROTOCOL.md 7.2: per (experience, space, author) the smallest (created, item hash)."""
    exp = _exp(keys[0], 0)
    small = wire.make_submission(keys[1], exp.id, SPACE_A, _code(1), created=T0 + 3)
    large = wire.make_submission(keys[1], exp.id, SPACE_A, _code(2), created=T0 + 5)
    r_exp, r_small, r_large = (wire.encode_item(x) for x in (exp, small, large))
    key = exp.id + SPACE_A + small.author
    for name, order in (("ab", (r_large, r_small)), ("ba", (r_small, r_large))):
        with Store(tmp_path / name, space_id=SPACE_A) as store:
            store.put_items([r_exp, order[0]])
            store.clear_pending([exp.id])  # as if its consensus had been written
            flags = store.put_items([order[1]])
            # The later-arriving one is new only if it is the smaller one.
            assert flags == [order[1] == r_small]
            # ... and only then the consensus must be recomputed.
            assert store.pending_ids() == ([exp.id] if flags[0] else [])
            [kept] = store.get_submissions(exp.id, SPACE_A)
            assert (kept.raw, kept.code, kept.created) == (r_small, small.code, T0 + 3)
            assert _time_entries(store) == [(T0 + 3, key)]  # the old time entry is gone
            assert [s.raw for s in store.iter_submissions_by_time()] == [r_small]
            assert store.counts()["submissions"] == 1
            # The gossip pipeline's "already stored": this one or a smaller one is held.
            args = (exp.id, SPACE_A, small.author)
            assert store.holds_submission(*args, T0 + 3, wire.item_hash(r_small))
            assert store.holds_submission(*args, T0 + 5, wire.item_hash(r_large))
            assert store.holds_submission(*args, T0 + 3, b"\xff" * 32)  # equal time, larger
            assert not store.holds_submission(*args, T0 + 3, b"\x00" * 32)  # smaller hash
            assert not store.holds_submission(*args, T0 + 2, b"\xff" * 32)  # earlier
            assert not store.holds_submission(exp.id, SPACE_B, small.author, T0, bytes(32))
        with Store(tmp_path / name, space_id=SPACE_A) as store:  # durable
            assert [s.raw for s in store.get_submissions(exp.id)] == [r_small]


def test_equal_created_is_broken_by_the_smaller_item_hash(tmp_path, keys):
    exp = _exp(keys[0], 0)
    subs = [wire.make_submission(keys[1], exp.id, SPACE_A, _code(i), created=T0) for i in (1, 2)]
    raws = [wire.encode_item(x) for x in subs]
    winner = min(raws, key=wire.item_hash)
    for i, order in enumerate((raws, raws[::-1])):
        with Store(tmp_path / f"s{i}", space_id=SPACE_A) as store:
            # Inside one batch too: the second is compared with the first.
            assert store.put_items([wire.encode_item(exp), *order]) == [
                True,
                True,
                order[1] == winner,
            ]
            assert [s.raw for s in store.get_submissions(exp.id)] == [winner]
            assert len(_time_entries(store)) == 1


def test_a_replacement_in_a_failing_batch_writes_nothing(tmp_path, keys):
    """Every item is verified before the write transaction: a batch that fails leaves the
    larger submission, its time entry and no pending mark."""
    exp = _exp(keys[0], 0)
    small = wire.make_submission(keys[1], exp.id, SPACE_A, _code(1), created=T0 + 3)
    large = wire.make_submission(keys[1], exp.id, SPACE_A, _code(2), created=T0 + 5)
    bad = bytearray(wire.encode_item(_exp(keys[2], 1)))
    bad[-1] ^= 1  # a flipped signature bit
    with Store(tmp_path / "s", space_id=SPACE_A) as store:
        store.put_items([wire.encode_item(exp), wire.encode_item(large)])
        store.clear_pending([exp.id])
        with pytest.raises(WireError):
            store.put_items([wire.encode_item(small), bytes(bad)])
        assert [s.raw for s in store.get_submissions(exp.id)] == [wire.encode_item(large)]
        assert _time_entries(store) == [(T0 + 5, exp.id + SPACE_A + large.author)]
        assert store.pending_ids() == []


def test_invalid_item_rejects_whole_batch(tmp_path, keys):
    good = wire.encode_item(_exp(keys[0], 1))
    bad = bytearray(wire.encode_item(_exp(keys[0], 2)))
    bad[-1] ^= 0xFF  # breaks the signature
    with Store(tmp_path / "s") as store:
        with pytest.raises(WireError):
            store.put_items([good, bytes(bad)])
        assert store.counts()["experiences"] == 0
        with pytest.raises(StoreError):
            store.put_items([b"\x00" * 5000])  # over the item size limit
        with pytest.raises(StoreError):
            store.put_items([5])  # bytes(5) would be five zero bytes: refused as a type


def test_map_grows_when_full(tmp_path, keys):
    exps = [_exp(keys[0], i) for i in range(40)]
    subs = [_sub(keys[1], e.id, seed=i) for i, e in enumerate(exps)]
    raws = [wire.encode_item(x) for x in exps + subs]
    path = tmp_path / "s"
    with Store(path, map_size=64 * 1024) as store:
        start = store.map_size
        for i in range(0, len(raws), 20):  # several batches, each one transaction
            assert all(store.put_items(raws[i : i + 20]))
        assert store.map_size > start
        assert store.counts()["submissions"] == 40
    with Store(path, map_size=64 * 1024) as store:  # reopening adopts the grown map
        assert store.counts()["experiences"] == 40
        assert all(s is not None for s in store.get_raw_items([("experience", e.id) for e in exps]))


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s"
    Store(path).close()
    env = lmdb.open(str(path), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", msgpack.packb(SCHEMA_VERSION + 1), db=meta)
    env.close()
    with pytest.raises(StoreSchemaError, match="newer"):
        Store(path)
    # A refused open leaves the directory unlocked and the data untouched.
    env = lmdb.open(str(path), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin() as txn:
        assert msgpack.unpackb(txn.get(b"schema_version", db=meta)) == SCHEMA_VERSION + 1
    env.close()
    with pytest.raises(StoreSchemaError):  # still refused: not "in use by another process"
        Store(path)


def test_reopen_keeps_everything(tmp_path, keys):
    path = tmp_path / "s"
    exp = _exp(keys[0], 7, domain="code")
    sub = _sub(keys[1], exp.id, seed=7)
    cons = ConsensusRecord(SPACE_A, exp.id, sub.code, 1, False, "", {"mad": 0.1}, T0)
    with Store(path, space_id=SPACE_A.hex()) as store:
        store.put_items([wire.encode_item(exp), wire.encode_item(sub)])
        store.put_consensus([cons])
        store.update_reputation(
            b"peer-1", lambda old: {"score": (old or {"score": 0})["score"] + 1}
        )
        store.update_reputation(b"peer-1", lambda old: {"score": old["score"] + 1})
    with Store(path, space_id=SPACE_A) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.previous_space_id == SPACE_A
        assert store.get_experience(exp.id).domain == "code"
        got = store.get_consensus(SPACE_A, exp.id)
        assert got.code == sub.code
        assert got.domain == "code"  # looked up from the experience
        assert got.stats == {"mad": 0.1}
        assert store.get_reputation(b"peer-1") == {"score": 2}
        assert [p for p, _ in store.iter_reputation()] == [b"peer-1"]
        assert store.get_submissions(exp.id, SPACE_A)[0].raw == wire.encode_item(sub)


def test_a_store_with_the_old_peers_database_still_opens(tmp_path, keys):
    """Earlier releases created a "peers" database; such a store opens, read-write and
    read-only, and that database is left as it was."""
    path = tmp_path / "s"
    exp = _exp(keys[0], 3)
    with Store(path, space_id=SPACE_A) as store:
        store.put_items([wire.encode_item(exp)])
    env = lmdb.open(str(path), max_dbs=16)
    peers = env.open_db(b"peers")
    with env.begin(write=True) as txn:
        txn.put(b"peer-1", msgpack.packb({"addr": "/ip4/127.0.0.2/tcp/4001"}), db=peers)
    env.close()
    with Store(path, space_id=SPACE_A) as store:
        assert store.get_experience(exp.id) is not None
        assert "peers" not in store.counts()
        store.update_reputation(b"peer-1", lambda old: {"score": 1})
    with Store(path, readonly=True) as ro:
        assert ro.get_experience(exp.id) is not None
        assert ro.get_reputation(b"peer-1") == {"score": 1}
    env = lmdb.open(str(path), max_dbs=16, readonly=True)
    try:
        with env.begin() as txn:
            raw = txn.get(b"peer-1", db=env.open_db(b"peers", txn=txn, create=False))
        assert msgpack.unpackb(raw) == {"addr": "/ip4/127.0.0.2/tcp/4001"}
    finally:
        env.close()


def test_another_space_keeps_data_apart(tmp_path, keys):
    path = tmp_path / "s"
    exp = _exp(keys[0], 1)
    with Store(path, space_id=SPACE_A) as store:
        store.put_items([wire.encode_item(exp)])
        store.put_consensus([ConsensusRecord(SPACE_A, exp.id, _code(1), 1, True, "math")])
    with Store(path, space_id=SPACE_B) as store:
        assert store.previous_space_id == SPACE_A
        assert store.known_spaces() == [SPACE_A, SPACE_B]
        assert store.count_consensus(SPACE_B) == 0
        assert store.count_consensus(SPACE_A) == 1
        assert store.get_experience(exp.id) is not None  # experiences are space-free


def test_directory_is_locked_while_open(tmp_path):
    path = tmp_path / "s"
    with Store(path), pytest.raises(StoreError, match="in use"):
        Store(path)
    Store(path).close()  # closing released the lock
    with Store(path, readonly=True) as ro:
        assert ro.schema_version() == SCHEMA_VERSION
        with pytest.raises(StoreError, match="read-only"):
            ro.update_reputation(b"p", lambda old: {})


def test_bad_arguments_are_typed_errors(tmp_path):
    with pytest.raises(StoreError):
        Store(tmp_path / "a", space_id="not hex")
    with pytest.raises(StoreError):
        Store(tmp_path / "b", map_size=10)
    with Store(tmp_path / "c") as store:
        with pytest.raises(StoreError):
            store.get_experience(b"short")
        with pytest.raises(StoreError):
            store.put_consensus([ConsensusRecord(SPACE_A, b"\x01" * 32, b"x", 1, False, "")])
        with pytest.raises(StoreError):
            store.update_reputation(b"", lambda old: {})


def test_iteration_by_time_pages_and_bounds(tmp_path, keys):
    # Created times out of insertion order, more items than one page (256).
    exps = [_exp(keys[0], i, created=T0 + (i * 7919) % 600) for i in range(600)]
    with Store(tmp_path / "s") as store:
        for i in range(0, 600, 200):
            store.put_items([wire.encode_item(e) for e in exps[i : i + 200]])
        got = list(store.iter_experiences_by_time())
        assert len(got) == 600
        assert [r.created for r in got] == sorted(e.created for e in exps)
        window = list(store.iter_experiences_by_time(T0 + 100, T0 + 200))
        assert {r.id for r in window} == {e.id for e in exps if T0 + 100 <= e.created < T0 + 200}
        assert len(list(store.iter_experiences_by_time(limit=300))) == 300
        sub = _sub(keys[1], exps[0].id, seed=9)
        store.put_items([wire.encode_item(sub)])
        assert [s.code for s in store.iter_submissions_by_time()] == [sub.code]


def test_iter_consensus_chunks_one_space_in_order(tmp_path):
    ids = [bytes([i]) * 32 for i in range(1, 12)]
    with Store(tmp_path / "s") as store:
        store.put_consensus(
            [ConsensusRecord(SPACE_A, i, _code(n), n, n % 2 == 0, "d") for n, i in enumerate(ids)]
            + [ConsensusRecord(SPACE_B, ids[0], _code(99), 1, False, "d")]
        )
        chunks = list(store.iter_consensus_chunks(SPACE_A, chunk=3))
        assert [len(c) for c in chunks] == [3, 3, 3, 2]
        flat = [r for c in chunks for r in c]
        assert [r.experience_id for r in flat] == ids
        assert [r.count for r in flat] == list(range(11))
        assert store.count_consensus(SPACE_A) == 11
        assert [r.code for r in store.iter_consensus(SPACE_B)] == [_code(99)]


def test_corrupt_value_is_a_typed_error(tmp_path):
    path = tmp_path / "s"
    Store(path).close()
    env = lmdb.open(str(path), max_dbs=16)
    exps = env.open_db(b"experiences")  # (opening a db inside a write txn would deadlock)
    with env.begin(write=True) as txn:
        txn.put(b"\x05" * 32, b"\xc1garbage", db=exps)
    env.close()
    with Store(path) as store, pytest.raises(StoreError, match="corrupt"):
        store.get_experience(b"\x05" * 32)


_WRITER = """
import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dsonode.core import wire
from dsonode.store import Store

key = Ed25519PrivateKey.from_private_bytes(b"\\x07" * 32)
with Store(sys.argv[1]) as store:
    for batch in range(10_000):
        items = [
            wire.make_experience(key, "crash", f"lesson {batch} {i}", created=1_700_000_000_000)
            for i in range(50)
        ]
        store.put_items([wire.encode_item(x) for x in items], decoded=items)
        print(batch, flush=True)  # acknowledged: committed and synced
"""


def test_acknowledged_items_survive_sigkill(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acked = -1
    try:
        deadline = time.monotonic() + 60
        while acked < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-ingest: the next batch is being written
        proc.wait(timeout=30)
        proc.stdout.close()
    assert acked >= 5, "the writer did not acknowledge 6 batches"
    with Store(path) as store:  # opens clean, and the lock died with the process
        ids = [
            wire.experience_id("crash", f"lesson {b} {i}")
            for b in range(acked + 1)
            for i in range(50)
        ]
        assert all(store.has_experience(i) for i in ids)
        assert store.counts()["experiences"] >= len(ids)


_EQUIVOCATOR = """
import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dsonode.core import wire
from dsonode.store import ConsensusRecord, Store

space = bytes(range(32))
author = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
exps = [wire.make_experience(author, "crash", f"equivocated {i}", created=1) for i in range(8)]
with Store(sys.argv[1], space_id=space) as store:
    store.put_items([wire.encode_item(e) for e in exps])
    for step in range(100_000):
        exp = exps[step % len(exps)]
        # Ever smaller created: each one replaces the stored one (PROTOCOL.md 7.2).
        code = bytes([0, 0, 0x80, 0x3F]) + step.to_bytes(960, "little")
        sub = wire.make_submission(author, exp.id, space, code, created=10**9 - step)
        store.put_items([wire.encode_item(sub)], decoded=[sub])
        print(step, flush=True)  # acknowledged: committed and synced
        store.put_consensus([ConsensusRecord(space, exp.id, code, 1, False, "crash", updated=1)])
"""


def test_replacements_survive_sigkill_with_one_time_entry_and_pending_marks(tmp_path):
    """SIGKILL while a node replaces submissions: after the crash every key has one submission
    and one time entry (the replacement is one transaction), every acknowledged replacement is
    there, and a consensus that is not the stored submission's is marked pending."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-c", _EQUIVOCATOR, str(path)], stdout=subprocess.PIPE, text=True
    )
    acked = -1
    try:
        deadline = time.monotonic() + 60
        while acked < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-loop: a replacement is being written
        proc.wait(timeout=30)
        proc.stdout.close()
    assert acked >= 40, "the writer did not acknowledge 41 replacements"
    space = bytes(range(32))
    with Store(path, space_id=space) as store:
        subs = list(store.iter_submissions_by_time())
        assert len(subs) == 8 == store.counts()["submissions"]
        assert sorted(_time_entries(store)) == sorted(
            (s.created, s.experience_id + s.space_id + s.author) for s in subs
        )
        pending = set(store.pending_ids())
        for sub in subs:
            step = 10**9 - sub.created
            assert step >= acked - 7  # the acknowledged step of this experience or a later one
            assert sub.code[4:] == step.to_bytes(960, "little")
            cons = store.get_consensus(space, sub.experience_id)
            if sub.experience_id not in pending:
                assert cons is not None and cons.code == sub.code


def _rss_file_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux /proc needed")
def test_released_pages_leave_resident_memory_and_read_back_the_same(tmp_path, keys):
    exps = [
        wire.make_experience(keys[0], "ops", f"lesson {i} " + "x" * 1000, created=T0 + i)
        for i in range(12000)
    ]
    with Store(tmp_path / "s", space_id=SPACE_A) as store:
        store.put_items([wire.encode_item(e) for e in exps])
        texts = [store.get_experience(e.id).text for e in exps]  # maps in every page
        before = _rss_file_mb()
        assert store.release_mapped_pages() > 0
        after = _rss_file_mb()
        assert before - after >= 8, (before, after)  # ~12 MB of records were mapped
        assert [store.get_experience(e.id).text for e in exps] == texts
