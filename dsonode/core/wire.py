"""The signed wire format: experiences, submissions, feedback and the batch envelope.

Normative spec: protocol/PROTOCOL.md (section numbers below refer to it); test vectors in
protocol/vectors/. Pure: bytes in, frozen dataclasses out, and the reverse.

Every item is signed on its own (Ed25519 over a domain-separated canonical msgpack body), so it
can be stored, forwarded and re-synced with its proof. Decoders are strict and total: whatever
the bytes, they return a valid, verified item or raise a subclass of WireError, never anything
else. They check in the fixed order of PROTOCOL.md §9, so that implementations report the same
error class for the same faulty bytes (pinned by the invalid vectors).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import struct
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dsonode.core.constants import (
    CODE_BYTES,
    MAX_BATCH_BYTES,
    MAX_CLOCK_SKEW_S,
    MAX_ITEM_BYTES,
    MAX_TEXT_BYTES,
)
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

__all__ = [
    "EXPERIENCE_ID_PREFIX",
    "EXPERIENCE_SIG_DOMAIN",
    "FEEDBACK_SCORE_MAX",
    "FEEDBACK_SCORE_SCALE",
    "FEEDBACK_SIG_DOMAIN",
    "KIND_BATCH",
    "KIND_EXPERIENCE",
    "KIND_FEEDBACK",
    "KIND_RETRACTION",
    "KIND_SUBMISSION",
    "MAX_BATCH_ITEMS",
    "MAX_CLOCK_SKEW_MS",
    "MAX_CREATED",
    "MAX_DOMAIN_BYTES",
    "MAX_PROVENANCE",
    "MAX_PROV_KEY_BYTES",
    "MAX_PROV_VALUE_BYTES",
    "MAX_TAGS",
    "MAX_TAG_BYTES",
    "RETRACTION_SIG_DOMAIN",
    "SUBMISSION_SIG_DOMAIN",
    "WIRE_VERSION",
    "Batch",
    "Experience",
    "Feedback",
    "Item",
    "Retraction",
    "Submission",
    "decode_batch",
    "decode_item",
    "encode_batch",
    "encode_item",
    "experience_id",
    "feedback_score",
    "item_hash",
    "make_experience",
    "make_feedback",
    "make_retraction",
    "make_submission",
    "normalize_text",
    "now_ms",
    "pack_batches",
    "signing_payload",
    "topic_for_space",
    "verify_signature",
]

# --- Protocol constants (PROTOCOL.md §2). Changing any of them forks the network. ---------------

WIRE_VERSION = 1
KIND_EXPERIENCE = "experience"
KIND_SUBMISSION = "submission"
#: An agent's signed vote on whether an experience helped (PROTOCOL.md §7.5).
KIND_FEEDBACK = "feedback"
#: An author's signed withdrawal of its own experience (PROTOCOL.md §7.6).
KIND_RETRACTION = "retraction"
KIND_BATCH = "batch"

EXPERIENCE_SIG_DOMAIN = b"dso/experience/1\x00"
SUBMISSION_SIG_DOMAIN = b"dso/submission/1\x00"
FEEDBACK_SIG_DOMAIN = b"dso/feedback/1\x00"
RETRACTION_SIG_DOMAIN = b"dso/retraction/1\x00"
EXPERIENCE_ID_PREFIX = b"dso/exp/1"

ID_BYTES = 32
KEY_BYTES = 32
SIG_BYTES = 64
MAX_DOMAIN_BYTES = 64
MAX_TAGS = 16
MAX_TAG_BYTES = 32
MAX_PROVENANCE = 8
MAX_PROV_KEY_BYTES = 32
MAX_PROV_VALUE_BYTES = 256
MAX_BATCH_ITEMS = 256
#: `created` stays within the integers every language holds exactly (JavaScript's safe range).
MAX_CREATED = 2**53 - 1
MAX_CLOCK_SKEW_MS = MAX_CLOCK_SKEW_S * 1000
#: A feedback value v in [-1, 1] travels as the uint score = 1000 + 1000 * v, 0..2000 (the
#: format has no floats and no negative integers, §3): -1 = unhelpful, +1 = helpful.
FEEDBACK_SCORE_SCALE = 1000
FEEDBACK_SCORE_MAX = 2 * FEEDBACK_SCORE_SCALE

TOPIC_PREFIX = "/dso/1/space/"


# Parser limits (§9.2 step 2), applied by the msgpack parser itself before it allocates anything
# from a length the peer declared (an array header preallocates its slots). The same for items
# and batches, so that an item handed to the batch decoder (or the reverse) reaches the kind
# check. Maps and ext types are not part of the format at all.
class ParseLimits(TypedDict):
    """msgpack.unpackb's length limits, named as its keyword arguments."""

    max_str_len: int
    max_bin_len: int
    max_array_len: int
    max_map_len: int
    max_ext_len: int


