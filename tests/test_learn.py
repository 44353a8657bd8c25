"""Learning a formatbook from calibration data (lowbit.formats.learn) and the
registered ``semantic_dialect`` it produced. Expected values are reasoned out in
the comments or computed here independently of lowbit.formats.learn."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import lowbit
from lowbit.formats import E5M0, Formatbook, calibration_error, evolve, get, learn_formatbook
from lowbit.formats.learn import candidates

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "learn_semantic_dialect.py"
DIALECTFP4_TABLE = get("dialectfp4").dialects


def _script():
    spec = importlib.util.spec_from_file_location("learn_semantic_dialect", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _objective(x: np.ndarray, dialects, bs: int = 32) -> int:
    """Independent objective: per block k = floor(log2 amax) - 2 (math.frexp), levels
    floor(|x| / 2^k / 0.25) capped at 31, error of the level's cell centre (2 * level + 1
    eighths) to the nearest dialect value (4 * u eighths) in eighths squared, least over
    the dialects, summed over blocks."""
    total = 0
    for row in x.astype(np.float64):
        for s in range(0, len(row), bs):
            blk = np.abs(row[s : s + bs])
            amax = float(blk.max())
            k = math.frexp(amax)[1] - 1 - 2 if amax > 0 else -15
            k = min(max(k, -15), 16)
            levels = [min(math.floor(v / 2.0**k / 0.25), 31) for v in blk]
            total += min(sum(min((2 * lv + 1 - 4 * u) ** 2 for u in d) for lv in levels) for d in dialects)
    return total


def _blocks_from(dialect, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Blocks of 32 whose magnitudes are values of ``dialect`` (half-units), each value at least
    once, random signs, each block times a random power of two."""
    vals = np.array(dialect) * 0.5
    out = np.empty((n_blocks, 32))
    for b in range(n_blocks):
        mags = np.concatenate([vals, rng.choice(vals, 32 - len(vals))])
        rng.shuffle(mags)
        out[b] = mags * rng.choice([-1.0, 1.0], 32) * 2.0 ** int(rng.integers(-6, 7))
    return out.astype(np.float32)


def test_candidates_are_the_8_value_subsets_with_a_maximum_of_at_least_4() -> None:
    c = candidates()
    # 0 plus 7 of the 15 values 1..15: C(15, 7) = 6435, minus the one subset within 1..7
    assert c.shape == (6435 - 1, 8)
    assert (c[:, 0] == 0).all() and (np.diff(c, axis=1) > 0).all() and (c[:, -1] >= 8).all()
    assert len({tuple(r) for r in c}) == len(c)
    assert tuple(c[0]) == (0, 1, 2, 3, 4, 5, 6, 8)  # lexicographic order


def test_calibration_error_matches_an_independent_objective() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_t(3, size=(6, 72)) * 3.0).astype(np.float32)  # 72 = 2 full blocks + a partial one
    assert calibration_error(x, DIALECTFP4_TABLE) == _objective(x, DIALECTFP4_TABLE)
    assert calibration_error(x, [DIALECTFP4_TABLE[7]]) == _objective(x, [DIALECTFP4_TABLE[7]])


def test_calibration_error_is_what_lut_selection_achieves() -> None:
    # lut quantization picks, per block, the dialect of least cell-centre error: summing that
    # error for the ids it chose (computed here from the levels) gives the learner's objective
    rng = np.random.default_rng(6)
    x = rng.laplace(size=(20, 32)).astype(np.float32)
    fb = Formatbook(name="lut_probe", dialects=DIALECTFP4_TABLE, selection="lut")
    q = lowbit.quantize(x, fb)
    total = 0
    for i, row in enumerate(x.astype(np.float64)):
        d = fb.dialects[int(q.dialect_ids[i, 0])]
        k = math.log2(float(q.scales[i, 0]))
        levels = [min(math.floor(abs(v) / 2.0**k / 0.25), 31) for v in row]
        total += sum(min((2 * lv + 1 - 4 * u) ** 2 for u in d) for lv in levels)
    assert calibration_error(x, DIALECTFP4_TABLE) == total


