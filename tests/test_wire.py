"""dsonode.core.wire: round trips, every error class, canonical form, and fuzzing of decoders."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
import unicodedata

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsonode.core import wire
from dsonode.core.constants import MAX_BATCH_BYTES, MAX_ITEM_BYTES
from dsonode.core.errors import (
    ClockSkewError,
    CodeLengthError,
    IdMismatchError,
    KindError,
    MalformedError,
    NonCanonicalError,
    OversizeError,
    SchemaError,
    SignatureError,
    VersionError,
    WireError,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
AUTHOR = KEY.public_key().public_bytes_raw()
T0 = 1_700_000_000_000
SPACE = hashlib.sha256(b"test space").digest()
CODE = struct.pack("<f", 0.0123) + bytes(range(256)) * 3 + bytes(192)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def raw_item(kind, body, key=KEY, version=1, sig_domain=None, signature=None) -> bytes:
    """An item built by hand (bypassing all checks), signed correctly unless told otherwise."""
    if signature is None:
        domain = sig_domain
        if domain is None:
            domain = {"experience": wire.EXPERIENCE_SIG_DOMAIN}.get(
                kind, wire.SUBMISSION_SIG_DOMAIN
            )
        signature = key.sign(domain + pack(body))
    return pack([version, kind, body, signature])


def exp_body(text="Pin the version.", domain="ops", tags=(), prov=(), created=T0, eid=None):
    if eid is None:
        eid = hashlib.sha256(b"dso/exp/1" + pack([domain, text])).digest()
    return [eid, domain, text, list(tags), [list(p) for p in prov], created, AUTHOR]


def sub_body(code=CODE, created=T0, eid=None):
    eid = eid if eid is not None else wire.experience_id("ops", "Pin the version.")
    return [eid, SPACE, code, AUTHOR, created]


def make_exp(**kw):
    args = {"domain": "ops", "text": "Pin the version.", "created": T0} | kw
    return wire.make_experience(KEY, **args)


# --- Text and ids ---------------------------------------------------------------------------------


def test_normalize_text_nfc_and_whitespace():
    assert wire.normalize_text("  a \t\n b\u3000c\u00a0 ") == "a b c"
    assert wire.normalize_text("cafe\u0301") == "caf\u00e9"
    assert wire.normalize_text("a\u2028\u2029b\u0085c") == "a b c"
    # Zero-width space is not White_Space: it stays.
    assert wire.normalize_text("a\u200bb") == "a\u200bb"
    assert wire.normalize_text("") == ""
    with pytest.raises(SchemaError):
        wire.normalize_text(b"bytes")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=64))
def test_normalize_text_is_idempotent_and_nfc(text):
    once = wire.normalize_text(text)
    assert wire.normalize_text(once) == once
    assert unicodedata.is_normalized("NFC", once)
    assert "  " not in once and once == once.strip(" ")


TRICKY_CHARS = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u200a\u2028\u2029\u202f\u205f\u3000"  # White_Space
    "\u200b\ufeff\u180e"  # look like spaces, are not White_Space
    "\u0301\u0308\u0323\u0338\u0345"  # combining marks
    "aeAE\u00e9\u1e9b\u1100\u1161\u11a8\uac00"  # letters, Hangul jamo and syllable
)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=TRICKY_CHARS, max_size=24))
def test_normalize_text_with_whitespace_next_to_combining_marks(text):
    once = wire.normalize_text(text)
    assert wire.normalize_text(once) == once
    assert unicodedata.is_normalized("NFC", once)
    assert not any(c in once for c in "\t\n\x85\xa0\u3000\u2028")


def test_experience_id_definition_and_equivalent_texts():
    expected = hashlib.sha256(b"dso/exp/1" + pack(["ops", "Pin the version."])).digest()
    assert wire.experience_id("ops", "Pin the version.") == expected
    assert wire.experience_id("ops", "  Pin\tthe\n\nversion. ") == expected
    assert wire.experience_id("ops", "Pin the version!") != expected
    assert wire.experience_id("ops2", "Pin the version.") != expected


@pytest.mark.parametrize(
    ("domain", "error"),
    [("", SchemaError), ("Ops", SchemaError), ("-ops", SchemaError), ("a b", SchemaError),
     ("é", SchemaError), ("a" * 65, OversizeError), (7, SchemaError)],
)  # fmt: skip
def test_experience_id_rejects_bad_domains(domain, error):
    with pytest.raises(error):
        wire.experience_id(domain, "x")


def test_topic_for_space():
    assert wire.topic_for_space(SPACE) == "/dso/1/space/" + SPACE.hex()
    assert wire.topic_for_space(SPACE.hex()) == "/dso/1/space/" + SPACE.hex()
    with pytest.raises(SchemaError):
        wire.topic_for_space(b"short")


# --- Round trips ----------------------------------------------------------------------------------


def test_experience_round_trip_and_canonicalisation():
    exp = make_exp(
        text=" Pin  the\tversion. ",
        tags=["python", "ops", "python", " deps  pinning "],
        provenance={"source": "rollout-17", "node": "n1"},
    )
    assert exp.text == "Pin the version."
    assert exp.tags == ("deps pinning", "ops", "python")
    assert exp.provenance == (("node", "n1"), ("source", "rollout-17"))
    assert exp.id == wire.experience_id("ops", "Pin the version.")
    assert exp.author == AUTHOR
    data = wire.encode_item(exp)
    back = wire.decode_item(data, now_ms=T0)
    assert back == exp and isinstance(back, wire.Experience)
    assert wire.encode_item(back) == data
    wire.verify_signature(back)


def test_item_hash_and_trusted_decode():
    exp = make_exp()
    data = wire.encode_item(exp)
    assert wire.item_hash(exp) == wire.item_hash(data) == hashlib.sha256(data).digest()
    forged = raw_item("experience", exp_body(), key=OTHER_KEY)
    with pytest.raises(SignatureError):
        wire.decode_item(forged)
    # Skipping the signature (own store only) still checks everything else.
    assert wire.decode_item(forged, check_signature=False).author == AUTHOR
    with pytest.raises(IdMismatchError):
        wire.decode_item(raw_item("experience", exp_body(eid=bytes(32))), check_signature=False)


def test_submission_round_trip():
    sub = wire.make_submission(KEY, wire.experience_id("ops", "x"), SPACE.hex(), CODE, created=T0)
    data = wire.encode_item(sub)
    back = wire.decode_item(data)
    assert back == sub and isinstance(back, wire.Submission)
    assert back.space_id == SPACE and back.code == CODE
    assert wire.encode_item(back) == data


def test_submission_accepts_a_uint8_row():
    np = pytest.importorskip("numpy")
    row = np.frombuffer(CODE, dtype=np.uint8)
    sub = wire.make_submission(KEY, bytes(32), SPACE, row, created=T0)
    assert sub.code == CODE


def test_created_defaults_to_now():
    before = wire.now_ms()
    exp = wire.make_experience(KEY, "ops", "now")
    assert before <= exp.created <= wire.now_ms()


def test_signature_is_over_domain_separated_body():
    exp = make_exp()
    assert wire.signing_payload(exp) == b"dso/experience/1\x00" + pack(exp.body())
    AUTHOR_KEY = KEY.public_key()
    AUTHOR_KEY.verify(exp.signature, b"dso/experience/1\x00" + pack(exp.body()))


def test_same_body_signed_for_another_kind_does_not_verify():
    # An experience body signed under the submission domain string must not pass.
    data = raw_item("experience", exp_body(), sig_domain=wire.SUBMISSION_SIG_DOMAIN)
    with pytest.raises(SignatureError):
        wire.decode_item(data)


def test_largest_experience_fits_or_is_refused():
    big = make_exp(
        text="x" * 1024,
        tags=[f"{i:02d}" + "t" * 30 for i in range(16)],
        provenance={f"k{i}": "v" * 256 for i in range(4)},
    )
    assert len(wire.encode_item(big)) <= MAX_ITEM_BYTES
    with pytest.raises(OversizeError):
        make_exp(
            domain="d" * 64,
            text="x" * 1024,
            tags=[f"{i:02d}" + "t" * 30 for i in range(16)],
            provenance={f"k{i}" + "k" * 30: "v" * 256 for i in range(8)},
        )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    domain=st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,20}", fullmatch=True),
    text=st.text(alphabet=TRICKY_CHARS + "xyz.,!?", min_size=1, max_size=200),
    tags=st.lists(st.text(alphabet="abcé -_", min_size=1, max_size=10), max_size=16),
    prov=st.dictionaries(
        st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True),
        st.text(alphabet="abc \t/:é", max_size=40),
        max_size=8,
    ),
    created=st.integers(0, 2**53 - 1),
)
def test_experience_round_trip_property(domain, text, tags, prov, created):
    if not wire.normalize_text(text) or any(not wire.normalize_text(t) for t in tags):
        with pytest.raises(SchemaError):
            wire.make_experience(KEY, domain, text, tags=tags, provenance=prov, created=created)
        return
    exp = wire.make_experience(KEY, domain, text, tags=tags, provenance=prov, created=created)
    data = wire.encode_item(exp)
    assert len(data) <= MAX_ITEM_BYTES
    assert wire.decode_item(data, now_ms=created) == exp
    assert exp.id == wire.experience_id(domain, text)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    scale=st.floats(min_value=0, max_value=2.0**100, width=32),
    bits=st.binary(min_size=960, max_size=960),
    created=st.integers(0, 2**53 - 1),
)
def test_submission_round_trip_property(scale, bits, created):
    code = struct.pack("<f", scale) + bits
    sub = wire.make_submission(KEY, hashlib.sha256(bits).digest(), SPACE, code, created=created)
    data = wire.encode_item(sub)
    assert wire.decode_item(data, now_ms=created) == sub
    assert wire.decode_batch(wire.encode_batch([data])) == [data]


# --- Every error class ----------------------------------------------------------------------------


def good_exp_bytes() -> bytes:
    return wire.encode_item(make_exp())


def good_sub_bytes() -> bytes:
    return wire.encode_item(wire.make_submission(KEY, bytes(32), SPACE, CODE, created=T0))


CASES = {
    # MalformedError: not one well-formed msgpack object.
    "empty": (b"", MalformedError),
    "truncated": (lambda: good_exp_bytes()[:-1], MalformedError),
    "trailing byte": (lambda: good_exp_bytes() + b"\x00", MalformedError),
    "never-used byte": (b"\xc1", MalformedError),
    "bad utf-8": (lambda: pack([1, "experience"])[:-10] + b"\xaa" + b"\xff" * 10, MalformedError),
    # VersionError
    "version 2": (lambda: raw_item("experience", exp_body(), version=2), VersionError),
    "version 0": (lambda: raw_item("experience", exp_body(), version=0), VersionError),
    "version as str": (lambda: raw_item("experience", exp_body(), version="1"), VersionError),
    # KindError
    "unknown kind": (lambda: raw_item("lesson", exp_body()), KindError),
    "batch as item": (lambda: pack([1, "batch", [b"x"], b"y" * 64]), KindError),
    # SchemaError
    "not an array": (pack("experience"), SchemaError),
    "empty array": (pack([]), SchemaError),
    "envelope too short": (pack([1, "experience", []]), SchemaError),
    "kind not str": (lambda: raw_item(2, exp_body()), SchemaError),
    "body not array": (pack([1, "experience", b"body", bytes(64)]), SchemaError),
    "signature short": (lambda: pack([1, "experience", exp_body(), bytes(63)]), SchemaError),
    "missing field": (lambda: raw_item("experience", exp_body()[:-1]), SchemaError),
    "feedback with an experience body": (lambda: raw_item("feedback", exp_body()), SchemaError),
    "extra field": (lambda: raw_item("experience", [*exp_body(), 0]), SchemaError),
    "domain wrong type": (lambda: raw_item("experience", exp_body(domain=b"ops")), SchemaError),
    "domain charset": (lambda: raw_item("experience", exp_body(domain="Ops")), SchemaError),
    "text empty": (lambda: raw_item("experience", exp_body(text="")), SchemaError),
    "text control char": (lambda: raw_item("experience", exp_body(text="a\x00b")), SchemaError),
    "created negative": (lambda: raw_item("experience", exp_body(created=-1)), SchemaError),
    "created 2^53": (lambda: raw_item("experience", exp_body(created=2**53)), SchemaError),
    "id 31 bytes": (lambda: raw_item("experience", exp_body(eid=bytes(31))), SchemaError),
    "tag empty": (lambda: raw_item("experience", exp_body(tags=[""])), SchemaError),
    "tag not str": (lambda: raw_item("experience", exp_body(tags=[1])), SchemaError),
    "prov pair of 3": (lambda: raw_item("experience", exp_body(prov=[("a", "b", "c")])), SchemaError),
    "prov key charset": (lambda: raw_item("experience", exp_body(prov=[("A", "b")])), SchemaError),
    "map in body": (lambda: raw_item("experience", [*exp_body()[:3], {"a": 1}, *exp_body()[4:]]), SchemaError),
    "empty map": (lambda: pack([1, "experience", {}, bytes(64)]), SchemaError),
    "float created": (lambda: raw_item("experience", exp_body(created=1.5)), SchemaError),
    "bool created": (lambda: raw_item("experience", exp_body(created=True)), SchemaError),
    "nil field": (lambda: raw_item("experience", exp_body(domain=None)), SchemaError),
    "ext type": (lambda: pack([1, "experience", [msgpack.ExtType(1, b"x")], bytes(64)]), SchemaError),
    "timestamp": (lambda: pack([1, msgpack.Timestamp(1, 0)]), SchemaError),
    "nested too deep": (b"\x91" * 2000 + b"\x01", SchemaError),
    "nested 5 deep": (pack([1, "experience", [[[[1]]]], bytes(64)]), SchemaError),
    "nan scale": (lambda: raw_item("submission", sub_body(code=struct.pack("<f", float("nan")) + bytes(960))), SchemaError),
    "negative scale": (lambda: raw_item("submission", sub_body(code=struct.pack("<f", -1.0) + bytes(960))), SchemaError),
    "space_id wrong type": (lambda: raw_item("submission", [bytes(32), "s" * 32, CODE, AUTHOR, T0]), SchemaError),
    # CodeLengthError
    "code 963": (lambda: raw_item("submission", sub_body(code=CODE[:-1])), CodeLengthError),
    "code 965": (lambda: raw_item("submission", sub_body(code=CODE + b"\x00")), CodeLengthError),
    "code empty": (lambda: raw_item("submission", sub_body(code=b"")), CodeLengthError),
    # OversizeError
    "item > 4 KiB": (lambda: good_exp_bytes() + bytes(MAX_ITEM_BYTES), OversizeError),
    "text 1025 bytes": (lambda: raw_item("experience", exp_body(text="x" * 1025)), OversizeError),
    "text 1024 bytes 2-byte chars": (lambda: raw_item("experience", exp_body(text="é" * 513)), OversizeError),
    "17 tags": (lambda: raw_item("experience", exp_body(tags=[f"t{i:02d}" for i in range(17)])), OversizeError),
    "tag 33 bytes": (lambda: raw_item("experience", exp_body(tags=["t" * 33])), OversizeError),
    "domain 65 bytes": (lambda: raw_item("experience", exp_body(domain="d" * 65)), OversizeError),
    "9 provenance pairs": (lambda: raw_item("experience", exp_body(prov=[(f"k{i}", "v") for i in range(9)])), OversizeError),
    "provenance key 33": (lambda: raw_item("experience", exp_body(prov=[("k" * 33, "v")])), OversizeError),
    "provenance value 257": (lambda: raw_item("experience", exp_body(prov=[("k", "v" * 257)])), OversizeError),
    "array header over parser limit": (b"\x94\x01\xaaexperience\xdc\x01\x01", OversizeError),
    "code 2000": (lambda: raw_item("submission", sub_body(code=CODE * 2)), CodeLengthError),
    # NonCanonicalError
    "version as uint8": (lambda: b"\x94\xcc\x01" + good_exp_bytes()[2:], NonCanonicalError),
    "kind as str8": (lambda: b"\x94\x01\xd9\x0aexperience" + good_exp_bytes()[13:], NonCanonicalError),
    "array16 header": (lambda: b"\xdc\x00\x04" + good_exp_bytes()[1:], NonCanonicalError),
    "created as uint64": (lambda: raw_item("experience", exp_body(created=5)).replace(b"\x05\xc4\x20", b"\xcf" + (5).to_bytes(8, "big") + b"\xc4\x20"), NonCanonicalError),
    "text not normalised": (lambda: raw_item("experience", exp_body(text="Pin  the version.")), NonCanonicalError),
    "text not NFC": (lambda: raw_item("experience", exp_body(text="cafe\u0301")), NonCanonicalError),
    "text newline": (lambda: raw_item("experience", exp_body(text="a\nb")), NonCanonicalError),
    "tags unsorted": (lambda: raw_item("experience", exp_body(tags=["b", "a"])), NonCanonicalError),
    "tags duplicate": (lambda: raw_item("experience", exp_body(tags=["a", "a"])), NonCanonicalError),
    "tag not normalised": (lambda: raw_item("experience", exp_body(tags=[" a"])), NonCanonicalError),
    "provenance unsorted": (lambda: raw_item("experience", exp_body(prov=[("b", ""), ("a", "")])), NonCanonicalError),
    "provenance duplicate": (lambda: raw_item("experience", exp_body(prov=[("a", "1"), ("a", "2")])), NonCanonicalError),
    # IdMismatchError
    "id of another text": (lambda: raw_item("experience", exp_body(eid=wire.experience_id("ops", "other"))), IdMismatchError),
    "id of another domain": (lambda: raw_item("experience", exp_body(eid=wire.experience_id("dev", "Pin the version."))), IdMismatchError),
    # SignatureError
    "signature flipped": (lambda: good_sub_bytes()[:-1] + bytes([good_sub_bytes()[-1] ^ 1]), SignatureError),
    "signed by another key": (lambda: raw_item("experience", exp_body(), key=OTHER_KEY), SignatureError),
    "zero signature": (lambda: raw_item("submission", sub_body(), signature=bytes(64)), SignatureError),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_fault_raises_its_class(name):
    data, error = CASES[name]
    data = data() if callable(data) else data
    with pytest.raises(WireError) as info:
        wire.decode_item(data)
    assert type(info.value) is error, f"{name}: {type(info.value).__name__}: {info.value}"
    assert str(info.value)


def test_clock_skew():
    sub = wire.make_submission(KEY, bytes(32), SPACE, CODE, created=T0 + 300_000)
    data = wire.encode_item(sub)
    assert wire.decode_item(data, now_ms=T0) == sub  # exactly 5 minutes ahead: accepted
    assert wire.decode_item(data) == sub  # no clock given: not checked
    assert wire.decode_item(data, now_ms=T0 + 10**9) == sub  # items from the past are fine
    with pytest.raises(ClockSkewError):
        wire.decode_item(data, now_ms=T0 - 1)


def test_decoder_rejects_non_bytes():
    with pytest.raises(SchemaError):
        wire.decode_item("text")  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        wire.decode_batch(None)  # type: ignore[arg-type]
    assert wire.decode_item(bytearray(good_exp_bytes())) == make_exp()


def test_constructors_validate():
    exp = make_exp()
    with pytest.raises(IdMismatchError):
        wire.Experience(bytes(32), "ops", exp.text, (), (), T0, AUTHOR, exp.signature)
    with pytest.raises(CodeLengthError):
        wire.Submission(bytes(32), SPACE, b"\x00" * 10, AUTHOR, T0, bytes(64))
    with pytest.raises(SchemaError):
        wire.make_submission(KEY, b"short", SPACE, CODE)
    with pytest.raises(SchemaError):
        wire.make_experience(KEY, "ops", "x", provenance=[("a", "1"), ("a", "2")])
    with pytest.raises(SchemaError):
        wire.make_experience(KEY, "ops", "x", tags="single-string")
    with pytest.raises(SchemaError):
        wire.make_experience(KEY, "ops", "   ")
    with pytest.raises(OversizeError):
        wire.make_experience(KEY, "ops", "é" * 600)
    with pytest.raises(TypeError):
        wire.make_experience(b"not a key", "ops", "x")  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        wire.encode_item("not an item")  # type: ignore[arg-type]


# --- Batches --------------------------------------------------------------------------------------


def test_batch_round_trip_and_one_bad_entry_does_not_sink_the_rest():
    good = [good_exp_bytes(), good_sub_bytes()]
    bad = raw_item("experience", exp_body(), key=OTHER_KEY)
    data = wire.encode_batch([*good, bad])
    assert data[:9] == b"\x93\x01\xa5batch\x93"
    entries = wire.decode_batch(data)
    assert entries == [*good, bad]
    decoded, errors = [], []
    for entry in entries:
        try:
            decoded.append(wire.decode_item(entry))
        except WireError as exc:
            errors.append(type(exc))
    assert len(decoded) == 2 and errors == [SignatureError]
    assert wire.Batch.decode(data).items == tuple(entries)
    assert wire.Batch(tuple(entries)).encode() == data
    assert wire.encode_batch([make_exp()]) == wire.encode_batch([good_exp_bytes()])


BATCH_CASES = {
    "over 64 KiB": (b"\x93" + bytes(MAX_BATCH_BYTES), OversizeError),
    "257 entries": (pack([1, "batch", [b"x"] * 257]), OversizeError),
    "entry over 4 KiB": (pack([1, "batch", [bytes(MAX_ITEM_BYTES + 1)]]), OversizeError),
    "no entries": (pack([1, "batch", []]), SchemaError),
    "empty entry": (pack([1, "batch", [b""]]), SchemaError),
    "entry not bin": (pack([1, "batch", ["x"]]), SchemaError),
    "entries not array": (pack([1, "batch", b"x"]), SchemaError),
    "extra element": (pack([1, "batch", [b"x"], 0]), SchemaError),
    "item not batch": (pack([1, "experience", [b"x"]]), KindError),
    "version 2": (pack([2, "batch", [b"x"]]), VersionError),
    "truncated": (pack([1, "batch", [b"xyz"]])[:-1], MalformedError),
    "bin16 for short": (b"\x93\x01\xa5batch\x91\xc5\x00\x01x", NonCanonicalError),
    "map": (pack([1, "batch", [{"a": 1}]]), SchemaError),
}


@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_each_batch_fault_raises_its_class(name):
    data, error = BATCH_CASES[name]
    with pytest.raises(WireError) as info:
        wire.decode_batch(data)
    assert type(info.value) is error, f"{name}: {type(info.value).__name__}: {info.value}"


def test_encode_batch_limits():
    with pytest.raises(SchemaError):
        wire.encode_batch([])
    with pytest.raises(OversizeError):
        wire.encode_batch([b"x"] * 257)
    with pytest.raises(OversizeError):
        wire.encode_batch([bytes(4000)] * 17)
    with pytest.raises(OversizeError):
        wire.encode_batch([bytes(MAX_ITEM_BYTES + 1)])
    with pytest.raises(SchemaError):
        wire.encode_batch([42])  # type: ignore[list-item]


@pytest.mark.parametrize("sizes", [[1158] * 200, [4096] * 20, [10] * 600, [200, 4096, 17] * 40])
def test_pack_batches_respects_limits_and_order(sizes):
    entries = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    batches = wire.pack_batches(entries)
    out = []
    for data in batches:
        assert len(data) <= MAX_BATCH_BYTES
        got = wire.decode_batch(data)
        assert len(got) <= wire.MAX_BATCH_ITEMS
        out.extend(got)
    assert out == entries
    # Greedy packing: no batch could have taken the first entry of the next one.
    for data, nxt in itertools.pairwise(batches):
        first = wire.decode_batch(nxt)[0]
        current = wire.decode_batch(data)
        fits = (
            len(current) < wire.MAX_BATCH_ITEMS
            and len(pack([1, "batch", [*current, first]])) <= MAX_BATCH_BYTES
        )
        assert not fits
    assert wire.pack_batches([]) == []


# --- Fuzzing: nothing but WireError ever escapes a decoder ----------------------------------------

FUZZ = settings(
    max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
SEEDS = [
    good_exp_bytes(),
    good_sub_bytes(),
    wire.encode_batch([good_exp_bytes(), good_sub_bytes()]),
]


def decode_both(data: bytes) -> None:
    for decoder in (wire.decode_item, wire.decode_batch):
        with contextlib.suppress(WireError):
            decoder(data)


@FUZZ
@given(st.binary(max_size=5000))
def test_fuzz_random_bytes(data):
    decode_both(data)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(
        st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "extend"]), st.integers(0, 2**16), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)  # fmt: skip
def test_fuzz_mutated_valid_encodings(seed, mutations):
    data = bytearray(seed)
    for op, pos, value in mutations:
        i = pos % (len(data) + 1)
        if op == "flip" and data:
            data[i % len(data)] ^= 1 << (value % 8)
        elif op == "set" and data:
            data[i % len(data)] = value
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = bytes([value])
        elif op == "extend":
            data += bytes([value]) * (pos % 64 + 1)
    decode_both(bytes(data))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=40) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(FUZZ, max_examples=600)
@given(msgpack_values, st.sampled_from(["experience", "submission", "batch", "feedback"]))
def test_fuzz_structured_msgpack(value, kind):
    # Well-formed msgpack of the right outer shape, with arbitrary contents.
    for obj in (value, [1, kind, value, bytes(64)], [1, kind, value]):
        decode_both(pack(obj))
