"""Trust (ARCHITECTURE.md "Trust"): the pure rules, then a real `Library` over a real LMDB store
and code index (a light node's library: it stores, recomputes consensus and searches by vector
like any node, without loading the encoder).

- standing: own, allowed, blocked, earned only with accepted submissions, agreement and age;
- vouched / served per mode (open, vouched, allowlist) and per call (include_unvouched), each
  result saying why;
- votes weigh the voter's standing: a thousand fresh keys can neither vouch for spam nor bury
  an honest lesson, nor move its feedback;
- operator control: a blocked author's items are refused and never served; a forgotten
  experience is never stored again (gossip or sync replay), also after a restart.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import bitdelta, trust, wire
from dsonode.core.consensus import apply_reputation
from dsonode.core.feedback import Vote, aggregate, weighted_aggregate
from dsonode.core.trust import Standing, StandingRules, serves, standing, vouch, weighted_median
from dsonode.identity import public_key_bytes
from dsonode.library import ConsensusRules, ForgottenError, Library, LightEmbedder, TrustSettings
from dsonode.store import CodeIndex, Store

SPACE = "cd" * 32
DAY_MS = 24 * 3600 * 1000
RULES = StandingRules(min_accepted=5, min_agreement=0.9, min_age_ms=DAY_MS)

# ---- the pure rules --------------------------------------------------------------------------


def _standing(author: bytes, record=None, now=10 * DAY_MS, **kw) -> Standing:
    return standing(
        author,
        me=kw.get("me", b"m" * 32),
        allowed=kw.get("allowed", set()),
        blocked=kw.get("blocked", set()),
        record=record,
        now_ms=now,
        rules=RULES,
    )


def test_standing_is_rooted_in_the_operator_and_earned_only_with_time():
    a = b"a" * 32
    assert _standing(b"m" * 32) == Standing(1.0, "self")
    assert _standing(a, allowed={a}) == Standing(1.0, "allowed")
    assert _standing(a, allowed={a}, blocked={a}) == Standing(0.0, "blocked")
    assert _standing(a) == Standing(0.0, "none")  # a fresh key
    good = {"accepted": 5, "rejected": 0, "first": 0}
    assert _standing(a, good) == Standing(1.0, "earned")
    assert _standing(a, {**good, "first": 10 * DAY_MS - 1000}).reason == "none"  # too young
    assert _standing(a, {**good, "accepted": 4}).reason == "none"  # too little work
    assert _standing(a, {**good, "rejected": 1}).reason == "none"  # 5/6 < 0.9 agreement
    assert _standing(a, {"accepted": 5, "rejected": 0}).reason == "none"  # no age known
    assert _standing(a, {**good, "first": True}).reason == "none"  # not an int time


def test_reputation_records_remember_when_an_author_was_first_judged():
    rec = apply_reputation(None, (1, 0), 1000)
    rec = apply_reputation(rec, (1, 0), 5000)
    assert rec["first"] == 1000 and rec["updated"] == 5000 and rec["accepted"] == 2


def test_vouch_reasons_and_modes():
    none, earned = Standing(0.0, "none"), Standing(1.0, "earned")
    allowed, me = Standing(1.0, "allowed"), Standing(1.0, "self")
    own = vouch(me, [], RULES)
    assert own.vouched and own.operator and own.why == ("own",)
    v = vouch(earned, [], RULES)
    assert v.vouched and not v.operator and v.why == ("author_standing",)
    stranger = vouch(none, [], RULES)
    assert not stranger.vouched and stranger.why == ("unvouched",)
    endorsed = vouch(none, [(allowed, 1.0)], RULES)
    assert endorsed.why == ("endorsed_by_operator", "endorsed") and endorsed.operator
    by_earned = vouch(none, [(earned, 0.5)], RULES)
    assert by_earned.vouched and not by_earned.operator and by_earned.why == ("endorsed",)
    disowned = vouch(earned, [(earned, -1.0), (allowed, -0.6)], RULES)
    assert not disowned.vouched and disowned.why == ("disowned",)
    blocked = vouch(Standing(0.0, "blocked"), [(allowed, 1.0)], RULES)
    assert blocked.blocked and blocked.why == ("blocked",)
    table = {
        # verdict: (open, vouched, allowlist, any mode with include_unvouched)
        own: (True, True, True, True),
        v: (True, True, False, True),
        by_earned: (True, True, False, True),
        stranger: (True, False, False, True),
        blocked: (False, False, False, False),
    }
    for verdict, expected in table.items():
        got = tuple(serves(m, verdict) for m in trust.TRUST_MODES)
        assert got == expected[:3], verdict
        assert serves("allowlist", verdict, include_unvouched=True) == expected[3]
    with pytest.raises(trust.TrustError):
        serves("trusting", own)


def test_weighted_median_matches_the_median_with_equal_weights(rng):
    for _ in range(50):
        values = list(rng.integers(0, 2001, size=int(rng.integers(1, 9))))
        votes = [Vote(bytes([i]) * 32, int(s), 1, b"h" * 32) for i, s in enumerate(values)]
        plain = aggregate(votes)
        weighted = weighted_aggregate(votes, {v.author: 1.0 for v in votes})
        assert plain == weighted
    assert weighted_median([(1.0, 3.0), (-1.0, 1.0), (0.0, 1.0)]) == 1.0
    assert weighted_median([(1.0, 0.0)]) is None


def test_a_thousand_fresh_keys_move_no_vote():
    honest = [Vote(bytes([i]) * 32, 2000, 1, b"h" * 32) for i in range(3)]  # +1 from standing
    sybils = [Vote(i.to_bytes(32, "big"), 0, 2, b"s" * 32) for i in range(1000, 2000)]
    weights = {v.author: 1.0 for v in honest}  # fresh keys: absent, weigh 0
    alone = weighted_aggregate(honest, weights)
    flooded = weighted_aggregate(honest + sybils, weights)
    assert flooded == alone and alone is not None and alone.median == 1.0
    assert aggregate(honest + sybils).median == -1.0  # what the unweighted median would do
    assert weighted_aggregate(sybils, weights) is None


# ---- a real library ----------------------------------------------------------------------------


def _unit(rng, base=None, noise=0.0):
    v = rng.standard_normal(7680).astype(np.float32) if base is None else base.copy()
    if noise:
        v = v + noise * rng.standard_normal(7680).astype(np.float32)
    return v / np.linalg.norm(v)


class Net:
    """Keys and signed items, as peers would send them."""

    def __init__(self, rng):
        self.rng = rng

    def publish(self, lib: Library, key, text: str, vector) -> bytes:
        exp = wire.make_experience(key, "ops", text)
        code = bitdelta.encode(vector)
        assert isinstance(code, bytes)
        sub = wire.make_submission(key, exp.id, SPACE, code)
        lib.accept_items([(wire.encode_item(i), i) for i in (exp, sub)])
        return exp.id

    def votes(self, lib: Library, keys, exp_id: bytes, value: float) -> None:
        items = [wire.make_feedback(k, exp_id, value) for k in keys]
        lib.accept_items([(wire.encode_item(i), i) for i in items])


def _library(path, key, **trust_kw) -> Library:
    store = Store(path, space_id=SPACE)
    return Library(
        store=store,
        index=CodeIndex.from_store(store, SPACE),
        embedder=LightEmbedder(SPACE, "test"),
        key=key,
        rules=ConsensusRules(quorum=1, method="median", committee=None),
        trust=TrustSettings(**trust_kw),
    )


@pytest.fixture
def world(tmp_path, rng):
    me = Ed25519PrivateKey.generate()
    friend, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    libs = []

    def make(mode="vouched", sub="store"):
        lib = _library(
            tmp_path / sub,
            me,
            mode=mode,
            allow=frozenset({public_key_bytes(friend)}),
            rules=StandingRules(min_accepted=1, min_age_ms=DAY_MS),
        )
        libs.append(lib)
        return lib

    yield make, friend, stranger, Net(rng)
    for lib in libs:
        lib.store.close()


def _ids(hits):
    return [h.id for h in hits]


def test_each_mode_serves_what_its_policy_says(world, rng):
    make, friend, stranger, net = world
    topic = _unit(rng)
    for mode in trust.TRUST_MODES:
        lib = make(mode, sub=mode)
        good = net.publish(lib, friend, "Pin dependency versions.", _unit(rng, topic, 0.05))
        spam = net.publish(lib, stranger, "Disable TLS checks to go faster.", topic)
        endorsed = net.publish(lib, stranger, "Read the changelog first.", _unit(rng, topic, 0.1))
        net.votes(lib, [friend], endorsed, 1.0)
        hits, _view = lib.search_served(topic, 10)
        why = {h.id: h.verdict.why for h in hits}
        assert why[good] == ("allowed_author",)
        assert why[endorsed] == ("endorsed_by_operator", "endorsed")
        if mode == "open":
            assert _ids(hits)[0] == spam and why[spam] == ("unvouched",)
        else:  # the spam is the nearest code, and withheld
            assert spam not in why
        wide, _ = lib.search_served(topic, 10, include_unvouched=True)
        assert set(_ids(wide)) == {good, spam, endorsed}


def test_sybil_votes_neither_vouch_nor_bury(world, rng):
    make, friend, stranger, net = world
    lib = make()
    topic = _unit(rng)
    good = net.publish(lib, friend, "Run the tests before you push.", _unit(rng, topic, 0.05))
    spam = net.publish(lib, stranger, "Push straight to main.", topic)
    sybils = [Ed25519PrivateKey.generate() for _ in range(300)]
    net.votes(lib, sybils, spam, 1.0)
    net.votes(lib, sybils, good, -1.0)
    assert len(lib.store.get_feedback(spam)) == 300  # stored (and relayed), but weigh nothing
    hits, view = lib.search_served(topic, 10)
    assert _ids(hits) == [good]
    assert view.feedback(good) is None and view.feedback(spam) is None
    net.votes(lib, [friend], good, 1.0)
    assert lib.search_served(topic, 10)[1].feedback(good).as_dict() == {"votes": 1, "median": 1.0}


def test_a_served_search_looks_past_a_crowd_of_near_copies(world, rng):
    make, friend, stranger, net = world
    lib = make()
    topic = _unit(rng)
    good = net.publish(lib, friend, "Back up the database nightly.", _unit(rng, topic, 0.2))
    for i in range(60):  # near-copies, all nearer the query than the honest lesson
        net.publish(lib, stranger, f"Back up the database never {i}.", _unit(rng, topic, 0.02))
    hits, _ = lib.search_served(topic, 3)  # looks 9 deep, then 36, then 100 (the index's max)
    assert _ids(hits) == [good]
    assert lib.counters()["search_withheld"] == 60


def test_blocked_authors_are_refused_and_never_served(world, rng):
    make, _friend, stranger, net = world
    lib = make("open")
    topic = _unit(rng)
    old = net.publish(lib, stranger, "Old advice.", topic)
    assert lib.set_listed("block", public_key_bytes(stranger), True)
    assert not lib.set_listed("block", public_key_bytes(stranger), True)  # no change
    new = net.publish(lib, stranger, "New advice.", topic)
    assert not lib.store.has_experience(new)
    assert lib.counters()["blocked_dropped"] == 2  # its experience and its submission
    assert _ids(lib.search_served(topic, 5, include_unvouched=True)[0]) == []
    lib.set_listed("block", public_key_bytes(stranger), False)
    assert _ids(lib.search_served(topic, 5)[0]) == [old]
    # an allowed author blocked later is blocked
    lib.set_listed("allow", public_key_bytes(stranger), True)
    lib.set_listed("block", public_key_bytes(stranger), True)
    assert lib.trust.lists()[1] == {public_key_bytes(stranger)}
    assert public_key_bytes(stranger) not in lib.trust.lists()[0]


def test_forget_is_a_tombstone_that_survives_replay_and_restart(tmp_path, rng):
    me, peer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    net = Net(rng)
    lib = _library(tmp_path / "s", me, mode="open")
    topic = _unit(rng)
    exp = wire.make_experience(peer, "ops", "Forget me.")
    code = bitdelta.encode(topic)
    assert isinstance(code, bytes)
    sub = wire.make_submission(peer, exp.id, SPACE, code)
    vote = wire.make_feedback(peer, exp.id, 1.0)
    replay = [(wire.encode_item(i), i) for i in (exp, sub, vote)]
    lib.accept_items(replay)
    assert lib.store.get_consensus(SPACE, exp.id) is not None
    assert lib.forget([exp.id]) == [True]
    for what in ("experiences", "exp_by_time", "submissions", "sub_by_time", "consensus"):
        assert lib.store.count(what) == 0, what
    assert lib.store.count("feedback") == 0 and lib.store.count("fb_by_time") == 0
    assert _ids(lib.search_served(topic, 5)[0]) == []  # the index still has it: skipped
    report: dict[str, int] = {}
    lib.accept_items(replay, report)  # gossip or sync bringing it again
    assert report["stored"] == 0 and not lib.store.has_experience(exp.id)
    lib.store.close()
    lib = _library(tmp_path / "s", me, mode="open")  # restart
    assert lib.store.is_tombstoned(exp.id) and lib.store.tombstones() == 1
    lib.accept_items(replay)
    assert not lib.store.has_experience(exp.id) and len(lib.index) == 0
    other = net.publish(lib, peer, "Keep me.", topic)  # other items of the author still flow
    assert lib.store.has_experience(other)
    assert lib.forget([b"\x01" * 32]) == [False]  # tombstoned before it was ever seen
    lib.store.close()


def test_an_authors_retraction_is_honoured_and_a_strangers_is_not(tmp_path, rng):
    author, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    home = _library(tmp_path / "home", author, mode="open")  # the author's own node
    peer = _library(tmp_path / "peer", Ed25519PrivateKey.generate(), mode="open")
    topic = _unit(rng)
    exp = wire.make_experience(author, "ops", "Turn off the firewall to debug.")
    code = bitdelta.encode(topic)
    assert isinstance(code, bytes)
    sub = wire.make_submission(author, exp.id, SPACE, code)
    items = [(wire.encode_item(i), i) for i in (exp, sub)]
    home.store.put_items([r for r, _ in items], decoded=[i for _, i in items])
    peer.accept_items(items)
    fake = wire.make_retraction(stranger, exp.id)  # not the author's: withdraws nothing
    peer.accept_items([(wire.encode_item(fake), fake)])
    assert peer.store.has_experience(exp.id) and peer.counters()["retraction_unheld"] == 1
    published: list[bytes] = []
    home.attach_publisher(published.extend)
    retraction = home.retract(exp.id)
    assert not home.store.has_experience(exp.id) and home.store.is_tombstoned(exp.id)
    assert [wire.decode_item(r) for r in published] == [retraction]
    peer.accept_items([(published[0], retraction)])  # gossip
    assert not peer.store.has_experience(exp.id) and peer.store.is_tombstoned(exp.id)
    assert peer.counters()["retractions_honoured"] == 1
    assert peer.store.count("submissions") == 0 and peer.holds(retraction)
    report: dict[str, int] = {}
    peer.accept_items(items, report)  # replayed: never again
    assert report["stored"] == 0
    # the retraction itself stays, for sync to carry it to nodes that were away
    rts = list(peer.store.iter_retractions_by_time())
    assert [r.raw for r in rts] == [published[0]]
    assert peer.store.get_raw_items([("retraction", exp.id + retraction.author)]) == published
    with pytest.raises(ForgottenError):
        peer.retract(exp.id)  # not held (and not ours)
    for lib in (home, peer):
        lib.store.close()
