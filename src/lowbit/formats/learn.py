"""Learn a formatbook (a set of dialects) from calibration data.

:func:`learn_formatbook` chooses the dialects of a
:class:`~lowbit.formats.spec.Formatbook` that minimise the total squared error of
calibration blocks under lookup-table selection (``selection="lut"``).

Algorithm
---------
1. Scaling. The samples are scaled as by a probe Formatbook that has the same
   grid, block size and 5-bit shared exponent (:data:`~lowbit.formats.spec.E5M0`)
   and one dialect holding every grid value below 8; the reference backend's
   exponent rule gives every block exactly the shared exponent the learned
   Formatbook will give it:
   k = floor(log2 amax) - 2, scaled magnitudes |x| / 2^k in [0, 8), the block
   maximum in [4, 8). Blocks run along the last axis; a partial last block of a
   row holds only its own elements.
2. Levels. Each scaled magnitude goes to its cell on the fixed-point grid of
   step grid / 2 (truncated, saturating at the top level: the level rule of
   ``selection="lut"``), 32 levels for the half-unit grid, 64 for the
   quarter-unit grid. Each block becomes a histogram over the levels.
3. Candidates (``greedy`` and ``swap``). Every strictly ascending tuple of
   ``values_per_dialect`` grid units that starts at 0 and lies below 8 / grid
   (6435 for 8 of the 16 half-units), in lexicographic order, keeping only those
   whose maximum is at least 4 (half the range): the block maximum always lies
   in [4, 8), and a learned book whose largest value were below 4 would get a
   different shared exponent from the Formatbook than the one it was learned
   with. (For the half-unit grid this drops one candidate, 0..3.5, leaving
   6434.) Finer grids have too many candidates to enumerate (2.6 million for
   8 of the 32 quarter-units): use ``refine``.
4. Error table. ERR[level][dialect] is the squared distance from the centre of
   the level's cell to the dialect's nearest value, in units of (grid / 4)^2,
   so every error is an exact integer. A block's error under a dialect is its
   histogram times ERR; its error under a set of dialects is the least over the
   set (what ``selection="lut"`` picks); the objective is the sum over blocks
   (:func:`calibration_error`).
5. ``method="greedy"``: forward selection, ``n_dialects`` times adding the
   candidate that gives the least total error (ties: the lowest candidate index).
   ``method="swap"``: greedy, then swap passes (k-medoids style): for each slot
   in turn, the candidate (not already chosen) that gives the least total error
   with the other slots replaces the slot's dialect when that lowers the total
   strictly (ties: lowest candidate index). Passes stop after one that changes
   nothing, or after ``max_passes``. The total error never increases.
   ``method="refine"`` (local search, for grids too fine to enumerate): start
   from ``init`` (default: greedy on the grid twice as coarse, each value
   doubled); then passes over the slots: the moves of a slot's dialect are the
   dialects made by replacing one of its non-zero values with another grid value
   below 8 / grid that it lacks (ascending again, maximum at least 4, not
   already in the book), in lexicographic order; the move with the least total
   error replaces the dialect when that lowers the total strictly (ties: first
   in that order). Stops as ``swap`` does; the total never increases.

The dialects come back in the order chosen (the first is the best single
dialect), which is also their id order. Everything is exact integer arithmetic,
so the result is deterministic.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from lowbit.formats.spec import E5M0, Formatbook

Method = Literal["greedy", "swap", "refine"]
METHODS: tuple[str, ...] = ("greedy", "swap", "refine")

#: Scaled magnitudes lie in [0, SCALED_RANGE) (shared exponent floor(log2 amax) - 2).
SCALED_RANGE = 8
#: Most candidate dialects the learner enumerates (the error matrix is blocks x candidates).
MAX_CANDIDATES = 50_000


def _check_values(values_per_dialect: Any, units: int) -> None:
    if not (isinstance(values_per_dialect, int) and 2 <= values_per_dialect <= units):
        raise ValueError(f"values_per_dialect must be an integer in 2..{units}, got {values_per_dialect!r}")
    if values_per_dialect & (values_per_dialect - 1):
        raise ValueError(f"values_per_dialect must be a power of two (the index is a whole number of bits), got {values_per_dialect}")


def _grid_units(grid: float) -> int:
    ok = isinstance(grid, (int, float)) and not isinstance(grid, bool) and grid > 0
    units = SCALED_RANGE / grid if ok else 0.0
    if not ok or units != int(units) or int(units) & (int(units) - 1) or not 2 <= units <= 128:
        raise ValueError(f"grid must be a power of two with {SCALED_RANGE} / grid in 2..128, got {grid!r}")
    return int(units)


def candidates(grid: float = 0.5, values_per_dialect: int = 8) -> np.ndarray:
    """Every candidate dialect (step 3 of the module docstring) as an int array (candidates, values)."""
    units = _grid_units(grid)
    _check_values(values_per_dialect, units)
    count = math.comb(units - 1, values_per_dialect - 1)
    if count > MAX_CANDIDATES:
        raise ValueError(f"{count} candidate dialects is more than {MAX_CANDIDATES}; use a coarser grid or fewer values")
    rows = [(0, *c) for c in itertools.combinations(range(1, units), values_per_dialect - 1) if c[-1] >= units // 2]
    return np.array(rows, dtype=np.int64).reshape(-1, values_per_dialect)


def error_table(dialects: Any, grid: float = 0.5) -> np.ndarray:
    """ERR[level][dialect]: squared distance (in units of (grid / 4)^2) from the centre of each
    level's cell to the dialect's nearest value; int64, shape (levels, dialects)."""
    units = _grid_units(grid)
    d = np.asarray(dialects, dtype=np.int64)
    centres = 2 * np.arange(2 * units, dtype=np.int64) + 1  # in quarter-grid steps
    dist = centres[:, None, None] - 4 * d[None, :, :]
    return (dist * dist).min(axis=2)


def level_histograms(samples: Any, *, grid: float = 0.5, block_size: int = 32) -> np.ndarray:
    """Per calibration block, how many of its elements fall on each fixed-point level (steps 1-2 of
    the module docstring); int64, shape (blocks, levels)."""
    from lowbit.emulate.reference import _exp_scale

    x = _check_samples(samples)
    units = _grid_units(grid)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    x2 = np.abs(x.reshape(-1, x.shape[-1]).astype(np.float64))  # exact for every float input
    rows, n = x2.shape
    nb = -(-n // block_size)
    probe = Formatbook(
        name="learn_probe", dialects=(tuple(range(units)),), grid=grid, block_size=block_size, scale=E5M0, selection="lut"
    )
    # the Formatbook's own shared exponent (reference rule), once per distinct block maximum
    padded = np.zeros((rows, nb * block_size))
    padded[:, :n] = x2
    amax = padded.reshape(rows, nb, block_size).max(axis=2)
    uniq, inverse = np.unique(amax, return_inverse=True)
    exps = np.array([_exp_scale(probe, Fraction(float(a))) for a in uniq], np.float64)
    scales = np.ldexp(1.0, exps.astype(np.int64))[inverse.reshape(amax.shape)]
    block_of = np.arange(n) // block_size
    scaled = x2 / scales[:, block_of]  # power-of-two scales: exact
    levels = np.minimum(np.floor(scaled / (grid / 2)), 2 * units - 1).astype(np.int64)
    flat_block = (np.arange(rows)[:, None] * nb + block_of[None, :]).ravel()
    hist = np.zeros((rows * nb, 2 * units), np.int64)
    np.add.at(hist, (flat_block, levels.ravel()), 1)
    return hist


def _check_samples(samples: Any) -> np.ndarray:
    x = np.asarray(samples)
    if x.dtype.kind != "f":
        raise TypeError(f"samples must be floating point, got dtype {x.dtype}")
    if x.ndim == 0 or x.size == 0:
        raise ValueError("samples must be a non-empty array (blocks run along the last axis)")
    if not np.isfinite(x).all():
        raise ValueError("samples must be finite (NaN and Inf blocks carry no calibration information)")
    return x


def _block_errors(hist: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Dialects x blocks error matrix (exact: integers below 2^24 go through float32 BLAS)."""
    bound = int(hist.sum(axis=1).max(initial=0)) * int(err.max(initial=0))
    if bound >= 1 << 24:  # would not be exact in float32
        return np.ascontiguousarray((hist @ err).T)
    out = err.T.astype(np.float32) @ hist.T.astype(np.float32)
    return out.astype(np.int32 if bound < 1 << 31 else np.int64)


