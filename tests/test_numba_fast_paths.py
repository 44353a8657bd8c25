"""The Numba fast paths (float32 kernels) against the reference and the generic kernels.

Every format that takes a fast path is compared with ``rtol=0, atol=0`` (NaN
canonicalised, signed zeros distinguished): with the reference backend on small
adversarial arrays (every code value, every midpoint and its float32 neighbours,
zeros, subnormals, huge values, Inf and NaN, blocks whose ties survive scaling,
scale-rounding ties, partial blocks) and with the generic Numba kernels (forced by
disabling the fast paths) on a larger array that also runs the kernels on several
threads. Which path each built-in format takes is pinned down, so a change of
selection shows up here. Timing lives in benchmarks/, not here.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import pytest

import lowbit
from lowbit.emulate import _numba_fast, numba_backend
from lowbit.formats.spec import BlockFormat, FloatFormat, IntFormat, TensorScale, decode_exact, evolve
from lowbit.plugins.builtin_formats import (
    BUILTIN_FORMATS,
    FP4_E1M2,
    FP4_E2M1,
    FP4_E3M0,
    INT4,
    ML_DTYPES_PRESETS,
    MXFP4,
    NVFP4,
)

TINY = np.float32(2.0**-149)
FLT_MAX = np.finfo(np.float32).max
# NaNs with a sign, a payload, a signalling bit: every output NaN is the canonical one
ODD_NANS = np.array([0xFFC00000, 0x7FC12345, 0x7F800001, 0xFFFFFFFF], np.uint32).view(np.float32)

EXPECTED_PATH = {
    **{f"fp{b}_{em}": "minifloat" for b, em in (
        (4, "e2m1"), (4, "e3m0"), (4, "e1m2"), (6, "e2m3"), (6, "e3m2"), (8, "e4m3"), (8, "e5m2"))},
    "fp8_e4m3@ml_dtypes": "minifloat",
    "fp8_e5m2@ml_dtypes": "minifloat",
    "int4": "integer",
    "int8": "integer",
    **{n: "pow2_block" for n in (
        "mxfp4", "mxfp4_ceil", "mxfp4_even", "mxfp4_rceil", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2")},
    "nvfp4": "float_scale_block",
    # torchao's float32 order of operations has its own (generic) kernels
    **{n: None for n in (
        "mxfp4@torchao", "mxfp4_rceil@torchao", "mxfp6_e2m3@torchao", "mxfp8_e4m3@torchao", "nvfp4@torchao",
        "nvfp4_2level@torchao")},
    # formatbooks have their own kernels (lowbit.emulate._numba_dialect)
    **{n: None for n in ("dialectfp4", "dialectfp4_mse", "block_dialect_16", "block_dialect_32", "block_dialect_64", "semantic_dialect",
                       "semantic_dialect_16")},
}  # fmt: skip

E5M2_SCALE = FloatFormat(name="e5m2_scale", ebits=5, mbits=2, special="ieee")
# Configurations the built-ins do not cover but the fast paths accept.
EXTRA = (
    evolve(NVFP4, name="nvfp4_single_level", tensor_scale=None, zero_block="min_scale"),
    BlockFormat(
        name="e1m2_e5m2_scale",
        element=FP4_E1M2,
        block_size=32,
        scale=E5M2_SCALE,
        scale_rule="nearest",
        scale_min=2.0**-16,
        scale_max=57344.0,
        tensor_scale=TensorScale(),
    ),
    evolve(MXFP4, name="mx_e4m3_overflow_nan_16", element=ML_DTYPES_PRESETS[0], block_size=16),
    evolve(MXFP4, name="mx_e5m2_overflow_inf", element=ML_DTYPES_PRESETS[1]),
    evolve(MXFP4, name="mx_e3m0_ceil", element=FP4_E3M0, scale_rule="ceil"),
    FloatFormat(name="e5m10", ebits=5, mbits=10, special="ieee"),
    evolve(INT4, name="int4_symmetric", symmetric=True),
    IntFormat(name="uint4", int_bits=4, signed=False),
)
FAST = tuple(s for s in (*BUILTIN_FORMATS, *EXTRA) if _numba_fast.path_of(s, np.float32, "float32"))


def ids(specs: tuple[Any, ...]) -> list[str]:
    return [s.name for s in specs]


# ---------------------------------------------------------------------------
# path selection


def test_every_builtin_format_is_classified() -> None:
    assert sorted(EXPECTED_PATH) == sorted(s.name for s in BUILTIN_FORMATS)


@pytest.mark.parametrize("spec", BUILTIN_FORMATS, ids=ids(BUILTIN_FORMATS))
def test_path_of_builtin(spec: Any) -> None:
    expected = EXPECTED_PATH[spec.name]
    assert _numba_fast.path_of(spec, np.float32, "float32") == expected
    assert _numba_fast.path_of(spec, np.float32, None) == expected  # quantize
    for dtype, out in ((np.float64, "float64"), (np.float32, "float16"), (np.float32, "bfloat16"), (np.float64, None)):
        assert _numba_fast.path_of(spec, dtype, out) is None


@pytest.mark.parametrize("spec", EXTRA, ids=ids(EXTRA))
def test_path_of_extra(spec: Any) -> None:
    assert _numba_fast.path_of(spec, np.float32, "float32") is not None


@pytest.mark.parametrize(
    "spec",
    [
        evolve(FP4_E2M1, name="away", rounding="nearest_away"),
        evolve(FP4_E2M1, name="trunc", rounding="toward_zero"),
        evolve(FP4_E2M1, name="sr", rounding="stochastic", sr_seed=1),
        evolve(FP4_E2M1, name="raise", nan="raise"),
        evolve(FP4_E2M1, name="flush", subnormal="flush"),
        evolve(FP4_E2M1, name="unsigned", signed=False),
        FloatFormat(name="fnuz", ebits=4, mbits=3, special="fnuz"),
        FloatFormat(name="bf16_like", ebits=8, mbits=7, special="ieee"),
        evolve(MXFP4, name="block24", block_size=24),
        evolve(MXFP4, name="mx_away", element=evolve(FP4_E2M1, rounding="nearest_away")),
        evolve(NVFP4, name="nv_block8", block_size=8),
        evolve(NVFP4, name="nv_fp6", element=FloatFormat(name="e2m3", ebits=2, mbits=3)),
        evolve(NVFP4, name="nv_min_not_a_value", scale_min=0.003),
    ],
    ids=lambda s: s.name,
)
def test_generic_only(spec: Any) -> None:
    assert _numba_fast.path_of(spec, np.float32, "float32") is None


# ---------------------------------------------------------------------------
# adversarial data


def neighbours(values: np.ndarray) -> np.ndarray:
    """float32 values (rounded from float64) with their two float32 neighbours."""
    v = np.asarray(values, np.float64).astype(np.float32)
    return np.concatenate([v, np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf))])


def magnitudes(fmt: Any, limit: int = 400) -> np.ndarray:
    """The finite magnitudes of an element format (a spread-out subset of at most ``limit``)."""
    if isinstance(fmt, IntFormat):
        mags = np.arange(0, fmt.max_int + 1, dtype=np.float64)
    else:
        codes = range(1 << (fmt.bits - int(fmt.signed)))
        vals = (decode_exact(fmt, c) for c in codes)
        mags = np.unique([float(v) for v in vals if not (isinstance(v, float) and not math.isfinite(v))])
    if mags.size > limit:
        mags = mags[np.linspace(0, mags.size - 1, limit).astype(int)]
    return np.abs(mags)


def grid_probe(fmt: Any) -> np.ndarray:
    """Positive probes of one element format's grid: values, midpoints (ties), the tie
    above the maximum, twice the maximum, half and a quarter of the smallest value."""
    mags = magnitudes(fmt)
    mids = (mags[:-1] + mags[1:]) / 2
    top = mags[-1] + (mags[-1] - mags[-2]) / 2
    small = mags[1] * np.array([0.5, 0.25, 0.75])
    return neighbours(np.concatenate([mags, mids, [top, 2 * mags[-1]], small]))


def element_probe(fmt: Any) -> np.ndarray:
    special = np.array([0.0, TINY, 2.0**-126, 2.0**-127, FLT_MAX, 1e30, np.inf, np.nan], np.float32)
    pos = np.concatenate([grid_probe(fmt), special])
    x = np.concatenate([pos, -pos, [np.float32(-0.0)], ODD_NANS])
    return x.astype(np.float32).reshape(1, -1)


def rows_of_blocks(blocks: list[np.ndarray], bs: int, per_row: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``per_row`` blocks plus a partial block of 5 random values at the end."""
    while len(blocks) % per_row:
        blocks.append(np.zeros(bs, np.float32))
    rows = []
    for r in range(0, len(blocks), per_row):
        tail = rng.standard_normal(5).astype(np.float32)
        rows.append(np.concatenate([*blocks[r : r + per_row], tail]))
    return np.stack(rows).astype(np.float32)


