"""GossipSub for dsonode: one topic per embedding space, batched and paced publishing, and a
receive loop that counts every message it does not pass on.

The payloads are opaque bytes here (the daemon hands in `dsonode.core.wire.encode_batch` as
the batch encoder and decodes with `decode_batch` in its handler), bounded by
`GossipConfig.max_message_bytes` (64 KiB). py-libp2p 0.8.1 loses messages silently in five
places; each is closed or counted here (details in README.md in this folder):

1. spam protection: 10 messages/s per peer and topic, applied to our own publishes too
   -> switched off; `PeerRateLimiter` below limits per *origin* instead and counts.
2. adaptive gossip stretches the 120 s default heartbeat to 30-60 s and moves degrees
   -> switched off; heartbeat 1 s and D / D_low / D_high set for small networks.
3. `Pubsub.publish()` only queues: the per-peer outbound queue holds 32 RPCs and drops on
   overflow -> `Batcher` packs many payloads per message, a token bucket paces publishes,
   and the publisher waits while any per-peer queue is above a high-water mark; the drops
   that remain are counted (`rpc_dropped`).
4. the subscription channel holds 32 messages and drops when the reader lags -> received
   messages go to our own bounded inbox instead, overflow counted (`inbox_overflow`).
5. sequence numbers start at int(time.time()) and count up, so a node that published faster
   than 1 msg/s and restarts re-uses (from, seqno) pairs that peers still hold as seen (or
   flag as equivocation) -> the counter starts at time.time_ns().
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from dsonode.config.settings import default
from dsonode.core import wire
from dsonode.core.constants import MAX_BATCH_BYTES
from dsonode.core.errors import DsoError, WireError

logger = logging.getLogger(__name__)

TOPIC_PREFIX = wire.TOPIC_PREFIX
#: GossipSub versions offered, newest first. 1.3+ (extensions) and 2.0 are left out: their
#: extra machinery is experimental in 0.8.1 and nothing here needs it.
GOSSIP_PROTOCOLS = (PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID)
#: Fixed and per-entry allowance of the batch envelope (msgpack [1, "batch", [bin...]] needs
#: 13 + up to 5 per entry); the estimate must never be below the real encoded size.
BATCH_OVERHEAD_BYTES = 16
BATCH_ENTRY_OVERHEAD_BYTES = 5

Handler = Callable[..., Awaitable[bool]]  # (topic, origin, data[, verdict]) -> accepted?
Prevalidator = Callable[[ID, bytes], tuple[bool, Any]]
BatchEncoder = Callable[[Sequence[bytes]], bytes]


class GossipError(DsoError, ValueError):
    """A payload, topic or gossip setting is out of bounds."""


def topic_for_space(space_id: bytes | str) -> str:
    """`/dso/1/space/<64 hex>` for a 32-byte space id (bytes or 64 lowercase hex chars).

    The name is the wire spec's (`dsonode.core.wire.topic_for_space`, PROTOCOL.md §11); the
    network side is stricter on text (lowercase only) and raises GossipError.
    """
    if isinstance(space_id, str) and space_id != space_id.lower():
        raise GossipError("space id must be lowercase hex")
    try:
        return wire.topic_for_space(space_id if isinstance(space_id, str) else bytes(space_id))
    except WireError as exc:
        raise GossipError(f"bad space id: {exc}") from None


def space_of_topic(topic: str) -> bytes:
    if not topic.startswith(TOPIC_PREFIX):
        raise GossipError(f"topic {topic[:80]!r} is not a dsonode space topic")
    hex_part = topic[len(TOPIC_PREFIX) :]
    if len(hex_part) != 64:
        raise GossipError(f"topic {topic[:80]!r} does not end in a 32-byte space id")
    return bytes.fromhex(topic_for_space(hex_part)[len(TOPIC_PREFIX) :])


@dataclass(frozen=True)
class GossipConfig:
    """GossipSub and pacing settings. Defaults suit a testnet of 3-20 nodes on 2 cores."""

    degree: int = default("net.gossip_degree")
    degree_low: int = default("net.gossip_degree_low")
    degree_high: int = default("net.gossip_degree_high")
    #: py-libp2p types it int; its own default is 120
    heartbeat_interval_s: int = default("net.gossip_heartbeat_s")
    gossip_window: int = 3
    gossip_history: int = 5
    seen_ttl_s: int = 120
    max_message_bytes: int = MAX_BATCH_BYTES
    batch_max_items: int = default("net.batch_max_items")
    batch_max_bytes: int = default("net.batch_max_bytes")  # room for the envelope
    batch_linger_s: float = default("net.batch_linger_s")  # wait for a part-full batch
    #: see README: every message costs CPU at every node
    max_publish_per_s: float = default("net.max_publish_per_s")
    publish_burst: int = default("net.publish_burst")
    queue_high_water: int = 8  # libp2p drops at 32 RPCs per peer; stay well below
    backpressure_timeout_s: float = 5.0
    outbox_max_items: int = default("net.outbox_max_items")
    inbox_max_messages: int = 1024
    origin_max_msgs_per_s: float = 50.0
    origin_burst: int = 200  # a new peer is sent the whole message cache window at once
    max_tracked_origins: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.degree_low <= self.degree <= self.degree_high <= 64:
            raise GossipError("need 1 <= degree_low <= degree <= degree_high <= 64")
        if not 1 <= self.heartbeat_interval_s <= 60:
            raise GossipError("heartbeat_interval_s must be 1..60")
        if not 1024 <= self.max_message_bytes <= MAX_BATCH_BYTES:
            raise GossipError(f"max_message_bytes must be 1024..{MAX_BATCH_BYTES}")
        if not 1 <= self.batch_max_items <= 256:
            raise GossipError("batch_max_items must be 1..256")
        if not 256 <= self.batch_max_bytes <= self.max_message_bytes:
            raise GossipError("batch_max_bytes must be 256..max_message_bytes")
        if not 0 <= self.batch_linger_s <= 5:
            raise GossipError("batch_linger_s must be 0..5")
        if not 0.1 <= self.max_publish_per_s <= 1000 or not 1 <= self.publish_burst <= 1000:
            raise GossipError("max_publish_per_s must be 0.1..1000 and publish_burst 1..1000")
        if not 1 <= self.queue_high_water <= 31:
            raise GossipError("queue_high_water must be 1..31 (libp2p's queue holds 32)")
        if not 0.1 <= self.backpressure_timeout_s <= 120:
            raise GossipError("backpressure_timeout_s must be 0.1..120")
        if not 1 <= self.outbox_max_items <= 1_000_000:
            raise GossipError("outbox_max_items must be 1..1000000")
        if not 1 <= self.inbox_max_messages <= 100_000:
            raise GossipError("inbox_max_messages must be 1..100000")
        if self.origin_max_msgs_per_s <= 0 or self.origin_burst < 1:
            raise GossipError("origin_max_msgs_per_s must be > 0 and origin_burst >= 1")


# ----------------------------------------------------------------------------------------
# Pure parts: batching and rate limiting (no I/O, tested directly)


def estimate_batch_bytes(sizes: Sequence[int]) -> int:
    """An upper bound of the encoded batch size for payloads of these sizes."""
    return BATCH_OVERHEAD_BYTES + sum(s + BATCH_ENTRY_OVERHEAD_BYTES for s in sizes)


class Batcher:
    """A FIFO of payloads cut into batches bounded in count and (estimated) bytes."""

    def __init__(self, max_items: int, max_bytes: int, max_pending: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self._queue: deque[tuple[bytes, float]] = deque()
        self._bytes = 0  # estimated bytes of everything queued

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, payload: bytes, now: float) -> bool:
        """Queue one payload; False when the queue is full (the caller counts the drop)."""
        if not payload:
            raise GossipError("empty payload")
        if estimate_batch_bytes([len(payload)]) > self.max_bytes:
            raise GossipError(
                f"payload of {len(payload)} bytes cannot fit a batch of {self.max_bytes} bytes"
            )
        if len(self._queue) >= self.max_pending:
            return False
        self._queue.append((bytes(payload), now))
        self._bytes += len(payload) + BATCH_ENTRY_OVERHEAD_BYTES
        return True

    def full_batch_ready(self) -> bool:
        return (
            len(self._queue) >= self.max_items
            or BATCH_OVERHEAD_BYTES + self._bytes >= self.max_bytes
        )

    def oldest_age(self, now: float) -> float:
        return now - self._queue[0][1] if self._queue else 0.0

    def take(self) -> tuple[list[bytes], list[float]]:
        """The next batch (payloads, their enqueue times); never over the bounds."""
        out: list[bytes] = []
        times: list[float] = []
        size = BATCH_OVERHEAD_BYTES
        while self._queue and len(out) < self.max_items:
            payload, t = self._queue[0]
            cost = len(payload) + BATCH_ENTRY_OVERHEAD_BYTES
            if size + cost > self.max_bytes:
                break
            self._queue.popleft()
            self._bytes -= cost
            size += cost
            out.append(payload)
            times.append(t)
        return out, times


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def try_take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


class PeerRateLimiter:
    """A token bucket per peer; forgets the least recently seen peer past `max_peers`."""

    def __init__(self, rate: float, burst: int, max_peers: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def allow(self, peer: bytes, now: float) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        return bucket.try_take(now)


@dataclass
class GossipStats:
    """Counters of everything sent, received and dropped (nothing is dropped uncounted)."""

    published_msgs: int = 0
    published_items: int = 0
    published_bytes: int = 0
    publish_errors: int = 0  # a batch could not be encoded or published (logged)
    outbox_overflow: int = 0  # submit() refused: outbox full
    backpressure_waits: int = 0  # publisher waited for a per-peer queue to drain
    backpressure_timeouts: int = 0  # ...and published anyway after backpressure_timeout_s
    rpc_dropped: int = 0  # libp2p dropped an outbound RPC carrying messages (queue full)
    rpc_dropped_msgs: int = 0
    received_msgs: int = 0  # handed to the handler
    received_bytes: int = 0
    accepted_msgs: int = 0
    rejected_msgs: int = 0  # the handler returned False
    handler_errors: int = 0  # the handler raised
    dropped_oversize: int = 0
    dropped_rate: int = 0
    dropped_graylisted: int = 0
    inbox_overflow: int = 0
    rejected_before_forward: int = 0  # `prevalidate` said no: neither delivered nor forwarded
    bad_rpc: int = 0  # a peer's pubsub frame did not parse: its stream was reset
    per_topic_received: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------
# libp2p subclasses: only to count what 0.8.1 would drop silently


class _CountingGossipSub(GossipSub):
    def __init__(self, stats: GossipStats, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dso_stats = stats

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        if len(rpc.publish):
            self._dso_stats.rpc_dropped += 1
            self._dso_stats.rpc_dropped_msgs += len(rpc.publish)
            logger.warning(
                "libp2p dropped an RPC with %d messages for %s (%s)",
                len(rpc.publish),
                peer_id,
                reason,
            )
        super()._handle_dropped_rpc(peer_id, rpc, reason)


class _InboxPubsub(Pubsub):
    """Delivers messages of our topics to our own bounded inbox (libp2p's holds 32)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dso_inboxes: dict[str, trio.MemorySendChannel[tuple[str, ID, bytes, float, Any]]] = {}
        #: Pops the prevalidation verdict stored for this message (see Gossip.prevalidate).
        self.dso_take_verdict: Callable[[rpc_pb2.Message], Any] | None = None
        self.dso_stats: GossipStats | None = None
        self.dso_on_bad_rpc: Callable[[ID, str], None] | None = None

    async def stream_handler(self, stream: Any) -> None:
        """libp2p 0.8.1 lets a malformed RPC frame's protobuf DecodeError (and anything else
        unexpected from a peer's bytes) escape its read loop, which tears the whole node
        down: one garbage frame from any peer was a remote crash. Here it ends only that
        peer's stream, counted (`bad_rpc`) and reported (`on_bad_rpc`, for penalties)."""
        peer_id = stream.muxed_conn.peer_id
        if self.is_peer_blacklisted(peer_id):  # graylisted: not one more frame parsed
            with contextlib.suppress(Exception):
                await stream.reset()
            return
        try:
            await super().stream_handler(stream)
        except Exception as exc:
            if self.dso_stats is not None:
                self.dso_stats.bad_rpc += 1
            logger.warning("bad pubsub frame from %s: %s", peer_id, type(exc).__name__)
            with contextlib.suppress(Exception):
                await stream.reset()
            with contextlib.suppress(Exception):
                self._handle_dead_peer(peer_id)
            if self.dso_on_bad_rpc is not None:
                self.dso_on_bad_rpc(peer_id, "bad_rpc")

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        """Called by `add_to_blacklist` (our graylist). libp2p 0.8.1 does `del
        self.peers[peer_id]` after awaiting the stream reset, by which time the dead-peer
        handler has often removed it: the KeyError killed the node. Here it is a pop, and the
        whole connection is closed too, so the peer's inbound streams stop being read."""
        stream = self.peers.get(peer_id)
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.reset()
            self.peers.pop(peer_id, None)
        self._forget_all_subscriptions(peer_id)
        with contextlib.suppress(Exception):
            await self.host.get_network().close_peer(peer_id)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        origin = ID(publish_message.from_id)
        if origin == self.my_id:
            return  # our own publish: the application already has it
        for topic in publish_message.topicIDs:
            inbox = self.dso_inboxes.get(topic)
            if inbox is None:
                continue
            try:
                take = self.dso_take_verdict
                verdict = take(publish_message) if take is not None else None
                inbox.send_nowait((topic, origin, publish_message.data, time.time(), verdict))
            except trio.WouldBlock:
                if self.dso_stats is not None:
                    self.dso_stats.inbox_overflow += 1
                logger.warning("gossip inbox full: dropped a message on %s", topic)


# ----------------------------------------------------------------------------------------


class Gossip:
    """GossipSub on one host: `join` space topics, `submit` payloads, get batches in `handler`.

    Usage::

        gossip = Gossip(host, GossipConfig(), encode_batch, handler)
        async with host.run([listen]), gossip.running():
            topic = await gossip.join(space_id)
            gossip.submit(topic, payload)

    `handler(topic, origin_peer_id, data) -> bool` gets each received batch once (GossipSub
    deduplicates by (origin, seqno)); True counts it accepted, False rejected. It runs in one
    task, in arrival order, so it must not block for long.
    """

    def __init__(
        self,
        host: IHost,
        config: GossipConfig,
        encode_batch: BatchEncoder,
        handler: Handler,
        *,
        prevalidate: Prevalidator | None = None,
    ) -> None:
        self.host = host
        self.config = config
        self.encode_batch = encode_batch
        self.handler = handler
        #: (origin, data) -> (forward?, verdict), run inside libp2p's validator, i.e. before
        #: the message is forwarded: True stores the verdict for the handler, which gets it as
        #: a 4th argument; False means not forwarded to anyone, and the message is delivered
        #: to our handler only if the verdict is not None (valid items in a faulty batch).
        self.prevalidate = prevalidate
        self._verdicts: OrderedDict[bytes, Any] = OrderedDict()
        self.stats = GossipStats()
        self.router = _CountingGossipSub(
            self.stats,
            protocols=list(GOSSIP_PROTOCOLS),
            degree=config.degree,
            degree_low=config.degree_low,
            degree_high=config.degree_high,
            gossip_window=config.gossip_window,
            gossip_history=config.gossip_history,
            heartbeat_interval=config.heartbeat_interval_s,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
        )
        self.pubsub = _InboxPubsub(host, self.router, seen_ttl=config.seen_ttl_s)
        self.pubsub.dso_stats = self.stats
        # Trap 5: seqno = counter + 1 per message; start it from the nanosecond clock so a
        # restarted node never re-uses a (from, seqno) pair its peers have seen.
        self.pubsub.counter = time.time_ns()
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[
            tuple[str, ID, bytes, float, Any]
        ](config.inbox_max_messages)
        self._batchers: dict[str, Batcher] = {}
        self._outbox_changed = trio.Event()
        self._publish_bucket = TokenBucket(
            config.max_publish_per_s, config.publish_burst, time.monotonic()
        )
        self._origin_limiter = PeerRateLimiter(
            config.origin_max_msgs_per_s, config.origin_burst, config.max_tracked_origins
        )
        self._graylist: set[ID] = set()
        self._in_flight = 0  # batches taken from a Batcher but not yet handed to libp2p
        #: Called with (topic, payload count, enqueue times) after each publish (for metrics).
        self.on_published: Callable[[str, int, list[float]], None] | None = None
        #: Called with (peer, reason) for faults caught below the handler: an oversize
        #: message (reason "oversize", the origin's fault) or an unparsable pubsub frame
        #: ("bad_rpc", the sending peer's). The daemon penalises them in its pipeline.
        self.on_invalid: Callable[[ID, str], None] | None = None
        self.pubsub.dso_on_bad_rpc = self._report_invalid
        self.pubsub.dso_take_verdict = self._take_verdict

    # -- lifecycle

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gossip]:
        """Run pubsub, the router, the publisher and the receive loop (host must be running)."""
        async with (
            background_trio_service(self.pubsub),
            background_trio_service(self.router),
            trio.open_nursery() as nursery,
        ):
            await self.pubsub.wait_until_ready()
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._receiver)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def join(self, space_id: bytes | str) -> str:
        """Subscribe to the space's topic and install its validator; returns the topic."""
        topic = topic_for_space(space_id)
        if topic in self._batchers:
            return topic
        self._batchers[topic] = Batcher(
            self.config.batch_max_items, self.config.batch_max_bytes, self.config.outbox_max_items
        )
        self.pubsub.dso_inboxes[topic] = self._inbox_send
        self.pubsub.set_topic_validator(topic, self._validate, is_async_validator=False)
        await self.pubsub.subscribe(topic)
        return topic

    # -- publishing

    @contextlib.contextmanager
    def publish_rate(self, per_s: float, burst: int) -> Iterator[None]:
        """Publish at another pace inside the block (benchmarks of unbatched messages)."""
        saved = self._publish_bucket
        self._publish_bucket = TokenBucket(per_s, burst, time.monotonic())
        try:
            yield
        finally:
            self._publish_bucket = saved

    def submit(self, topic: str, payload: bytes) -> bool:
        """Queue one payload for the topic; False (counted) if the outbox is full."""
        batcher = self._batchers.get(topic)
        if batcher is None:
            raise GossipError(f"not joined to topic {topic[:80]!r}")
        if not batcher.add(payload, time.time()):
            self.stats.outbox_overflow += 1
            return False
        self._outbox_changed.set()
        return True

    async def publish_raw(self, topic: str, data: bytes) -> None:
        """Publish one message now, unbatched, still paced (for benchmarks and tests)."""
        if len(data) > self.config.max_message_bytes:
            raise GossipError(f"message of {len(data)} bytes over {self.config.max_message_bytes}")
        await self._pace()
        await self.pubsub.publish(topic, data)
        self.stats.published_msgs += 1
        self.stats.published_bytes += len(data)

    def pending(self) -> int:
        """Messages not yet written out: in our outboxes, being published, or parked by the
        router for peers still being identified (parked copies for peers that are identified
        but not subscribed may never leave, so they are not waited for)."""
        parked = sum(
            len(q)
            for pid, q in self.router._pending_messages.items()
            if pid not in self.router.peer_protocol
        )
        return sum(len(b) for b in self._batchers.values()) + self._in_flight + parked

    def max_peer_queue(self) -> int:
        return max((len(q) for q in self.pubsub.peer_queues.values()), default=0)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted was written to the peers' streams (bounded)."""
        with trio.move_on_after(timeout_s):
            while self.pending() or self.max_peer_queue():
                await trio.sleep(0.01)
            return True
        return False

    async def _pace(self) -> None:
        # Token bucket first (steady rate), then wait for the slowest peer's queue to drain
        # below the high-water mark, since libp2p drops, rather than blocks, on a full one.
        while (delay := self._publish_bucket.wait_time(time.monotonic())) > 0:
            await trio.sleep(delay)
        self._publish_bucket.try_take(time.monotonic())
        if self.max_peer_queue() >= self.config.queue_high_water:
            self.stats.backpressure_waits += 1
            with trio.move_on_after(self.config.backpressure_timeout_s) as scope:
                while self.max_peer_queue() >= self.config.queue_high_water:
                    await trio.sleep(0.002)
            if scope.cancelled_caught:
                self.stats.backpressure_timeouts += 1
                logger.warning("a peer's gossip queue stayed full; publishing anyway")

    async def _publisher(self) -> None:
        linger = self.config.batch_linger_s
        while True:
            now = time.time()
            chosen: tuple[str, Batcher] | None = None
            wait = math.inf
            for topic, batcher in self._batchers.items():
                if not len(batcher):
                    continue
                if batcher.full_batch_ready() or batcher.oldest_age(now) >= linger:
                    chosen = (topic, batcher)
                    break
                wait = min(wait, linger - batcher.oldest_age(now))
            if chosen is None:
                self._outbox_changed = trio.Event()
                with trio.move_on_after(wait if wait < math.inf else 3600):
                    await self._outbox_changed.wait()
                continue
            topic, batcher = chosen
            # Wait for a publish slot *before* cutting the batch: whatever arrives meanwhile
            # rides along, so under load batches grow instead of messages queueing up.
            await self._pace()
            payloads, times = batcher.take()
            self._in_flight += 1
            try:
                data = self.encode_batch(payloads)
                if len(data) > self.config.max_message_bytes:
                    raise GossipError(f"encoded batch of {len(data)} bytes over the limit")
                await self.pubsub.publish(topic, data)
            except Exception:  # a bad batch or a libp2p error must not stop the publisher
                self.stats.publish_errors += 1
                logger.exception("could not publish a batch of %d payloads", len(payloads))
                continue
            finally:
                self._in_flight -= 1
            self.stats.published_msgs += 1
            self.stats.published_items += len(payloads)
            self.stats.published_bytes += len(data)
            if self.on_published is not None:
                self.on_published(topic, len(payloads), times)

    # -- receiving

    def _validate(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """libp2p topic validator: cheap checks before a message is delivered or forwarded.

        It can only say yes or no, and libp2p caches the verdict per message id, so only
        checks that depend on the message itself (size, origin) belong here.
        """
        if forwarder == self.pubsub.my_id:
            return True
        origin = ID(msg.from_id)
        if origin in self._graylist or forwarder in self._graylist:
            self.stats.dropped_graylisted += 1
            return False
        if len(msg.data) > self.config.max_message_bytes:
            self.stats.dropped_oversize += 1
            self._report_invalid(origin, "oversize")
            return False
        if not self._origin_limiter.allow(msg.from_id, time.monotonic()):
            self.stats.dropped_rate += 1
            return False
        if self.prevalidate is not None:
            ok, verdict = self.prevalidate(origin, msg.data)
            if not ok:
                self.stats.rejected_before_forward += 1
                if verdict is not None:  # not forwarded, but its valid items are ours to keep
                    self._deliver_unforwarded(msg, origin, verdict)
                return False
            self._verdicts[bytes(msg.from_id) + bytes(msg.seqno)] = verdict
            while len(self._verdicts) > self.config.inbox_max_messages * 4:
                self._verdicts.popitem(last=False)  # delivered ones are popped; this bounds
        return True

    def _deliver_unforwarded(self, msg: rpc_pb2.Message, origin: ID, verdict: Any) -> None:
        """A message libp2p will neither forward nor deliver (the validator said no), whose
        verdict still carries valid items: one bad item must not sink the good ones here."""
        for topic in msg.topicIDs:
            inbox = self.pubsub.dso_inboxes.get(topic)
            if inbox is None:
                continue
            try:
                inbox.send_nowait((topic, origin, msg.data, time.time(), verdict))
            except trio.WouldBlock:
                self.stats.inbox_overflow += 1
                logger.warning("gossip inbox full: dropped a message on %s", topic)
            return  # one delivery: the verdict is for one handler call

    def _take_verdict(self, msg: rpc_pb2.Message) -> Any:
        return self._verdicts.pop(bytes(msg.from_id) + bytes(msg.seqno), None)

    def _report_invalid(self, peer: ID, reason: str) -> None:
        if self.on_invalid is None:
            return
        try:
            self.on_invalid(peer, reason)
        except Exception:  # a penalty hook must never break the read loop
            logger.exception("on_invalid hook failed for %s", peer)

    async def _receiver(self) -> None:
        async for topic, origin, data, _t, verdict in self._inbox_recv:
            self.stats.received_msgs += 1
            self.stats.received_bytes += len(data)
            self.stats.per_topic_received[topic] = self.stats.per_topic_received.get(topic, 0) + 1
            try:
                if verdict is None:
                    ok = await self.handler(topic, origin, data)
                else:  # already validated in `_validate`: hand the outcome along
                    ok = await self.handler(topic, origin, data, verdict)
            except Exception:
                self.stats.handler_errors += 1
                logger.exception("gossip handler failed on a message from %s", origin)
                continue
            if ok:
                self.stats.accepted_msgs += 1
            else:
                self.stats.rejected_msgs += 1

    # -- peers

    def graylist(self, peer_id: ID) -> None:
        """Drop everything from this peer unread and disconnect it (libp2p blacklist)."""
        self._graylist.add(peer_id)
        self.pubsub.add_to_blacklist(peer_id)

    def mesh_peers(self, topic: str) -> set[ID]:
        return set(self.router.mesh.get(topic, set()))

    async def wait_for_mesh(self, topic: str, n: int, timeout_s: float) -> bool:
        """Wait (bounded) until at least `n` peers are in our mesh for `topic`."""
        with trio.move_on_after(timeout_s):
            while len(self.mesh_peers(topic)) < n:
                await trio.sleep(0.05)
            return True
        return False
