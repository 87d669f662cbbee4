"""dsonode.core.sync: messages, framing, limits, fuzzing and reconciliation on generated sets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsonode.core import errors
from dsonode.core import sync as s
from dsonode.core.errors import (
    FrameError,
    KindError,
    NonCanonicalError,
    OversizeError,
    SchemaError,
    SyncError,
    VersionError,
    WireError,
)
from dsonode.core.wire import decode_item

SPACE = hashlib.sha256(b"test space").digest()


def h(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def sample_messages() -> list:
    return [
        s.InventoryRequest(SPACE, 0, 2**53, s.bucket_ms_for(0, 2**53)),
        s.InventoryRequest(SPACE, 5, 6, 1),
        s.Inventory(()),
        s.Inventory(tuple(s.Bucket(i * 10, i + 1, h(i)) for i in range(s.MAX_BUCKETS))),
        s.HashesRequest(SPACE, 0, 1000, b""),
        s.HashesRequest(SPACE, 0, 1000, h(1)),
        s.Hashes(()),
        s.Hashes(tuple(sorted(h(i) for i in range(s.MAX_HASHES))), True),
        s.ItemsRequest(tuple(sorted(h(i) for i in range(s.MAX_ITEMS)))),
        s.Items((), 3),
        s.Items((b"\x01" * 4096,) * 15, 15),
    ]


def test_round_trip_every_message_and_frame():
    for msg in sample_messages():
        data = s.encode_message(msg)
        assert len(data) <= s.MAX_FRAME_BYTES
        assert s.decode_message(data) == msg
        frame = s.encode_frame(data)
        reader = s.FrameReader()
        # byte-wise feeding as a slow peer would do it
        for i in range(len(frame)):
            assert reader.next_frame() is None
            reader.feed(frame[i : i + 1])
        assert reader.next_frame() == data
        assert reader.buffered == 0


def test_the_biggest_messages_fit_in_one_frame():
    assert len(s.encode_message(sample_messages()[3])) < s.MAX_FRAME_BYTES
    assert len(s.encode_message(sample_messages()[7])) < s.MAX_FRAME_BYTES
    with pytest.raises(OversizeError):
        s.encode_message(s.Items((b"\x01" * 4096,) * 16, 16))


def test_constructors_refuse_out_of_bounds_values():
    bad = [
        lambda: s.InventoryRequest(SPACE, 10, 10, 1),  # empty window
        lambda: s.InventoryRequest(SPACE, 0, 1025, 1),  # 1025 buckets
        lambda: s.InventoryRequest(SPACE, 0, 2**53 + 1, 2**53),  # beyond the time range
        lambda: s.InventoryRequest(SPACE[:31], 0, 10, 1),
        lambda: s.InventoryRequest(SPACE, 0, 10, 0),
        lambda: s.Inventory(((0, 0, h(0)),)),  # empty bucket listed
        lambda: s.Inventory(((5, 1, h(0)), (5, 1, h(1)))),  # duplicate start
        lambda: s.Inventory(tuple((i, 1, h(i)) for i in range(s.MAX_BUCKETS + 1))),
        lambda: s.HashesRequest(SPACE, 0, 10, b"x"),
        lambda: s.Hashes((max(h(1), h(2)), min(h(1), h(2)))),
        lambda: s.Hashes((), True),
        lambda: s.Hashes(tuple(sorted(h(i) for i in range(s.MAX_HASHES + 1)))),
        lambda: s.ItemsRequest(()),
        lambda: s.ItemsRequest((h(1), h(1))),
        lambda: s.Items((b"",), 1),
        lambda: s.Items((b"x", b"y"), 1),
        lambda: s.Items((b"x" * 4097,), 1),
    ]
    for make in bad:
        with pytest.raises(WireError):
            make()


def test_decoder_reports_the_first_failing_step():
    pack = s._pack
    good = s.encode_message(s.ItemsRequest((h(1),)))
    cases = [
        (b"\x00" * (s.MAX_FRAME_BYTES + 1), OversizeError),
        (good[:-1], errors.MalformedError),
        (good + b"\x00", errors.MalformedError),
        (pack([2, "sync/items-request", [h(1)]]), VersionError),
        (pack([1, "sync/nope", [h(1)]]), KindError),
        (pack([1, "batch", [h(1)]]), KindError),  # a gossip batch is not a sync message
        (pack([1, "sync/items-request", [h(1)], 0]), SchemaError),
        (pack([1, "sync/items-request", [1.5]]), SchemaError),
        (pack([1, "sync/items-request", {"a": 1}]), SchemaError),
        (b"\x93\xcc\x01" + good[2:], NonCanonicalError),
        (pack([1, "sync/items-request", [max(h(1), h(2)), min(h(1), h(2))]]), NonCanonicalError),
        (pack([1, "sync/hashes", [], 2]), SchemaError),
        (pack([1, "sync/inventory-request", SPACE, 0, 2000, 1]), OversizeError),
        (pack([1, "sync/inventory", [[0, 1, h(0)]] * 2]), NonCanonicalError),
        (pack([1, "sync/items", [b"x"] * 300, 300]), OversizeError),
    ]
    for data, cls in cases:
        with pytest.raises(WireError) as info:
            s.decode_message(data)
        assert type(info.value) is cls, (data[:20], info.value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzzed_bytes_raise_only_typed_errors(data):
    with contextlib.suppress(WireError):
        s.decode_message(data)


def test_mutated_messages_raise_only_typed_errors():
    rng = random.Random(5)
    seeds = [s.encode_message(m) for m in sample_messages() if len(s.encode_message(m)) < 5000]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.6:
                data[pos] = rng.randrange(256)
            elif op < 0.8:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        try:
            msg = s.decode_message(bytes(data))
        except WireError:
            continue
        assert s.encode_message(msg) == bytes(data)  # accepted means canonical


def test_frame_header_rules():
    assert s.parse_frame_header(b"") is None
    assert s.parse_frame_header(b"\x80") is None
    assert s.parse_frame_header(b"\x01") == (1, 1)
    assert s.parse_frame_header(b"\x80\x80\x04") == (65536, 3)
    for bad in (b"\x00", b"\x80\x00", b"\x81\x80\x00", b"\x81\x80\x04", b"\xff\xff\xff\x01"):
        with pytest.raises(FrameError):
            s.parse_frame_header(bad)
    with pytest.raises(FrameError):
        s.encode_frame(b"")
    with pytest.raises(FrameError):
        s.encode_frame(b"x" * (s.MAX_FRAME_BYTES + 1))
    reader = s.FrameReader()
    with pytest.raises(FrameError):
        reader.feed(b"x" * (s.MAX_FRAME_BYTES + 4))
    assert issubclass(FrameError, SyncError) and issubclass(SyncError, WireError)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=2000), min_size=1, max_size=8), st.integers(1, 97))
def test_frames_split_anywhere_come_back_whole(payloads, chunk):
    stream = b"".join(s.encode_frame(p) for p in payloads)
    reader, out, pos = s.FrameReader(), [], 0
    while pos < len(stream):
        n = min(chunk, reader.wanted())
        reader.feed(stream[pos : pos + n])
        pos += n
        while (frame := reader.next_frame()) is not None:
            out.append(frame)
    assert out == payloads


# --- Reconciliation on generated sets ---------------------------------------------------------


class Side:
    """One node's items as (created, hash) -> raw bytes; the raw item is any unique bytes."""

    def __init__(self, items: dict[bytes, tuple[int, bytes]]) -> None:
        self.items = items  # hash -> (created, raw)

    def inventory(self, req: s.InventoryRequest) -> s.Inventory:
        return s.build_inventory(req, ((c, hh) for hh, (c, _) in self.items.items()))

    def hashes(self, space: bytes, start: int, end: int) -> set[bytes]:
        return {hh for hh, (c, _) in self.items.items() if start <= c < end}

    def answer(self, req):
        """A reference responder over plain dicts (the net side does the same over LMDB)."""
        if isinstance(req, s.InventoryRequest):
            return self.inventory(req)
        if isinstance(req, s.HashesRequest):
            all_ = sorted(hh for hh in self.hashes(req.space_id, req.start_ms, req.end_ms)
                          if hh > req.after)  # fmt: skip
            page = all_[: s.MAX_HASHES]
            return s.Hashes(tuple(page), len(all_) > len(page))
        raws = [self.items[hh][1] if hh in self.items else None for hh in req.hashes]
        return s.fit_items(raws, len(req.hashes))


