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
from lowbit.emulate import SubFormatbooks, pack_bits, reference_dialect, unpack_bits
from lowbit.formats import E5M0, E8M0, Formatbook, dialect_histogram, evolve, get
from lowbit.testing.conformance import assert_same_bits

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


def _lut_by_hand(table: list[list[float]], step: float, mags: np.ndarray) -> tuple[int, np.ndarray]:
    """Lookup-table selection written out from its definition: each magnitude's cell is
    floor(m / step) (no saturation is needed below), the block's dialect the least summed
    squared error of the cell centres (first minimum), each element the nearest value of
    the dialect to the magnitude itself, a magnitude exactly on a midpoint going up."""
    centres = (np.floor(mags / step) + 0.5) * step
    errs = [float(np.sum(np.min(np.abs(centres[:, None] - np.array(t)[None, :]), axis=1) ** 2)) for t in table]
    d = int(np.argmin(errs))
    t = np.array(table[d])
    mids = (t[:-1] + t[1:]) / 2
    return d, t[np.searchsorted(mids, mags, side="right")]


SEMANTIC = get("semantic_dialect")


@pytest.mark.parametrize(
    "spec, table",
    [
        (LUT, [_values(d) for d in range(16)]),  # the transcribed DialectFP4 table
        (SEMANTIC, [[u * 0.25 for u in row] for row in SEMANTIC.dialects]),
    ],
    ids=["dialectfp4_lut", "semantic_dialect"],
)
@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_lut_selection_equals_exhaustive_least_squares(spec: Formatbook, table: list[list[float]], data: st.DataObject) -> None:
    # magnitudes on the 1/8 sub-grid of each cell (midpoints between dialect values included),
    # the first in [4, 8) so that the shared exponent is 0 and m = |x|
    step = spec.grid / 2
    cells = data.draw(st.lists(st.integers(0, 63), min_size=31, max_size=31))
    sub = data.draw(st.lists(st.integers(0, 7), min_size=32, max_size=32))
    top = data.draw(st.integers(int(4 / step), int(8 / step) - 1))
    mags = (np.array([top, *cells]) % int(8 / step) + np.array(sub) / 8) * step
    signs = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=32, max_size=32)))
    x = (signs * mags).astype(np.float32)[None, :]
    want_d, want_vals = _lut_by_hand(table, step, mags)
    for backend in ("numba", "reference"):
        q = lowbit.quantize(x, spec, backend=backend)
        assert q.dialect_ids[0, 0] == want_d
        assert_same_bits(signs * want_vals, lowbit.dequantize(q, dtype="float64")[0])
    # the same block with every magnitude moved to its cell centre: least squares agrees
    centres = ((np.floor(mags / step) + 0.5) * step).astype(np.float32)[None, :]
    mse = evolve(spec, name="by_mse", selection="mse")
    assert lowbit.quantize(centres, mse, backend="numba").dialect_ids[0, 0] == want_d


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
    assert_same_bits(lowbit.fake_quant(x, "dialectfp4"), lowbit.dequantize(q))
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
    with pytest.raises(ValueError, match="truncates"):  # a rounded level can sit on a midpoint
        evolve(DIALECTFP4, selection="lut", fixed_point="nearest")
    with pytest.raises(ValueError, match="256 dialects"):
        Formatbook(name="bad", dialects=tuple((0, 1, 2, 3, 4, 5, 6, 7 + i) for i in range(257)), grid=2**-6)
    Formatbook(name="ok", dialects=rows[:14])  # mse needs no pairs
    # the level rule: two_stage rounds to nearest unless told, lut truncates
    assert DIALECTFP4.fixed_point_rule == "nearest" and LUT.fixed_point_rule == "truncate"
    assert evolve(DIALECTFP4, fixed_point="truncate").fixed_point_rule == "truncate"
    # elements: ties to the even index, except lut's IDX, which sends a midpoint up
    assert DIALECTFP4.rounding_rule == "nearest_even" and LUT.rounding_rule == "nearest_up"


