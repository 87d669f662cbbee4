"""The catch-up protocol `/dso/sync/1.0.0`: messages, framing and reconciliation (pure).

Normative spec: protocol/PROTOCOL.md §12 (test vectors: protocol/vectors/sync_*.json).
A node that joined late asks one peer, over one libp2p stream, for what it lacks:

1. `InventoryRequest(space, since, until, bucket_ms)` -> `Inventory`: per non-empty time bucket
   (by `created`), the item count and a digest over the sorted item hashes; equal buckets are
   skipped, a differing bucket that is too big is drilled into with a finer inventory;
2. `HashesRequest(space, start, end, after)` -> `Hashes`: the sorted item hashes of one
   bucket, a page at a time (cursor `after`);
3. `ItemsRequest([hash...])` -> `Items`: the signed items, in bounded batches; every item is
   then verified by the caller exactly as if it had come by gossip.

Messages are frozen dataclasses; `decode_message` is strict and total like
dsonode.core.wire's decoders (same steps, same error classes), and `SyncSession` is the
requester's state machine: it says which request to send next and checks each response
against its request (SyncError when a response does not answer it). No I/O here.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dsonode.core.constants import MAX_BATCH_BYTES, MAX_CLOCK_SKEW_S, MAX_ITEM_BYTES
from dsonode.core.errors import (
    FrameError,
    KindError,
    MalformedError,
    NonCanonicalError,
    OversizeError,
    SchemaError,
    SyncError,
    VersionError,
    WireError,
)
from dsonode.core.wire import WIRE_VERSION, ParseLimits, item_hash, parse_msgpack

__all__ = [
    "BUCKET_DIGEST_DOMAIN",
    "HASH_BYTES",
    "MAX_BUCKETS",
    "MAX_FRAME_BYTES",
    "MAX_HASHES",
    "MAX_ITEMS",
    "MAX_TIME_MS",
    "SYNC_PROTOCOL_ID",
    "Bucket",
    "FrameReader",
    "Hashes",
    "HashesRequest",
    "Inventory",
    "InventoryRequest",
    "Items",
    "ItemsRequest",
    "SyncSession",
    "bucket_digest",
    "bucket_ms_for",
    "build_inventory",
    "decode_message",
    "encode_frame",
    "encode_message",
    "fit_items",
    "inventory_diff",
]

# --- Constants (PROTOCOL.md §12.2). Changing any of them forks the protocol. -------------------

SYNC_PROTOCOL_ID = "/dso/sync/1.0.0"
KIND_INVENTORY_REQUEST = "sync/inventory-request"
KIND_INVENTORY = "sync/inventory"
KIND_HASHES_REQUEST = "sync/hashes-request"
KIND_HASHES = "sync/hashes"
KIND_ITEMS_REQUEST = "sync/items-request"
KIND_ITEMS = "sync/items"

#: Largest encoded sync message (the frame payload), the same bound as a gossip batch.
MAX_FRAME_BYTES = MAX_BATCH_BYTES
#: An unsigned LEB128 varint of a length <= MAX_FRAME_BYTES takes at most 3 bytes.
MAX_VARINT_BYTES = 3
HASH_BYTES = 32
#: Buckets in one inventory (at ~48 bytes each, 1024 fit well inside one frame).
MAX_BUCKETS = 1024
#: Hashes in one `Hashes` page (1024 * 34 bytes = 34.8 KB).
MAX_HASHES = 1024
#: Hashes in one `ItemsRequest`, items in one `Items` (the batch bound of wire §10).
MAX_ITEMS = 256
#: Times are ms since the epoch; windows are [since, until) with until <= 2^53.
MAX_TIME_MS = 2**53
BUCKET_DIGEST_DOMAIN = b"dso/sync/bucket/1\x00"

_KINDS = {
    KIND_INVENTORY_REQUEST: 6,
    KIND_INVENTORY: 3,
    KIND_HASHES_REQUEST: 6,
    KIND_HASHES: 4,
    KIND_ITEMS_REQUEST: 3,
    KIND_ITEMS: 4,
}
_PARSE_LIMITS: ParseLimits = {
    "max_str_len": 64,  # kind strings only
    "max_bin_len": MAX_ITEM_BYTES,
    "max_array_len": MAX_BUCKETS,
    "max_map_len": 0,
    "max_ext_len": 0,
}
_MAX_DEPTH = 3  # message > bucket list > bucket


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# --- Field checks ---------------------------------------------------------------------------------


def _uint(value: object, what: str, lo: int = 0, hi: int = MAX_TIME_MS) -> int:
    if type(value) is not int:
        raise SchemaError(f"{what} must be an unsigned integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise SchemaError(f"{what} {value} is outside {lo}..{hi}")
    return value


def _bin(value: object, what: str, size: int) -> bytes:
    if type(value) is not bytes:
        raise SchemaError(f"{what} must be bytes (msgpack bin), got {type(value).__name__}")
    if len(value) != size:
        raise SchemaError(f"{what} must be {size} bytes, got {len(value)}")
    return value


def _tuple(value: object, what: str, max_len: int) -> tuple:
    if type(value) not in (list, tuple):
        raise SchemaError(f"{what} must be an array, got {type(value).__name__}")
    if len(value) > max_len:  # type: ignore[arg-type]
        raise OversizeError(f"{what} has {len(value)} entries, the limit is {max_len}")  # type: ignore[arg-type]
    return tuple(value)  # type: ignore[arg-type]


def _hash_list(value: object, what: str, max_len: int) -> tuple[bytes, ...]:
    hashes = _tuple(value, what, max_len)
    for h in hashes:
        _bin(h, f"a hash in {what}", HASH_BYTES)
    if any(a >= b for a, b in itertools.pairwise(hashes)):
        raise NonCanonicalError(f"{what} must be sorted ascending, without duplicates")
    return hashes


def _window(since: object, until: object) -> None:
    _uint(since, "since_ms")
    _uint(until, "until_ms")
    if since >= until:  # type: ignore[operator]
        raise SchemaError(f"empty time window [{since}, {until})")


def bucket_ms_for(since_ms: int, until_ms: int) -> int:
    """The finest bucket width that covers [since, until) in at most MAX_BUCKETS buckets."""
    return max(1, -(-(until_ms - since_ms) // MAX_BUCKETS))


# --- Messages (PROTOCOL.md §12.3) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InventoryRequest:
    """Ask for the inventory of [since_ms, until_ms) in buckets of bucket_ms (<= 1024 buckets).

    The inventory covers every experience and the submissions of `space_id`.
    """

    space_id: bytes
    since_ms: int
    until_ms: int
    bucket_ms: int

    kind = KIND_INVENTORY_REQUEST

    def __post_init__(self) -> None:
        _bin(self.space_id, "space_id", HASH_BYTES)
        _window(self.since_ms, self.until_ms)
        _uint(self.bucket_ms, "bucket_ms", 1, MAX_TIME_MS)
        n = -(-(self.until_ms - self.since_ms) // self.bucket_ms)
        if n > MAX_BUCKETS:
            raise OversizeError(f"the window holds {n} buckets, the limit is {MAX_BUCKETS}")

    def fields(self) -> list[Any]:
        return [self.space_id, self.since_ms, self.until_ms, self.bucket_ms]

    def bucket_end(self, start: int) -> int:
        return min(start + self.bucket_ms, self.until_ms)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One non-empty bucket: its start, how many items, bucket_digest of their hashes."""

    start_ms: int
    count: int
    digest: bytes

    def __post_init__(self) -> None:
        _uint(self.start_ms, "bucket start")
        _uint(self.count, "bucket count", 1, 2**64 - 1)
        _bin(self.digest, "bucket digest", HASH_BYTES)


