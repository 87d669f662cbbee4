"""dsonode.core.aggregate: known answers, the outlier rule, edge cases and BitDelta codes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsonode.core import bitdelta
from dsonode.core.aggregate import (
    DEFAULT_QUORUM,
    METHODS,
    aggregate,
    aggregate_codes,
    is_confirmed,
    weighted_median,
)
from dsonode.core.constants import CODE_BYTES, DIM
from dsonode.core.errors import AggregateError

RAW = {"normalize": False, "reject": False}  # the bare estimator, for hand-computed answers


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def noisy(truth: np.ndarray, n: int, rel: float, rng) -> np.ndarray:
    """n unit rows at relative noise `rel` around `truth` (cosine about 1/sqrt(1+rel^2))."""
    d = truth.shape[0]
    rows = truth + rel * rng.standard_normal((n, d)) / math.sqrt(d)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Known answers of the estimators


def test_coordinate_median_of_hand_built_rows():
    rows = [[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [3.0, 0.0, 1.0]]
    res = aggregate(rows, "median", **RAW)
    np.testing.assert_allclose(res.consensus, [1.0, 0.0, 0.0], atol=1e-7)
    # Unnormalised, per coordinate: median(1,2,3)=2, median(0,1,0)=0, median(0,0,1)=0.
    rows = [[1.0, 5.0, 2.0], [4.0, -1.0, 2.0], [2.0, 3.0, 9.0], [3.0, 3.0, 2.0]]
    res = aggregate(rows, "median", **RAW)
    np.testing.assert_allclose(res.consensus, unit([2.5, 3.0, 2.0]), atol=1e-7)


def test_median_normalises_rows_first():
    rows = np.array([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    res = aggregate(rows, "median", reject=False)
    # Unit rows: x = (1, .894, .949), y = (0, .447, 0), z = (0, 0, .316) -> (.949, 0, 0).
    np.testing.assert_allclose(res.consensus, [1.0, 0.0, 0.0], atol=1e-7)
    # A row's length carries no weight: scaling one row by 1e6 changes nothing.
    scaled = rows.copy()
    scaled[1] *= 1e6
    assert np.allclose(aggregate(scaled, "mean").consensus, aggregate(rows, "mean").consensus)


def test_trimmed_mean():
    # x: sorted (1, 2, 3, 4, 100); trimming 1 each side (floor(0.2 * 5)) leaves mean 3.
    rows = [[1.0, 1.0], [100.0, 1.0], [3.0, 1.0], [2.0, 1.0], [4.0, 1.0]]
    res = aggregate(rows, "trimmed_mean", trim=0.2, **RAW)
    np.testing.assert_allclose(res.consensus, unit([3.0, 1.0]), atol=1e-7)
    # trim = 0 is the mean; a tiny trim that removes no row is the mean too.
    mean = aggregate(rows, "mean", **RAW).consensus
    np.testing.assert_allclose(aggregate(rows, "trimmed_mean", trim=0.0, **RAW).consensus, mean)
    np.testing.assert_allclose(aggregate(rows, "trimmed_mean", trim=0.1, **RAW).consensus, mean)


def test_weighted_median_values():
    assert weighted_median(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.0, 1.0, 5.0])) == 4.0
    assert weighted_median(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 1.0, 1.0, 1.0])) == 1.5
    # A zero-weight row has no say.
    assert weighted_median(np.array([1.0, 50.0, 3.0]), np.array([1.0, 0.0, 1.0])) == 2.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_equal_weights_give_the_plain_median(n, rng):
    x = rng.standard_normal((n, 5))
    np.testing.assert_allclose(weighted_median(x), np.median(x, axis=0))
    np.testing.assert_allclose(weighted_median(x, np.full(n, 2.5)), np.median(x, axis=0))


def test_weighted_median_heavy_weights_win(rng):
    d = 256
    a, b = unit(rng.standard_normal(d)), unit(rng.standard_normal(d))
    rows = np.vstack([noisy(a, 2, 0.1, rng), noisy(b, 3, 0.1, rng)])
    weights = [5.0, 5.0, 1.0, 1.0, 1.0]
    heavy = aggregate(rows, "median", weights=weights, quorum=2)
    plain = aggregate(rows, "median", quorum=2)
    assert heavy.weighted and not plain.weighted
    assert heavy.consensus @ a > 0.99 and plain.consensus @ b > 0.99
    assert heavy.accepted.tolist() == [True, True, False, False, False]
    assert plain.accepted.tolist() == [False, False, True, True, True]
    assert heavy.confirmed  # quorum 2 reached by the two heavy rows
    assert not aggregate(rows, "median", weights=weights).confirmed  # default quorum 3


def test_weighted_geometric_median_and_mean(rng):
    d = 64
    a, b = unit(rng.standard_normal(d)), unit(rng.standard_normal(d))
    rows = np.vstack([a, b, b])
    for method in ("geometric_median", "mean"):
        res = aggregate(rows, method, weights=[10.0, 1.0, 1.0], reject=False)
        assert res.consensus @ a > res.consensus @ b, method


def test_zero_weight_rows_do_not_count_towards_quorum(rng):
    t = unit(rng.standard_normal(128))
    rows = noisy(t, 5, 0.05, rng)
    res = aggregate(rows, "median", weights=[1.0, 1.0, 0.0, 0.0, 0.0])
    assert res.n_accepted == 5  # they agree, so they are accepted ...
    assert not res.confirmed  # ... but only two rows of positive weight vouch for it


def test_geometric_median_of_symmetric_points():
    c = np.array([0.0, 0.0, 3.0])
    ex, ey = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    rows = np.vstack([c + ex, c - ex, c + ey, c - ey])
    res = aggregate(rows, "geometric_median", **RAW)
    np.testing.assert_allclose(res.consensus, [0.0, 0.0, 1.0], atol=1e-6)


def test_geometric_median_fermat_point():
    # Triangle (0,0), (1,0), (0,1) lifted to z = 1: its Fermat point is ((3 - sqrt 3) / 6) * (1, 1),
    # where the three unit vectors towards the corners meet at 120 degrees.
    rows = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    res = aggregate(rows, "geometric_median", **RAW, tol=1e-12, max_iter=10_000)
    f = (3.0 - math.sqrt(3.0)) / 6.0
    np.testing.assert_allclose(res.consensus, unit([f, f, 1.0]), atol=1e-6)
    assert not np.allclose(res.consensus, aggregate(rows, "mean", **RAW).consensus, atol=1e-3)


def test_geometric_median_on_a_data_point():
    # Collinear (0, 1, 10) on the x axis: the geometric median is the middle row itself, where
    # plain Weiszfeld would divide by zero.
    rows = np.array([[0.0, 1.0], [1.0, 1.0], [10.0, 1.0]])
    res = aggregate(rows, "geometric_median", **RAW)
    np.testing.assert_allclose(res.consensus, unit([1.0, 1.0]), atol=1e-9)
    # Three coinciding rows outweigh two others: the answer is that point.
    # The Vardi-Zhang test recognises that optimum at once (no wandering off and back).
    rows = np.array([[1.0, 1.0]] * 3 + [[5.0, 1.0], [1.0, 9.0]])
    res = aggregate(rows, "geometric_median", **RAW, max_iter=3)
    np.testing.assert_allclose(res.consensus, unit([1.0, 1.0]), atol=1e-12)
    assert res.solver_iterations == 1


def test_mean_is_the_mean():
    rows = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    np.testing.assert_allclose(aggregate(rows, "mean", **RAW).consensus, unit([2.0, 2.0]))


# --------------------------------------------------------------------------------------------
# The outlier rule


@pytest.mark.parametrize("method", METHODS)
def test_attackers_rejected_honest_accepted(method, rng):
    d = DIM
    t = unit(rng.standard_normal(d))
    honest = noisy(t, 7, 0.3, rng)
    attackers = np.vstack(
        [
            -t,  # sign flip
            unit(rng.standard_normal(d)),  # an unrelated direction
            noisy(t, 1, 3.0, rng)[0],  # very noisy (cosine ~0.3)
        ]
    )
    rows = np.vstack([honest[:3], attackers, honest[3:]])
    res = aggregate(rows, method)
    expected = [True] * 3 + [False] * 3 + [True] * 4
    assert res.accepted.tolist() == expected
    assert res.rejected.tolist() == [3, 4, 5]
    assert res.confirmed and res.converged
    assert res.consensus @ t > 0.98
    assert np.all(res.cosines[res.accepted] >= res.cutoff)
    assert np.all(res.cosines[~res.accepted] < res.cutoff)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), honest=st.integers(2, 8), data=st.data())
def test_identical_honest_majority_fixes_the_median_exactly(seed, honest, data):
    # In the network honest peers embed the same text with the same model, so their codes are
    # identical; then any minority of attackers, whatever they send, leaves the median on them.
    attackers = data.draw(st.integers(0, honest - 1))
    rng = np.random.default_rng(seed)
    d = 64
    h = unit(rng.standard_normal(d))
    junk = rng.standard_normal((attackers, d)) * rng.uniform(0.01, 100.0, size=(attackers, 1))
    junk[: attackers // 2] = -h + 0.01 * rng.standard_normal((attackers // 2, d))
    rows = np.vstack([np.tile(h, (honest, 1)), junk])
    res = aggregate(rows, "median")
    np.testing.assert_allclose(res.consensus, h.astype(np.float32), atol=1e-6)
    assert res.accepted[:honest].all()


def test_far_outlier_moves_the_mean_not_the_median(rng):
    d = 64
    h = unit(rng.standard_normal(d))
    outlier = unit(rng.standard_normal(d))
    clean = np.vstack([h, h, h])
    attacked = np.vstack([h, h, h, outlier])
    med_clean = aggregate(clean, "median", reject=False).consensus
    med_attacked = aggregate(attacked, "median", reject=False).consensus
    np.testing.assert_array_equal(med_attacked, med_clean)  # three equal rows fix the median
    mean_attacked = aggregate(attacked, "mean", reject=False).consensus
    assert mean_attacked @ h < 0.95  # the mean moved towards the outlier
    # With the outlier rule the mean is recomputed without it and recovers exactly.
    rescued = aggregate(attacked, "mean")
    assert rescued.accepted.tolist() == [True, True, True, False]
    np.testing.assert_allclose(rescued.consensus, h.astype(np.float32), atol=1e-6)


def test_tiny_honest_noise_is_not_rejected(rng):
    # Honest peers embed the same text: their rows agree to float rounding, so the MAD of the
    # cosines is ~0. One row a little further off (cosine ~0.995) must still be accepted.
    t = unit(rng.standard_normal(DIM))
    rows = np.vstack([noisy(t, 9, 1e-6, rng), noisy(t, 1, 0.1, rng)])
    res = aggregate(rows)
    assert res.accepted.all()
    assert res.spread == pytest.approx(0.02)  # the min_mad floor is what kept it
    # Without the floor the bare MAD rule would throw that honest row out.
    assert not aggregate(rows, min_mad=0.0).accepted[-1]


def test_floor_rejects_rows_far_from_consensus_even_if_mad_is_wide(rng):
    t = unit(rng.standard_normal(DIM))
    # Cosines to the truth spread from ~0.98 to ~0.3: the MAD is wide, the floor still cuts.
    rows = np.vstack([noisy(t, 5, 0.2, rng), noisy(t, 2, 3.5, rng)])
    res = aggregate(rows, k_mad=100.0)
    assert res.cutoff == 0.5
    assert res.accepted.tolist() == [True] * 5 + [False] * 2


def test_no_row_close_enough_gives_no_confirmed_consensus(rng):
    rows = np.vstack([unit(rng.standard_normal(DIM)) for _ in range(5)])  # unrelated rows
    res = aggregate(rows)
    assert res.n_accepted == 0 and not res.confirmed
    assert np.linalg.norm(res.consensus) == pytest.approx(1.0, abs=1e-6)


def test_quorum():
    assert DEFAULT_QUORUM == 3
    assert is_confirmed(3) and not is_confirmed(2)
    assert is_confirmed(1, quorum=1)
    rows = np.array([[1.0, 0.1], [1.0, 0.0]])
    assert not aggregate(rows).confirmed
    assert aggregate(rows, quorum=2).confirmed


# --------------------------------------------------------------------------------------------
# Edge cases


def test_single_row():
    res = aggregate([[3.0, 4.0]])
    np.testing.assert_allclose(res.consensus, [0.6, 0.8], atol=1e-7)
    assert res.accepted.tolist() == [True] and res.cosines[0] == pytest.approx(1.0)
    assert not res.confirmed and aggregate([[3.0, 4.0]], quorum=1).confirmed


def test_two_rows_meet_in_the_middle():
    for method in METHODS:
        res = aggregate([[1.0, 0.0], [0.0, 1.0]], method)
        np.testing.assert_allclose(res.consensus, unit([1.0, 1.0]), atol=1e-6, err_msg=method)
        assert res.accepted.all()
        np.testing.assert_allclose(res.cosines, [math.sqrt(0.5)] * 2, atol=1e-6)


def test_all_identical_rows(rng):
    row = unit(rng.standard_normal(DIM))
    for method in METHODS:
        res = aggregate(np.tile(row, (6, 1)), method)
        assert res.accepted.all() and res.converged and res.rounds == 1
        np.testing.assert_allclose(res.cosines, 1.0, atol=1e-9)
        np.testing.assert_allclose(res.consensus, row.astype(np.float32), atol=1e-6)


def test_result_is_frozen_and_read_only():
    res = aggregate([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.method = "mean"  # type: ignore[misc]
    for arr in (res.consensus, res.accepted, res.cosines):
        with pytest.raises(ValueError):
            arr[0] = 0
    assert res.consensus.dtype == np.float32 and res.accepted.dtype == np.bool_
    assert res.code is None


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (np.zeros((0, 4)), "n = 0"),
        (np.zeros((3, 0)), "d = 0"),
        (np.ones(4), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        ([[1.0, 2.0], [3.0]], "numeric array"),
        ([["a", "b"]], "real numbers"),
        (np.ones((2, 2), dtype=complex), "real numbers"),
        (np.array([[1.0, 0.0], [np.nan, 1.0]]), "rows 1"),
        (np.array([[np.inf, 0.0], [1.0, 1.0]]), "NaN or inf"),
        (np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), "rows 1, 2 are zero vectors"),
        (np.array([[1.0, 0.0], [-1.0, 0.0]]), "cancel out"),
    ],
)
def test_bad_vectors_raise(vectors, message):
    with pytest.raises(AggregateError, match=message):
        aggregate(vectors)


def test_zero_rows_can_be_rejected_instead():
    rows = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.1], [1.0, -0.1]])
    res = aggregate(rows, zero_rows="reject")
    assert res.accepted.tolist() == [True, False, True, True]
    assert res.cosines[1] == 0.0 and res.confirmed
    with pytest.raises(AggregateError, match="zero vectors"):
        aggregate(np.zeros((2, 3)), zero_rows="reject")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "krum"}, "unknown method"),
        ({"weights": [1.0, 1.0]}, r"shape \(3,\)"),
        ({"weights": [1.0, -1.0, 1.0]}, ">= 0"),
        ({"weights": [1.0, np.nan, 1.0]}, "NaN or inf"),
        ({"weights": [0.0, 0.0, 0.0]}, "all zero"),
        ({"weights": ["a", "b", "c"]}, "real numbers"),
        ({"weights": [1.0, 1.0, 1.0], "method": "trimmed_mean"}, "not trimmed_mean"),
        ({"trim": 0.5}, "trim"),
        ({"floor": 1.5}, "floor"),
        ({"k_mad": float("nan")}, "k_mad"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"quorum": True}, "quorum"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"zero_rows": "drop"}, "zero_rows"),
    ],
)
def test_bad_parameters_raise(kwargs, message):
    with pytest.raises(AggregateError, match=message):
        aggregate([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]], **kwargs)


# --------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 9),
    d=st.integers(2, 12),
    method=st.sampled_from(METHODS),
)
def test_invariants(seed, n, d, method):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, d)) + 3.0  # a shared offset keeps the consensus non-zero
    res = aggregate(rows, method)
    assert np.linalg.norm(res.consensus) == pytest.approx(1.0, abs=1e-5)
    assert res.accepted.shape == res.cosines.shape == (n,)
    assert np.all(np.abs(res.cosines) <= 1.0)
    if res.converged:
        assert np.array_equal(res.accepted, res.cosines >= res.cutoff)
    # Order and row length do not matter.
    perm = rng.permutation(n)
    scaled = rows[perm] * rng.uniform(0.1, 10.0, size=(n, 1))
    res2 = aggregate(scaled, method)
    np.testing.assert_allclose(res2.consensus, res.consensus, atol=1e-5)
    np.testing.assert_array_equal(res2.accepted, res.accepted[perm])


# --------------------------------------------------------------------------------------------
# BitDelta codes


def _attacked_codes(rng, ref=None):
    t = unit(rng.standard_normal(DIM)).astype(np.float32)
    honest = noisy(t.astype(np.float64), 6, 0.3, rng).astype(np.float32)
    attackers = np.vstack([-t, unit(rng.standard_normal(DIM))]).astype(np.float32)
    rows = np.vstack([honest[:2], attackers, honest[2:]])
    return t, bitdelta.encode(rows, ref=ref)


def test_aggregate_codes_matches_decoded_aggregation(rng):
    t, codes = _attacked_codes(rng)
    res = aggregate_codes(codes)
    assert isinstance(res.code, bytes) and len(res.code) == CODE_BYTES
    assert res.accepted.tolist() == [True, True, False, False, True, True, True, True]
    assert res.confirmed
    same = aggregate(bitdelta.decode(codes))
    np.testing.assert_array_equal(res.consensus, same.consensus)
    np.testing.assert_array_equal(res.accepted, same.accepted)
    assert res.code == bitdelta.encode(same.consensus)
    # The consensus code points at the truth (a 1-bit code keeps cosine ~0.8 of its vector).
    decoded = bitdelta.decode(res.code)
    assert float(decoded @ t) / float(np.linalg.norm(decoded)) > 0.75


def test_aggregate_codes_accepts_a_list_of_bytes_and_a_reference(rng):
    ref = (0.01 * rng.standard_normal(DIM)).astype(np.float32)
    _t, codes = _attacked_codes(rng, ref=ref)
    as_list = [bytes(c) for c in codes]
    a = aggregate_codes(as_list, ref=ref, method="geometric_median")
    b = aggregate_codes(codes, ref=ref, method="geometric_median")
    assert a.code == b.code and a.method == "geometric_median"
    assert a.accepted.tolist() == b.accepted.tolist()


def test_a_zero_scale_code_cannot_block_the_consensus(rng):
    _t, codes = _attacked_codes(rng)
    zero = bitdelta.encode(np.zeros(DIM, dtype=np.float32))  # valid on the wire
    codes = np.vstack([codes, np.frombuffer(zero, dtype=np.uint8)])
    res = aggregate_codes(codes)
    assert not res.accepted[-1] and res.confirmed
    with pytest.raises(AggregateError, match="zero vectors"):
        aggregate_codes(codes, zero_rows="error")


def test_tied_votes_give_a_deterministic_code(rng):
    # Two codes of u and two of v, at different scales: where u and v disagree the vote ties,
    # the median is exactly 0 (unit-scaled decoded rows have equal magnitudes) and the bit is
    # 1 (the codec's d >= 0), whatever the order of the rows; float noise never decides it.
    u, v = rng.standard_normal(DIM), rng.standard_normal(DIM)
    codes = bitdelta.encode(np.vstack([u, 2 * u, 3 * v, 0.5 * v]).astype(np.float32))
    expected_bits = np.where(np.sign(u) == np.sign(v), u >= 0, True)
    expected = np.packbits(expected_bits, bitorder="little").tobytes()
    for perm in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 0, 3, 1]):
        res = aggregate_codes(codes[perm])
        assert res.accepted.all()
        assert res.code[4:] == expected


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (b"\x00" * CODE_BYTES, "several codes"),
        ([], "n = 0"),
        (np.zeros((0, CODE_BYTES), dtype=np.uint8), "n = 0"),
        ([b"\x00" * 10], "code 0 has 10 bytes"),
        (["abc"], "not bytes"),
        (np.zeros((2, CODE_BYTES), dtype=np.int16), "uint8"),
        (np.zeros((2, 100), dtype=np.uint8), "shape"),
        (42, "sequence of bytes"),
        ([b"\x00\x00\xc0\x7f" + b"\x00" * (CODE_BYTES - 4)], "cannot decode"),  # NaN scale
    ],
)
def test_bad_codes_raise(codes, message):
    with pytest.raises(AggregateError, match=message):
        aggregate_codes(codes)


# --------------------------------------------------------------------------------------------
# The benchmark's building blocks (its figures live in BENCHMARKS.md, not in tests)


def test_alie_z_known_values():
    from dsonode.bench.byzantine import alie_z

    # n = 20, f = 6: s = floor(11) - 6 = 5, z = Phi^-1(15 / 20) = 0.6745 (normal table).
    assert alie_z(20, 6) == pytest.approx(0.6745, abs=1e-4)
    # n = 50, f = 24: s = 2, z = Phi^-1(48 / 50) = 1.7507.
    assert alie_z(50, 24) == pytest.approx(1.7507, abs=1e-4)


def test_attack_rows(rng):
    from dsonode.bench.byzantine import ATTACKS, attack_rows

    t = unit(rng.standard_normal(DIM))
    honest = noisy(t, 7, 0.3, rng)
    own = noisy(t, 3, 0.3, rng)
    sibling = unit(rng.standard_normal(DIM))
    for attack in ATTACKS:
        rows = attack_rows(attack, 3, t, honest, own, sibling, rng)
        assert rows.shape == (3, DIM), attack
    np.testing.assert_array_equal(attack_rows("sign_flip", 3, t, honest, own, sibling, rng), -own)
    alie = attack_rows("alie", 3, t, honest, own, sibling, rng)[0]
    z = (honest.mean(axis=0) - alie) / honest.std(axis=0)
    # n = 10, f = 3: s = floor(6) - 3 = 3, z = Phi^-1(7 / 10) = 0.5244.
    np.testing.assert_allclose(z, 0.5244, atol=1e-3)
    ipm = attack_rows("ipm", 3, t, honest, own, sibling, rng)[0]
    assert unit(ipm) @ t < -0.95


def test_byzantine_bench_small_run():
    from dsonode.bench.byzantine import run

    r = run([0.3], experiences=10, submitters=7, seed=3, attacks=("sign_flip", "alie"))
    assert r["fraction"] == 0.3 and r["attackers_per_experience"] == 2
    for block in ("attacks", "attacks_codes"):
        assert set(r[block]) == {"sign_flip", "alie"}
        for accs in r[block].values():
            assert set(accs) == set(METHODS)
            assert all(0.0 <= a <= 1.0 for a in accs.values())
    # A sign flip is caught every time and no honest row is flagged, on floats and on codes.
    for det in ("detection", "detection_codes"):
        for m in METHODS:
            assert r[det]["sign_flip"][m] == {"precision": 1.0, "recall": 1.0}
    assert all(v == 0.0 for v in r["clean_honest_rejected"]["float"].values())
    assert set(r["targets"]["float"]["best_ratio"]) == {"sign_flip", "alie"}


def test_byzantine_targets_with_a_zero_clean_accuracy():
    """A method with clean accuracy 0 has no ratio (None): the verdict says 'not met' for it
    instead of comparing None with a float (it raised TypeError / ValueError before)."""
    from dsonode.bench.byzantine import _targets

    clean = {"median": 0.0, "mean": 0.5}
    attacks = {"gaussian": {"median": 0.4, "mean": 0.25}, "mimic": {"median": 0.0, "mean": 0.0}}
    zero = {"median": 0.0, "mean": 0.0}
    t = _targets(clean, attacks, zero, {"gaussian": {"median": 0.1, "mean": 0.1}})
    assert t["ratios"]["gaussian"] == {"median": None, "mean": 0.5}
    assert t["float"]["best_ratio"] == {"gaussian": 0.5, "mimic": 0.0}
    assert t["float"]["median_gaussian_ratio"] is None
    assert t["float"]["median_gaussian_over_0.97"] is False
    assert t["float"]["every_attack_has_a_method_over_0.95"] is False
    assert t["codes"]["best_ratio"] == {"gaussian": None}
    assert t["codes"]["every_attack_has_a_method_over_0.95"] is False


def test_byzantine_bench_rejects_bad_arguments():
    import argparse

    from dsonode.bench import byzantine

    parser = argparse.ArgumentParser()
    byzantine.register(parser.add_subparsers())
    ok = parser.parse_args(["byzantine", "--fractions", "0.1,0.45", "--experiences", "20"])
    assert ok.fractions == [0.1, 0.45] and ok.experiences == 20
    for bad in (
        ["--fraction", "0.5"],
        ["--fraction", "x"],
        ["--fractions", ""],
        ["--experiences", "5"],
        ["--submitters", "1000"],
        ["--seed", "-1"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(["byzantine", *bad])


def test_extreme_magnitudes_neither_overflow_nor_underflow():
    rows = np.array([[3.0, 4.0], [3.0, 4.1], [3.1, 4.0]])
    expected = aggregate(rows).consensus
    for factor in (1e300, 1e-300):
        for normalize in (True, False):
            res = aggregate(rows * factor, normalize=normalize)
            np.testing.assert_allclose(res.consensus, expected, atol=1e-3)
            assert res.accepted.all()


def test_byzantine_paper_setting_mean_collapses_median_holds():
    """Table 5 as the paper ran it (no normalisation, no rejection): under the reading with
    sigma = the embeddings' scale the mean loses far more than the median; the attacker rows
    of each reading have the length the reading says."""
    import numpy as np

    from dsonode.bench.byzantine import PAPER_TABLE5, make_task, paper_attack_rows, run_paper

    truth = make_task(10, 0)[0][0]
    rng = np.random.default_rng(0)
    lengths = {
        r: float(np.linalg.norm(paper_attack_rows(r, 4, truth, rng), axis=1).mean())
        for r in ("truth_plus_noise", "noise_honest_sigma", "noise_embedding_sigma")
    }
    assert abs(lengths["noise_embedding_sigma"] - 10**0.5) < 0.1  # unit truth: sigma_e = 1/sqrt(d)
    assert abs(lengths["noise_honest_sigma"] - 0.3 * 10**0.5) < 0.05
    assert abs(lengths["truth_plus_noise"] - (1 + 0.9) ** 0.5) < 0.05

    r = run_paper(experiences=20, submitters=20, seed=0)
    assert r["attackers_per_experience"] == 6 and r["paper"] == PAPER_TABLE5
    assert not r["normalize"] and not r["reject"]
    fl = r["floats"]
    assert fl["clean"]["mean"] > 0.8 and fl["clean"]["median"] > 0.8
    hit = fl["noise_embedding_sigma"]["ratio_to_clean"]
    assert hit["mean"] < 0.8 and hit["median"] > 0.9
    for block in (r["floats"], r["codes"]):
        for reading in ("truth_plus_noise", "noise_honest_sigma", "noise_embedding_sigma"):
            assert all(0.0 <= a <= 1.0 for a in block[reading]["accuracy"].values())
