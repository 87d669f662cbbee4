"""The index saved beside the store (dsonode.store.snapshot): loaded when intact and current,
rebuilt from LMDB when the store changed after the save, or the file is torn or damaged --
never served stale. Real LMDB stores throughout."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dsonode.core import bitdelta
from dsonode.core.constants import DIM
from dsonode.store import ConsensusRecord, Store
from dsonode.store.snapshot import (
    load_index,
    read_centroids,
    save_index,
    snapshot_path,
    store_stamp,
)

SPACE = "ab" * 32
SMALL = {"ivf_min_rows": 300, "nlist": 16, "nprobe": 4}


@pytest.fixture(scope="module")
def codes():
    rng = np.random.default_rng(5)
    v = rng.standard_normal((700, DIM)).astype(np.float32)
    return bitdelta.encode(v / np.linalg.norm(v, axis=1, keepdims=True))


def _records(codes, start, stop, domain="d"):
    return [
        ConsensusRecord(
            bytes.fromhex(SPACE), i.to_bytes(32, "big"), codes[i].tobytes(), 3, i % 2 == 0, domain
        )
        for i in range(start, stop)
    ]


def _open(path):
    return Store(path, space_id=SPACE)


def _save(store, index, ref=None):
    path = snapshot_path(store.path, SPACE)
    save_index(path, index, store_stamp(store, SPACE, ref))
    return path


def _assert_matches_store(index, store, codes, n):
    assert len(index) == n
    for i in range(0, n, 37):
        rec = store.get_consensus(SPACE, i.to_bytes(32, "big"))
        assert rec is not None and index.get(rec.experience_id) == (
            rec.code,
            rec.domain,
            rec.confirmed,
        )


def test_saved_index_loads_after_a_clean_reopen_and_equals_the_rebuild(tmp_path, codes):
    ref = np.random.default_rng(1).standard_normal(DIM).astype(np.float32) * 0.01
    with _open(tmp_path) as store:
        store.put_consensus(_records(codes, 0, 700))
        index, stamp = load_index(store, SPACE, ref, snapshot_path(tmp_path, SPACE), **SMALL)
        assert stamp is None  # nothing saved yet: rebuilt
        assert index.inverted_lists() is not None
        path = _save(store, index, ref)
    with _open(tmp_path) as store:  # reopening writes nothing: the stamp still holds
        loaded, stamp = load_index(store, SPACE, ref, path, **SMALL)
        assert stamp is not None
        rebuilt = type(index).from_store(store, SPACE, ref=ref, centroids=index.centroids, **SMALL)
    assert loaded.inverted_lists() == index.inverted_lists() == rebuilt.inverted_lists()
    assert loaded.domains() == index.domains() and loaded.confirmed_count() == 350
    q = bitdelta.decode(codes[3])
    for kw in ({}, {"confirmed_only": True}):
        assert (
            loaded.search(q, 10, **kw) == index.search(q, 10, **kw) == rebuilt.search(q, 10, **kw)
        )
    # A loaded index (its arrays mapped copy-on-write from the file) takes updates in place
    # and new rows; the file on disk stays as saved.
    before = path.read_bytes()
    loaded.update([(5).to_bytes(32, "big")], codes[600:601], "d", True)
    assert loaded.get((5).to_bytes(32, "big"))[0] == codes[600].tobytes()
    loaded.add([b"\x07" * 32], codes[:1], "new")
    assert loaded.search(q, 1)[0][0] in (b"\x07" * 32, (3).to_bytes(32, "big"))
    assert path.read_bytes() == before


def test_a_write_after_the_save_makes_the_file_stale(tmp_path, codes, caplog):
    with _open(tmp_path) as store:
        store.put_consensus(_records(codes, 0, 200))
        index, _ = load_index(store, SPACE, None, snapshot_path(tmp_path, SPACE))
        path = _save(store, index)
        # More consensus after the save (as if the node then crashed before saving again),
        # including a changed code for an indexed id: same count would not be enough.
        changed = ConsensusRecord(
            bytes.fromhex(SPACE), (7).to_bytes(32, "big"), codes[600].tobytes(), 4, True, "d"
        )
        store.put_consensus([changed])
    with caplog.at_level(logging.WARNING), _open(tmp_path) as store:
        loaded, stamp = load_index(store, SPACE, None, path)
        assert stamp is None and "stale" in caplog.text
        assert loaded.get((7).to_bytes(32, "big"))[0] == codes[600].tobytes()
        _assert_matches_store(loaded, store, codes, 200)


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "garbage"])
def test_a_torn_or_damaged_file_is_rebuilt(tmp_path, codes, caplog, damage):
    with _open(tmp_path) as store:
        store.put_consensus(_records(codes, 0, 400))
        index, _ = load_index(store, SPACE, None, snapshot_path(tmp_path, SPACE), **SMALL)
        path = _save(store, index)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip_payload":
        raw[4096 + 10] ^= 0x01  # inside the first array (the header fits in 4 KiB)
    elif damage == "flip_header":
        raw[20] ^= 0x01
    else:
        raw = bytearray(b"\x00" * 100)
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING), _open(tmp_path) as store:
        loaded, stamp = load_index(store, SPACE, None, path, **SMALL)
        assert stamp is None and "rebuilding" in caplog.text
        _assert_matches_store(loaded, store, codes, 400)
    # Centroids come from an intact section only (the payload flip may hit another section).
    if damage in ("flip_header", "garbage", "truncate"):
        assert read_centroids(path, SPACE) is None


def test_a_node_saves_its_index_on_close_and_loads_it_at_the_next_start(tmp_path, codes):
    """The composition root (a light node: no model): close saves, open loads; a second close
    with no write in between keeps the file as it is."""
    from dsonode.config.loader import config_from_mapping
    from dsonode.node.node import Node, node_config

    cfg = node_config(
        config_from_mapping(
            {"node": {"data_dir": str(tmp_path / "n"), "role": "light", "space_id": SPACE}}
        )
    )
    node = Node(cfg)
    said: list[str] = []
    node.open(said.append)
    try:
        assert node.store is not None and node.index is not None
        node.store.put_consensus(_records(codes, 0, 150))
        node.index.add(  # as the library indexes what it stores
            [i.to_bytes(32, "big") for i in range(150)],
            codes[:150],
            "d",
            confirmed=[i % 2 == 0 for i in range(150)],
        )
    finally:
        node.close()
    path = snapshot_path(tmp_path / "n" / "store", SPACE)
    mtime = path.stat().st_mtime_ns
    said.clear()
    node = Node(cfg)
    node.open(said.append)
    try:
        assert node.index is not None and len(node.index) == 150
        assert any("loaded the saved index" in s for s in said), said
    finally:
        node.close()
    assert path.stat().st_mtime_ns == mtime  # nothing changed: not rewritten


def test_a_node_that_deleted_experiences_does_not_save_its_index(tmp_path, codes):
    """The index has no remove: after a forget, close must not save it (the old file is then
    stale), so the next start rebuilds from LMDB without the forgotten row."""
    from dsonode.config.loader import config_from_mapping
    from dsonode.node.node import Node, node_config

    cfg = node_config(
        config_from_mapping(
            {"node": {"data_dir": str(tmp_path / "n"), "role": "light", "space_id": SPACE}}
        )
    )
    ids = [i.to_bytes(32, "big") for i in range(150)]
    node = Node(cfg)
    node.open(lambda _s: None)
    try:
        assert node.store is not None and node.index is not None
        node.store.put_consensus(_records(codes, 0, 150))
        node.index.add(ids, codes[:150], "d", confirmed=[True] * 150)
    finally:
        node.close()  # saved: 150 rows
    node = Node(cfg)
    node.open(lambda _s: None)
    try:
        assert node.library is not None and node.index is not None
        assert len(node.index) == 150
        assert node.library.forget([ids[7]]) == [True]
        assert len(node.index) == 150  # still in memory until a rebuild
    finally:
        node.close()
    said: list[str] = []
    node = Node(cfg)
    node.open(said.append)
    try:
        assert node.index is not None
        assert not any("loaded the saved index" in s for s in said), said
        assert len(node.index) == 149
        assert ids[7] not in node.index and ids[8] in node.index
    finally:
        node.close()
