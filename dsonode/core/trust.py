"""Trust: which authors have standing, which experiences are vouched, what a node serves (pure).

The threat model and the definitions are in ARCHITECTURE.md "Trust"; in short: a signature
proves who wrote an item, not that it is good, and a fresh key costs nothing. So what a node
serves to its agents is rooted in what it trusts, never in counts an attacker can mint:

- **Standing** of an author, in [0, 1] (`standing`): 1 for this node's own key and for the
  operator's allowed authors; 1 for an author that *earned* it (at least `min_accepted`
  submissions accepted into consensus, an agreement ratio of at least `min_agreement`, and a
  first judged submission at least `min_age_ms` ago: keys are free, time is not); else 0.
  A blocked author has 0, whatever else is true.
- **Vouched** experience (`vouch`): authored by an author with standing, or endorsed (a vote
  of at least `endorse_value`) by authors whose standing sums to at least `endorse_min`;
  unless authors with standing disown it (their weighted median vote is at most
  `-endorse_value`). Votes of authors without standing count for nothing, so any number of
  fresh keys can neither vouch for an experience nor bury one.
- **Served** (`serves`): mode "open" serves everything not blocked; "vouched" (the default)
  serves vouched experiences; "allowlist" serves only what the operator's own trust reaches
  (own or allowed authors, or endorsed by them). A call may ask for the unvouched too
  (`include_unvouched`); blocked authors are never served.

Every verdict carries `why`, the reasons it is trusted (or "unvouched"), which the socket
returns with each result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsonode.core.errors import DsoError

__all__ = [
    "TRUST_MODES",
    "EvictionCandidate",
    "Standing",
    "StandingRules",
    "TrustError",
    "Verdict",
    "eviction_order",
    "expired",
    "serves",
    "standing",
    "vouch",
    "weighted_median",
]

#: What a node serves by default (config `trust.mode`, ARCHITECTURE.md "Trust").
TRUST_MODES = ("open", "vouched", "allowlist")

#: Standing reasons that come from the operator (this node's key, its allow list).
OPERATOR_REASONS = ("self", "allowed")


class TrustError(DsoError, ValueError):
    """A trust setting or argument is out of range."""


@dataclass(frozen=True)  # no slots: the class attributes are the declared defaults (settings)
class StandingRules:
    """How an author earns standing and an experience gets vouched (config `[trust]`)."""

    min_accepted: int = 20
    min_agreement: float = 0.9
    min_age_ms: int = 7 * 24 * 3600 * 1000
    endorse_min: float = 1.0
    endorse_value: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.min_accepted <= 1_000_000:
            raise TrustError("min_accepted must be 1..1000000")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise TrustError("min_agreement must be in [0, 1]")
        if self.min_age_ms < 0:
            raise TrustError("min_age_ms must be >= 0")
        if not 0.0 < self.endorse_min <= 1000.0:
            raise TrustError("endorse_min must be in (0, 1000]")
        if not 0.0 < self.endorse_value <= 1.0:
            raise TrustError("endorse_value must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Standing:
    """An author's standing at this node: value in [0, 1] and where it comes from
    ("self", "allowed", "earned", "blocked" or "none")."""

    value: float
    reason: str

    @property
    def operator(self) -> bool:
        return self.reason in OPERATOR_REASONS


def standing(
    author: bytes,
    *,
    me: bytes,
    allowed: frozenset[bytes] | set[bytes],
    blocked: frozenset[bytes] | set[bytes],
    record: Mapping[str, Any] | None,
    now_ms: int,
    rules: StandingRules,
) -> Standing:
    """The standing of `author` (see the module docstring). `record` is its reputation record
    (dsonode.core.consensus.apply_reputation: accepted, rejected, first)."""
    if author in blocked:
        return Standing(0.0, "blocked")
    if author == me:
        return Standing(1.0, "self")
    if author in allowed:
        return Standing(1.0, "allowed")
    if record:
        accepted = _count(record.get("accepted"))
        rejected = _count(record.get("rejected"))
        first = record.get("first")
        judged = accepted + rejected
        if (
            accepted >= rules.min_accepted
            and judged > 0
            and accepted / judged >= rules.min_agreement
            and isinstance(first, int)
            and not isinstance(first, bool)
            and now_ms - first >= rules.min_age_ms
        ):
            return Standing(1.0, "earned")
    return Standing(0.0, "none")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def weighted_median(values: Sequence[tuple[float, float]]) -> float | None:
    """The weighted median of (value, weight) pairs with weight > 0 (None when there are none).

    The lower weighted median, averaged with the next value when the cumulative weight is
    exactly half (so equal weights give the ordinary median, the mean of the middle two for
    an even count).
    """
    pairs = sorted((float(v), float(w)) for v, w in values if w > 0)
    if not pairs:
        return None
    total = sum(w for _, w in pairs)
    cum = 0.0
    for i, (value, weight) in enumerate(pairs):
        cum += weight
        if cum * 2 > total:
            return value
        if cum * 2 == total:
            return (value + pairs[i + 1][0]) / 2 if i + 1 < len(pairs) else value
    return pairs[-1][0]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why (or whether) one experience is trusted at this node."""

    vouched: bool
    #: Reached by the operator's own trust (own or allowed author, or endorsed by one).
    operator: bool
    blocked: bool
    why: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"vouched": self.vouched, "why": list(self.why)}


