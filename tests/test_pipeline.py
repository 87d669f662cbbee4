"""The gossip validation pipeline (dsonode.net.pipeline): pure, clocks driven by the test."""

from __future__ import annotations

import hashlib
import struct

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import wire
from dsonode.core.constants import MAX_BATCH_BYTES
from dsonode.core.errors import ClockSkewError, CodeLengthError, SchemaError, SignatureError
from dsonode.net.pipeline import PENALTY, Pipeline, PipelineConfig, PipelineError, reason_of

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
T0 = 1_700_000_000_000
SPACE = hashlib.sha256(b"pipeline test space").digest()
CODE = struct.pack("<f", 0.01) + bytes(range(256)) * 3 + bytes(192)
PEER_A = b"peer-a"
PEER_B = b"peer-b"


def exp(text: str, created: int = T0, key=KEY) -> bytes:
    return wire.encode_item(wire.make_experience(key, "ops", text, created=created))


def sub(text: str, created: int = T0) -> bytes:
    eid = wire.experience_id("ops", text)
    return wire.encode_item(wire.make_submission(KEY, eid, SPACE, CODE, created=created))


def forged(text: str) -> bytes:
    """A well-formed experience whose signature is not the author's (last byte flipped)."""
    good = wire.make_experience(KEY, "ops", text, created=T0)
    bad_sig = good.signature[:-1] + bytes([good.signature[-1] ^ 1])
    obj = [1, "experience", good.body(), bad_sig]
    return msgpack.packb(obj, use_bin_type=True)


def run(p: Pipeline, data: bytes, origin: bytes = PEER_A, now_s: float = 0.0):
    return p.process(origin, data, now_ms=T0, now_s=now_s)


def test_a_valid_batch_is_accepted_in_order():
    p = Pipeline()
    raws = [exp("first lesson"), sub("first lesson"), exp("second lesson")]
    out = run(p, wire.encode_batch(raws))
    assert [r for r, _ in out.accepted] == raws
    assert isinstance(out.accepted[1][1], wire.Submission)
    assert not out.rejected and out.penalty == 0
    assert p.accepted_items == 3


def test_envelope_too_big_and_bad_batch_are_rejected_and_penalised():
    p = Pipeline()
    out = run(p, b"\x00" * (MAX_BATCH_BYTES + 1))
    assert out.rejected == {"oversize": 1} and not out.accepted
    out = run(p, b"not msgpack at all")
    assert out.rejected == {"bad_batch": 1}
    # A bare item is not a batch envelope.
    out = run(p, exp("a lesson"))
    assert out.rejected == {"bad_batch": 1}
    assert p.score(PEER_A, 0.0) == pytest.approx(3 * PENALTY["bad_batch"])


def test_one_bad_item_does_not_sink_the_others():
    p = Pipeline()
    good = exp("good lesson")
    out = run(p, wire.encode_batch([forged("forged lesson"), good, b"\x91\x01"]))
    assert [r for r, _ in out.accepted] == [good]
    assert out.rejected == {"signature": 1, "schema": 1}
    assert out.penalty == PENALTY["signature"] + PENALTY["schema"]


def test_clock_skew_uses_the_injected_clock():
    p = Pipeline()
    ahead = exp("from the future", created=T0 + wire.MAX_CLOCK_SKEW_MS + 1)
    just_ok = exp("almost the future", created=T0 + wire.MAX_CLOCK_SKEW_MS)
    out = run(p, wire.encode_batch([ahead, just_ok]))
    assert out.rejected == {"clock_skew": 1}
    assert [r for r, _ in out.accepted] == [just_ok]


def test_duplicates_seen_recently_or_stored_are_dropped_with_little_or_no_penalty():
    stored = {wire.experience_id("ops", "already stored")}
    p = Pipeline(is_stored=lambda item: getattr(item, "id", None) in stored)
    a = exp("lesson a")
    out = run(p, wire.encode_batch([a, a]))
    assert len(out.accepted) == 1 and out.rejected == {"duplicate": 1}
    out = run(p, wire.encode_batch([a]), origin=PEER_B)  # the same item via another path
    assert not out.accepted and out.rejected == {"duplicate": 1}
    out = run(p, wire.encode_batch([exp("already stored")]))
    assert not out.accepted and out.rejected == {"stored": 1}
    # A duplicate costs its origin a little (a replay), an already stored item nothing.
    assert p.score(PEER_A, 0.0) == pytest.approx(PENALTY["duplicate"])
    assert p.score(PEER_B, 0.0) == pytest.approx(PENALTY["duplicate"])


def test_seen_cache_is_bounded_lru():
    p = Pipeline(PipelineConfig(seen_capacity=2))
    a, b, c = exp("a"), exp("b"), exp("c")
    run(p, wire.encode_batch([a, b]))
    assert run(p, wire.encode_batch([a])).rejected == {"duplicate": 1}  # a is now newest
    run(p, wire.encode_batch([c]))  # evicts b, the least recently seen
    assert len(run(p, wire.encode_batch([b])).accepted) == 1
    # ... and re-remembering b evicted a (seen order was c, b).
    assert len(run(p, wire.encode_batch([a])).accepted) == 1