def make_items(rng: random.Random, n: int, t_max: int, size=lambda r: 40) -> dict:
    out = {}
    for i in range(n):
        raw = rng.randbytes(8) + i.to_bytes(4, "big") + b"\x00" * size(rng)
        out[hashlib.sha256(raw).digest()] = (rng.randrange(t_max), raw)
    return out


def run_sync(a: Side, b: Side, until: int, wire_round_trip: bool = True):
    """b pulls from a; returns the session and the items b received."""
    session = s.SyncSession(SPACE, 0, until, b.inventory, b.hashes)
    got = []
    while (req := session.next_request()) is not None:
        if wire_round_trip:
            req = s.decode_message(s.encode_message(req))
        resp = a.answer(req)
        if wire_round_trip:
            resp = s.decode_message(s.encode_message(resp))
        for raw in session.on_response(resp):
            got.append(raw)
            b.items[hashlib.sha256(raw).digest()] = a.items[hashlib.sha256(raw).digest()]
    assert session.done
    return session, got


@pytest.mark.parametrize(
    "n_a,n_shared,n_b_only,t_max",
    [
        (0, 0, 0, 10**6),
        (50, 0, 0, 10**6),
        (300, 200, 30, 10**12),
        (3000, 1000, 10, 5000),
        (2500, 0, 0, 1),
    ],
)
def test_reconciliation_finds_exactly_the_missing_items(n_a, n_shared, n_b_only, t_max):
    rng = random.Random(n_a * 7 + t_max)
    a_items = make_items(rng, n_a, t_max)
    shared = dict(list(a_items.items())[:n_shared])
    b_items = {**shared, **make_items(rng, n_b_only, t_max)}
    a, b = Side(dict(a_items)), Side(dict(b_items))
    session, got = run_sync(a, b, t_max)
    missing = set(a_items) - set(b_items)
    assert {hashlib.sha256(r).digest() for r in got} == missing
    assert len(got) == len(missing)  # nothing twice
    assert set(a_items) <= set(b.items)
    assert session.stats.unavailable == 0
    # A second pass finds nothing left to fetch; where b holds nothing of its own, every
    # bucket is equal and not a single hash is listed.
    session2, got2 = run_sync(a, b, t_max)
    assert got2 == [] and session2.stats.wanted == 0
    if n_b_only == 0:
        assert session2.stats.hashes_seen == 0 and session2.stats.buckets_differ == 0
    if t_max == 1:  # 2500 items in one millisecond: the hash list is paged
        assert session.stats.requests > 3


