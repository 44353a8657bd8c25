"""Triton kernels for :class:`lowbit.formats.Formatbook` (BlockDialect): the Numba generic
kernels of :mod:`lowbit.emulate._numba_dialect`, one tile of blocks at a time.

A tile is ``G`` blocks by ``BSP`` lanes (block size rounded up to a power of two),
masked at the block and row ends as the block kernels of
:mod:`lowbit.emulate._triton_kernels` (whose tile, load, store and exponent helpers
these reuse). Every step is the Numba generic kernel's, in the same arithmetic, so
codes, scale codes, scales, dialect ids and values are bit-identical to Numba's:

* Input widens exactly to float64; the block scan (NaN, Inf, largest finite |x|)
  and the shared exponent k are the block kernels' (``floor`` rule from the float's
  bits). The scaled magnitude m = min(|x| * 2^-k, 2^(emax+1)) (Inf: 2^(emax+1)) is
  one float64 multiply by a power of two, the same IEEE operation as Numba's.
* Fixed-point levels (two_stage, lut): t = m * 2^(1 - log2 grid) (a power of two
  again), floor, and for ``nearest`` the exact comparison of t - floor(t) with 1/2
  (ties to the even level), saturated to the top level, as ``_numba_dialect._level``.
* ``mse``: per dialect, the nearest index (the count of values <= m, then one exact
  comparison of 2m with the sum of the two neighbours, ties to the even index) and
  Numba's exact integer key 2^52 * sum(u^2) - sum(u * X) with X = m * 2^(53 - log2
  grid), an integer below 2^62 wherever u > 0, accumulated in int64 pieces (X split
  at bit 30) and compared as (high, low): integer sums do not depend on their order,
  so the key and its ties are Numba's, ties to the lowest allowed id.
* ``lut``: the sum of the integer ERR entries of the block's levels per dialect,
  ties to the lowest allowed id; element index IDX[level][dialect].
* ``two_stage``: the pair from the largest level (``pair`` table), then the counts of
  levels in each dialect's beneficial range (``ben`` table), ``pair_tie`` on equal
  counts; element index: the nearest value, as mse.
* mse and lut score every dialect at once on a (G, BSP, dialects) tile and take the
  least key with exact integer min-reductions: the least key, then (mse) the least low
  piece among those, then the lowest id among what is left. Padding lanes (beyond the
  block or row end) hold m = 0: level 0 lies in no beneficial range and costs ERR 1
  under every dialect, and u = 0 adds nothing to the mse key, so they change nothing.
* Tables (dialect values in grid units and as float64, ERR, IDX, ben, pair) are
  ``_numba_dialect._params``'s, copied to the device; sub-formatbooks arrive as the
  Numba backend gets them (allowed (sub-formatbooks, dialects), sub (rows, blocks)).
* Values: dialect value (a float64 multiple of the grid) times 2^k, exact, with x's
  sign bit, then the block kernels' single rounding into the output format.
  Kernels are launched with ``enable_fp_fusion=False``.

Block parameters are Numba's constexpr tuples: ``BP`` = ``_params``'s bp (0 block
size, 3 min_exp, 4 max_exp, 5 bias, 7 inf_block, 10 emax), ``FP`` its fp (0 selection
mse/two_stage/lut, 1 truncate, 2 pair_tie higher_id, 3 levels, 4 index_bits, 5 scale
NaN code or -1, 6 53 - log2 grid, 7 1 - log2 grid).
"""

from __future__ import annotations

import triton
import triton.language as tl

from lowbit.emulate._triton_kernels import _exp_scale, _load, _pow2, _store, _tile

_SPLIT = tl.constexpr(30)  # as _numba_dialect._SPLIT
_LOW = tl.constexpr((1 << 30) - 1)
_I64MAX = tl.constexpr((1 << 63) - 1)


@triton.jit
def _level(mag, FP: tl.constexpr):
    """Fixed-point level of the scaled magnitude (``_numba_dialect._level``)."""
    t = mag * _pow2(tl.full([], FP[7], tl.int64))
    f = tl.math.floor(t)
    if FP[1] == 0:
        r = t - f
        up = (r > 0.5) | ((r == 0.5) & ((f.to(tl.int64) % 2) == 1))
        f = tl.where(up, f + 1.0, f)
    return tl.minimum(f.to(tl.int64), FP[3] - 1)


