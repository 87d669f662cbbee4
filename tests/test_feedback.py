"""Feedback: the signed wire item, its aggregation (one vote per author, median, damped blend),
the LMDB tables that keep the aggregate current, and the socket params. Real LMDB, real Ed25519.
"""

from __future__ import annotations

import hashlib
import itertools
import statistics

import lmdb
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dsonode.api.jsonrpc import GiveFeedbackParams, InvalidParams, validate_params
from dsonode.core import feedback as fb
from dsonode.core import wire
from dsonode.core.errors import (
    ClockSkewError,
    KindError,
    NonCanonicalError,
    SchemaError,
    SignatureError,
    WireError,
)
from dsonode.store import SCHEMA_VERSION, Store, StoreError

T0 = 1_700_000_000_000
KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(5)]
PUBS = [k.public_key().public_bytes_raw() for k in KEYS]
EXP = wire.make_experience(KEYS[0], "ops", "Pin dependency versions.", created=T0)
EID = EXP.id


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def raw_feedback(body, key=KEYS[0], domain=wire.FEEDBACK_SIG_DOMAIN) -> bytes:
    """A feedback item built by hand, signed over whatever body it is given."""
    return pack([1, "feedback", body, key.sign(domain + pack(body))])


def vote(author: int, score: int, created: int, tag: bytes = b"") -> fb.Vote:
    digest = hashlib.sha256(bytes([author]) + score.to_bytes(2, "big") + tag).digest()
    return fb.Vote(PUBS[author], score, created, digest)


# --- Wire ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "score"),
    [(1.0, 2000), (-1.0, 0), (0.0, 1000), (-0.25, 750), (0.5, 1500), (0.0004, 1000), (1, 2000)],
)
def test_value_to_score_and_round_trip(value, score):
    item = wire.make_feedback(KEYS[1], EID, value, created=T0 + 5)
    assert item.score == score and item.value == (score - 1000) / 1000
    data = wire.encode_item(item)
    assert len(data) <= 158  # 158 with a 3-byte score and an 8-byte created
    back = wire.decode_item(data, now_ms=T0)
    assert back == item and isinstance(back, wire.Feedback)
    assert wire.signing_payload(item).startswith(b"dso/feedback/1\x00")
    assert wire.decode_batch(wire.encode_batch([EXP, item])) == [wire.encode_item(EXP), data]


@pytest.mark.parametrize("value", [1.0001, -1.5, float("nan"), float("inf"), True, "1", None])
def test_make_feedback_rejects_values_outside_the_range(value):
    with pytest.raises(SchemaError):
        wire.make_feedback(KEYS[1], EID, value)


def test_make_feedback_rejects_bad_fields():
    with pytest.raises(SchemaError):
        wire.make_feedback(KEYS[1], EID[:31], 1.0)
    with pytest.raises(SchemaError):
        wire.make_feedback(KEYS[1], EID, 1.0, created=2**53)
    with pytest.raises(SchemaError):
        wire.Feedback(EID, 2001, PUBS[0], T0, bytes(64))
    with pytest.raises(SchemaError):
        wire.Feedback(EID, 1.0, PUBS[0], T0, bytes(64))  # type: ignore[arg-type]