_PARSE_LIMITS: ParseLimits = {
    "max_str_len": MAX_TEXT_BYTES,
    "max_bin_len": MAX_ITEM_BYTES,
    "max_array_len": 256,
    "max_map_len": 0,
    "max_ext_len": 0,
}
# Deepest array nesting of a valid item: item > body > provenance > pair; of a batch: 2.
_ITEM_MAX_ARRAY_DEPTH = 4
_BATCH_MAX_ARRAY_DEPTH = 2

_LIMIT_RE = re.compile(r"exceeds max_(str|bin|array|map|ext)_len")

# The Unicode White_Space property (25 code points), listed so that every implementation
# collapses exactly the same characters whatever its Unicode library (§5.1).
_WHITESPACE_RUN = re.compile(
    "[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)
# Control characters (general category Cc) that are not White_Space: never allowed in text.
_FORBIDDEN_CONTROL = re.compile("[\u0000-\u0008\u000e-\u001f\u007f-\u0084\u0086-\u009f]")
_DOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9._/-]*")
_PROV_KEY_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


# --- Text rules (§5) ------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFC, then every run of White_Space characters becomes one U+0020, then strip both ends."""
    if type(text) is not str:
        raise SchemaError(f"text must be a str, got {type(text).__name__}")
    try:
        nfc = unicodedata.normalize("NFC", text)
    except (UnicodeError, ValueError) as exc:  # lone surrogates and the like
        raise SchemaError(f"text is not valid Unicode: {exc}") from exc
    return _WHITESPACE_RUN.sub(" ", nfc).strip(" ")


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SchemaError(f"{what} is not valid Unicode (lone surrogate?)") from exc


def _check_domain(domain: object) -> str:
    if type(domain) is not str:
        raise SchemaError(f"domain must be a str, got {type(domain).__name__}")
    raw = _utf8(domain, "domain")
    if len(raw) > MAX_DOMAIN_BYTES:
        raise OversizeError(f"domain is {len(raw)} bytes, the limit is {MAX_DOMAIN_BYTES}")
    if not _DOMAIN_RE.fullmatch(domain):
        raise SchemaError(
            f"domain {domain!r} must be 1-{MAX_DOMAIN_BYTES} chars of [a-z0-9._/-], "
            "starting with a letter or digit"
        )
    return domain


def _check_free_text(value: object, what: str, min_bytes: int, max_bytes: int) -> bytes:
    """Type, byte length and control characters of a free-text field (text, tag, value)."""
    if type(value) is not str:
        raise SchemaError(f"{what} must be a str, got {type(value).__name__}")
    raw = _utf8(value, what)
    if len(raw) > max_bytes:
        raise OversizeError(f"{what} is {len(raw)} bytes UTF-8, the limit is {max_bytes}")
    if len(raw) < min_bytes:
        raise SchemaError(f"{what} must not be empty")
    if _FORBIDDEN_CONTROL.search(value):
        raise SchemaError(f"{what} contains a control character")
    return raw


def experience_id(domain: str, text: str) -> bytes:
    """sha256(b"dso/exp/1" + canonical msgpack of [domain, normalize_text(text)]) (§6)."""
    _check_domain(domain)
    return _experience_id_normalized(domain, normalize_text(text))


def _experience_id_normalized(domain: str, text: str) -> bytes:
    return hashlib.sha256(EXPERIENCE_ID_PREFIX + _pack([domain, text])).digest()


def item_hash(item: Item | bytes) -> bytes:
    """sha256 of the encoded item: unique per item, since the encoding is canonical (§8)."""
    data = item if isinstance(item, bytes) else encode_item(item)
    return hashlib.sha256(data).digest()


