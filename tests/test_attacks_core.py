"""The pure attack vectors of a Byzantine testnet node (dsonode/core/attacks.py).

Checked against the aggregation rule the network runs (`aggregate_codes`, median with the
robust cut-off) on real 964-byte codes: which attacks the cut-off sees, which it is
designed not to see, and that colluders agree without talking.
"""

from __future__ import annotations

import numpy as np
import pytest

from dsonode.core import attacks, bitdelta
from dsonode.core.aggregate import aggregate_codes
from dsonode.core.constants import DIM


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_every_offline_bench_attack_is_available_to_a_node():
    from dsonode.bench.byzantine import ATTACKS as OFFLINE
    from dsonode.config.settings import ATTACKS as CONFIG
    from dsonode.testnet.plan import ATTACKS as PLAN

    assert set(OFFLINE) <= set(attacks.ATTACKS)
    assert tuple(PLAN) == attacks.ATTACKS
    assert tuple(CONFIG) == ("none", *attacks.ATTACKS)


def test_alie_collude_colluders_submit_one_point_per_experience():
    rng = np.random.default_rng(1)
    v = _unit(rng)
    e1, e2 = b"\x01" * 32, b"\x02" * 32
    # two colluders with different keys and rngs: the same vector, without talking
    a = attacks.poison(v, "alie_collude", np.random.default_rng(5), experience_id=e1)
    b = attacks.poison(v, "alie_collude", np.random.default_rng(6), experience_id=e1)
    assert np.array_equal(a, b)
    other = attacks.poison(v, "alie_collude", rng, experience_id=e2)
    assert not np.allclose(a, other)  # a different direction for another experience
    assert 0.94 < _cos(a, v) < 0.97  # the same small push as the single-node alie
    assert _cos(a, attacks.experience_direction(e1)) > 0.2
    with pytest.raises(attacks.AttackError):
        attacks.poison(v, "alie_collude", rng)  # no experience id: nothing to collude on


def test_ipm_points_against_the_mean_of_what_the_node_has_seen():
    rng = np.random.default_rng(2)
    v = _unit(rng)
    seen = np.stack([_unit(rng) for _ in range(3)])
    out = attacks.poison(v, "ipm", rng, honest=seen)
    mean = np.vstack([v[None], seen]).mean(axis=0)
    assert _cos(out, -mean) > 0.999
    assert np.isclose(np.linalg.norm(out), 1, atol=1e-5)
    alone = attacks.poison(v, "ipm", rng)  # nothing received yet: its own vector is the mean
    assert _cos(alone, -v) > 0.999
    with pytest.raises(attacks.AttackError):
        attacks.poison(v, "ipm", rng, honest=np.full((2, DIM), np.nan))


def test_mimic_submits_the_sibling_or_stays_honest_without_one():
    rng = np.random.default_rng(3)
    v, sib = _unit(rng), _unit(rng)
    assert np.allclose(attacks.poison(v, "mimic", rng, sibling=sib), sib, atol=1e-6)
    assert np.allclose(attacks.poison(v, "mimic", rng), v, atol=1e-6)
    with pytest.raises(attacks.AttackError):
        attacks.poison(v, "mimic", rng, sibling=np.ones(3))
    with pytest.raises(attacks.AttackError):
        attacks.poison(v, "no_such_attack", rng)


@pytest.mark.parametrize("attack", ["gaussian", "sign_flip", "ipm"])
def test_noise_like_attacks_are_rejected_by_the_network_rule(attack):
    """Honest peers embed the same text identically: 3 identical honest codes and 2 colluders
    (40 %). The median is the honest code exactly and the colluders are rejected."""
    rng = np.random.default_rng(4)
    v = _unit(rng)
    honest = bitdelta.encode(v)
    seen = bitdelta.decode(honest)[None].astype(np.float64)
    bad = [
        bitdelta.encode(attacks.poison(v, attack, np.random.default_rng(10 + k), honest=seen))
        for k in range(2)
    ]
    res = aggregate_codes([honest] * 3 + bad)
    assert res.code[4:] == honest[4:]
    assert list(res.accepted) == [True, True, True, False, False]


@pytest.mark.parametrize("attack", ["alie", "alie_collude"])
def test_alie_stays_inside_the_cutoff_only_at_small_scale_and_the_median_ignores_it(attack):
    """ALIE is designed to be accepted. A 1-bit code magnifies the push (every coordinate
    where |v_i| < step * |d_i| flips): at scale 1 (float cosine ~0.96) the code's cosine to
    the honest code is ~0.82, under the cut-off (0.94 when honest codes agree), so it is
    rejected; at scale 0.2 (code cosine ~0.96) it is accepted. Either way an honest majority
    of identical codes fixes the coordinate-wise median bit for bit."""
    rng = np.random.default_rng(5)
    v = _unit(rng)
    honest = bitdelta.encode(v)
    e = b"\x07" * 32

    def colluders(scale: float) -> list[bytes]:
        return [
            bitdelta.encode(
                attacks.poison(
                    v,
                    attack,
                    rng,
                    scale,
                    attacks.attack_direction(bytes([k]) * 32),
                    experience_id=e,
                )
            )
            for k in range(2)
        ]

    inside = aggregate_codes([honest] * 3 + colluders(0.2))
    assert all(inside.accepted)  # not detected: the attack sits inside the cut-off
    assert inside.code[4:] == honest[4:]
    outside = aggregate_codes([honest] * 3 + colluders(1.0))
    assert list(outside.accepted) == [True, True, True, False, False]
    assert outside.code[4:] == honest[4:]


def test_mimic_of_a_close_sibling_is_accepted_but_cannot_move_an_honest_majority():
    rng = np.random.default_rng(6)
    v = _unit(rng)
    # Only a near-duplicate sibling passes the cut-off: float cosine 0.9988 is ~0.97 in code
    # space; a sibling at float cosine 0.99 is already under 0.94 and rejected.
    sib = v + 0.05 * _unit(rng)
    honest = bitdelta.encode(v)
    bad = bitdelta.encode(attacks.poison(v, "mimic", rng, sibling=sib))
    res = aggregate_codes([honest] * 3 + [bad] * 2)
    assert all(res.accepted)
    assert res.code[4:] == honest[4:]
    # with a colluding majority the consensus is theirs: the median's known limit
    captured = aggregate_codes([honest] * 2 + [bad] * 3)
    assert captured.code[4:] == bad[4:]
