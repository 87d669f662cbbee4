"""The consensus engine (dsonode.core.consensus) over real signed submissions and real LMDB."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import bitdelta, wire
from dsonode.core.aggregate import AggregateError
from dsonode.core.consensus import (
    MAX_SUBMITTERS,
    apply_reputation,
    compute_consensus,
    previous_verdicts,
    reputation_deltas,
    reputation_score,
)
from dsonode.core.constants import DIM
from dsonode.store import Store

SPACE = hashlib.sha256(b"consensus test space").digest()
OTHER_SPACE = hashlib.sha256(b"another space").digest()
T0 = 1_700_000_000_000
KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(1, 9)]
EXP = wire.make_experience(KEYS[0], "math", "Check the units before the arithmetic.", created=T0)


def unit(rng: np.random.Generator, base: np.ndarray | None = None, noise: float = 0.0):
    v = rng.normal(size=DIM) if base is None else base + noise * rng.normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def submission(key, vector, created=T0, space=SPACE, exp_id=EXP.id):
    return wire.make_submission(key, exp_id, space, bitdelta.encode(vector), created=created)


def stored(store: Store, subs):
    store.put_items([wire.encode_item(EXP)] + [wire.encode_item(s) for s in subs])
    return store.get_submissions(EXP.id, SPACE)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s", space_id=SPACE) as s:
        yield s


def compute(subs, **kw):
    kw.setdefault("quorum", 3)
    return compute_consensus(
        subs, experience_id=EXP.id, space_id=SPACE, domain="math", now_ms=T0, **kw
    )


def test_honest_majority_outvotes_a_liar(store):
    rng = np.random.default_rng(1)
    truth = unit(rng)
    honest = [submission(k, unit(rng, truth, 0.002)) for k in KEYS[:3]]
    liar = submission(KEYS[3], unit(rng))  # a random direction
    out = compute(stored(store, [*honest, liar]))
    assert out is not None
    assert set(out.accepted_authors) == {s.author for s in honest}
    assert out.rejected_authors == (liar.author,)
    rec = out.record
    assert rec.count == 3 and rec.confirmed and rec.domain == "math" and rec.updated == T0
    assert rec.stats["submissions"] == 4 and rec.stats["rejected"] == 1
    consensus = bitdelta.decode(np.frombuffer(rec.code, np.uint8)[None])[0]
    assert float(consensus @ truth) / np.linalg.norm(consensus) > 0.7
    assert out.cosines[liar.author] < 0.2 < 0.9 < min(out.cosines[s.author] for s in honest)
    # The record round-trips through the store, verdicts included.
    store.put_consensus([rec])
    again = store.get_consensus(SPACE, EXP.id)
    assert previous_verdicts(again) == out.verdicts


def test_below_quorum_is_not_confirmed_and_one_submission_is_its_own_consensus(store):
    rng = np.random.default_rng(2)
    v = unit(rng)
    one = compute(stored(store, [submission(KEYS[0], v)]))
    assert one is not None and one.record.count == 1 and not one.record.confirmed
    # Same signs; the scale differs (the consensus is the renormalised decoded code).
    assert one.record.code[4:] == bitdelta.encode(v)[4:]
    assert compute(stored(store, [submission(KEYS[0], v)]), quorum=1).record.confirmed


def test_first_submission_per_author_wins_and_other_spaces_and_experiences_are_ignored():
    rng = np.random.default_rng(3)
    truth = unit(rng)
    first = submission(KEYS[0], truth, created=T0)
    later_flip = submission(KEYS[0], -truth, created=T0 + 1)  # same author, later: ignored
    others = [submission(k, unit(rng, truth, 0.002)) for k in KEYS[1:3]]
    foreign = submission(KEYS[4], -truth, space=OTHER_SPACE)
    other_exp = submission(KEYS[5], -truth, exp_id=hashlib.sha256(b"x").digest())
    out = compute([later_flip, *others, first, foreign, other_exp])
    assert out.record.stats["submissions"] == 3
    assert out.rejected_authors == () and out.record.confirmed
    assert out.cosines[KEYS[0].public_key().public_bytes_raw()] > 0.9


@pytest.mark.parametrize("tie", [False, True], ids=["created", "item-hash"])
def test_equivocation_converges_whatever_the_arrival_order(tmp_path, tie):
    """An author signs two codes for one experience (PROTOCOL.md 7.2): two nodes that receive
    them in opposite orders keep the same one and reach the same consensus record."""
    rng = np.random.default_rng(4)
    truth = unit(rng)
    honest = [submission(k, unit(rng, truth, 0.002)) for k in KEYS[1:4]]
    agree = submission(KEYS[4], unit(rng, truth, 0.002), created=T0 + 7)
    flip = submission(KEYS[4], -truth, created=T0 + 7 if tie else T0 + 9)
    kept = min((agree, flip), key=lambda s: (s.created, wire.item_hash(s)))
    results = []
    for name, pair in (("a", (agree, flip)), ("b", (flip, agree))):
        with Store(tmp_path / name, space_id=SPACE) as store:
            store.put_items([wire.encode_item(EXP)] + [wire.encode_item(s) for s in honest])
            for s in pair:  # one arrival at a time, as gossip delivers them
                store.put_items([wire.encode_item(s)])
            subs = store.get_submissions(EXP.id, SPACE)
            results.append(([s.raw for s in subs], compute(subs)))
    (raws_a, out_a), (raws_b, out_b) = results
    assert raws_a == raws_b and wire.encode_item(kept) in raws_a
    assert out_a is not None and out_b is not None
    assert out_a.record == out_b.record and out_a.verdicts == out_b.verdicts
    # The kept code decides the liar's verdict, so a wrong choice would show here.
    assert out_a.verdicts[kept.author] is (kept is agree)
    # The consensus alone (given both, as from an old store) counts the same one.
    both = compute([*honest, flip, agree])
    assert both is not None and both.record == out_a.record


def test_no_submissions_or_only_zero_codes_give_none():
    assert compute([]) is None
    zero = wire.make_submission(KEYS[0], EXP.id, SPACE, bytes(964), created=T0)
    assert compute([zero]) is None


def test_bad_settings_still_raise():
    rng = np.random.default_rng(4)
    with pytest.raises(AggregateError):
        compute([submission(KEYS[0], unit(rng))], method="nonsense")


def test_submitters_are_bounded():
    rng = np.random.default_rng(5)
    truth = unit(rng)

    class Sub:  # a SubmissionLike without signing 70 keys
        def __init__(self, i):
            self.experience_id, self.space_id = EXP.id, SPACE
            self.author = i.to_bytes(32, "big")
            self.code = bitdelta.encode(unit(rng, truth, 0.002))
            self.created, self.raw = T0 + i, b""

    out = compute([Sub(i) for i in range(MAX_SUBMITTERS + 6)])
    assert out.record.stats["submissions"] == MAX_SUBMITTERS


def test_reputation_deltas_track_changed_verdicts_only():
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    # Two submissions: both accepted.
    d1 = reputation_deltas({}, {a: True, b: True})
    assert d1 == {a: (1, 0), b: (1, 0)}
    # Two more arrive; b turns out to be the outlier: b moves from accepted to rejected.
    d2 = reputation_deltas({a: True, b: True}, {a: True, b: False, c: True})
    assert d2 == {b: (-1, 1), c: (1, 0)}
    # Recomputing the same consensus changes nothing.
    assert reputation_deltas({a: True, b: False}, {a: True, b: False}) == {}


def test_apply_reputation_and_score():
    rec = apply_reputation(None, (0, 1), T0)
    assert rec["accepted"] == 0 and rec["rejected"] == 1
    assert rec["score"] == pytest.approx(1 / 3)
    assert rec["score"] < reputation_score(0, 0) == 0.5
    rec = apply_reputation(rec, (1, 0), T0 + 1)
    assert rec["score"] == pytest.approx(0.5) and rec["updated"] == T0 + 1
    assert apply_reputation({"accepted": 0, "rejected": 0}, (-1, -1), T0)["accepted"] == 0
    assert reputation_score(10, 0) > reputation_score(1, 0) > 0.5


def test_reputation_through_the_store(store):
    rng = np.random.default_rng(6)
    truth = unit(rng)
    honest = [submission(k, unit(rng, truth, 0.002)) for k in KEYS[:3]]
    liar = submission(KEYS[3], -truth)  # sign flip
    out = compute(stored(store, [*honest, liar]))
    for author, delta in reputation_deltas({}, out.verdicts).items():
        store.update_reputation(author, lambda r, d=delta: apply_reputation(r, d, T0))
    rep = dict(store.iter_reputation())
    assert rep[liar.author]["rejected"] == 1 and rep[liar.author]["score"] < 0.5
    assert all(rep[s.author]["accepted"] == 1 for s in honest)