def special_blocks(bs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """All-zero (with -0), NaN, +-Inf, NaN and Inf, subnormal-only, huge and one-value blocks."""
    out = []
    z = np.zeros(bs, np.float32)
    z[1::3] = -0.0
    out.append(z)
    for bad in ([np.nan], [np.inf], [-np.inf], [np.nan, np.inf], ODD_NANS):
        b = rng.standard_normal(bs).astype(np.float32)
        b[: len(bad)] = bad
        out.append(rng.permutation(b))
    out.append((rng.integers(1, 1 << 20, bs) * TINY * rng.choice([-1, 1], bs)).astype(np.float32))
    out.append((rng.uniform(0.5, 1, bs) * FLT_MAX * rng.choice([-1, 1], bs)).astype(np.float32))
    one = np.zeros(bs, np.float32)
    one[bs // 2] = -3.0
    out.append(one)
    return out


def pow2_probe(spec: BlockFormat, rng: np.random.Generator) -> np.ndarray:
    """Blocks whose element ties survive the power-of-two scaling, at many binades."""
    bs, elem = spec.block_size, spec.element
    grid = grid_probe(elem).astype(np.float64)
    blocks = []
    for j in (-140, -133, -127, -126, -120, -30, -1, 0, 3, 60, 110, 120, 125):
        for lead in (elem.max_value, 1.0, 1.5, 1.75 + 2.0**-20, np.nextafter(2.0, 0.0), 6.5):
            vals = np.concatenate([[lead], rng.choice(grid, bs - 1)]) * 2.0**j
            with np.errstate(over="ignore"):
                blocks.append((vals * rng.choice([-1, 1], bs)).astype(np.float32))
    blocks += special_blocks(bs, rng)
    return rows_of_blocks(blocks, bs, 4, rng)


def float_scale_probe(spec: BlockFormat, ts_exact: bool, rng: np.random.Generator) -> np.ndarray:
    """Blocks at every (or every few) scale value s and at the ties between two scale
    values, whose elements sit on, between and next to the grid of s * ts."""
    bs, elem, sf = spec.block_size, spec.element, spec.scale
    emax = elem.max_value
    target = emax * spec.scale_max
    amax_t = target * 2.0**-3 if ts_exact else 1234.5678
    ts = amax_t / target if spec.tensor_scale is not None else 1.0
    svals = np.array([float(decode_exact(sf, c)) for c in range(1 << (sf.bits - 1))])
    svals = svals[(svals >= spec.scale_min) & (svals <= spec.scale_max)]
    step = max(1, svals.size // 40)
    grid = grid_probe(elem).astype(np.float64)
    blocks = []
    for k, s in enumerate(svals[::step]):
        nxt = svals[min(k * step + 1, svals.size - 1)]
        for lead in (s * emax, (s + nxt) / 2 * emax, np.nextafter((s + nxt) / 2 * emax, 0)):
            vals = np.concatenate([[lead], rng.choice(grid, bs - 1) * s]) * ts
            blocks.append(neighbours(vals)[rng.permutation(3 * bs)[:bs]] * rng.choice([-1, 1], bs).astype(np.float32))
            blocks[-1][0] = np.float32(lead * ts)
    blocks += special_blocks(bs, rng)
    x = rows_of_blocks(blocks, bs, 4, rng)
    x = np.where(np.isfinite(x), np.clip(x, -amax_t, amax_t), x)  # amax_t is the finite tensor amax
    x[0, 1] = np.float32(amax_t)
    return x


def probes(spec: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    wide = (rng.standard_normal((3, 96)) * 2.0 ** rng.integers(-40, 40, (3, 96))).astype(np.float32)
    if not isinstance(spec, BlockFormat):
        return [element_probe(spec), wide]
    if isinstance(spec.scale, FloatFormat):
        return [float_scale_probe(spec, True, rng), float_scale_probe(spec, False, rng), wide]
    return [pow2_probe(spec, rng), wide]


# ---------------------------------------------------------------------------
# comparisons


def bit_patterns(a: np.ndarray | None, canonical_nan: bool) -> np.ndarray | None:
    """Bit patterns of floats (signed zeros stay apart), every NaN mapped to one value
    if ``canonical_nan``; other arrays as they are."""
    if a is None or a.dtype.kind != "f":
        return a
    ints = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    bits = a.view(ints).astype(np.uint64)
    return np.where(np.isnan(a), np.uint64(2**64 - 1), bits) if canonical_nan else bits


def assert_same(actual: Any, expected: Any, what: str, canonical_nan: bool) -> None:
    a, e = bit_patterns(actual, canonical_nan), bit_patterns(expected, canonical_nan)
    if e is None:
        assert a is None, f"{what}: expected None"
        return
    assert a is not None and a.shape == e.shape and a.dtype == e.dtype, what
    bad = np.argwhere(a != e)
    assert bad.size == 0, (
        f"{what}: {len(bad)} of {a.size} differ, first at {bad[0].tolist()}: "
        f"got {actual[tuple(bad[0])]!r}, expected {expected[tuple(bad[0])]!r}"
    )


def assert_same_results(
    spec: Any, x: np.ndarray, got: dict[str, Any], want: dict[str, Any], canonical_nan: bool = True
) -> None:
    for k in want:
        if k == "tensor_scale":
            g, w = got[k], want[k]
            assert g == w or (g is not None and w is not None and math.isnan(g) and math.isnan(w)), k
        else:
            assert_same(got[k], want[k], f"{spec.name} {k} for x of shape {x.shape}", canonical_nan)


def results(spec: Any, x: np.ndarray, backend: str) -> dict[str, Any]:
    q = lowbit.quantize(x, spec, backend=backend)
    return {
        "codes": q.codes,
        "scale_codes": q.scale_codes,
        "scales": q.scales,
        "tensor_scale": q.tensor_scale,
        "nan_mask": q.nan_mask,
        "fake_quant": lowbit.fake_quant(x, spec, backend=backend),
    }


@pytest.mark.parametrize("spec", FAST, ids=ids(FAST))
def test_fast_path_equals_reference(spec: Any) -> None:
    for x in probes(spec):
        assert_same_results(spec, x, results(spec, x, "numba"), results(spec, x, "reference"))


def large_input(spec: Any) -> np.ndarray:
    """About 2^20 elements (so the kernels run on several threads): random values over
    many binades, the probes tiled in, and NaN, Inf and zero blocks scattered."""
    rng = np.random.default_rng(7)
    rows, n = 1024, 1032  # 1032 = 64 * 16 + 8: every row ends in a partial block
    x = rng.standard_normal((rows, n)) * 2.0 ** rng.integers(-30, 30, (rows, 1))
    x[rng.random((rows, n)) < 0.01] *= 2.0**20
    x = x.astype(np.float32)
    probe = probes(spec)[0].reshape(-1)
    x.reshape(-1)[: probe.size * 200 : 200] = probe
    for r, c in zip(rng.integers(0, rows, 30), rng.integers(0, n - 32, 30)):
        x[r, c : c + 32] = rng.choice([0.0, -0.0, np.nan, np.inf, -np.inf])
    x.reshape(-1)[rng.integers(0, x.size, 40)] = np.resize(ODD_NANS, 40)
    return x


@pytest.mark.parametrize("spec", FAST, ids=ids(FAST))
def test_fast_path_equals_generic(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x = large_input(spec)
    got = results(spec, x, "numba")
    monkeypatch.setattr(_numba_fast, "path_of", lambda *args: None)
    # the same backend: NaN bit patterns must agree too
    assert_same_results(spec, x, got, results(spec, x, "numba"), canonical_nan=False)


@pytest.mark.parametrize("name", ["fp8_e4m3", "int4", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (1, 1), (2, 15), (2, 16), (1, 33)])
def test_small_and_empty_shapes(name: str, shape: tuple[int, int]) -> None:
    spec = lowbit.formats.get(name)
    x = (np.random.default_rng(3).standard_normal(shape) * 10).astype(np.float32)
    assert_same_results(spec, x, results(spec, x, "numba"), results(spec, x, "reference"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 70001])
def test_finite_amax(size: int, dtype: Any) -> None:
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 1e3).astype(dtype)
    if size > 2:
        x[rng.integers(0, size, 2)] = [np.inf, np.nan]
    finite = x[np.isfinite(x)]
    assert numba_backend._finite_amax(x) == (float(np.max(np.abs(finite))) if finite.size else 0.0)