GOOD_BODY = [EID, 2000, PUBS[0], T0]
MALFORMED = {
    "score over 2000": (raw_feedback([EID, 2001, PUBS[0], T0]), SchemaError),
    "negative score": (raw_feedback([EID, -1, PUBS[0], T0]), SchemaError),
    "float score": (raw_feedback([EID, 1.0, PUBS[0], T0]), SchemaError),
    "bool score": (raw_feedback([EID, True, PUBS[0], T0]), SchemaError),
    "str score": (raw_feedback([EID, "2000", PUBS[0], T0]), SchemaError),
    "short id": (raw_feedback([EID[:31], 2000, PUBS[0], T0]), SchemaError),
    "id as str": (raw_feedback([EID.hex(), 2000, PUBS[0], T0]), SchemaError),
    "short author": (raw_feedback([EID, 2000, PUBS[0][:31], T0]), SchemaError),
    "created too big": (raw_feedback([EID, 2000, PUBS[0], 2**53]), SchemaError),
    "missing field": (raw_feedback(GOOD_BODY[:3]), SchemaError),
    "extra field": (raw_feedback([*GOOD_BODY, 0]), SchemaError),
    "nested array": (raw_feedback([EID, [2000], PUBS[0], T0]), SchemaError),
    "wrong signer": (raw_feedback(GOOD_BODY, key=KEYS[1]), SignatureError),
    "experience domain": (raw_feedback(GOOD_BODY, domain=wire.EXPERIENCE_SIG_DOMAIN), SignatureError),
    "submission domain": (raw_feedback(GOOD_BODY, domain=wire.SUBMISSION_SIG_DOMAIN), SignatureError),
    "kind misspelt": (pack([1, "feedbacks", GOOD_BODY, bytes(64)]), KindError),
    # score 2000 written as uint32 instead of uint16: a second byte string for one item.
    "non-canonical score": (
        raw_feedback(GOOD_BODY)[:46] + b"\xce\x00\x00\x07\xd0" + raw_feedback(GOOD_BODY)[49:],
        NonCanonicalError,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_feedback_is_rejected_with_its_class(name):
    data, error = MALFORMED[name]
    with pytest.raises(WireError) as info:
        wire.decode_item(data)
    assert type(info.value) is error, f"{name}: {info.value!r}"


def test_the_non_canonical_fixture_differs_only_in_the_score_encoding():
    good = raw_feedback(GOOD_BODY)
    # 94 01 a8 "feedback" | 94 | c4 20 <id> | cd 07d0: the score starts at byte 46.
    assert good[46:49] == b"\xcd\x07\xd0"
    assert msgpack.unpackb(MALFORMED["non-canonical score"][0])[2] == GOOD_BODY
    wire.decode_item(good)


def test_feedback_from_the_future_is_a_clock_skew():
    item = wire.make_feedback(KEYS[1], EID, 1.0, created=T0 + 300_001)
    with pytest.raises(ClockSkewError):
        wire.decode_item(wire.encode_item(item), now_ms=T0)
    assert wire.decode_item(wire.encode_item(item), now_ms=T0 + 1) == item


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    score=st.integers(0, 2000),
    created=st.integers(0, 2**53 - 1),
    signer=st.integers(0, 4),
    eid=st.binary(min_size=32, max_size=32),
)
def test_any_valid_feedback_round_trips(score, created, signer, eid):
    item = wire.make_feedback(KEYS[signer], eid, (score - 1000) / 1000, created=created)
    assert item.score == score
    data = wire.encode_item(item)
    assert wire.decode_item(data) == item
    flipped = bytearray(data)
    flipped[40] ^= 0x01  # a bit of the experience id: the signature no longer covers it
    with pytest.raises(SignatureError):
        wire.decode_item(bytes(flipped))


# --- Aggregation ------------------------------------------------------------------------------------


def test_one_vote_per_author_the_latest_wins():
    old, new = vote(1, 2000, T0), vote(1, 0, T0 + 1)
    assert fb.latest_votes([old, new]) == {PUBS[1]: new}
    assert fb.latest_votes([new, old]) == {PUBS[1]: new}
    assert fb.aggregate([old, new]) == fb.Aggregate(votes=1, median=-1.0)
    # Same created: the greater item hash wins, in any order.
    a, b = vote(2, 2000, T0, b"a"), vote(2, 0, T0, b"b")
    winner = a if a.item_hash > b.item_hash else b
    assert fb.latest_votes([a, b])[PUBS[2]] == winner == fb.latest_votes([b, a])[PUBS[2]]
    assert fb.supersedes(winner, a if winner is b else b)
    assert not fb.supersedes(winner, winner)


def test_median_across_authors():
    assert fb.aggregate([]) is None
    assert fb.aggregate([vote(0, 1500, T0)]) == fb.Aggregate(1, 0.5)
    votes = [vote(0, 2000, T0), vote(1, 0, T0), vote(2, 1750, T0)]
    assert fb.aggregate(votes) == fb.Aggregate(3, 0.75)
    votes.append(vote(3, 1000, T0))  # even count: the mean of the two middle values
    assert fb.aggregate(votes) == fb.Aggregate(4, 0.375)
    # An author voting many times still counts once: four times -1 from author 4 ...
    spam = [vote(4, 0, T0 + i) for i in range(4)]
    assert fb.aggregate([vote(0, 2000, T0), vote(1, 2000, T0), *spam]).votes == 3
    assert fb.aggregate([vote(0, 2000, T0), vote(1, 2000, T0), *spam]).median == 1.0


scores = st.integers(0, 2000)
vote_lists = st.lists(
    st.builds(vote, st.integers(0, 4), scores, st.integers(T0, T0 + 3), st.binary(max_size=2)),
    max_size=12,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(vote_lists, st.randoms(use_true_random=False))
def test_aggregate_is_order_independent_and_a_median(votes, rnd):
    shuffled = list(votes)
    rnd.shuffle(shuffled)
    agg = fb.aggregate(votes)
    assert fb.aggregate(shuffled) == agg
    current = fb.latest_votes(votes)
    if not current:
        assert agg is None
        return
    assert agg.votes == len(current) == len({v.author for v in votes})
    values = [v.value for v in current.values()]
    assert agg.median == pytest.approx(statistics.median(values), abs=1e-12)
    assert min(values) <= agg.median <= max(values)
    for v in votes:  # every current vote is the greatest of its author's by (created, hash)
        assert (v.created, v.item_hash) <= (current[v.author].created, current[v.author].item_hash)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    median=st.integers(0, 2000).map(lambda s: (s - 1000) / 1000),
    votes=st.integers(1, 10_000),
    weight=st.one_of(st.just(0.0), st.floats(1e-6, 1)),  # no subnormals: they underflow
)
def test_boost_is_damped_bounded_and_signed(median, votes, weight):
    agg = fb.Aggregate(votes, median)
    b = fb.boost(agg, weight)
    assert abs(b) <= weight * abs(median) + 1e-12
    assert abs(b) < weight or weight == 0  # n / (n + 3) < 1: never the whole weight
    assert (b > 0) == (median > 0 and weight > 0) and (b < 0) == (median < 0 and weight > 0)
    more = fb.boost(fb.Aggregate(votes + 1, median), weight)
    assert abs(more) >= abs(b)  # more voters, more say
    assert fb.blend(0.5, agg, weight) == pytest.approx(0.5 + b)
    assert fb.blend(0.5, None, weight) == 0.5 and fb.boost(agg, 0.0) == 0.0


def test_one_vote_moves_a_result_by_a_quarter_of_the_weight():
    assert fb.boost(fb.Aggregate(1, 1.0), 0.1) == pytest.approx(0.025)
    assert fb.boost(fb.Aggregate(3, -1.0), 0.1) == pytest.approx(-0.05)
    assert fb.boost(fb.Aggregate(1000, 1.0), 0.1) < 0.1


def test_rerank_flips_near_equal_results_only():
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    hits = [(a, 0.62), (b, 0.61), (c, 0.40)]
    plain = fb.rerank(hits, {}, 0.1, 3)
    assert [i for i, _, _ in plain] == [a, b, c]
    aggs = {b: fb.Aggregate(1, 1.0), a: fb.Aggregate(1, -1.0), c: fb.Aggregate(50, 1.0)}
    ranked = fb.rerank(hits, aggs, 0.1, 3)
    assert [i for i, _, _ in ranked] == [b, a, c]  # c's unanimous praise cannot beat relevance
    assert ranked[0] == (b, 0.61, pytest.approx(0.61 + 0.025))
    assert [i for i, _, _ in fb.rerank(hits, aggs, 0.0, 3)] == [a, b, c]  # weight 0: off
    assert len(fb.rerank(hits, aggs, 0.1, 2)) == 2


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.1"])
def test_check_weight(bad):
    assert fb.check_weight(0) == 0.0 and fb.check_weight(0.1) == 0.1
    with pytest.raises(fb.FeedbackError):
        fb.check_weight(bad)


# --- Store -----------------------------------------------------------------------------------------


def _fb(signer: int, value: float, created: int, eid: bytes = EID) -> tuple[bytes, wire.Feedback]:
    item = wire.make_feedback(KEYS[signer], eid, value, created=created)
    return wire.encode_item(item), item


def test_store_keeps_the_current_vote_and_the_aggregate(tmp_path):
    with Store(tmp_path / "s") as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        r1, _ = _fb(1, 1.0, T0 + 10)
        r2, _ = _fb(2, -0.5, T0 + 10)
        assert store.put_items([r1, r2, r1]) == [True, True, False]
        assert store.get_feedback_aggregate(EID) == fb.Aggregate(2, 0.25)
        # Author 1 changes its mind: the newer vote replaces the older.
        r1b, _ = _fb(1, -1.0, T0 + 20)
        assert store.put_items([r1b]) == [True]
        assert store.get_feedback_aggregate(EID) == fb.Aggregate(2, -0.75)
        # The older vote arriving late (gossip, sync) changes nothing.
        assert store.put_items([r1]) == [False]
        assert store.get_feedback_aggregate(EID) == fb.Aggregate(2, -0.75)
        votes = {v.author: v for v in store.get_feedback(EID)}
        assert votes[PUBS[1]].raw == r1b and votes[PUBS[1]].score == 0
        # The time index (what sync offers) holds the current votes only.
        by_time = list(store.iter_feedback_by_time())
        assert sorted(v.raw for v in by_time) == sorted([r2, r1b])
        assert [v.created for v in store.iter_feedback_by_time(T0 + 15, T0 + 30)] == [T0 + 20]
        assert store.counts()["fb_by_time"] == store.counts()["feedback"] == 2
        key = EID + PUBS[1]
        assert store.get_raw_items([("feedback", key), ("feedback", EID + PUBS[3])]) == [r1b, None]
        assert store.holds_feedback(EID, PUBS[1], T0 + 20, wire.item_hash(r1b))
        assert store.holds_feedback(EID, PUBS[1], T0 + 10, wire.item_hash(r1))
        assert not store.holds_feedback(EID, PUBS[1], T0 + 21, bytes(32))
        assert not store.holds_feedback(EID, PUBS[3], T0, bytes(32))
        # Votes on an experience this node does not know are kept (it may arrive later).
        other = hashlib.sha256(b"unknown").digest()
        assert store.put_items([_fb(3, 1.0, T0, eid=other)[0]]) == [True]
        assert store.get_feedback_aggregates([other, EID, bytes(32)]) == [
            fb.Aggregate(1, 1.0),
            fb.Aggregate(2, -0.75),
            None,
        ]
    with Store(tmp_path / "s") as store:  # durable
        assert store.get_feedback_aggregate(EID) == fb.Aggregate(2, -0.75)


def test_sync_offers_the_current_votes_and_serves_their_bytes(tmp_path):
    from dsonode.net.sync import StoreView

    space = hashlib.sha256(b"any space").digest()  # votes carry no space: offered in every one
    with Store(tmp_path / "s") as store:
        r1, _ = _fb(1, 1.0, T0 + 10)
        r1b, _ = _fb(1, -1.0, T0 + 20)
        r2, _ = _fb(2, 0.5, T0 + 30)
        assert store.put_items([r1, r1b, r2]) == [True, True, True]
        view = StoreView(store)
        entries = list(view.entries(space, 0, T0 + 1000))
        offered = {h: loc for _, h, loc in entries}
        # Only the current vote of each author: the replaced r1 is not offered.
        assert set(offered) == {wire.item_hash(r1b), wire.item_hash(r2)}
        assert view.raw_items([offered[wire.item_hash(r1b)], None]) == [r1b, None]
        assert view.hashes(space, T0 + 25, T0 + 1000) == {wire.item_hash(r2)}


def test_store_tie_break_on_equal_created_is_deterministic(tmp_path):
    ra, _ = _fb(1, 1.0, T0)
    rb, _ = _fb(1, -1.0, T0)
    winner = max(ra, rb, key=wire.item_hash)
    for order in itertools.permutations([ra, rb]):
        with Store(tmp_path / f"s{order[0] == ra}") as store:
            for raw in order:
                store.put_items([raw])
            assert [v.raw for v in store.get_feedback(EID)] == [winner]


def test_store_verifies_feedback_and_writes_nothing_of_a_bad_batch(tmp_path):
    good, _ = _fb(1, 1.0, T0)
    bad = MALFORMED["wrong signer"][0]
    with Store(tmp_path / "s") as store:
        with pytest.raises(SignatureError):
            store.put_items([good, bad])
        assert store.counts()["feedback"] == 0 and store.get_feedback_aggregate(EID) is None
        with pytest.raises(ClockSkewError):
            store.put_items([_fb(1, 1.0, T0 + 400_000)[0]], now_ms=T0)
        with pytest.raises(StoreError):
            store.get_feedback(b"short")


def _old_schema_store(path) -> None:
    """A schema-1 store as the previous release wrote it: no feedback databases."""
    path.mkdir()
    env = lmdb.open(str(path), max_dbs=16)
    for name in (b"experiences", b"exp_by_time", b"submissions", b"sub_by_time", b"consensus"):
        env.open_db(name)
    env.open_db(b"peers")
    env.open_db(b"reputation")
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", msgpack.packb(1), db=meta)
    env.close()


def test_a_schema_1_store_is_readable_then_migrated(tmp_path):
    path = tmp_path / "s"
    _old_schema_store(path)
    with Store(path, readonly=True) as ro:  # read-only: no feedback, no error
        assert ro.get_feedback(EID) == [] and ro.get_feedback_aggregate(EID) is None
        assert list(ro.iter_feedback_by_time()) == []
    with Store(path) as store:
        assert store.schema_version() == 2
        assert store.put_items([_fb(1, 0.5, T0)[0]]) == [True]
        assert store.get_feedback_aggregate(EID) == fb.Aggregate(1, 0.5)


# --- Socket params ---------------------------------------------------------------------------------


def test_give_feedback_params():
    hex_id = EID.hex()
    assert validate_params("give_feedback", {"id": hex_id, "helpful": True}) == (
        GiveFeedbackParams(EID, 1.0)
    )
    assert validate_params("give_feedback", {"id": hex_id.upper(), "helpful": False}).value == -1
    assert validate_params("give_feedback", {"id": hex_id, "reward_delta": -0.25}).value == -0.25
    assert validate_params("give_feedback", {"id": hex_id, "reward_delta": 1}).value == 1.0
    bad = [
        ({"helpful": True}, "id"),
        ({"id": "xyz", "helpful": True}, "id"),
        ({"id": hex_id}, "helpful"),
        ({"id": hex_id, "helpful": True, "reward_delta": 0.5}, "helpful"),
        ({"id": hex_id, "helpful": 1}, "helpful"),
        ({"id": hex_id, "reward_delta": 1.5}, "reward_delta"),
        ({"id": hex_id, "reward_delta": True}, "reward_delta"),
        ({"id": hex_id, "reward_delta": "0.5"}, "reward_delta"),
        ({"id": hex_id, "helpful": True, "weight": 2}, "weight"),
    ]
    for params, name in bad:
        with pytest.raises(InvalidParams) as info:
            validate_params("give_feedback", params)
        assert info.value.data == {"param": name}, params