# ---------------------------------------------------------------------------
# sub-formatbooks (per-block dialect masks) and packed storage

MASKED = [LUT, get("dialectfp4_mse"), SEMANTIC]


def _subbooks(n_dialects: int, rows: int, rng: np.random.Generator) -> SubFormatbooks:
    # three random sub-formatbooks of 1, 3 and 6 dialects, one per row (per token)
    groups = [rng.choice(n_dialects, size, replace=False).tolist() for size in (1, 3, 6)]
    return SubFormatbooks.from_dialects(groups, n_dialects, ids=rng.integers(0, 3, (rows, 1)))


@pytest.mark.parametrize("spec", MASKED, ids=lambda s: s.name)
def test_masks_are_respected_and_backends_agree(spec: Formatbook) -> None:
    rng = np.random.default_rng(21)
    x = np.concatenate([rng.standard_normal((8, 64)), rng.standard_t(3, (8, 64))], axis=1).astype(np.float32)
    x[2, 5] = np.nan  # a NaN block among masked ones
    sb = _subbooks(len(spec.dialects), 8, rng)
    ref = lowbit.quantize(x, spec, backend="reference", subbooks=sb)
    per_block = np.broadcast_to(sb.ids, (8, 4))
    for i, b in zip(*np.nonzero(~np.isnan(ref.scales))):
        assert sb.masks[per_block[i, b], ref.dialect_ids[i, b]], (i, b)
    # float32 takes the fast path (lut), float64 the generic kernels: both equal the reference
    for xx in (x, x.astype(np.float64)):
        q = lowbit.quantize(xx, spec, backend="numba", subbooks=sb)
        np.testing.assert_array_equal(q.dialect_ids, ref.dialect_ids)
        np.testing.assert_array_equal(q.unpacked_codes(), ref.unpacked_codes())
        fq = lowbit.fake_quant(xx, spec, subbooks=sb)
        assert_same_bits(lowbit.dequantize(ref, dtype=xx.dtype.name), fq)


def _objective(spec: Formatbook, blk: np.ndarray, scale: float) -> np.ndarray:
    """Per dialect, what the selection minimises, from the definitions: the summed squared
    error of the scaled magnitudes (mse) or of their cell centres (lut)."""
    m = np.abs(blk.astype(np.float64)) / scale
    if spec.selection == "lut":
        step = spec.grid / 2
        m = (np.floor(m / step) + 0.5) * step
    table = np.array(spec.dialects) * spec.grid
    return (np.abs(m[:, None, None] - table[None]).min(axis=2) ** 2).sum(axis=0)


@pytest.mark.parametrize("spec", MASKED, ids=lambda s: s.name)
def test_a_mask_selects_the_least_objective_among_the_allowed(spec: Formatbook) -> None:
    rng = np.random.default_rng(22)
    x = rng.laplace(size=(4, 96)).astype(np.float32)
    nd = len(spec.dialects)
    for i in range(4):
        for b in range(3):
            blk = x[i : i + 1, 32 * b : 32 * b + 32]
            free = lowbit.quantize(blk, spec)
            d = int(free.dialect_ids[0, 0])
            obj = _objective(spec, blk[0], float(free.scales[0, 0]))
            assert obj[d] == obj.min()
            for allowed in ([d, (d + 1) % nd], [e for e in range(nd) if e != d], rng.choice(nd, 3, replace=False)):
                sb = SubFormatbooks.from_dialects([list(allowed)], nd, ids=0)
                got = int(lowbit.quantize(blk, spec, subbooks=sb).dialect_ids[0, 0])
                best = min(allowed, key=lambda e: (obj[e], e))  # least objective, ties to the lowest id
                assert got == best, (i, b, list(allowed))