def test_recovers_a_known_dialect() -> None:
    # every block holds every value of D exactly (up to a power of two; amax = 7.5 * 2^k so the
    # shared exponent is k): under D every element is a value, one eighth below its cell centre
    # (error 1, the least possible); every other candidate misses a value of some block
    d = (0, 1, 3, 5, 7, 9, 12, 15)
    x = _blocks_from(d, 200, np.random.default_rng(1))
    assert calibration_error(x, [d]) == x.size
    assert learn_formatbook(x, 1) == (d,)


def test_swap_recovers_two_known_dialects() -> None:
    d1, d2 = (0, 1, 2, 3, 4, 6, 9, 15), (0, 2, 4, 6, 8, 10, 12, 14)
    rng = np.random.default_rng(2)
    x = np.concatenate([_blocks_from(d1, 150, rng), _blocks_from(d2, 100, rng)])
    swap = learn_formatbook(x, 2, method="swap")
    assert set(swap) == {d1, d2}  # the only pair with the least error: each misses a value of the other
    assert calibration_error(x, swap) == x.size


def test_greedy_is_nested_and_its_error_never_increases() -> None:
    x = np.random.default_rng(3).standard_normal((300, 32)).astype(np.float32)
    book = learn_formatbook(x, 8)
    errors = [calibration_error(x, book[:k]) for k in range(1, 9)]
    assert all(b <= a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]
    assert learn_formatbook(x, 3) == book[:3]  # forward selection: a prefix of the longer run


def _levels(x: np.ndarray) -> np.ndarray:
    """Independent fixed-point levels of full blocks of 32 (see _objective), shape (blocks, 32)."""
    out = []
    for blk in np.abs(x.astype(np.float64)):
        k = math.frexp(float(blk.max()))[1] - 3
        out.append([min(math.floor(v / 2.0**k / 0.25), 31) for v in blk])
    return np.array(out)


def test_first_greedy_pick_is_the_best_single_dialect() -> None:
    # brute force over every 8-value subset of 0..15 with 0 and a maximum >= 8 (built here)
    x = np.random.default_rng(8).laplace(size=(40, 32)).astype(np.float32)
    subsets = np.array([(0, *c) for c in itertools.combinations(range(1, 16), 7) if c[-1] >= 8])
    lv = _levels(x).reshape(-1)
    dist = (2 * lv[:, None, None] + 1 - 4 * subsets[None, :, :]) ** 2  # (elements, subsets, values), eighths
    totals = dist.min(axis=2).sum(axis=0)
    best = int(np.argmin(totals))  # first minimum: lowest index in lexicographic order
    assert learn_formatbook(x, 1) == (tuple(int(v) for v in subsets[best]),)


def test_swap_is_no_worse_than_greedy() -> None:
    x = np.random.default_rng(4).laplace(size=(400, 32)).astype(np.float32)
    greedy = learn_formatbook(x, 6)
    swap = learn_formatbook(x, 6, method="swap", max_passes=3)
    assert calibration_error(x, swap) <= calibration_error(x, greedy)
    assert learn_formatbook(x, 6, method="swap", max_passes=0) == greedy


def test_deterministic_and_independent_of_block_order() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_t(3, size=(300, 32)).astype(np.float32)
    a = learn_formatbook(x, 5)
    assert learn_formatbook(x.copy(), 5) == a
    assert learn_formatbook(x[rng.permutation(len(x))], 5) == a  # the objective is a sum over blocks
    assert learn_formatbook(x.astype(np.float64), 5, progress=True) == a


def test_refine_finds_a_quarter_grid_dialect_one_move_away() -> None:
    # blocks made of every value of D (quarter units, maximum 29: 7.25 sets the exponent);
    # starting from D with one value moved, one move brings D back, whose error is the least
    # possible (every element one sixteenth from its cell centre: error 1)
    d = (0, 1, 3, 6, 10, 15, 21, 29)
    start = (0, 1, 3, 6, 11, 15, 21, 29)
    x = _blocks_from([v / 2 for v in d], 120, np.random.default_rng(11))
    assert calibration_error(x, [d], grid=0.25) == x.size
    assert calibration_error(x, [start], grid=0.25) > x.size
    assert learn_formatbook(x, 1, grid=0.25, method="refine", init=[start]) == (d,)


