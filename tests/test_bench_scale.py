"""The scale benchmark's pieces that decide its figures: the exhaustive truth it measures
recall against, and the synthetic neighbours (unit vectors near their source abstract)."""

from __future__ import annotations

import numpy as np
import pytest

from dsonode.bench._scale import Neighbours, check_memory, exact_top
from dsonode.core import bitdelta
from dsonode.core.constants import DIM
from dsonode.store import CodeIndex


def _unit(rows: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_exact_top_is_the_asymmetric_order_with_a_reference_vector():
    ref = _unit(1, 3)[0] * 0.05
    codes = bitdelta.encode(_unit(700, 1), ref=ref)
    index = CodeIndex(capacity=8, ref=ref)
    index.add([i.to_bytes(32, "big") for i in range(700)], codes)
    queries = _unit(5, 2)
    got = exact_top(index, queries, k=10, chunk=128)  # several chunks
    for q, top in zip(queries, got, strict=True):
        scores = bitdelta.asymmetric_scores(q, codes, ref=ref)
        assert set(top.tolist()) == set(np.argsort(-scores)[:10].tolist())


def test_neighbours_are_unit_vectors_near_their_source():
    docs = _unit(50, 4)
    vecs, src = Neighbours(docs, seed=0).draw(200)
    assert vecs.shape == (200, DIM)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    cos_src = np.sum(vecs * docs[src], axis=1)
    cos_other = np.sum(vecs * docs[(src + 1) % 50], axis=1)
    assert cos_src.min() > 0.6 and cos_src.max() < 0.97
    assert np.median(cos_src) > np.median(cos_other) + 0.5


def test_neighbours_into_a_reused_buffer_are_the_same_draw():
    docs = _unit(40, 5)
    fresh, src_a = Neighbours(docs, seed=3).draw(64)
    buf = np.full((64, DIM), np.nan, dtype=np.float32)
    reused, src_b = Neighbours(docs, seed=3).draw(64, buf)
    assert reused is buf
    np.testing.assert_array_equal(src_a, src_b)
    np.testing.assert_allclose(reused, fresh, rtol=1e-6, atol=1e-7)


def test_the_scale_run_refuses_an_index_that_cannot_fit_in_memory():
    with pytest.raises(SystemExit, match="GiB available"):
        check_memory(10**12)  # ~1.2 PB of index
