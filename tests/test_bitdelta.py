"""dsonode.core.bitdelta: layout, round trips, prefixes, Hamming, asymmetric scores, errors."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsonode.core import bitdelta as bd
from dsonode.core.constants import CODE_BYTES, DIM
from dsonode.core.errors import CodecError

# A numpy RuntimeWarning (overflow, invalid value) escaping the codec is a bug: make it fail.
pytestmark = pytest.mark.filterwarnings("error")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------
# slow, obviously-correct reference implementations


def ref_encode(e: np.ndarray, r: np.ndarray | None = None) -> bytes:
    """Bit by bit from PROTOCOL.md 7.3, in plain Python loops over the bytes.

    e and r are taken as binary32, d = e - r in binary32; the scale is the exactly rounded
    sum (math.fsum) of |d|, divided by 7680 in binary64, rounded to binary32 by struct.
    """
    e32 = np.asarray(e, dtype=np.float32)
    d = e32 if r is None else np.subtract(e32, np.asarray(r, dtype=np.float32), dtype=np.float32)
    a = math.fsum(abs(float(v)) for v in d) / DIM
    out = bytearray(struct.pack("<f", a))
    bits = [1 if v >= 0 else 0 for v in d]
    if struct.unpack("<f", out[:4])[0] == 0.0:
        bits = [1] * DIM  # canonical zero code
    for j in range(DIM // 8):
        byte = 0
        for k in range(8):
            byte |= bits[8 * j + k] << k
        out.append(byte)
    return bytes(out)


def ref_decode(code: bytes, r: np.ndarray | None = None) -> np.ndarray:
    (a,) = struct.unpack("<f", code[:4])
    out = np.empty(DIM, dtype=np.float64)
    for i in range(DIM):
        bit = (code[4 + i // 8] >> (i % 8)) & 1
        out[i] = a * (2 * bit - 1)
    if r is not None:
        out += r
    return out


def ref_hamming(q: bytes, c: bytes, nbits: int) -> int:
    return sum(((q[i // 8] ^ c[i // 8]) >> (i % 8)) & 1 for i in range(nbits))


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Valid codes with random bits and random positive scales."""
    codes = rng.integers(0, 256, size=(n, CODE_BYTES), dtype=np.uint8)
    scales = rng.uniform(1e-4, 1.0, size=n).astype("<f4")
    codes[:, :4] = scales.view(np.uint8).reshape(n, 4)
    return codes


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.atleast_2d(a).astype(np.float64)
    b = np.atleast_2d(b).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


seeds = st.integers(min_value=0, max_value=2**32 - 1)


# ------------------------------------------------------------------------------------------
# layout, known answers


def test_layout_byte_for_byte_on_hand_built_vector():
    # Signs: + - + + - - - + | then all negative, except dims 1024 and 7679 which are +.
    pattern = [1, -1, 1, 1, -1, -1, -1, 1]
    e = -np.ones(DIM, dtype=np.float32)
    e[:8] = pattern
    e[1024] = 1.0
    e[DIM - 1] = 1.0
    e *= 0.5  # every |d| = 0.5, so the scale is exactly 0.5
    code = bd.encode(e)
    assert isinstance(code, bytes) and len(code) == 964
    assert code[:4] == bytes.fromhex("0000003f")  # 0.5 as float32, little-endian
    # byte 0: bits 0,2,3,7 set (LSB first) = 0b10001101
    assert code[4] == 0b10001101 == 0x8D
    assert code[5 : 4 + 128] == bytes(127)
    assert code[4 + 128] == 0x01  # dim 1024 is bit 0 of byte 128
    assert code[4 + 129 : 963] == bytes(960 - 130)
    assert code[963] == 0x80  # dim 7679 is bit 7 of the last byte
    assert code == ref_encode(e)


def test_scale_is_mean_abs_delta_and_ref_is_subtracted():
    e = np.zeros(DIM, dtype=np.float32)
    e[0] = 3.0
    e[1] = -1.0
    ref = np.zeros(DIM, dtype=np.float32)
    ref[1] = -2.0  # d[1] = +1
    code = bd.encode(e, ref=ref)
    assert struct.unpack("<f", code[:4])[0] == np.float32(4.0 / DIM)
    assert code[4] == 0xFF  # d = 3, 1, 0, 0, ... all >= 0
    out = bd.decode(code, ref=ref)
    expected = ref + np.float32(4.0 / DIM)
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_negative_zero_counts_as_non_negative():
    e = np.full(DIM, -1.0, dtype=np.float32)
    e[5] = -0.0
    code = bd.encode(e)
    assert code[4] == 0b00100000