def calibration_error(samples: Any, dialects: Any, *, grid: float = 0.5, block_size: int = 32) -> int:
    """Total squared error (in units of (grid / 4)^2 of the scaled blocks) of ``samples`` under a
    ``selection="lut"`` Formatbook with ``dialects``: the objective :func:`learn_formatbook` minimises."""
    hist = level_histograms(samples, grid=grid, block_size=block_size)
    return int(_block_errors(hist, error_table(dialects, grid)).min(axis=0).sum(dtype=np.int64))


def _totals(e: np.ndarray, cur: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per candidate c: sum over blocks of min(e[c], cur) (e: candidates x blocks)."""
    out = np.empty(e.shape[0], np.int64)
    buf = np.empty((min(chunk, e.shape[0]), e.shape[1]), e.dtype)
    for s in range(0, e.shape[0], chunk):
        rows = e[s : s + chunk]
        b = buf[: len(rows)]
        np.minimum(rows, cur[None, :], out=b)
        out[s : s + chunk] = b.sum(axis=1, dtype=np.int64)
    return out


def _best(totals: np.ndarray, exclude: list[int]) -> int:
    t = totals.copy()
    t[exclude] = np.iinfo(np.int64).max
    return int(np.argmin(t))  # first minimum: ties to the lowest candidate index


def learn_formatbook(
    samples: Any,
    n_dialects: int = 32,
    *,
    grid: float = 0.5,
    values_per_dialect: int = 8,
    block_size: int = 32,
    method: str = "greedy",
    max_passes: int = 10,
    init: Any = None,
    progress: bool = False,
) -> tuple[tuple[int, ...], ...]:
    """The ``n_dialects`` dialects (grid units, ascending, starting at 0) that minimise the total
    squared error of the blocks of ``samples`` under lookup-table selection.

    ``samples``: floating-point array, blocks of ``block_size`` along the last axis. ``method``:
    ``greedy`` (forward selection), ``swap`` (greedy, then at most ``max_passes`` swap passes) or
    ``refine`` (at most ``max_passes`` local-search passes from ``init``, dialects in units of
    ``grid``; by default greedy on this grid, or on the grid twice as coarse when this one has
    too many candidates to enumerate). ``progress=True`` shows a progress bar (rich). The
    algorithm is described in :mod:`lowbit.formats.learn`.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; choose one of {', '.join(METHODS)}")
    if not (isinstance(max_passes, int) and max_passes >= 0):
        raise ValueError(f"max_passes must be a non-negative integer, got {max_passes!r}")
    if init is not None and method != "refine":
        raise ValueError(f"init is the starting book of method='refine', not of {method!r}")
    if method == "refine":
        return _refine(samples, n_dialects, grid, values_per_dialect, block_size, max_passes, init, progress)
    cands = candidates(grid, values_per_dialect)
    _check_n_dialects(n_dialects, len(cands))
    hist = level_histograms(samples, grid=grid, block_size=block_size)
    e = _block_errors(hist, error_table(cands, grid))

    steps = n_dialects + (n_dialects * max_passes if method == "swap" else 0)
    with _Progress(progress, steps) as bar:
        chosen: list[int] = []
        cur = np.full(e.shape[1], np.iinfo(e.dtype).max, e.dtype)  # no dialect yet: above every error
        for _ in range(n_dialects):
            c = _best(_totals(e, cur), chosen)
            chosen.append(c)
            cur = np.minimum(cur, e[c])
            bar.advance()
        if method == "swap":
            total = int(cur.sum(dtype=np.int64))
            for _ in range(max_passes):
                changed = False
                for slot in range(n_dialects):
                    others = [c for i, c in enumerate(chosen) if i != slot]
                    totals = _totals(e, _least_of(e[others], e.shape[1], e.dtype))
                    c = _best(totals, others + [chosen[slot]])
                    if int(totals[c]) < total:
                        chosen[slot], total, changed = c, int(totals[c]), True
                    bar.advance()
                if not changed:
                    break
    return tuple(tuple(int(v) for v in cands[c]) for c in chosen)


def _check_n_dialects(n_dialects: Any, limit: int) -> None:
    if isinstance(n_dialects, bool) or not isinstance(n_dialects, int) or not 1 <= n_dialects <= limit:
        raise ValueError(f"n_dialects must be an integer in 1..{limit}, got {n_dialects!r}")


def _least_of(e: np.ndarray, blocks: int, dtype: Any) -> np.ndarray:
    """Per block, the least error over the rows of ``e`` (above every error when there are none)."""
    return e.min(axis=0) if len(e) else np.full(blocks, np.iinfo(dtype).max, dtype)


def _refine(
    samples: Any, n_dialects: int, grid: float, values_per_dialect: int, block_size: int, max_passes: int,
    init: Any, progress: bool,
) -> tuple[tuple[int, ...], ...]:  # fmt: skip
    units = _grid_units(grid)
    _check_values(values_per_dialect, units)
    if init is None:
        enumerable = math.comb(units - 1, values_per_dialect - 1) <= MAX_CANDIDATES
        coarse = grid if enumerable else grid * 2
        book = learn_formatbook(
            samples, n_dialects, grid=coarse, values_per_dialect=values_per_dialect, block_size=block_size
        )
        init = [[v * round(coarse / grid) for v in d] for d in book]
    book = _check_init(init, n_dialects, units, values_per_dialect)
    hist = level_histograms(samples, grid=grid, block_size=block_size)
    e = _block_errors(hist, error_table(book, grid)).astype(np.int64)
    total = int(e.min(axis=0).sum(dtype=np.int64))
    with _Progress(progress, n_dialects * max_passes) as bar:
        for _ in range(max_passes):
            changed = False
            for slot in range(n_dialects):
                moves = _moves(book, slot, units)
                if moves:
                    em = _block_errors(hist, error_table(moves, grid)).astype(np.int64)
                    totals = _totals(em, _least_of(np.delete(e, slot, axis=0), e.shape[1], e.dtype))
                    c = int(np.argmin(totals))  # first minimum: first in lexicographic order
                    if int(totals[c]) < total:
                        book[slot], e[slot], total, changed = moves[c], em[c], int(totals[c]), True
                bar.advance()
            if not changed:
                break
    return tuple(book)


def _moves(book: list[tuple[int, ...]], slot: int, units: int) -> list[tuple[int, ...]]:
    """The dialects one value away from book[slot] (see ``refine`` in the module docstring)."""
    d = book[slot]
    out = set()
    for j in range(1, len(d)):
        for v in range(1, units):
            if v not in d:
                m = tuple(sorted(d[:j] + d[j + 1 :] + (v,)))
                if m[-1] >= units // 2:
                    out.add(m)
    return sorted(out - set(book))


def _check_init(init: Any, n_dialects: int, units: int, values_per_dialect: int) -> list[tuple[int, ...]]:
    try:
        book = [tuple(int(v) for v in d) for d in init]
    except (TypeError, ValueError):
        raise ValueError("init must be a sequence of dialects, each a sequence of integer grid units") from None
    _check_n_dialects(n_dialects, 256)  # dialect ids are stored in a byte
    if len(book) != n_dialects or len(set(book)) != n_dialects:
        raise ValueError(f"init must hold {n_dialects} distinct dialects, got {len(book)} ({len(set(book))} distinct)")
    for d in book:
        ok = len(d) == values_per_dialect and d[0] == 0 and all(a < b for a, b in zip(d, d[1:]))
        if not (ok and units // 2 <= d[-1] < units):
            raise ValueError(
                f"init dialect {d} must be {values_per_dialect} ascending grid units from 0 "
                f"with a maximum in {units // 2}..{units - 1}"
            )
    return book


class _Progress:
    """A rich progress bar when enabled, otherwise nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(transient=True, console=Console(stderr=True))
            self._task = self._bar.add_task("learning dialects", total=total)

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)


__all__ = ["METHODS", "calibration_error", "candidates", "error_table", "learn_formatbook", "level_histograms"]
