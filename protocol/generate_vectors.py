"""Regenerate protocol/vectors/*.json from fixed keys and inputs (deterministic).

    .venv/bin/python protocol/generate_vectors.py           # rewrite the files
    .venv/bin/python protocol/generate_vectors.py --check   # exit 1 if a file differs

Ed25519 signatures are deterministic (RFC 8032), so every byte here is reproducible.
Valid vectors are built with dsonode.core.wire; invalid ones are built by hand, byte by byte,
so that each carries exactly one fault (see PROTOCOL.md section 9 for the order of checks).
tests/test_protocol_vectors.py checks the files against the implementation and against this
generator.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import bitdelta, stamp, wire

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"

SEED_A = bytes(range(32))  # 000102...1f
SEED_B = bytes(range(32, 64))  # 202122...3f
KEY_A = Ed25519PrivateKey.from_private_bytes(SEED_A)
KEY_B = Ed25519PrivateKey.from_private_bytes(SEED_B)
PUB_A = KEY_A.public_key().public_bytes_raw()
CREATED = 1_700_000_000_000  # 2023-11-14T22:13:20Z
SPACE_ID = hashlib.sha256(b"dso/test-vector-space").digest()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def vector_code() -> bytes:
    """A deterministic 964-byte BitDelta code: scale 0.0078125 (exact in float32), then the
    960 bit bytes sha256(b"dso/test-code" + i) for i = 0..29, concatenated."""
    bits = b"".join(hashlib.sha256(b"dso/test-code" + bytes([i])).digest() for i in range(30))
    return struct.pack("<f", 0.0078125) + bits


def key_info(seed: bytes) -> dict[str, str]:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    return {"seed_hex": seed.hex(), "public_key_hex": key.public_key().public_bytes_raw().hex()}


def valid_item_vector(
    name: str,
    description: str,
    seed: bytes,
    item: Any,
    inputs: dict[str, Any],
    expected: dict[str, Any],
) -> dict[str, Any]:
    """A valid item vector: `item` (signed by `seed`) round-trips through the codec; the
    `expected` section is the kind's own fields, then the bytes every kind has."""
    data = wire.encode_item(item)
    assert wire.decode_item(data) == item
    return {
        "name": name,
        "description": description,
        "type": "item",
        "valid": True,
        "key": key_info(seed),
        "input": inputs,
        "expected": {
            **expected,
            "body_hex": pack(item.body()).hex(),
            "signing_payload_hex": wire.signing_payload(item).hex(),
            "signature_hex": item.signature.hex(),
            "encoded_hex": data.hex(),
            "encoded_len": len(data),
        },
    }


def experience_vector(name: str, description: str, seed: bytes, **inputs: Any) -> dict[str, Any]:
    exp = wire.make_experience(Ed25519PrivateKey.from_private_bytes(seed), **inputs)
    return valid_item_vector(
        name,
        description,
        seed,
        exp,
        {
            "kind": "experience",
            "domain": inputs["domain"],
            "text": inputs["text"],
            "tags": list(inputs.get("tags", ())),
            "provenance": [list(p) for p in inputs.get("provenance", ())],
            "created": inputs["created"],
        },
        {
            "normalized_text": exp.text,
            "tags": list(exp.tags),
            "provenance": [list(p) for p in exp.provenance],
            "id_hex": exp.id.hex(),
        },
    )


def submission_vector(name: str, description: str, seed: bytes, **inputs: Any) -> dict[str, Any]:
    sub = wire.make_submission(Ed25519PrivateKey.from_private_bytes(seed), **inputs)
    return valid_item_vector(
        name,
        description,
        seed,
        sub,
        {
            "kind": "submission",
            "experience_id_hex": inputs["experience_id"].hex(),
            "space_id_hex": inputs["space_id"].hex(),
            "code_hex": inputs["code"].hex(),
            "created": inputs["created"],
        },
        {},
    )


def feedback_vector(
    name: str, description: str, seed: bytes, experience_id: bytes, value: float, created: int
) -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    fb = wire.make_feedback(key, experience_id, value, created=created)
    return valid_item_vector(
        name,
        description,
        seed,
        fb,
        {
            "kind": "feedback",
            "experience_id_hex": experience_id.hex(),
            "value": value,
            "created": created,
        },
        {"score": fb.score},
    )


def fb_body(score: Any = 2000) -> list[Any]:
    """A raw feedback body by key A on the minimal experience."""
    eid = wire.experience_id("ops", "Pin dependency versions.")
    return [eid, score, PUB_A, CREATED + 3]


