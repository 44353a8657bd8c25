"""Triton kernels of the Triton backend: the Numba generic kernels, one tile at a time.

Every kernel computes exactly what :mod:`lowbit.emulate.numba_backend` computes,
operation for operation, so results are bit-identical to it (and to the
reference). The numeric assumptions are the Numba backend's:

* Work is in float64 on values that are exact there (float16/bfloat16/float32
  inputs widen exactly; E8M0 powers of two; float scales of a few significant
  bits times a float32 tensor scale; element values of at most 24 bits), so the
  products below are exact and every decision is an exact comparison.
* Exponents come from the float64 bit pattern (``_exp_of``), never a logarithm.
* A power-of-two divisor gives an exact quotient, rounded directly on the grid
  of its binade (``_enc_exact``). Any other divisor (NVFP4's E4M3 scale times
  the tensor scale) gives a rounded quotient q~ whose floor code is then fixed
  by exact comparisons (``_enc_general``). One step down suffices: rounding is
  monotone and element values are float64 values, so the exact quotient can
  only lie below the floor code's value when q~ equals that value, and can
  never reach the next value when q~ lies below it. The codebook search counts
  the table entries at or below q~, the same floor code.
* Ties are decided by exact comparisons of |x| - lo with (hi - lo) / 2;
  stochastic rounding compares frac * 2^R with 2^R - r using the lowbias32 bits
  of :func:`lowbit.emulate.random_bits`, computed in uint32 arithmetic (which
  wraps mod 2^32 like the reference's masks).
* float32 output is the hardware float64 -> float32 conversion (round to
  nearest even); float16/bfloat16 output is encoded by the same encoder with
  IEEE parameters (one rounding, no double rounding through float32).
* float64 division is IEEE (LLVM's fdiv of doubles is ``div.rn.f64`` on NVIDIA);
  float32 division is asked for explicitly (``fdiv(ieee_rounding=True)``), since
  Triton's plain float32 division may be approximate.
* ``arithmetic="torchao"`` replays torchao 0.18's float32 steps: float32
  multiplies and IEEE-rounded float32 divisions,
  its rceil's ceil of a float32-rounded float64 log2 (as the Numba backend).
* Kernels are launched with ``enable_fp_fusion=False``: a fused multiply-add
  would round once where the Numba kernels round twice.

Format parameters are constexpr tuples, the Numba backend's own
(:func:`~lowbit.emulate.numba_backend.element_params`, ``_block_params_of``), so
every policy branch is resolved at compile time. Element kernels take a flat
tile of ``BLOCK`` elements; block kernels a tile of ``G`` blocks by ``BSP``
(block size rounded up to a power of two) lanes, masked at the block and row
ends, so partial blocks need no padding copy.
"""

from __future__ import annotations

import triton
import triton.language as tl

# element parameter indices (numba_backend.element_params)
# 0 kind, 1 ebits, 2 mbits, 3 emin, 4 max_code, 5 signed, 6 special, 7 nbits, 8 rounding,
# 9 rbits, 10 flush, 11 overflow, 12 nan_raise, 13 max_int, 14 min_int, 15 nan_code, 16 inf_code
# block parameters (numba_backend._block_params_of): bp = (0 block_size, 1 pow2, 2 scale_rule,
# 3 min_exp, 4 max_exp, 5 exp_bias, 6 scale nan code, 7 inf_block, 8 zero_scale, 9 torchao,
# 10 elem_emax, 11 elem_mbits, 12 has tensor scale); bf = (elem_max, scale_min, scale_max)

OVF = tl.constexpr(-1)  # "rounds beyond the largest finite magnitude"


# ---------------------------------------------------------------------------
# scalar helpers (element-wise on tiles)