def test_zero_vector_gives_canonical_zero_code():
    code = bd.encode(np.zeros(DIM, dtype=np.float32))
    assert code == bytes(4) + b"\xff" * 960
    np.testing.assert_array_equal(bd.decode(code), np.zeros(DIM, dtype=np.float32))


def test_zero_scale_with_any_bits_is_valid_and_decodes_to_ref(rng):
    # PROTOCOL.md 7.3: the bits are unconstrained; such a code decodes to r (here 0), and
    # re-encoding gives the canonical form (all bits set).
    code = bytes(4) + rng.integers(0, 256, size=960, dtype=np.uint8).tobytes()
    out = bd.decode(code)
    assert not out.any()
    assert bd.encode(out) == bytes(4) + b"\xff" * 960
    r = rng.standard_normal(DIM).astype(np.float32)
    np.testing.assert_array_equal(bd.decode(code, ref=r), r)
    assert bd.asymmetric_scores(r, code, ref=r)[0] == pytest.approx(float(r @ r), rel=1e-5)
    assert bd.asymmetric_scores(r, code)[0] == 0.0


def test_underflowing_scale_is_canonicalised():
    e = np.zeros(DIM, dtype=np.float64)
    e[3] = -1e-300  # the mean rounds to 0 in float32: the bits must become canonical
    code = bd.encode(e)
    assert code == bytes(4) + b"\xff" * 960
    assert bd.encode(bd.decode(code)) == code


def test_huge_finite_values_encode_exactly():
    big = np.float32(3e38)
    e = np.where(np.arange(DIM) % 3 == 0, big, -big).astype(np.float32)
    code = bd.encode(np.stack([e, e / 2]))
    assert code[0].tobytes() == ref_encode(e)
    assert code[1].tobytes() == ref_encode(e / 2)
    np.testing.assert_array_equal(bd.decode(code[0]), e)
    # e - ref overflows float32 element-wise, but the signs and the scale are still right
    ref = np.full(DIM, np.float32(-1e38))
    half = (e / 2).astype(np.float32)
    assert bd.encode(half, ref=ref) == ref_encode(half, ref)
    assert bd.sign_bits(half, ref=ref) == ref_encode(half, ref)[4:]


def test_scale_is_the_exactly_rounded_mean_on_every_path(rng):
    # PROTOCOL.md 7.3 pins the scale to fsum(|d|) / 7680 in binary64, then binary32. The fast
    # path (a float64 sum certified exact), the split path (zeros or a wide range) and the
    # math.fsum path (values spanning over ~2^45) must all give exactly that.
    x = unit_vectors(rng, 40)
    x[10:20] *= np.exp2(rng.integers(-16, 1, size=(10, DIM))).astype(np.float32)  # split
    x[20:30, ::5] = 0.0  # exact zeros: the smallest value is not the smallest non-zero one
    x[30:40] *= np.exp2(rng.integers(-100, 1, size=(10, DIM))).astype(np.float32)  # fsum
    ref = (0.01 * rng.standard_normal(DIM)).astype(np.float32)
    for r in (None, ref):
        codes = bd.encode(x, ref=r)
        for i in range(len(x)):
            assert codes[i].tobytes() == ref_encode(x[i], r), i


def test_float64_input_is_rounded_to_float32_first():
    e = np.full(DIM, -1.0)
    e[0] = 1.0 + 2.0**-30  # rounds to 1.0 in float32
    e[1] = -1e-50  # rounds to -0.0 in float32: bit 1 (-0.0 >= 0), PROTOCOL.md 7.3
    code = bd.encode(e)
    assert code == bd.encode(e.astype(np.float32))
    assert code[:4] == struct.pack("<f", math.fsum([1.0, 0.0] + [1.0] * (DIM - 2)) / DIM)
    assert code[4] == 0b11


def test_single_and_matrix_forms_agree(rng):
    x = unit_vectors(rng, 5)
    m = bd.encode(x)
    assert m.dtype == np.uint8 and m.shape == (5, 964)
    for i in range(5):
        assert bd.encode(x[i]) == m[i].tobytes() == ref_encode(x[i])
    assert bd.encode(np.empty((0, DIM), np.float32)).shape == (0, 964)
    assert bd.decode(np.empty((0, 964), np.uint8)).shape == (0, DIM)