def invalid_item(
    name: str, description: str, data: bytes, error: str, now_ms: int | None = None
) -> dict[str, Any]:
    vector: dict[str, Any] = {
        "name": name,
        "description": description,
        "type": "item",
        "valid": False,
        "encoded_hex": data.hex(),
        "error": error,
    }
    if now_ms is not None:
        vector["now_ms"] = now_ms
    return vector


def signed(kind: str, body: list[Any], key: Ed25519PrivateKey = KEY_A, **kw: Any) -> bytes:
    """[version, kind, body, sig] with a correct signature over the body (unless overridden)."""
    domain = kw.get("sig_domain", wire.EXPERIENCE_SIG_DOMAIN)
    if kind == "submission" and "sig_domain" not in kw:
        domain = wire.SUBMISSION_SIG_DOMAIN
    signature = key.sign(domain + pack(body))
    return pack([kw.get("version", 1), kind, body, signature])


def build_vectors() -> dict[str, dict[str, Any]]:
    vectors: list[dict[str, Any]] = []
    add = vectors.append

    # --- Valid items ------------------------------------------------------------------------------
    minimal = experience_vector(
        "item_valid_experience_minimal",
        "Smallest useful experience: no tags, no provenance, already-normalised text.",
        SEED_A,
        domain="ops",
        text="Pin dependency versions.",
        created=CREATED,
    )
    add(minimal)
    full = experience_vector(
        "item_valid_experience_normalised",
        "Raw inputs that need normalising: NFD 'e'+U+0301, tab, newline, U+3000, U+00A0, "
        "padding; tags unsorted with a duplicate; provenance given out of key order. The "
        "expected section shows the canonical values that are signed and sent.",
        SEED_A,
        domain="coding/python",
        text="  Cache\tthe  re\u0301sume\u0301 parser\u3000before\n\nthe loop.\u00a0 ",
        tags=["perf", "python", "perf", " caching "],
        provenance=[("source", "rollout-0042"), ("model", "qwen3-8b"), ("node", "")],
        created=CREATED + 1,
    )
    add(full)
    eid_minimal = bytes.fromhex(minimal["expected"]["id_hex"])
    submission = submission_vector(
        "item_valid_submission",
        "A submission of the 964-byte test code (see generate_vectors.vector_code) for the "
        "minimal experience, signed by key B.",
        SEED_B,
        experience_id=eid_minimal,
        space_id=SPACE_ID,
        code=vector_code(),
        created=CREATED + 2,
    )
    add(submission)
    max_exp = experience_vector(
        "item_valid_experience_maximal",
        "Every field at its bound: 64-byte domain, 1,024-byte text, 16 tags of 32 bytes, 8 "
        "provenance pairs (key 32 bytes, value 256 bytes) would exceed 4 KiB, so this one has "
        "7 pairs: the largest item of this shape that fits.",
        SEED_A,
        domain="d" * 64,
        text="\u00e9" * 512,  # 1,024 bytes UTF-8
        tags=[f"tag-{i:02d}-" + "x" * 25 for i in range(16)],
        provenance=[(f"key-{i}-" + "k" * 26, "v" * 256) for i in range(7)],
        created=2**53 - 1,
    )
    add(max_exp)
    add(
        feedback_vector(
            "item_valid_feedback_helpful",
            "Key B votes the minimal experience helpful: value +1, score 2000.",
            SEED_B,
            eid_minimal,
            1.0,
            CREATED + 3,
        )
    )
    add(
        feedback_vector(
            "item_valid_feedback_reward_delta",
            "Key A reports a reward delta of -0.25 for the minimal experience: score 750.",
            SEED_A,
            eid_minimal,
            -0.25,
            CREATED + 4,
        )
    )

    # --- Experience ids ---------------------------------------------------------------------------
    id_cases = []
    for domain, text in [
        ("ops", "Pin dependency versions."),
        ("ops", " Pin\u2003dependency\r\nversions.\t"),
        ("ops", "Pin dependency versions!"),
        ("coding/python", "cafe\u0301"),
        ("coding/python", "caf\u00e9"),
        ("a", "\u200bzero\u200bwidth\u200b"),
        ("x.y_z-0/1", "\u1e9b\u0323"),
    ]:
        norm = wire.normalize_text(text)
        id_cases.append(
            {
                "domain": domain,
                "text": text,
                "normalized_text": norm,
                "id_preimage_hex": (wire.EXPERIENCE_ID_PREFIX + pack([domain, norm])).hex(),
                "id_hex": wire.experience_id(domain, text).hex(),
            }
        )
    add(
        {
            "name": "experience_ids",
            "description": "normalize_text and experience_id: equal ids for equivalent texts, "
            "zero-width space (not White_Space) kept, NFC applied before the hash.",
            "type": "experience_id",
            "valid": True,
            "cases": id_cases,
        }
    )

    # --- Batches ----------------------------------------------------------------------------------
    items = [bytes.fromhex(v["expected"]["encoded_hex"]) for v in (minimal, full, submission)]
    batch = wire.encode_batch(items)
    add(
        {
            "name": "batch_valid_three_items",
            "description": "The envelope of one gossip message holding the two experiences and "
            "the submission above, in that order.",
            "type": "batch",
            "valid": True,
            "entries_hex": [i.hex() for i in items],
            "encoded_hex": batch.hex(),
        }
    )
    bad_entry = signed("experience", exp_body(), key=KEY_B)
    mixed = wire.encode_batch([items[0], bad_entry, items[2]])
    add(
        {
            "name": "batch_valid_envelope_with_bad_entry",
            "description": "A valid envelope whose second entry is an experience with A's "
            "author key signed by key B: decode_batch returns all three entries, then each is "
            "decoded on its own and only the bad one is dropped.",
            "type": "batch",
            "valid": True,
            "entries_hex": [i.hex() for i in (items[0], bad_entry, items[2])],
            "entry_errors": [None, "SignatureError", None],
            "encoded_hex": mixed.hex(),
        }
    )

    # --- Invalid items, one fault each (in the order of the checks, PROTOCOL.md section 9) --------
    good = items[0]
    add(
        invalid_item(
            "item_invalid_oversize_item",
            "4,097 bytes: over the 4 KiB item bound (checked before parsing).",
            good + bytes(4097 - len(good)),
            "OversizeError",
        )
    )
    add(
        invalid_item(
            "item_invalid_malformed_truncated",
            "The minimal experience without its last byte.",
            good[:-1],
            "MalformedError",
        )
    )
    add(
        invalid_item(
            "item_invalid_malformed_trailing",
            "The minimal experience followed by one extra byte 0x00.",
            good + b"\x00",
            "MalformedError",
        )
    )
    add(
        invalid_item(
            "item_invalid_malformed_utf8",
            "A str whose bytes are not UTF-8 (0xff).",
            b"\x94\x01\xa1\xff\x90\xc4\x40" + bytes(64),
            "MalformedError",
        )
    )
    add(
        invalid_item(
            "item_invalid_oversize_text",
            "An experience whose text is 1,025 bytes: over the parser's 1,024-byte str limit.",
            signed("experience", exp_body(text="t" * 1025)),
            "OversizeError",
        )
    )
    add(
        invalid_item(
            "item_invalid_oversize_tags",
            "17 tags (the limit is 16), checked with the fields (step 7).",
            signed("experience", exp_body(tags=[f"t{i:02d}" for i in range(17)])),
            "OversizeError",
        )
    )
    add(
        invalid_item(
            "item_invalid_schema_map",
            "A msgpack map in place of the tags array.",
            signed("experience", exp_body(tags={"a": "b"})),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_schema_float",
            "created as a float64.",
            signed("experience", exp_body(created=float(CREATED))),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_version",
            "Version 2 (the rest is a valid version-1 experience).",
            signed("experience", exp_body(), version=2),
            "VersionError",
        )
    )
    add(
        invalid_item(
            "item_invalid_kind_feedback",
            "Kind 'feedback' with an experience's 7-field body (kind 'feedback' was reserved "
            "in the first draft of version 1; its body has 4 fields).",
            signed("feedback", exp_body()),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_kind_unknown",
            "An unknown kind 'lesson'.",
            signed("lesson", exp_body()),
            "KindError",
        )
    )
    add(
        invalid_item(
            "item_invalid_noncanonical_int",
            "The minimal experience with its version "
            "written as uint8 (0xcc 0x01) instead of positive fixint 0x01.",
            b"\x94\xcc\x01" + good[2:],
            "NonCanonicalError",
        )
    )
    add(
        invalid_item(
            "item_invalid_schema_missing_field",
            "An experience body of 6 fields (author missing), signed as such.",
            signed("experience", exp_body()[:6]),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_schema_extra_field",
            "A submission body of 6 fields (an extra 0 at the end), signed as such.",
            signed("submission", [*sub_body(), 0]),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_schema_domain",
            "Domain 'Ops': upper case is outside [a-z0-9._/-].",
            signed("experience", exp_body(domain="Ops")),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_code_length",
            "A submission whose code is 963 bytes.",
            signed("submission", sub_body(code=vector_code()[:-1])),
            "CodeLengthError",
        )
    )
    add(
        invalid_item(
            "item_invalid_code_scale_nan",
            "A submission whose code scale is a NaN.",
            signed("submission", sub_body(code=b"\x00\x00\xc0\x7f" + vector_code()[4:])),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_noncanonical_text",
            "Text with a double space (not "
            "normalised); id computed over the normalised text, correctly signed.",
            signed("experience", exp_body(text="Pin  dependency versions.")),
            "NonCanonicalError",
        )
    )
    add(
        invalid_item(
            "item_invalid_noncanonical_tags",
            "Tags ['b', 'a']: not sorted.",
            signed("experience", exp_body(tags=["b", "a"])),
            "NonCanonicalError",
        )
    )
    add(
        invalid_item(
            "item_invalid_id_mismatch",
            "The id of another text, correctly signed.",
            signed("experience", exp_body(eid=wire.experience_id("ops", "Other."))),
            "IdMismatchError",
        )
    )
    fb_domain = wire.FEEDBACK_SIG_DOMAIN
    add(
        invalid_item(
            "item_invalid_feedback_score_range",
            "A feedback score of 2001 (the range is 0..2000), correctly signed.",
            signed("feedback", fb_body(2001), sig_domain=fb_domain),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_feedback_score_negative",
            "A feedback score of -1 (negative fixint 0xff): negative integers are not part of "
            "the format (step 5).",
            signed("feedback", fb_body(-1), sig_domain=fb_domain),
            "SchemaError",
        )
    )
    add(
        invalid_item(
            "item_invalid_feedback_signature_domain",
            "A valid feedback body signed under the experience domain string.",
            signed("feedback", fb_body(), sig_domain=wire.EXPERIENCE_SIG_DOMAIN),
            "SignatureError",
        )
    )
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    add(
        invalid_item(
            "item_invalid_signature_flipped",
            "The minimal experience with the last bit of its signature flipped.",
            bytes(flipped),
            "SignatureError",
        )
    )
    # S + L: the same signature in a non-canonical (malleated) form; S must be < L.
    order = 2**252 + 27742317777372353535851937790883648493
    sig = good[-64:]
    s_plus_l = (int.from_bytes(sig[32:], "little") + order).to_bytes(32, "little")
    add(
        invalid_item(
            "item_invalid_signature_malleated",
            "The minimal experience with S replaced by S + L (L the group order): the "
            "verification equation still holds, but RFC 8032 requires S < L.",
            good[:-32] + s_plus_l,
            "SignatureError",
        )
    )
    add(
        invalid_item(
            "item_invalid_signature_domain",
            "The minimal experience's body signed "
            "under the submission domain string (domain separation).",
            signed("experience", exp_body(), sig_domain=wire.SUBMISSION_SIG_DOMAIN),
            "SignatureError",
        )
    )
    add(
        invalid_item(
            "item_invalid_clock_skew",
            "The submission above (created "
            f"{CREATED + 2}) received with now_ms = created - 300,001 (5 minutes and "
            "1 ms behind).",
            items[2],
            "ClockSkewError",
            now_ms=CREATED + 2 - 300_001,
        )
    )

    # --- Invalid batches --------------------------------------------------------------------------
    def invalid_batch(name: str, description: str, data: bytes, error: str) -> None:
        add({"name": name, "description": description, "type": "batch", "valid": False,
             "encoded_hex": data.hex(), "error": error})  # fmt: skip

    invalid_batch("batch_invalid_oversize", "17 entries of 4,000 zero bytes: 68,028 bytes, "
                  "over the 64 KiB batch bound.", pack([1, "batch", [bytes(4000)] * 17]),
                  "OversizeError")  # fmt: skip
    invalid_batch("batch_invalid_too_many", "257 one-byte entries (the limit is 256).",
                  pack([1, "batch", [b"\x00"] * 257]), "OversizeError")  # fmt: skip
    invalid_batch("batch_invalid_kind", "An item (the minimal experience) given as a batch.",
                  good, "KindError")  # fmt: skip
    invalid_batch("batch_invalid_empty", "A batch with no entries.", pack([1, "batch", []]),
                  "SchemaError")  # fmt: skip
    invalid_batch("batch_invalid_noncanonical", "One entry written as bin16 (0xc5 0x00 0x01) "
                  "instead of bin8.", b"\x93\x01\xa5batch\x91\xc5\x00\x01\x00",
                  "NonCanonicalError")  # fmt: skip
    out = {v["name"]: v for v in vectors}
    items = [bytes.fromhex(out[n]["expected"]["encoded_hex"]) for n in ITEM_VECTORS_FOR_SYNC]
    out.update(build_sync_vectors(items))
    out["bitdelta_codes"] = build_bitdelta_vector()
    out["submission_equivocation"] = build_equivocation_vector()
    out.update(build_stamp_vectors())
    out.update(build_retraction_vectors())
    return out


