"""The float32 fast path of the Formatbook kernels against the reference and the generic kernels.

Compared with ``rtol=0, atol=0`` (float32 bit patterns, so NaN bits and signed
zeros count; codes, scale codes, scale values, dialect ids and the NaN mask
exactly): with the reference backend on adversarial blocks (every level boundary
and element midpoint with its float32 neighbours, sparse blocks where counts and
error sums tie, zero, subnormal, huge and exponent-clamped blocks, NaN and Inf
blocks, a partial last block), and with the generic Numba kernels (forced by
disabling the fast path) on about a million elements, enough to run the parallel
kernels on several threads. Timing lives in benchmarks/bench_dialects.py.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import lowbit
from lowbit.emulate import SubFormatbooks, _numba_dialect
from lowbit.emulate import reference_dialect as rd
from lowbit.emulate._numba_fast import PARALLEL_MIN
from lowbit.formats import evolve, get
from lowbit.formats.spec import E8M0, Formatbook

DIALECTFP4 = get("dialectfp4")
LUT = evolve(DIALECTFP4, name="dialectfp4_lut", selection="lut")
FAST_SPECS = [
    DIALECTFP4,
    evolve(DIALECTFP4, name="dialectfp4_truncate", fixed_point="truncate"),
    evolve(DIALECTFP4, name="dialectfp4_higher_id", pair_tie="higher_id"),
    evolve(DIALECTFP4, name="dialectfp4_b16", block_size=16),
    evolve(DIALECTFP4, name="dialectfp4_b64", block_size=64),
    evolve(DIALECTFP4, name="dialectfp4_b48", block_size=48),  # weighted_count's loop (3 chunks)
    LUT,
    evolve(LUT, name="dialectfp4_lut_truncate", fixed_point="truncate"),
    evolve(LUT, name="dialectfp4_lut_b64", block_size=64),
]
FAST_SPECS += [get("semantic_dialect")]  # the learned LUT formatbook


def _ids(specs: list[Formatbook]) -> list[str]:
    return [s.name for s in specs]


def _adversarial(spec: Formatbook, seed: int) -> np.ndarray:
    """Rows of blocks (k = 0 before scaling) built from the critical scaled magnitudes
    (fewer for lut: its reference tries every dialect in exact arithmetic)."""
    rng = np.random.default_rng(seed)
    step = spec.grid / 4  # half a level: level boundaries (rint) and element midpoints
    top = spec.grid_units * spec.grid
    grid = np.arange(int(top / step) + 1, dtype=np.float32) * np.float32(step)
    crit = np.concatenate([grid, np.nextafter(grid, np.float32(0)), np.nextafter(grid, np.float32(np.inf))])
    crit = crit[crit < top].astype(np.float32)
    high = crit[crit >= top / 2]  # possible block maxima at k = 0
    bs = spec.block_size
    blocks = []
    for _ in range(193 if spec.selection == "two_stage" else 53):  # + 7 extra blocks: rows of 4 blocks
        blk = np.zeros(bs, np.float32)
        dense = rng.random() < 0.5
        n = bs if dense else int(rng.integers(1, 5))  # sparse blocks: ties in counts and sums
        amax = rng.choice(high)
        blk[rng.choice(bs, n, replace=False)] = rng.choice(crit[crit <= amax], n)
        blk[rng.integers(bs)] = amax
        blk *= rng.choice([-1, 1], bs).astype(np.float32)
        blk *= np.float32(2.0 ** int(rng.integers(-12, 13)))
        blocks.append(blk)
    extra = [
        np.zeros(bs, np.float32),
        np.full(bs, -0.0, np.float32),
        np.full(bs, 2.0**-149, np.float32) * rng.choice([-1, 1], bs).astype(np.float32),  # k clamped low
        rng.standard_normal(bs).astype(np.float32) * np.float32(2.0**-20),  # k clamped low
        rng.uniform(-3e38, 3e38, bs).astype(np.float32),  # k clamped high: saturation
        rng.standard_normal(bs).astype(np.float32) * np.float32(2.0**30),
        np.concatenate([[np.float32(7.0)], np.full(bs - 1, 2.0**-140, np.float32)]),  # products below 2^-126
    ]
    x = np.concatenate(blocks + extra).reshape(-1, 4 * bs)
    x[0, 3] = np.nan
    x[1, 5] = -np.inf
    x[2, bs + 1] = np.inf
    return x


def _same(spec: Formatbook, x: np.ndarray, backend: str) -> None:
    """Numba (fast path) equals ``backend`` on x (fake_quant and quantize)."""
    got = lowbit.fake_quant(x, spec, backend="numba")
    want = lowbit.fake_quant(x, spec, backend=backend)
    assert got.dtype == want.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), spec.name
    qg = lowbit.quantize(x, spec, backend="numba")
    qw = lowbit.quantize(x, spec, backend=backend)
    for name in ("codes", "scale_codes", "dialect_ids"):
        assert np.array_equal(getattr(qg, name), getattr(qw, name)), (spec.name, name)
    assert np.array_equal(qg.scales, qw.scales, equal_nan=True), spec.name
    assert (qg.nan_mask is None) == (qw.nan_mask is None)
    if qg.nan_mask is not None:
        assert np.array_equal(qg.nan_mask, qw.nan_mask)


@pytest.mark.parametrize("spec", FAST_SPECS, ids=_ids(FAST_SPECS))
def test_specs_take_the_fast_path(spec: Formatbook) -> None:
    x = np.zeros((1, spec.block_size), np.float32)
    assert _numba_dialect._fast(spec, x, "float32", None) is not None
    assert _numba_dialect._fast(spec, x, None, None) is not None
    assert _numba_dialect._fast(spec, x.astype(np.float64), "float32", None) is None
    assert _numba_dialect._fast(spec, x, "float16", None) is None


def test_other_specs_take_the_generic_kernels() -> None:
    x = np.zeros((1, 32), np.float32)
    for spec in (
        get("dialectfp4_mse"),
        evolve(DIALECTFP4, name="e8m0", scale=E8M0),  # 2^(s - k) leaves the float32 range
        evolve(DIALECTFP4, name="b24", block_size=24),
        ALTERNATING,  # its first pair's count changes at more levels than the fast path takes
    ):
        assert _numba_dialect._fast(spec, x, "float32", None) is None, spec.name


# pair (0, 1) of DialectFP4 replaced by two dialects that alternate below their shared maximum
ALTERNATING = evolve(
    DIALECTFP4,
    name="alternating",
    dialects=((0, 1, 3, 5, 7, 9, 11, 15), (0, 2, 4, 6, 8, 10, 12, 15), *DIALECTFP4.dialects[2:]),
)


def test_alternating_pairs_still_match_the_reference() -> None:
    _same(ALTERNATING, _adversarial(ALTERNATING, seed=5)[:16], "reference")


TWO_STAGE = [s for s in FAST_SPECS if s.selection == "two_stage"]


@pytest.mark.parametrize("spec", TWO_STAGE, ids=_ids(TWO_STAGE))
def test_count_thresholds_give_the_beneficial_range_difference(spec: Formatbook) -> None:
    """At every half level and its float32 neighbours (scaled magnitudes u in level units),
    the weights of the passed count thresholds sum to (level in the first dialect's
    beneficial range) - (in the second's), with the level and the ranges taken from the
    reference's definitions."""
    cut, weight, *_ = _numba_dialect._fast_tables(spec)
    half = np.arange(2 * spec.levels + 2, dtype=np.float32) / np.float32(2)
    us = np.unique(np.concatenate([half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(np.inf))]))
    step = Fraction(spec.grid) / 2
    ranges = rd.beneficial_ranges(spec)
    for p in range(0, len(spec.dialects), 2):
        for u in us:
            lv = rd.fixed_point_level(spec, Fraction(float(u)) * step)
            inside = [any(lo <= lv * step < hi for lo, hi in ranges[d]) for d in (p, p + 1)]
            assert int(weight[p][u > cut[p]].sum()) == int(inside[0]) - int(inside[1]), (p, float(u))


