"""Per-author admission quotas: items per hour and stored bytes, scaled by standing (pure).

A node admits an author's new experiences and votes at a bounded rate (a token bucket of
`items_per_hour` tokens, refilled continuously) and keeps at most `max_bytes` of its
experiences. Authors with standing (dsonode.core.trust) get `standing_factor` times both:
reputation changes what a peer may send. The checks run before an item is stored or embedded
(ARCHITECTURE.md "Trust"); a key rotation starts a fresh bucket, which is why new identities
also pay a stamp per experience (dsonode.core.stamp).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsonode.core.errors import DsoError

__all__ = ["Bucket", "QuotaError", "QuotaRules", "take"]

HOUR_MS = 3600 * 1000


class QuotaError(DsoError, ValueError):
    """A quota setting is out of range."""


@dataclass(frozen=True)  # no slots: the class attributes are the declared defaults (settings)
class QuotaRules:
    items_per_hour: int = 120
    max_bytes: int = 4 * 1024 * 1024
    standing_factor: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.items_per_hour <= 10_000_000:
            raise QuotaError("items_per_hour must be 1..10000000")
        if not 4096 <= self.max_bytes <= 1 << 40:
            raise QuotaError("max_bytes must be 4096..2^40")
        if not 1.0 <= self.standing_factor <= 1000.0:
            raise QuotaError("standing_factor must be in [1, 1000]")

    def scale(self, standing: float) -> float:
        """How many times the base quota an author of this standing (0..1) gets."""
        return 1.0 + (self.standing_factor - 1.0) * max(0.0, min(1.0, standing))

    def items(self, standing: float) -> float:
        return self.items_per_hour * self.scale(standing)

    def bytes(self, standing: float) -> int:
        return int(self.max_bytes * self.scale(standing))


@dataclass(frozen=True, slots=True)
class Bucket:
    """An author's tokens at `at_ms`."""

    tokens: float
    at_ms: int


def take(bucket: Bucket | None, now_ms: int, per_hour: float) -> tuple[bool, Bucket]:
    """Take one token from a bucket of capacity `per_hour` refilled at `per_hour` an hour
    (a new author starts full). Returns (admitted, the bucket after)."""
    if bucket is None:
        tokens = per_hour
    else:
        elapsed = max(0, now_ms - bucket.at_ms)
        tokens = min(per_hour, bucket.tokens + per_hour * elapsed / HOUR_MS)
    if tokens >= 1.0:
        return True, Bucket(tokens - 1.0, now_ms)
    return False, Bucket(tokens, now_ms)
