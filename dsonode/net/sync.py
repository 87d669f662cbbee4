"""The `/dso/sync/1.0.0` stream side: serve a store's inventory and items, pull from a peer.

The protocol logic (messages, framing, reconciliation) is pure, in dsonode.core.sync; this
module moves its frames over py-libp2p streams, with a timeout on every read and write, and
reads the LMDB store in worker threads so the trio loop never waits on a scan.

    server = SyncServer(host, store)
    server.register()                      # before host.run(...)
    report = await sync_with(host, peer_id, store, space_id)   # pull what the peer has

Every item received is verified exactly as if it had come by gossip (`decode_item` with the
local clock) before `store.put_items`; an invalid one is dropped and counted. A peer that sends
a bad frame, garbage, an answer that does not match its request, or is too slow gets a typed
error (WireError subclass or SyncTimeoutError) and the stream is reset; nothing escapes the
stream handler.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from dsonode.core import sync as core
from dsonode.core.errors import DsoError, SyncError, SyncTimeoutError, WireError
from dsonode.core.wire import Item, decode_item, item_hash, now_ms

log = logging.getLogger(__name__)

PROTOCOL = TProtocol(core.SYNC_PROTOCOL_ID)


class SyncTransportError(SyncError):
    """The stream broke (reset, connection lost, refused): not proof the peer misbehaved,
    so the daemon does not penalise it (unlike the other SyncError/WireError cases)."""


@dataclass(frozen=True)
class SyncConfig:
    """Bounds of both sides (PROTOCOL.md §12.6)."""

    frame_timeout_s: float = 10.0
    exchange_timeout_s: float = 120.0
    idle_timeout_s: float = 30.0
    max_requests: int = 100_000
    max_inbound_streams: int = 4
    listed_cache: int = 65_536

    def __post_init__(self) -> None:
        for name in ("frame_timeout_s", "exchange_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise SyncError(f"sync {name} must be in (0, 3600], got {value}")
        if not 1 <= self.max_requests <= 10_000_000:
            raise SyncError("sync max_requests must be 1..10000000")
        if not 1 <= self.max_inbound_streams <= 1024:
            raise SyncError("sync max_inbound_streams must be 1..1024")
        if not 1024 <= self.listed_cache <= 10_000_000:
            raise SyncError("sync listed_cache must be 1024..10000000")


# --- Frames over a stream -------------------------------------------------------------------------


async def write_message(stream: INetStream, msg: core.Message, timeout_s: float) -> None:
    data = core.encode_frame(core.encode_message(msg))
    with trio.move_on_after(timeout_s) as scope:
        await stream.write(data)
    if scope.cancelled_caught:
        raise SyncTimeoutError(f"writing {msg.kind} took over {timeout_s} s")


async def read_message(stream: INetStream, timeout_s: float) -> core.Message | None:
    """One whole frame, decoded; None on a clean end of stream between frames.

    Reads at most what the current frame still needs, so a peer cannot make us buffer more
    than one frame; the whole frame must arrive within timeout_s (a slow peer is cut off).
    """
    reader = core.FrameReader()
    with trio.move_on_after(timeout_s) as scope:
        while True:
            try:
                chunk = await stream.read(reader.wanted())
            except StreamError:  # EOF or reset (StreamEOF, StreamReset subclass it)
                chunk = b""
            if not chunk:
                if reader.buffered:
                    raise SyncTransportError("the stream ended inside a frame")
                return None
            reader.feed(chunk)
            frame = reader.next_frame()
            if frame is not None:
                if reader.buffered:
                    raise SyncError("bytes after a frame before its answer")
                return core.decode_message(frame)
    assert scope.cancelled_caught
    raise SyncTimeoutError(f"no whole sync frame within {timeout_s} s")


async def _reset(stream: INetStream) -> None:
    with trio.move_on_after(2.0):
        with contextlib.suppress(Exception):  # already gone: nothing left to release
            await stream.reset()


# --- The store as sync sees it --------------------------------------------------------------------
# net does not import dsonode.store (ARCHITECTURE.md: the package graph): these Protocols say
# what sync needs, and dsonode.store.Store provides it.


#: Where an item is in the store: (kind, store key), as get_raw_items takes it.
Location = tuple[str, bytes]


class ExperienceRow(Protocol):
    @property
    def id(self) -> bytes: ...
    @property
    def created(self) -> int: ...
    @property
    def raw(self) -> bytes: ...


class SubmissionRow(Protocol):
    @property
    def experience_id(self) -> bytes: ...
    @property
    def space_id(self) -> bytes: ...
    @property
    def author(self) -> bytes: ...
    @property
    def created(self) -> int: ...
    @property
    def raw(self) -> bytes: ...


class FeedbackRow(Protocol):
    @property
    def experience_id(self) -> bytes: ...
    @property
    def author(self) -> bytes: ...
    @property
    def created(self) -> int: ...
    @property
    def item_hash(self) -> bytes: ...


class RetractionRow(Protocol):
    @property
    def experience_id(self) -> bytes: ...
    @property
    def author(self) -> bytes: ...
    @property
    def created(self) -> int: ...
    @property
    def raw(self) -> bytes: ...


class SyncStore(Protocol):
    """What sync reads (time-ordered items, raw bytes by key) and writes (verified items)."""

    def iter_experiences_by_time(
        self, since_ms: int = ..., until_ms: int | None = ...
    ) -> Iterator[ExperienceRow]: ...
    def iter_submissions_by_time(
        self, since_ms: int = ..., until_ms: int | None = ...
    ) -> Iterator[SubmissionRow]: ...
    def iter_feedback_by_time(
        self, since_ms: int = ..., until_ms: int | None = ...
    ) -> Iterator[FeedbackRow]: ...
    def iter_retractions_by_time(
        self, since_ms: int = ..., until_ms: int | None = ...
    ) -> Iterator[RetractionRow]: ...
    def get_raw_items(self, keys: Sequence[tuple[str, bytes]]) -> list[bytes | None]: ...
    def put_items(
        self, raw_items: Sequence[bytes], decoded: Sequence[Item] | None = ...
    ) -> list[bool]: ...


class StoreView:
    """Inventory, hash lists and raw items of a dsonode Store (blocking: run in a thread).

    Scope (PROTOCOL.md §12.3): every experience, plus the submissions of the asked space.
    """

    def __init__(self, store: SyncStore) -> None:
        self.store = store

    def entries(
        self, space_id: bytes, since_ms: int, until_ms: int
    ) -> Iterator[tuple[int, bytes, Location]]:
        """(created, item hash, (kind, store key)) of every item in scope and window."""
        for rec in self.store.iter_experiences_by_time(since_ms, until_ms):
            yield rec.created, item_hash(rec.raw), ("experience", rec.id)
        for sub in self.store.iter_submissions_by_time(since_ms, until_ms):
            if sub.space_id == space_id:
                key = sub.experience_id + sub.space_id + sub.author
                yield sub.created, item_hash(sub.raw), ("submission", key)
        # Feedback votes carry no space: every peer's current vote travels (PROTOCOL.md §12.3).
        for vote in self.store.iter_feedback_by_time(since_ms, until_ms):
            yield vote.created, vote.item_hash, ("feedback", vote.experience_id + vote.author)
        # Retractions carry no space either (PROTOCOL.md §7.6, §12.3).
        for rt in self.store.iter_retractions_by_time(since_ms, until_ms):
            yield rt.created, item_hash(rt.raw), ("retraction", rt.experience_id + rt.author)

    def inventory(self, req: core.InventoryRequest) -> core.Inventory:
        return core.build_inventory(
            req, ((c, h) for c, h, _ in self.entries(req.space_id, req.since_ms, req.until_ms))
        )

    def hashes(self, space_id: bytes, start_ms: int, end_ms: int) -> set[bytes]:
        return {h for _, h, _ in self.entries(space_id, start_ms, end_ms)}

    def listing(self, req: core.HashesRequest) -> tuple[core.Hashes, dict[bytes, Location]]:
        """One page of hashes after req.after, and where their items are."""
        where = {h: loc for _, h, loc in self.entries(req.space_id, req.start_ms, req.end_ms)}
        after = sorted(h for h in where if h > req.after)
        page = after[: core.MAX_HASHES]
        return core.Hashes(tuple(page), len(after) > len(page)), {h: where[h] for h in page}

    def raw_items(self, locations: Sequence[Location | None]) -> list[bytes | None]:
        known = [loc for loc in locations if loc is not None]
        found = iter(self.store.get_raw_items(known))
        return [None if loc is None else next(found) for loc in locations]


# --- Responder ------------------------------------------------------------------------------------


@dataclass
class ServerStats:
    streams: int = 0
    refused: int = 0
    requests: int = 0
    items_sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class SyncServer:
    """Answers /dso/sync/1.0.0 requests from `store`; register() before the host runs."""

    def __init__(self, host: IHost, store: SyncStore, config: SyncConfig | None = None) -> None:
        self.host = host
        self.view = StoreView(store)
        self.config = config or SyncConfig()
        self.stats = ServerStats()
        self._active = 0

    def register(self) -> None:
        self.host.set_stream_handler(PROTOCOL, self.handle)

    async def handle(self, stream: INetStream) -> None:
        """The stream handler: never raises; resets the stream on any fault."""
        if self._active >= self.config.max_inbound_streams:
            self.stats.refused += 1
            await _reset(stream)
            return
        self._active += 1
        self.stats.streams += 1
        try:
            await self._serve(stream)
        except (WireError, SyncTimeoutError) as exc:
            self.stats.errors[type(exc).__name__] += 1
            log.info("sync stream reset: %s: %s", type(exc).__name__, exc)
            await _reset(stream)
        except trio.Cancelled:
            await _reset(stream)
            raise
        except Exception as exc:  # a store or stream fault must not kill the host
            self.stats.errors[type(exc).__name__] += 1
            log.warning("sync stream failed: %r", exc)
            await _reset(stream)
        finally:
            self._active -= 1

    async def _serve(self, stream: INetStream) -> None:
        cfg = self.config
        listed: OrderedDict[bytes, Location] = OrderedDict()
        for _ in range(cfg.max_requests):
            # The whole next request, idle wait included, within idle_timeout_s.
            req = await read_message(stream, cfg.idle_timeout_s)
            if req is None:
                with trio.move_on_after(2.0):
                    await stream.close()
                return
            self.stats.requests += 1
            resp = await self._answer(req, listed)
            await write_message(stream, resp, cfg.frame_timeout_s)
        raise SyncError(f"more than {cfg.max_requests} requests on one stream")

    async def _answer(
        self, req: core.Message, listed: OrderedDict[bytes, Location]
    ) -> core.Message:
        if isinstance(req, core.InventoryRequest):
            return await trio.to_thread.run_sync(self.view.inventory, req)
        if isinstance(req, core.HashesRequest):
            page, where = await trio.to_thread.run_sync(self.view.listing, req)
            for h, loc in where.items():  # remember the newest listed hashes, bounded
                listed[h] = loc
                listed.move_to_end(h)
            while len(listed) > self.config.listed_cache:
                listed.popitem(last=False)
            return page
        if isinstance(req, core.ItemsRequest):
            locations = [listed.get(h) for h in req.hashes]
            raws = await trio.to_thread.run_sync(self.view.raw_items, locations)
            resp = core.fit_items(raws, len(req.hashes))
            self.stats.items_sent += len(resp.items)
            return resp
        raise SyncError(f"{req.kind} is a response, not a request")


# --- Requester ------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one pull did: the session's counters and what became of the items received."""

    peer: str
    stats: core.SyncStats
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
            "session": vars(self.stats).copy(),
        }


