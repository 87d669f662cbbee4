"""Admission (ARCHITECTURE.md "Trust", PROTOCOL.md 18): stamps and per-author quotas, checked
by a real `Library` over a real LMDB store before anything is stored or embedded.

- a stamp of the network's difficulty admits a new identity's experience; a missing stamp,
  one too cheap, one minted for another experience or another author (replayed) do not;
- an author with standing needs no stamp and gets `standing_factor` times the quota;
- the live rate quota drops what is over it; catch-up sync is bounded by stored bytes only;
- the stored-bytes quota counts signed bytes per author, and `forget` gives them back.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import stamp, wire
from dsonode.core.quota import HOUR_MS, Bucket, QuotaRules, take
from dsonode.identity import public_key_bytes
from dsonode.library import ConsensusRules, Library, LightEmbedder, TrustSettings
from dsonode.store import CodeIndex, Store

SPACE = "ef" * 32
BITS = 10  # cheap enough for a test (about 1,000 hashes a stamp)


def _library(path, **kw) -> Library:
    store = Store(path, space_id=SPACE)
    return Library(
        store=store,
        index=CodeIndex(),
        embedder=LightEmbedder(SPACE, "test"),
        key=Ed25519PrivateKey.generate(),
        rules=ConsensusRules(quorum=1, method="median", committee=None),
        trust=TrustSettings(**kw),
    )


@pytest.fixture
def lib(tmp_path):
    lib = _library(
        tmp_path / "s", stamp_bits=BITS, quota=QuotaRules(items_per_hour=5, max_bytes=4096)
    )
    yield lib
    lib.store.close()


def _exp(key, text: str, nonce: str | None = None, bits: int = BITS) -> wire.Experience:
    if nonce is None:
        nonce = stamp.mint(wire.experience_id("ops", text), public_key_bytes(key), bits)
    return wire.make_experience(key, "ops", text, provenance=[(stamp.STAMP_KEY, nonce)])


def _offer(lib: Library, *items: wire.Item, live: bool = True) -> int:
    report: dict[str, int] = {}
    lib.accept_items([(wire.encode_item(i), i) for i in items], report, live=live)
    return report.get("stored", 0)


def test_stamp_rules_are_the_documented_hash():
    exp_id, author = bytes(range(32)), bytes(range(32, 64))
    nonce = stamp.mint(exp_id, author, 12)
    digest = hashlib.sha256(b"dso/stamp/1\x00" + exp_id + author + nonce.encode()).digest()
    assert int.from_bytes(digest, "big") >> (256 - 12) == 0
    assert stamp.work_bits(exp_id, author, nonce) >= 12
    for bad in ("", "G1", "00000000000000000", "A"):  # 1..16 lowercase hex only
        assert stamp.work_bits(exp_id, author, bad) == 0
    with pytest.raises(stamp.StampError):
        stamp.mint(exp_id, author, stamp.MAX_BITS + 1)


def test_stamps_valid_too_cheap_missing_and_replayed(lib):
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert _offer(lib, _exp(key, "Stamped lesson.")) == 1
    assert _offer(lib, wire.make_experience(key, "ops", "No stamp.")) == 0
    cheap = next(  # a nonce with fewer bits than the difficulty
        n
        for n in (f"{i:x}" for i in range(10_000))
        if stamp.work_bits(wire.experience_id("ops", "Cheap."), public_key_bytes(key), n) < BITS
    )
    assert _offer(lib, _exp(key, "Cheap.", nonce=cheap)) == 0
    good = _exp(key, "Original text.")
    moved = _exp(key, "Another text.", nonce=stamp.stamp_of(good.provenance))
    stolen = _exp(other, "Original text.", nonce=stamp.stamp_of(good.provenance))
    assert _offer(lib, moved) == 0 and _offer(lib, stolen) == 0
    counters = lib.counters()
    assert counters["stamp_missing"] == 1
    assert counters["stamp_too_cheap"] == 3  # cheap, moved to another text, another author


def test_standing_needs_no_stamp_and_gets_a_larger_quota(tmp_path):
    friend = Ed25519PrivateKey.generate()
    lib = _library(
        tmp_path / "s",
        stamp_bits=BITS,
        allow=frozenset({public_key_bytes(friend)}),
        quota=QuotaRules(items_per_hour=2, max_bytes=1 << 20, standing_factor=3),
    )
    texts = [f"Friend lesson {i}." for i in range(8)]
    stored = _offer(lib, *(wire.make_experience(friend, "ops", t) for t in texts))
    assert stored == 6 and lib.counters()["over_quota_rate"] == 2  # 2 x 3 an hour
    lib.store.close()


def test_rate_quota_is_live_only_and_bytes_quota_always(lib):
    key = Ed25519PrivateKey.generate()
    items = [_exp(key, f"Lesson {i}.") for i in range(8)]
    assert _offer(lib, *items[:7]) == 5  # a fresh bucket of 5
    assert lib.counters()["over_quota_rate"] == 2
    assert _offer(lib, items[5], items[6], live=False) == 2  # catch-up: no rate quota
    used = lib.store.author_bytes(public_key_bytes(key))
    assert used == sum(len(wire.encode_item(i)) for i in items[:7])
    big = [_exp(key, f"{'x' * 900} {i}") for i in range(5)]  # ~1 KiB each, 4 KiB quota
    stored = _offer(lib, *big, live=False)
    assert lib.store.author_bytes(public_key_bytes(key)) <= 4096
    assert stored == (4096 - used) // len(wire.encode_item(big[0]))
    assert lib.counters()["over_quota_bytes"] == 5 - stored
    full = lib.store.author_bytes(public_key_bytes(key))
    lib.forget([items[0].id])
    assert lib.store.author_bytes(public_key_bytes(key)) == full - len(wire.encode_item(items[0]))
    # a duplicate costs nothing: offered again, it takes no token and no bytes
    before = lib.counters().get("over_quota_rate", 0)
    _offer(lib, items[1])
    assert lib.counters().get("over_quota_rate", 0) == before


def test_token_bucket_refills_by_the_hour():
    ok, b = take(None, 0, 2.0)
    ok2, b = take(b, 0, 2.0)
    ok3, b = take(b, 0, 2.0)
    assert (ok, ok2, ok3) == (True, True, False)
    assert take(b, HOUR_MS // 2, 2.0)[0] is True  # half an hour: one token back
    assert take(Bucket(0.0, 0), HOUR_MS * 10, 2.0)[1].tokens == 1.0  # capped at 2, minus 1


def test_own_experiences_are_stamped_for_peers(lib):
    pairs = lib.stamp_provenance("ops", "Our lesson.", [("source", "x")])
    assert pairs[0] == ("source", "x") and pairs[1][0] == stamp.STAMP_KEY
    exp = wire.make_experience(lib.key, "ops", "Our lesson.", provenance=pairs)
    assert stamp.stamp_bits(exp.id, exp.author, exp.provenance) >= BITS
    full = [(f"k{i}", "v") for i in range(wire.MAX_PROVENANCE)]
    assert lib.stamp_provenance("ops", "Our lesson.", full) == full  # no room: unstamped
