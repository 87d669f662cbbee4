"""The node's trust: the operator's lists, author standing and experience verdicts over its store.

The rules are pure (dsonode.core.trust); this module feeds them what the store holds (the
operator's block and allow lists, reputation records, votes) and caches nothing across calls
except the operator lists, which change only through `Library.set_listed`. ARCHITECTURE.md
"Trust" has the threat model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dsonode.core import trust
from dsonode.core.errors import DsoError
from dsonode.core.feedback import Aggregate, Vote, weighted_aggregate
from dsonode.core.peerinfo import public_key_from_peer_id
from dsonode.core.quota import QuotaRules
from dsonode.core.stamp import MAX_BITS
from dsonode.core.trust import Standing, StandingRules, Verdict
from dsonode.store import ExperienceRecord, Store


class TrustSettingsError(DsoError):
    """A trust setting is invalid (the message names it)."""


@dataclass(frozen=True)
class TrustSettings:
    """The `[trust]` settings as the library takes them (authors as raw public keys)."""

    mode: str = "vouched"
    allow: frozenset[bytes] = frozenset()
    rules: StandingRules = field(default_factory=StandingRules)
    #: Admission (PROTOCOL.md 18, dsonode.core.quota): the stamp bits an experience of an
    #: author without standing must carry (0: none), and the per-author quotas.
    stamp_bits: int = 0
    quota: QuotaRules = field(default_factory=QuotaRules)
    #: Store lifecycle (`Library.sweep`): unvouched experiences older than this expire (0:
    #: never); above `max_experiences` the store evicts (core.trust.eviction_order).
    unvouched_ttl_s: float = 30 * 86_400.0
    max_experiences: int = 1_000_000

    def __post_init__(self) -> None:
        if self.mode not in trust.TRUST_MODES:
            raise TrustSettingsError(f"trust.mode must be one of {', '.join(trust.TRUST_MODES)}")
        if not 0 <= self.stamp_bits <= MAX_BITS:
            raise TrustSettingsError(f"trust.stamp_bits must be 0..{MAX_BITS}")
        if self.unvouched_ttl_s < 0 or self.max_experiences < 1:
            raise TrustSettingsError("trust.unvouched_ttl_s >= 0 and max_experiences >= 1")

    @classmethod
    def from_config(
        cls,
        *,
        mode: str,
        allow: Iterable[str],
        min_accepted: int,
        min_agreement: float,
        min_age_s: float,
        endorse_min: float,
        stamp_bits: int = 0,
        quota_items_per_hour: int = QuotaRules.items_per_hour,
        quota_bytes: int = QuotaRules.max_bytes,
        standing_quota_factor: float = QuotaRules.standing_factor,
        unvouched_ttl_s: float = 30 * 86_400.0,
        max_experiences: int = 1_000_000,
    ) -> TrustSettings:
        authors = set()
        for peer in allow:
            try:
                authors.add(public_key_from_peer_id(peer))
            except (DsoError, ValueError) as exc:
                raise TrustSettingsError(f"trust.allow: {peer[:60]}: {exc}") from None
        rules = StandingRules(
            min_accepted=min_accepted,
            min_agreement=min_agreement,
            min_age_ms=int(min_age_s * 1000),
            endorse_min=endorse_min,
        )
        quota = QuotaRules(quota_items_per_hour, quota_bytes, standing_quota_factor)
        return cls(
            mode=mode,
            allow=frozenset(authors),
            rules=rules,
            stamp_bits=stamp_bits,
            quota=quota,
            unvouched_ttl_s=unvouched_ttl_s,
            max_experiences=max_experiences,
        )


class TrustView:
    """Standing and verdicts at one moment (one search): caches each author's standing."""

    def __init__(self, policy: TrustPolicy, now_ms: int) -> None:
        self.policy = policy
        self.now_ms = now_ms
        self.allowed, self.blocked = policy.lists()
        self._standing: dict[bytes, Standing] = {}

    def standing(self, author: bytes) -> Standing:
        got = self._standing.get(author)
        if got is None:
            record = None
            if author not in self.blocked and author not in self.allowed:
                record = self.policy.store.get_reputation(author)
            got = trust.standing(
                author,
                me=self.policy.me,
                allowed=self.allowed,
                blocked=self.blocked,
                record=record,
                now_ms=self.now_ms,
                rules=self.policy.settings.rules,
            )
            self._standing[author] = got
        return got

    def verdict(self, exp: ExperienceRecord) -> Verdict:
        votes = [(self.standing(v.author), v.value) for v in self.policy.store.get_feedback(exp.id)]
        return trust.vouch(self.standing(exp.author), votes, self.policy.settings.rules)

    def feedback(self, exp_id: bytes) -> Aggregate | None:
        """The experience's votes weighted by their authors' standing (fresh keys weigh 0)."""
        records = self.policy.store.get_feedback(exp_id)
        votes = [Vote(r.author, r.score, r.created, r.item_hash) for r in records]
        weights: Mapping[bytes, float] = {v.author: self.standing(v.author).value for v in votes}
        return weighted_aggregate(votes, weights)


class TrustPolicy:
    """The operator's trust at this node: settings plus the lists kept in the store."""

    def __init__(self, store: Store, me: bytes, settings: TrustSettings) -> None:
        self.store = store
        self.me = me
        self.settings = settings
        self._lock = threading.Lock()
        self._lists: tuple[frozenset[bytes], frozenset[bytes]] | None = None

    @property
    def mode(self) -> str:
        return self.settings.mode

    def lists(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """(allowed, blocked) authors: the configured allow list plus the operator's stored
        lists. A blocked author is never allowed."""
        with self._lock:
            if self._lists is None:
                blocked = frozenset(self.store.listed("block"))
                allowed = (self.settings.allow | self.store.listed("allow")) - blocked
                self._lists = (frozenset(allowed), blocked)
            return self._lists

    def invalidate(self) -> None:
        with self._lock:
            self._lists = None

    def is_blocked(self, author: bytes) -> bool:
        return author in self.lists()[1]

    def view(self, now_ms: int) -> TrustView:
        return TrustView(self, now_ms)