# --- Retraction (PROTOCOL.md section 7.6) ------------------------------------------------------------


def build_retraction_vectors() -> dict[str, dict[str, Any]]:
    eid = wire.experience_id("ops", "Pin dependency versions.")
    created = CREATED + 20
    item = wire.make_retraction(KEY_A, eid, created=created)
    valid = valid_item_vector(
        "item_valid_retraction",
        "Key A (the minimal experience's author) withdraws the minimal experience.",
        SEED_A,
        item,
        {"kind": "retraction", "experience_id_hex": eid.hex(), "created": created},
        {},
    )
    body = [eid, PUB_A, created]
    invalid = invalid_item(
        "item_invalid_retraction_signature_domain",
        "A valid retraction body signed under the feedback domain string.",
        signed("retraction", body, sig_domain=wire.FEEDBACK_SIG_DOMAIN),
        "SignatureError",
    )
    return {valid["name"]: valid, invalid["name"]: invalid}


# --- Admission stamps (PROTOCOL.md section 18), type "stamp" ---------------------------------------

STAMP_TEXT = "Pin dependency versions."
STAMP_BITS = 12


def build_stamp_vectors() -> dict[str, dict[str, Any]]:
    """An experience carrying a 12-bit stamp (a valid item), and the stamp computation:
    the minted nonce, a nonce below the difficulty, and the same nonce replayed by another
    author and moved to another text (both fall below it)."""
    eid = wire.experience_id("ops", STAMP_TEXT)
    nonce = stamp.mint(eid, PUB_A, STAMP_BITS)
    stamped = experience_vector(
        "item_valid_experience_stamped",
        f"The minimal experience's text signed with a {STAMP_BITS}-bit admission stamp: the "
        "provenance pair ['dso-stamp', nonce] (section 18).",
        SEED_A,
        domain="ops",
        text=STAMP_TEXT,
        provenance=[(stamp.STAMP_KEY, nonce)],
        created=CREATED + 10,
    )
    pub_b = KEY_B.public_key().public_bytes_raw()
    other = wire.experience_id("ops", "Another lesson.")
    cheap = next(f"{i:x}" for i in range(1000) if stamp.work_bits(eid, PUB_A, f"{i:x}") < 4)

    def case(label: str, exp_id: bytes, author: bytes, n: str) -> dict[str, Any]:
        preimage = stamp.STAMP_DOMAIN + exp_id + author + n.encode("ascii")
        return {
            "label": label,
            "experience_id_hex": exp_id.hex(),
            "author_hex": author.hex(),
            "nonce": n,
            "preimage_hex": preimage.hex(),
            "digest_hex": hashlib.sha256(preimage).hexdigest(),
            "bits": stamp.work_bits(exp_id, author, n),
        }

    cases = {
        "name": "stamp_cases",
        "description": f"Stamp bits (section 18) at difficulty {STAMP_BITS}: the minted nonce "
        "of item_valid_experience_stamped, a cheap nonce, and the minted nonce replayed by key "
        "B and moved to another text.",
        "type": "stamp",
        "valid": True,
        "difficulty": STAMP_BITS,
        "cases": [
            case("minted", eid, PUB_A, nonce),
            case("too cheap", eid, PUB_A, cheap),
            case("replayed by another author", eid, pub_b, nonce),
            case("moved to another text", other, PUB_A, nonce),
        ],
    }
    return {"item_valid_experience_stamped": stamped, "stamp_cases": cases}