def test_refine_never_increases_the_error_and_starts_from_greedy() -> None:
    x = np.random.default_rng(12).laplace(size=(300, 32)).astype(np.float32)
    # the quarter grid is too fine to enumerate: the start is greedy on the half-unit grid, doubled
    start = tuple(tuple(2 * v for v in d) for d in learn_formatbook(x, 4))
    assert learn_formatbook(x, 4, grid=0.25, method="refine", max_passes=0) == start
    refined = learn_formatbook(x, 4, grid=0.25, method="refine", max_passes=3)
    assert calibration_error(x, refined, grid=0.25) < calibration_error(x, start, grid=0.25)
    # on the half-unit grid the start is greedy on that grid itself
    assert learn_formatbook(x, 4, method="refine", max_passes=0) == learn_formatbook(x, 4)
    half = learn_formatbook(x, 4, method="refine", max_passes=3)
    assert calibration_error(x, half) <= calibration_error(x, learn_formatbook(x, 4))


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        (dict(samples=np.arange(64).reshape(2, 32)), TypeError),
        (dict(samples=np.zeros((0, 32), np.float32)), ValueError),
        (dict(samples=np.full((1, 32), np.nan, np.float32)), ValueError),
        (dict(samples=np.full((1, 32), np.inf, np.float32)), ValueError),
        (dict(n_dialects=0), ValueError),
        (dict(n_dialects=6435), ValueError),  # only 6434 candidates
        (dict(n_dialects=2.0), ValueError),
        (dict(method="kmeans"), ValueError),
        (dict(grid=0.3), ValueError),
        (dict(values_per_dialect=6), ValueError),
        (dict(values_per_dialect=32), ValueError),
        (dict(block_size=0), ValueError),
        (dict(max_passes=-1), ValueError),
        (dict(init=[(0, 1, 2, 3, 4, 5, 6, 8)] * 2), ValueError),  # init is for refine only
        (dict(method="refine", init=[(0, 1, 2, 3, 4, 5, 6, 8)] * 2), ValueError),  # not distinct
        (dict(method="refine", init=[(0, 1, 2, 3, 4, 5, 6, 7), (0, 1, 2, 3, 4, 5, 6, 8)]), ValueError),  # max < 8
        (dict(method="refine", init=[(0, 1, 2), (0, 1, 9)]), ValueError),  # 3 values
        (dict(method="refine", init=["ab"]), ValueError),
    ],
)
def test_bad_input(kwargs: dict, exc: type) -> None:
    args = dict(samples=np.ones((2, 32), np.float32), n_dialects=2)
    args.update(kwargs)
    with pytest.raises(exc):
        learn_formatbook(args.pop("samples"), **args)


def test_registered_semantic_dialect() -> None:
    spec = get("semantic_dialect")
    assert isinstance(spec, Formatbook) and spec.selection == "lut"
    assert spec.block_size == 32 and spec.scale == E5M0 and spec.grid == 0.25
    assert len(spec.dialects) == 32 and len(set(spec.dialects)) == 32
    assert spec.bits == 4 + (5 + 5) / 32


def test_semantic_dialect_table_is_what_the_script_learns() -> None:
    # reproducibility, not a golden value: the shipped table is what the script learns
    # from the full seeded calibration mix (4 x 4000 blocks, greedy): a few seconds
    assert _script().learn_semantic_dialect() == get("semantic_dialect").dialects


@pytest.mark.parametrize("selection", ["lut", "mse"])
def test_learned_table_beats_dialectfp4_on_the_calibration_mix(selection: str) -> None:
    # same selection rule on both sides, so only the table differs
    mix = _script().calibration_mix(1000, seed=1)  # fresh blocks of the same kinds
    learned = evolve(get("semantic_dialect"), name="learned", selection=selection)
    paper = evolve(get("dialectfp4_mse"), name="paper", selection=selection)
    for kind, x in mix.items():

        def sq(fmt: Formatbook) -> float:
            return float(((lowbit.fake_quant(x, fmt, backend="numba").astype(np.float64) - x) ** 2).sum())

        assert sq(learned) < sq(paper), kind
