"""Admission stamps: a proof of work per experience, so that new identities pay per item (pure).

PROTOCOL.md section 18. A stamp is the provenance pair ``("dso-stamp", nonce)`` of an
experience (signed with it, so it needs no new wire field): ``nonce`` is 1 to 16 lowercase
hex digits, and the stamp's **bits** are the leading zero bits of

    SHA-256( "dso/stamp/1" || 0x00 || experience id (32) || author (32) || nonce (ASCII) )

It binds the experience and its author: a stamp cannot be moved to another text or replayed
by another key, and the same experience again is the same item (a duplicate). A node admits
an experience of an author without standing there only if its bits reach the network's
difficulty (config `trust.stamp_bits`); minting one takes 2^bits hashes on average.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from dsonode.core.errors import DsoError

__all__ = [
    "MAX_BITS",
    "STAMP_DOMAIN",
    "STAMP_KEY",
    "StampError",
    "mint",
    "stamp_bits",
    "stamp_of",
    "work_bits",
]

#: The provenance key of a stamp (PROTOCOL.md 5.5 charset).
STAMP_KEY = "dso-stamp"
STAMP_DOMAIN = b"dso/stamp/1\x00"
#: Largest difficulty a node may ask (2^40 hashes would take days in Python).
MAX_BITS = 40
_NONCE = re.compile(r"[0-9a-f]{1,16}")


class StampError(DsoError, ValueError):
    """A stamp cannot be made (bad arguments, or no nonce found within the tries allowed)."""


def _leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte:
            return bits + 8 - byte.bit_length()
        bits += 8
    return bits


def work_bits(exp_id: bytes, author: bytes, nonce: str) -> int:
    """The bits of a nonce for (experience id, author); 0 for a nonce of the wrong form."""
    if len(exp_id) != 32 or len(author) != 32 or not _NONCE.fullmatch(nonce):
        return 0
    digest = hashlib.sha256(STAMP_DOMAIN + exp_id + author + nonce.encode("ascii")).digest()
    return _leading_zero_bits(digest)


def stamp_of(provenance: Iterable[tuple[str, str]]) -> str | None:
    """The stamp's nonce in an experience's provenance, if any."""
    for key, value in provenance:
        if key == STAMP_KEY:
            return value
    return None


def stamp_bits(exp_id: bytes, author: bytes, provenance: Iterable[tuple[str, str]]) -> int:
    """The bits of an experience's stamp (0 without one)."""
    nonce = stamp_of(provenance)
    return 0 if nonce is None else work_bits(exp_id, author, nonce)


def mint(exp_id: bytes, author: bytes, bits: int, max_tries: int = 1 << 34) -> str:
    """The first nonce (counting up from 0) whose stamp reaches `bits`."""
    if not 0 <= bits <= MAX_BITS:
        raise StampError(f"stamp bits must be 0..{MAX_BITS}")
    if len(exp_id) != 32 or len(author) != 32:
        raise StampError("experience id and author must be 32 bytes each")
    if bits == 0:
        return "0"
    base = hashlib.sha256(STAMP_DOMAIN + exp_id + author)
    full, rest = divmod(bits, 8)
    for n in range(max_tries):
        nonce = f"{n:x}"
        h = base.copy()
        h.update(nonce.encode("ascii"))
        d = h.digest()
        # cheap test of whole zero bytes first, then the partial byte
        if d[:full] == bytes(full) and (rest == 0 or d[full] >> (8 - rest) == 0):
            return nonce
    raise StampError(f"no stamp of {bits} bits within {max_tries} tries")