@dataclass(frozen=True, slots=True)
class Inventory:
    """The answer to an InventoryRequest: the non-empty buckets, by ascending start."""

    buckets: tuple[Bucket, ...]

    kind = KIND_INVENTORY

    def __post_init__(self) -> None:
        raw = _tuple(self.buckets, "buckets", MAX_BUCKETS)
        buckets = []
        for b in raw:
            if isinstance(b, Bucket):
                buckets.append(b)
                continue
            entry = _tuple(b, "a bucket", MAX_BUCKETS)
            if len(entry) != 3:
                raise SchemaError(f"a bucket has {len(entry)} fields, expected 3")
            buckets.append(Bucket(*entry))
        if any(a.start_ms >= b.start_ms for a, b in itertools.pairwise(buckets)):
            raise NonCanonicalError("buckets must be sorted by start, without duplicates")
        object.__setattr__(self, "buckets", tuple(buckets))

    def fields(self) -> list[Any]:
        return [[[b.start_ms, b.count, b.digest] for b in self.buckets]]


@dataclass(frozen=True, slots=True)
class HashesRequest:
    """Ask for the item hashes of [start_ms, end_ms), ascending, those above `after` only."""

    space_id: bytes
    start_ms: int
    end_ms: int
    after: bytes = b""

    kind = KIND_HASHES_REQUEST

    def __post_init__(self) -> None:
        _bin(self.space_id, "space_id", HASH_BYTES)
        _window(self.start_ms, self.end_ms)
        if type(self.after) is not bytes or len(self.after) not in (0, HASH_BYTES):
            raise SchemaError("after must be an empty bin or a 32-byte hash")

    def fields(self) -> list[Any]:
        return [self.space_id, self.start_ms, self.end_ms, self.after]


