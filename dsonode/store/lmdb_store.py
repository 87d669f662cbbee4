"""The node's LMDB store: every signed item it holds, consensus codes and reputation.

One LMDB environment in the node's data directory (``<data_dir>/store``), named databases:

==============  ===========================================  ==================================
database        key                                          value (msgpack)
==============  ===========================================  ==================================
meta            b"schema_version", b"space_id", b"spaces"    int / hex str / list of hex str
                b"pending/" + experience id (32)             b"" (consensus to recompute)
experiences     experience id (32)                           {raw, domain, text, tags, created,
                                                             author} (raw = signed wire bytes)
exp_by_time     created ms (8, big endian) + id (32)         b"" (time index, for sync)
submissions     experience id + space id + author (96)       {raw, created, code}
sub_by_time     created ms (8, BE) + submission key (96)     b""
consensus       space id (32) + experience id (32)           {code, count, confirmed, domain,
                                                             stats, updated}
reputation      peer id (bytes)                              any msgpack map
feedback        experience id + author (64)                  {raw, created, score, hash}: the
                                                             author's current vote only
fb_by_time      created ms (8, BE) + feedback key (64)       b"" (current votes only, for sync)
feedback_agg    experience id (32)                           {votes, median}
known_peers     base58 peer id (utf-8)                       {v, addrs, seen, src, score}
                                                             (``dsonode.core.peerbook``)
retractions     experience id + author (64)                   {raw, created} (PROTOCOL.md 7.6)
rt_by_time      created ms (8, BE) + retraction key (64)     b"" (for sync)
operator        b"block/" | b"allow/" + author (32)          {at} (the operator's lists)
                b"tomb/" + experience id (32)                {at, why} (never stored again)
                b"bytes/" + author (32)                      int: bytes of its stored experiences
==============  ===========================================  ==================================

Operator lists and tombstones (``operator``, created on open like the feedback databases):
``forget`` deletes an experience with everything keyed by it (its submissions of every space,
consensus codes, votes, feedback aggregate, pending mark) and writes its tombstone in the same
transaction; ``put_items`` never stores an item of a tombstoned experience again (it reports
it as not new), so neither gossip nor sync can bring it back, and the tombstone survives a
restart like any record (ARCHITECTURE.md "Trust"). A retraction (PROTOCOL.md 7.6) is stored
like an item; storing one whose author is the stored experience's author forgets that
experience in the same transaction (tombstone "retracted"). Retractions are exempt from the
tombstone check (they are what keeps the others away, and sync serves them).

Feedback (schema version 2): one vote per (experience, author); a vote replaces the stored
one when it is newer by ``dsonode.core.feedback.supersedes`` (created, then item hash), and
the old vote's bytes and time entry are deleted in the same transaction. ``feedback_agg`` is
recomputed in that transaction too, so the aggregate is always that of the stored votes.
A schema-1 store is migrated on open by creating the (empty) feedback databases.
Stores written by earlier releases also hold a ``peers`` database that nothing ever used; it
is left in the file and never opened (the schema version is unchanged: no data moved). The
node's memory of the network therefore lives in a database of another name, ``known_peers``
(created on open like the feedback databases; a read-only open of an older store goes on
without it), so no record of the old format can ever be read as a known peer.

Guarantees:
- Writes are batched: ``put_items`` stores a whole batch in one write transaction.
- Idempotent: the same signed item twice is stored once. ``put_items`` reports which items
  were new.
- Convergent submissions (PROTOCOL.md 7.2): one submission per (experience, space, author),
  the one with the smallest ``(created, item hash)`` (``dsonode.core.consensus
  .submission_rank``). A smaller one arriving later replaces the stored one, its time entry
  too, in one transaction, and marks the experience pending like a new submission; a larger
  one is a duplicate. So two nodes that received an author's equivocating submissions in
  either order hold the same one (and the same sync inventory and consensus).
- Durable: LMDB's default ``sync`` on commit is kept, so an item is on disk once ``put_items``
  returns (``unsafe_nosync=True`` exists for benchmarks and bulk loads only).
- Crash-consistent consensus: ``put_items`` marks every experience it gives a new experience
  or a new submission of the store's space as *pending* (``b"pending/" + id`` in ``meta``) in
  the same transaction, and writing that experience's consensus (``put_consensus``, or
  ``put_items(..., consensus_if_absent=...)``) clears the mark in its transaction. So after
  any crash, every consensus record not marked pending is that of the stored submissions; the
  network daemon recomputes the pending ones when it starts (``pending_ids``).
- The map grows when full (MapFullError -> double the map -> retry the transaction).
- A store written by a newer schema is refused with ``StoreSchemaError``.
- Values are msgpack (never pickle), so a corrupt or hostile file cannot run code.

Spaces: consensus codes are keyed by space id, so one store can hold several spaces' data
without mixing them. Opening a store with another ``space_id`` than last time is allowed (data
of each space stays apart; the index is rebuilt from the new space's consensus only);
``Store.previous_space_id`` tells the caller so it can warn the operator.

Concurrency: one process owns a data directory (an exclusive ``flock`` on ``store.lock``,
released by the kernel even on SIGKILL). Inside the process every transaction runs under one
lock, so the map can be resized safely even if several threads use the Store.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import lmdb
import msgpack

from dsonode.core.consensus import ConsensusRecord, submission_precedes
from dsonode.core.constants import CODE_BYTES, MAX_ITEM_BYTES
from dsonode.core.errors import DsoError
from dsonode.core.feedback import Aggregate, Vote, aggregate, supersedes
from dsonode.core.peerbook import KnownPeer, PeerBookError, decode_peer, encode_peer
from dsonode.core.wire import (
    Experience,
    Feedback,
    Item,
    Retraction,
    Submission,
    decode_item,
    item_hash,
)
from dsonode.dirlock import release_lock, take_lock

#: Bump when the on-disk layout changes; older stores are migrated, newer ones refused.
#: 2: the feedback databases (a schema-1 store simply lacks them; they are created on open).
SCHEMA_VERSION = 2

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start; grows by doubling when full
MAX_MAP_SIZE = 1 << 40  # 1 TiB: beyond this something is wrong, stop growing
_ID_LEN = 32
_DB_NAMES = (
    b"meta",
    b"experiences",
    b"exp_by_time",
    b"submissions",
    b"sub_by_time",
    b"consensus",
    b"reputation",
    b"feedback",
    b"fb_by_time",
    b"feedback_agg",
    b"known_peers",
    b"operator",
    b"retractions",
    b"rt_by_time",
)
#: Databases added after schema 1: a read-only open of an older store goes on without them.
_LATER_DBS = (
    b"feedback",
    b"fb_by_time",
    b"feedback_agg",
    b"known_peers",
    b"operator",
    b"retractions",
    b"rt_by_time",
)
#: `operator` key prefixes: the operator's author lists and the tombstones.
OPERATOR_LISTS = ("block", "allow")
_TOMB = b"tomb/"
_BYTES = b"bytes/"
_TIME = struct.Struct(">Q")
#: meta key prefix of an experience whose consensus must be recomputed (see Guarantees).
_PENDING = b"pending/"

T = TypeVar("T")
R = TypeVar("R")

if TYPE_CHECKING:
    # Every transaction here is opened with buffers=False, so lmdb hands back bytes, never
    # memoryview (lmdb's stub is generic over that choice).
    _Txn: TypeAlias = lmdb.Transaction[bytes]


class StoreError(DsoError):
    """The store cannot do what was asked (bad argument, locked directory, corrupt value)."""


class StoreSchemaError(StoreError):
    """The store on disk was written by a newer (or unknown) schema version."""


@dataclass(frozen=True)
class ExperienceRecord:
    """An experience as stored: the signed wire bytes plus the decoded fields for fast reads."""

    id: bytes
    domain: str
    text: str
    tags: tuple[str, ...]
    created: int
    author: bytes
    raw: bytes


@dataclass(frozen=True)
class SubmissionRecord:
    experience_id: bytes
    space_id: bytes
    author: bytes
    code: bytes
    created: int
    raw: bytes


@dataclass(frozen=True)
class RetractionRecord:
    """An author's stored retraction of its experience (PROTOCOL.md 7.6)."""

    experience_id: bytes
    author: bytes
    created: int
    raw: bytes