def test_drill_down_skips_equal_sub_buckets():
    rng = random.Random(1)
    a_items = make_items(rng, 5000, 10**6)  # all in the first bucket of a 10^12 ms window
    b_items = dict(list(a_items.items())[:-3])  # b lacks 3 items
    session, got = run_sync(Side(dict(a_items)), Side(b_items), 10**12)
    assert len(got) == 3
    assert session.stats.drilled >= 1
    # Only the hashes of the few differing small buckets were listed, not all 5000.
    assert session.stats.hashes_seen < 100


def test_items_are_batched_within_the_frame_bound():
    rng = random.Random(2)
    a_items = make_items(rng, 600, 1000, size=lambda r: r.randrange(100, 4000))
    session, got = run_sync(Side(dict(a_items)), Side({}), 1000)
    assert len(got) == 600
    # 600 items of ~2 KB need far more than the 3 requests that 256 per batch would take.
    assert session.stats.requests > 3 + 600 * 2000 // s.MAX_FRAME_BYTES


def advance_to_items(session: s.SyncSession, a: Side) -> s.ItemsRequest:
    """Answer the listing requests until the session asks for items (at most 100 steps)."""
    for _ in range(100):
        req = session.next_request()
        if isinstance(req, s.ItemsRequest):
            return req
        session.on_response(a.answer(req))
    raise AssertionError("the session never asked for items")