@triton.jit
def _pow2(e):
    """2.0**e as float64 for -1022 <= e <= 1023 (e = -1023 gives 0.0, as in Numba)."""
    return ((e.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _exp_of(a):
    """floor(log2(a)) of a positive normal float64, from its bits."""
    return ((a.to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023


@triton.jit
def _random_bits(seed_mul, index, RBITS: tl.constexpr):
    """Top RBITS bits of lowbias32(seed * 0x9E3779B9 + index); seed_mul is the first
    product mod 2^32, computed on the host."""
    h = index.to(tl.uint32) + seed_mul.to(tl.uint32)
    h ^= h >> 16
    h = h * tl.full([], 0x7FEB352D, tl.uint32)
    h ^= h >> 15
    h = h * tl.full([], 0x846CA68B, tl.uint32)
    h ^= h >> 16
    return (h >> (32 - RBITS)).to(tl.int64)


@triton.jit
def _mag_value(c, table, EP: tl.constexpr):
    """Value of magnitude code c (c = max_code + 1 is the virtual next value)."""
    if EP[0] == 0:
        mb: tl.constexpr = EP[2]
        ef = c >> mb
        m = (c & ((1 << mb) - 1)).to(tl.float64)
        normal = ((1 << mb) + m) * _pow2(ef - 1 + EP[3] - mb)
        return tl.where(ef == 0, m * _pow2(tl.full([], EP[3] - mb, tl.int64)), normal)
    elif EP[0] == 1:
        return c.to(tl.float64)
    else:
        return tl.load(table + c)


@triton.jit
def _round_up(frac_num, half, odd, r, EP: tl.constexpr):
    """Round up, given frac = frac_num / (2 * half) in [0, 1) (exact comparisons)."""
    if EP[8] == 2:
        return frac_num < 0.0  # toward zero never rounds up (frac_num >= 0: all False)
    elif EP[8] == 3:
        pr = _pow2(tl.full([], EP[9], tl.int64))
        return (frac_num != 0.0) & (frac_num * pr >= (pr - r.to(tl.float64)) * (2.0 * half))
    elif EP[8] == 1:
        return frac_num >= half
    else:
        return (frac_num > half) | ((frac_num == half) & odd)


@triton.jit
def _enc_exact(a, r, EP: tl.constexpr):
    """Magnitude code of an exact non-negative a (float/int kinds), or OVF."""
    if EP[0] == 1:
        fl = tl.math.floor(tl.minimum(a, tl.full([], 9.0e15, tl.float64)))  # an fp64 constant, as in Numba
        code = fl.to(tl.int64)
        code += _round_up(a - fl, 0.5, (code & 1) == 1, r, EP).to(tl.int64)
    else:
        mb: tl.constexpr = EP[2]
        e = tl.maximum(_exp_of(a), EP[3])
        n = a * _pow2(mb - e)
        fl = tl.math.floor(n)
        code = ((e - EP[3]) << mb) + fl.to(tl.int64)
        code += _round_up(n - fl, 0.5, (code & 1) == 1, r, EP).to(tl.int64)
        code = tl.where(code > EP[4], OVF, code)
    return tl.where(a == 0.0, 0, code)


@triton.jit
def _enc_floor(a, table, EP: tl.constexpr):
    """Largest magnitude code with value <= a (a approximate; capped at max + 1)."""
    top: tl.constexpr = EP[4]
    if EP[0] == 2:
        c = tl.zeros(a.shape, tl.int64)
        for k in range(1, top + 1):
            c += (tl.load(table + k) <= a).to(tl.int64)
        return c
    elif EP[0] == 1:
        return tl.math.floor(tl.minimum(a, top + 1.0)).to(tl.int64)
    else:
        mb: tl.constexpr = EP[2]
        e = tl.maximum(_exp_of(a), EP[3])
        code = tl.minimum(((e - EP[3]) << mb) + tl.math.floor(a * _pow2(mb - e)).to(tl.int64), top + 1)
        code = tl.where(a < 1.0e300, code, top + 1)
        return tl.where(a > 0.0, code, 0)


@triton.jit
def _enc_general(ax, d, r, table, EP: tl.constexpr):
    """Magnitude code of ax / d for any divisor d > 0 (exact decisions), or OVF."""
    top: tl.constexpr = EP[4]
    c = _enc_floor(ax / d, table, EP)
    c = tl.where((c > 0) & (_mag_value(c, table, EP) * d > ax), c - 1, c)
    cs = tl.minimum(c, top)  # past the top only floats and integers go, and they stop below
    lo = _mag_value(cs, table, EP) * d
    hi = _mag_value(cs + 1, table, EP) * d
    up = tl.where(_round_up(ax - lo, (hi - lo) * 0.5, (cs & 1) == 1, r, EP), cs + 1, cs)
    if EP[0] == 2:
        return tl.where(c >= top, top, up)
    elif EP[0] == 1:
        return tl.where(c > top, c, tl.where(up > top, OVF, up))
    else:
        return tl.where((c > top) | (up > top), OVF, up)


@triton.jit
def _finish(mag, neg, EP: tl.constexpr):
    """Full code from a magnitude code (or OVF) and the sign."""
    if EP[0] == 1:
        mag = tl.where(mag == OVF, 1 << 62, mag)
        if EP[5] == 1:
            v = tl.where(neg, -tl.minimum(mag, -EP[14]), tl.minimum(mag, EP[13]))
        else:
            v = tl.where(neg, 0, tl.minimum(mag, EP[13]))
        return v & ((1 << EP[7]) - 1)
    if EP[0] == 0:
        if EP[11] == 1:
            ovf_nan = mag == OVF
        if EP[11] == 2:
            mag = tl.where(mag == OVF, EP[16], mag)
        else:
            mag = tl.where(mag == OVF, EP[4], mag)
        if EP[10] == 1:
            mag = tl.where(mag < (1 << EP[2]), 0, mag)
        if EP[6] == 3:
            neg = neg & (mag != 0)
    else:
        mag = tl.where(mag == OVF, EP[4], mag)
    if EP[5] == 1:
        code = tl.where(neg, mag | (1 << (EP[7] - 1)), mag)
    else:
        code = tl.where(neg, 0, mag)
    if EP[0] == 0:
        if EP[11] == 1:
            code = tl.where(ovf_nan, EP[15], code)
    return code


@triton.jit
def _encode(x, d, r, table, EP: tl.constexpr, EXACT_DIV: tl.constexpr):
    """(full code of x / d, x is NaN and the format has no NaN code); x float64."""
    isnan = x != x
    neg = x.to(tl.int64, bitcast=True) < 0
    ax = tl.abs(x)
    if EXACT_DIV and EP[0] != 2:
        mag = _enc_exact(ax / d, r, EP)
    else:
        mag = _enc_general(ax, d, r, table, EP)
    code = _finish(tl.where(ax == float("inf"), OVF, mag), neg, EP)
    if EP[0] == 0 and EP[6] != 0:
        return tl.where(isnan, EP[15], code), ax < 0.0  # a NaN code: no mask (all False)
    return tl.where(isnan, 0, code), isnan


@triton.jit
def _decode(code, table, EP: tl.constexpr):
    """Value of a full code as float64 (NaN, +-Inf and -0.0 included)."""
    nb: tl.constexpr = EP[7]
    code = code.to(tl.int64)
    if EP[0] == 1:
        v = code
        if EP[5] == 1:
            v = tl.where(code >= (1 << (nb - 1)), code - (1 << nb), code)
        return tl.where(v < EP[14], float("nan"), v.to(tl.float64))
    if EP[5] == 1:
        neg = ((code >> (nb - 1)) & 1) == 1
        mag = code & ((1 << (nb - 1)) - 1)
    else:
        neg = code < 0
        mag = code
    if EP[0] == 0:
        if EP[10] == 1:
            mag = tl.where(mag < (1 << EP[2]), 0, mag)
    v = _mag_value(mag, table, EP)
    v = tl.where(neg, -v, v)
    if EP[0] == 0:
        top_e = (mag >> EP[2]) == (1 << EP[1]) - 1
        mant = mag & ((1 << EP[2]) - 1)
        if EP[6] == 1:
            v = tl.where(top_e, tl.where(mant != 0, float("nan"), tl.where(neg, -float("inf"), float("inf"))), v)
        elif EP[6] == 2:
            v = tl.where(mag == (1 << (EP[1] + EP[2])) - 1, float("nan"), v)
        elif EP[6] == 3:
            v = tl.where(neg & (code == (1 << (nb - 1))), float("nan"), v)
    return v


@triton.jit
def _load(ptr, offs, mask, IN_KIND: tl.constexpr):
    """Input as float64 (exact). IN_KIND 3: bfloat16 bit patterns in an int16 tensor."""
    if IN_KIND == 3:
        b = tl.load(ptr + offs, mask=mask, other=0).to(tl.uint16, bitcast=True).to(tl.uint32)
        return (b << 16).to(tl.float32, bitcast=True).to(tl.float64)
    return tl.load(ptr + offs, mask=mask, other=0).to(tl.float64)


@triton.jit
def _store(ptr, offs, v, mask, OUT_KIND: tl.constexpr, OP: tl.constexpr):
    """float64 v -> output kind (numba_backend.OUT_KINDS): float32 by conversion (RNE),
    float16/bfloat16 as int16 bit patterns of one IEEE rounding (OP: their parameters)."""
    if OUT_KIND == 0:
        tl.store(ptr + offs, v.to(tl.float32), mask=mask)
    elif OUT_KIND == 1:
        tl.store(ptr + offs, v, mask=mask)
    else:
        c, _n = _encode(v, 1.0, 0, ptr, OP, True)
        tl.store(ptr + offs, c.to(tl.int16), mask=mask)


# ---------------------------------------------------------------------------
# element formats


@triton.jit
def quant_elem(x_ptr, codes_ptr, mask_ptr, table, total, seed_mul,
               EP: tl.constexpr, USE_SEED: tl.constexpr, IN_KIND: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < total
    x = _load(x_ptr, offs, m, IN_KIND)
    r = _random_bits(seed_mul, offs, EP[9]) if USE_SEED else 0
    c, isnan = _encode(x, 1.0, r, table, EP, True)
    tl.store(codes_ptr + offs, c.to(codes_ptr.dtype.element_ty), mask=m)
    tl.store(mask_ptr + offs, isnan.to(tl.int8), mask=m)


@triton.jit
def dequant_elem(codes_ptr, mask_ptr, out_ptr, table, total,
                 EP: tl.constexpr, HAS_MASK: tl.constexpr, OUT_KIND: tl.constexpr, OP: tl.constexpr,
                 BLOCK: tl.constexpr):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < total
    v = _decode(tl.load(codes_ptr + offs, mask=m, other=0).to(tl.int64) & ((1 << EP[7]) - 1), table, EP)
    if HAS_MASK:
        v = tl.where(tl.load(mask_ptr + offs, mask=m, other=0) != 0, float("nan"), v)
    _store(out_ptr, offs, v, m, OUT_KIND, OP)


@triton.jit
def fq_elem(x_ptr, out_ptr, table, total, seed_mul,
            EP: tl.constexpr, USE_SEED: tl.constexpr, IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
            OP: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < total
    x = _load(x_ptr, offs, m, IN_KIND)
    r = _random_bits(seed_mul, offs, EP[9]) if USE_SEED else 0
    c, isnan = _encode(x, 1.0, r, table, EP, True)
    v = tl.where(isnan, float("nan"), _decode(c, table, EP))
    _store(out_ptr, offs, v, m, OUT_KIND, OP)


# ---------------------------------------------------------------------------
# block formats: a tile of G blocks (rows of the tile) by BSP lanes


@triton.jit
def _tile(n, nblocks, total_blocks, BS: tl.constexpr, G: tl.constexpr, BSP: tl.constexpr):
    """(flat offsets (G, BSP), lane mask, block ids (G,), block in range (G,), row, col)."""
    g = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    row = g // nblocks
    col = (g % nblocks)[:, None] * BS + tl.arange(0, BSP)[None, :]
    gm = g < total_blocks
    m = gm[:, None] & (tl.arange(0, BSP)[None, :] < BS) & (col < n)
    return row[:, None] * n + col, m, g, gm


@triton.jit
def _exp_scale(amax, inf_amax, BP: tl.constexpr, BF: tl.constexpr):
    """Unbiased exponent of the power-of-two block scale (exact rules). rceil: the
    exponent of the rounded amax / elem_max is the answer or one below it."""
    if BP[2] == 3:
        k = _exp_of(amax / BF[0])
        k = tl.where(BF[0] * _pow2(k) < amax, k + 1, k)
    else:
        bits = amax.to(tl.int64, bitcast=True)
        if BP[2] == 2:
            sh: tl.constexpr = 52 - BP[11]
            bits = (bits + (1 << (sh - 1))) & ~((1 << sh) - 1)
        k = ((bits >> 52) & 0x7FF) - 1023 - BP[10]
        if BP[2] == 1:
            k = tl.where((bits & ((1 << 52) - 1)) != 0, k + 1, k)
    k = tl.minimum(tl.maximum(k, BP[3]), BP[4])
    k = tl.where(amax == 0.0, BP[3], k)
    return tl.where(inf_amax, BP[4], k)


@triton.jit
def _block_params(x, m, ts, sp_table, BP: tl.constexpr, BF: tl.constexpr, SP: tl.constexpr):
    """Per block (G,): scale code, scale value, divisor, NaN block."""
    ax = tl.where(m, tl.abs(x), 0.0)
    has_nan = tl.max((ax != ax).to(tl.int32), axis=1) != 0
    isinf = ax == float("inf")
    has_inf = tl.max(isinf.to(tl.int32), axis=1) != 0
    amax = tl.max(tl.where(isinf | (ax != ax), 0.0, ax), axis=1)
    nan_block = has_nan | (has_inf & (BP[7] == 0))
    inf_amax = has_inf & (BP[7] == 2)
    if BP[1] == 1:
        k = _exp_scale(amax, inf_amax, BP, BF)
        sval = _pow2(k)
        sc = k + BP[5]
        d = sval
    else:
        c, _n = _encode(amax, BF[0] * tl.cast(ts, tl.float64), 0, sp_table, SP, False)
        sval = _decode(c, sp_table, SP)
        sval = tl.where(sval == sval, tl.minimum(tl.maximum(sval, BF[1]), BF[2]), sval)  # NaN stays, as in Numba
        sval = tl.where(amax == 0.0, 0.0 if BP[8] == 1 else BF[1], sval)
        sval = tl.where(inf_amax, BF[2], sval)
        sc, _n = _encode(sval, 1.0, 0, sp_table, SP, True)
        d = sval * tl.cast(ts, tl.float64)
    sc = tl.where(nan_block, BP[6], sc)
    sval = tl.where(nan_block, float("nan"), sval)
    return sc, sval, d, nan_block


@triton.jit
def _signed_zero(x):
    """0.0 with the sign bit of x."""
    return tl.where(x.to(tl.int64, bitcast=True) < 0, -0.0, 0.0).to(tl.float64)


@triton.jit
def _block_codes(x, offs, d, seed_mul, table, EP: tl.constexpr, BP: tl.constexpr, USE_SEED: tl.constexpr):
    """Element codes of a tile under per-block divisors d (G,); a zero divisor (an all-zero
    block with a zero scale) gives the zero of each element's sign."""
    r = _random_bits(seed_mul, offs, EP[9]) if USE_SEED else 0
    dz = (d == 0.0)[:, None]
    xe = tl.where(dz, _signed_zero(x), x)
    c, _n = _encode(xe, tl.where(dz, 1.0, d[:, None]), r, table, EP, BP[1] == 1)
    return c


@triton.jit
def quant_block(x_ptr, codes_ptr, sc_ptr, sv_ptr, table, sp_table, n, nblocks, total_blocks, ts, seed_mul,
                EP: tl.constexpr, BP: tl.constexpr, BF: tl.constexpr, SP: tl.constexpr,
                USE_SEED: tl.constexpr, IN_KIND: tl.constexpr, G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BP[0], G, BSP)
    x = _load(x_ptr, offs, m, IN_KIND)
    sc, sval, d, nan_block = _block_params(x, m, ts, sp_table, BP, BF, SP)
    tl.store(sc_ptr + g, sc.to(tl.uint8), mask=gm)
    tl.store(sv_ptr + g, sval, mask=gm)
    c = tl.where(nan_block[:, None], 0, _block_codes(x, offs, d, seed_mul, table, EP, BP, USE_SEED))
    tl.store(codes_ptr + offs, c.to(tl.uint8), mask=m)


@triton.jit
def dequant_block(codes_ptr, sv_ptr, out_ptr, table, n, nblocks, total_blocks, ts,
                  EP: tl.constexpr, BS: tl.constexpr, OUT_KIND: tl.constexpr, OP: tl.constexpr,
                  G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BS, G, BSP)
    sv = tl.load(sv_ptr + g, mask=gm, other=0.0)[:, None]
    q = _decode(tl.load(codes_ptr + offs, mask=m, other=0), table, EP)
    keep = (q == 0.0) | (q != q) | (tl.abs(q) == float("inf"))
    v = tl.where(sv != sv, float("nan"), tl.where(keep, q, q * (sv * tl.cast(ts, tl.float64))))
    _store(out_ptr, offs, v, m, OUT_KIND, OP)


@triton.jit
def fq_block(x_ptr, out_ptr, table, sp_table, n, nblocks, total_blocks, ts, seed_mul,
             EP: tl.constexpr, BP: tl.constexpr, BF: tl.constexpr, SP: tl.constexpr,
             USE_SEED: tl.constexpr, IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr, OP: tl.constexpr,
             G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BP[0], G, BSP)
    x = _load(x_ptr, offs, m, IN_KIND)
    _sc, _sval, d, nan_block = _block_params(x, m, ts, sp_table, BP, BF, SP)
    xz, dz = _signed_zero(x), (d == 0.0)[:, None]
    q = _decode(_block_codes(x, offs, d, seed_mul, table, EP, BP, USE_SEED), table, EP)
    v = tl.where((q == 0.0) | (tl.abs(q) == float("inf")), q, q * d[:, None])
    v = tl.where(nan_block[:, None], float("nan"), tl.where(dz, xz, v))  # a zero scale keeps x's zero
    _store(out_ptr, offs, v, m, OUT_KIND, OP)


# ---------------------------------------------------------------------------
# torchao 0.18 arithmetic (float32 steps in torchao's order)


@triton.jit
def _torchao_params(x32, m, ts32, sp_table, EP: tl.constexpr, BP: tl.constexpr, BF: tl.constexpr,
                    SP: tl.constexpr):  # fmt: skip
    """Per block (G,): scale code, scale value, float32 factor (multiply if MUL, else
    divide; MUL is a constexpr of the rule), as numba_backend._torchao_block."""
    ax = tl.where(m, tl.abs(x32), 0.0)
    has_nan = tl.max((ax != ax).to(tl.int32), axis=1) != 0
    amax = tl.where(has_nan, float("nan"), tl.max(tl.where(ax != ax, 0.0, ax), axis=1))
    emax32 = tl.full([], BF[0], tl.float32)
    if BP[1] == 1 and BP[2] == 3:  # rceil
        descale = tl.math.fdiv(amax, emax32, ieee_rounding=True)
        safe = tl.where((descale > 0.0) & (descale < float("inf")), descale, 1.0)
        lg = tl.math.ceil(tl.math.log2(safe.to(tl.float64)).to(tl.float32))
        lg = tl.where(descale == 0.0, -127.0, lg)
        code = (tl.minimum(tl.maximum(lg, -127.0), 127.0)).to(tl.int64) + 127
        rcp = tl.where(code == 0, 1.0, _pow2(127 - code).to(tl.float32))
        sval = _pow2(code - 127)
        code = tl.where(descale == float("inf"), 254, code)
        rcp = tl.where(descale == float("inf"), _pow2(tl.full([], -127, tl.int64)).to(tl.float32), rcp)
        sval = tl.where(descale == float("inf"), _pow2(tl.full([], 127, tl.int64)), sval)
        code = tl.where(descale != descale, 255, code)
        sval = tl.where(descale != descale, float("nan"), sval)
        f = tl.where(descale != descale, float("nan"), rcp)
    elif BP[1] == 1:
        bits = amax.to(tl.int32, bitcast=True).to(tl.int64)
        if BP[2] == 2:
            bits = tl.where(amax == amax, (bits + (1 << (23 - BP[11] - 1))) & 0xFF800000, bits)
        p = ((bits >> 23) & 0xFF) - 127
        if BP[2] == 1:
            p = tl.where((bits & 0x7FFFFF) > 0, p + 1, p)
        code = tl.minimum(tl.maximum(p - BP[10], -127), 128) + 127
        code = tl.where(amax != amax, 255, code)
        sf = (code << 23).to(tl.int32).to(tl.float32, bitcast=True)
        f = tl.where(sf < 1.1754943508222875e-38, 1.1754943508222875e-38, sf)
        sval = tl.where(code == 255, float("nan"), _pow2(code - 127))
    else:  # NVFP4
        block_scale = tl.math.fdiv(amax, emax32, ieee_rounding=True)
        if BP[12] == 1:
            block_scale = tl.math.fdiv(block_scale, ts32, ieee_rounding=True)
        clamped = tl.minimum(tl.maximum(block_scale, BF[1]), BF[2])
        block_scale = tl.where(block_scale == block_scale, clamped, block_scale)
        code, _n = _encode(block_scale.to(tl.float64), 1.0, 0, sp_table, SP, True)
        s32 = _decode(code, sp_table, SP).to(tl.float32)
        if BP[12] == 1:
            f = tl.math.fdiv(tl.math.fdiv(1.0, ts32, ieee_rounding=True), s32, ieee_rounding=True)
        else:
            f = tl.math.fdiv(tl.full(s32.shape, 1.0, tl.float32), s32, ieee_rounding=True)
        sval = s32.to(tl.float64)
    return code, sval, f


@triton.jit
def _torchao_codes(x32, f, table, EP: tl.constexpr, BP: tl.constexpr, BF: tl.constexpr):
    """Element codes of float32 x scaled by f (G,) in torchao's order; NaN scaled values
    get code 0."""
    if BP[1] == 1 and BP[2] != 3:
        d = tl.math.fdiv(x32, f[:, None], ieee_rounding=True)
    else:
        d = x32 * f[:, None]
    if BP[2] == 3 or BP[1] == 0 or EP[7] == 8:
        d = tl.where(d == d, tl.minimum(tl.maximum(d, -BF[0]), BF[0]), d)
    c, _n = _encode(d.to(tl.float64), 1.0, 0, table, EP, True)
    return tl.where(d != d, 0, c)


@triton.jit
def quant_block_torchao(x_ptr, codes_ptr, sc_ptr, sv_ptr, table, sp_table, n, nblocks, total_blocks, ts32,
                        EP: tl.constexpr, BP: tl.constexpr, BF: tl.constexpr, SP: tl.constexpr,
                        IN_KIND: tl.constexpr, G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BP[0], G, BSP)
    x32 = _load(x_ptr, offs, m, IN_KIND).to(tl.float32)
    sc, sval, f = _torchao_params(x32, m, ts32, sp_table, EP, BP, BF, SP)
    tl.store(sc_ptr + g, sc.to(tl.uint8), mask=gm)
    tl.store(sv_ptr + g, sval, mask=gm)
    tl.store(codes_ptr + offs, _torchao_codes(x32, f, table, EP, BP, BF).to(tl.uint8), mask=m)


@triton.jit
def _torchao_nvfp4_value(q, sv, ts32, HAS_TS: tl.constexpr):
    """fl32(fl32(q) * s32) with s32 = fl32(ts * s) when there is a tensor scale."""
    s32 = sv.to(tl.float32)
    if HAS_TS:
        s32 = ts32 * s32
    return (q.to(tl.float32) * s32).to(tl.float64)


@triton.jit
def dequant_nvfp4_torchao(codes_ptr, sv_ptr, out_ptr, table, n, nblocks, total_blocks, ts32,
                          EP: tl.constexpr, BS: tl.constexpr, HAS_TS: tl.constexpr, OUT_KIND: tl.constexpr,
                          OP: tl.constexpr, G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BS, G, BSP)
    sv = tl.load(sv_ptr + g, mask=gm, other=0.0)[:, None]
    q = _decode(tl.load(codes_ptr + offs, mask=m, other=0), table, EP)
    _store(out_ptr, offs, _torchao_nvfp4_value(q, sv, ts32, HAS_TS), m, OUT_KIND, OP)


@triton.jit
def fq_block_torchao(x_ptr, out_ptr, table, sp_table, n, nblocks, total_blocks, ts32,
                     EP: tl.constexpr, BP: tl.constexpr, BF: tl.constexpr, SP: tl.constexpr,
                     IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr, OP: tl.constexpr,
                     G: tl.constexpr, BSP: tl.constexpr):  # fmt: skip
    offs, m, g, gm = _tile(n, nblocks, total_blocks, BP[0], G, BSP)
    x32 = _load(x_ptr, offs, m, IN_KIND).to(tl.float32)
    _sc, sval, f = _torchao_params(x32, m, ts32, sp_table, EP, BP, BF, SP)
    q = _decode(_torchao_codes(x32, f, table, EP, BP, BF), table, EP)
    if BP[1] == 1:
        v = q * sval[:, None]
    else:
        v = _torchao_nvfp4_value(q, sval[:, None], ts32, BP[12] == 1)
    v = tl.where((sval != sval)[:, None], float("nan"), v)
    _store(out_ptr, offs, v, m, OUT_KIND, OP)
