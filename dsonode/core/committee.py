"""Committee sampling: who submits a code for which experience (pure; PROTOCOL.md §16).

In a network of N nodes that all submit for every experience, one experience costs O(N)
submissions. Instead each node draws, per experience, a number from a hash everyone can
recompute, and submits only when it falls under a threshold chosen so that about `m` nodes
(the expected committee, `consensus.committee`) submit:

    draw(experience id, author key) = first 8 bytes, big-endian, of
        sha256(b"dso/committee/1\\x00" + experience id (32 B) + author public key (32 B))
        divided by 2**64                                 -> uniform in [0, 1)
    threshold(m, n) = 1 if m is "all" (None) else min(1, m / max(n, 1))
    a node submits for E   iff  author == E.author  or  draw(E.id, author) < threshold(m, n)

`n` is the node's estimate of the network size: the number of distinct submission authors it
knows (its reputation table, judged in the last 7 days) plus itself. Estimates differ, so a verifier
accepts a submission when its draw falls under `VERIFY_SLACK` times its own threshold;
anything above is ignored (not stored, not counted, not penalised: an honest node with a
smaller estimate of n may have drawn itself in). The experience's author always takes part,
so every experience gets at least one submission however small the draw.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "COMMITTEE_DOMAIN",
    "VERIFY_SLACK",
    "draw",
    "in_committee",
    "threshold",
    "verify_threshold",
]

COMMITTEE_DOMAIN = b"dso/committee/1\x00"
#: A verifier tolerates draws up to this multiple of its own threshold (estimates of n differ).
VERIFY_SLACK = 4.0
_KEY_BYTES = 32


def draw(experience_id: bytes, author: bytes) -> float:
    """The author's uniform draw in [0, 1) for one experience (anyone can recompute it)."""
    if len(experience_id) != _KEY_BYTES or len(author) != _KEY_BYTES:
        raise ValueError("experience id and author key are 32 bytes each")
    digest = hashlib.sha256(COMMITTEE_DOMAIN + bytes(experience_id) + bytes(author)).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def threshold(committee: int | None, network_size: int) -> float:
    """Draw probability for an expected committee of `committee` among `network_size` nodes
    (None = "all": everyone submits)."""
    if committee is None:
        return 1.0
    if committee < 1:
        raise ValueError("committee must be >= 1 or None (all)")
    return min(1.0, committee / max(1, int(network_size)))


def verify_threshold(committee: int | None, network_size: int) -> float:
    """The threshold a verifier applies to other authors' draws (with slack)."""
    return min(1.0, VERIFY_SLACK * threshold(committee, network_size))


def in_committee(
    experience_id: bytes, author: bytes, experience_author: bytes | None, limit: float
) -> bool:
    """Whether `author` may submit for the experience under draw threshold `limit`.

    `experience_author` None means the experience is not known yet: only the draw decides.
    """
    if limit >= 1.0:
        return True
    if experience_author is not None and author == experience_author:
        return True
    return draw(experience_id, author) < limit
