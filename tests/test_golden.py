"""Golden values from sources independent of lowbit's code.

Sources: the OCP Microscaling Formats (MX) v1.0 specification (element encodings,
E8M0 scales, the "floor" scale rule), /work/shared/reference/formats.md (the E2M1
tie table, NVFP4 numerics), ml_dtypes 0.6 casts (float32 input only, since it
rounds float64 through float32), and values derived by hand in the comments.
Both backends must give each golden value.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import lowbit
from lowbit.formats import FloatFormat, decode_exact, evolve, get
from lowbit.plugins.builtin_formats import FP4_E2M1, FP8_E4M3, MXFP4
from lowbit.testing import strategies
from lowbit.testing.conformance import assert_same_bits

BACKENDS = ("reference", "numba")


def _fq(x: Any, fmt: Any, backend: str, **kw: Any) -> Any:
    return lowbit.fake_quant(x, fmt, backend=backend, **kw)


def _codes(x: Any, fmt: Any, backend: str, **kw: Any) -> np.ndarray:
    return lowbit.quantize(x, fmt, backend=backend, **kw).unpacked_codes()


# ---------------------------------------------------------------------------
# FP4 E2M1 ties (formats.md: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2,
# 2.5 -> 2, 3.5 -> 4, 5 -> 4, >= 6 and +-Inf saturate to 6)

E2M1_TIES = [
    # input, value, code (bit 3 sign, bits 2..1 exponent, bit 0 mantissa)
    (0.25, 0.0, 0b0000),
    (0.75, 1.0, 0b0010),
    (1.25, 1.0, 0b0010),
    (1.75, 2.0, 0b0100),
    (2.5, 2.0, 0b0100),
    (3.5, 4.0, 0b0110),
    (5.0, 4.0, 0b0110),
    (6.0, 6.0, 0b0111),
    (7.0, 6.0, 0b0111),
    (1e4, 6.0, 0b0111),
    (np.inf, 6.0, 0b0111),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", strategies.DTYPES)
def test_e2m1_tie_table(backend: str, dtype: str) -> None:
    x = [t[0] for t in E2M1_TIES]
    x = strategies.cast([x, [-v for v in x]], dtype)
    values = [t[1] for t in E2M1_TIES]
    codes = [t[2] for t in E2M1_TIES]
    # -0.25 rounds to -0 (code 8): the sign of zero is kept
    assert_same_bits(strategies.cast([values, [-v for v in values]], dtype), _fq(x, "fp4_e2m1", backend))
    np.testing.assert_array_equal(_codes(x, "fp4_e2m1", backend), [codes, [c | 8 for c in codes]])


# ---------------------------------------------------------------------------
# code tables, from the OCP MX v1.0 definitions (section 5.3): a normal code is
# 2^(E - bias) * (1 + M / 2^m), a subnormal (E = 0) is 2^(1 - bias) * M / 2^m


def _float_table(ebits: int, mbits: int, bias: int) -> list[float]:
    """Magnitudes of codes 0 .. 2^(e+m) - 1 by the definition above (specials not applied)."""
    out = []
    for e in range(1 << ebits):
        for m in range(1 << mbits):
            frac = m / (1 << mbits)
            out.append(2.0 ** (1 - bias) * frac if e == 0 else 2.0 ** (e - bias) * (1 + frac))
    return out


E2M1_TABLE = [0, 0.5, 1, 1.5, 2, 3, 4, 6]  # OCP table 4 (FP4), also formats.md
E3M0_TABLE = [0, 0.25, 0.5, 1, 2, 4, 8, 16]  # bias 3, no mantissa: only 0 is subnormal
E1M2_TABLE = [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]  # bias 0: subnormals M/2, normals 2 * (1 + M/4)
# OCP table 2 (FP6): E2M3 bias 1, E3M2 bias 3; table 1 (FP8): E4M3 bias 7, E5M2 bias 15
E2M3_TABLE = _float_table(2, 3, 1)
E3M2_TABLE = _float_table(3, 2, 3)
E4M3_TABLE = _float_table(4, 3, 7)[:-1] + [np.nan]  # S.1111.111 is NaN, no Inf
E5M2_TABLE = _float_table(5, 2, 15)[:-4] + [np.inf, np.nan, np.nan, np.nan]  # S.11111.00 Inf, else NaN

SIGN_MAGNITUDE_TABLES = {
    "fp4_e2m1": E2M1_TABLE,
    "fp4_e3m0": E3M0_TABLE,
    "fp4_e1m2": E1M2_TABLE,
    "fp6_e2m3": E2M3_TABLE,
    "fp6_e3m2": E3M2_TABLE,
    "fp8_e4m3": E4M3_TABLE,
    "fp8_e5m2": E5M2_TABLE,
}

# OCP tables 1 and 2: (max normal, min normal, max subnormal, min subnormal)
OCP_LIMITS = {
    "fp4_e2m1": (6.0, 1.0, 0.5, 0.5),
    "fp6_e2m3": (7.5, 1.0, 0.875, 0.125),
    "fp6_e3m2": (28.0, 0.25, 0.1875, 0.0625),
    "fp8_e4m3": (448.0, 2.0**-6, 0.875 * 2.0**-6, 2.0**-9),
    "fp8_e5m2": (57344.0, 2.0**-14, 0.75 * 2.0**-14, 2.0**-16),
}


@pytest.mark.parametrize("name", list(OCP_LIMITS))
def test_tables_match_the_ocp_limits(name: str) -> None:
    table = np.array(SIGN_MAGNITUDE_TABLES[name])
    finite = table[np.isfinite(table)]
    fmt = get(name)
    subnormals = finite[: 1 << fmt.mbits][1:]
    assert (finite.max(), finite[1 << fmt.mbits], subnormals.max(), subnormals.min()) == OCP_LIMITS[name]
    assert fmt.max_value == OCP_LIMITS[name][0]


def _full_table(name: str) -> list[float]:
    if name in ("int4", "int8"):  # two's complement
        bits = get(name).bits
        return [float(c - (1 << bits) if c >= 1 << (bits - 1) else c) for c in range(1 << bits)]
    half = SIGN_MAGNITUDE_TABLES[name]
    return [float(v) for v in half] + [-float(v) for v in half]  # code 2^(n-1) is -0


@pytest.mark.parametrize("name", [*SIGN_MAGNITUDE_TABLES, "int4", "int8"])
def test_decode_matches_the_hand_table(name: str) -> None:
    table = np.array(_full_table(name))
    decoded = np.array([float(decode_exact(get(name), c)) for c in range(len(table))])
    assert_same_bits(table, decoded)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [*SIGN_MAGNITUDE_TABLES, "int4", "int8"])
def test_every_table_value_quantizes_to_its_code(name: str, backend: str) -> None:
    table = np.array(_full_table(name))
    keep = np.isfinite(table)
    x = table[keep].reshape(1, -1)
    np.testing.assert_array_equal(_codes(x, name, backend)[0], np.arange(len(table))[keep])
    assert_same_bits(x, lowbit.dequantize(lowbit.quantize(x, name, backend=backend), backend=backend))


# ---------------------------------------------------------------------------
# ml_dtypes casts (float32 input)

ML_DTYPES_TYPES = {
    "float4_e2m1fn": ml_dtypes.float4_e2m1fn,
    "float6_e2m3fn": ml_dtypes.float6_e2m3fn,
    "float6_e3m2fn": ml_dtypes.float6_e3m2fn,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz,
    "float8_e3m4": ml_dtypes.float8_e3m4,
    "float8_e4m3": ml_dtypes.float8_e4m3,
}
# lowbit spec for each: the registered formats, and specs built from the ml_dtypes
# definitions (fnuz: no Inf, NaN is 0x80, overflow to NaN; IEEE-like: overflow to Inf).
# ml_dtypes maps NaN to -0 for the types without NaN; lowbit keeps NaN (tested below).
ML_DTYPES_PAIRS = {
    "float4_e2m1fn": ("fp4_e2m1", False),
    "float6_e2m3fn": ("fp6_e2m3", False),
    "float6_e3m2fn": ("fp6_e3m2", False),
    "float8_e4m3fn": ("fp8_e4m3@ml_dtypes", True),
    "float8_e5m2": ("fp8_e5m2@ml_dtypes", True),
    "float8_e4m3fnuz": (FloatFormat(name="e4m3fnuz", ebits=4, mbits=3, bias=8, special="fnuz", overflow="nan"), True),
    "float8_e5m2fnuz": (FloatFormat(name="e5m2fnuz", ebits=5, mbits=2, bias=16, special="fnuz", overflow="nan"), True),
    "float8_e4m3b11fnuz": (
        FloatFormat(name="e4m3b11fnuz", ebits=4, mbits=3, bias=11, special="fnuz", overflow="nan"),
        True,
    ),
    "float8_e3m4": (FloatFormat(name="e3m4", ebits=3, mbits=4, special="ieee", overflow="inf"), True),
    "float8_e4m3": (FloatFormat(name="e4m3_ieee", ebits=4, mbits=3, special="ieee", overflow="inf"), True),
}


def _hard_float32(spec: Any) -> np.ndarray:
    """Every tie, its float32 neighbours, every value, and the float32 specials."""
    specials = strategies.cast(strategies.special_values("float32"), "float32")
    return np.concatenate([strategies.tie_values(spec, "float32"), specials])


def _random_float32(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    wide = (rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(np.float32)
    any_bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([wide, any_bits])


def _ml_dtypes_round_trip(x: np.ndarray, t: Any) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(t)
    return y.astype(np.float32), y.view(np.uint8)


@pytest.mark.parametrize("mld", list(ML_DTYPES_PAIRS))
def test_agrees_with_ml_dtypes(mld: str) -> None:
    spec, with_nan = ML_DTYPES_PAIRS[mld]
    spec = lowbit.formats.resolve(spec)
    hard = _hard_float32(spec)
    for backend, x in (("reference", hard), ("numba", np.concatenate([hard, _random_float32(100_000)]))):
        if not with_nan:
            x = x[~np.isnan(x)]
        want, want_codes = _ml_dtypes_round_trip(x, ML_DTYPES_TYPES[mld])
        q = lowbit.quantize(x, spec, backend=backend)
        assert_same_bits(want, lowbit.dequantize(q, backend=backend))
        # NaN codes differ in sign (ml_dtypes keeps the input's), so compare the others
        ordered = ~np.isnan(want)
        np.testing.assert_array_equal(q.unpacked_codes()[0][ordered], want_codes[ordered])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "mld", "threshold", "top"),
    [
        # E4M3: 448 + ulp(448)/2 = 464; E5M2: 57344 + 8192/2 = 61440 (a tie that rounds
        # to the even code above the maximum, so it overflows)
        ("fp8_e4m3", ml_dtypes.float8_e4m3fn, 464.0, 448.0),
        ("fp8_e5m2", ml_dtypes.float8_e5m2, np.nextafter(np.float32(61440), 0), 57344.0),
    ],
)
def test_saturating_fp8_is_ml_dtypes_below_the_overflow_threshold(
    name: str, mld: Any, threshold: float, top: float, backend: str
) -> None:
    x = _hard_float32(get(name))
    x = x[~np.isnan(x)]
    below = np.abs(x) <= threshold
    y = _fq(x, name, backend)
    assert_same_bits(x[below].astype(mld).astype(np.float32), y[below])
    assert_same_bits(np.copysign(np.float32(top), x[~below]), y[~below])


def test_ml_dtypes_decodes_every_code_like_lowbit() -> None:
    for mld, (spec, _) in ML_DTYPES_PAIRS.items():
        spec = lowbit.formats.resolve(spec)
        codes = np.arange(1 << spec.bits, dtype=np.uint8)
        want = codes.view(ML_DTYPES_TYPES[mld]).astype(np.float64)
        assert_same_bits(want, np.array([float(decode_exact(spec, int(c))) for c in codes]))


# ---------------------------------------------------------------------------
# NaN, Inf, overflow and subnormal policies


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_visible_in_formats_without_a_nan_code(backend: str) -> None:
    x = np.array([[1.0, np.nan, -np.nan, 2.0]], np.float32)
    q = lowbit.quantize(x, "fp4_e2m1", backend=backend)
    np.testing.assert_array_equal(q.unpacked_codes(), [[2, 0, 0, 4]])
    for dtype in strategies.DTYPES:
        y = lowbit.dequantize(q, backend=backend, dtype=dtype)
        assert np.isnan(y.astype(np.float64)).tolist() == [[False, True, True, False]]
    assert np.isnan(_fq(x, "fp4_e2m1", backend)).tolist() == [[False, True, True, False]]
    with pytest.raises(ValueError, match=r"x contains NaN and format 'fp4_e2m1_strict' has no NaN code \(nan='raise'\)"):
        lowbit.quantize(x, evolve(FP4_E2M1, name="fp4_e2m1_strict", nan="raise"), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "x", "codes"),
    [
        # OCP: E4M3 NaN is S.1111.111; lowbit writes the positive one
        ("fp8_e4m3", [np.nan, 1e6, np.inf, -np.inf], [0x7F, 0x7E, 0x7E, 0xFE]),
        ("fp8_e4m3@ml_dtypes", [np.nan, 1e6, np.inf, -np.inf], [0x7F, 0x7F, 0x7F, 0x7F]),
        # E5M2: Inf S.11111.00, quiet NaN S.11111.10 (ml_dtypes writes the same)
        ("fp8_e5m2", [np.nan, 1e6, np.inf, -np.inf], [0x7E, 0x7B, 0x7B, 0xFB]),
        ("fp8_e5m2@ml_dtypes", [np.nan, 1e6, np.inf, -np.inf], [0x7E, 0x7C, 0x7C, 0xFC]),
        ("int8", [1e6, -1e6, np.inf, -np.inf], [0x7F, 0x80, 0x7F, 0x80]),  # 127, -128
    ],
)
def test_nan_inf_and_overflow_codes(name: str, x: list[float], codes: list[int], backend: str) -> None:
    np.testing.assert_array_equal(_codes(np.array([x], np.float32), name, backend), [codes])


@pytest.mark.parametrize("backend", BACKENDS)
def test_flushed_subnormals_become_signed_zero(backend: str) -> None:
    flush = evolve(FP8_E4M3, name="fp8_e4m3_flush", subnormal="flush")
    # 2^-7 and 0.875 * 2^-6 are E4M3 subnormals; 2^-6 is the smallest normal
    x = np.array([[2.0**-7, -(2.0**-7), 0.875 * 2.0**-6, 2.0**-6, -(2.0**-6)]], np.float32)
    assert_same_bits(np.array([[0.0, -0.0, 0.0, 2.0**-6, -(2.0**-6)]], np.float32), _fq(x, flush, backend))
    assert_same_bits(x, _fq(x, FP8_E4M3, backend))  # kept, they are exact


# ---------------------------------------------------------------------------
# float64 input is rounded once


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_is_rounded_once(backend: str) -> None:
    # 1.0625 is the E4M3 tie between 1.0 and 1.125; 2^-40 above it rounds up to 1.125.
    # Through float32 the 2^-40 is lost and the tie goes to the even 1.0 (ml_dtypes).
    # Likewise 2.5 + 2^-40 is above the E2M1 tie 2.5 and must become 3.
    x = np.array([[1.0625 + 2.0**-40, -(1.0625 + 2.0**-40), 1.0625 - 2.0**-40]])
    assert x.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)[0, 0] == 1.0  # the double rounding
    assert_same_bits(np.array([[1.125, -1.125, 1.0]]), _fq(x, "fp8_e4m3", backend))
    np.testing.assert_array_equal(_codes(x, "fp8_e4m3", backend), [[0x39, 0xB9, 0x38]])  # 1.125 = 0.0111.001
    assert_same_bits(np.array([[3.0, 2.0]]), _fq(np.array([[2.5 + 2.0**-40, 2.5]]), "fp4_e2m1", backend))
    block = np.zeros((1, 32))
    block[0, :2] = [448.0, 1.0625 + 2.0**-40]  # amax 448 = 1.75 * 2^8: scale 2^(8 - 8) = 1
    assert _fq(block, "mxfp8_e4m3", backend)[0, 1] == 1.125


# ---------------------------------------------------------------------------
# MXFP4 (OCP MX v1.0: X = 2^(floor(log2 amax) - 2), E8M0 code = 127 + log2 X)


def _mx_block(*values: float, size: int = 32) -> np.ndarray:
    row = np.zeros((1, size), np.float32)
    row[0, : len(values)] = values
    return row


ONE_ULP_BELOW_4 = float(np.nextafter(np.float32(4), np.float32(0)))  # 4 - 2^-22

MX_BLOCKS = [
    # (format, block, scale code, values); each derived in the comment
    # amax = 4 - 2^-22: floor(log2) = 1, X = 2^-1 (code 126); 3.9999998 / 0.5 saturates
    # to 6 -> 3.0. A float32 log2 gives exactly 2 and X = 1 (the microxcaling bug).
    ("mxfp4", _mx_block(ONE_ULP_BELOW_4, 1.0, 0.25, -0.75, 0.125), 126, [3.0, 1.0, 0.25, -0.75, 0.0]),
    # amax = 4: X = 1 (code 127); 0.25 is a tie -> 0, 0.75 -> 1
    ("mxfp4", _mx_block(4.0, 0.25, 0.75, -5.0, 2.5), 127, [4.0, 0.0, 1.0, -4.0, 2.0]),
    # amax = 0.3: floor(log2) = -2, X = 2^-4 (code 123); 0.3 / 2^-4 = 4.8 -> 4 -> 0.25
    ("mxfp4", _mx_block(0.3, 0.1, -0.05), 123, [0.25, 0.09375, -0.0625]),
    # amax = 3 * 2^-127: floor(log2) = -126, X = 2^-128 is below E8M0, so X = 2^-127 (code 0);
    # 2^-130 / 2^-127 = 0.125 -> 0
    ("mxfp4", _mx_block(2.0**-130, -(2.0**-127), 3 * 2.0**-127), 0, [0.0, -(2.0**-127), 3 * 2.0**-127]),
    # a block far below E8M0: amax = 2^-130, X = 2^-132 clamps to 2^-127 (code 0); +-0.125 -> +-0
    ("mxfp4", _mx_block(2.0**-130, -(2.0**-130)), 0, [0.0, -0.0]),
    # amax = largest float32 (2 - 2^-23) * 2^127: X = 2^125 (code 252); saturates to 6 * 2^125
    ("mxfp4", _mx_block(3.4028234663852886e38, -(2.0**125)), 252, [1.5 * 2.0**127, -(2.0**125)]),
    # ceil: amax 5 -> X = 2^(3 - 2) = 2 (code 128); 5/2 = 2.5 is a tie -> 2 -> 4; 3/2 = 1.5 -> 3
    ("mxfp4_ceil", _mx_block(5.0, 3.0), 128, [4.0, 3.0]),
    # even: amax 5 = 1.01b * 4 rounds (ties away) to 1.1b * 4 = 6: X = 1; 5 is a tie -> 4
    ("mxfp4_even", _mx_block(5.0, 3.0), 127, [4.0, 3.0]),
    # even: amax 7 = 1.11b * 4 rounds to 8: X = 2 (code 128); 7/2 = 3.5 is a tie -> 4 -> 8; 3 -> 1.5 -> 3
    ("mxfp4_even", _mx_block(7.0, 3.0), 128, [8.0, 3.0]),
    # rceil: the smallest X with 6X >= amax: 6 -> X = 1; 6.5 -> X = 2; 3 -> X = 1/2
    ("mxfp4_rceil", _mx_block(6.0, 5.0), 127, [6.0, 4.0]),
    ("mxfp4_rceil", _mx_block(6.5, 5.0), 128, [6.0, 4.0]),
    ("mxfp4_rceil", _mx_block(3.0, 1.25), 126, [3.0, 1.0]),
    # an all-zero block: the smallest scale (code 0) and zeros that keep their sign
    ("mxfp4", _mx_block(0.0, -0.0, 0.0, -0.0), 0, [0.0, -0.0, 0.0, -0.0]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "x", "scale_code", "values"), MX_BLOCKS)
def test_mx_hand_blocks(name: str, x: np.ndarray, scale_code: int, values: list[float], backend: str) -> None:
    q = lowbit.quantize(x, name, backend=backend)
    np.testing.assert_array_equal(q.scale_codes, [[scale_code]])
    assert q.scales[0, 0] == 2.0 ** (scale_code - 127)
    want = np.zeros_like(x)
    want[0, : len(values)] = values
    assert_same_bits(want, lowbit.dequantize(q, backend=backend))
    assert_same_bits(want, _fq(x, name, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mx_nan_and_inf_blocks(backend: str) -> None:
    x = np.ones((3, 32), np.float32)
    x[0, 5] = np.nan
    x[1, 7] = -np.inf
    q = lowbit.quantize(x, MXFP4, backend=backend)
    # OCP: E8M0 code 255 is NaN; a NaN anywhere makes the block NaN; the spec default
    # also makes an Inf block NaN (inf_block="nan")
    np.testing.assert_array_equal(q.scale_codes, [[255], [255], [125]])  # 1.0: X = 2^-2
    y = lowbit.dequantize(q, backend=backend)
    assert np.isnan(y[:2]).all() and (y[2] == 1.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mx_partial_block_is_its_own_block(backend: str) -> None:
    # 40 = 32 + 8: the last block holds 8 elements and gets its own scale
    x = np.full((1, 40), 0.5, np.float32)
    x[0, 0] = 6.0
    x[0, 32] = 0.75
    q = lowbit.quantize(x, MXFP4, backend=backend)
    np.testing.assert_array_equal(q.scale_codes, [[127, 124]])  # 0.75: floor(log2) = -1, X = 2^-3
    assert _fq(x, MXFP4, backend)[0, 33] == 0.5  # 0.5 / 2^-3 = 4 exactly


# ---------------------------------------------------------------------------
# NVFP4 (formats.md): ts = fl32(amax_tensor / 2688), s = RNE_e4m3(amax_b / (6 ts))
# clamped to [2^-9, 448], elements RNE of x / (s ts), dequant one rounding of q s ts


def _nvfp4_blocks(*blocks: list[float]) -> np.ndarray:
    x = np.zeros((1, 16 * len(blocks)), np.float32)
    for i, b in enumerate(blocks):
        x[0, 16 * i : 16 * i + len(b)] = b
    return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_two_level_hand_example(backend: str) -> None:
    x = _nvfp4_blocks(
        # 336 = 2688 / 8: ts = 2^-3 exactly; s = 336 / (6 / 8) = 448 (code 0.1111.110)
        [336.0],
        # amax 3: s = 3 / 0.75 = 4 (0.1001.000); x / (s ts) = x / 0.5:
        # 3 -> 6; 1 -> 2; 0.25 -> 0.5; 0.125 -> 0.25 tie -> 0; 0.375 -> 0.75 tie -> 1 (0.5);
        # -1.25 -> -2.5 tie -> -2 (-1.0); 0.7 -> 1.4 -> 1.5 (0.75)
        [3.0, 1.0, 0.25, 0.125, 0.375, -1.25, 0.7],
        # amax 5.625: s = 7.5 (0.1001.111), s ts = 0.9375; 2.34375 / 0.9375 = 2.5 tie -> 2 (1.875)
        [5.625, 2.34375],
        # amax 1: 1 / 0.75 = 1.333.. -> 1.375 (0.0111.011), s ts = 0.171875;
        # 1 / 0.171875 = 5.82 -> 6 (1.03125); 0.5 / 0.171875 = 2.91 -> 3 (0.515625)
        [1.0, 0.5],
        # all zeros: scale 0 (nvfp4 uses zero_block="zero_scale") and signed zeros
        [0.0, -0.0],
    )
    q = lowbit.quantize(x, "nvfp4", backend=backend)
    assert q.tensor_scale == 0.125
    np.testing.assert_array_equal(q.scale_codes, [[0x7E, 0x48, 0x4F, 0x3B, 0x00]])
    np.testing.assert_array_equal(q.scales, [[448.0, 4.0, 7.5, 1.375, 0.0]])
    want = _nvfp4_blocks(
        [336.0],
        [3.0, 1.0, 0.25, 0.0, 0.5, -1.0, 0.75],
        [5.625, 1.875],
        [1.03125, 0.515625],
        [0.0, -0.0],
    )
    assert_same_bits(want, lowbit.dequantize(q, backend=backend))
    assert_same_bits(want, _fq(x, "nvfp4", backend))
    # and the packed codes: element 2i in the low nibble; 3 -> 6 is 0b0111, 1 -> 2 is 0b0100
    assert q.codes[0, 8] == 0b0100_0111


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_tensor_scale_rounds_to_float32(backend: str) -> None:
    # 1 / 2688 is not a float32 midpoint, so numpy's float64 -> float32 is one rounding
    q = lowbit.quantize(_nvfp4_blocks([1.0, 0.5]), "nvfp4", backend=backend)
    assert q.tensor_scale == float(np.float32(1 / 2688))
    # an all-tiny tensor: 2^-149 / 2688 underflows float32, the tensor scale stays 2^-149
    assert lowbit.quantize(_nvfp4_blocks([2.0**-149]), "nvfp4", backend=backend).tensor_scale == 2.0**-149


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_reciprocal_tie_exact_versus_torchao(backend: str) -> None:
    # formats.md: x = 18.75 with s = 7.5: 18.75 / 7.5 = 2.5 is a tie -> 2 -> 15; torchao
    # multiplies by fl32(1 / 7.5) = 0.13333334, gets 2.5000002 and rounds to 3 -> 22.5
    x = _nvfp4_blocks([45.0, 18.75], [2688.0])  # 45 / 6 = 7.5; the 2688 block makes ts = 1
    assert _fq(x, "nvfp4", backend)[0, 1] == 15.0
    assert _fq(x[:, :16], "nvfp4@torchao", backend)[0, 1] == 22.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_subnormal_scale_ties(backend: str) -> None:
    # ts = 1 (the 2688 block). amax_b = 9 * 2^-9: amax_b / 6 = 1.5 * 2^-9 is the tie
    # between the E4M3 subnormals 1 * 2^-9 and 2 * 2^-9 -> the even one, s = 2^-8
    # (code 0.0000.010); 9 * 2^-9 / 2^-8 = 4.5 is an E2M1 tie -> 4 -> 8 * 2^-9.
    # A second pass sees amax_b = 8 * 2^-9: s = RNE(1.33 * 2^-9) = 2^-9, and 8
    # saturates to 6: nvfp4 fake_quant is not idempotent where scales are subnormal.
    x = _nvfp4_blocks([2688.0], [9 * 2.0**-9])
    q = lowbit.quantize(x, "nvfp4", backend=backend)
    assert q.scale_codes[0, 1] == 0b0000_0010
    y = lowbit.dequantize(q, backend=backend)
    assert y[0, 16] == 8 * 2.0**-9
    assert _fq(y, "nvfp4", backend)[0, 16] == 6 * 2.0**-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_nan_block(backend: str) -> None:
    x = _nvfp4_blocks([1.0, np.nan], [2.0, 1.0])
    q = lowbit.quantize(x, "nvfp4", backend=backend)
    assert q.scale_codes[0, 0] == 0x7F  # E4M3 NaN (S.1111.111)
    y = lowbit.dequantize(q, backend=backend)
    assert np.isnan(y[0, :16]).all() and y[0, 16] == 2.0


# ---------------------------------------------------------------------------
# stochastic rounding (spec.py: up with probability floor(frac * 2^sr_bits) / 2^sr_bits)

SR = evolve(FP4_E2M1, name="fp4_e2m1_sr", rounding="stochastic")


def test_stochastic_mean_over_elements_and_seeds_approaches_the_input() -> None:
    # 1.125 lies 1/4 of the way from 1.0 to 1.5: P(up) = floor(0.25 * 256) / 256 = 1/4,
    # so the expected value is exactly 1.125. Per draw sd = 0.5 * sqrt(3/16) = 0.2165.
    n = 1 << 14
    y = _fq(np.full((1, n), 1.125, np.float32), SR, "numba", seed=11)
    assert set(np.unique(y).tolist()) == {1.0, 1.5}
    assert abs(float(y.mean(dtype=np.float64)) - 1.125) < 5 * 0.2165 / np.sqrt(n)
    # one element, many seeds: the same law
    x = np.array([[1.125, -2.75, 0.3]], np.float32)  # -2.75: 3/4 from 2 to 3; 0.3: 0.6 from 0 to 0.5
    draws = np.stack([_fq(x, SR, "numba", seed=s)[0] for s in range(2000)])
    p = np.array([64 / 256, 192 / 256, 153 / 256])  # floor(frac * 256) / 256
    lo, gap = np.array([1.0, -2.0, 0.0]), np.array([0.5, -1.0, 0.5])
    expected = lo + gap * p
    sd = np.abs(gap) * np.sqrt(p * (1 - p) / len(draws))
    assert (np.abs(draws.mean(axis=0) - expected) < 5 * sd).all()
    assert (np.abs(expected - x[0]) <= np.abs(gap) / 256).all()  # the input, to within 2^-8 of a gap


def test_stochastic_probability_is_truncated_to_sr_bits() -> None:
    # sr_bits = 1: 1.2 (frac 0.4) has floor(0.8) / 2 = 0, never up; 1.25 (frac 0.5) half the time
    one_bit = evolve(SR, name="fp4_e2m1_sr1", sr_bits=1)
    for backend in BACKENDS:
        assert (_fq(np.full((1, 256), 1.2, np.float32), one_bit, backend, seed=3) == 1.0).all()
    y = _fq(np.full((1, 4096), 1.25, np.float32), one_bit, "numba", seed=3)
    assert abs(float((y == 1.5).mean()) - 0.5) < 5 * 0.5 / 64


def test_stochastic_rounding_is_reproducible_with_a_seed() -> None:
    x = np.random.default_rng(0).standard_normal((4, 40)).astype(np.float32) * 3
    y = {b: _fq(x, SR, b, seed=42) for b in BACKENDS}
    assert_same_bits(y["reference"], y["numba"])
    assert_same_bits(y["numba"], _fq(x, SR, "numba", seed=42))
    assert not np.array_equal(y["numba"], _fq(x, SR, "numba", seed=43))
    q = lowbit.quantize(x, SR, seed=42)
    assert q.seed == 42
    assert_same_bits(y["numba"], lowbit.dequantize(q))
    assert_same_bits(y["numba"], _fq(x, evolve(SR, sr_seed=42), "numba"))  # the spec's seed
    block = evolve(MXFP4, name="mxfp4_sr", element=SR)
    assert_same_bits(_fq(x, block, "reference", seed=5), _fq(x, block, "numba", seed=5))