# --- One submission per author (PROTOCOL.md section 7.2), type "submission_order" ---------------


def build_equivocation_vector() -> dict[str, Any]:
    """Key B equivocates on the minimal experience: three signed submissions of one
    (experience, space, author). Every receiver keeps the smallest (created, item hash)."""
    eid = wire.experience_id("ops", "Pin dependency versions.")
    code = vector_code()
    inverted = code[:4] + bytes(b ^ 0xFF for b in code[4:])

    def sub(c: bytes, created: int) -> bytes:
        return wire.encode_item(wire.make_submission(KEY_B, eid, SPACE_ID, c, created=created))

    first = sub(code, CREATED + 2)  # = item_valid_submission
    twin = sub(inverted, CREATED + 2)  # same created: the item hash decides
    low = min(wire.item_hash(first), wire.item_hash(twin))
    # A later one whose item hash is below both (the first such code, scanning deterministically):
    # `created` is compared first, so it still loses.
    later = next(
        r
        for i in range(1, 10_000)
        if wire.item_hash(r := sub(code[:4] + i.to_bytes(960, "little"), CREATED + 3)) < low
    )
    subs = [first, twin, later]
    ranked = sorted(
        range(3), key=lambda i: (wire.decode_item(subs[i]).created, wire.item_hash(subs[i]))
    )
    return {
        "name": "submission_equivocation",
        "description": "Key B signs three submissions for the minimal experience in the test "
        "space: the first is item_valid_submission (created +2), the second has the same "
        "created and the inverted bits, the third is 1 ms later with an item hash below both. "
        "Receivers keep the smallest (created, item hash) whatever the arrival order: the "
        "smaller-hash one of the first two.",
        "type": "submission_order",
        "valid": True,
        "key": key_info(SEED_B),
        "input": {
            "submissions": [
                {
                    "encoded_hex": r.hex(),
                    "created": wire.decode_item(r).created,
                    "item_hash_hex": wire.item_hash(r).hex(),
                }
                for r in subs
            ]
        },
        "expected": {"order": ranked, "kept": ranked[0]},
    }


