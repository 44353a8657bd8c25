"""Numba kernels for :class:`lowbit.formats.Formatbook` (BlockDialect, arXiv 2501.01144).

Bit-identical to :mod:`lowbit.emulate.reference_dialect`, computed differently:

* The shared exponent comes from the float bits (``numba_backend._exp_scale``,
  ``floor`` rule), the scaled magnitude m = |x| * 2^-k is exact in float64.
* ``mse``: the sum of squared errors minus the common sum of m^2 is
  grid^2 * sum(u^2) - 2 * grid * sum(u * m) (u: the chosen value in grid units).
  An element with u > 0 has m >= grid / 2, so X = m * 2^(53 - log2 grid) is an
  integer below 2^62; the key 2^52 * sum(u^2) - sum(u * X) is accumulated
  exactly in int64 pieces (X split at bit 30) and compared as (high, low), so
  ties are exact ties, broken toward the lowest dialect id like the reference.
* ``lut``: integer tables ERR (squared error of the cell centre in (grid/4)^2
  units) and IDX;
  ``two_stage``: a table of beneficial-range membership per level and dialect
  and a table from the truncated block maximum to its pair. All tables are built
  from the reference's exact definitions.

These generic kernels work on a list of blocks and are the single fallback of the
float32 fast path below.

Float32 fast path (``two_stage`` and ``lut`` selection; C-contiguous float32 input,
float32 fake_quant output; block size a multiple of 16, 8 values per dialect, at
most 32 dialects and 64 levels (32 for two_stage), exponent ranges where 2^(s - k) and every output
value are normal float32, see ``_fast_tables``). Like the block fast paths of
:mod:`lowbit.emulate._numba_fast` (whose helpers it uses), rows run in parallel
from ``PARALLEL_MIN`` elements, a first pass finds each block's exponent and
dialect and a second pass writes its elements; blocks holding a NaN or an Inf and
the partial last block of a row go to the generic kernels. Why it is exact:

* amax is the integer max of |x|'s bit patterns (``max_abs_bits``); the exponent
  k comes from the generic ``_exp_scale``.
* Levels are counted in units of grid / 2 (2^-s of a value unit).
  u = |x| * 2^(s - k) is one float32 multiply by a power of two: exact unless u is
  below 2^-126, and then u is far below the first level boundary (1/2) and the
  first element threshold (1), so it gives level 0 and index 0 however it was
  rounded. The fixed-point level is rint (ties to even) or floor of
  min(u, levels - 1), exact on a float32; clamping u before rounding equals
  clamping the level, and m = min(|x| / 2^k, 2^(emax+1)) is at most ``levels``.
* two_stage: the level is monotone in |x|, so the block's largest level is the
  level of amax. The count (levels in the first dialect's beneficial ranges minus
  those in the second's) is a sum over elements of f(level), f a step function of
  the level with a few steps per pair (3 or 4 for DialectFP4); f(level) is the sum
  of the step heights of the step levels l the element reaches, and (level >= l) is
  (u >= l) under truncation and (u >= l - 1/2, > for odd l) under rint ties to even
  (l <= levels - 1, so the clamp at the top level changes nothing), one exact float32
  threshold each (``_threshold``). ``weighted_count`` counts them a block at a time
  (popcounts of the compare masks); the dialect id is then computed without a branch
  (a branch on the count's sign, taken half the time on Gaussian data, measured 1.25x
  slower). Up to ``_CUTS`` steps per pair; formatbooks with more take the generic
  kernels.
* lut: ERR rows (integers in (grid/4)^2 units, as the generic code) padded to 32
  columns with a cost per element above every real entry, summed for every pair of
  levels (``_lut_pairs``: ``lut_argmin`` adds one row per pair of elements); the level
  is that of ``_level32``. ``lut_argmin`` returns the least sum, ties to the lowest id,
  as the generic code. As uint16 its sums saturate at 2^16 - 1 (the pair rows too),
  which keeps the argmin exact while the least sum stays below that: guaranteed
  when block_size times the least over dialects of their largest entry is below
  2^16 - 1 (with sub-formatbooks, the largest entry of all, since any dialect may be
  the only one allowed).
  Otherwise uint32, whose sums must stay below 2^27 (checked per spec).
* Element index: the number of midpoints (between consecutive dialect values, in
  level units, all integers) that the exact scaled magnitude u passes. two_stage
  rounds to the nearest value: a tie at the midpoint of indices c and c + 1 goes
  up iff c is odd (to the even index). lut takes IDX of u's cell, whose centre
  is above a midpoint exactly when floor(u) >= mid, that is when u >= mid (mid
  is an integer): every tie goes up. So each midpoint becomes a float32
  threshold T with (u > T) == (u >= mid) or (u > mid) (``_threshold``).
  Saturation is built in: u beyond the last midpoint takes the last index.
  two_stage books whose dialects all begin with the values 0, 1, ..., P (P >= 4, in
  grid units; DialectFP4) need thresholds only above P: below, the index is
  min(rint(u), P) for u in grid units (exact: one more power-of-two factor), since
  rint's ties to even are ties to the even index there (``_element_tables``).
* Output: the sum of the value steps of the passed thresholds (multiples of the
  grid, exact) times 2^k, or the value in grid units times grid * 2^k, one exact
  float32 multiply (the value and the power of two are normal float32 by the range
  check), with x's sign bit: zeros keep their sign.
  Codes: the index plus the sign bit of x.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

import numba
import numpy as np
from numba import prange

from lowbit.emulate import reference_dialect as rd
from lowbit.emulate._numba_fast import (
    _ABS32,
    _INF32_BITS,
    _LANES,
    _SIGN32,
    _bits_f32,
    _block_amax_bits,
    _count7,
    _f32_bits,
    _leave_tail,
    _step_sum7,
    _threshold,
    threads_for,
)
from lowbit.emulate._numba_simd import LUT_MAX_SUM, LUT_WIDTH, lut_argmin, prefetch, weighted_count
from lowbit.emulate.backends import Parts
from lowbit.emulate.numba_backend import INF_BLOCKS, _block_scan, _exp_scale, _out_array, _pow2, _store
from lowbit.formats.spec import Formatbook

_jit = numba.njit(cache=True, nogil=True)
_helper = numba.njit(cache=True)
_kernel = numba.njit(cache=True, nogil=True, parallel=True)

SELECTIONS = {"mse": 0, "two_stage": 1, "lut": 2}
_SAT16 = (1 << 16) - 1  # where lut_argmin's uint16 sums saturate
_CUTS = 4  # two_stage fast path: at most this many steps of the count per pair
# rows ahead that the selection loop prefetches (1, 2 and 3 measured alike); the dialectfp4
# fake_quant kernel on 4096 x 4096 float32 takes 0.85x-0.90x the time with one thread,
# 0.89x-0.92x with two (docs/performance.md); prefetching the output row for writing as
# well was slower
_AHEAD = 2
_SPLIT = 30
_LOW = (1 << _SPLIT) - 1


@functools.lru_cache(maxsize=64)
def _params(spec: Formatbook) -> tuple[Any, ...]:
    sf = spec.scale
    bp = (spec.block_size, 1, 0, sf.min_exp, sf.max_exp, sf.bias, 0, INF_BLOCKS[spec.inf_block], 0, 0, spec.emax, 0, 0)
    log2_grid = Fraction(spec.grid).numerator.bit_length() - Fraction(spec.grid).denominator.bit_length()
    fp = (
        SELECTIONS[spec.selection], int(spec.fixed_point_rule == "truncate"), int(spec.pair_tie == "higher_id"),
        spec.levels, spec.index_bits, -1 if sf.nan_code is None else sf.nan_code, 53 - log2_grid, 1 - log2_grid,
        spec.grid_units,
    )  # fmt: skip
    nd, ni = len(spec.dialects), len(spec.dialects[0])
    du = np.array(spec.dialects, np.int64)
    dv = du.astype(np.float64) * spec.grid
    step = Fraction(spec.grid) / 2
    err = np.zeros((spec.levels, nd), np.int64)
    idx = np.zeros((spec.levels, nd), np.int64)
    ben = np.zeros((spec.levels, nd), np.int64)
    ranges = rd.beneficial_ranges(spec) if spec.selection == "two_stage" else [[] for _ in range(nd)]
    for d in range(nd):
        vals = rd.dialect_values(spec, d)
        for lv in range(spec.levels):
            m = lv * step
            centre = m + step / 2  # lut: the cell's centre (rd.cell_centre)
            c = rd.nearest_index(vals, centre)
            idx[lv, d] = c
            err[lv, d] = int(((centre - vals[c]) / (step / 2)) ** 2)
            ben[lv, d] = int(any(lo <= m < hi for lo, hi in ranges[d]))
    pair = np.zeros(spec.grid_units, np.int64)
    if spec.selection == "two_stage":
        maxima = [spec.dialects[p][-1] for p in range(0, nd, 2)]
        for u in range(spec.grid_units):
            pair[u] = 2 * maxima.index(min(max(u, min(maxima)), max(maxima)))
    return bp, fp, du, dv, err, idx, ben, pair, ni


@_helper
def _mag(v, k, top):
    a = abs(v)
    if a == np.inf:
        return top
    return min(a * _pow2(-k), top)


@_helper
def _level(m, fp):
    t = m * _pow2(fp[7])
    f = np.floor(t)
    if fp[1] == 0:
        r = t - f
        if r > 0.5 or (r == 0.5 and np.int64(f) % 2 == 1):
            f += 1.0
    return min(np.int64(f), fp[3] - 1)


@_helper
def _nearest(dv, d, m):
    ni = dv.shape[1]
    c = 0
    while c + 1 < ni and dv[d, c + 1] <= m:
        c += 1
    if c + 1 < ni:
        twice = 2.0 * m
        mid = dv[d, c] + dv[d, c + 1]
        if twice > mid or (twice == mid and c % 2 == 1):
            c += 1
    return c


@_helper
def _select(x, i, s, e, k, top, fp, du, dv, err, ben, pair, allow):
    nd = du.shape[0]
    sel = fp[0]
    if sel == 0:  # least squares, exact integer key
        best_d = -1
        best_p = np.int64(0)
        best_r = np.int64(0)
        for d in range(nd):
            if not allow[d]:
                continue
            s2 = np.int64(0)
            ah = np.int64(0)
            al = np.int64(0)
            for j in range(s, e):
                m = _mag(np.float64(x[i, j]), k, top)
                u = du[d, _nearest(dv, d, m)]
                if u > 0:
                    xi = np.int64(m * _pow2(fp[6]))
                    s2 += u * u
                    ah += u * (xi >> _SPLIT)
                    al += u * (xi & _LOW)
            p = (s2 << (52 - _SPLIT)) - ah
            r = -al
            p += r >> _SPLIT
            r &= _LOW
            if best_d < 0 or p < best_p or (p == best_p and r < best_r):
                best_d, best_p, best_r = d, p, r
        return best_d
    if sel == 2:  # lookup tables
        best_d = -1
        best = np.int64(0)
        for d in range(nd):
            if not allow[d]:
                continue
            tot = np.int64(0)
            for j in range(s, e):
                tot += err[_level(_mag(np.float64(x[i, j]), k, top), fp), d]
            if best_d < 0 or tot < best:
                best_d, best = d, tot
        return best_d
    top_level = np.int64(0)  # two-stage
    for j in range(s, e):
        top_level = max(top_level, _level(_mag(np.float64(x[i, j]), k, top), fp))
    p = pair[top_level // 2]
    ca = np.int64(0)
    cb = np.int64(0)
    for j in range(s, e):
        lv = _level(_mag(np.float64(x[i, j]), k, top), fp)
        ca += ben[lv, p]
        cb += ben[lv, p + 1]
    if ca > cb:
        return p
    if cb > ca:
        return p + 1
    return p + fp[2]


@_helper
def _block(x, i, s, e, bp, fp, du, dv, err, ben, pair, allow):
    """(NaN block, exponent k, dialect id) of block x[i, s:e], choosing among the dialects
    ``allow`` marks."""
    amax, has_nan, has_inf = _block_scan(x, i, s, e)
    if has_nan or (has_inf and bp[7] == 0):
        return True, np.int64(0), np.int64(0)
    k = _exp_scale(bp, (0.0, 0.0, 0.0), amax, has_inf and bp[7] == 2)
    top = _pow2(bp[10] + 1)
    return False, k, np.int64(_select(x, i, s, e, k, top, fp, du, dv, err, ben, pair, allow))


@_helper
def _index(v, k, d, top, fp, dv, idx):
    m = _mag(v, k, top)
    if fp[0] == 2:
        return idx[_level(m, fp), d]
    return _nearest(dv, d, m)


@_helper
def _is_neg(v):
    return v < 0.0 or (v == 0.0 and np.float64(v).view(np.int64) < 0)


@_helper
def _quant_block(x, codes, scale_codes, scales, ids, mask, i, b, bp, fp, du, dv, err, idx, ben, pair, allow):
    """Generic code of block b of row i; 1 if it is a NaN block without a NaN scale code."""
    n = x.shape[1]
    bs = bp[0]
    top = _pow2(bp[10] + 1)
    sign = np.int64(1) << fp[4]
    s = b * bs
    e = min(s + bs, n)
    nan, k, d = _block(x, i, s, e, bp, fp, du, dv, err, ben, pair, allow)
    if nan:
        scales[i, b] = np.nan
        ids[i, b] = 0
        scale_codes[i, b] = fp[5] if fp[5] >= 0 else 0
        for j in range(s, e):
            codes[i, j] = 0
            mask[i, j] = fp[5] < 0
        return np.int64(fp[5] < 0)
    scale_codes[i, b] = k + bp[5]
    scales[i, b] = _pow2(k)
    ids[i, b] = d
    for j in range(s, e):
        v = np.float64(x[i, j])
        c = _index(v, k, d, top, fp, dv, idx)
        codes[i, j] = c | sign if _is_neg(v) else c
        mask[i, j] = False
    return np.int64(0)


@_jit
def _quantize(x, codes, scale_codes, scales, ids, mask, rows, blocks, bp, fp, du, dv, err, idx, ben, pair, allowed, sub):
    """The blocks (rows[t], blocks[t]) by the generic code; the number of NaN blocks
    without a NaN scale code. Block (i, b) chooses among the dialects allowed[sub[i, b]]."""
    nans = 0
    for t in range(rows.size):
        i, b = rows[t], blocks[t]
        allow = allowed[sub[i, b]]
        nans += _quant_block(x, codes, scale_codes, scales, ids, mask, i, b, bp, fp, du, dv, err, idx, ben, pair, allow)
    return nans


@_jit
def _dequantize(codes, scales, ids, mask, out, bs, index_bits, dv, okind, op):
    rows, n = codes.shape
    sign = np.int64(1) << index_bits
    for i in range(rows):
        for j in range(n):
            b = j // bs
            sc = scales[i, b]
            c = np.int64(codes[i, j])
            if sc != sc or mask[i, j]:
                v = np.nan
            else:
                v = dv[ids[i, b], c & (sign - 1)] * sc
                if c & sign:
                    v = -v
            _store(out, i, j, v, okind, op)


@_jit
def _fake_quant(x, out, rows, blocks, bp, fp, du, dv, err, idx, ben, pair, allowed, sub, okind, op):
    """The blocks (rows[t], blocks[t]) by the generic code (dialects as in ``_quantize``)."""
    n = x.shape[1]
    bs = bp[0]
    top = _pow2(bp[10] + 1)
    for t in range(rows.size):
        i = rows[t]
        s = blocks[t] * bs
        e = min(s + bs, n)
        nan, k, d = _block(x, i, s, e, bp, fp, du, dv, err, ben, pair, allowed[sub[i, blocks[t]]])
        for j in range(s, e):
            if nan:
                v = np.nan
            else:
                xv = np.float64(x[i, j])
                v = dv[d, _index(xv, k, d, top, fp, dv, idx)] * _pow2(k)
                if _is_neg(xv):
                    v = -v
            _store(out, i, j, v, okind, op)


# ---------------------------------------------------------------------------
# float32 fast path (two_stage and lut selection; see the module docstring)


@functools.lru_cache(maxsize=64)
def _fast_tables(spec: Formatbook) -> tuple[Any, ...] | None:
    """(two_stage count thresholds and weights, the lut pair table (``_lut_pairs``, uint16 or
    uint32), and ``_element_tables``) of the float32 fast path, or None when ``spec`` does not
    take it."""
    sf = spec.scale
    log2_grid = Fraction(spec.grid).numerator.bit_length() - Fraction(spec.grid).denominator.bit_length()
    sh = 1 - log2_grid  # level units per value unit: 2^sh
    ok = (
        spec.selection in ("two_stage", "lut")
        and spec.block_size % _LANES == 0
        and len(spec.dialects[0]) == 8
        and len(spec.dialects) <= LUT_WIDTH
        and spec.levels <= 64
        and -126 <= sh - sf.max_exp
        and sh - sf.min_exp <= 127
        and log2_grid + sf.min_exp >= -126
        and spec.emax + 1 + sf.max_exp <= 127
    )
    if not ok:
        return None
    _bp, _fp, du, _dv, err, _idx, ben, _pair, _ni = _params(spec)
    cuts = _count_steps(spec, ben)
    if cuts is None:
        return None
    bs, pad = spec.block_size, int(err.max()) + 1
    narrow = bs * int(err.max(axis=0).min()) < _SAT16
    if spec.selection == "lut" and not narrow and 2 * bs * pad >= LUT_MAX_SUM:
        return None
    table = _lut_pairs(spec, not narrow) if spec.selection == "lut" else np.zeros(LUT_WIDTH, np.uint16)
    return *cuts, table, *_element_tables(spec, du, sh)


def _element_tables(spec: Formatbook, du: np.ndarray, sh: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(thresholds, values, prefix) of the element pass. prefix = 0: per dialect the 7 float32
    thresholds T (level units) with (u > T) == (u passes the midpoint of indices c, c + 1),
    a tie going to the even index (two_stage) or up (lut), and the 7 value steps. prefix = P:
    two_stage books whose dialects all begin 0, 1, ..., P in grid units (P >= 4; DialectFP4:
    P = 4): below the midpoint of P and the next value, the nearest value with ties to the
    even index is min(rint(u), P) (u in grid units; the value is the index), so only the
    3 or fewer midpoints above it need a threshold each (grid units; padded with thresholds
    no u passes), with the value above it: the DialectFP4 kernels measured 1.06x-1.08x faster."""
    nd = du.shape[0]
    is_index = np.all(du == np.arange(du.shape[1]), axis=0)  # column c: every dialect's value c is c
    prefix = int(np.argmin(is_index)) - 1 if spec.selection == "two_stage" else 0
    if prefix >= 4 and -126 <= sh - 1 - spec.scale.max_exp:  # 2^(sh - 1 - k) normal
        cols = range(prefix, 7)
        thr = np.full((nd, 3), np.finfo(np.float32).max, np.float32)
        val = np.zeros((nd, 3), np.float32)
        for d in range(nd):
            for j, c in enumerate(cols):
                thr[d, j] = _threshold((du[d, c] + du[d, c + 1]) / 2, float(c % 2))
                val[d, j] = du[d, c + 1]
        return thr, val, prefix
    mids = (du[:, :-1] + du[:, 1:]).astype(np.float64)  # midpoints in level units (step = grid / 2)
    # two_stage: a tie at the midpoint of indices c, c + 1 goes to the even index; lut: up
    up = np.ones(7) if spec.selection == "lut" else np.arange(7) % 2
    thr = np.array([[_threshold(mids[d, c], float(up[c])) for c in range(7)] for d in range(nd)], np.float32)
    return thr, ((du[:, 1:] - du[:, :-1]) * spec.grid).astype(np.float32), 0