def topic_for_space(space_id: bytes | str) -> str:
    """The GossipSub topic of one embedding space: /dso/1/space/<64 lowercase hex> (§11)."""
    if isinstance(space_id, str):
        try:
            space_id = bytes.fromhex(space_id)
        except ValueError as exc:
            raise SchemaError("space_id is not hex") from exc
    if type(space_id) is not bytes or len(space_id) != ID_BYTES:
        raise SchemaError("space_id must be 32 bytes (64 hex chars)")
    return TOPIC_PREFIX + space_id.hex()


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), the unit of `created`."""
    return time.time_ns() // 1_000_000


# --- Field checks shared by the dataclasses (§7, §8) ---------------------------------------------


def _check_bytes(value: object, what: str, size: int) -> None:
    if type(value) is not bytes:
        raise SchemaError(f"{what} must be bytes (msgpack bin), got {type(value).__name__}")
    if len(value) != size:
        raise SchemaError(f"{what} must be {size} bytes, got {len(value)}")


def _check_created(value: object) -> None:
    if type(value) is not int:
        raise SchemaError(
            f"created must be an integer (ms since epoch), got {type(value).__name__}"
        )
    if not 0 <= value <= MAX_CREATED:
        raise SchemaError(f"created {value} is outside 0..2^53-1")


def _as_tuple(value: object, what: str) -> tuple:
    if type(value) is tuple:
        return value
    if type(value) is list:
        return tuple(value)
    raise SchemaError(f"{what} must be an array, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Experience:
    """One lesson: signed by its author, identified by the hash of (domain, normalised text).

    Construction validates every field (types, bounds, canonical form, id), so an Experience
    object is always well-formed; only the signature is left to `verify_signature`.
    """

    id: bytes
    domain: str
    text: str
    tags: tuple[str, ...]
    provenance: tuple[tuple[str, str], ...]
    created: int
    author: bytes
    signature: bytes

    kind = KIND_EXPERIENCE  # class attribute, not a field

    def __post_init__(self) -> None:
        # Pass 1 (§9.2 step 7): types, bounds and charsets, field by field in body order.
        _check_bytes(self.id, "id", ID_BYTES)
        _check_domain(self.domain)
        _check_free_text(self.text, "text", 1, MAX_TEXT_BYTES)
        tags = _as_tuple(self.tags, "tags")
        if len(tags) > MAX_TAGS:
            raise OversizeError(f"{len(tags)} tags, the limit is {MAX_TAGS}")
        for tag in tags:
            _check_free_text(tag, "tag", 1, MAX_TAG_BYTES)
        pairs = _as_tuple(self.provenance, "provenance")
        if len(pairs) > MAX_PROVENANCE:
            raise OversizeError(f"{len(pairs)} provenance pairs, the limit is {MAX_PROVENANCE}")
        pairs = tuple(_as_tuple(p, "provenance pair") for p in pairs)
        for pair in pairs:
            if len(pair) != 2:
                raise SchemaError(f"a provenance pair has {len(pair)} elements, not 2")
            key, value = pair
            if type(key) is not str:
                raise SchemaError(f"provenance key must be a str, got {type(key).__name__}")
            if len(_utf8(key, "provenance key")) > MAX_PROV_KEY_BYTES:
                raise OversizeError(f"provenance key is over {MAX_PROV_KEY_BYTES} bytes")
            if not _PROV_KEY_RE.fullmatch(key):
                raise SchemaError(f"provenance key {key!r} must be [a-z0-9][a-z0-9._-]*")
            _check_free_text(value, f"provenance value of {key!r}", 0, MAX_PROV_VALUE_BYTES)
        _check_created(self.created)
        _check_bytes(self.author, "author", KEY_BYTES)
        _check_bytes(self.signature, "signature", SIG_BYTES)
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "provenance", pairs)

        # Pass 2 (§9.2 step 8): the canonical form, so that one content has one byte string.
        if normalize_text(self.text) != self.text:
            raise NonCanonicalError("text is not normalised (NFC, collapsed whitespace)")
        for tag in tags:
            if normalize_text(tag) != tag:
                raise NonCanonicalError(f"tag {tag!r} is not normalised")
        tag_keys = [t.encode("utf-8") for t in tags]
        if any(a >= b for a, b in itertools.pairwise(tag_keys)):
            raise NonCanonicalError("tags must be sorted by UTF-8 bytes, without duplicates")
        keys = [k for k, _ in pairs]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise NonCanonicalError("provenance keys must be sorted, without duplicates")

        # Step 9: the id is content-derived.
        if _experience_id_normalized(self.domain, self.text) != self.id:
            raise IdMismatchError("experience id does not match sha256 of (domain, text)")

    def body(self) -> list[Any]:
        """The signed fields in wire order (§7.1)."""
        return [
            self.id,
            self.domain,
            self.text,
            list(self.tags),
            [list(p) for p in self.provenance],
            self.created,
            self.author,
        ]


@dataclass(frozen=True, slots=True)
class Submission:
    """One peer's 964-byte BitDelta code of one experience in one embedding space, signed."""

    experience_id: bytes
    space_id: bytes
    code: bytes
    author: bytes
    created: int
    signature: bytes

    kind = KIND_SUBMISSION

    def __post_init__(self) -> None:
        _check_bytes(self.experience_id, "experience_id", ID_BYTES)
        _check_bytes(self.space_id, "space_id", ID_BYTES)
        if type(self.code) is not bytes:
            raise SchemaError(f"code must be bytes (msgpack bin), got {type(self.code).__name__}")
        if len(self.code) != CODE_BYTES:
            raise CodeLengthError(f"code must be {CODE_BYTES} bytes, got {len(self.code)}")
        # The scale feeds the median of every peer: a NaN, inf or negative one would poison it.
        (scale,) = struct.unpack_from("<f", self.code)
        if not math.isfinite(scale) or self.code[3] & 0x80:
            raise SchemaError(f"code scale {scale!r} must be finite with a clear sign bit")
        _check_bytes(self.author, "author", KEY_BYTES)
        _check_created(self.created)
        _check_bytes(self.signature, "signature", SIG_BYTES)

    def body(self) -> list[Any]:
        """The signed fields in wire order (§7.2)."""
        return [self.experience_id, self.space_id, self.code, self.author, self.created]


