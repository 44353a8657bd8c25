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
* ``lut``: integer tables ERR (squared error in (grid/2)^2 units) and IDX;
  ``two_stage``: a table of beneficial-range membership per level and dialect
  and a table from the truncated block maximum to its pair. All tables are built
  from the reference's exact definitions.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

import numba
import numpy as np

from lowbit.emulate import reference_dialect as rd
from lowbit.emulate.backends import Parts
from lowbit.emulate.numba_backend import INF_BLOCKS, _block_scan, _exp_scale, _out_array, _pow2, _store
from lowbit.formats.spec import Formatbook

_jit = numba.njit(cache=True, nogil=True)
_helper = numba.njit(cache=True)

SELECTIONS = {"mse": 0, "two_stage": 1, "lut": 2}
_SPLIT = 30
_LOW = (1 << _SPLIT) - 1


@functools.lru_cache(maxsize=64)
def _params(spec: Formatbook) -> tuple[Any, ...]:
    sf = spec.scale
    bp = (spec.block_size, 1, 0, sf.min_exp, sf.max_exp, sf.bias, 0, INF_BLOCKS[spec.inf_block], 0, 0, spec.emax, 0, 0)
    log2_grid = Fraction(spec.grid).numerator.bit_length() - Fraction(spec.grid).denominator.bit_length()
    fp = (
        SELECTIONS[spec.selection], int(spec.fixed_point == "truncate"), int(spec.pair_tie == "higher_id"),
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
            c = rd.nearest_index(vals, m)
            idx[lv, d] = c
            err[lv, d] = int(((m - vals[c]) / step) ** 2)
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
def _select(x, i, s, e, k, top, fp, du, dv, err, ben, pair):
    nd = du.shape[0]
    sel = fp[0]
    if sel == 0:  # least squares, exact integer key
        best_d = 0
        best_p = np.int64(0)
        best_r = np.int64(0)
        for d in range(nd):
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
            if d == 0 or p < best_p or (p == best_p and r < best_r):
                best_d, best_p, best_r = d, p, r
        return best_d
    if sel == 2:  # lookup tables
        best_d = 0
        best = np.int64(0)
        for d in range(nd):
            tot = np.int64(0)
            for j in range(s, e):
                tot += err[_level(_mag(np.float64(x[i, j]), k, top), fp), d]
            if d == 0 or tot < best:
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
def _block(x, i, s, e, bp, fp, du, dv, err, ben, pair):
    """(NaN block, exponent k, dialect id) of block x[i, s:e]."""
    amax, has_nan, has_inf = _block_scan(x, i, s, e)
    if has_nan or (has_inf and bp[7] == 0):
        return True, np.int64(0), np.int64(0)
    k = _exp_scale(bp, (0.0, 0.0, 0.0), amax, has_inf and bp[7] == 2)
    top = _pow2(bp[10] + 1)
    return False, k, np.int64(_select(x, i, s, e, k, top, fp, du, dv, err, ben, pair))


@_helper
def _index(v, k, d, top, fp, dv, idx):
    m = _mag(v, k, top)
    if fp[0] == 2:
        return idx[_level(m, fp), d]
    return _nearest(dv, d, m)


@_helper
def _is_neg(v):
    return v < 0.0 or (v == 0.0 and np.float64(v).view(np.int64) < 0)


@_jit
def _quantize(x, codes, scale_codes, scales, ids, mask, bp, fp, du, dv, err, idx, ben, pair):
    rows, n = x.shape
    bs = bp[0]
    top = _pow2(bp[10] + 1)
    sign = np.int64(1) << fp[4]
    nans = 0
    for i in range(rows):
        for b in range(scale_codes.shape[1]):
            s = b * bs
            e = min(s + bs, n)
            nan, k, d = _block(x, i, s, e, bp, fp, du, dv, err, ben, pair)
            if nan:
                scales[i, b] = np.nan
                ids[i, b] = 0
                if fp[5] >= 0:
                    scale_codes[i, b] = fp[5]
                else:
                    scale_codes[i, b] = 0
                    nans += 1
                for j in range(s, e):
                    codes[i, j] = 0
                    mask[i, j] = fp[5] < 0
                continue
            scale_codes[i, b] = k + bp[5]
            scales[i, b] = _pow2(k)
            ids[i, b] = d
            for j in range(s, e):
                v = np.float64(x[i, j])
                c = _index(v, k, d, top, fp, dv, idx)
                codes[i, j] = c | sign if _is_neg(v) else c
                mask[i, j] = False
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
def _fake_quant(x, out, bp, fp, du, dv, err, idx, ben, pair, okind, op):
    rows, n = x.shape
    bs = bp[0]
    top = _pow2(bp[10] + 1)
    for i in range(rows):
        for s in range(0, n, bs):
            e = min(s + bs, n)
            nan, k, d = _block(x, i, s, e, bp, fp, du, dv, err, ben, pair)
            for j in range(s, e):
                if nan:
                    v = np.nan
                else:
                    xv = np.float64(x[i, j])
                    v = dv[d, _index(xv, k, d, top, fp, dv, idx)] * _pow2(k)
                    if _is_neg(xv):
                        v = -v
                _store(out, i, j, v, okind, op)


def quantize(spec: Formatbook, x: np.ndarray) -> Parts:
    bp, fp, du, dv, err, idx, ben, pair, _ni = _params(spec)
    rows, n = x.shape
    nb = -(-n // spec.block_size)
    codes = np.empty((rows, n), np.uint8)
    scale_codes = np.empty((rows, nb), np.uint8)
    scales = np.empty((rows, nb), np.float64)
    ids = np.empty((rows, nb), np.uint8)
    mask = np.empty((rows, n), np.bool_)
    nans = _quantize(x, codes, scale_codes, scales, ids, mask, bp, fp, du, dv, err, idx, ben, pair)
    return Parts(codes=codes, scale_codes=scale_codes, scales=scales, nan_mask=mask if nans else None, dialect_ids=ids)


def dequantize(spec: Formatbook, parts: Parts, out: str) -> np.ndarray:
    _bp, _fp, _du, dv, *_ = _params(spec)
    res, okind, op = _out_array(parts.codes.shape, out)
    mask = parts.nan_mask if parts.nan_mask is not None else np.zeros(parts.codes.shape, np.bool_)
    _dequantize(parts.codes, parts.scales, parts.dialect_ids, mask, res, spec.block_size, spec.index_bits, dv, okind, op)
    return res


def fake_quant(spec: Formatbook, x: np.ndarray, out: str) -> np.ndarray:
    bp, fp, du, dv, err, idx, ben, pair, _ni = _params(spec)
    res, okind, op = _out_array(x.shape, out)
    _fake_quant(x, res, bp, fp, du, dv, err, idx, ben, pair, okind, op)
    return res