def test_float64_and_float16_and_list_inputs(rng):
    x = unit_vectors(rng, 3)
    x64 = x.astype(np.float64)
    assert bd.encode(x64[0]) == ref_encode(x64[0])
    x16 = x.astype(np.float16)
    assert bd.encode(x16[1]) == ref_encode(x16[1].astype(np.float32))
    assert bd.encode(x[2].tolist()) == bd.encode(x[2])


def test_non_contiguous_input_matches_contiguous(rng):
    x = unit_vectors(rng, 6)
    wide = np.zeros((6, 2 * DIM), dtype=np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(bd.encode(wide[:, ::2]), bd.encode(x))
    np.testing.assert_array_equal(bd.encode(x[::-2]), bd.encode(x)[::-2])


def test_decode_matches_reference_and_accepts_bytearray(rng):
    codes = random_codes(rng, 3)
    r = (0.01 * rng.standard_normal(DIM)).astype(np.float32)
    out = bd.decode(codes, ref=r)
    for i in range(3):
        np.testing.assert_allclose(out[i], ref_decode(codes[i].tobytes(), r), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(bd.decode(bytearray(codes[i].tobytes()), ref=r), out[i])
        np.testing.assert_array_equal(bd.decode(memoryview(codes[i].tobytes()), ref=r), out[i])
        np.testing.assert_array_equal(bd.decode(codes[i], ref=r), out[i])
    assert out.dtype == np.float32


# ------------------------------------------------------------------------------------------
# properties


@SETTINGS
@given(seed=seeds, n=st.integers(1, 40))
def test_round_trip_of_valid_codes(seed, n):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n)
    # scales across many magnitudes, including subnormals and the largest float32
    exps = rng.integers(-149, 128, size=n)
    scales = np.ldexp(rng.uniform(0.5, 1.0, size=n), exps).astype("<f4")
    scales[~np.isfinite(scales)] = np.finfo(np.float32).max
    scales[scales == 0] = np.float32(1e-45)
    codes[:, :4] = scales.view(np.uint8).reshape(n, 4)
    np.testing.assert_array_equal(bd.encode(bd.decode(codes)), codes)


@SETTINGS
@given(seed=seeds)
def test_cosine_of_random_unit_vectors_is_at_least_075(seed):
    rng = np.random.default_rng(seed)
    x = unit_vectors(rng, 8)
    assert (cosine(x, bd.decode(bd.encode(x))) >= 0.75).all()


@SETTINGS
@given(seed=seeds, scale=st.floats(1e-3, 1e3))
def test_cosine_with_reference_vector(seed, scale):
    rng = np.random.default_rng(seed)
    x = unit_vectors(rng, 4) * np.float32(scale)
    r = (rng.standard_normal(DIM) * scale / 100).astype(np.float32)
    y = bd.decode(bd.encode(x, ref=r), ref=r)
    assert (cosine(x - r, y - r) >= 0.75).all()


@SETTINGS
@given(seed=seeds, dim=st.sampled_from([1024, 2048, 4096]))
def test_prefix_decode_is_prefix_of_full_decode(seed, dim):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, 5)
    r = rng.standard_normal(DIM).astype(np.float32)
    full = bd.decode(codes, ref=r)
    np.testing.assert_array_equal(bd.decode(codes, ref=r, dim=dim), full[:, :dim])
    np.testing.assert_array_equal(bd.decode(codes[0].tobytes(), dim=dim), bd.decode(codes[0])[:dim])


@SETTINGS
@given(seed=seeds, n=st.integers(0, 30))
def test_hamming_matches_slow_reference(seed, n):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n)
    q = rng.integers(0, 256, size=960, dtype=np.uint8).tobytes()
    h = bd.hamming(q, codes)
    assert h.shape == (n,) and h.dtype == np.int32
    for i in range(n):
        assert h[i] == ref_hamming(q, codes[i, 4:].tobytes(), DIM)
    for dim in (1024, 2048, 4096, 7680):
        hp = bd.hamming_prefix(q, codes, dim=dim)
        for i in range(n):
            assert hp[i] == ref_hamming(q, codes[i, 4:].tobytes(), dim)


