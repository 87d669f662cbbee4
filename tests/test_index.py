"""CodeIndex: exact on small sets against brute-force asymmetric scoring, filters, updates,
the inverted-file path, and a rebuild from a real LMDB store equal to the incremental index."""

from __future__ import annotations

import numpy as np
import pytest

from dsonode.core import bitdelta
from dsonode.core.constants import DIM
from dsonode.core.errors import CodecError
from dsonode.store import CodeIndex, ConsensusRecord, IndexInputError, Store

SPACE = bytes(range(32))


def _vectors(n: int, seed: int, clusters: int = 8, latent: int = 64) -> np.ndarray:
    """Clustered unit vectors: latent cluster points pushed through a fixed random map."""
    rng = np.random.default_rng(seed)
    proj = np.random.default_rng(1234).standard_normal((latent, DIM)).astype(np.float32)
    centers = rng.standard_normal((clusters, latent)).astype(np.float32)
    lat = centers[rng.integers(0, clusters, n)] + 1.2 * rng.standard_normal((n, latent))
    v = (lat.astype(np.float32) @ proj).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ids(n: int, offset: int = 0) -> list[bytes]:
    return [(offset + i).to_bytes(32, "big") for i in range(n)]


def _brute(query, codes, ids, k, allowed=None):
    scores = bitdelta.asymmetric_scores(query, codes)
    order = [i for i in np.argsort(-scores, kind="stable") if allowed is None or allowed[i]]
    return [(ids[i], float(scores[i])) for i in order[:k]]


def _same(got, want):
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def data():
    vecs = _vectors(600, seed=1)
    codes = bitdelta.encode(vecs)
    queries = _vectors(12, seed=2)
    return codes, queries


def test_small_index_is_exact(data):
    codes, queries = data
    ids = _ids(len(codes))
    index = CodeIndex(capacity=16)  # grows geometrically while adding in pieces
    for s in range(0, len(codes), 100):
        assert index.add(ids[s : s + 100], codes[s : s + 100]) == 100
    assert len(index) == len(codes)
    for q in queries:
        _same(index.search(q, k=10), _brute(q, codes, ids, 10))
    _same(index.search(queries[0], k=100), _brute(queries[0], codes, ids, 100))


def test_filters_and_min_score(data):
    codes, queries = data
    ids = _ids(len(codes))
    domains = ["math" if i % 3 == 0 else "code" for i in range(len(codes))]
    confirmed = np.arange(len(codes)) % 2 == 0
    index = CodeIndex()
    index.add(ids, codes, domains, confirmed)
    is_math = np.array([d == "math" for d in domains])
    for q in queries[:4]:
        _same(index.search(q, 10, domain="math"), _brute(q, codes, ids, 10, is_math))
        _same(index.search(q, 10, confirmed_only=True), _brute(q, codes, ids, 10, confirmed))
        both = is_math & confirmed
        _same(
            index.search(q, 10, domain="math", confirmed_only=True), _brute(q, codes, ids, 10, both)
        )
        full = _brute(q, codes, ids, 10)
        cut = full[4][1]
        assert index.search(q, 10, min_score=cut) == index.search(q, 10)[:5]
    assert index.search(queries[0], 5, domain="nope") == []
    assert index.domains() == {"math": 200, "code": 400}


def test_update_replaces_in_place(data):
    codes, queries = data
    ids = _ids(len(codes))
    index = CodeIndex()
    index.add(ids, codes, "a")
    q = queries[3]
    best_id, _ = index.search(q, 1)[0]
    # Move a far-away item onto the query: it must become the best hit, with no new row.
    target = ids[int(np.argmin(bitdelta.asymmetric_scores(q, codes)))]
    new_code = bitdelta.encode(q)
    index.update([target], [new_code], "b", True)
    assert len(index) == len(codes)
    assert index.get(target) == (new_code, "b", True)
    assert index.search(q, 1)[0][0] == target
    assert index.search(q, 1, domain="a")[0][0] == best_id
    assert index.domains() == {"a": len(codes) - 1, "b": 1}
    with pytest.raises(IndexInputError):
        index.update([b"\xff" * 32], [new_code])
    # The same id twice in one batch: the last occurrence wins.
    assert index.add([ids[0], ids[0]], np.stack([codes[1], codes[2]]), ["x", "y"]) == 0
    assert index.get(ids[0])[1] == "y"


def _prefix_dist(query, codes):
    qp = np.packbits(query >= 0, bitorder="little")[:128]
    return np.unpackbits(codes[:, 4:132] ^ qp, axis=1).sum(axis=1)