@dataclass(frozen=True, slots=True)
class Hashes:
    """One page of sorted item hashes; `more` says another page follows (ask with after=last)."""

    hashes: tuple[bytes, ...]
    more: bool = False

    kind = KIND_HASHES

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", _hash_list(self.hashes, "hashes", MAX_HASHES))
        if type(self.more) is not bool:
            raise SchemaError("more must be a bool (0 or 1 on the wire)")
        if self.more and not self.hashes:
            raise SchemaError("a page with more=1 must hold at least one hash")

    def fields(self) -> list[Any]:
        return [list(self.hashes), int(self.more)]


@dataclass(frozen=True, slots=True)
class ItemsRequest:
    """Ask for 1..256 items by item hash (sorted ascending, unique)."""

    hashes: tuple[bytes, ...]

    kind = KIND_ITEMS_REQUEST

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", _hash_list(self.hashes, "wanted hashes", MAX_ITEMS))
        if not self.hashes:
            raise SchemaError("an items request names at least one hash")

    def fields(self) -> list[Any]:
        return [list(self.hashes)]


@dataclass(frozen=True, slots=True)
class Items:
    """Signed items answering the first `answered` hashes of the request, in request order.

    A hash among the first `answered` whose item is absent here is one the responder does not
    have; the requester asks again for the hashes after `answered` (they did not fit).
    """

    items: tuple[bytes, ...]
    answered: int

    kind = KIND_ITEMS

    def __post_init__(self) -> None:
        items = _tuple(self.items, "items", MAX_ITEMS)
        for entry in items:
            if type(entry) is not bytes:
                raise SchemaError(f"items must be bin, got {type(entry).__name__}")
            if not 1 <= len(entry) <= MAX_ITEM_BYTES:
                raise OversizeError(f"an item of {len(entry)} bytes (1..{MAX_ITEM_BYTES})")
        _uint(self.answered, "answered", 0, MAX_ITEMS)
        if len(items) > self.answered:
            raise SchemaError(f"{len(items)} items but only {self.answered} hashes answered")
        object.__setattr__(self, "items", items)

    def fields(self) -> list[Any]:
        return [list(self.items), self.answered]


Message = InventoryRequest | Inventory | HashesRequest | Hashes | ItemsRequest | Items


def encode_message(msg: Message) -> bytes:
    """[1, kind, fields...] in canonical msgpack, at most MAX_FRAME_BYTES."""
    if not isinstance(
        msg, InventoryRequest | Inventory | HashesRequest | Hashes | ItemsRequest | Items
    ):
        raise SchemaError(f"cannot encode {type(msg).__name__} as a sync message")
    data = _pack([WIRE_VERSION, msg.kind, *msg.fields()])
    if len(data) > MAX_FRAME_BYTES:
        raise OversizeError(f"sync message is {len(data)} bytes, the limit is {MAX_FRAME_BYTES}")
    return data


def _parse(data: bytes) -> Any:
    return parse_msgpack(data, _PARSE_LIMITS)


def _check_types(obj: Any) -> None:
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if type(value) is list:
            if depth >= _MAX_DEPTH:
                raise SchemaError("arrays nested too deep")
            stack.extend((v, depth + 1) for v in value)
        elif type(value) not in (int, str, bytes):
            raise SchemaError(f"msgpack type {type(value).__name__} is not allowed")