@pytest.mark.parametrize("spec", FAST_SPECS, ids=_ids(FAST_SPECS))
def test_fast_path_equals_reference_on_adversarial_blocks(spec: Formatbook) -> None:
    x = _adversarial(spec, seed=len(spec.name))
    _same(spec, x, "reference")
    # a partial last block (generic) next to full ones (fast)
    _same(spec, np.ascontiguousarray(x[:8, : 3 * spec.block_size + 5]), "reference")


@pytest.mark.parametrize("spec", FAST_SPECS, ids=_ids(FAST_SPECS))
def test_fast_path_equals_generic_on_a_million_elements(spec: Formatbook, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    rows, n = 1024, 1024 + spec.block_size // 2  # partial last blocks
    x = (rng.standard_normal((rows, n)) * np.exp(rng.standard_normal((rows, 1)) * 4)).astype(np.float32)
    x[rng.integers(rows, size=50), rng.integers(n, size=50)] = np.nan
    x[rng.integers(rows, size=50), rng.integers(n, size=50)] = np.inf
    x[rng.integers(rows, size=50), rng.integers(n, size=50)] = -np.inf
    x[7] = 0.0
    x[8] = -0.0
    assert x.size >= PARALLEL_MIN
    # lut: sub-formatbooks of 1, 2 and 5 dialects, one per row (the penalty rows of the fast path)
    nd = len(spec.dialects)
    groups = [[nd - 1], [0, 3], [1, 2, 5, 6, 9]]
    sb = SubFormatbooks.from_dialects(groups, nd, ids=rng.integers(0, 3, (rows, 1))) if spec.selection == "lut" else None
    fast: dict[str, Any] = {
        "fq": lowbit.fake_quant(x, spec, backend="numba", subbooks=sb),
        "q": lowbit.quantize(x, spec, backend="numba", subbooks=sb),
    }
    monkeypatch.setattr(_numba_dialect, "_fast", lambda *args: None)
    generic_fq = lowbit.fake_quant(x, spec, backend="numba", subbooks=sb)
    generic_q = lowbit.quantize(x, spec, backend="numba", subbooks=sb)
    assert np.array_equal(fast["fq"].view(np.uint32), generic_fq.view(np.uint32))
    for name in ("codes", "scale_codes", "dialect_ids", "nan_mask"):
        assert np.array_equal(getattr(fast["q"], name), getattr(generic_q, name)), name
    assert np.array_equal(fast["q"].scales, generic_q.scales, equal_nan=True)


def test_saturating_lut_sums_keep_the_argmin() -> None:
    # semantic_dialect's largest ERR entry is 63^2 = 3969 (a cell centre at 127/16 against a
    # dialect whose maximum is 4): a block of 32 such magnitudes sums to 127008 under that
    # dialect, past where the fast path's 16-bit sums saturate (65535); the least sum is far
    # below, so the choice and the codes still equal the exact reference
    spec = get("semantic_dialect")
    x = np.full((3, 32), 7.95, np.float32)
    x[1, ::2] = -7.95
    x[2, :16] = 4.6
    assert any(r[-1] == 16 for r in spec.dialects)  # a dialect ending at 4 exists
    _same(spec, x, "reference")