def test_bad_responses_raise_sync_error():
    rng = random.Random(3)
    a = Side(make_items(rng, 20, 1000))
    b = Side({})
    # Wrong kind for the request.
    session = s.SyncSession(SPACE, 0, 1000, b.inventory, b.hashes)
    session.next_request()
    with pytest.raises(SyncError):
        session.on_response(s.Hashes(()))
    # A bucket off the grid.
    session = s.SyncSession(SPACE, 0, 1000, b.inventory, b.hashes)
    session.next_request()
    with pytest.raises(SyncError):
        session.on_response(s.Inventory(((1001, 1, h(0)),)))
    # Items: unrequested, duplicated, or no progress.
    session = s.SyncSession(SPACE, 0, 1000, b.inventory, b.hashes)
    req = advance_to_items(session, a)
    good = a.answer(req)
    assert len(good.items) == 20
    for bad in (
        s.Items((b"not requested",), 1),
        s.Items((good.items[0], good.items[0]), 2),
        s.Items((good.items[1], good.items[0]), 2),
        s.Items((), 0),
        s.Items((), len(req.hashes) + 1),
    ):
        session._pending = req
        with pytest.raises(SyncError):
            session.on_response(bad)
    # A hash page that does not move past its cursor.
    session = s.SyncSession(SPACE, 0, 1000, b.inventory, b.hashes)
    session._todo.clear()
    session._todo.append(s.HashesRequest(SPACE, 0, 1000, h(5)))
    session.next_request()
    with pytest.raises(SyncError):
        session.on_response(s.Hashes((h(5),)))
    with pytest.raises(SyncError):
        session.on_response(s.Hashes(()))  # nothing outstanding


def test_partial_items_are_asked_again_and_absent_ones_counted():
    rng = random.Random(4)
    a = Side(make_items(rng, 10, 1000))
    b = Side({})
    session = s.SyncSession(SPACE, 0, 1000, b.inventory, b.hashes)
    req = advance_to_items(session, a)
    raws = [a.items[x][1] for x in req.hashes]
    got = session.on_response(s.Items((raws[0],), 3))  # answered 3, one present, two absent
    assert got == [raws[0]]
    assert session.stats.unavailable == 2
    again = session.next_request()
    assert again.hashes == req.hashes[3:]


def test_a_peer_cannot_keep_the_session_going_forever():
    b = Side({})
    session = s.SyncSession(SPACE, 0, 1000, b.inventory, b.hashes, max_requests=50)
    session.next_request()
    session.on_response(s.Inventory(((0, 1, h(0)),)))
    with pytest.raises(SyncError):
        for i in range(100):  # an endless hash listing, each page moving the cursor
            req = session.next_request()
            if isinstance(req, s.ItemsRequest):
                session.on_response(s.Items((), len(req.hashes)))
            else:
                session.on_response(s.Hashes((hashlib.sha256(bytes([i])).digest(),), True))


# --- protocol/vectors/sync_*.json ---------------------------------------------------------------

VECTOR_DIR = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
SYNC_VECTORS = {
    p.stem: json.loads(p.read_text(encoding="utf-8")) for p in VECTOR_DIR.glob("sync_*.json")
}


def test_there_are_sync_vectors_for_each_sync_error_class():
    assert len(SYNC_VECTORS) >= 4
    named = {v["error"] for v in SYNC_VECTORS.values() if not v["valid"]}
    assert {"SyncError", "FrameError"} <= named
    assert all(v["type"] == "sync" for v in SYNC_VECTORS.values())