@dataclass(frozen=True, slots=True)
class Feedback:
    """One author's vote on whether an experience helped, signed (PROTOCOL.md §7.5).

    `score` is the wire integer 0..2000; `value` the vote in [-1, 1] it stands for. An author
    may vote again: receivers keep the vote with the greatest (created, item hash).
    """

    experience_id: bytes
    score: int
    author: bytes
    created: int
    signature: bytes

    kind = KIND_FEEDBACK

    def __post_init__(self) -> None:
        _check_bytes(self.experience_id, "experience_id", ID_BYTES)
        if type(self.score) is not int:
            raise SchemaError(f"feedback score must be a uint, got {type(self.score).__name__}")
        if not 0 <= self.score <= FEEDBACK_SCORE_MAX:
            raise SchemaError(f"feedback score {self.score} is outside 0..{FEEDBACK_SCORE_MAX}")
        _check_bytes(self.author, "author", KEY_BYTES)
        _check_created(self.created)
        _check_bytes(self.signature, "signature", SIG_BYTES)

    @property
    def value(self) -> float:
        """The vote in [-1, 1]: (score - 1000) / 1000."""
        return (self.score - FEEDBACK_SCORE_SCALE) / FEEDBACK_SCORE_SCALE

    def body(self) -> list[Any]:
        """The signed fields in wire order (§7.5)."""
        return [self.experience_id, self.score, self.author, self.created]


@dataclass(frozen=True, slots=True)
class Retraction:
    """An author's signed withdrawal of its own experience (PROTOCOL.md §7.6): receivers that
    hold that experience *with that author* delete it and never store it again."""

    experience_id: bytes
    author: bytes
    created: int
    signature: bytes

    kind = KIND_RETRACTION

    def __post_init__(self) -> None:
        _check_bytes(self.experience_id, "experience_id", ID_BYTES)
        _check_bytes(self.author, "author", KEY_BYTES)
        _check_created(self.created)
        _check_bytes(self.signature, "signature", SIG_BYTES)

    def body(self) -> list[Any]:
        """The signed fields in wire order (§7.6)."""
        return [self.experience_id, self.author, self.created]