@pytest.mark.parametrize("spec", MASKED, ids=lambda s: s.name)
def test_per_position_masks_restrict_each_block_position(spec: Formatbook) -> None:
    # masks (sub-formatbooks, block positions, dialects) with one id per row: the block at
    # position p of a row with sub-formatbook s picks among masks[s, p]; the same as a 2-D
    # table with one row per (s, p) and that row's index given for every block
    rng = np.random.default_rng(25)
    nd = len(spec.dialects)
    x = rng.laplace(size=(8, 96)).astype(np.float32)
    masks = np.zeros((3, 3, nd), bool)
    for s_ in range(3):
        for pos in range(3):
            masks[s_, pos, rng.choice(nd, 1 + 2 * pos, replace=False)] = True
    ids = rng.integers(0, 3, (8, 1))
    sb = SubFormatbooks(masks=masks, ids=ids)
    q = lowbit.quantize(x, spec, subbooks=sb)
    for i in range(8):
        for pos in range(3):
            assert masks[ids[i, 0], pos, q.dialect_ids[i, pos]], (i, pos)
    flat = SubFormatbooks(masks=masks.reshape(9, nd), ids=ids * 3 + np.arange(3))
    ref = lowbit.quantize(x, spec, backend="reference", subbooks=flat)
    np.testing.assert_array_equal(q.dialect_ids, ref.dialect_ids)
    np.testing.assert_array_equal(q.unpacked_codes(), ref.unpacked_codes())
    assert_same_bits(lowbit.dequantize(ref), lowbit.fake_quant(x, spec, subbooks=sb))
    # storage: indices within the block's list (at most 5 allowed: 3 bits), one 2-bit id per
    # row, the whole 3 x 3 x nd table
    f = q.packed_fields()
    local = unpack_bits(f["dialect_ids"], 3, 24).reshape(8, 3)
    np.testing.assert_array_equal(sb.global_ids(np.broadcast_to(ids, (8, 3)), local), q.dialect_ids)
    np.testing.assert_array_equal(unpack_bits(f["subbook_ids"], 2, 8), ids.ravel())
    np.testing.assert_array_equal(unpack_bits(f["subbook_masks"], 1, 9 * nd).reshape(3, 3, nd), masks)
    with pytest.raises(ValueError, match="3 block positions"):
        lowbit.quantize(x[:, :64], spec, subbooks=sb)


def test_subbook_ids_follow_the_block_axis() -> None:
    # x (channels, tokens) blocked along axis 0: ids of shape (1, tokens) give one
    # sub-formatbook per token, the same as the transposed tensor with ids (tokens, 1)
    rng = np.random.default_rng(23)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    groups = [[0, 1], [2, 3, 4], [5]]
    ids = np.array([0, 2, 1, 1, 0])
    a = lowbit.quantize(x, SEMANTIC, axis=0, subbooks=SubFormatbooks.from_dialects(groups, 32, ids=ids[None, :]))
    b = lowbit.quantize(x.T.copy(), SEMANTIC, subbooks=SubFormatbooks.from_dialects(groups, 32, ids=ids[:, None]))
    np.testing.assert_array_equal(a.dialect_ids, b.dialect_ids)
    assert set(a.dialect_ids[1].tolist()) <= {5}