def _replay(steps: list[dict]) -> list[bytes]:
    """Run the exchange's responses through a session holding nothing; return items got."""
    got = []
    for st_ in steps:
        req = s.decode_message(bytes.fromhex(st_["request_hex"]))
        resp = s.decode_message(bytes.fromhex(st_["response_hex"]))
        assert req.kind == st_["request_kind"] and resp.kind == st_["response_kind"]
        for key in ("request", "response"):
            frame = bytes.fromhex(st_[f"{key}_frame_hex"])
            reader = s.FrameReader()
            reader.feed(frame)
            assert reader.next_frame() == bytes.fromhex(st_[f"{key}_hex"])
        session = s.SyncSession(SPACE, 0, 1, lambda r: s.Inventory(()), lambda *a: set())
        session._todo.clear()
        if isinstance(req, s.ItemsRequest):
            session._want.extend(req.hashes)
        else:
            session._todo.append(req)
        assert session.next_request() == req
        got += session.on_response(resp)
    return got


def test_valid_sync_exchange_vector():
    v = SYNC_VECTORS["sync_valid_exchange"]
    entries = [(e["created"], bytes.fromhex(e["item_hash_hex"])) for e in v["entries"]]
    for b in v["bucket_digests"]:
        pre = bytes.fromhex(b["preimage_hex"])
        assert pre.startswith(s.BUCKET_DIGEST_DOMAIN)
        assert hashlib.sha256(pre).hexdigest() == b["digest_hex"]
        inside = [hh for c, hh in entries if b["start_ms"] <= c < b["start_ms"] + 2]
        assert s.bucket_digest(inside).hex() == b["digest_hex"] and len(inside) == b["count"]
    inv_req = s.decode_message(bytes.fromhex(v["steps"][0]["request_hex"]))
    inv = s.decode_message(bytes.fromhex(v["steps"][0]["response_hex"]))
    assert s.build_inventory(inv_req, entries) == inv
    got = _replay(v["steps"])
    assert sorted(hashlib.sha256(g).digest() for g in got) == sorted(hh for _, hh in entries)
    for raw in got:  # every item is a valid, signed wire item
        decode_item(raw)


@pytest.mark.parametrize("name", sorted(n for n, v in SYNC_VECTORS.items() if not v["valid"]))
def test_invalid_sync_vector(name):
    v = SYNC_VECTORS[name]
    with pytest.raises(WireError) as info:
        if v["input"] == "frame":
            reader = s.FrameReader()
            reader.feed(bytes.fromhex(v["encoded_hex"]))
            reader.next_frame()
        elif v["input"] == "message":
            s.decode_message(bytes.fromhex(v["encoded_hex"]))
        else:
            _replay(v["steps"])
    assert type(info.value).__name__ == v["error"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 4096), min_size=1, max_size=256), st.integers(0, 9))
def test_fit_items_always_fits_one_frame_and_makes_progress(sizes, absent_every):
    raws = [
        None if absent_every and i % (absent_every + 1) == 0 else bytes([i % 256]) * n
        for i, n in enumerate(sizes)
    ]
    resp = s.fit_items(raws, len(raws))
    data = s.encode_message(resp)  # raises OversizeError if the estimate were short
    assert len(data) <= s.MAX_FRAME_BYTES
    assert 1 <= resp.answered <= len(raws)
    assert list(resp.items) == [r for r in raws[: resp.answered] if r is not None]
    if resp.answered < len(raws):  # stopped because the next item did not fit
        assert len(data) + len(raws[resp.answered] or b"") > s.MAX_FRAME_BYTES - 8


