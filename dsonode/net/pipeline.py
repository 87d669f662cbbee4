"""The validation pipeline of one incoming gossip batch (pure: no libp2p, no lmdb, no clock).

`Pipeline.process(origin, data, now_ms=..., now_s=...)` runs the checks of issue 5 in order,
cheapest first, and returns what survived:

1. graylist: a graylisted origin's message is dropped unread (`dropped_graylisted`);
2. envelope size (`oversize`), then `wire.decode_batch` (any WireError: `bad_batch`);
3. per entry: the bounded LRU of recently accepted item hashes (`duplicate`, a small
   penalty: GossipSub already drops a second copy of a *message*, so a duplicate *item* here
   is its origin publishing an item again - once after a restart is normal, thousands a
   minute is a replay attack);
4. per-origin rate, a token bucket of *items* (`rate`);
5. `wire.decode_item(entry, now_ms)`: schema, canonical form, signature, clock skew (each
   WireError is counted under a reason named after its class, e.g. `signature`,
   `clock_skew`, `schema`);
6. an injected `is_stored(item)` predicate (`stored`, no penalty): already in the store.

Penalties: each rejection adds `PENALTY[reason]` to the origin's score, which decays
exponentially (half-life `penalty_half_life_s`); a score at or above `graylist_threshold`
graylists the origin for `graylist_s` seconds. Honest peers only ever collect the
zero-weight `stored`, a few duplicates (a node re-publishes at most its own repaired items
after a restart: 256 x 0.05 = 12.8 points) and rare clock skews, all of which decay away; a
replayer reaches the threshold after about 2,000 duplicate items within a half-life.

Clocks are injected: `now_ms` (wall clock, for the skew check) and `now_s` (monotonic, for
buckets, decay and the graylist), so tests drive time directly.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from dsonode.core import wire
from dsonode.core.constants import MAX_BATCH_BYTES
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
    "PENALTY",
    "BatchOutcome",
    "Pipeline",
    "PipelineConfig",
    "PipelineError",
    "reason_of",
]


class PipelineError(WireError):
    """A pipeline setting is out of range."""


#: Penalty per rejected item (or message), by reason. Zero: not the sender's fault.
PENALTY: dict[str, float] = {
    "oversize": 20.0,
    "bad_batch": 20.0,
    "bad_rpc": 50.0,  # a pubsub frame that does not parse (gossip layer, not this pipeline)
    "malformed": 10.0,
    "version": 2.0,  # a newer peer, not necessarily a hostile one
    "kind": 2.0,
    "schema": 10.0,
    "code_length": 10.0,
    "non_canonical": 10.0,
    "id_mismatch": 10.0,
    "signature": 25.0,
    "clock_skew": 2.0,
    "rate": 1.0,
    "duplicate": 0.05,
    "stored": 0.0,
}

# Most specific class first (CodeLengthError is a SchemaError).
_REASONS: tuple[tuple[type[WireError], str], ...] = (
    (CodeLengthError, "code_length"),
    (ClockSkewError, "clock_skew"),
    (SignatureError, "signature"),
    (IdMismatchError, "id_mismatch"),
    (NonCanonicalError, "non_canonical"),
    (KindError, "kind"),
    (VersionError, "version"),
    (OversizeError, "oversize"),
    (SchemaError, "schema"),
    (MalformedError, "malformed"),
)


def reason_of(exc: WireError) -> str:
    """The counter name of a wire error (its most specific known class)."""
    for cls, name in _REASONS:
        if isinstance(exc, cls):
            return name
    return "malformed"


@dataclass(frozen=True)
class PipelineConfig:
    max_message_bytes: int = MAX_BATCH_BYTES
    #: Hashes of recently accepted items remembered (a bounded LRU, 32 bytes each).
    seen_capacity: int = 100_000
    #: Items per second one origin may send, and the burst it may save up (a new peer is
    #: sent the whole gossip history window at once, and a batch holds up to 256 items).
    peer_items_per_s: float = 500.0
    peer_item_burst: int = 4096
    max_tracked_peers: int = 4096
    penalty_half_life_s: float = 60.0
    graylist_threshold: float = 100.0
    graylist_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 1024 <= self.max_message_bytes <= MAX_BATCH_BYTES:
            raise PipelineError(f"max_message_bytes must be 1024..{MAX_BATCH_BYTES}")
        if not 1 <= self.seen_capacity <= 10_000_000:
            raise PipelineError("seen_capacity must be 1..10000000")
        if not 0 < self.peer_items_per_s <= 1e6 or not 1 <= self.peer_item_burst <= 1e7:
            raise PipelineError("peer_items_per_s must be in (0, 1e6], peer_item_burst 1..1e7")
        if not 1 <= self.max_tracked_peers <= 1_000_000:
            raise PipelineError("max_tracked_peers must be 1..1000000")
        if not 0 < self.penalty_half_life_s <= 86_400:
            raise PipelineError("penalty_half_life_s must be in (0, 86400]")
        if not 0 < self.graylist_threshold <= 1e9:
            raise PipelineError("graylist_threshold must be in (0, 1e9]")
        if not 0 < self.graylist_s <= 30 * 86_400:
            raise PipelineError("graylist_s must be in (0, 30 days]")


@dataclass
class BatchOutcome:
    """What one message yielded: accepted (raw bytes, decoded item) pairs, in order."""

    accepted: list[tuple[bytes, wire.Item]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    #: The message was dropped unread because its origin is graylisted.
    dropped_graylisted: bool = False
    #: This message pushed its origin over the graylist threshold.
    graylisted_now: bool = False
    penalty: float = 0.0


@dataclass
class _PeerState:
    score: float = 0.0
    score_at: float = 0.0
    tokens: float = 0.0
    tokens_at: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0


class Pipeline:
    """Per-node validation state: seen hashes, per-peer buckets and scores, the graylist."""

    def __init__(
        self,
        config: PipelineConfig | None = None,
        is_stored: Callable[[wire.Item], bool] | None = None,
    ) -> None:
        self.config = config or PipelineConfig()
        self.is_stored = is_stored
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._peers: OrderedDict[bytes, _PeerState] = OrderedDict()
        self._graylist: dict[bytes, float] = {}  # origin -> graylisted until (now_s clock)
        #: Network-wide counters (for metrics): items accepted, rejections by reason.
        self.accepted_items = 0
        self.rejected: Counter[str] = Counter()
        self.dropped_graylisted = 0

    # -- state

    def _peer(self, origin: bytes, now_s: float) -> _PeerState:
        state = self._peers.get(origin)
        if state is None:
            burst = float(self.config.peer_item_burst)
            state = self._peers[origin] = _PeerState(0.0, now_s, burst, now_s)
            while len(self._peers) > self.config.max_tracked_peers:
                self._peers.popitem(last=False)  # graylist entries live apart, unaffected
        else:
            self._peers.move_to_end(origin)
        return state

    def _decay(self, state: _PeerState, now_s: float) -> None:
        dt = now_s - state.score_at
        if dt > 0:
            state.score *= math.pow(0.5, dt / self.config.penalty_half_life_s)
            state.score_at = now_s

    def score(self, origin: bytes, now_s: float) -> float:
        """The origin's current (decayed) penalty score; 0 for an unknown origin."""
        state = self._peers.get(origin)
        if state is None:
            return 0.0
        self._decay(state, now_s)
        return state.score

    def is_graylisted(self, origin: bytes, now_s: float) -> bool:
        until = self._graylist.get(origin)
        if until is None:
            return False
        if now_s >= until:
            del self._graylist[origin]
            return False
        return True

    def graylisted(self, now_s: float) -> list[bytes]:
        return [p for p in list(self._graylist) if self.is_graylisted(p, now_s)]

    def peer_stats(self, now_s: float) -> dict[bytes, dict[str, object]]:
        """Per-origin counters: accepted items, rejections by reason, score, graylisted."""
        out: dict[bytes, dict[str, object]] = {}
        for origin, state in self._peers.items():
            self._decay(state, now_s)
            out[origin] = {
                "accepted": state.accepted,
                "rejected": dict(state.rejected),
                "penalty": round(state.score, 3),
                "graylisted": self.is_graylisted(origin, now_s),
            }
        return out

    def remember(self, raw: bytes) -> None:
        """Mark an item as seen (our own publishes, items fetched by other means)."""
        self._remember(hashlib.sha256(raw).digest())

    def _remember(self, digest: bytes) -> None:
        self._seen[digest] = None
        self._seen.move_to_end(digest)
        while len(self._seen) > self.config.seen_capacity:
            self._seen.popitem(last=False)

    def _take_token(self, state: _PeerState, now_s: float) -> bool:
        dt = now_s - state.tokens_at
        if dt > 0:
            state.tokens = min(
                float(self.config.peer_item_burst), state.tokens + dt * self.config.peer_items_per_s
            )
            state.tokens_at = now_s
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return True
        return False

    def _reject(self, out: BatchOutcome, state: _PeerState, reason: str) -> None:
        out.rejected[reason] += 1
        state.rejected[reason] += 1
        self.rejected[reason] += 1
        weight = PENALTY.get(reason, 10.0)
        out.penalty += weight
        state.score += weight

    # -- the pipeline

    def process(self, origin: bytes, data: bytes, *, now_ms: int, now_s: float) -> BatchOutcome:
        """Validate one gossip message from `origin` (its peer id bytes)."""
        out = BatchOutcome()
        if self.is_graylisted(origin, now_s):
            out.dropped_graylisted = True
            self.dropped_graylisted += 1
            return out
        state = self._peer(origin, now_s)
        self._decay(state, now_s)
        if not isinstance(data, bytes | bytearray) or len(data) > self.config.max_message_bytes:
            self._reject(out, state, "oversize")
            return self._finish(out, origin, state, now_s)
        try:
            entries = wire.decode_batch(bytes(data))
        except WireError:
            self._reject(out, state, "bad_batch")
            return self._finish(out, origin, state, now_s)
        for raw in entries:
            digest = hashlib.sha256(raw).digest()
            if digest in self._seen:
                self._seen.move_to_end(digest)
                self._reject(out, state, "duplicate")
                continue
            if not self._take_token(state, now_s):
                self._reject(out, state, "rate")
                continue
            try:
                item = wire.decode_item(raw, now_ms)
            except WireError as exc:
                self._reject(out, state, reason_of(exc))
                continue
            self._remember(digest)  # verified: a repeat need not be verified again
            if self.is_stored is not None and self.is_stored(item):
                self._reject(out, state, "stored")
                continue
            out.accepted.append((raw, item))
        state.accepted += len(out.accepted)
        self.accepted_items += len(out.accepted)
        return self._finish(out, origin, state, now_s)

    def penalise(self, origin: bytes, reason: str, now_s: float, count: int = 1) -> BatchOutcome:
        """Count `count` rejections of `reason` against `origin` for data that came by another
        path than gossip (a sync exchange), with the same weights and graylist threshold."""
        out = BatchOutcome()
        state = self._peer(origin, now_s)
        self._decay(state, now_s)
        for _ in range(max(0, min(int(count), 10_000))):
            self._reject(out, state, reason)
        return self._finish(out, origin, state, now_s)

    def _finish(
        self, out: BatchOutcome, origin: bytes, state: _PeerState, now_s: float
    ) -> BatchOutcome:
        if state.score >= self.config.graylist_threshold:
            self._graylist[origin] = now_s + self.config.graylist_s
            while len(self._graylist) > self.config.max_tracked_peers:  # bounded: the
                del self._graylist[min(self._graylist, key=self._graylist.__getitem__)]
            out.graylisted_now = True
            # The score restarts from zero when the graylist expires (a fresh chance).
            state.score = 0.0
        return out