Item = Experience | Submission | Feedback | Retraction
_ITEM_TYPES = (Experience, Submission, Feedback, Retraction)

_SIG_DOMAIN = {
    KIND_EXPERIENCE: EXPERIENCE_SIG_DOMAIN,
    KIND_SUBMISSION: SUBMISSION_SIG_DOMAIN,
    KIND_FEEDBACK: FEEDBACK_SIG_DOMAIN,
    KIND_RETRACTION: RETRACTION_SIG_DOMAIN,
}
_BODY_LEN = {KIND_EXPERIENCE: 7, KIND_SUBMISSION: 5, KIND_FEEDBACK: 4, KIND_RETRACTION: 3}


# --- Canonical msgpack (§4) -----------------------------------------------------------------------


def _pack(obj: Any) -> bytes:
    """Canonical msgpack: msgpack-python emits the shortest form of every int, str, bin, array."""
    return msgpack.packb(obj, use_bin_type=True)


def signing_payload(item: Item) -> bytes:
    """The exact bytes an item's signature covers: the kind's domain string + canonical body."""
    return _SIG_DOMAIN[item.kind] + _pack(item.body())


def _sign(private_key: Ed25519PrivateKey, kind: str, body: list[Any]) -> bytes:
    return private_key.sign(_SIG_DOMAIN[kind] + _pack(body))


def verify_signature(item: Item) -> None:
    """Raise SignatureError unless item.signature is the author's Ed25519 signature."""
    try:
        Ed25519PublicKey.from_public_bytes(item.author).verify(
            item.signature, signing_payload(item)
        )
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"{item.kind} signature does not verify") from exc


def _public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("private_key must be a cryptography Ed25519PrivateKey")
    return private_key.public_key().public_bytes_raw()


# --- Constructors that sign -----------------------------------------------------------------------


def make_experience(
    private_key: Ed25519PrivateKey,
    domain: str,
    text: str,
    tags: Iterable[str] = (),
    provenance: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    created: int | None = None,
) -> Experience:
    """Normalise, canonicalise (sorted unique tags, sorted provenance), sign and validate."""
    author = _public_key_bytes(private_key)
    text = normalize_text(text)
    if isinstance(tags, str):
        raise SchemaError("tags must be a sequence of str, not one str")
    norm_tags = {normalize_text(t) for t in tags}
    tag_list = sorted(norm_tags, key=lambda t: t.encode("utf-8", "surrogatepass"))
    pairs = list(provenance.items()) if isinstance(provenance, Mapping) else list(provenance)
    try:
        pairs = [(k, v) for k, v in pairs]  # also checks that each one is a pair
    except (TypeError, ValueError) as exc:
        raise SchemaError("provenance must be (key, value) pairs") from exc
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise SchemaError("provenance keys must be unique")
    if any(type(k) is not str for k in keys):
        raise SchemaError("provenance keys must be str")
    pairs.sort(key=lambda kv: kv[0])
    created = now_ms() if created is None else created
    _check_created(created)
    eid = experience_id(domain, text)
    body = [eid, domain, text, tag_list, [list(p) for p in pairs], created, author]
    try:
        signature = _sign(private_key, KIND_EXPERIENCE, body)
    except (TypeError, ValueError, OverflowError) as exc:  # unpackable field types
        raise SchemaError(f"experience field of a wrong type: {exc}") from exc
    item = Experience(eid, domain, text, tuple(tag_list), tuple(pairs), created, author, signature)
    encode_item(item)  # enforces the 4 KiB item bound
    return item


class Uint8Row(Protocol):
    """One row of bitdelta.encode's (n, 964) uint8 matrix: a numpy array, which this module
    takes without importing numpy (dtype and ndim are checked at run time)."""

    def tobytes(self) -> bytes: ...


def _code_bytes(code: bytes | bytearray | memoryview | Uint8Row) -> bytes:
    if type(code) is bytes:
        return code
    if isinstance(code, bytearray | memoryview):
        return bytes(code)
    if (
        not isinstance(code, bytes)  # a bytes subclass is refused below, as Submission would
        and str(getattr(code, "dtype", "")) == "uint8"
        and getattr(code, "ndim", 0) == 1
    ):
        return code.tobytes()
    raise SchemaError(f"code must be bytes (msgpack bin), got {type(code).__name__}")