def decode_message(data: bytes) -> Message:
    """Decode one sync message (the payload of one frame); raise a WireError subclass on any
    fault, checked in the order of PROTOCOL.md §12.4 (as for items, §9.2)."""
    try:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SchemaError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_FRAME_BYTES:
            raise OversizeError(f"sync message is {len(data)} bytes, limit {MAX_FRAME_BYTES}")
        obj = _parse(data)
        if type(obj) is not list or not obj:
            raise SchemaError("top level must be a non-empty msgpack array")
        if type(obj[0]) is not int or obj[0] != WIRE_VERSION:
            raise VersionError(f"unknown wire version {obj[0]!r}")
        if len(obj) < 2 or type(obj[1]) is not str:
            raise SchemaError("the second element must be the kind (a str)")
        kind = obj[1]
        if kind not in _KINDS:
            raise KindError(f"unknown sync message kind {kind[:32]!r}")
        if len(obj) != _KINDS[kind]:
            raise SchemaError(f"{kind} has {len(obj)} elements, expected {_KINDS[kind]}")
        _check_types(obj)
        if _pack(obj) != data:
            raise NonCanonicalError("sync message is not in canonical msgpack encoding")
        f = obj[2:]
        if kind == KIND_INVENTORY_REQUEST:
            return InventoryRequest(*f)
        if kind == KIND_INVENTORY:
            return Inventory(f[0])
        if kind == KIND_HASHES_REQUEST:
            return HashesRequest(*f)
        if kind == KIND_HASHES:
            more = _uint(f[1], "more", 0, 1)
            return Hashes(f[0], bool(more))
        if kind == KIND_ITEMS_REQUEST:
            return ItemsRequest(f[0])
        return Items(f[0], f[1])
    except WireError:
        raise
    except Exception as exc:  # defensive: nothing untyped may escape a decoder
        raise MalformedError(f"undecodable sync message ({type(exc).__name__})") from exc


# --- Framing (PROTOCOL.md §12.1) -----------------------------------------------------------------


def encode_frame(payload: bytes) -> bytes:
    """unsigned LEB128 varint length, then the payload (1..MAX_FRAME_BYTES bytes)."""
    n = len(payload)
    if not 1 <= n <= MAX_FRAME_BYTES:
        raise FrameError(f"frame payload of {n} bytes (1..{MAX_FRAME_BYTES})")
    head = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            head.append(low | 0x80)
        else:
            head.append(low)
            return bytes(head) + payload


def parse_frame_header(buf: bytes | bytearray) -> tuple[int, int] | None:
    """(payload length, header length) of the frame at the start of buf, None if incomplete.

    Raises FrameError on a varint longer than 3 bytes, a non-minimal varint (a last byte of 0
    after the first), a zero length or one over MAX_FRAME_BYTES.
    """
    value = 0
    for i in range(min(len(buf), MAX_VARINT_BYTES)):
        byte = buf[i]
        value |= (byte & 0x7F) << (7 * i)
        if byte & 0x80:
            continue
        if i > 0 and byte == 0:
            raise FrameError("non-minimal varint frame length")
        if value == 0:
            raise FrameError("zero-length frame")
        if value > MAX_FRAME_BYTES:
            raise FrameError(f"frame of {value} bytes, the limit is {MAX_FRAME_BYTES}")
        return value, i + 1
    if len(buf) >= MAX_VARINT_BYTES:
        raise FrameError(f"frame length varint longer than {MAX_VARINT_BYTES} bytes")
    return None