#: accept(raw items) -> (stored, duplicates, rejected by error class). Runs in a thread.
Accept = Callable[[list[bytes]], tuple[int, int, Counter[str]]]


def verify_and_store(store: SyncStore, clock: Callable[[], int] = now_ms) -> Accept:
    """Verify each item as if gossiped (decode_item with the local clock), store the valid."""

    def accept(raws: list[bytes]) -> tuple[int, int, Counter[str]]:
        good: list[bytes] = []
        decoded: list[Item] = []
        rejected: Counter[str] = Counter()
        now = clock()
        for raw in raws:
            try:
                decoded.append(decode_item(raw, now_ms=now))
                good.append(raw)
            except WireError as exc:
                rejected[type(exc).__name__] += 1
        flags = store.put_items(good, decoded=decoded) if good else []
        return sum(flags), len(flags) - sum(flags), rejected

    return accept


async def sync_with(
    host: IHost,
    peer_id: ID,
    store: SyncStore,
    space_id: bytes,
    *,
    config: SyncConfig | None = None,
    accept: Accept | None = None,
    window: tuple[int, int] | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> SyncReport:
    """Pull from `peer_id` (already connected, or dialable from the peerstore) what `store`
    lacks. Raises a WireError subclass (bad data or an answer that does not match: the peer
    misbehaved), SyncTimeoutError (too slow), or SyncTransportError (a SyncError) wrapping a
    stream failure; the stream is reset in every such case. `accept` runs in a worker thread
    under `limiter` (default: trio's), so a daemon can serialise it with its gossip ingest."""
    cfg = config or SyncConfig()
    accept = accept or verify_and_store(store)
    view = StoreView(store)
    since, until = window or core.default_window(now_ms())
    session = core.SyncSession(
        space_id, since, until, view.inventory, view.hashes, max_requests=cfg.max_requests
    )
    report = SyncReport(peer_id.to_base58(), session.stats)
    stream: INetStream | None = None
    with trio.move_on_after(cfg.exchange_timeout_s) as scope:
        try:
            with trio.fail_after(cfg.frame_timeout_s):
                stream = await host.new_stream(peer_id, [PROTOCOL])
            while (req := session.next_request()) is not None:
                await write_message(stream, req, cfg.frame_timeout_s)
                resp = await read_message(stream, cfg.frame_timeout_s)
                if resp is None:
                    raise SyncTransportError("the peer closed the stream before answering")
                raws = await trio.to_thread.run_sync(session.on_response, resp)
                if raws:
                    report.received += len(raws)
                    stored, dups, rejected = await trio.to_thread.run_sync(
                        accept, raws, limiter=limiter
                    )
                    report.stored += stored
                    report.duplicates += dups
                    report.rejected.update(rejected)
            with trio.move_on_after(2.0):
                await stream.close()
            return report
        except Exception as exc:  # trio.Cancelled (a BaseException) passes through
            if stream is not None:
                await _reset(stream)
            if isinstance(exc, DsoError):
                raise
            if isinstance(exc, trio.TooSlowError):
                raise SyncTimeoutError("opening the sync stream timed out") from exc
            raise SyncTransportError(f"sync stream failed: {type(exc).__name__}: {exc}") from exc
    assert scope.cancelled_caught
    if stream is not None:
        await _reset(stream)
    raise SyncTimeoutError(f"the sync exchange ran over {cfg.exchange_timeout_s} s")