@pytest.mark.parametrize(
    "kw", [{}, {"domain": "even"}, {"domain": "rare"}, {"confirmed_only": True}]
)
def test_prefilter_keeps_the_nearest_allowed_prefixes(data, kw):
    """With a candidate budget below n (faiss's kernel, broad and narrow filters), the
    pre-filter keeps exactly the allowed rows nearest by 1024-bit prefix Hamming."""
    codes, queries = data
    n = len(codes)
    domains = ["rare" if i % 10 == 0 else "even" if i % 2 == 0 else "odd" for i in range(n)]
    confirmed = np.arange(n) % 3 == 0
    index = CodeIndex(candidates=40, rescore=20)
    index.add(_ids(n), codes, domains, confirmed)
    allowed = np.ones(n, dtype=bool)
    if "domain" in kw:
        allowed &= np.array([d == kw["domain"] for d in domains])
    if kw.get("confirmed_only"):
        allowed &= confirmed
    for q in queries[:4]:
        qbits = np.packbits(q >= 0, bitorder="little")[:128]
        rows, dist = index._prefilter(qbits, kw.get("domain"), kw.get("confirmed_only", False), 40)
        ref = _prefix_dist(q, codes)
        assert np.all(allowed[rows])
        np.testing.assert_array_equal(dist, ref[rows])
        assert len(set(rows.tolist())) == len(rows)
        outside = np.setdiff1d(np.flatnonzero(allowed), rows)
        if len(outside):
            assert dist.max() <= ref[outside].min()
        if not kw:
            assert len(rows) == 40
        got = index.search(q, 10, **kw)
        assert len(got) == 10
        assert all(allowed[int.from_bytes(i, "big")] for i, _ in got)


def test_recall_with_a_budget_below_n():
    vecs = _vectors(3000, seed=5, clusters=30)
    codes = bitdelta.encode(vecs)
    ids = _ids(len(codes))
    index = CodeIndex(candidates=300, rescore=60)
    index.add(ids, codes)
    rng = np.random.default_rng(9)
    hits = 0
    for i in rng.choice(len(vecs), 20, replace=False):
        q = vecs[i] + 0.02 * rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        got = {x for x, _ in index.search(q, 10)}
        hits += len(got & {x for x, _ in _brute(q, codes, ids, 10)})
    assert hits / 200 >= 0.9


def test_bad_input_is_rejected(data):
    codes, queries = data
    index = CodeIndex()
    assert index.search(queries[0], 5) == []  # empty index
    index.add(_ids(3), codes[:3])
    for k in (0, 101, 2.5, True):
        with pytest.raises(IndexInputError):
            index.search(queries[0], k)
    with pytest.raises(CodecError):
        index.search(queries[0][:100], 5)
    bad = queries[0].copy()
    bad[7] = np.nan
    with pytest.raises(CodecError):
        index.search(bad, 5)
    with pytest.raises(CodecError):
        index.add(_ids(1), [b"\x00" * 10])
    with pytest.raises(IndexInputError):
        index.add([b"short"], codes[:1])
    with pytest.raises(IndexInputError):
        index.add(_ids(2), codes[:1])
    nan_scale = codes[:1].copy()
    nan_scale[0, :4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    with pytest.raises(CodecError):
        index.add(_ids(1), nan_scale)


def test_rebuild_from_store_equals_incremental(tmp_path, data):
    codes, queries = data
    ids = _ids(len(codes))
    domains = [("math", "code", "")[i % 3] for i in range(len(codes))]
    confirmed = [i % 4 == 0 for i in range(len(codes))]
    incremental = CodeIndex()
    with Store(tmp_path / "s", space_id=SPACE) as store:
        for s in range(0, len(codes), 150):  # consensus arrives over time
            part = range(s, min(s + 150, len(codes)))
            records = [
                ConsensusRecord(SPACE, ids[i], codes[i].tobytes(), 3, confirmed[i], domains[i])
                for i in part
            ]
            store.put_consensus(records)
            incremental.add(
                [ids[i] for i in part],
                codes[list(part)],
                [domains[i] for i in part],
                [confirmed[i] for i in part],
            )
        # A consensus that changed later replaces the earlier one in both.
        changed = bitdelta.encode(queries[5])
        store.put_consensus([ConsensusRecord(SPACE, ids[42], changed, 4, True, domains[42])])
        incremental.update([ids[42]], [changed], domains[42], True)
    with Store(tmp_path / "s", space_id=SPACE) as store:
        rebuilt = CodeIndex.from_store(store, SPACE, progress=False)
        assert len(CodeIndex.from_store(store, SPACE, progress=True)) == len(codes)  # with a bar
    assert len(rebuilt) == len(incremental) == len(codes)
    for exp_id in ids[:50]:
        assert rebuilt.get(exp_id) == incremental.get(exp_id)
    for q in queries:
        for kw in ({}, {"domain": "math"}, {"confirmed_only": True}):
            assert rebuilt.search(q, 10, **kw) == incremental.search(q, 10, **kw)
    assert rebuilt.search(queries[5], 1)[0][0] == ids[42]


def test_memory_accounting_counts_every_part(data):
    codes, _ = data
    index = CodeIndex(capacity=len(codes))
    index.add(_ids(len(codes)), codes)
    mem = index.memory_bytes()
    assert mem["codes"] == len(codes) * 964
    assert mem["ids"] == len(codes) * 32
    assert mem["total"] == sum(v for key, v in mem.items() if key != "total")
