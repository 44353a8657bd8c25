"""Formatbooks (BlockDialect, arXiv 2501.01144): the DialectFP4 table, the two-stage
selection on hand-built blocks, lookup-table selection against exhaustive least
squares, Numba against the reference, dialect ids through quantize/dequantize.
Expected values are derived by hand in the comments, not taken from the code."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.emulate import reference_dialect
from lowbit.formats import E5M0, E8M0, Formatbook, dialect_histogram, evolve, get

# Transcribed from the DialectFP4 table (values, not half-units): id -> (idx6, idx7).
# Index 0..5 are 0, 0.5, 1, 1.5, 2, 3 except dialect 15 (reported idx5 = 2.5).
TABLE = {
    0: (5.5, 7.5), 1: (4.5, 7.5), 2: (5.5, 7.0), 3: (4.5, 7.0),
    4: (5.0, 6.5), 5: (4.0, 6.5), 6: (5.0, 6.0), 7: (4.0, 6.0),
    8: (4.5, 5.5), 9: (3.5, 5.5), 10: (4.5, 5.0), 11: (3.5, 5.0),
    12: (4.0, 4.5), 13: (3.5, 4.5), 14: (3.5, 4.0), 15: (3.0, 4.0),
}  # fmt: skip


def _values(d: int) -> list[float]:
    low = [0, 0.5, 1, 1.5, 2, 2.5] if d == 15 else [0, 0.5, 1, 1.5, 2, 3]
    return low + list(TABLE[d])


DIALECTFP4 = get("dialectfp4")
LUT = evolve(DIALECTFP4, name="dialectfp4_lut", selection="lut")


def _row(vals: list[float], bs: int = 32) -> np.ndarray:
    return np.array([vals + [0.0] * (bs - len(vals))], np.float32)


def test_dialectfp4_table_matches_the_reported_table() -> None:
    spec = DIALECTFP4
    assert len(spec.dialects) == 16 and spec.grid == 0.5 and spec.block_size == 32
    for d in range(16):
        assert [u * spec.grid for u in spec.dialects[d]] == _values(d), d
    assert _values(7) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]  # dialect 7 is E2M1
    assert spec.scale == E5M0 and spec.scale.bits == 5
    assert spec.bits == 4 + 9 / 32  # 4-bit codes, 5-bit exponent + 4-bit id per 32
    assert spec.selection == "two_stage" and get("dialectfp4_mse").selection == "mse"
    assert [get(f"block_dialect_{b}").block_size for b in (16, 32, 64)] == [16, 32, 64]


def test_reported_beneficial_range_example() -> None:
    # pair with maximum 6.5: id 4 has 5.0, id 5 has 4.0; merged values ... 3, 4, 5, 6.5:
    # cell of 5.0 = [(4+5)/2, (5+6.5)/2) = [4.5, 5.75); cell of 4.0 = [3.5, 4.5).
    ranges = reference_dialect.beneficial_ranges(DIALECTFP4)
    assert ranges[4] == [(Fraction(9, 2), Fraction(23, 4))]
    assert ranges[5] == [(Fraction(7, 2), Fraction(9, 2))]
    # pair 14/15 differs in 3.5 (id 14) and 2.5 (id 15): merged 2, 2.5, 3, 3.5, 4
    assert ranges[14] == [(Fraction(13, 4), Fraction(15, 4))]
    assert ranges[15] == [(Fraction(9, 4), Fraction(11, 4))]


# (block, dialect id, first codes). Every block has amax in [4, 8), so k = 0.
TWO_STAGE_CASES = [
    # max 6.5 -> pair (4, 5); 5.0, 5.0 in [4.5, 5.75) -> id 4 counts 2; 4.0 in [3.5, 4.5) -> id 5
    # counts 1; id 4 = {.., 3, 5, 6.5}: 6.5 idx 7, 5.0 idx 6, 4.0 ties 3 (idx 5) / 5 (idx 6) -> even: 6
    ([6.5, 5.0, 5.0, 4.0], 4, [7, 6, 6, 6]),
    # counts 1 (5.0) vs 2 (4.0, 4.0) -> id 5 = {.., 3, 4, 6.5}: 5.0 is below the midpoint 5.25 -> 4.0
    ([6.5, 4.0, 4.0, 5.0], 5, [7, 6, 6, 6]),
    # counts 1 vs 1: pair_tie lower_id -> id 4
    ([6.5, 5.0, 4.0], 4, [7, 6, 6]),
    # 4.5 is the inclusive lower end of id 4's range: 2 vs 1 (4.0) -> id 4; 4.5 in id 4: midpoint of
    # 3 and 5 is 4 < 4.5 -> 5.0 (idx 6)
    ([6.5, 4.5, 4.5, 4.0], 4, [7, 6, 6, 6]),
    # 5.75 is the exclusive upper end: id 4 counts 0, id 5 counts 1 (4.25 in [3.5, 4.5)) -> id 5;
    # in id 5, 5.75 is above 5.25 -> 6.5 (idx 7), 4.25 -> 4.0 (idx 6)
    ([6.5, 5.75, 5.75, 4.25], 5, [7, 7, 7, 6]),
    # max 4.0 -> pair (14, 15) = {.., 3, 3.5, 4} / {.., 2, 2.5, 3, 4}; 2.5 counts for 15, 3.5 for 14:
    # 1 vs 2 -> id 15; 3.5 in id 15: tie of 3 (idx 6) and 4 (idx 7) -> even: 3.0 (idx 6)
    ([4.0, 3.5, 2.5, 2.5], 15, [7, 6, 5, 5]),
]


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize(("block", "dialect", "codes"), TWO_STAGE_CASES)
def test_two_stage_hand_built_blocks(backend: str, block: list[float], dialect: int, codes: list[int]) -> None:
    for scale in (1.0, 2.0**-3):
        x = _row([v * scale for v in block])
        q = lowbit.quantize(x, DIALECTFP4, backend=backend)
        assert q.dialect_ids.tolist() == [[dialect]]
        assert q.scale_codes.tolist() == [[15 + (0 if scale == 1 else -3)]]
        assert q.unpacked_codes()[0, : len(codes)].tolist() == codes
        expected = [_values(dialect)[c] * scale for c in codes]
        assert lowbit.dequantize(q, backend=backend)[0, : len(codes)].tolist() == expected


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_two_stage_truncated_maximum_picks_the_pair(backend: str) -> None:
    # 7.4 (float32 7.4000001) is level 29.6: nearest -> 30 (7.5), truncated to the grid 7.5 -> pair
    # (0, 1); 5.5 is in id 0's cell [5.0, 6.5) twice -> id 0; 7.4 in id 0 rounds to 7.5 (idx 7).
    # With fixed_point="truncate" the level is 29 (7.25) -> 7.0 -> pair (2, 3); 5.5 counts for
    # id 2 -> id 2; 7.4 saturates at 7.0 (idx 7).
    x = _row([7.4, 5.5, 5.5])
    q = lowbit.quantize(x, DIALECTFP4, backend=backend)
    assert q.dialect_ids.tolist() == [[0]]
    assert lowbit.dequantize(q, backend=backend)[0, :3].tolist() == [7.5, 5.5, 5.5]
    trunc = evolve(DIALECTFP4, name="t", fixed_point="truncate")
    q = lowbit.quantize(x, trunc, backend=backend)
    assert q.dialect_ids.tolist() == [[2]]
    assert lowbit.dequantize(q, backend=backend)[0, :3].tolist() == [7.0, 5.5, 5.5]


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_mse_selection_and_its_ties(backend: str) -> None:
    mse = get("dialectfp4_mse")
    # 6 and 4 together only in dialect 7 (E2M1): error 0 there, > 0 elsewhere.
    # [4, 1]: 4.0 exactly in ids 5, 7, 12, 14, 15 (error 0) -> the lowest, 5.
    x = np.concatenate([_row([6.0, -4.0, 1.0]), _row([4.0, 1.0, -0.0])], axis=1)
    q = lowbit.quantize(x, mse, backend=backend)
    assert q.dialect_ids.tolist() == [[7, 5]]
    y = lowbit.dequantize(q, backend=backend)
    assert y[0, :3].tolist() == [6.0, -4.0, 1.0]
    assert np.signbit(y[0, 34])  # -0.0 keeps its sign bit


def _exhaustive(levels: np.ndarray) -> tuple[int, np.ndarray]:
    """Least squared error dialect (lowest id on ties) and values, on grid values."""
    vals = levels * 0.25
    best = None
    for d in range(16):
        table = np.array(_values(d))
        dist = np.abs(vals[:, None] - table[None, :])
        err = float(np.sum(np.min(dist, axis=1) ** 2))
        if best is None or err < best[0]:
            q = table[np.argmin(dist, axis=1)]  # ties to the lower index; only checked below
            best = (err, d, q)
    assert best is not None
    return best[1], best[2]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 31), min_size=31, max_size=31), st.integers(16, 31))
def test_lut_selection_equals_exhaustive_least_squares(levels: list[int], top: int) -> None:
    lv = np.array([top, *levels])  # a level >= 16 puts the block maximum in [4, 8): k = 0
    x = (lv * 0.25).astype(np.float32)[None, :]
    want_d, want_vals = _exhaustive(lv)
    q = lowbit.quantize(x, LUT, backend="numba")
    assert q.dialect_ids[0, 0] == want_d
    got = lowbit.dequantize(q, dtype="float64")[0]
    # values equal the exhaustive nearest, except at exact ties of two neighbours
    dist_got = np.abs(got - lv * 0.25)
    np.testing.assert_array_equal(dist_got, np.abs(want_vals - lv * 0.25))
    assert lowbit.quantize(x, get("dialectfp4_mse"), backend="numba").dialect_ids[0, 0] == want_d


@pytest.mark.parametrize("selection", ["mse", "two_stage", "lut"])
@pytest.mark.parametrize("scale", [E5M0, E8M0], ids=["e5m0", "e8m0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_equals_reference(selection: str, scale: object, dtype: type) -> None:
    spec = evolve(DIALECTFP4, name="x", selection=selection, scale=scale)
    rng = np.random.default_rng(7)
    x = np.concatenate(
        [rng.standard_normal((3, 40)), rng.laplace(size=(3, 40)) * 1e-3, rng.standard_t(3, (3, 40)) * 1e4], axis=1
    ).astype(dtype)
    x[0, 3], x[1, 50], x[2, 90] = np.nan, np.inf, -0.0
    r = lowbit.quantize(x, spec, backend="reference")
    q = lowbit.quantize(x, spec, backend="numba")
    for field in ("codes", "scale_codes", "scales", "dialect_ids", "nan_mask"):
        a, b = getattr(r, field), getattr(q, field)
        assert (a is None) == (b is None), field
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=field)
    for out in ("float32", "float64", "float16", "bfloat16"):
        a = lowbit.dequantize(r, backend="reference", dtype=out)
        b = lowbit.dequantize(q, backend="numba", dtype=out)
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    fq = lowbit.fake_quant(x, spec, backend="numba")
    np.testing.assert_array_equal(fq.view(np.uint8), lowbit.dequantize(r, backend="reference").view(np.uint8))


def test_dialect_ids_round_trip_and_histogram() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    q = lowbit.quantize(x, "dialectfp4")
    assert q.dialect_ids.shape == (4, 3) and q.dialect_ids.dtype == np.uint8
    np.testing.assert_array_equal(lowbit.dequantize(q), lowbit.fake_quant(x, "dialectfp4"))
    hist = dialect_histogram(q)
    assert hist.shape == (16,) and hist.sum() == 12
    np.testing.assert_array_equal(hist, np.bincount(q.dialect_ids.ravel(), minlength=16))
    # the ids are what dequantize reads: another id changes the values of idx 6 and 7
    other = q.replace(dialect_ids=(q.dialect_ids + 1) % 16)
    assert not np.array_equal(lowbit.dequantize(other), lowbit.dequantize(q))
    # storage: 4 * 96 codes of 4 bits, 12 exponents of 5 bits, 12 ids of 4 bits
    assert q.nbytes() == 4 * 48 + (12 * 5 + 7) // 8 + 12 * 4 // 8
    with pytest.raises(TypeError):
        dialect_histogram(lowbit.quantize(x, "mxfp4"))


def test_nan_block_without_a_nan_scale_code_keeps_nan() -> None:
    x = _row([1.0, np.nan, 2.0])
    for backend in ("reference", "numba"):
        q = lowbit.quantize(x, DIALECTFP4, backend=backend)
        assert q.scale_codes.tolist() == [[0]] and np.isnan(q.scales[0, 0])
        assert np.isnan(lowbit.dequantize(q, backend=backend)).all()


def test_two_stage_preconditions_are_checked() -> None:
    rows = DIALECTFP4.dialects
    with pytest.raises(ValueError, match="share a maximum"):
        Formatbook(name="bad", dialects=(rows[0], rows[2], *rows[2:]), selection="two_stage")
    with pytest.raises(ValueError, match="in pairs"):
        Formatbook(name="bad", dialects=rows[:15], selection="two_stage")
    with pytest.raises(ValueError, match="every truncated block maximum"):
        Formatbook(name="bad", dialects=rows[:14], selection="two_stage")
    with pytest.raises(ValueError, match="strictly increase"):
        Formatbook(name="bad", dialects=((0, 2, 1, 3, 4, 5, 6, 7),))
    with pytest.raises(ValueError, match="fixed_point"):
        evolve(DIALECTFP4, fixed_point="round")
    Formatbook(name="ok", dialects=rows[:14])  # mse needs no pairs
