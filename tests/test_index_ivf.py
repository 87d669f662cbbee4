"""CodeIndex's inverted lists (dsonode.store.ivf): added once the index is large enough, kept
in step by incremental adds and updates, equal after a rebuild from LMDB with the same
centroids, exact when every list is probed, and close to exact when a few are."""

from __future__ import annotations

import numpy as np
import pytest

from dsonode.core import bitdelta
from dsonode.core.constants import DIM
from dsonode.store import CodeIndex, ConsensusRecord, Store
from dsonode.store.ivf import PrefixLists

SPACE = bytes(range(32))
SMALL = {"ivf_min_rows": 300, "nlist": 16, "nprobe": 4}


def _vectors(n: int, seed: int, clusters: int = 16, latent: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    proj = np.random.default_rng(1234).standard_normal((latent, DIM)).astype(np.float32)
    centers = np.random.default_rng(99).standard_normal((clusters, latent)).astype(np.float32)
    lat = centers[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, latent))
    v = (lat.astype(np.float32) @ proj).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ids(n: int) -> list[bytes]:
    return [i.to_bytes(32, "big") for i in range(n)]


@pytest.fixture(scope="module")
def data():
    vecs = _vectors(900, seed=1)
    return bitdelta.encode(vecs), _vectors(20, seed=2)


def _brute_ids(query, codes, ids, k):
    scores = bitdelta.asymmetric_scores(query, codes)
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def _check_lists(index: CodeIndex, codes_by_id: dict[bytes, bytes]) -> None:
    """Every id in exactly one list: the one of its code's nearest centroid."""
    lists = index.inverted_lists()
    assert lists is not None and index.centroids is not None
    seen = [i for members in lists for i in members]
    assert sorted(seen) == sorted(codes_by_id)
    lister = PrefixLists(index.centroids, 1)
    for lst, members in enumerate(lists):
        for exp_id in list(members)[:20]:
            prefix = np.frombuffer(codes_by_id[exp_id][4 : 4 + 128], np.uint8)[None, :]
            assert lister.assign(prefix)[0] == lst


def test_lists_start_at_the_threshold_and_follow_adds_and_updates(data):
    codes, _ = data
    ids = _ids(len(codes))
    index = CodeIndex(capacity=8, **SMALL)
    index.add(ids[:299], codes[:299])
    assert index.inverted_lists() is None  # small: the flat scan
    index.add(ids[299:600], codes[299:600])
    assert index.centroids is not None and index.centroids.shape == (16, 128)
    index.add(ids[600:], codes[600:])
    # Updates: codes of other items replace some codes (they move between lists).
    moved = list(range(0, 900, 7))
    new_codes = codes[[(i * 31 + 5) % 900 for i in moved]]
    index.update([ids[i] for i in moved], new_codes)
    current = {ids[i]: codes[i].tobytes() for i in range(900)}
    for i, c in zip(moved, new_codes, strict=True):
        current[ids[i]] = c.tobytes()
    _check_lists(index, current)
    assert index.memory_bytes()["lists"] > 0


def test_probing_every_list_is_exact_and_few_lists_keep_recall(data):
    codes, queries = data
    ids = _ids(len(codes))
    exact = CodeIndex(**{**SMALL, "nprobe": 16})
    exact.add(ids, codes)
    assert exact.inverted_lists() is not None
    for q in queries:
        assert [i for i, _ in exact.search(q, 10)] == _brute_ids(q, codes, ids, 10)
    few = CodeIndex(**SMALL, centroids=exact.centroids)
    few.add(ids, codes)
    recall = np.mean(
        [
            len({i for i, _ in few.search(q, 10)} & set(_brute_ids(q, codes, ids, 10))) / 10
            for q in queries
        ]
    )
    assert recall >= 0.8  # 4 of 16 lists on 16 clusters
    # A filter still returns only allowed rows.
    domains = [("a", "b")[i % 2] for i in range(len(codes))]
    few.add(ids, codes, domains)
    hits = few.search(queries[0], 10, domain="a")
    assert hits and all(int.from_bytes(i, "big") % 2 == 0 for i, _ in hits)