def test_spec_states_the_sync_constants():
    spec = (Path(__file__).resolve().parents[1] / "protocol" / "PROTOCOL.md").read_text("utf-8")
    assert s.BUCKET_DIGEST_DOMAIN.hex() in spec
    assert s.SYNC_PROTOCOL_ID in spec
    for kind in s._KINDS:
        assert f"`{kind}`" in spec
    for name, value in (("MAX_FRAME_BYTES", 65536), ("MAX_BUCKETS", 1024),
                        ("MAX_HASHES", 1024), ("MAX_ITEMS", 256)):  # fmt: skip
        assert getattr(s, name) == value and f"| `{name}` | {value} |" in spec


# --- Equivocating submissions over two real stores --------------------------------------------


def _pull(requester, responder, until: int) -> list[bytes]:
    """One exchange: `requester` (a real Store) pulls from `responder` through StoreView, the
    messages round-tripped through the wire codec; received items go to put_items (verified
    there, as the daemon does). Returns the raw items received."""
    from dsonode.net.sync import StoreView

    mine, theirs = StoreView(requester), StoreView(responder)
    session = s.SyncSession(SPACE, 0, until, mine.inventory, mine.hashes)
    listed: dict[bytes, tuple[str, bytes]] = {}
    got: list[bytes] = []
    for _ in range(100):  # one exchange of a few items needs about 4 requests
        req = session.next_request()
        if req is None:
            break
        req = s.decode_message(s.encode_message(req))
        if isinstance(req, s.InventoryRequest):
            resp: s.Message = theirs.inventory(req)
        elif isinstance(req, s.HashesRequest):
            resp, where = theirs.listing(req)
            listed.update(where)
        else:
            resp = s.fit_items(
                theirs.raw_items([listed.get(x) for x in req.hashes]), len(req.hashes)
            )
        raws = session.on_response(s.decode_message(s.encode_message(resp)))
        if raws:
            requester.put_items(raws)
            got.extend(raws)
    assert session.done
    return got


def test_one_sync_exchange_brings_the_smaller_equivocating_submission(tmp_path):
    """PROTOCOL.md 7.2 and 12: a node holding an author's larger submission ends with the
    smaller one after one pull from a node holding it; pulling the larger one changes nothing.
    Then both inventories are equal, so later exchanges find nothing to fetch."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core import wire
    from dsonode.net.sync import StoreView
    from dsonode.store import Store

    author, liar = (Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (3, 4))
    t0 = 1_700_000_000_000
    exp = wire.make_experience(author, "ops", "Pin dependency versions.", created=t0)
    code = bytes([0, 0, 0x80, 0x3F]) + bytes(960)
    small = wire.make_submission(liar, exp.id, SPACE, code, created=t0 + 1)
    large = wire.make_submission(liar, exp.id, SPACE, code[:4] + b"\xff" * 960, created=t0 + 2)
    r_exp, r_small, r_large = (wire.encode_item(x) for x in (exp, small, large))
    until = t0 + 10_000
    req = s.InventoryRequest(SPACE, 0, until, s.bucket_ms_for(0, until))
    with (
        Store(tmp_path / "a", space_id=SPACE) as a,
        Store(tmp_path / "b", space_id=SPACE) as b,
    ):
        a.put_items([r_exp, r_small])
        b.put_items([r_exp, r_large])
        a.clear_pending([exp.id])  # as if both had computed their consensus
        b.clear_pending([exp.id])
        # A pulls from B: it is offered the larger one, which it refuses as a duplicate.
        assert _pull(a, b, until) == [r_large]
        assert [x.raw for x in a.get_submissions(exp.id)] == [r_small]
        assert a.pending_ids() == []
        # B pulls from A: one exchange, and B holds the smaller one, its inventory A's.
        assert _pull(b, a, until) == [r_small]
        assert [x.raw for x in b.get_submissions(exp.id)] == [r_small]
        assert [x.raw for x in b.iter_submissions_by_time()] == [r_small]
        assert b.pending_ids() == [exp.id]  # its consensus is recomputed
        assert StoreView(a).inventory(req) == StoreView(b).inventory(req)
        assert _pull(a, b, until) == [] and _pull(b, a, until) == []