def test_packed_storage_round_trips() -> None:
    # pack_bits against a hand-packed example: 5-bit values 1, 2, 31 -> bits (LSB first)
    # 10000 01000 11111 + padding -> bytes 0b01000001 (0x41), 0b01111100 (0x7C)
    np.testing.assert_array_equal(pack_bits([1, 2, 31], 5), [0x41, 0x7C])
    rng = np.random.default_rng(24)
    v = rng.integers(0, 32, 101)
    np.testing.assert_array_equal(unpack_bits(pack_bits(v, 5), 5, 101), v)
    with pytest.raises(ValueError, match="fit"):
        pack_bits([32], 5)
    x = rng.standard_normal((6, 96)).astype(np.float32)
    sb = SubFormatbooks.from_dialects([[0, 3, 5, 7, 9], [1, 2], [31]], 32, ids=rng.integers(0, 3, (6, 1)))
    q = lowbit.quantize(x, SEMANTIC, subbooks=sb)
    f = q.packed_fields()
    # dialect ids as stored: the index within the block's sub-formatbook, 3 bits (at most 5 allowed)
    local = unpack_bits(f["dialect_ids"], 3, 18).reshape(6, 3)
    blocks = np.broadcast_to(sb.ids, (6, 3))
    np.testing.assert_array_equal(sb.global_ids(blocks, local), q.dialect_ids)
    np.testing.assert_array_equal(unpack_bits(f["subbook_ids"], 2, 6), sb.ids.ravel())
    np.testing.assert_array_equal(unpack_bits(f["subbook_masks"], 1, 96).reshape(3, 32), sb.masks)
    np.testing.assert_array_equal(unpack_bits(f["scale_codes"], 5, 18).reshape(6, 3), q.scale_codes)
    # 576 codes of 4 bits, 18 exponents of 5 bits, 18 ids of 3 bits, 6 sub-formatbook ids of
    # 2 bits, a 3 x 32 mask table
    assert q.nbytes() == 288 + 12 + 7 + 2 + 12
    assert q.bits_per_element() == 8 * q.nbytes() / 576
    # without sub-formatbooks: 5-bit global ids
    plain = lowbit.quantize(x, SEMANTIC)
    np.testing.assert_array_equal(unpack_bits(plain.packed_fields()["dialect_ids"], 5, 18).reshape(6, 3), plain.dialect_ids)


@pytest.mark.parametrize(
    ("fmt", "subbooks", "exc", "match"),
    [
        ("dialectfp4", SubFormatbooks.from_dialects([[0, 1]], 16, ids=0), ValueError, "two_stage"),
        ("mxfp4", SubFormatbooks.from_dialects([[0]], 16, ids=0), ValueError, "Formatbook"),
        ("dialectfp4_mse", SubFormatbooks.from_dialects([[0]], 32, ids=0), ValueError, "columns"),
        ("dialectfp4_mse", SubFormatbooks.from_dialects([[0]], 16, ids=np.zeros((3, 3), int)), ValueError, "broadcast"),
        ("dialectfp4_mse", "everything", TypeError, "SubFormatbooks"),
    ],
)
def test_bad_subbooks(fmt: str, subbooks: object, exc: type, match: str) -> None:
    x = np.ones((2, 64), np.float32)
    with pytest.raises(exc, match=match):
        lowbit.quantize(x, fmt, subbooks=subbooks)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        lowbit.fake_quant(x, fmt, subbooks=subbooks)  # type: ignore[arg-type]


def test_bad_subformatbook_tables() -> None:
    with pytest.raises(ValueError, match="allow none"):
        SubFormatbooks(masks=np.zeros((2, 4), bool), ids=0)
    one_position_empty = np.ones((2, 3, 4), bool)
    one_position_empty[1, 2] = False
    with pytest.raises(ValueError, match=r"\[\[1, 2\]\] allow none"):
        SubFormatbooks(masks=one_position_empty, ids=0)
    with pytest.raises(ValueError, match="bool array"):
        SubFormatbooks(masks=np.ones((2, 3, 4, 5), bool), ids=0)
    with pytest.raises(ValueError, match="bool"):
        SubFormatbooks(masks=np.ones((2, 4), int), ids=0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        SubFormatbooks(masks=np.ones((2, 4), bool), ids=[0, 2])
    with pytest.raises(TypeError, match="integers"):
        SubFormatbooks(masks=np.ones((2, 4), bool), ids=[0.5])
    with pytest.raises(ValueError, match="dialect ids"):
        SubFormatbooks.from_dialects([[4]], 4, ids=0)
