"""The code index saved beside the store, so a node starts without rebuilding it from LMDB
(ARCHITECTURE.md, the code index).

A node saves its index when it closes (`save_index`) and loads it when it opens
(`load_index`); the file is served only if it is intact and matches the store exactly:

- intact: a header (JSON, its own CRC-32) lists every array with its dtype, shape, offset and
  CRC-32; a torn, truncated or bit-flipped file fails a check and is not used;
- matching: the header records the store's *stamp* when it was written -- LMDB's last
  committed transaction id, the inode of ``data.mdb``, the space id, the number of consensus
  records (all spaces) and a hash of the reference vector. Any write to the store after the
  save (a crash after more writes, a command that changed the store offline, another store
  copied in) moves the transaction id or the inode, and the file is stale. As a last guard a
  sample of rows (the first, the last and a few in between) is compared with LMDB's records.

Otherwise the index is rebuilt from LMDB, as before there was a side file. The trained
centroids of the inverted lists are taken from the file even when it is stale (if their own
checksum holds): they only choose the partition, and reusing them makes the rebuilt index
hold the same lists as the one that grew incrementally.

Writes go to a temporary file that is fsynced and renamed over the old one, so a crash while
saving leaves the previous file or none, never a torn one under the real name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.store.index import CodeIndex
from dsonode.store.lmdb_store import Store

log = logging.getLogger(__name__)

FORMAT = 1
_MAGIC = b"DSOINDEX"
_ALIGN = 4096
_MAX_HEADER = 1 << 20
_MAX_ROWS = 1 << 32
#: Rows compared with LMDB at load, besides the first and the last.
SPOT_CHECKS = 32
_DTYPES = {"uint8", "int32", "float32", "bool"}


def snapshot_path(store_dir: Path, space_id: str) -> Path:
    """Where the index of one space is saved (inside the store's directory)."""
    return Path(store_dir) / f"index-{space_id[:16]}.bin"


def store_stamp(store: Store, space_id: str, ref: np.ndarray | None) -> dict[str, Any]:
    """What the saved index must match: LMDB's last transaction id, data.mdb's inode, the
    space, the consensus entries (all spaces) and the reference vector's hash."""
    st = os.stat(Path(store.path) / "data.mdb")
    ref_hash = "" if ref is None else hashlib.sha256(np.asarray(ref, "<f4").tobytes()).hexdigest()
    return {
        "format": FORMAT,
        "txnid": int(store.env.info()["last_txnid"]),
        "inode": int(st.st_ino),
        "space": space_id,
        # entries of the consensus database, all spaces (O(1); a per-space count walks it)
        "consensus_entries": int(store.count("consensus")),
        "ref_sha256": ref_hash,
    }


# ---------------------------------------------------------------------------- writing


def _raw(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return arr.reshape(-1).view(np.uint8).data


def save_index(path: Path, index: CodeIndex, stamp: dict[str, Any]) -> None:
    """Write the index atomically (temporary file, fsync, rename, fsync of the directory)."""
    state = index.state()
    arrays: dict[str, np.ndarray] = state["arrays"]
    sections: list[dict[str, Any]] = []
    offset = 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        arrays[name] = arr
        sections.append(
            {
                "name": name,
                "dtype": str(arr.dtype),
                "shape": list(arr.shape),
                "offset": offset,
                "nbytes": arr.nbytes,
                "crc32": zlib.crc32(_raw(arr)),
            }
        )
        offset += -(-arr.nbytes // _ALIGN) * _ALIGN
    header = json.dumps(
        {"stamp": stamp, "domains": state["domains"], "sections": sections},
        sort_keys=True,
    ).encode()
    head = _MAGIC + struct.pack("<II", len(header), zlib.crc32(header)) + header
    base = -(-len(head) // _ALIGN) * _ALIGN
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head.ljust(base, b"\0"))
        for sec, arr in zip(sections, arrays.values(), strict=True):
            f.seek(base + sec["offset"])
            f.write(_raw(arr))
        f.truncate(base + offset)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------- reading


class SnapshotError(Exception):
    """The side file cannot be used (the message says why); the caller rebuilds."""


def _read_header(f: Any, size: int) -> tuple[dict[str, Any], int]:
    lead = f.read(len(_MAGIC) + 8)
    if len(lead) < len(_MAGIC) + 8 or not lead.startswith(_MAGIC):
        raise SnapshotError("not an index file")
    hlen, hcrc = struct.unpack("<II", lead[len(_MAGIC) :])
    if hlen > _MAX_HEADER:
        raise SnapshotError("header too long")
    header = f.read(hlen)
    if len(header) != hlen or zlib.crc32(header) != hcrc:
        raise SnapshotError("header checksum mismatch (torn or damaged file)")
    try:
        meta = json.loads(header)
    except ValueError:
        raise SnapshotError("header is not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sections"), list):
        raise SnapshotError("malformed header")
    base = -(-(len(_MAGIC) + 8 + hlen) // _ALIGN) * _ALIGN
    return meta, base


def _read_section(f: Any, sec: Any, base: int, size: int) -> np.ndarray:
    if not isinstance(sec, dict):
        raise SnapshotError("malformed section")
    dtype, shape, offset, nbytes, crc = (
        sec.get(k) for k in ("dtype", "shape", "offset", "nbytes", "crc32")
    )
    if (
        dtype not in _DTYPES
        or not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and 0 <= d < _MAX_ROWS for d in shape)
        or not isinstance(offset, int)
        or not isinstance(nbytes, int)
        or not isinstance(crc, int)
    ):
        raise SnapshotError(f"malformed section {sec.get('name')!r}")
    count = int(np.prod(shape))
    if count * np.dtype(dtype).itemsize != nbytes or offset < 0:
        raise SnapshotError(f"section {sec.get('name')!r} has inconsistent sizes")
    if base + offset + nbytes > size:
        raise SnapshotError(f"section {sec.get('name')!r} runs past the end (truncated file)")
    if nbytes == 0:
        arr = np.zeros(0, dtype=np.uint8)
    else:
        # Copy-on-write map: pages come from the page cache, a write to a row copies its page
        # privately; the file itself is never written through it.
        arr = np.memmap(f, dtype=np.uint8, mode="c", offset=base + offset, shape=(nbytes,))
    if len(arr) != nbytes or zlib.crc32(_raw(arr)) != crc:
        raise SnapshotError(f"section {sec.get('name')!r} checksum mismatch")
    return arr.view(dtype).reshape(shape)


def read_centroids(path: Path, space_id: str) -> np.ndarray | None:
    """The trained centroids of a saved index of this space, if the file holds intact ones
    (stale or not: they only choose the partition)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            meta, base = _read_header(f, size)
            if not isinstance(meta.get("stamp"), dict) or meta["stamp"].get("space") != space_id:
                return None
            for sec in meta["sections"]:
                if isinstance(sec, dict) and sec.get("name") == "centroids":
                    cent = _read_section(f, sec, base, size)
                    if cent.dtype == np.uint8 and cent.ndim == 2 and cent.shape[1] == 128:
                        return cent
    except (OSError, SnapshotError):
        return None
    return None


def read_index(path: Path, stamp: dict[str, Any], **kwargs: Any) -> CodeIndex:
    """The saved index if it is intact and its stamp equals ``stamp``; raises SnapshotError
    (with the reason) otherwise. ``kwargs`` go to the CodeIndex (search parameters)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            meta, base = _read_header(f, size)
            if meta.get("stamp") != stamp:
                raise SnapshotError("stale: the store changed since the index was saved")
            arrays = {}
            for sec in meta["sections"]:
                name = sec.get("name") if isinstance(sec, dict) else None
                if not isinstance(name, str) or name in arrays:
                    raise SnapshotError("malformed section list")
                arrays[name] = _read_section(f, sec, base, size)
    except OSError as exc:
        raise SnapshotError(f"cannot read: {exc}") from None
    domains = meta.get("domains")
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise SnapshotError("malformed domain table")
    try:
        return CodeIndex.from_state(arrays, domains, **kwargs)
    except (ValueError, KeyError) as exc:
        raise SnapshotError(f"inconsistent arrays: {exc}") from None


def _spot_check(index: CodeIndex, store: Store, space_id: str) -> None:
    """Compare a sample of rows with LMDB's consensus records (SnapshotError if one differs)."""
    for exp_id, code, domain, confirmed in index.sample_rows(SPOT_CHECKS):
        rec = store.get_consensus(space_id, exp_id)
        if rec is None or (code, domain, confirmed) != (rec.code, rec.domain, rec.confirmed):
            raise SnapshotError(f"row {exp_id.hex()[:16]} differs from the store")


def load_index(
    store: Store,
    space_id: str,
    ref: np.ndarray | None,
    path: Path,
    say: Callable[[str], None] = lambda s: None,
    **kwargs: Any,
) -> tuple[CodeIndex, dict[str, Any] | None]:
    """The index of ``space_id``: the saved one when it is intact and current, else rebuilt
    from LMDB. Returns (index, stamp it was loaded at, or None when rebuilt)."""
    stamp = store_stamp(store, space_id, ref)
    if path.exists():
        try:
            index = read_index(path, stamp, ref=ref, **kwargs)
            _spot_check(index, store, space_id)
            say(f"loaded the saved index ({len(index)} items)")
            return index, stamp
        except SnapshotError as exc:
            log.warning("not using the saved index %s: %s; rebuilding from the store", path, exc)
    say("building the index from the store")
    centroids = read_centroids(path, space_id) if path.exists() else None
    index = CodeIndex.from_store(store, space_id, ref=ref, centroids=centroids, **kwargs)
    return index, None