def test_rebuild_from_store_with_the_same_centroids_holds_the_same_lists(tmp_path, data):
    codes, queries = data
    ids = _ids(len(codes))
    incremental = CodeIndex(**SMALL)
    with Store(tmp_path / "s", space_id=SPACE) as store:
        for s in range(0, len(codes), 200):  # arrival order differs from LMDB's id order
            part = list(range(len(codes) - 1 - s, max(-1, len(codes) - 1 - s - 200), -1))
            store.put_consensus(
                [ConsensusRecord(SPACE, ids[i], codes[i].tobytes(), 3, True, "") for i in part]
            )
            incremental.add([ids[i] for i in part], codes[part], None, True)
        rebuilt = CodeIndex.from_store(store, SPACE, centroids=incremental.centroids, **SMALL)
    assert rebuilt.inverted_lists() == incremental.inverted_lists()
    for q in queries:
        assert rebuilt.search(q, 10) == incremental.search(q, 10)


def _probe_matches_prefixes(lists: PrefixLists, prefixes: np.ndarray, n: int, seed: int) -> None:
    """Probing every list returns each of the n rows once, with the Hamming distance of its
    current prefix: the lists' contiguous copies are in step with the rows."""
    rng = np.random.default_rng(seed)
    for _ in range(3):
        q = rng.integers(0, 256, 128, dtype=np.uint8)
        rows, dist = lists.probe(q, lists.nlist)
        assert sorted(rows.tolist()) == list(range(n))
        want = np.bitwise_count(prefixes[rows] ^ q).sum(axis=1)
        np.testing.assert_array_equal(dist, want)


def test_list_copies_follow_adds_moves_and_in_place_updates(data):
    codes, _ = data
    prefixes = np.ascontiguousarray(codes[:, 4 : 4 + 128])
    centroids = PrefixLists.train(prefixes[:640], 16)
    lists = PrefixLists(centroids, 8)
    for s in range(0, 900, 100):  # incremental: lists grow by appends
        lists.place(np.arange(s, s + 100), prefixes[s : s + 100])
    _probe_matches_prefixes(lists, prefixes, 900, seed=0)
    # New codes for some rows: some move to another list, some stay in theirs with a new
    # prefix (their copy must be rewritten in place).
    rows = np.arange(0, 900, 3)
    new = prefixes[(rows * 31 + 5) % 900].copy()
    new[:, 0] ^= 0x01  # every prefix changes, even where the donor row is its own
    before = lists.list_of[rows].copy()
    lists.place(rows, new)
    after = lists.list_of[rows]
    assert (before == after).sum() > 10 and (before != after).sum() > 10
    current = prefixes.copy()
    current[rows] = new
    _probe_matches_prefixes(lists, current, 900, seed=1)
    # A bulk build of the same rows holds the same lists, each sized exactly.
    built = PrefixLists.build(centroids, current, 900)
    for lst in range(16):
        assert set(built.members(lst).tolist()) == set(lists.members(lst).tolist())
    _probe_matches_prefixes(built, current, 900, seed=2)
    exact = centroids.nbytes + built.list_of.nbytes + built.sizes.nbytes + 900 * (4 + 128)
    assert built.nbytes() == exact < lists.nbytes()


def test_from_assignment_checks_its_inputs(data):
    codes, _ = data
    prefixes = np.ascontiguousarray(codes[:100, 4 : 4 + 128])
    centroids = PrefixLists.train(np.ascontiguousarray(codes[:, 4 : 4 + 128]), 16)
    good = np.zeros(100, dtype=np.int32)
    with pytest.raises(ValueError, match="out of range"):
        PrefixLists.from_assignment(centroids, good + 16, prefixes, 100)
    with pytest.raises(ValueError, match="prefixes"):
        PrefixLists.from_assignment(centroids, good, prefixes[:50], 100)
    lists = PrefixLists.from_assignment(centroids, good, prefixes, 100)
    assert lists.sizes[0] == 100 and lists.sizes[1:].sum() == 0
