"""The consensus engine: stored submissions of one (experience, space) -> a ConsensusRecord.

Pure (no I/O): the daemon reads the submissions from
the store, calls `compute_consensus`, writes the record, updates the index, and applies
`reputation_deltas` to the authors' reputation records with `apply_reputation`.

Rules (ARCHITECTURE.md "The pure core", Aggregation):
- only submissions of this experience in this space count; one per author: the one with the
  smallest `(created, item hash)` (PROTOCOL.md 7.2, `submission_rank`; the store keeps only
  that one, so every node counts the same submission whatever the arrival order); at most
  `MAX_SUBMITTERS` authors (the earliest ones) take part, so one experience costs bounded work;
- consensus = `dsonode.core.aggregate.aggregate_codes` (coordinate-wise median by default,
  robust cut-off, recomputed without the rejected); `count` = accepted submissions;
  `confirmed` once `quorum` of them agree;
- the record's `stats["verdicts"]` keeps each author's current verdict (hex author -> bool).

Reputation rule: an author's reputation counts, over all experiences, how many of its
submissions the current consensus accepts and rejects. Each recomputation changes an
author's verdict for that experience at most once, so `reputation_deltas(old, new)` moves
the counters by exactly the verdicts that changed (new author: +1 accepted or +1 rejected;
accepted -> rejected: -1/+1; and back). Recomputing the same consensus twice therefore
changes nothing. The score is the Beta(1, 1) posterior mean of "accepted":
`score = (accepted + 1) / (accepted + rejected + 2)`: 0.5 for a stranger, rising towards 1
with every accepted submission and falling towards 0 with every rejected one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dsonode.core.aggregate import DEFAULT_QUORUM, aggregate_codes
from dsonode.core.constants import CODE_BYTES
from dsonode.core.errors import AggregateError
from dsonode.core.wire import Submission, item_hash

__all__ = [
    "MAX_SUBMITTERS",
    "ConsensusOutcome",
    "ConsensusRecord",
    "SubmissionLike",
    "apply_reputation",
    "compute_consensus",
    "reputation_deltas",
    "reputation_score",
    "submission_precedes",
    "submission_rank",
]

#: Authors taken into one consensus (the committee of PROTOCOL.md 16 is 7 by default).
MAX_SUBMITTERS = 64


@dataclass(frozen=True)
class ConsensusRecord:
    """The consensus code of one experience in one space and how it was reached."""

    space_id: bytes
    experience_id: bytes
    code: bytes
    count: int
    confirmed: bool
    domain: str
    stats: dict[str, Any] = field(default_factory=dict)
    updated: int = 0


class SubmissionLike(Protocol):
    """A stored record (with its signed bytes `raw`) or a wire.Submission."""

    @property
    def experience_id(self) -> bytes: ...
    @property
    def space_id(self) -> bytes: ...
    @property
    def author(self) -> bytes: ...
    @property
    def code(self) -> bytes: ...
    @property
    def created(self) -> int: ...


@dataclass(frozen=True)
class ConsensusOutcome:
    record: ConsensusRecord
    accepted_authors: tuple[bytes, ...]
    rejected_authors: tuple[bytes, ...]
    #: Author -> cosine of its submission to the consensus.
    cosines: Mapping[bytes, float]

    @property
    def verdicts(self) -> dict[bytes, bool]:
        out = {a: True for a in self.accepted_authors}
        out.update({a: False for a in self.rejected_authors})
        return out


def submission_rank(s: SubmissionLike) -> tuple[int, bytes]:
    """`(created, item hash)`: of one author's submissions for one (experience, space) the
    smallest is the one kept and counted (PROTOCOL.md 7.2). The hash is that of the signed
    bytes `raw` of a stored record, or of the encoded wire.Submission; a record with neither
    ranks by `created` alone (b"": ties keep their input order)."""
    raw = getattr(s, "raw", None)
    if isinstance(raw, bytes) and raw:
        return s.created, item_hash(raw)
    if isinstance(s, Submission):
        return s.created, item_hash(s)
    return s.created, b""


def submission_precedes(new: tuple[int, bytes], old: tuple[int, bytes]) -> bool:
    """True if a submission ranked `new` replaces the stored one ranked `old` of the same
    (experience, space, author): strictly smaller `(created, item hash)` (PROTOCOL.md 7.2)."""
    return new < old


def _first_per_author(
    submissions: Sequence[SubmissionLike], experience_id: bytes, space_id: bytes
) -> list[SubmissionLike]:
    relevant = [
        s
        for s in submissions
        if s.experience_id == experience_id
        and s.space_id == space_id
        and isinstance(s.code, bytes)
        and len(s.code) == CODE_BYTES
    ]
    relevant.sort(key=submission_rank)
    first: dict[bytes, SubmissionLike] = {}
    for s in relevant:
        first.setdefault(s.author, s)
    return list(first.values())[:MAX_SUBMITTERS]


def compute_consensus(
    submissions: Sequence[SubmissionLike],
    *,
    experience_id: bytes,
    space_id: bytes,
    domain: str,
    now_ms: int,
    ref: np.ndarray | None = None,
    quorum: int = DEFAULT_QUORUM,
    method: str = "median",
    weights: Mapping[bytes, float] | None = None,
    eligible: Callable[[bytes], bool] | None = None,
    **aggregate_kwargs: Any,
) -> ConsensusOutcome | None:
    """The consensus of an experience's submissions, or None if there is none to compute.

    `method` is any of dsonode.core.aggregate.METHODS; `weights` maps author keys to weights
    (absent authors weigh 1; only for the weighted methods); `eligible(author)` drops the
    submissions of authors outside the experience's committee draw (dsonode.core.committee):
    they are neither accepted nor rejected, so they do not move reputation.

    Raises AggregateError only for bad settings; codes that cancel out or are all zero (a
    peer-controlled condition) give None rather than an error.
    """
    if eligible is not None:
        submissions = [s for s in submissions if eligible(s.author)]
    subs = _first_per_author(submissions, experience_id, space_id)
    if not subs:
        return None
    row_weights = None
    if weights:
        row_weights = np.array([float(weights.get(s.author, 1.0)) for s in subs])
    try:
        result = aggregate_codes(
            [s.code for s in subs],
            ref=ref,
            method=method,
            quorum=quorum,
            weights=row_weights,
            **aggregate_kwargs,
        )
    except AggregateError as exc:
        msg = str(exc)
        if "zero" in msg or "cancel" in msg:
            return None
        raise
    assert result.code is not None
    accepted = tuple(s.author for s, ok in zip(subs, result.accepted, strict=True) if ok)
    rejected = tuple(s.author for s, ok in zip(subs, result.accepted, strict=True) if not ok)
    cosines = {s.author: float(c) for s, c in zip(subs, result.cosines, strict=True)}
    verdicts = {a.hex(): True for a in accepted} | {a.hex(): False for a in rejected}
    record = ConsensusRecord(
        space_id=space_id,
        experience_id=experience_id,
        code=result.code,
        count=result.n_accepted,
        confirmed=bool(result.confirmed),
        domain=domain,
        stats={
            "method": result.method,
            "submissions": len(subs),
            "rejected": len(rejected),
            "cutoff": float(result.cutoff) if np.isfinite(result.cutoff) else None,
            "verdicts": verdicts,
        },
        updated=now_ms,
    )
    return ConsensusOutcome(record, accepted, rejected, cosines)


def previous_verdicts(record: ConsensusRecord | None) -> dict[bytes, bool]:
    """The verdicts a stored record carries (empty for none, or a record without them)."""
    if record is None:
        return {}
    raw = record.stats.get("verdicts") if isinstance(record.stats, dict) else None
    out: dict[bytes, bool] = {}
    if isinstance(raw, dict):
        for author_hex, ok in raw.items():
            try:
                out[bytes.fromhex(author_hex)] = bool(ok)
            except (TypeError, ValueError):
                continue
    return out


def reputation_deltas(
    old: Mapping[bytes, bool], new: Mapping[bytes, bool]
) -> dict[bytes, tuple[int, int]]:
    """Author -> (d_accepted, d_rejected) moving reputation from `old` verdicts to `new`."""
    deltas: dict[bytes, tuple[int, int]] = {}
    for author in set(old) | set(new):
        before, after = old.get(author), new.get(author)
        if before == after:
            continue
        d_acc = (after is True) - (before is True)
        d_rej = (after is False) - (before is False)
        deltas[author] = (int(d_acc), int(d_rej))
    return deltas


def reputation_score(accepted: int, rejected: int) -> float:
    return (accepted + 1) / (accepted + rejected + 2)


def apply_reputation(
    record: Mapping[str, Any] | None, delta: tuple[int, int], now_ms: int
) -> dict[str, Any]:
    """A reputation record after one delta (counters never go below zero)."""
    old = dict(record or {})
    accepted = max(0, int(old.get("accepted", 0)) + delta[0])
    rejected = max(0, int(old.get("rejected", 0)) + delta[1])
    # `first`: when the author was first judged here (standing needs age, dsonode.core.trust)
    old.setdefault("first", now_ms)
    old.update(
        accepted=accepted,
        rejected=rejected,
        score=round(reputation_score(accepted, rejected), 6),
        updated=now_ms,
    )
    return old
