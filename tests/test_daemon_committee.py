"""Committee sampling (dsonode.core.committee, PROTOCOL.md §16) and the consensus options the
daemon passes to compute_consensus (method, weights, committee filter)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dsonode.core import bitdelta, committee
from dsonode.core.consensus import compute_consensus
from dsonode.core.constants import DIM

REPO = Path(__file__).resolve().parents[1]
E = bytes(range(32))
A = bytes(range(32, 64))


def test_draw_matches_the_spec_and_its_worked_values():
    h = hashlib.sha256(b"dso/committee/1\x00" + E + A).digest()
    assert committee.draw(E, A) == int.from_bytes(h[:8], "big") / 2**64
    assert h[:8].hex() == "815487ce6b034b5e"
    assert committee.draw(E, A) == 0.5051960829687349
    assert committee.draw(A, E) == 0.3747240745575385
    assert committee.threshold(7, 100) == 0.07
    assert committee.verify_threshold(7, 100) == 0.28
    spec = (REPO / "protocol" / "PROTOCOL.md").read_text()
    section = spec[spec.index("## 16. Committee sampling") :]
    for value in ("815487ce6b034b5e", "0.5051960829687349", "0.3747240745575385", "0.28"):
        assert value in section
    with pytest.raises(ValueError):
        committee.draw(E[:31], A)


def test_thresholds():
    assert committee.threshold(None, 10_000) == 1.0  # "all"
    assert committee.threshold(7, 1) == 1.0 and committee.threshold(7, 7) == 1.0
    assert committee.threshold(7, 0) == 1.0  # no estimate yet: everyone
    assert committee.threshold(7, 70) == pytest.approx(0.1)
    assert committee.verify_threshold(7, 70) == pytest.approx(0.4)
    assert committee.verify_threshold(7, 20) == 1.0
    with pytest.raises(ValueError):
        committee.threshold(0, 10)


def test_committee_size_is_about_m_and_the_author_always_submits():
    rng = np.random.default_rng(3)
    n, m = 500, 7
    authors = [rng.bytes(32) for _ in range(n)]
    limit = committee.threshold(m, n)
    sizes = []
    for _ in range(300):
        exp_id = rng.bytes(32)
        sizes.append(sum(committee.in_committee(exp_id, a, authors[0], limit) for a in authors))
        # the experience's author is always in, whatever its draw
        assert committee.in_committee(exp_id, authors[0], authors[0], limit)
    # authors[0] is always in; the other 499 are drawn with p = 7/500
    expected = 1 + (n - 1) * limit
    assert abs(np.mean(sizes) - expected) < 0.6
    # Unknown experience (author None): only the draw decides
    exp_id = rng.bytes(32)
    inside = [a for a in authors if committee.draw(exp_id, a) < limit]
    assert [a for a in authors if committee.in_committee(exp_id, a, None, limit)] == inside


def test_committee_module_is_pure():
    text = (REPO / "dsonode" / "core" / "committee.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(trio|libp2p|lmdb|torch)", text, re.M)


@dataclass
class Sub:
    experience_id: bytes
    space_id: bytes
    author: bytes
    code: bytes
    created: int
    raw: bytes = b""


SPACE = b"\x07" * 32


def _subs(vectors, authors):
    return [
        Sub(E, SPACE, a, bitdelta.encode(v.astype(np.float32)), 1000 + i)
        for i, (v, a) in enumerate(zip(vectors, authors, strict=True))
    ]


def _unit(v):
    return v / np.linalg.norm(v)


def test_compute_consensus_honours_eligibility_method_and_weights():
    rng = np.random.default_rng(1)
    truth = _unit(rng.normal(size=DIM))
    honest = [_unit(truth + 0.2 * _unit(rng.normal(size=DIM))) for _ in range(3)]
    liar = _unit(rng.normal(size=DIM))
    authors = [bytes([i]) * 32 for i in range(4)]
    subs = _subs([*honest, liar], authors)
    kw = dict(experience_id=E, space_id=SPACE, domain="d", now_ms=1, quorum=3)

    base = compute_consensus(subs, **kw)
    assert base is not None and set(base.rejected_authors) == {authors[3]}
    # Outside the committee: neither accepted nor rejected (no reputation moves).
    out = compute_consensus(subs, eligible=lambda a: a != authors[3], **kw)
    assert authors[3] not in out.verdicts and out.record.stats["submissions"] == 3
    assert compute_consensus(subs, eligible=lambda a: False, **kw) is None

    for method in ("median", "trimmed_mean", "geometric_median"):
        res = compute_consensus(subs, method=method, **kw)
        assert res.record.stats["method"] == method
        assert set(res.accepted_authors) == set(authors[:3])

    # Weights: two colluders that weigh 10 each outvote two honest nodes weighing 1.
    colluder = _unit(rng.normal(size=DIM))
    near = [_unit(colluder + 0.2 * _unit(rng.normal(size=DIM))) for _ in range(2)]
    subs2 = _subs([honest[0], honest[1], *near], authors)
    heavy = {authors[2]: 10.0, authors[3]: 10.0}
    unweighted = compute_consensus(subs2, **kw)
    weighted = compute_consensus(subs2, weights=heavy, **kw)
    decoded = bitdelta.decode(np.frombuffer(weighted.record.code, np.uint8).reshape(1, -1))[0]
    assert float(_unit(decoded) @ colluder) > float(_unit(decoded) @ truth)
    assert weighted.record.code != unweighted.record.code
    assert set(weighted.accepted_authors) >= {authors[2], authors[3]}