def test_hamming_accepted_operand_forms(rng):
    x = unit_vectors(rng, 9)
    codes = bd.encode(x)
    bits = bd.sign_bits(x)
    assert bits.shape == (9, 960)
    np.testing.assert_array_equal(bits, codes[:, 4:])
    assert bd.sign_bits(x[0]) == codes[0, 4:].tobytes()
    q = bd.sign_bits(x[0])
    expected = bd.hamming(q, codes)
    assert expected[0] == 0
    np.testing.assert_array_equal(bd.hamming(codes[0].tobytes(), codes), expected)  # full code
    np.testing.assert_array_equal(bd.hamming(np.frombuffer(q, np.uint8), bits), expected)
    np.testing.assert_array_equal(bd.hamming(q, codes[::-1]), expected[::-1])  # strided rows
    # unaligned rows: a matrix that starts one byte into a buffer
    buf = np.zeros(9 * 964 + 1, dtype=np.uint8)
    buf[1:] = codes.ravel()
    np.testing.assert_array_equal(bd.hamming(q, buf[1:].reshape(9, 964)), expected)
    pre = bd.hamming_prefix(q, codes)
    np.testing.assert_array_equal(bd.hamming_prefix(q[:128], codes[:, 4:132].copy()), pre)
    np.testing.assert_array_equal(
        bd.hamming_prefix(q[:256], bits, dim=2048), bd.hamming_prefix(q, codes, dim=2048)
    )


@SETTINGS
@given(
    seed=seeds,
    n=st.integers(0, 1100),
    dim=st.sampled_from([None, 1024, 2048, 4096]),
    with_ref=st.booleans(),
)
def test_asymmetric_scores_equal_decoded_dot(seed, n, dim, with_ref):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n)
    r = rng.standard_normal(DIM).astype(np.float32) / 100 if with_ref else None
    q = rng.standard_normal(DIM).astype(np.float32)
    d = dim or DIM
    expected = bd.decode(codes, ref=r, dim=dim).astype(np.float64) @ q[:d].astype(np.float64)
    got = bd.asymmetric_scores(q, codes, ref=r, dim=dim)
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # a query of exactly `dim` entries gives the same scores
    np.testing.assert_array_equal(bd.asymmetric_scores(q[:d], codes, ref=r, dim=dim), got)


def test_asymmetric_scores_single_code(rng):
    code = bd.encode(unit_vectors(rng, 1)[0])
    q = unit_vectors(rng, 1)[0]
    got = bd.asymmetric_scores(q, code)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(float(bd.decode(code) @ q), abs=1e-5)


# ------------------------------------------------------------------------------------------
# errors: every bad input is a CodecError that says what was wrong


GOOD = np.zeros(DIM, dtype=np.float32)