class FrameReader:
    """Incremental deframer: feed() bytes as they arrive, next_frame() returns whole payloads.

    Its buffer never grows beyond one frame plus its header, and a caller that reads at most
    `wanted()` bytes at a time never reads into the next frame.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def wanted(self) -> int:
        """How many more bytes complete the current frame (at least 1)."""
        header = parse_frame_header(self._buf)
        if header is None:
            return 1  # the header byte by byte: never read into the next frame
        length, head = header
        return max(1, head + length - len(self._buf))

    def feed(self, data: bytes) -> None:
        if len(self._buf) + len(data) > MAX_FRAME_BYTES + MAX_VARINT_BYTES:
            raise FrameError("more bytes than one frame can hold")
        self._buf += data

    def next_frame(self) -> bytes | None:
        header = parse_frame_header(self._buf)
        if header is None:
            return None
        length, head = header
        if len(self._buf) < head + length:
            return None
        payload = bytes(self._buf[head : head + length])
        del self._buf[: head + length]
        return payload

    @property
    def buffered(self) -> int:
        return len(self._buf)


# --- Inventories and reconciliation (PROTOCOL.md §12.5) ------------------------------------------


def bucket_digest(hashes: Iterable[bytes]) -> bytes:
    """SHA-256(BUCKET_DIGEST_DOMAIN || the bucket's item hashes sorted ascending)."""
    h = hashlib.sha256(BUCKET_DIGEST_DOMAIN)
    for item in sorted(hashes):
        h.update(item)
    return h.digest()


def build_inventory(req: InventoryRequest, entries: Iterable[tuple[int, bytes]]) -> Inventory:
    """The inventory of `entries` ((created_ms, item hash) pairs) for `req`'s window.

    Entries outside the window are ignored, duplicates count once.
    """
    groups: dict[int, set[bytes]] = {}
    for created, h in entries:
        if req.since_ms <= created < req.until_ms:
            start = req.since_ms + (created - req.since_ms) // req.bucket_ms * req.bucket_ms
            groups.setdefault(start, set()).add(h)
    return Inventory(
        tuple(Bucket(s, len(hs), bucket_digest(hs)) for s, hs in sorted(groups.items()))
    )


def check_inventory(req: InventoryRequest, inv: Inventory) -> None:
    """SyncError unless every bucket of `inv` starts on a bucket boundary of `req`'s window."""
    for b in inv.buckets:
        if not req.since_ms <= b.start_ms < req.until_ms:
            raise SyncError(f"bucket {b.start_ms} lies outside the requested window")
        if (b.start_ms - req.since_ms) % req.bucket_ms:
            raise SyncError(f"bucket {b.start_ms} is not on a {req.bucket_ms} ms boundary")


def inventory_diff(mine: Inventory, theirs: Inventory) -> list[Bucket]:
    """Their buckets that I lack or hold differently (by digest), in time order.

    Buckets only I have are not listed: the requester only pulls.
    """
    my_digest = {b.start_ms: b.digest for b in mine.buckets}
    return [b for b in theirs.buckets if my_digest.get(b.start_ms) != b.digest]


def fit_items(raws: Iterable[bytes | None], requested: int) -> Items:
    """The responder's `Items`: raws[i] is the item of the i-th requested hash (None: absent).

    Takes items in order while the encoded message stays within MAX_FRAME_BYTES.
    """
    taken: list[bytes] = []
    # Upper bound of the envelope: array header, version, kind (fixstr), items array header
    # (array16 at most), answered (uint16 at most).
    size = 1 + 1 + 1 + len(KIND_ITEMS) + 3 + 3
    answered = 0
    for raw in raws:
        if answered == requested:
            break
        if raw is not None:
            cost = len(raw) + (2 if len(raw) < 256 else 3)
            if size + cost > MAX_FRAME_BYTES:
                break
            size += cost
            taken.append(raw)
        answered += 1
    return Items(tuple(taken), answered)


LocalInventory = Callable[[InventoryRequest], Inventory]
LocalHashes = Callable[[bytes, int, int], set[bytes]]


@dataclass
class SyncStats:
    requests: int = 0
    buckets_equal: int = 0
    buckets_differ: int = 0
    drilled: int = 0
    hashes_seen: int = 0
    wanted: int = 0
    received: int = 0
    unavailable: int = 0


@dataclass
class SyncSession:
    """The requester's side of one exchange, sans I/O.

    Loop: `req = session.next_request()`; send it; decode the response; pass it to
    `session.on_response(resp)`, which checks it against `req` (SyncError if it does not
    answer it) and returns the item bytes received (to verify as if gossiped, then store).
    Stop when next_request() returns None. `local_inventory` and `local_hashes` read the
    requester's own store. Wanted hashes are asked for as soon as a full batch of them is known,
    so the session holds at most MAX_ITEMS + MAX_HASHES of them; `max_requests` bounds the
    exchange.
    """

    space_id: bytes
    since_ms: int
    until_ms: int
    local_inventory: LocalInventory
    local_hashes: LocalHashes
    max_requests: int = 100_000
    stats: SyncStats = field(default_factory=SyncStats)

    def __post_init__(self) -> None:
        first = InventoryRequest(
            self.space_id, self.since_ms, self.until_ms, bucket_ms_for(self.since_ms, self.until_ms)
        )
        self._todo: deque[InventoryRequest | HashesRequest] = deque([first])
        self._want: deque[bytes] = deque()
        self._pending: Message | None = None
        self._bucket_local: tuple[tuple[int, int], set[bytes]] | None = None

    def next_request(self) -> InventoryRequest | HashesRequest | ItemsRequest | None:
        if self._pending is not None:
            raise SyncError("a request is still waiting for its response")
        req: InventoryRequest | HashesRequest | ItemsRequest
        # Full item batches first (so at most MAX_ITEMS + MAX_HASHES hashes wait here), then
        # the listing work, then what is left.
        if len(self._want) >= MAX_ITEMS or (self._want and not self._todo):
            chunk = [self._want.popleft() for _ in range(min(MAX_ITEMS, len(self._want)))]
            req = ItemsRequest(tuple(sorted(chunk)))
        elif self._todo:
            req = self._todo.popleft()
        else:
            return None
        if self.stats.requests >= self.max_requests:
            raise SyncError(f"sync exchange exceeded {self.max_requests} requests")
        self.stats.requests += 1
        self._pending = req
        return req

    @property
    def done(self) -> bool:
        return self._pending is None and not self._want and not self._todo

    def on_response(self, resp: Message) -> list[bytes]:
        req, self._pending = self._pending, None
        if req is None:
            raise SyncError("a response arrived with no request outstanding")
        if isinstance(req, InventoryRequest):
            if not isinstance(resp, Inventory):
                raise SyncError(f"expected sync/inventory, got {resp.kind}")
            self._on_inventory(req, resp)
            return []
        if isinstance(req, HashesRequest):
            if not isinstance(resp, Hashes):
                raise SyncError(f"expected sync/hashes, got {resp.kind}")
            self._on_hashes(req, resp)
            return []
        if not isinstance(resp, Items):
            raise SyncError(f"expected sync/items, got {resp.kind}")
        return self._on_items(req, resp)  # type: ignore[arg-type]

    def _on_inventory(self, req: InventoryRequest, theirs: Inventory) -> None:
        check_inventory(req, theirs)
        differ = inventory_diff(self.local_inventory(req), theirs)
        self.stats.buckets_differ += len(differ)
        self.stats.buckets_equal += len(theirs.buckets) - len(differ)
        front: list[InventoryRequest | HashesRequest] = []
        for b in differ:
            end = req.bucket_end(b.start_ms)
            if b.count > MAX_HASHES and end - b.start_ms > 1:
                # Too many hashes to list at once: a finer inventory of this bucket first,
                # so that its equal sub-buckets are skipped.
                self.stats.drilled += 1
                front.append(
                    InventoryRequest(self.space_id, b.start_ms, end, bucket_ms_for(b.start_ms, end))
                )
            else:
                front.append(HashesRequest(self.space_id, b.start_ms, end))
        self._todo.extendleft(reversed(front))  # depth first: finish a bucket before the next

    def _on_hashes(self, req: HashesRequest, page: Hashes) -> None:
        if page.hashes and req.after and page.hashes[0] <= req.after:
            raise SyncError("hashes page does not start after the cursor")
        key = (req.start_ms, req.end_ms)
        if self._bucket_local is None or self._bucket_local[0] != key:
            self._bucket_local = (key, self.local_hashes(self.space_id, *key))
        mine = self._bucket_local[1]
        self.stats.hashes_seen += len(page.hashes)
        missing = [h for h in page.hashes if h not in mine]
        self.stats.wanted += len(missing)
        self._want.extend(missing)
        if page.more:
            self._todo.appendleft(
                HashesRequest(self.space_id, req.start_ms, req.end_ms, page.hashes[-1])
            )
        else:
            self._bucket_local = None

    def _on_items(self, req: ItemsRequest, resp: Items) -> list[bytes]:
        if not 1 <= resp.answered <= len(req.hashes):
            raise SyncError(f"answered {resp.answered} of {len(req.hashes)} hashes")
        answered = req.hashes[: resp.answered]
        position = {h: i for i, h in enumerate(answered)}
        last = -1
        for raw in resp.items:
            i = position.get(item_hash(raw), -1)
            if i <= last:
                raise SyncError("an item that was not requested (or out of order, or twice)")
            last = i
        self.stats.received += len(resp.items)
        self.stats.unavailable += resp.answered - len(resp.items)
        self._want.extendleft(reversed(req.hashes[resp.answered :]))
        return list(resp.items)


def default_window(now_ms: int) -> tuple[int, int]:
    """Everything up to the clock-skew horizon: [0, now + 5 minutes + 1)."""
    return 0, min(MAX_TIME_MS, now_ms + MAX_CLOCK_SKEW_S * 1000 + 1)