def vouch(
    author: Standing,
    votes: Sequence[tuple[Standing, float]],
    rules: StandingRules,
) -> Verdict:
    """The verdict on one experience from its author's standing and the current votes on it
    ((voter standing, vote value in [-1, 1]) pairs)."""
    if author.reason == "blocked":
        return Verdict(False, False, True, ("blocked",))
    why: list[str] = []
    operator = False
    if author.reason == "self":
        why.append("own")
        operator = True
    elif author.reason == "allowed":
        why.append("allowed_author")
        operator = True
    elif author.value > 0:
        why.append("author_standing")
    counted = [(s, v) for s, v in votes if s.value > 0]
    endorsers = [s for s, v in counted if v >= rules.endorse_value]
    if any(s.operator for s in endorsers):
        why.append("endorsed_by_operator")
        operator = True
    if sum(s.value for s in endorsers) >= rules.endorse_min:
        why.append("endorsed")
    median = weighted_median([(v, s.value) for s, v in counted])
    if median is not None and median <= -rules.endorse_value and author.reason != "self":
        # authors with standing say it does harm: not served as vouched, whoever wrote it
        return Verdict(False, False, False, ("disowned",))
    if not why:
        return Verdict(False, False, False, ("unvouched",))
    return Verdict(True, operator, False, tuple(why))


def serves(mode: str, verdict: Verdict, *, include_unvouched: bool = False) -> bool:
    """Whether a node in `mode` serves an experience with this verdict."""
    if mode not in TRUST_MODES:
        raise TrustError(f"trust mode must be one of {', '.join(TRUST_MODES)}, got {mode!r}")
    if verdict.blocked:
        return False
    if include_unvouched or mode == "open":
        return True
    if mode == "vouched":
        return verdict.vouched
    return verdict.operator


# ---- store lifecycle ---------------------------------------------------------------------------


def expired(created_ms: int, now_ms: int, ttl_ms: int, vouched: bool) -> bool:
    """An unvouched experience older than the TTL (0: never) expires; a vouched one never."""
    return not vouched and ttl_ms > 0 and now_ms - created_ms > ttl_ms


@dataclass(frozen=True, slots=True)
class EvictionCandidate:
    id: bytes
    vouched: bool
    #: its author holds more stored bytes than its quota allows
    over_quota: bool
    created: int


def eviction_order(candidates: Sequence[EvictionCandidate]) -> list[bytes]:
    """Ids in the order a full store evicts them: unvouched before vouched (never a vouched
    one while an unvouched one is left), within each over-quota authors' first, then oldest
    `created` first (id breaks ties, so every node orders alike)."""
    ranked = sorted(candidates, key=lambda c: (c.vouched, not c.over_quota, c.created, c.id))
    return [c.id for c in ranked]