def _code_with_scale(value: float) -> bytes:
    return struct.pack("<f", value) + b"\xff" * 960


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bd.encode(np.zeros(100, np.float32)), "shape (7680,), got (100,)"),
        (lambda: bd.encode(np.zeros((2, 100), np.float32)), "shape (n, 7680), got (2, 100)"),
        (lambda: bd.encode(np.zeros((1, 1, DIM), np.float32)), "got 3-D"),
        (lambda: bd.encode(np.zeros(DIM, np.int64)), "float array"),
        (lambda: bd.encode(np.zeros(DIM, bool)), "got dtype bool"),
        (lambda: bd.encode(np.zeros(DIM, np.complex64)), "got dtype complex64"),
        (lambda: bd.encode("not a vector"), "got str"),
        (lambda: bd.encode(b"\x00" * 964), "got bytes"),
        (lambda: bd.encode([[1.0, 2.0], [3.0]]), "not a numeric array"),
        (lambda: bd.encode(np.full(DIM, np.nan, np.float32)), "NaN or inf (first at index 0"),
        (lambda: bd.encode(np.where(np.arange(DIM) == 7, np.inf, 0.0)), "index 7"),
        (lambda: bd.encode(np.stack([GOOD, GOOD, np.full(DIM, -np.inf, np.float32)])), "row 2"),
        (
            lambda: bd.encode(np.full(DIM, 3e38, np.float32), ref=np.full(DIM, -3e38, np.float32)),
            "vector - ref overflows float32",
        ),
        (lambda: bd.encode(GOOD, ref=np.zeros(10, np.float32)), "ref must have shape (7680,)"),
        (lambda: bd.encode(GOOD, ref=np.full(DIM, np.nan)), "ref contains NaN"),
        (lambda: bd.encode(GOOD, ref=np.zeros(DIM, np.int32)), "ref must be a float array"),
        (lambda: bd.sign_bits(np.full(DIM, np.nan)), "NaN or inf"),
        (lambda: bd.sign_bits(np.zeros(5)), "shape (7680,)"),
        (lambda: bd.decode(b"\x00" * 963), "964 bytes, got 963"),
        (lambda: bd.decode(b""), "964 bytes, got 0"),
        (lambda: bd.decode(np.zeros((2, 960), np.uint8)), "shape (n, 964), got (2, 960)"),
        (lambda: bd.decode(np.zeros((2, 964), np.int16)), "dtype uint8, got int16"),
        (lambda: bd.decode(np.zeros((1, 2, 964), np.uint8)), "got 3-D"),
        (lambda: bd.decode([0] * 964), "got list"),
        (lambda: bd.decode(_code_with_scale(float("nan"))), "got NaN"),
        (lambda: bd.decode(_code_with_scale(float("inf"))), "got inf"),
        (lambda: bd.decode(_code_with_scale(-1.0)), "got negative"),
        (lambda: bd.decode(_code_with_scale(-0.0)), "got negative"),
        (lambda: bd.decode(_code_with_scale(1.0), dim=1000), "dim must be one of"),
        (lambda: bd.decode(_code_with_scale(1.0), dim=True), "dim must be one of"),
        (lambda: bd.decode(_code_with_scale(1.0), ref=np.zeros(1024)), "ref must have shape"),
        (
            lambda: bd.hamming(b"\x00" * 100, np.zeros((1, 964), np.uint8)),
            "query_bits must be 960 or 964 bytes long, got 100",
        ),
        (lambda: bd.hamming(b"\x00" * 960, np.zeros(964, np.uint8)), "2-D"),
        (lambda: bd.hamming(b"\x00" * 960, np.zeros((1, 964), np.int32)), "dtype uint8"),
        (lambda: bd.hamming(b"\x00" * 960, [[0] * 964]), "got list"),
        (lambda: bd.hamming("x" * 960, np.zeros((1, 964), np.uint8)), "got str"),
        (
            lambda: bd.hamming_prefix(b"\x00" * 960, np.zeros((1, 964), np.uint8), dim=512),
            "dim must be one of",
        ),
        (
            lambda: bd.hamming_prefix(b"\x00" * 256, np.zeros((1, 964), np.uint8)),
            "960, 964 or 128 bytes long, got 256",
        ),
        (
            lambda: bd.asymmetric_scores(np.zeros(100), np.zeros((1, 964), np.uint8)),
            "query must have shape (7680,)",
        ),
        (
            lambda: bd.asymmetric_scores(np.zeros(2048), np.zeros((1, 964), np.uint8), dim=1024),
            "got (2048,)",
        ),
        (
            lambda: bd.asymmetric_scores(np.full(DIM, np.inf), np.zeros((1, 964), np.uint8)),
            "query contains NaN or inf",
        ),
        (
            lambda: bd.asymmetric_scores(np.zeros(DIM, np.int8), np.zeros((1, 964), np.uint8)),
            "query must be a float array",
        ),
        (
            lambda: bd.asymmetric_scores(GOOD, np.full((3, 964), 0xFF, np.uint8)),
            "codes row 0: scale must be finite",
        ),
        (lambda: bd.asymmetric_scores(GOOD, np.zeros((3, 963), np.uint8)), "(n, 964)"),
    ],
)
def test_invalid_input_raises_codec_error_naming_the_problem(call, message):
    with pytest.raises(CodecError) as info:
        call()
    assert message in str(info.value)


def test_float32_range_is_enforced_without_numpy_warnings():
    big = np.float32(3e38)
    code = bd.encode(np.full(DIM, big, np.float32))  # scale 3e38, all bits set
    with pytest.raises(CodecError, match="ref \\+ scale overflows float32"):
        bd.decode(code, ref=np.full(DIM, big, np.float32))
    with pytest.raises(CodecError, match="score overflows float32"):
        bd.asymmetric_scores(np.full(DIM, big, np.float32), code)
    with pytest.raises(CodecError, match="ref has values beyond the float32 range"):
        bd.encode(GOOD, ref=np.full(DIM, 1e300))
    with pytest.raises(CodecError, match="query has values beyond the float32 range"):
        bd.asymmetric_scores(np.full(DIM, 1e300), code)
    with pytest.raises(CodecError, match="vectors has a value beyond the float32 range"):
        bd.encode(np.full(DIM, 1e300))