@triton.jit
def _nearest(dv, base, mag, NI: tl.constexpr):
    """Index of the value nearest to mag >= 0 in the dialect row at dv + base (base and mag
    broadcast: a row per block, or per dialect), ties to the even index
    (``_numba_dialect._nearest``)."""
    mag, base = tl.broadcast(mag, base)
    c = tl.zeros(mag.shape, tl.int64)
    for j in range(1, NI):  # values ascend: c is the largest index whose value is <= mag
        c += (tl.load(dv + base + j) <= mag).to(tl.int64)
    lo = tl.load(dv + base + c)
    hi = tl.load(dv + base + tl.minimum(c + 1, NI - 1))
    twice = 2.0 * mag
    up = (c + 1 < NI) & ((twice > lo + hi) | ((twice == lo + hi) & ((c % 2) == 1)))
    return c + up.to(tl.int64)


@triton.jit
def _select(x, m, g, gm, du, dv, err, ben, pair, allowed, sub,
            BP: tl.constexpr, FP: tl.constexpr, ND: tl.constexpr, NDP: tl.constexpr, NI: tl.constexpr,
            HAS_SUB: tl.constexpr):  # fmt: skip
    """Per block (G,): exponent k, NaN block, dialect id; per lane: the scaled magnitude
    (0 in NaN blocks' NaN lanes and in masked lanes). mse and lut score all dialects at
    once on a (G, BSP, NDP) tile (NDP: the dialect count rounded up to a power of two)."""
    ax = tl.where(m, tl.abs(x), 0.0)
    isnan = ax != ax
    isinf = ax == float("inf")
    has_nan = tl.max(isnan.to(tl.int32), axis=1) != 0
    has_inf = tl.max(isinf.to(tl.int32), axis=1) != 0
    amax = tl.max(tl.where(isinf | isnan, 0.0, ax), axis=1)
    nan_block = has_nan | (has_inf & (BP[7] == 0))
    k = _exp_scale(amax, has_inf & (BP[7] == 2), BP, None)
    top = _pow2(tl.full([], BP[10] + 1, tl.int64))
    mag = tl.where(isinf, top, tl.minimum(tl.where(isnan, 0.0, ax) * _pow2(-k)[:, None], top))
    # masked lanes (m = 0) have level 0, which is in no beneficial range (every dialect has
    # the value 0) and whose ERR entry is 1 under every dialect: they change no selection
    if FP[0] == 1:  # two_stage: the pair from the top level, then the beneficial-range counts
        lv = _level(mag, FP)
        p = tl.load(pair + tl.max(lv, axis=1) // 2)
        ca = tl.sum(tl.load(ben + lv * ND + p[:, None]), axis=1)
        cb = tl.sum(tl.load(ben + lv * ND + p[:, None] + 1), axis=1)
        best = tl.where(ca > cb, p, tl.where(cb > ca, p + 1, p + FP[2]))
    else:  # mse and lut: the least key over the dialects a block may take
        dd = tl.arange(0, NDP)
        cand = (dd < ND)[None, :]  # (1, NDP), then (G, NDP): the dialects a block may take
        col = tl.minimum(dd, ND - 1)[None, None, :]  # padding columns read the last dialect
        if HAS_SUB:  # blocks past the end read sub-formatbook 0, which allows some dialect
            subs = tl.load(sub + g, mask=gm, other=0).to(tl.int64)
            cand = cand & (tl.load(allowed + subs[:, None] * ND + dd[None, :], mask=cand, other=0) != 0)
        if FP[0] == 2:  # lut: summed ERR entries of the levels
            lv = (_level(mag, FP) * ND)[:, :, None]
            hi = tl.sum(tl.load(err + lv + col), axis=1)
        else:  # mse: the exact integer key (u = 0 adds nothing)
            row = col * NI
            u = tl.load(du + row + _nearest(dv, row, mag[:, :, None], NI))
            xi = (mag * _pow2(tl.full([], FP[6], tl.int64))).to(tl.int64)[:, :, None]
            pos = u > 0
            s2 = tl.sum(tl.where(pos, u * u, 0), axis=1)
            ah = tl.sum(tl.where(pos, u * (xi >> _SPLIT), 0), axis=1)
            al = tl.sum(tl.where(pos, u * (xi & _LOW), 0), axis=1)
            hi = (s2 << (52 - _SPLIT)) - ah
            lo = -al
            hi += lo >> _SPLIT
            lo &= _LOW
        # least key ((hi, lo) for mse), ties to the lowest id
        cand = cand & (hi == tl.min(tl.where(cand, hi, _I64MAX), axis=1)[:, None])
        if FP[0] == 0:
            cand = cand & (lo == tl.min(tl.where(cand, lo, _I64MAX), axis=1)[:, None])
        best = tl.min(tl.where(cand, dd[None, :], NDP), axis=1).to(tl.int64)
    return k, nan_block, best, mag


@triton.jit
def _index(mag, d, dv, idx, FP: tl.constexpr, ND: tl.constexpr, NI: tl.constexpr):
    """Element index in dialect d (G,): IDX of the level (lut) or the nearest value."""
    if FP[0] == 2:
        c = tl.load(idx + _level(mag, FP) * ND + d[:, None])
    else:
        c = _nearest(dv, d[:, None] * NI, mag, NI)
    return c


@triton.jit
def quant_dialect(x_ptr, codes_ptr, sc_ptr, sv_ptr, ids_ptr, mask_ptr, du, dv, err, idx, ben, pair, allowed, sub,
                  n, nblocks, total_blocks,
                  BP: tl.constexpr, FP: tl.constexpr, ND: tl.constexpr, NDP: tl.constexpr, NI: tl.constexpr,
                  HAS_SUB: tl.constexpr,
                  IN_KIND: tl.constexpr, G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BP[0], G, BSP)
    x = _load(x_ptr, offs, m, IN_KIND)
    k, nan_block, d, mag = _select(x, m, g, gm, du, dv, err, ben, pair, allowed, sub, BP, FP, ND, NDP, NI, HAS_SUB)
    if FP[5] >= 0:
        nan_sc = tl.full(k.shape, FP[5], tl.int64)
    else:
        nan_sc = tl.zeros(k.shape, tl.int64)
    tl.store(sc_ptr + g, tl.where(nan_block, nan_sc, k + BP[5]).to(tl.uint8), mask=gm)
    tl.store(sv_ptr + g, tl.where(nan_block, float("nan"), _pow2(k)), mask=gm)
    tl.store(ids_ptr + g, tl.where(nan_block, 0, d).to(tl.uint8), mask=gm)
    c = _index(mag, d, dv, idx, FP, ND, NI)
    c = tl.where(x.to(tl.int64, bitcast=True) < 0, c | (1 << FP[4]), c)
    tl.store(codes_ptr + offs, tl.where(nan_block[:, None], 0, c).to(tl.uint8), mask=m)
    tl.store(mask_ptr + offs, (nan_block[:, None] & m & (FP[5] < 0)).to(tl.int8), mask=m)


@triton.jit
def dequant_dialect(codes_ptr, sv_ptr, ids_ptr, mask_ptr, out_ptr, dv, n, nblocks, total_blocks,
                    BS: tl.constexpr, IB: tl.constexpr, NI: tl.constexpr, HAS_MASK: tl.constexpr,
                    OUT_KIND: tl.constexpr, OP: tl.constexpr, G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BS, G, BSP)
    sv = tl.load(sv_ptr + g, mask=gm, other=0.0)[:, None]
    d = tl.load(ids_ptr + g, mask=gm, other=0).to(tl.int64)[:, None]
    c = tl.load(codes_ptr + offs, mask=m, other=0).to(tl.int64)
    v = tl.load(dv + d * NI + (c & ((1 << IB) - 1))) * sv
    v = tl.where(((c >> IB) & 1) == 1, -v, v)
    nan = sv != sv
    if HAS_MASK:
        nan = nan | (tl.load(mask_ptr + offs, mask=m, other=0) != 0)
    _store(out_ptr, offs, tl.where(nan, float("nan"), v), m, OUT_KIND, OP)


@triton.jit
def fq_dialect(x_ptr, out_ptr, du, dv, err, idx, ben, pair, allowed, sub, n, nblocks, total_blocks,
               BP: tl.constexpr, FP: tl.constexpr, ND: tl.constexpr, NDP: tl.constexpr, NI: tl.constexpr,
               HAS_SUB: tl.constexpr, IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr, OP: tl.constexpr,
               G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BP[0], G, BSP)
    x = _load(x_ptr, offs, m, IN_KIND)
    k, nan_block, d, mag = _select(x, m, g, gm, du, dv, err, ben, pair, allowed, sub, BP, FP, ND, NDP, NI, HAS_SUB)
    v = tl.load(dv + d[:, None] * NI + _index(mag, d, dv, idx, FP, ND, NI)) * _pow2(k)[:, None]
    v = tl.where(x.to(tl.int64, bitcast=True) < 0, -v, v)
    _store(out_ptr, offs, tl.where(nan_block[:, None], float("nan"), v), m, OUT_KIND, OP)