@functools.lru_cache(maxsize=16)
def _lut_pairs(spec: Formatbook, wide: bool) -> np.ndarray:
    """The lut fast path's table: row l1 * levels + l2 is ERR row l1 plus ERR row l2, each
    padded to ``LUT_WIDTH`` columns with a cost per element above every real entry (so a
    block's padded sum exceeds every real one); uint16 saturating at 2^16 - 1, or uint32
    (``wide``)."""
    _bp, _fp, _du, _dv, err, *_ = _params(spec)
    rows = np.full((spec.levels, LUT_WIDTH), int(err.max()) + 1 if wide else _SAT16, np.int64)
    rows[:, : err.shape[1]] = err
    pairs = (rows[:, None, :] + rows[None, :, :]).reshape(-1)
    return pairs.astype(np.uint32) if wide else np.minimum(pairs, _SAT16).astype(np.uint16)


def _count_steps(spec: Formatbook, ben: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """two_stage: per pair (row p = its first dialect), the float32 thresholds T and int32
    weights w with f(level(u)) = sum of w where u > T, f = (level in the beneficial range of
    dialect p) - (in that of p + 1); padded to ``_CUTS`` with thresholds no u passes. None
    when a pair needs more. lut: padding only (unused)."""
    nd = len(spec.dialects)
    cut = np.full((nd, _CUTS), np.finfo(np.float32).max, np.float32)
    weight = np.zeros((nd, _CUTS), np.int32)
    if spec.selection != "two_stage":
        return cut, weight
    truncate = spec.fixed_point_rule == "truncate"
    for p in range(0, nd, 2):
        f = ben[:, p] - ben[:, p + 1]
        steps = [(-1.0, f[0])] if f[0] else []  # u > -1 always: the level-0 value
        for lv in np.flatnonzero(np.diff(f)) + 1:  # f changes at level lv: level >= lv
            t = _threshold(float(lv), 1.0) if truncate else _threshold(lv - 0.5, float(lv % 2 == 0))
            steps.append((t, f[lv] - f[lv - 1]))
        if len(steps) > _CUTS:
            return None
        for j, (t, w) in enumerate(steps):
            cut[p, j], weight[p, j] = t, w
    return cut, weight


def _fast(spec: Formatbook, x: np.ndarray, out: str | None, subbooks: Any) -> tuple[Any, ...] | None:
    """(count thresholds, count weights, lut pair table, penalty rows, element thresholds,
    values, prefix, per-block sub-formatbooks, penalty row offset (-1: none)) of the fast
    path for this call, or None."""
    if x.dtype != np.float32 or not x.flags.c_contiguous or out not in (None, "float32"):
        return None
    tables = _fast_tables(spec)
    if tables is None:
        return None
    cut, weight, errs, *element = tables
    if subbooks is None:
        return cut, weight, errs, np.zeros(LUT_WIDTH, errs.dtype), *element, np.zeros((1, 1), np.int32), -1
    tables = _penalty_table(spec, subbooks[0])
    return None if tables is None else (cut, weight, *tables, *element, subbooks[1], 0)


def _penalty_table(spec: Formatbook, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(pair rows of ``_lut_pairs``, penalty rows): one penalty row per sub-formatbook, 0
    under an allowed dialect and, under any other, more than any block's sum can be (2^16 -
    1, saturating, when every dialect's sums stay below it; else block size times (the
    largest entry + 1), both tables in uint32), so ``lut_argmin`` over a block's rows plus
    its sub-formatbook's row never picks a dialect the sub-formatbook leaves out. The pair
    table is the cached one, not copied per call. None when uint32 sums could reach
    ``LUT_MAX_SUM``."""
    _bp, _fp, _du, _dv, err, *_ = _params(spec)
    if spec.block_size * int(err.max()) < _SAT16:  # then the table is uint16 and saturates
        pen = np.full((allowed.shape[0], LUT_WIDTH), _SAT16, np.uint16)
        pen[:, : allowed.shape[1]] = np.where(allowed, 0, _SAT16)
        return _lut_pairs(spec, False), pen.reshape(-1)
    big = spec.block_size * (int(err.max()) + 1)
    if 2 * big >= LUT_MAX_SUM:
        return None
    pen = np.full((allowed.shape[0], LUT_WIDTH), big, np.uint32)
    pen[:, : allowed.shape[1]] = np.where(allowed, 0, big)
    return _lut_pairs(spec, True), pen.reshape(-1)


@_helper
def _level32(u, top, truncate):
    """Fixed-point level (float32, integer-valued) of the scaled magnitude u in level units."""
    t = min(u, top)
    return np.floor(t) if truncate == 1 else np.rint(t)


@_jit
def _select_row(x, left, scale_codes, scales, ids, i, bp, fp, pair, cut, weight, errs, pens, sub, penalty):
    """First pass of the fast path: exponent and dialect of each of row i's full blocks
    (blocks holding NaN or Inf, and the partial last block, are marked in ``left``). Two
    loops: the exponents (and two_stage pairs, kept in ``ids`` meanwhile), then the
    selections, which no longer wait on one another's exponent: measured 1.25x faster
    than one loop doing both. The selection loop computes on a row already in cache, so
    it prefetches row i + ``_AHEAD`` meanwhile (see ``_AHEAD``).
    ``penalty`` >= 0: lut selection adds row penalty + sub[i, b] of ``pens`` to each block's
    sums (the sub-formatbook's penalty row, see ``_penalty_table``)."""
    xr = x[i]
    bs = bp[0]
    top = np.float32(fp[3] - 1)
    truncate = fp[1]
    nleft = _leave_tail(left, i, xr.size, bs)
    for b in range(xr.size // bs):
        m = _block_amax_bits(xr, b * bs, bs)
        if m >= _INF32_BITS:
            left[i, b] = True
            nleft += 1
            continue
        k = _exp_scale(bp, (0.0, 0.0, 0.0), np.float64(_bits_f32(m)), False)
        scale_codes[i, b] = k + bp[5]
        scales[i, b] = _pow2(k)
        if fp[0] == 1:  # two_stage: the pair from the top level
            ids[i, b] = pair[np.int64(_level32(_bits_f32(m) * np.float32(_pow2(fp[7] - k)), top, truncate)) >> 1]
    ahead = _AHEAD * xr.size if i + _AHEAD < x.shape[0] else -1
    for b in range(xr.size // bs):
        if ahead >= 0:
            for c in range(0, bs, _LANES):
                prefetch(xr, ahead + b * bs + c)
        if left[i, b]:
            continue
        inv = np.float32(_pow2(fp[7] - (np.int64(scale_codes[i, b]) - bp[5])))
        if fp[0] == 1:  # two_stage: the beneficial-range counts pick within the pair
            p = np.int64(ids[i, b])
            t = (cut[p, 0], cut[p, 1], cut[p, 2], cut[p, 3])  # _CUTS of them
            w = (weight[p, 0], weight[p, 1], weight[p, 2], weight[p, 3])
            cnt = weighted_count(xr, b * bs, bs // _LANES, inv, t, w)
            ids[i, b] = p + np.int64(cnt < 0) + np.int64(cnt == 0) * fp[2]  # no branch
        else:  # lut: argmin over dialects of the summed ERR rows, ties to the lowest id
            extra = penalty + sub[i, b] if penalty >= 0 else -1
            ids[i, b] = lut_argmin(errs, pens, xr, b * bs, bs // _LANES, inv, top, truncate, fp[3], extra)
    return nleft


@_jit
def _prefix_value(u, top, t, v):
    """The nearest of the values 0, 1, ..., top, v[0], v[1], v[2] to u (grid units; ties to the
    even index, thresholds ``t`` from ``_element_tables``), as one branch-free chain."""
    q = min(np.rint(u), top)
    q = v[0] if u > t[0] else q
    q = v[1] if u > t[1] else q
    return v[2] if u > t[2] else q


@_jit
def _prefix_index(u, top, t):
    """The index of ``_prefix_value``: min(rint(u), top) plus the thresholds ``t`` u passes."""
    return np.int32(min(np.rint(u), top)) + np.int32(u > t[0]) + np.int32(u > t[1]) + np.int32(u > t[2])


@_jit
def _fq_row(x, out, left, scale_codes, ids, i, bp, fp, thr, steps, prefix):
    """Second pass: q = sum of the value steps whose threshold the element passes, times 2^k;
    with a ``prefix`` (``_element_tables``), q = ``_prefix_value`` in grid units, times grid * 2^k."""
    xr, orow = x[i], out[i]
    bs = bp[0]
    top = np.float32(prefix)
    for b in range(xr.size // bs):
        if left[i, b]:
            continue
        k = np.int64(scale_codes[i, b]) - bp[5]
        d = np.uint64(ids[i, b])
        if prefix:
            inv, sc = np.float32(_pow2(fp[7] - 1 - k)), np.float32(_pow2(k + 1 - fp[7]))
            t3, v3 = (thr[d, 0], thr[d, 1], thr[d, 2]), (steps[d, 0], steps[d, 1], steps[d, 2])
            for c in range(bs // _LANES):
                base = np.uint64(b * bs + c * _LANES)
                for lane in range(_LANES):
                    j = base + np.uint64(lane)
                    xb = _f32_bits(xr[j])
                    q = _prefix_value(_bits_f32(xb & _ABS32) * inv, top, t3, v3)
                    orow[j] = _bits_f32(_f32_bits(q * sc) | (xb & _SIGN32))
            continue
        inv, sc = np.float32(_pow2(fp[7] - k)), np.float32(_pow2(k))
        t = (thr[d, 0], thr[d, 1], thr[d, 2], thr[d, 3], thr[d, 4], thr[d, 5], thr[d, 6])
        st = (steps[d, 0], steps[d, 1], steps[d, 2], steps[d, 3], steps[d, 4], steps[d, 5], steps[d, 6])
        for c in range(bs // _LANES):
            base = np.uint64(b * bs + c * _LANES)
            for lane in range(_LANES):
                j = base + np.uint64(lane)
                xb = _f32_bits(xr[j])
                q = _step_sum7(_bits_f32(xb & _ABS32) * inv, t, st)
                orow[j] = _bits_f32(_f32_bits(q * sc) | (xb & _SIGN32))


@_jit
def _quant_row(x, codes, left, ids, scale_codes, i, bp, fp, thr, prefix):
    """Second pass: the index is the number of thresholds the element passes; with a
    ``prefix``, min(rint(u), prefix) plus the number of its three thresholds u passes."""
    xr, crow = x[i], codes[i]
    bs = bp[0]
    sign = np.int32(1) << fp[4]
    top = np.float32(prefix)
    for b in range(xr.size // bs):
        if left[i, b]:
            continue
        k = np.int64(scale_codes[i, b]) - bp[5]
        d = np.uint64(ids[i, b])
        if prefix:
            inv = np.float32(_pow2(fp[7] - 1 - k))
            t3 = (thr[d, 0], thr[d, 1], thr[d, 2])
            for c in range(bs // _LANES):
                base = np.uint64(b * bs + c * _LANES)
                for lane in range(_LANES):
                    j = base + np.uint64(lane)
                    xb = _f32_bits(xr[j])
                    n = _prefix_index(_bits_f32(xb & _ABS32) * inv, top, t3)
                    crow[j] = n | sign if xb < 0 else n
            continue
        inv = np.float32(_pow2(fp[7] - k))
        t = (thr[d, 0], thr[d, 1], thr[d, 2], thr[d, 3], thr[d, 4], thr[d, 5], thr[d, 6])
        for c in range(bs // _LANES):
            base = np.uint64(b * bs + c * _LANES)
            for lane in range(_LANES):
                j = base + np.uint64(lane)
                xb = _f32_bits(xr[j])
                n = _count7(_bits_f32(xb & _ABS32) * inv, t)
                crow[j] = n | sign if xb < 0 else n


@_kernel
def _fq_fast(x, out, left, scale_codes, scales, ids, bp, fp, pair, cut, weight, errs, pens, sub, penalty, thr, steps, prefix):
    nleft = 0
    for i in prange(x.shape[0]):
        nleft += _select_row(x, left, scale_codes, scales, ids, i, bp, fp, pair, cut, weight, errs, pens, sub, penalty)
        _fq_row(x, out, left, scale_codes, ids, i, bp, fp, thr, steps, prefix)
    return nleft


@_kernel
def _quant_fast(x, codes, left, scale_codes, scales, ids, bp, fp, pair, cut, weight, errs, pens, sub, penalty, thr, prefix):
    nleft = 0
    for i in prange(x.shape[0]):
        nleft += _select_row(x, left, scale_codes, scales, ids, i, bp, fp, pair, cut, weight, errs, pens, sub, penalty)
        _quant_row(x, codes, left, ids, scale_codes, i, bp, fp, thr, prefix)
    return nleft


# ---------------------------------------------------------------------------
# entry points


def _generic_masks(spec: Formatbook, shape: tuple[int, int], subbooks: Any) -> tuple[np.ndarray, np.ndarray]:
    """(allowed, sub) of the generic kernels: every dialect allowed when there are no sub-formatbooks."""
    if subbooks is None:
        return np.ones((1, len(spec.dialects)), np.bool_), np.zeros(shape, np.int32)
    return subbooks


def quantize(spec: Formatbook, x: np.ndarray, subbooks: Any = None) -> Parts:
    """``subbooks``: None, or (allowed, sub): allowed (sub-formatbooks, dialects) bool, sub (rows,
    blocks) int32, the sub-formatbook of each block (checked by the API)."""
    bp, fp, du, dv, err, idx, ben, pair, _ni = _params(spec)
    rows, n = x.shape
    nb = -(-n // spec.block_size)
    codes = np.empty((rows, n), np.uint8)
    scale_codes = np.empty((rows, nb), np.uint8)
    scales = np.empty((rows, nb), np.float64)
    ids = np.empty((rows, nb), np.uint8)
    mask = np.zeros((rows, n), np.bool_)
    left = np.ones((rows, nb), np.bool_)
    fast = _fast(spec, x, None, subbooks)
    if fast is not None:
        cut, weight, errs, pens, thr, _values, prefix, sub, penalty = fast
        left[:] = False
        with threads_for(x.size):
            _quant_fast(x, codes, left, scale_codes, scales, ids, bp, fp, pair, cut, weight, errs, pens, sub, penalty, thr, prefix)
    allowed, sub = _generic_masks(spec, (rows, nb), subbooks)
    nans = _quantize(
        x, codes, scale_codes, scales, ids, mask, *np.nonzero(left), bp, fp, du, dv, err, idx, ben, pair, allowed, sub
    )
    return Parts(codes=codes, scale_codes=scale_codes, scales=scales, nan_mask=mask if nans else None, dialect_ids=ids)


def dequantize(spec: Formatbook, parts: Parts, out: str) -> np.ndarray:
    _bp, _fp, _du, dv, *_ = _params(spec)
    res, okind, op = _out_array(parts.codes.shape, out)
    mask = parts.nan_mask if parts.nan_mask is not None else np.zeros(parts.codes.shape, np.bool_)
    _dequantize(parts.codes, parts.scales, parts.dialect_ids, mask, res, spec.block_size, spec.index_bits, dv, okind, op)
    return res


def fake_quant(spec: Formatbook, x: np.ndarray, out: str, subbooks: Any = None) -> np.ndarray:
    bp, fp, du, dv, err, idx, ben, pair, _ni = _params(spec)
    res, okind, op = _out_array(x.shape, out)
    rows, n = x.shape
    nb = -(-n // spec.block_size)
    fast = _fast(spec, x, out, subbooks)
    if fast is None:
        left = np.ones((rows, nb), np.bool_)
    else:
        cut, weight, errs, pens, thr, values, prefix, sub, penalty = fast
        left = np.zeros((rows, nb), np.bool_)
        per_block = (np.empty((rows, nb), np.uint8), np.empty((rows, nb), np.float64), np.empty((rows, nb), np.uint8))
        with threads_for(x.size):
            if not _fq_fast(x, res, left, *per_block, bp, fp, pair, cut, weight, errs, pens, sub, penalty, thr, values, prefix):
                return res
    allowed, sub = _generic_masks(spec, (rows, nb), subbooks)
    _fake_quant(x, res, *np.nonzero(left), bp, fp, du, dv, err, idx, ben, pair, allowed, sub, okind, op)
    return res