def test_bad_row_is_named_in_a_matrix(rng):
    codes = random_codes(rng, 5)
    codes[3, :4] = np.frombuffer(struct.pack("<f", float("nan")), np.uint8)
    with pytest.raises(CodecError, match="codes row 3"):
        bd.decode(codes)


@SETTINGS
@given(data=st.binary(min_size=0, max_size=2000))
def test_fuzzed_bytes_into_decode_raise_only_codec_error(data):
    try:
        out = bd.decode(data)
    except CodecError:
        return
    assert len(data) == 964 and out.shape == (DIM,) and np.isfinite(out).all()
    a = struct.unpack("<f", data[:4])[0]
    canonical = a > 0 or data[4:] == b"\xff" * 960
    assert (bd.encode(out) == data) == canonical  # canonical codes, and only they, round-trip


@SETTINGS
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.float32, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=970),
        elements=None,
    ),
    dim=st.sampled_from([None, 1024, 2048, 4096]),
)
def test_fuzzed_arrays_into_decode_raise_only_codec_error(arr, dim):
    try:
        out = bd.decode(arr, dim=dim)
    except CodecError:
        return
    assert arr.dtype == np.uint8 and arr.shape[-1] == 964
    assert np.isfinite(out).all() and out.shape[-1] == (dim or DIM)


@SETTINGS
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.uint8]),
        shape=st.sampled_from([(DIM,), (2, DIM), (0,), (3,), (1, 7679), (2, 1, DIM)]),
        elements=None,
    ),
)
def test_fuzzed_arrays_into_encode_raise_only_codec_error(arr):
    try:
        code = bd.encode(arr)
    except CodecError:
        return
    assert arr.dtype.kind == "f"
    decoded = bd.decode(code)
    assert np.isfinite(decoded).all()


@SETTINGS
@given(
    query=st.one_of(
        st.binary(max_size=1000),
        hnp.arrays(
            dtype=st.sampled_from([np.uint8, np.float32, np.int64]),
            shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=970),
        ),
    ),
    matrix=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.float64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=970),
    ),
    dim=st.sampled_from([None, 512, 1024, 2048, 4096, 7680]),
)
def test_fuzzed_operands_into_hamming_and_scores_raise_only_codec_error(query, matrix, dim):
    calls = [
        lambda: bd.hamming(query, matrix),
        lambda: bd.hamming_prefix(query, matrix, dim=dim or 1024),
        lambda: bd.asymmetric_scores(query, matrix, dim=dim),
    ]
    for call in calls:
        try:
            out = call()
        except CodecError:
            continue
        assert out.ndim == 1 and out.shape[0] == matrix.shape[0]


@SETTINGS
@given(
    seed=seeds,
    byte=st.integers(0, 963),
    value=st.integers(0, 255),
)
def test_corrupted_code_either_decodes_or_raises_codec_error(seed, byte, value):
    rng = np.random.default_rng(seed)
    code = bytearray(bd.encode(unit_vectors(rng, 1)[0]))
    code[byte] = value
    try:
        out = bd.decode(bytes(code))
    except CodecError:
        return
    assert np.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# the benchmark command runs end to end and reports what it promises


def test_bench_codec_reports_the_promised_fields(capsys):
    import json

    from dsonode.cli import main

    assert main(["bench", "codec", "--json", "--n", "64", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dim"] == 7680 and result["code_bytes"] == 964
    assert result["ratio"] == pytest.approx(30720 / 964)
    for key in (
        "encode_per_s",
        "decode_per_s",
        "packbits_per_s",
        "encode_vs_packbits",
        "hamming_prefix_per_s",
        "asymmetric_scores_per_s",
    ):
        assert result[key] > 0, key
    assert 0.75 <= result["cos_mean"] <= 0.85  # 1-bit codes of random unit vectors: ~sqrt(2/pi)
    assert result["rejected_neighbour_delta_cos_mean"] < 0.5
    assert result["hamming_matches_unpacked"] is True
    assert result["asymmetric_scores_max_abs_err"] < 1e-4


def test_bench_codec_rejects_bad_arguments():
    from dsonode.bench.codec import BenchArgsError, run

    class Args:
        n = 0
        repeats = 1
        seed = 0
        json = True

    with pytest.raises(BenchArgsError, match="--n must be between"):
        run(Args())