@dataclass(frozen=True)
class FeedbackRecord:
    """An author's current vote on an experience (score: wire integer 0..2000)."""

    experience_id: bytes
    author: bytes
    score: int
    created: int
    item_hash: bytes
    raw: bytes

    @property
    def value(self) -> float:
        return (self.score - 1000) / 1000


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise StoreError(f"corrupt value in store: {exc}") from exc


def _check_id(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != _ID_LEN:
        raise StoreError(f"{what} must be {_ID_LEN} bytes")
    return bytes(value)


def _space_bytes(space_id: bytes | str) -> bytes:
    """Space ids are 32-byte sha256 digests; accept the 64-char hex form too."""
    if isinstance(space_id, str):
        try:
            raw = bytes.fromhex(space_id)
        except ValueError:
            raise StoreError("space_id must be 64 hex characters") from None
        return _check_id(raw, "space_id")
    return _check_id(space_id, "space_id")


class Store:
    """The node's persistent state in one LMDB environment (see the module docstring).

    ``Store(path, space_id=...)`` creates ``path`` if needed. Use as a context manager or call
    ``close()``. ``space_id`` (bytes or hex) is the embedding space this node runs; it is
    recorded in the metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int = DEFAULT_MAP_SIZE,
        space_id: bytes | str | None = None,
        *,
        readonly: bool = False,
        unsafe_nosync: bool = False,
    ) -> None:
        if not isinstance(map_size, int) or map_size < 64 * 1024 or map_size > MAX_MAP_SIZE:
            raise StoreError(f"map_size must be an int in [65536, {MAX_MAP_SIZE}]")
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._env: lmdb.Environment | None = None
        space = _space_bytes(space_id) if space_id is not None else None
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._take_dir_lock()
        elif not (self.path / "data.mdb").exists():
            raise StoreError(f"no store at {self.path}")
        self._open_args: dict[str, Any] = {
            "map_size": map_size,
            # max_dbs bounds the databases this handle opens, not those in the file (an old
            # store's unused "peers" database costs nothing); +2 spare
            "max_dbs": len(_DB_NAMES) + 2,
            "subdir": True,
            "readonly": readonly,
            "sync": not unsafe_nosync,
            "metasync": not unsafe_nosync,
            "lock": True,
            "mode": 0o600,
        }
        try:
            self._env = lmdb.open(str(self.path), **self._open_args)
        except lmdb.Error as exc:
            self._release_dir_lock()
            raise StoreError(f"cannot open store at {self.path}: {exc}") from exc
        try:
            self._dbs = {}
            for name in _DB_NAMES:
                try:
                    self._dbs[name.decode()] = self._env.open_db(name, create=not readonly)
                except lmdb.NotFoundError:
                    if not (readonly and name in _LATER_DBS):
                        raise
                    # A read-only schema-1 store: no feedback yet (reads return nothing).
            self.previous_space_id = self._init_meta(space)
        except BaseException:
            self.close()
            raise
        self.space_id = space

    # ----------------------------------------------------------------------------- lifecycle

    def _take_dir_lock(self) -> None:
        self._lock_fd = take_lock(
            self.path / "store.lock",
            lambda: StoreError(f"store at {self.path} is in use by another process"),
        )

    def _release_dir_lock(self) -> None:
        release_lock(self._lock_fd)  # closing drops the flock
        self._lock_fd = None

    def close(self) -> None:
        with self._lock:
            if self._env is not None:
                self._env.close()
                self._env = None
            self._release_dir_lock()

    def release_mapped_pages(self) -> int:
        """Unmap the pages of the data file this process has touched; bytes advised (0 where
        not supported). A full scan (the index rebuild at start) maps in every page it read,
        which then counts in the node's resident memory for good although the node rarely
        reads most of them again. LMDB maps the file shared and read-only (writes go through
        write()), so MADV_DONTNEED only drops our page-table entries: the pages stay in the
        page cache, clean and reclaimable, and a later read maps them again, same bytes."""
        return release_file_mappings(self.path / "data.mdb")

    def compact(self) -> tuple[int, int]:
        """Rewrite the data file without its free pages (LMDB's compacting copy), keeping the
        directory lock throughout: (bytes before, bytes after). The copy is written next to
        the store and replaces the data file only once complete, so a crash leaves the old
        file or the new one, never a torn one."""
        if self.readonly:
            raise StoreError("store is open read-only")
        data = self.path / "data.mdb"
        tmp = self.path.parent / (self.path.name + ".compact")
        with self._lock:
            before = data.stat().st_size
            if tmp.exists():
                for leftover in tmp.iterdir():  # an interrupted earlier compaction
                    leftover.unlink()
            else:
                tmp.mkdir(mode=0o700)
            self.env.copy(str(tmp), compact=True)
            self.env.close()
            self._env = None
            os.replace(tmp / "data.mdb", data)
            for leftover in tmp.iterdir():
                leftover.unlink()
            tmp.rmdir()
            self._env = lmdb.open(str(self.path), **self._open_args)
            self._dbs = {n.decode(): self._env.open_db(n, create=True) for n in _DB_NAMES}
            return before, data.stat().st_size

    def iter_raw(self) -> Iterator[tuple[str, bytes]]:
        """(kind, signed bytes) of every item held, kind by kind in time order: what
        `dsonode export` writes."""
        for rec in self.iter_experiences_by_time():
            yield "experience", rec.raw
        for sub in self.iter_submissions_by_time():
            yield "submission", sub.raw
        for vote in self.iter_feedback_by_time():
            yield "feedback", vote.raw
        for rt in self.iter_retractions_by_time():
            yield "retraction", rt.raw

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreError("store is closed")
        return self._env

    def _init_meta(self, space: bytes | None) -> bytes | None:
        """Check the schema version, record the space; returns the previous space id."""

        def read(txn: _Txn) -> list[Any]:
            db = self._dbs["meta"]
            vals = [txn.get(k, db=db) for k in (b"schema_version", b"space_id", b"spaces")]
            return [None if v is None else _unpack(v) for v in vals]

        with self._lock, self.env.begin() as txn:
            version, prev_space_hex, spaces = read(txn)
        if version is None:
            if self.readonly:
                raise StoreError(f"store at {self.path} has no schema version")
            has_data = any(self.count(name) for name in ("experiences", "submissions"))
            if has_data:
                raise StoreSchemaError(f"store at {self.path} has data but no schema version")
        elif not isinstance(version, int) or isinstance(version, bool):
            raise StoreSchemaError(f"store at {self.path} has a malformed schema version")
        elif version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"store at {self.path} was written by schema version {version}, newer than "
                f"this dsonode's {SCHEMA_VERSION}: upgrade dsonode (or use another data dir)"
            )
        elif version < 1:
            raise StoreSchemaError(f"store at {self.path} has unknown schema version {version}")
        prev = bytes.fromhex(prev_space_hex) if isinstance(prev_space_hex, str) else None
        if self.readonly:
            return prev
        spaces = list(spaces) if isinstance(spaces, list) else []
        if version == SCHEMA_VERSION and (
            space is None or (prev == space and space.hex() in spaces)
        ):
            # Nothing to record: no write transaction, so LMDB's last transaction id stays
            # that of the last real change (the saved index is checked against it).
            return prev

        def write(txn: _Txn) -> None:
            db = self._dbs["meta"]
            txn.put(b"schema_version", _pack(SCHEMA_VERSION), db=db)
            if space is not None:
                txn.put(b"space_id", _pack(space.hex()), db=db)
                if space.hex() not in spaces:
                    spaces.append(space.hex())
                txn.put(b"spaces", _pack(spaces), db=db)

        self._write(write)
        return prev

    # -------------------------------------------------------------------------- txn helpers

    def _write(self, fn: Callable[[_Txn], T]) -> T:
        """Run fn in one write transaction; on MapFullError double the map and retry."""
        if self.readonly:
            raise StoreError("store is open read-only")
        with self._lock:
            while True:
                try:
                    with self.env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    # The failed transaction was aborted by the context manager; nothing of it
                    # is on disk. No other transaction is active (we hold the lock), so the map
                    # can be resized now.
                    size = self.env.info()["map_size"]
                    if size * 2 > MAX_MAP_SIZE:
                        raise StoreError(f"store map is full at {size} bytes") from None
                    self.env.set_mapsize(size * 2)

    def _read(self, fn: Callable[[_Txn], T]) -> T:
        with self._lock, self.env.begin(buffers=False) as txn:
            return fn(txn)

    def count(self, name: str) -> int:
        """Entries in one database (`counts` for all of them)."""
        with self._lock, self.env.begin() as txn:
            return txn.stat(self._dbs[name])["entries"]

    @property
    def map_size(self) -> int:
        return self.env.info()["map_size"]

    def counts(self) -> dict[str, int]:
        """Entries per database (for stats)."""
        with self._lock, self.env.begin() as txn:
            return {name: txn.stat(db)["entries"] for name, db in self._dbs.items()}

    def schema_version(self) -> int:
        raw = self._read(lambda txn: txn.get(b"schema_version", db=self._dbs["meta"]))
        if raw is None:  # only a read-only open of a never-initialised store gets here
            raise StoreError("store has no schema version")
        version: int = _unpack(raw)
        return version

    def known_spaces(self) -> list[bytes]:
        """Every space id this store has been opened with (oldest first)."""
        raw = self._read(lambda txn: txn.get(b"spaces", db=self._dbs["meta"]))
        return [bytes.fromhex(s) for s in _unpack(raw)] if raw else []

    # ------------------------------------------------------------------------- signed items

    def put_items(
        self,
        raw_items: Sequence[bytes],
        decoded: Sequence[Item] | None = None,
        now_ms: int | None = None,
        consensus_if_absent: Sequence[ConsensusRecord] = (),
    ) -> list[bool]:
        """Store signed wire items (experiences, submissions, feedback) in one transaction.

        Returns one flag per item: True if it was new, False if already stored (the same item
        again, an experience with the same id). Submissions and feedback keep one item per
        key: an author's submission for an experience and space replaces the stored one (True)
        when its ``(created, item hash)`` is smaller (PROTOCOL.md 7.2), a vote when it is
        greater (7.5, and the experience's feedback aggregate is recomputed in the same
        transaction); any other one is a duplicate (False). Duplicates inside the batch count
        once. Every item is decoded and verified with ``dsonode.core.wire.decode_item`` first
        (``now_ms`` is passed on for the clock-skew check); pass ``decoded`` (the items already
        returned by decode_item for these bytes) to skip a second verification. If any item is
        invalid the WireError is raised and nothing of the batch is written.

        ``consensus_if_absent``: consensus records written in the same transaction where the
        (space, experience) has none yet (a node's own first submission is its consensus, so an
        add is one commit). Experiences with a new experience or a new submission of the
        store's space are marked pending; a consensus written here clears the mark only if at
        most one submission of that space is stored for the experience (the record's own: else
        others' submissions are missing from it and the daemon must recompute it).
        """
        for r in raw_items:
            if not isinstance(r, bytes | bytearray | memoryview):
                raise StoreError(f"items must be bytes, got {type(r).__name__}")
        raws = [bytes(r) for r in raw_items]
        if decoded is None:
            for r in raws:
                if len(r) > MAX_ITEM_BYTES:
                    raise StoreError(f"item of {len(r)} bytes exceeds {MAX_ITEM_BYTES}")
            items: list[object] = [decode_item(r, now_ms=now_ms) for r in raws]
        else:
            items = list(decoded)
            if len(items) != len(raws):
                raise StoreError("decoded must have one entry per raw item")
        rows = [self._item_row(item, raw) for item, raw in zip(items, raws, strict=True)]
        marks = [self._pending_of(item) for item in items]
        cons_rows = [self._consensus_row(r) for r in consensus_if_absent]
        meta = self._dbs["meta"]

        operator = self._dbs.get("operator")
        retractions = self._dbs.get("retractions")

        def write(txn: _Txn) -> list[bool]:
            flags = []
            voted: dict[bytes, None] = {}  # experiences whose feedback changed
            for db_name, key, value, time_db, time_key, vote, rank in rows:
                db = self._dbs[db_name]
                # every item kind's key starts with its experience id: a forgotten experience
                # never comes back, whoever sends it
                if (
                    operator is not None
                    and db_name != "retractions"
                    and txn.get(_TOMB + key[:_ID_LEN], db=operator)
                ):
                    flags.append(False)
                    continue
                if (
                    db_name == "experiences"
                    and retractions is not None
                    and txn.get(key + getattr(items[len(flags)], "author", b""), db=retractions)
                ):  # its author withdrew it (PROTOCOL.md 7.6)
                    flags.append(False)
                    continue
                old = txn.get(key, db=db)
                if vote is not None and old is not None:
                    old_vote = _vote_of(key, old)
                    if not supersedes(vote, old_vote):
                        flags.append(False)
                        continue
                    txn.delete(_TIME.pack(old_vote.created) + key, db=self._dbs[time_db])
                elif rank is not None and old is not None:
                    old_rank = _sub_rank(old)
                    if not submission_precedes(rank, old_rank):
                        flags.append(False)
                        continue
                    # The replaced one leaves the time index too, so sync lists only the kept
                    # submission (PROTOCOL.md 12.3).
                    txn.delete(_TIME.pack(old_rank[0]) + key, db=self._dbs[time_db])
                elif old is not None:
                    flags.append(False)
                    continue
                txn.put(key, value, db=db)
                txn.put(time_key, b"", db=self._dbs[time_db])
                if db_name == "experiences" and operator is not None:
                    self._add_bytes(txn, operator, items[len(flags)], len(raws[len(flags)]))
                if db_name == "retractions":  # the author withdraws its own copy only
                    exp = txn.get(key[:_ID_LEN], db=self._dbs["experiences"])
                    if exp is not None and _unpack(exp)["author"] == key[_ID_LEN:]:
                        when = int(getattr(items[len(flags)], "created", 0))
                        self._forget_in(txn, key[:_ID_LEN], "retracted", when)
                if vote is not None:
                    voted[key[:_ID_LEN]] = None
                mark = marks[len(flags)]
                if mark is not None:
                    txn.put(_PENDING + mark, b"", db=meta)
                flags.append(True)
            for exp_id in voted:
                self._update_feedback_aggregate(txn, exp_id)
            for key, cons in cons_rows:
                if txn.get(key, db=self._dbs["consensus"]) is None:
                    txn.put(key, self._consensus_value(txn, key, cons), db=self._dbs["consensus"])
                    if self._submitters(txn, key[32:] + key[:32]) <= 1:
                        txn.delete(_PENDING + key[32:], db=meta)
            return flags

        return self._write(write)

    def _pending_of(self, item: object) -> bytes | None:
        """The experience a new item makes pending (None: no consensus of ours depends on it)."""
        if isinstance(item, Experience):
            return item.id
        if isinstance(item, Submission) and (
            self.space_id is None or item.space_id == self.space_id
        ):
            return item.experience_id
        return None

    def _submitters(self, txn: _Txn, prefix: bytes) -> int:
        """Submissions stored under experience id + space id (counts up to 2 only)."""
        cur = txn.cursor(db=self._dbs["submissions"])
        n = 0
        if cur.set_range(prefix):
            for key in cur.iternext(keys=True, values=False):
                if not key.startswith(prefix) or n >= 2:
                    break
                n += 1
        return n

    def pending_ids(self, limit: int = 1_000_000) -> list[bytes]:
        """Experiences whose consensus must be recomputed (see Guarantees), at most `limit`."""

        def read(txn: _Txn) -> list[bytes]:
            cur = txn.cursor(db=self._dbs["meta"])
            out: list[bytes] = []
            if cur.set_range(_PENDING):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(_PENDING) or len(out) >= limit:
                        break
                    out.append(bytes(key[len(_PENDING) :]))
            return out

        return self._read(read)

    def clear_pending(self, exp_ids: Sequence[bytes]) -> None:
        """Drop pending marks (an experience with nothing to compute yet, e.g. no eligible
        submission or no experience: a later item marks it again)."""
        keys = [_PENDING + _check_id(e, "experience id") for e in exp_ids]
        if keys:
            self._write(lambda txn: [txn.delete(k, db=self._dbs["meta"]) for k in keys])

    def _update_feedback_aggregate(self, txn: _Txn, exp_id: bytes) -> None:
        """Inside a write txn: recompute feedback_agg[exp_id] from the stored votes."""
        agg = aggregate(_vote_of(k, v) for k, v in self._feedback_rows(txn, exp_id))
        db = self._dbs["feedback_agg"]
        if agg is None:
            txn.delete(exp_id, db=db)
        else:
            txn.put(exp_id, _pack({"votes": agg.votes, "median": agg.median}), db=db)

    def _feedback_rows(self, txn: _Txn, exp_id: bytes) -> list[tuple[bytes, bytes]]:
        db = self._dbs.get("feedback")
        if db is None:  # read-only schema-1 store
            return []
        cur = txn.cursor(db=db)
        out = []
        if cur.set_range(exp_id):
            for key, value in cur:
                if not key.startswith(exp_id):
                    break
                out.append((bytes(key), bytes(value)))
        return out

    @staticmethod
    def _item_row(
        item: object, raw: bytes
    ) -> tuple[str, bytes, bytes, str, bytes, Vote | None, tuple[int, bytes] | None]:
        """(database, key, value, time database, time key, vote of a feedback item, rank of
        a submission)."""
        if isinstance(item, Experience):
            value = _pack(
                {
                    "raw": raw,
                    "domain": item.domain,
                    "text": item.text,
                    "tags": list(item.tags),
                    "created": item.created,
                    "author": item.author,
                }
            )
            time_key = _TIME.pack(item.created) + item.id
            return "experiences", item.id, value, "exp_by_time", time_key, None, None
        if isinstance(item, Submission):
            key = item.experience_id + item.space_id + item.author
            value = _pack({"raw": raw, "created": item.created, "code": item.code})
            time_key = _TIME.pack(item.created) + key
            rank = (item.created, item_hash(raw))
            return "submissions", key, value, "sub_by_time", time_key, None, rank
        if isinstance(item, Feedback):
            key = item.experience_id + item.author
            digest = item_hash(raw)
            value = _pack(
                {"raw": raw, "created": item.created, "score": item.score, "hash": digest}
            )
            vote = Vote(item.author, item.score, item.created, digest)
            return "feedback", key, value, "fb_by_time", _TIME.pack(item.created) + key, vote, None
        if isinstance(item, Retraction):
            key = item.experience_id + item.author
            value = _pack({"raw": raw, "created": item.created})
            return (
                "retractions",
                key,
                value,
                "rt_by_time",
                _TIME.pack(item.created) + key,
                None,
                None,
            )
        raise StoreError(f"cannot store a {type(item).__name__}")

    def has_experience(self, exp_id: bytes) -> bool:
        key = _check_id(exp_id, "experience id")
        return self._read(lambda txn: txn.get(key, db=self._dbs["experiences"]) is not None)

    def get_experience(self, exp_id: bytes) -> ExperienceRecord | None:
        key = _check_id(exp_id, "experience id")
        raw = self._read(lambda txn: txn.get(key, db=self._dbs["experiences"]))
        return None if raw is None else _exp_record(key, raw)

    def get_experiences(self, exp_ids: Sequence[bytes]) -> list[ExperienceRecord | None]:
        """Several experiences in one read transaction (for search results)."""
        keys = [_check_id(i, "experience id") for i in exp_ids]
        db = self._dbs["experiences"]

        def read(txn: _Txn) -> list[ExperienceRecord | None]:
            out = []
            for k in keys:
                v = txn.get(k, db=db)
                out.append(None if v is None else _exp_record(k, v))
            return out

        return self._read(read)

    def get_raw_items(self, keys: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        """Signed bytes by ("experience", id), ("submission", exp id + space id + author) or
        ("feedback", exp id + author)."""
        dbs = {"experience": self._dbs["experiences"], "submission": self._dbs["submissions"]}
        for kind, name in (("feedback", "feedback"), ("retraction", "retractions")):
            if name in self._dbs:
                dbs[kind] = self._dbs[name]

        def read(txn: _Txn) -> list[bytes | None]:
            out: list[bytes | None] = []
            for kind, key in keys:
                if kind not in dbs:
                    raise StoreError(f"unknown item kind {kind!r}")
                v = txn.get(bytes(key), db=dbs[kind])
                out.append(None if v is None else _unpack(v)["raw"])
            return out

        return self._read(read)

    def iter_experiences_by_time(
        self, since_ms: int = 0, until_ms: int | None = None, limit: int | None = None
    ) -> Iterator[ExperienceRecord]:
        """Experiences with since_ms <= created < until_ms, oldest first (for catch-up sync).

        Reads in pages of 256 so no read transaction is held while the caller works.
        """
        yield from self._iter_by_time("exp_by_time", since_ms, until_ms, limit, _exp_from_time)

    def iter_submissions_by_time(
        self, since_ms: int = 0, until_ms: int | None = None, limit: int | None = None
    ) -> Iterator[SubmissionRecord]:
        yield from self._iter_by_time("sub_by_time", since_ms, until_ms, limit, _sub_from_time)

    def iter_feedback_by_time(
        self, since_ms: int = 0, until_ms: int | None = None, limit: int | None = None
    ) -> Iterator[FeedbackRecord]:
        """Current votes with since_ms <= created < until_ms, oldest first (for sync)."""
        if "fb_by_time" not in self._dbs:  # read-only schema-1 store
            return
        yield from self._iter_by_time("fb_by_time", since_ms, until_ms, limit, _fb_from_time)

    # ----------------------------------------------------------------------------- feedback

    def get_feedback(self, exp_id: bytes) -> list[FeedbackRecord]:
        """The current vote of every author on an experience (in author order)."""
        key = _check_id(exp_id, "experience id")
        rows = self._read(lambda txn: self._feedback_rows(txn, key))
        return [_fb_record(k, v) for k, v in rows]

    def holds_feedback(
        self, experience_id: bytes, author: bytes, created: int, digest: bytes
    ) -> bool:
        """True if this vote (by its item hash) or a newer one of its author is stored: the
        gossip pipeline's "already stored" check (an older vote would be dropped anyway)."""
        key = _check_id(experience_id, "experience id") + _check_id(author, "author")
        db = self._dbs.get("feedback")
        if db is None:
            return False
        raw = self._read(lambda txn: txn.get(key, db=db))
        if raw is None:
            return False
        stored = _vote_of(key, raw)
        return not supersedes(Vote(bytes(author), 0, created, bytes(digest)), stored)

    def holds_submission(
        self, experience_id: bytes, space_id: bytes, author: bytes, created: int, digest: bytes
    ) -> bool:
        """True if this submission (by its item hash) or a smaller one of its author for the
        same experience and space is stored (PROTOCOL.md 7.2): the gossip pipeline's "already
        stored" check. A larger stored one is False: this one would replace it."""
        key = (
            _check_id(experience_id, "experience id")
            + _space_bytes(space_id)
            + _check_id(author, "author")
        )
        raw = self._read(lambda txn: txn.get(key, db=self._dbs["submissions"]))
        if raw is None:
            return False
        return not submission_precedes((created, bytes(digest)), _sub_rank(raw))

    def get_feedback_aggregate(self, exp_id: bytes) -> Aggregate | None:
        return self.get_feedback_aggregates([exp_id])[0]

    def get_feedback_aggregates(self, exp_ids: Sequence[bytes]) -> list[Aggregate | None]:
        """The stored aggregates of several experiences in one read transaction."""
        keys = [_check_id(i, "experience id") for i in exp_ids]
        db = self._dbs.get("feedback_agg")
        if db is None:
            return [None] * len(keys)

        def read(txn: _Txn) -> list[Aggregate | None]:
            out: list[Aggregate | None] = []
            for k in keys:
                v = txn.get(k, db=db)
                if v is None:
                    out.append(None)
                    continue
                d = _unpack(v)
                try:
                    out.append(Aggregate(votes=int(d["votes"]), median=float(d["median"])))
                except (KeyError, TypeError, ValueError) as exc:
                    raise StoreError(f"corrupt feedback aggregate: {exc}") from exc
            return out

        return self._read(read)

    def _iter_by_time(
        self,
        db_name: str,
        since_ms: int,
        until_ms: int | None,
        limit: int | None,
        load: Callable[[Store, _Txn, bytes], R | None],
    ) -> Iterator[R]:
        if since_ms < 0 or (until_ms is not None and until_ms < 0):
            raise StoreError("times must be >= 0")
        if limit is not None and limit < 0:
            raise StoreError("limit must be >= 0")
        end = None if until_ms is None else _TIME.pack(min(until_ms, 2**64 - 1))
        start, after = _TIME.pack(min(since_ms, 2**64 - 1)), None
        remaining = limit
        page = 256
        while remaining is None or remaining > 0:

            def read(
                txn: _Txn, start: bytes = start, after: bytes | None = after
            ) -> list[tuple[bytes, R | None]]:
                cur = txn.cursor(db=self._dbs[db_name])
                out: list[tuple[bytes, R | None]] = []
                if not cur.set_range(start):
                    return out
                for tkey, _ in cur:
                    if end is not None and tkey[:8] >= end:
                        break
                    if tkey == after:
                        continue  # the last key of the previous page
                    out.append((tkey, load(self, txn, tkey)))
                    if len(out) >= page:
                        break
                return out

            batch = self._read(read)
            for _, rec in batch:
                if rec is not None:
                    yield rec
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return
            if len(batch) < page:
                return
            start = after = batch[-1][0]

    def get_submissions(
        self, exp_id: bytes, space_id: bytes | str | None = None
    ) -> list[SubmissionRecord]:
        """All submissions for an experience (in one space, or in every space)."""
        prefix = _check_id(exp_id, "experience id")
        if space_id is not None:
            prefix += _space_bytes(space_id)

        def read(txn: _Txn) -> list[SubmissionRecord]:
            cur = txn.cursor(db=self._dbs["submissions"])
            out = []
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out.append(_sub_record(key, value))
            return out

        return self._read(read)

    # ---------------------------------------------------------------------------- consensus

    def put_consensus(self, records: Sequence[ConsensusRecord]) -> None:
        """Insert or replace consensus records (one transaction) and clear their experiences'
        pending marks. If a record's domain is empty, the experience's domain is looked up so
        the index can filter by it. The caller computes the records from the stored
        submissions with no other submission writer in between (the daemon's lock)."""
        rows = [self._consensus_row(r) for r in records]

        def write(txn: _Txn) -> None:
            for key, value in rows:
                txn.put(key, self._consensus_value(txn, key, value), db=self._dbs["consensus"])
                txn.delete(_PENDING + key[32:], db=self._dbs["meta"])

        self._write(write)

    @staticmethod
    def _consensus_row(r: ConsensusRecord) -> tuple[bytes, dict[str, Any]]:
        _space_bytes(r.space_id)
        _check_id(r.experience_id, "experience id")
        if len(r.code) != CODE_BYTES:
            raise StoreError(f"consensus code must be {CODE_BYTES} bytes")
        if r.count < 0:
            raise StoreError("consensus count must be >= 0")
        value = {
            "code": bytes(r.code),
            "count": int(r.count),
            "confirmed": bool(r.confirmed),
            "domain": r.domain,
            "stats": r.stats,
            "updated": int(r.updated),
        }
        return bytes(r.space_id) + bytes(r.experience_id), value

    def _consensus_value(self, txn: _Txn, key: bytes, value: dict[str, Any]) -> bytes:
        if not value["domain"]:  # looked up so the index can filter by domain
            exp = txn.get(key[32:], db=self._dbs["experiences"])
            value = {**value, "domain": _unpack(exp)["domain"] if exp is not None else ""}
        return _pack(value)

    def get_consensus(self, space_id: bytes | str, exp_id: bytes) -> ConsensusRecord | None:
        key = _space_bytes(space_id) + _check_id(exp_id, "experience id")
        raw = self._read(lambda txn: txn.get(key, db=self._dbs["consensus"]))
        return None if raw is None else _cons_record(key, raw)

    def count_consensus(self, space_id: bytes | str) -> int:
        """Number of consensus codes of a space (a cursor walk: O(n), cheap next to a rebuild)."""
        n = 0
        for chunk in self.iter_consensus_chunks(space_id, chunk=65536, codes=False):
            n += len(chunk)
        return n

    def iter_consensus(self, space_id: bytes | str) -> Iterator[ConsensusRecord]:
        """Every consensus record of a space, in experience-id order."""
        for chunk in self.iter_consensus_chunks(space_id):
            yield from chunk

    def iter_consensus_chunks(
        self, space_id: bytes | str, chunk: int = 4096, codes: bool = True
    ) -> Iterator[list[ConsensusRecord]]:
        """Consensus records of a space in lists of up to ``chunk`` (one short read txn per
        list), for rebuilding the index. With codes=False the code field is b"" and values
        are not decoded (for counting)."""
        prefix = _space_bytes(space_id)
        start = prefix
        first = True
        while True:

            def read(txn: _Txn, start: bytes = start, first: bool = first) -> list[ConsensusRecord]:
                cur = txn.cursor(db=self._dbs["consensus"])
                out: list[ConsensusRecord] = []
                if not cur.set_range(start):
                    return out
                if not first and cur.key() == start and not cur.next():
                    return out
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    if codes:
                        out.append(_cons_record(key, value))
                    else:
                        out.append(ConsensusRecord(prefix, key[32:], b"", 0, False, ""))
                    if len(out) >= chunk:
                        break
                return out

            batch = self._read(read)
            if batch:
                yield batch
            if len(batch) < chunk:
                return
            start = prefix + batch[-1].experience_id
            first = False

    # ------------------------------------------------------------------------- reputation

    def get_reputation(self, peer_id: bytes) -> dict[str, Any] | None:
        return self._get_map("reputation", peer_id)

    def iter_reputation(self) -> list[tuple[bytes, dict[str, Any]]]:
        return self._all_map("reputation")

    def update_reputation(
        self, peer_id: bytes, fn: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read-modify-write one reputation record atomically (fn gets the old record)."""
        key = self._peer_key(peer_id)

        def write(txn: _Txn) -> dict[str, Any]:
            old = txn.get(key, db=self._dbs["reputation"])
            new = fn(None if old is None else _unpack(old))
            if not isinstance(new, dict):
                raise StoreError("reputation record must be a dict")
            txn.put(key, _pack(new), db=self._dbs["reputation"])
            return new

        return self._write(write)

    @staticmethod
    def _peer_key(peer_id: bytes) -> bytes:
        if not isinstance(peer_id, bytes | bytearray) or not 1 <= len(peer_id) <= 128:
            raise StoreError("peer id must be 1..128 bytes")
        return bytes(peer_id)

    def _get_map(self, db_name: str, peer_id: bytes) -> dict[str, Any] | None:
        key = self._peer_key(peer_id)
        raw = self._read(lambda txn: txn.get(key, db=self._dbs[db_name]))
        return None if raw is None else _unpack(raw)

    def _all_map(self, db_name: str) -> list[tuple[bytes, dict[str, Any]]]:
        def read(txn: _Txn) -> list[tuple[bytes, dict[str, Any]]]:
            return [(k, _unpack(v)) for k, v in txn.cursor(db=self._dbs[db_name])]

        return self._read(read)

    # ---------------------------------------------------------- operator lists, tombstones

    def _operator_db(self) -> Any:
        db = self._dbs.get("operator")
        if db is None:
            raise StoreError("this store was opened read-only before it had operator lists")
        return db

    def set_listed(self, list_name: str, author: bytes, on: bool, now_ms: int) -> bool:
        """Put an author on (or take it off) the operator's `block` or `allow` list; returns
        whether anything changed."""
        if list_name not in OPERATOR_LISTS:
            raise StoreError(f"no operator list {list_name!r}")
        key = list_name.encode() + b"/" + _check_id(author, "author")
        db = self._operator_db()

        def write(txn: _Txn) -> bool:
            present = txn.get(key, db=db) is not None
            if on and not present:
                txn.put(key, _pack({"at": int(now_ms)}), db=db)
            elif not on and present:
                txn.delete(key, db=db)
            return present != on

        return self._write(write)

    def listed(self, list_name: str) -> set[bytes]:
        """The authors on one operator list."""
        if list_name not in OPERATOR_LISTS or "operator" not in self._dbs:
            return set()
        prefix = list_name.encode() + b"/"
        return {k[len(prefix) :] for k in self._keys_with(prefix)}

    def _keys_with(self, prefix: bytes) -> list[bytes]:
        db = self._operator_db()

        def read(txn: _Txn) -> list[bytes]:
            cur = txn.cursor(db=db)
            out: list[bytes] = []
            if cur.set_range(prefix):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    out.append(bytes(key))
            return out

        return self._read(read)

    @staticmethod
    def _add_bytes(txn: _Txn, op: Any, author_or_item: Any, delta: int) -> None:
        """Inside a write txn: move an author's stored-bytes count by `delta`."""
        author = getattr(author_or_item, "author", author_or_item)
        key = _BYTES + bytes(author)
        old = txn.get(key, db=op)
        total = max(0, (int(_unpack(old)) if old is not None else 0) + delta)
        if total:
            txn.put(key, _pack(total), db=op)
        else:
            txn.delete(key, db=op)

    def author_bytes(self, author: bytes) -> int:
        """Bytes of an author's stored experiences (signed items), for its quota."""
        key = _BYTES + _check_id(author, "author")
        db = self._dbs.get("operator")
        if db is None:
            return 0
        raw = self._read(lambda txn: txn.get(key, db=db))
        return int(_unpack(raw)) if raw is not None else 0

    def is_tombstoned(self, exp_id: bytes) -> bool:
        key = _TOMB + _check_id(exp_id, "experience id")
        db = self._dbs.get("operator")
        return db is not None and self._read(lambda txn: txn.get(key, db=db) is not None)

    def tombstones(self) -> int:
        return len(self._keys_with(_TOMB)) if "operator" in self._dbs else 0

    def forget(self, exp_ids: Sequence[bytes], why: str, now_ms: int) -> list[bool]:
        """Delete experiences and everything keyed by them, and tombstone them, in one
        transaction (see the module docstring). Returns, per id, whether anything was stored
        under it. A tombstone is written even for an id never seen (so it is never stored)."""
        ids = [_check_id(e, "experience id") for e in exp_ids]
        self._operator_db()
        return self._write(lambda txn: [self._forget_in(txn, e, why, now_ms) for e in ids])

    def _forget_in(self, txn: _Txn, exp_id: bytes, why: str, now_ms: int) -> bool:
        """Inside a write txn: `forget` of one experience."""
        op = self._operator_db()

        def drop_prefixed(db_name: str, time_db: str) -> int:
            db = self._dbs[db_name]
            cur = txn.cursor(db=db)
            rows: list[tuple[bytes, int]] = []
            if cur.set_range(exp_id):
                for key, value in cur:
                    if not key.startswith(exp_id):
                        break
                    rows.append((bytes(key), int(_unpack(value)["created"])))
            for key, created in rows:
                txn.delete(key, db=db)
                txn.delete(_TIME.pack(created) + key, db=self._dbs[time_db])
            return len(rows)

        found = False
        raw = txn.get(exp_id, db=self._dbs["experiences"])
        if raw is not None:
            rec = _unpack(raw)
            txn.delete(exp_id, db=self._dbs["experiences"])
            txn.delete(_TIME.pack(int(rec["created"])) + exp_id, db=self._dbs["exp_by_time"])
            self._add_bytes(txn, op, rec["author"], -len(rec["raw"]))
            found = True
        found |= drop_prefixed("submissions", "sub_by_time") > 0
        if "feedback" in self._dbs:
            found |= drop_prefixed("feedback", "fb_by_time") > 0
            txn.delete(exp_id, db=self._dbs["feedback_agg"])
        spaces = txn.get(b"spaces", db=self._dbs["meta"])
        for space in _unpack(spaces) if spaces else []:
            found |= txn.delete(bytes.fromhex(space) + exp_id, db=self._dbs["consensus"])
        txn.delete(_PENDING + exp_id, db=self._dbs["meta"])
        txn.put(_TOMB + exp_id, _pack({"at": int(now_ms), "why": why}), db=op)
        return found

    def has_retraction(self, exp_id: bytes, author: bytes) -> bool:
        key = _check_id(exp_id, "experience id") + _check_id(author, "author")
        db = self._dbs.get("retractions")
        return db is not None and self._read(lambda txn: txn.get(key, db=db) is not None)

    def iter_retractions_by_time(
        self, since_ms: int = 0, until_ms: int | None = None, limit: int | None = None
    ) -> Iterator[RetractionRecord]:
        """Retractions with since_ms <= created < until_ms, oldest first (for sync)."""
        if "rt_by_time" not in self._dbs:
            return
        yield from self._iter_by_time("rt_by_time", since_ms, until_ms, limit, _rt_from_time)

    # ------------------------------------------------------------------------ known peers

    def load_known_peers(self, limit: int = 100_000) -> list[KnownPeer]:
        """The remembered peers (records that do not decode are skipped: they are only hints)."""
        if "known_peers" not in self._dbs:
            return []

        def read(txn: _Txn) -> list[KnownPeer]:
            out: list[KnownPeer] = []
            for key, value in txn.cursor(db=self._dbs["known_peers"]):
                if len(out) >= limit:
                    break
                try:
                    out.append(decode_peer(key.decode("ascii"), value))
                except (PeerBookError, UnicodeDecodeError):
                    continue
            return out

        return self._read(read)

    def save_known_peers(self, peers: Sequence[KnownPeer], forget: Sequence[str] = ()) -> None:
        """Write these records and delete those of `forget`, in one transaction."""

        def write(txn: _Txn) -> None:
            db = self._dbs["known_peers"]
            for peer in peers:
                txn.put(peer.peer_id.encode("ascii"), encode_peer(peer), db=db)
            for peer_id in forget:
                txn.delete(peer_id.encode("ascii"), db=db)

        self._write(write)


# ------------------------------------------------------------------------ record decoding


def _exp_record(key: bytes, value: bytes) -> ExperienceRecord:
    d = _unpack(value)
    try:
        return ExperienceRecord(
            id=key,
            domain=d["domain"],
            text=d["text"],
            tags=tuple(d["tags"]),
            created=d["created"],
            author=d["author"],
            raw=d["raw"],
        )
    except (KeyError, TypeError) as exc:
        raise StoreError(f"corrupt experience record: {exc}") from exc


def _sub_record(key: bytes, value: bytes) -> SubmissionRecord:
    d = _unpack(value)
    try:
        return SubmissionRecord(
            experience_id=key[:32],
            space_id=key[32:64],
            author=key[64:],
            code=d["code"],
            created=d["created"],
            raw=d["raw"],
        )
    except (KeyError, TypeError) as exc:
        raise StoreError(f"corrupt submission record: {exc}") from exc


def _cons_record(key: bytes, value: bytes) -> ConsensusRecord:
    d = _unpack(value)
    try:
        return ConsensusRecord(
            space_id=key[:32],
            experience_id=key[32:],
            code=d["code"],
            count=d["count"],
            confirmed=d["confirmed"],
            domain=d["domain"],
            stats=d["stats"],
            updated=d["updated"],
        )
    except (KeyError, TypeError) as exc:
        raise StoreError(f"corrupt consensus record: {exc}") from exc


def _sub_rank(value: bytes) -> tuple[int, bytes]:
    """(created, item hash) of a stored submission (PROTOCOL.md 7.2; the hash is computed
    from the signed bytes, so stores written before this rule need no migration)."""
    d = _unpack(value)
    try:
        return int(d["created"]), item_hash(bytes(d["raw"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"corrupt submission record: {exc}") from exc


def _vote_of(key: bytes, value: bytes) -> Vote:
    d = _unpack(value)
    try:
        return Vote(
            author=key[_ID_LEN:], score=d["score"], created=d["created"], item_hash=d["hash"]
        )
    except (KeyError, TypeError) as exc:
        raise StoreError(f"corrupt feedback record: {exc}") from exc


def _fb_record(key: bytes, value: bytes) -> FeedbackRecord:
    d = _unpack(value)
    try:
        return FeedbackRecord(
            experience_id=key[:_ID_LEN],
            author=key[_ID_LEN:],
            score=d["score"],
            created=d["created"],
            item_hash=d["hash"],
            raw=d["raw"],
        )
    except (KeyError, TypeError) as exc:
        raise StoreError(f"corrupt feedback record: {exc}") from exc


def _fb_from_time(store: Store, txn: _Txn, tkey: bytes) -> FeedbackRecord | None:
    v = txn.get(tkey[8:], db=store._dbs["feedback"])
    return None if v is None else _fb_record(tkey[8:], v)


def _exp_from_time(store: Store, txn: _Txn, tkey: bytes) -> ExperienceRecord | None:
    v = txn.get(tkey[8:], db=store._dbs["experiences"])
    return None if v is None else _exp_record(tkey[8:], v)


def _sub_from_time(store: Store, txn: _Txn, tkey: bytes) -> SubmissionRecord | None:
    v = txn.get(tkey[8:], db=store._dbs["submissions"])
    return None if v is None else _sub_record(tkey[8:], v)


def _rt_from_time(store: Store, txn: _Txn, tkey: bytes) -> RetractionRecord | None:
    v = txn.get(tkey[8:], db=store._dbs["retractions"])
    if v is None:
        return None
    d = _unpack(v)
    try:
        return RetractionRecord(tkey[8:40], tkey[40:], int(d["created"]), bytes(d["raw"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"corrupt retraction record: {exc}") from exc


_MADV_DONTNEED = 4  # Linux <sys/mman.h>


def release_file_mappings(path: Path) -> int:
    """madvise(MADV_DONTNEED) every shared, non-writable mapping of `path` in this process
    (found in /proc/self/maps); bytes advised, 0 off Linux or on any failure."""
    import ctypes
    import ctypes.util

    target = str(path.resolve())
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target:
            continue
        perms = fields[1]
        if perms[3] != "s" or perms[1] == "w":  # only shared read-only maps are safe to drop
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
            advised += end - start
    return advised