# --- BitDelta codes (PROTOCOL.md section 7.3), type "bitdelta_code" --------------------------------

DIM = 7680


def test_embedding(label: bytes, seed: int) -> np.ndarray:
    """A deterministic float32 unit vector from SHA-256 alone (no RNG whose stream could change).

    Each coordinate is the sum of four 24-bit uniforms minus 2 (exact in float64), divided by the
    L2 norm (math.fsum, then sqrt: both exactly rounded), then rounded to float32.
    """
    blocks = DIM * 4 * 3 // 32
    stream = b"".join(
        hashlib.sha256(
            b"dso/test-embedding/" + label + seed.to_bytes(4, "big") + j.to_bytes(4, "big")
        ).digest()
        for j in range(blocks)
    )
    k = np.frombuffer(stream, np.uint8).reshape(DIM * 4, 3).astype(np.int64)
    u = ((k[:, 0] << 16) | (k[:, 1] << 8) | k[:, 2]).astype(np.float64) / 2.0**24
    x = u.reshape(DIM, 4).sum(axis=1) - 2.0
    return (x / math.sqrt(math.fsum((x * x).tolist()))).astype(np.float32)


def _f32_b64(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")


def _scale_hex(value: Any) -> str:
    return np.asarray([value], dtype="<f4").tobytes().hex()


def bitdelta_case(
    name: str, what: str, e: np.ndarray, r: np.ndarray | None = None
) -> dict[str, Any]:
    d = e if r is None else np.subtract(e, r, dtype=np.float32)
    a = np.abs(d)
    total = math.fsum(a.astype(np.float64).tolist())
    half = DIM // 2
    code = bitdelta.encode(e, ref=r)
    case: dict[str, Any] = {
        "name": name,
        "what": what,
        "embedding_f32le_b64": _f32_b64(e),
        "reference_f32le_b64": None if r is None else _f32_b64(r),
        "sum_abs_d": total.hex(),
        "mean_binary64": (total / DIM).hex(),
        "scale_hex": code[:4].hex(),
        "code_hex": code.hex(),
        # What the usual shortcuts give instead (so the case is seen to discriminate them).
        "wrong_scales_hex": {
            "binary32_pairwise_mean": _scale_hex(np.mean(a, dtype=np.float32)),
            "binary32_sequential_mean": _scale_hex(
                np.cumsum(a, dtype=np.float32)[-1] / np.float32(DIM)
            ),
            "binary32_halves_then_binary64": _scale_hex(
                np.add(a[:half], a[half:]).sum(dtype=np.float64) / DIM
            ),
        },
    }
    if r is not None:
        exact_d = np.abs(e.astype(np.float64) - r.astype(np.float64))
        case["wrong_scales_hex"]["d_in_binary64"] = _scale_hex(math.fsum(exact_d.tolist()) / DIM)
    return case


def build_bitdelta_vector() -> dict[str, Any]:
    # Seeds 331 and 86 are the first from 0 whose scale the shortcuts get wrong (checked below).
    e1 = test_embedding(b"a", 331)
    r2 = test_embedding(b"r", 0) * np.float32(0.5)
    e2 = test_embedding(b"b", 86)
    tie = np.full(DIM, -0.0, dtype=np.float32)
    tie[: DIM // 2] = np.float32(2.0**-149) * np.where(np.arange(DIM // 2) % 3 == 0, -1, 1)
    negzero = np.full(DIM, -0.5, dtype=np.float32)
    negzero[:8] = -0.0
    negzero[8] = 0.5
    cases = [
        bitdelta_case(
            "mean_precision",
            "A unit vector (zero reference) whose binary32 mean, pairwise or sequential, and "
            "the binary64 sum of binary32 half-sums all differ from the pinned scale.",
            e1,
        ),
        bitdelta_case(
            "reference_binary32",
            "A unit vector with a non-zero reference: d = e - r rounded to binary32 gives this "
            "scale; the exact differences would give another.",
            e2,
            r2,
        ),
        bitdelta_case(
            "zero_scale_tie",
            "3840 entries of +-2^-149 and 3840 of -0.0: the mean is exactly 2^-150, a tie that "
            "rounds half to even to +0.0, so every sign bit is 1 (canonical zero code).",
            tie,
        ),
        bitdelta_case(
            "negative_zero",
            "Entries 0..7 are -0.0 (bit 1: -0.0 >= 0), entry 8 is +0.5, the rest -0.5.",
            negzero,
        ),
    ]
    one, two, tie_case = cases[0], cases[1], cases[2]
    assert all(w != one["scale_hex"] for w in one["wrong_scales_hex"].values())
    assert two["wrong_scales_hex"]["d_in_binary64"] != two["scale_hex"]
    assert tie_case["code_hex"] == "00000000" + "ff" * 960
    return {
        "name": "bitdelta_codes",
        "description": "The 964-byte BitDelta code of section 7.3 for given binary32 inputs: "
        "the scale's precision, binary32 subtraction of the reference, round half to even, the "
        "canonical zero code, -0.0.",
        "type": "bitdelta_code",
        "valid": True,
        "cases": cases,
    }


# --- Sync protocol vectors (PROTOCOL.md section 12), type "sync" ------------------------------------

ITEM_VECTORS_FOR_SYNC = (
    "item_valid_experience_minimal",
    "item_valid_experience_normalised",
    "item_valid_submission",
)


def build_sync_vectors(items: list[bytes]) -> dict[str, dict[str, Any]]:
    """Sync messages and exchanges over the three valid items above (created = CREATED + 0,
    +1, +2). Each vector has `input`: "exchange" (request/response pairs), "message" or
    "frame", and for the invalid ones the `error` class that decoding or checking raises."""
    from dsonode.core import sync

    def frame_hex(msg: Any) -> str:
        return sync.encode_frame(sync.encode_message(msg)).hex()

    def step(request: Any, response: Any) -> dict[str, Any]:
        return {
            "request_kind": request.kind,
            "request_hex": sync.encode_message(request).hex(),
            "request_frame_hex": frame_hex(request),
            "response_kind": response.kind,
            "response_hex": sync.encode_message(response).hex(),
            "response_frame_hex": frame_hex(response),
        }

    hashes = [wire.item_hash(i) for i in items]
    created = [CREATED, CREATED + 1, CREATED + 2]
    entries = list(zip(created, hashes, strict=True))
    # Window [CREATED - 1000, CREATED + 1000) in 2 ms buckets: items 0 and 1 share the bucket
    # starting at CREATED, item 2 is alone in the bucket starting at CREATED + 2.
    inv_req = sync.InventoryRequest(SPACE_ID, CREATED - 1000, CREATED + 1000, 2)
    inventory = sync.build_inventory(inv_req, entries)
    first = inventory.buckets[0]
    hashes_req = sync.HashesRequest(SPACE_ID, first.start_ms, first.start_ms + 2, b"")
    page = sync.Hashes(tuple(sorted(hashes[:2])), False)
    items_req = sync.ItemsRequest(tuple(sorted(hashes)))
    by_hash = dict(zip(hashes, items, strict=True))
    items_resp = sync.fit_items([by_hash[h] for h in items_req.hashes], len(items_req.hashes))
    out: list[dict[str, Any]] = [
        {
            "name": "sync_valid_exchange",
            "description": "A full exchange over the minimal, normalised and submission items: "
            "the inventory of a 2,000 ms window in 2 ms buckets, the hashes of the first "
            "bucket, then all three items by hash (items in request order).",
            "type": "sync",
            "valid": True,
            "input": "exchange",
            "entries": [{"created": c, "item_hash_hex": h.hex()} for c, h in entries],
            "bucket_digests": [
                {
                    "start_ms": b.start_ms,
                    "count": b.count,
                    "preimage_hex": (
                        sync.BUCKET_DIGEST_DOMAIN
                        + b"".join(
                            sorted(h for c, h in entries if b.start_ms <= c < b.start_ms + 2)
                        )
                    ).hex(),
                    "digest_hex": b.digest.hex(),
                }
                for b in inventory.buckets
            ],
            "steps": [
                step(inv_req, inventory),
                step(hashes_req, page),
                step(items_req, items_resp),
            ],
        }
    ]

    def invalid(name: str, description: str, input_: str, data: bytes, error: str) -> None:
        out.append({"name": name, "description": description, "type": "sync", "valid": False,
                    "input": input_, "encoded_hex": data.hex(), "error": error})  # fmt: skip

    invalid("sync_invalid_frame_nonminimal", "A frame length of 1 written as the 2-byte varint "
            "0x81 0x00 (not minimal), then a 1-byte payload.", "frame", b"\x81\x00\x00",
            "FrameError")  # fmt: skip
    invalid("sync_invalid_frame_oversize", "A frame header announcing 65,537 bytes "
            "(0x81 0x80 0x04), one more than the limit; rejected before any payload is read.",
            "frame", b"\x81\x80\x04", "FrameError")  # fmt: skip
    invalid("sync_invalid_message_unsorted_hashes", "An items request whose two hashes are in "
            "descending order.", "message",
            pack([1, "sync/items-request", sorted(hashes[:2], reverse=True)]),
            "NonCanonicalError")  # fmt: skip
    invalid("sync_invalid_message_too_many_buckets", "An inventory request for 1,025 buckets "
            "(a 1,025 ms window in 1 ms buckets; the limit is 1,024).", "message",
            pack([1, "sync/inventory-request", SPACE_ID, CREATED, CREATED + 1025, 1]),
            "OversizeError")  # fmt: skip
    unrequested = {
        "name": "sync_invalid_exchange_unrequested_item",
        "description": "An items request for the minimal experience answered with the "
        "submission: a well-formed response that does not answer its request.",
        "type": "sync",
        "valid": False,
        "input": "exchange",
        "steps": [step(sync.ItemsRequest((hashes[0],)), sync.Items((items[2],), 1))],
        "error": "SyncError",
    }
    out.append(unrequested)
    return {v["name"]: v for v in out}


def exp_body(
    domain: str = "ops",
    text: str = "Pin dependency versions.",
    tags: Any = (),
    created: Any = CREATED,
    eid: bytes | None = None,
) -> list[Any]:
    """A raw experience body by key A; the id is right for (domain, normalize_text(text))."""
    if eid is None:
        norm = wire.normalize_text(text) if isinstance(text, str) else text
        eid = hashlib.sha256(wire.EXPERIENCE_ID_PREFIX + pack([domain, norm])).digest()
    tags = tags if isinstance(tags, dict) else list(tags)
    return [eid, domain, text, tags, [], created, PUB_A]


def sub_body(code: bytes | None = None) -> list[Any]:
    eid = wire.experience_id("ops", "Pin dependency versions.")
    code = vector_code() if code is None else code
    return [eid, SPACE_ID, code, KEY_A.public_key().public_bytes_raw(), CREATED]


def render(vector: dict[str, Any]) -> str:
    return json.dumps(vector, indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    vectors = build_vectors()
    if args.check:
        bad = [n for n, v in vectors.items() if not _same(VECTOR_DIR / f"{n}.json", render(v))]
        extra = sorted(p.stem for p in VECTOR_DIR.glob("*.json") if p.stem not in vectors)
        for name in bad + extra:
            print(f"differs or unexpected: {name}.json", file=sys.stderr)
        return 1 if bad or extra else 0
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for name, vector in vectors.items():
        (VECTOR_DIR / f"{name}.json").write_text(render(vector), encoding="utf-8")
    print(f"wrote {len(vectors)} vectors to {VECTOR_DIR}")
    return 0


def _same(path: Path, text: str) -> bool:
    return path.exists() and path.read_text(encoding="utf-8") == text


if __name__ == "__main__":
    sys.exit(main())
