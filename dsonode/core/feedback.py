"""Feedback: which lessons work, aggregated per experience and blended into the ranking (pure).

Agents vote on experiences with signed `feedback` items (dsonode.core.wire.Feedback, a value in
[-1, 1]: +1 helpful, -1 unhelpful, or a reward delta in between). Per experience:

1. **One vote per author.** An author may vote again; the vote with the greatest
   `(created, item hash)` replaces the others (the hash breaks ties deterministically, so every
   node keeps the same vote whatever order the items arrived in).
2. **Median across authors** (the mean of the two middle votes for an even count): a minority
   of extreme voters cannot move it far, as with the codes' median. The plain median
   (`aggregate`, what the store keeps) holds only with an honest majority among the voters.
   What ranks search results is `weighted_aggregate`: each vote weighs its author's standing
   (dsonode.core.trust), and a vote of an author without standing weighs nothing, so a
   thousand fresh keys voting move no ranking (ARCHITECTURE.md "Trust").
3. **Ranking blend**: ``score = similarity + weight * median * votes / (votes + DAMPING)``.
   The damping acts as `DAMPING` neutral (0) pseudo-votes: one vote moves a result by a
   quarter of the weight, ten by three quarters, never by more than the weight itself.
   `weight` is the node's `[api] feedback_weight` (default 0.1; 0 turns feedback off in the
   ranking). Similarities of relevant results differ by a few hundredths, so the default lets
   a clear verdict of several agents reorder near-equal results without burying relevance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dsonode.core.errors import DsoError
from dsonode.core.trust import weighted_median
from dsonode.core.wire import FEEDBACK_SCORE_MAX, FEEDBACK_SCORE_SCALE

__all__ = [
    "DAMPING",
    "DEFAULT_WEIGHT",
    "MAX_WEIGHT",
    "Aggregate",
    "FeedbackError",
    "Vote",
    "aggregate",
    "blend",
    "boost",
    "check_weight",
    "latest_votes",
    "rerank",
    "supersedes",
    "weighted_aggregate",
]

#: Neutral pseudo-votes of the damping: f = median * n / (n + DAMPING).
DAMPING = 3
#: Default weight of feedback in the ranking (config `[api] feedback_weight`).
DEFAULT_WEIGHT = 0.1
#: Largest accepted weight: beyond 1 feedback would outweigh any similarity difference.
MAX_WEIGHT = 1.0


class FeedbackError(DsoError, ValueError):
    """A feedback setting or argument is out of range."""


@dataclass(frozen=True, slots=True)
class Vote:
    """One stored feedback item, as aggregation sees it (score: the wire integer 0..2000)."""

    author: bytes
    score: int
    created: int
    item_hash: bytes

    @property
    def value(self) -> float:
        return (self.score - FEEDBACK_SCORE_SCALE) / FEEDBACK_SCORE_SCALE


def supersedes(new: Vote, old: Vote) -> bool:
    """True if `new` replaces `old` (same author): later `created`, then greater item hash."""
    return (new.created, new.item_hash) > (old.created, old.item_hash)


def latest_votes(votes: Iterable[Vote]) -> dict[bytes, Vote]:
    """The one current vote of each author (independent of the order of `votes`)."""
    out: dict[bytes, Vote] = {}
    for vote in votes:
        old = out.get(vote.author)
        if old is None or supersedes(vote, old):
            out[vote.author] = vote
    return out


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The feedback of one experience: how many authors voted and their median value."""

    votes: int
    median: float

    def as_dict(self) -> dict[str, float | int]:
        return {"votes": self.votes, "median": self.median}


def aggregate(votes: Iterable[Vote]) -> Aggregate | None:
    """Median of the authors' current votes; None when nobody voted.

    Computed on the integer scores, so the result is exact and the same on every node.
    """
    scores = sorted(v.score for v in latest_votes(votes).values())
    if not scores:
        return None
    for s in scores:
        if not 0 <= s <= FEEDBACK_SCORE_MAX:
            raise FeedbackError(f"feedback score {s} is outside 0..{FEEDBACK_SCORE_MAX}")
    n = len(scores)
    mid = n // 2
    doubled = 2 * scores[mid] if n % 2 else scores[mid - 1] + scores[mid]
    # (doubled / 2 - 1000) / 1000, written so that it is exact for halves.
    median = (doubled - 2 * FEEDBACK_SCORE_SCALE) / (2 * FEEDBACK_SCORE_SCALE)
    return Aggregate(votes=n, median=median)


def weighted_aggregate(votes: Iterable[Vote], weight_of: Mapping[bytes, float]) -> Aggregate | None:
    """The authors' current votes, each weighing `weight_of[author]` (absent: 0): their
    weighted median, and the number of votes that weigh anything. None when none does."""
    pairs = [(v.score, float(weight_of.get(v.author, 0.0))) for v in latest_votes(votes).values()]
    counted = [(score, w) for score, w in pairs if w > 0 and math.isfinite(w)]
    middle = weighted_median(counted)  # on the integer scores: a score or the mean of two
    if middle is None:
        return None
    # exact like `aggregate`: twice the middle score is an integer
    median = (round(2 * middle) - 2 * FEEDBACK_SCORE_SCALE) / (2 * FEEDBACK_SCORE_SCALE)
    return Aggregate(votes=len(counted), median=median)


def check_weight(weight: object) -> float:
    """The feedback weight as a float in [0, MAX_WEIGHT], or FeedbackError."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise FeedbackError(f"feedback weight must be a number, got {type(weight).__name__}")
    if not math.isfinite(weight) or not 0.0 <= weight <= MAX_WEIGHT:
        raise FeedbackError(f"feedback weight {weight!r} must be in [0, {MAX_WEIGHT}]")
    return float(weight)


def boost(agg: Aggregate | None, weight: float) -> float:
    """weight * median * votes / (votes + DAMPING); 0 without feedback. |boost| < weight."""
    if agg is None or agg.votes <= 0:
        return 0.0
    return weight * agg.median * agg.votes / (agg.votes + DAMPING)


def blend(similarity: float, agg: Aggregate | None, weight: float) -> float:
    """The ranking score of one result: similarity + boost(feedback)."""
    return float(similarity) + boost(agg, weight)


def rerank(
    hits: Iterable[tuple[bytes, float]],
    aggregates: Mapping[bytes, Aggregate | None],
    weight: float,
    k: int,
) -> list[tuple[bytes, float, float]]:
    """(id, similarity, blended score) of the best `k` hits by blended score.

    Ties: higher similarity first, then smaller id, so the order is deterministic.
    """
    scored = [
        (bytes(exp_id), float(sim), blend(sim, aggregates.get(bytes(exp_id)), weight))
        for exp_id, sim in hits
    ]
    scored.sort(key=lambda t: (-t[2], -t[1], t[0]))
    return scored[: max(0, k)]