def test_remember_marks_own_items_as_seen():
    p = Pipeline()
    a = exp("my own lesson")
    p.remember(a)
    assert run(p, wire.encode_batch([a])).rejected == {"duplicate": 1}


def test_per_peer_rate_is_a_token_bucket_of_items():
    p = Pipeline(PipelineConfig(peer_items_per_s=2.0, peer_item_burst=3))
    raws = [exp(f"lesson {i}") for i in range(5)]
    out = run(p, wire.encode_batch(raws), now_s=0.0)
    assert len(out.accepted) == 3 and out.rejected == {"rate": 2}
    # Another origin has its own bucket.
    out = run(p, wire.encode_batch([exp("other origin")]), origin=PEER_B, now_s=0.0)
    assert len(out.accepted) == 1
    # One second later peer A has 2 new tokens.
    more = [exp(f"later {i}") for i in range(3)]
    out = run(p, wire.encode_batch(more), now_s=1.0)
    assert len(out.accepted) == 2 and out.rejected == {"rate": 1}


def test_penalty_decays_with_half_life():
    p = Pipeline(PipelineConfig(penalty_half_life_s=10.0, graylist_threshold=1000))
    run(p, wire.encode_batch([forged("x")]), now_s=0.0)
    assert p.score(PEER_A, 0.0) == pytest.approx(PENALTY["signature"])
    assert p.score(PEER_A, 10.0) == pytest.approx(PENALTY["signature"] / 2)
    assert p.score(PEER_A, 30.0) == pytest.approx(PENALTY["signature"] / 8)


def test_graylist_after_threshold_drops_unread_then_expires():
    cfg = PipelineConfig(graylist_threshold=50.0, graylist_s=100.0, penalty_half_life_s=60.0)
    p = Pipeline(cfg)
    out = run(p, wire.encode_batch([forged("f1")]), now_s=0.0)
    assert not out.graylisted_now  # 25 < 50
    out = run(p, wire.encode_batch([forged("f2"), forged("f3")]), now_s=1.0)
    assert out.graylisted_now and p.is_graylisted(PEER_A, 1.0)
    assert p.graylisted(1.0) == [PEER_A]
    # Even a perfectly valid message is now dropped unread.
    good = exp("valid but from a graylisted peer")
    out = run(p, wire.encode_batch([good]), now_s=2.0)
    assert out.dropped_graylisted and not out.accepted and not out.rejected
    assert p.dropped_graylisted == 1
    # Other peers are unaffected.
    assert len(run(p, wire.encode_batch([good]), origin=PEER_B, now_s=2.0).accepted) == 1
    # After graylist_s the peer gets a fresh start.
    assert not p.is_graylisted(PEER_A, 101.5)
    out = run(p, wire.encode_batch([exp("after the graylist")]), now_s=101.5)
    assert len(out.accepted) == 1
    assert p.score(PEER_A, 101.5) == 0.0


def test_an_honest_republish_stays_clear_of_the_graylist_but_a_replayer_does_not():
    p = Pipeline()  # default threshold and weights
    # An honest node restarting re-publishes its repaired items (at most 256) once.
    mine = [exp(f"my lesson {i}") for i in range(256)]
    for start in range(0, 256, 128):
        run(p, wire.encode_batch(mine[start : start + 128]), now_s=0.0)
    for start in range(0, 256, 128):
        run(p, wire.encode_batch(mine[start : start + 128]), now_s=1.0)
    assert not p.is_graylisted(PEER_A, 1.0)
    assert p.peer_stats(1.0)[PEER_A]["rejected"] == {"duplicate": 256}
    # A replayer sends the same items again and again: graylisted within seconds.
    replays = 0
    for i in range(100):
        out = run(p, wire.encode_batch(mine[:128]), origin=PEER_B, now_s=2.0 + i * 0.1)
        if out.dropped_graylisted:
            break
        replays += 128
    assert p.is_graylisted(PEER_B, 12.0)
    assert 1_500 <= replays <= 2_500  # about threshold / weight duplicates


def test_reason_of_names_the_most_specific_class():
    assert reason_of(CodeLengthError("x")) == "code_length"
    assert reason_of(SchemaError("x")) == "schema"
    assert reason_of(SignatureError("x")) == "signature"
    assert reason_of(ClockSkewError("x")) == "clock_skew"


def test_bad_config_is_refused():
    with pytest.raises(PipelineError):
        PipelineConfig(seen_capacity=0)
    with pytest.raises(PipelineError):
        PipelineConfig(penalty_half_life_s=0)


def test_peer_table_is_bounded():
    p = Pipeline(PipelineConfig(max_tracked_peers=3))
    for i in range(10):
        run(p, wire.encode_batch([exp(f"peer {i}")]), origin=bytes([i]))
    assert len(p.peer_stats(0.0)) == 3