def make_submission(
    private_key: Ed25519PrivateKey,
    experience_id: bytes,
    space_id: bytes | str,
    code: bytes | bytearray | memoryview | Uint8Row,
    created: int | None = None,
) -> Submission:
    """Sign one BitDelta code of an experience in a space. space_id: 32 bytes or 64 hex chars."""
    author = _public_key_bytes(private_key)
    if isinstance(space_id, str):
        try:
            space_id = bytes.fromhex(space_id)
        except ValueError as exc:
            raise SchemaError("space_id is not hex") from exc
    code = _code_bytes(code)
    created = now_ms() if created is None else created
    # Validate before signing (the signature is a placeholder until then).
    Submission(experience_id, space_id, code, author, created, bytes(SIG_BYTES))
    body = [experience_id, space_id, code, author, created]
    return Submission(
        experience_id, space_id, code, author, created, _sign(private_key, KIND_SUBMISSION, body)
    )


def feedback_score(value: float) -> int:
    """The wire score of a vote in [-1, 1]: round(1000 * value) + 1000 (ties to even)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"feedback value must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise SchemaError(f"feedback value {value!r} is outside [-1, 1]")
    return round(value * FEEDBACK_SCORE_SCALE) + FEEDBACK_SCORE_SCALE


def make_feedback(
    private_key: Ed25519PrivateKey,
    experience_id: bytes,
    value: float,
    created: int | None = None,
) -> Feedback:
    """Sign a vote on an experience: value in [-1, 1] (+1 helpful, -1 unhelpful)."""
    author = _public_key_bytes(private_key)
    score = feedback_score(value)
    created = now_ms() if created is None else created
    Feedback(experience_id, score, author, created, bytes(SIG_BYTES))  # validate first
    body = [experience_id, score, author, created]
    return Feedback(experience_id, score, author, created, _sign(private_key, KIND_FEEDBACK, body))


def make_retraction(
    private_key: Ed25519PrivateKey, experience_id: bytes, created: int | None = None
) -> Retraction:
    """Sign the withdrawal of one of our experiences (§7.6)."""
    author = _public_key_bytes(private_key)
    created = now_ms() if created is None else created
    Retraction(experience_id, author, created, bytes(SIG_BYTES))  # validate first
    body = [experience_id, author, created]
    return Retraction(experience_id, author, created, _sign(private_key, KIND_RETRACTION, body))


# --- Items ----------------------------------------------------------------------------------------


def encode_item(item: Item) -> bytes:
    """The signed item as it travels and is stored: [1, kind, body, signature] (§7)."""
    if not isinstance(item, _ITEM_TYPES):
        raise SchemaError(f"cannot encode {type(item).__name__} as a wire item")
    data = _pack([WIRE_VERSION, item.kind, item.body(), item.signature])
    if len(data) > MAX_ITEM_BYTES:
        raise OversizeError(f"item is {len(data)} bytes, the limit is {MAX_ITEM_BYTES}")
    return data


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise SchemaError(f"expected bytes, got {type(data).__name__}")


def _parse(data: bytes) -> Any:
    """§9.2 step 2: exactly one msgpack object, within the parser limits."""
    return parse_msgpack(data, _PARSE_LIMITS)


def parse_msgpack(data: bytes, limits: ParseLimits) -> Any:
    """Exactly one msgpack object within `limits` (unpackb's max_*_len), or a typed WireError.

    Shared by every decoder of untrusted bytes (items, batches, sync messages): the limits
    apply before anything is allocated from a length the sender chose.
    """
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, timestamp=0, **limits
        )
    except msgpack.StackError as exc:
        raise SchemaError("arrays nested too deep") from exc
    except msgpack.ExtraData as exc:
        raise MalformedError("trailing bytes after the msgpack object") from exc
    except UnicodeDecodeError as exc:
        raise MalformedError("a msgpack str is not valid UTF-8") from exc
    except ValueError as exc:
        match = _LIMIT_RE.search(str(exc))
        if match is None:
            raise MalformedError(
                f"not a well-formed msgpack object ({exc or 'bad format'})"
            ) from exc
        if match.group(1) in ("map", "ext"):
            raise SchemaError(f"msgpack {match.group(1)} types are not allowed") from exc
        raise OversizeError(f"a msgpack {match.group(1)} is over the parser limit: {exc}") from exc
    except Exception as exc:  # defensive: nothing untyped may escape a decoder
        raise MalformedError(f"not a well-formed msgpack object ({type(exc).__name__})") from exc


def _check_types(obj: Any, max_depth: int) -> None:
    """§9.2 step 5: only int, str, bin and array, nested at most max_depth arrays deep."""
    stack = [(obj, 0)]  # walked without recursion: the input chooses the depth
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is list:
            if depth >= max_depth:
                raise SchemaError("arrays nested too deep")
            stack.extend((v, depth + 1) for v in value)
        elif kind not in (int, str, bytes):
            raise SchemaError(f"msgpack type {_type_name(value)} is not allowed")


def _type_name(value: object) -> str:
    names = {bool: "bool", type(None): "nil", float: "float", dict: "map"}
    return names.get(type(value), type(value).__name__)


def _check_envelope(obj: Any) -> str:
    """§9.2 steps 3-4: version first (so future versions are recognised), then the kind."""
    if type(obj) is not list or not obj:
        raise SchemaError("top level must be a non-empty msgpack array")
    version = obj[0]
    if type(version) is not int or version != WIRE_VERSION:
        raise VersionError(f"unknown wire version {version!r} (this node speaks {WIRE_VERSION})")
    if len(obj) < 2 or type(obj[1]) is not str:
        raise SchemaError("the second element of the envelope must be the kind (a str)")
    return obj[1]


def decode_item(data: bytes, now_ms: int | None = None, *, check_signature: bool = True) -> Item:
    """Decode and fully verify one signed item; raise a WireError subclass on any fault.

    now_ms: the receiver's clock in ms since the epoch; when given, an item created more than
    5 minutes ahead of it raises ClockSkewError.
    check_signature=False skips only the Ed25519 check (most of the cost): use it solely for
    bytes this node verified itself before storing them, never for bytes from a peer.
    """
    try:
        data = _as_bytes(data)
        if len(data) > MAX_ITEM_BYTES:
            raise OversizeError(f"item is {len(data)} bytes, the limit is {MAX_ITEM_BYTES}")
        obj = _parse(data)
        kind = _check_envelope(obj)
        if kind not in _SIG_DOMAIN:
            raise KindError(f"unknown item kind {kind[:32]!r}")
        if len(obj) != 4:
            raise SchemaError(f"item envelope has {len(obj)} elements, expected 4")
        _check_types(obj, _ITEM_MAX_ARRAY_DEPTH)
        body, signature = obj[2], obj[3]
        if type(body) is not list:
            raise SchemaError(f"{kind} body must be an array, got {_type_name(body)}")
        _check_bytes(signature, "signature", SIG_BYTES)
        if _pack(obj) != data:
            raise NonCanonicalError("item is not in canonical msgpack encoding")
        if len(body) != _BODY_LEN[kind]:
            raise SchemaError(
                f"{kind} body has {len(body)} fields, expected {_BODY_LEN[kind]} "
                "(missing or extra field)"
            )
        # One list: mypy rejects a positional argument after *body of unknown length.
        fields = [*body, signature]
        item: Item
        if kind == KIND_EXPERIENCE:
            item = Experience(*fields)
        elif kind == KIND_SUBMISSION:
            item = Submission(*fields)
        elif kind == KIND_FEEDBACK:
            item = Feedback(*fields)
        else:
            item = Retraction(*fields)
        if check_signature:
            verify_signature(item)
        if now_ms is not None and item.created > now_ms + MAX_CLOCK_SKEW_MS:
            raise ClockSkewError(
                f"created {item.created} is {item.created - now_ms} ms ahead of the local clock "
                f"(limit {MAX_CLOCK_SKEW_MS} ms)"
            )
        return item
    except WireError:
        raise
    except Exception as exc:  # defensive: nothing untyped may escape a decoder
        raise MalformedError(f"undecodable item ({type(exc).__name__}: {exc})") from exc


# --- Batches (§10) --------------------------------------------------------------------------------


def _batch_overhead(count: int) -> int:
    """Bytes of [1, "batch", [...]] around `count` entries (canonical headers)."""
    return 1 + 1 + len(KIND_BATCH) + 1 + (1 if count < 16 else 3)


def _bin_size(length: int) -> int:
    return length + (2 if length < 256 else 3 if length < 65536 else 5)


def encode_batch(items: Iterable[Item | bytes]) -> bytes:
    """[1, "batch", [item bytes...]]: 1..256 encoded items, at most 64 KiB in all."""
    entries: list[bytes] = []
    for item in items:
        if isinstance(item, _ITEM_TYPES):
            entries.append(encode_item(item))
        elif isinstance(item, bytes | bytearray | memoryview):
            entry = bytes(item)
            if not entry or len(entry) > MAX_ITEM_BYTES:
                raise OversizeError(f"batch entry of {len(entry)} bytes (1..{MAX_ITEM_BYTES})")
            entries.append(entry)
        else:
            raise SchemaError(f"cannot put {type(item).__name__} in a batch")
    if not entries:
        raise SchemaError("a batch holds at least one item")
    if len(entries) > MAX_BATCH_ITEMS:
        raise OversizeError(f"{len(entries)} items in a batch, the limit is {MAX_BATCH_ITEMS}")
    data = _pack([WIRE_VERSION, KIND_BATCH, entries])
    if len(data) > MAX_BATCH_BYTES:
        raise OversizeError(f"batch is {len(data)} bytes, the limit is {MAX_BATCH_BYTES}")
    return data


def decode_batch(data: bytes) -> list[bytes]:
    """Check the envelope only and return the entries, each to be passed to decode_item.

    One bad entry does not sink the others: entries are opaque here.
    """
    try:
        data = _as_bytes(data)
        if len(data) > MAX_BATCH_BYTES:
            raise OversizeError(f"batch is {len(data)} bytes, the limit is {MAX_BATCH_BYTES}")
        obj = _parse(data)
        kind = _check_envelope(obj)
        if kind != KIND_BATCH:
            raise KindError(f"expected kind 'batch', got {kind[:32]!r}")
        if len(obj) != 3:
            raise SchemaError(f"batch envelope has {len(obj)} elements, expected 3")
        _check_types(obj, _BATCH_MAX_ARRAY_DEPTH)
        entries = obj[2]
        if type(entries) is not list:
            raise SchemaError(f"batch entries must be an array, got {_type_name(entries)}")
        if _pack(obj) != data:
            raise NonCanonicalError("batch is not in canonical msgpack encoding")
        if not entries:
            raise SchemaError("a batch holds at least one item")
        for entry in entries:
            if type(entry) is not bytes:
                raise SchemaError(f"batch entries must be bin, got {_type_name(entry)}")
            if not entry:
                raise SchemaError("empty batch entry")
        return entries
    except WireError:
        raise
    except Exception as exc:  # defensive: nothing untyped may escape a decoder
        raise MalformedError(f"undecodable batch ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True, slots=True)
class Batch:
    """The payload of one gossip message: encoded items, each still signed on its own."""

    items: tuple[bytes, ...]

    def encode(self) -> bytes:
        return encode_batch(self.items)

    @classmethod
    def decode(cls, data: bytes) -> Batch:
        return cls(tuple(decode_batch(data)))


def pack_batches(encoded_items: Iterable[bytes]) -> list[bytes]:
    """Group encoded items greedily, in order, into as few batches as the limits allow."""
    batches: list[bytes] = []
    current: list[bytes] = []
    payload = 0
    for entry in encoded_items:
        entry = _as_bytes(entry)
        if not entry or len(entry) > MAX_ITEM_BYTES:
            raise OversizeError(f"batch entry of {len(entry)} bytes (1..{MAX_ITEM_BYTES})")
        size = _bin_size(len(entry))
        full = len(current) == MAX_BATCH_ITEMS
        if current and (
            full or _batch_overhead(len(current) + 1) + payload + size > MAX_BATCH_BYTES
        ):
            batches.append(encode_batch(current))
            current, payload = [], 0
        current.append(entry)
        payload += size
    if current:
        batches.append(encode_batch(current))
    return batches
