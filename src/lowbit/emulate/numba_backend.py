"""The Numba backend: fast CPU kernels, bit-identical to the reference backend.

Numerics (the same rules as :mod:`lowbit.formats.spec`, computed differently):

* All work is in float64 on values that are exact there: float32 inputs, E8M0
  powers of two, E4M3 scales (4 significant bits) times a float32 tensor scale
  (24 bits), element values (at most 24 bits for codebooks). Products of those
  fit in 53 bits, so every product below is exact.
* Exponents come from the float64 bit pattern, never from a logarithm.
* With a power-of-two divisor the scaled value |x| / 2^k is exact and is rounded
  directly: the quantum 2^(e - mbits) of its binade gives n = a / q, and the code
  is ((e - emin) << mbits) + floor(n), plus one when the rounding rule says so.
* With any other divisor D (NVFP4) the code is first estimated from the rounded
  quotient and then fixed by exact comparisons of |x| against value(c) * D and
  of 2|x| against (value(c) + value(c+1)) * D, so ties are decided exactly.
* Outputs are exact float64 values rounded once into the output format: float32
  by the hardware conversion, float16/bfloat16 by the same encoder with IEEE
  parameters (no double rounding through float32).
* ``arithmetic="torchao"`` replays torchao 0.18's float32 steps with float32
  operations (see docs/formats.md).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numba
import numpy as np

from lowbit.emulate._numba_simd import max_abs_bits
from lowbit.emulate.backends import Parts
from lowbit.formats.spec import (
    BF16,
    F16,
    F32,
    BlockFormat,
    CodebookFormat,
    ExpScaleFormat,
    FloatFormat,
    Formatbook,
    IntFormat,
)

OVF = -1  # "rounds beyond the largest finite magnitude"

KIND_FLOAT, KIND_INT, KIND_CODEBOOK = 0, 1, 2
SPECIALS = {"none": 0, "ieee": 1, "fn": 2, "fnuz": 3}
ROUNDINGS = {"nearest_even": 0, "nearest_away": 1, "toward_zero": 2, "stochastic": 3}
OVERFLOWS = {"saturate": 0, "nan": 1, "inf": 2}
SCALE_RULES = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3, "nearest": 4}
INF_BLOCKS = {"nan": 0, "saturate": 1, "inf_amax": 2}
OUT_KINDS = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}

_jit = numba.njit(cache=True, nogil=True)
_inline = numba.njit(cache=True)  # LLVM inlines these; numba IR inlining made compiles take minutes


# ---------------------------------------------------------------------------
# parameters: plain int tuples (passed in registers, loop-invariant)


def element_params(fmt: Any) -> tuple[int, ...]:
    """(kind, ebits, mbits, emin, max_code, signed, special, nbits, rounding,
    rbits, flush, overflow, nan_raise, max_int, min_int, nan_code, inf_code)."""
    rounding = ROUNDINGS[fmt.rounding]
    nan_raise = int(fmt.nan == "raise")
    if isinstance(fmt, FloatFormat):
        from lowbit.emulate.reference import inf_code, nan_code

        return (
            KIND_FLOAT, fmt.ebits, fmt.mbits, fmt.emin, fmt.max_code, int(fmt.signed),
            SPECIALS[fmt.special], fmt.bits, rounding, fmt.sr_bits, int(fmt.subnormal == "flush"),
            OVERFLOWS[fmt.overflow], nan_raise, 0, 0,
            nan_code(fmt) if fmt.has_nan else 0, inf_code(fmt) if fmt.has_inf else 0,
        )  # fmt: skip
    if isinstance(fmt, IntFormat):
        return (
            KIND_INT, 0, 0, 0, fmt.max_int, int(fmt.signed), 0, fmt.bits, rounding, fmt.sr_bits, 0,
            0, nan_raise, fmt.max_int, fmt.min_int, 0, 0,
        )  # fmt: skip
    assert isinstance(fmt, CodebookFormat)
    return (
        KIND_CODEBOOK, 0, 0, 0, len(fmt.magnitudes) - 1, int(fmt.signed), 0, fmt.bits, rounding,
        fmt.sr_bits, 0, 0, nan_raise, 0, 0, 0, 0,
    )  # fmt: skip


def element_table(fmt: Any) -> np.ndarray:
    """Codebook magnitudes (float64, exact) with a virtual entry past the end."""
    if isinstance(fmt, CodebookFormat):
        m = list(fmt.magnitudes)
        return np.array(m + [2 * m[-1]], np.float64)
    return np.zeros(1, np.float64)


_NO_TABLE = np.zeros(1, np.float64)  # table argument for formats that are not codebooks
OUT_PARAMS = {k: element_params(f) for k, f in (("float16", F16), ("bfloat16", BF16), ("float32", F32))}


# ---------------------------------------------------------------------------
# scalar helpers


@_inline
def _pow2(e):
    """2.0**e, exact, for -1022 <= e <= 1023."""
    return np.uint64((np.int64(e) + 1023) << 52).view(np.float64)


@_inline
def _exp_of(a):
    """floor(log2(a)) for a positive normal float64 (from the bits)."""
    return np.int64((np.float64(a).view(np.uint64) >> np.uint64(52)) & np.uint64(0x7FF)) - 1023


@_inline
def _random_bits(seed, index, nbits):
    m = np.uint64(0xFFFFFFFF)
    h = (np.uint64(seed) * np.uint64(0x9E3779B9) + np.uint64(index)) & m
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & m
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & m
    h ^= h >> np.uint64(16)
    return np.int64(h >> np.uint64(32 - nbits))


@_inline
def _mag_value(ep, table, c):
    """Value of magnitude code c (c = max_code + 1 is the virtual next value)."""
    if ep[0] == KIND_FLOAT:
        mb = ep[2]
        ef = c >> mb
        m = c & ((1 << mb) - 1)
        if ef == 0:
            return m * _pow2(ep[3] - mb)
        return ((1 << mb) + m) * _pow2(ef - 1 + ep[3] - mb)
    if ep[0] == KIND_INT:
        return np.float64(c)
    return table[c]


@_inline
def _round_up(rounding, frac_num, half, tie_even_up, r, rbits):
    """Decide rounding up given frac = frac_num / (2 * half) in [0, 1).

    ``half`` is the exact midpoint offset, so comparisons stay exact."""
    if frac_num == 0.0 or rounding == 2:
        return False
    if rounding == 3:
        # up iff floor(frac * 2^R) + r >= 2^R  <=>  frac * 2^R >= 2^R - r
        return frac_num * _pow2(rbits) >= (_pow2(rbits) - r) * (2.0 * half)
    if frac_num > half:
        return True
    if frac_num < half:
        return False
    return rounding == 1 or tie_even_up


@_inline
def _enc_exact(ep, a, r):
    """Magnitude code of an exact non-negative a (float/int kinds), or OVF."""
    if a == 0.0:
        return np.int64(0)
    if ep[0] == KIND_INT:
        fl = math.floor(min(a, 9.0e15))  # clamp first: floor returns int64, which overflows
        code = np.int64(fl)
        if _round_up(ep[8], a - fl, 0.5, (code & 1) == 1, r, ep[9]):
            code += 1
        return code
    mb = ep[2]
    e = _exp_of(a)
    if e < ep[3]:
        e = ep[3]
    n = a * _pow2(mb - e)
    fl = math.floor(n)
    code = ((e - ep[3]) << mb) + np.int64(fl)
    if _round_up(ep[8], n - fl, 0.5, (code & 1) == 1, r, ep[9]):
        code += 1
    if code > ep[4]:
        return np.int64(OVF)
    return code


@_inline
def _enc_general(ep, table, ax, d, r):
    """Magnitude code of ax / d for any divisor d > 0 (exact decisions), or OVF."""
    top = ep[4]
    if ep[0] == KIND_CODEBOOK:
        c = np.int64(0)
        while c < top and table[c + 1] <= ax / d:
            c += 1
    else:
        c = _enc_floor(ep, ax / d)
    # exact fix-up of the floor code: value(c) * d <= ax < value(c + 1) * d
    while c > 0 and _mag_value(ep, table, c) * d > ax:
        c -= 1
    while c <= top and _mag_value(ep, table, c + 1) * d <= ax:
        c += 1
    if c > top:  # at or past the virtual value above the maximum
        if ep[0] == KIND_FLOAT:
            return np.int64(OVF)
        if ep[0] == KIND_INT:
            return c  # _finish clamps by sign (a negative range is one longer)
    if c >= top and ep[0] == KIND_CODEBOOK:
        return top
    lo = _mag_value(ep, table, c) * d
    hi = _mag_value(ep, table, c + 1) * d
    up = _round_up(ep[8], ax - lo, (hi - lo) * 0.5, (c & 1) == 1, r, ep[9])
    if up:
        c += 1
    if c > top:
        return np.int64(OVF)
    return c


@_inline
def _enc_floor(ep, a):
    """Largest magnitude code with value <= a (a approximate; capped at max+1)."""
    if not a > 0.0:
        return np.int64(0)
    if not a < 1.0e300:
        return ep[4] + 1
    if ep[0] == KIND_INT:
        return np.int64(math.floor(min(a, ep[4] + 1.0)))
    mb = ep[2]
    e = _exp_of(a)
    if e < ep[3]:
        e = ep[3]
    code = ((e - ep[3]) << mb) + np.int64(math.floor(a * _pow2(mb - e)))
    return min(code, ep[4] + 1)


@_inline
def _finish(ep, mag, neg):
    """Full code from a magnitude code (or OVF) and the sign."""
    if ep[0] == KIND_INT:
        if mag == OVF:
            mag = np.int64(1) << 62
        if neg:
            if ep[5] == 0:
                return np.int64(0)
            v = -min(mag, -ep[14])
        else:
            v = min(mag, ep[13])
        return v & ((np.int64(1) << ep[7]) - 1)
    if ep[0] == KIND_FLOAT:
        if mag == OVF:
            if ep[11] == 1:
                return ep[15]
            mag = ep[16] if ep[11] == 2 else ep[4]
        if ep[10] == 1 and mag < (np.int64(1) << ep[2]):
            mag = np.int64(0)
        if ep[6] == 3 and mag == 0:
            return np.int64(0)
    elif mag == OVF:  # a codebook meets +-Inf: it saturates
        mag = ep[4]
    if not neg:
        return mag
    if ep[5] == 0:
        return np.int64(0)
    return mag | (np.int64(1) << (ep[7] - 1))


@_inline
def _encode(ep, table, x, d, exact_div, r):
    """Full code of x / d; (code, is NaN without a NaN code)."""
    if x != x:
        if ep[0] == KIND_FLOAT and ep[6] != 0:
            return ep[15], False
        return np.int64(0), True
    neg = x < 0.0 or (x == 0.0 and np.float64(x).view(np.int64) < 0)
    ax = abs(x)
    if ax == np.inf:
        return _finish(ep, np.int64(OVF), neg), False
    if exact_div and ep[0] != KIND_CODEBOOK:
        mag = _enc_exact(ep, ax / d, r)
    else:
        mag = _enc_general(ep, table, ax, d, r)
    return _finish(ep, mag, neg), False


@_inline
def _decode(ep, table, code):
    """Value of a full code as float64 (NaN, +-Inf and -0.0 included)."""
    nb = ep[7]
    if ep[0] == KIND_INT:
        v = code
        if ep[5] == 1 and code >= (np.int64(1) << (nb - 1)):
            v = code - (np.int64(1) << nb)
        if v < ep[14]:
            return np.nan
        return np.float64(v)
    neg = False
    mag = code
    if ep[5] == 1:
        neg = (code >> (nb - 1)) & 1 == 1
        mag = code & ((np.int64(1) << (nb - 1)) - 1)
    if ep[0] == KIND_FLOAT:
        sp = ep[6]
        if sp == 3 and neg and mag == 0:
            return np.nan
        if sp == 2 and mag == (np.int64(1) << (ep[1] + ep[2])) - 1:
            return np.nan
        if sp == 1 and (mag >> ep[2]) == (np.int64(1) << ep[1]) - 1:
            if mag & ((np.int64(1) << ep[2]) - 1):
                return np.nan
            return -np.inf if neg else np.inf
        if ep[10] == 1 and mag < (np.int64(1) << ep[2]):
            mag = np.int64(0)
    v = _mag_value(ep, table, mag)
    return -v if neg else v


@_inline
def _to_bits16(op, v):
    """float64 -> float16/bfloat16 bit pattern, one rounding (RNE, overflow to Inf)."""
    code, _nan = _encode(op, _NO_TABLE, v, 1.0, True, 0)
    return np.uint16(code)


@_inline
def _store(out, i, j, v, okind, op):
    if okind <= 1:
        out[i, j] = v
    else:
        out[i, j] = _to_bits16(op, v)


# ---------------------------------------------------------------------------
# element formats


@_jit
def _quant_elem(x, codes, mask, ep, table, seed, use_seed):
    rows, n = x.shape
    nans = 0
    for i in range(rows):
        for j in range(n):
            r = _random_bits(seed, i * n + j, ep[9]) if use_seed else 0
            c, isnan = _encode(ep, table, np.float64(x[i, j]), 1.0, True, r)
            codes[i, j] = c
            if isnan:
                mask[i, j] = True
                nans += 1
    return nans


@_jit
def _dequant_elem(codes, mask, out, ep, table, okind, op):
    rows, n = codes.shape
    for i in range(rows):
        for j in range(n):
            v = _decode(ep, table, np.int64(codes[i, j]))
            if mask[i, j]:
                v = np.nan
            _store(out, i, j, v, okind, op)


@_jit
def _fq_elem(x, out, ep, table, seed, use_seed, okind, op):
    rows, n = x.shape
    nans = 0
    for i in range(rows):
        for j in range(n):
            r = _random_bits(seed, i * n + j, ep[9]) if use_seed else 0
            c, isnan = _encode(ep, table, np.float64(x[i, j]), 1.0, True, r)
            v = _decode(ep, table, c)
            if isnan:
                v = np.nan
                nans += 1
            _store(out, i, j, v, okind, op)
    return nans


# ---------------------------------------------------------------------------
# block formats
#
# bp = (block_size, pow2 scale, scale_rule, min_exp, max_exp, exp_bias, scale nan
#       code, inf_block, zero_scale, torchao, elem_emax, elem_mbits, has tensor scale)
# bf = (elem_max, scale_min, scale_max); sp: element params of a float scale format


@_inline
def _block_scan(x, i, s, e):
    amax = 0.0
    has_nan = False
    has_inf = False
    for j in range(s, e):
        v = abs(np.float64(x[i, j]))
        if v != v:
            has_nan = True
        elif v == np.inf:
            has_inf = True
        elif v > amax:
            amax = v
    return amax, has_nan, has_inf


@_inline
def _exp_scale(bp, bf, amax, inf_amax):
    """Unbiased exponent of the power-of-two block scale (exact rules)."""
    if inf_amax:
        return bp[4]
    if amax == 0.0:
        return bp[3]
    rule = bp[2]
    if rule == 3:  # rceil: smallest k with elem_max * 2^k >= amax
        k = _exp_of(amax / bf[0])
        while bf[0] * _pow2(k) < amax:
            k += 1
        while bf[0] * _pow2(k - 1) >= amax:
            k -= 1
    else:
        bits = np.float64(amax).view(np.int64)
        if rule == 2:  # round to the element's mantissa width, ties away
            sh = 52 - bp[11]
            bits = (bits + (np.int64(1) << (sh - 1))) & ~((np.int64(1) << sh) - 1)
        k = ((bits >> 52) & 0x7FF) - 1023 - bp[10]
        if rule == 1 and (bits & ((np.int64(1) << 52) - 1)) != 0:
            k += 1
    return min(max(k, bp[3]), bp[4])


@_inline
def _float_scale(sp, bp, bf, amax, inf_amax, ts):
    """(code, value) of a float block scale (NVFP4 exact rule)."""
    if inf_amax:
        sval = bf[2]
    elif amax == 0.0:
        sval = 0.0 if bp[8] == 1 else bf[1]
    else:
        c, _n = _encode(sp, _NO_TABLE, amax, bf[0] * ts, False, 0)
        sval = _decode(sp, _NO_TABLE, c)
        sval = min(max(sval, bf[1]), bf[2])
    c, _n = _encode(sp, _NO_TABLE, sval, 1.0, True, 0)
    return c, sval


@_inline
def _block_params(x, i, s, e, bp, bf, sp, ts):
    """(scale code, scale value, divisor, divisor is a power of two, NaN block, Inf
    elements saturate) of block x[i, s:e], exact arithmetic."""
    amax, has_nan, has_inf = _block_scan(x, i, s, e)
    if has_nan or (has_inf and bp[7] == 0):
        return bp[6], np.nan, np.nan, True, True
    inf_amax = has_inf and bp[7] == 2
    if bp[1] == 1:
        k = _exp_scale(bp, bf, amax, inf_amax)
        sval = _pow2(k)
        return k + bp[5], sval, sval, True, False
    c, sval = _float_scale(sp, bp, bf, amax, inf_amax, ts)
    return c, sval, sval * ts, False, False


@_jit
def _max_finite_bits(x, inf_bits):
    """Bit pattern of the largest finite |x| of a flat float32/float64 array (patterns at
    or above ``inf_bits`` are Inf or NaN and do not count): a vectorised integer max.
    One thread: the pass is memory-bound, and a parallel region can stall on a busy
    machine (see lowbit.emulate._numba_fast.threads_for)."""
    lanes = 64 // x.itemsize
    full = x.size // lanes
    m = 0
    for k in range(full):
        m = max(m, max_abs_bits(x, k * lanes, inf_bits))
    tail = np.zeros(lanes, x.dtype)
    tail[: x.size - full * lanes] = x[full * lanes :]
    return max(m, max_abs_bits(tail, 0, inf_bits))


def _finite_amax(x: np.ndarray) -> float:
    """max |x| over the finite values of a float32/float64 array (0 when there are none)."""
    ints = np.int32 if x.dtype == np.float32 else np.int64
    inf_bits = int(np.array(np.inf, x.dtype).view(ints))
    return float(np.array(_max_finite_bits(x.reshape(-1), inf_bits), ints).view(x.dtype))


@_jit
def _tensor_scale(amax, target, f32p):
    """fl32(amax / target), exact; 1 when amax is 0."""
    if amax == 0.0:
        return 1.0
    c, _n = _encode(f32p, _NO_TABLE, amax, target, False, 0)
    # clamped to the positive finite float32 values, as the reference does
    return min(max(np.float64(np.uint32(c).view(np.float32)), _pow2(-149)), 3.4028234663852886e38)


@_jit
def _quant_one_block(x, codes, scale_codes, scales, i, b, ep, table, bp, bf, sp, ts, seed, use_seed):
    """Block b of row i; also the fast paths' fallback for the blocks they do not take."""
    n = x.shape[1]
    s = b * bp[0]
    e = min(s + bp[0], n)
    sc, sval, d, exact_div, nan_block = _block_params(x, i, s, e, bp, bf, sp, ts)
    scale_codes[i, b] = sc
    scales[i, b] = sval
    for j in range(s, e):
        if nan_block:
            codes[i, j] = 0
            continue
        r = _random_bits(seed, i * n + j, ep[9]) if use_seed else 0
        xv = np.float64(x[i, j])
        if d == 0.0:  # zero scale: the block is all zeros, keep their signs
            c, _n = _encode(ep, table, math.copysign(0.0, xv), 1.0, True, 0)
        else:
            c, _n = _encode(ep, table, xv, d, exact_div, r)
        codes[i, j] = c


@_jit
def _quant_block(x, codes, scale_codes, scales, ep, table, bp, bf, sp, ts, seed, use_seed):
    for i in range(x.shape[0]):
        for b in range(scale_codes.shape[1]):
            _quant_one_block(x, codes, scale_codes, scales, i, b, ep, table, bp, bf, sp, ts, seed, use_seed)


@_jit
def _quant_listed_blocks(x, codes, scale_codes, scales, rows, blocks, ep, table, bp, bf, sp, ts):
    """Only the blocks (rows[k], blocks[k]), nearest rounding: the fast paths' fallback."""
    for k in range(rows.size):
        _quant_one_block(x, codes, scale_codes, scales, rows[k], blocks[k], ep, table, bp, bf, sp, ts, 0, False)


@_jit
def _dequant_block(codes, scales, ts, out, ep, table, bs, okind, op):
    rows, n = codes.shape
    for i in range(rows):
        for j in range(n):
            sv = scales[i, j // bs]
            q = _decode(ep, table, np.int64(codes[i, j]))
            if sv != sv:
                v = np.nan
            elif q == 0.0 or q != q or abs(q) == np.inf:
                v = q
            else:
                v = q * (sv * ts)
            _store(out, i, j, v, okind, op)


@_jit
def _fq_one_block(x, out, i, b, ep, table, bp, bf, sp, ts, seed, use_seed, okind, op):
    """Block b of row i; also the fast paths' fallback for the blocks they do not take."""
    n = x.shape[1]
    s = b * bp[0]
    e = min(s + bp[0], n)
    _sc, sval, d, exact_div, nan_block = _block_params(x, i, s, e, bp, bf, sp, ts)
    for j in range(s, e):
        if nan_block:
            _store(out, i, j, np.nan, okind, op)
            continue
        r = _random_bits(seed, i * n + j, ep[9]) if use_seed else 0
        xv = np.float64(x[i, j])
        if d == 0.0:
            v = math.copysign(0.0, xv)
        else:
            c, _n = _encode(ep, table, xv, d, exact_div, r)
            q = _decode(ep, table, c)
            v = q if (q == 0.0 or abs(q) == np.inf) else q * d
        _store(out, i, j, v, okind, op)


@_jit
def _fq_block(x, out, ep, table, bp, bf, sp, ts, seed, use_seed, okind, op):
    bs = bp[0]
    for i in range(x.shape[0]):
        for b in range((x.shape[1] + bs - 1) // bs):
            _fq_one_block(x, out, i, b, ep, table, bp, bf, sp, ts, seed, use_seed, okind, op)


@_jit
def _fq_listed_blocks(x, out, rows, blocks, ep, table, bp, bf, sp, ts, okind, op):
    """Only the blocks (rows[k], blocks[k]), nearest rounding: the fast paths' fallback."""
    for k in range(rows.size):
        _fq_one_block(x, out, rows[k], blocks[k], ep, table, bp, bf, sp, ts, 0, False, okind, op)


# ---------------------------------------------------------------------------
# torchao 0.18 arithmetic (float32 steps in torchao's order)


# torchao divides by a zero tensor scale when the whole input is zero and gets NaN
# scales (0 / 0): these need IEEE division, not Python's ZeroDivisionError.
_inline_ieee = numba.njit(cache=True, error_model="numpy")


@_inline
def _torchao_ceil_log2(descale):
    """ceil(log2(descale)) for a positive float32, as torchao's CPU rceil computes it:
    ceil of a float32 log2. torch's float32 log2 is correctly rounded where ceil can
    tell results apart (near powers of two), and so is a float64 log2 rounded to
    float32 (the tests check this against torch.log2)."""
    return math.ceil(np.float32(math.log2(np.float64(descale))))


@_inline_ieee
def _torchao_block(x, i, s, e, bp, bf, sp, ts32):
    """(scale code, scale value, float32 factor, multiply (else divide)) for one block."""
    amax = np.float32(0.0)
    for j in range(s, e):
        v = abs(np.float32(x[i, j]))
        if v != v or v > amax:
            amax = v
            if v != v:
                break
    emax32 = np.float32(bf[0])
    if bp[1] == 1 and bp[2] == 3:  # rceil
        descale = np.float32(amax / emax32)
        if descale != descale:
            return np.int64(255), np.nan, np.float32(np.nan), True
        if descale == np.inf:
            return np.int64(254), _pow2(127), np.float32(_pow2(-127)), True
        if descale == 0.0:
            lg = -127.0
        else:
            lg = _torchao_ceil_log2(descale)
        code = np.int64(min(max(lg, -127.0), 127.0)) + 127
        rcp = np.float32(1.0) if code == 0 else np.float32(_pow2(127 - code))
        return code, _pow2(code - 127), rcp, True
    if bp[1] == 1:
        bits = np.int64(np.float32(amax).view(np.int32))
        if bp[2] == 2 and amax == amax:
            bits = (bits + (np.int64(1) << (23 - bp[11] - 1))) & np.int64(0xFF800000)
        p = ((bits >> 23) & 0xFF) - 127
        if bp[2] == 1 and (bits & 0x7FFFFF) > 0:
            p += 1
        code = min(max(p - bp[10], -127), 128) + 127
        if amax != amax:
            code = np.int64(255)
        sf = np.uint32(code << 23).view(np.float32)
        if sf < np.float32(_pow2(-126)):
            sf = np.float32(_pow2(-126))
        sval = np.nan if code == 255 else _pow2(code - 127)
        return code, sval, sf, False
    # NVFP4
    block_scale = np.float32(amax / emax32)
    if bp[12] == 1:
        block_scale = np.float32(block_scale / ts32)
    if block_scale == block_scale:
        block_scale = min(max(block_scale, np.float32(bf[1])), np.float32(bf[2]))
    c, _n = _encode(sp, _NO_TABLE, np.float64(block_scale), 1.0, True, 0)
    s32 = np.float32(_decode(sp, _NO_TABLE, c))
    if bp[12] == 1:
        rcp = np.float32(np.float32(np.float32(1.0) / ts32) / s32)
    else:
        rcp = np.float32(np.float32(1.0) / s32)
    return c, np.float64(s32), rcp, True


@_inline
def _torchao_scaled(x, i, j, f, mul, emax32, clamp):
    v = np.float32(x[i, j])
    d = np.float32(v * f) if mul else np.float32(v / f)
    if clamp and d == d:
        d = min(max(d, -emax32), emax32)
    return d


@_jit
def _quant_block_torchao(x, codes, scale_codes, scales, ep, table, bp, bf, sp, ts32):
    rows, n = x.shape
    bs = bp[0]
    nb = scale_codes.shape[1]
    emax32 = np.float32(bf[0])
    clamp = bp[2] == 3 or bp[1] == 0 or ep[7] == 8
    for i in range(rows):
        for b in range(nb):
            s = b * bs
            e = min(s + bs, n)
            sc, sval, f, mul = _torchao_block(x, i, s, e, bp, bf, sp, ts32)
            scale_codes[i, b] = sc
            scales[i, b] = sval
            for j in range(s, e):
                d = _torchao_scaled(x, i, j, f, mul, emax32, clamp)
                if d != d:
                    codes[i, j] = 0
                else:
                    c, _n = _encode(ep, table, np.float64(d), 1.0, True, 0)
                    codes[i, j] = c


@_jit
def _dequant_nvfp4_torchao(codes, scales, ts32, has_ts, out, ep, table, bs, okind, op):
    rows, n = codes.shape
    for i in range(rows):
        for j in range(n):
            s32 = np.float32(scales[i, j // bs])
            if has_ts:
                s32 = np.float32(ts32 * s32)
            q = np.float32(_decode(ep, table, np.int64(codes[i, j])))
            _store(out, i, j, np.float64(np.float32(q * s32)), okind, op)


@_jit
def _fq_block_torchao(x, out, ep, table, bp, bf, sp, ts32, okind, op):
    rows, n = x.shape
    bs = bp[0]
    nb = (n + bs - 1) // bs
    emax32 = np.float32(bf[0])
    clamp = bp[2] == 3 or bp[1] == 0 or ep[7] == 8
    for i in range(rows):
        for b in range(nb):
            s = b * bs
            e = min(s + bs, n)
            _sc, sval, f, mul = _torchao_block(x, i, s, e, bp, bf, sp, ts32)
            for j in range(s, e):
                d = _torchao_scaled(x, i, j, f, mul, emax32, clamp)
                if sval != sval:
                    _store(out, i, j, np.nan, okind, op)
                    continue
                c = np.int64(0)  # a NaN scaled value (0 * Inf) gets code 0, as in quantize
                if d == d:
                    c, _n = _encode(ep, table, np.float64(d), 1.0, True, 0)
                q = _decode(ep, table, c)
                if bp[1] == 1:
                    v = q * sval
                else:
                    s32 = np.float32(sval)
                    if bp[12] == 1:
                        s32 = np.float32(ts32 * s32)
                    v = np.float64(np.float32(np.float32(q) * s32))
                _store(out, i, j, v, okind, op)


# ---------------------------------------------------------------------------
# the backend functions


def _block_params_of(spec: BlockFormat) -> tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...]]:
    elem = spec.element
    pow2 = isinstance(spec.scale, ExpScaleFormat)
    if pow2:
        sc: Any = spec.scale
        bp = (
            spec.block_size, 1, SCALE_RULES[spec.scale_rule], sc.min_exp, sc.max_exp, sc.bias,
            sc.nan_code if sc.nan_code is not None else 0, INF_BLOCKS[spec.inf_block], 0,
            int(spec.arithmetic == "torchao"), elem.emax, getattr(elem, "mbits", 0), 0,
        )  # fmt: skip
        sp = element_params(FloatFormat(name="_unused", ebits=2, mbits=1))
        bf = (float(elem.max_value), 0.0, 0.0)
    else:
        from lowbit.emulate.reference import nan_code

        bp = (
            spec.block_size, 0, SCALE_RULES[spec.scale_rule], 0, 0, 0, nan_code(spec.scale),
            INF_BLOCKS[spec.inf_block], int(spec.zero_block == "zero_scale"),
            int(spec.arithmetic == "torchao"), 0, 0, int(spec.tensor_scale is not None),
        )  # fmt: skip
        sp = element_params(spec.scale)
        bf = (float(elem.max_value), float(spec.scale_min), float(spec.scale_max))
    return bp, bf, sp


def _tensor_scale_of(spec: BlockFormat, x: np.ndarray) -> float | None:
    if spec.tensor_scale is None:
        return None
    target = float(spec.element.max_value) * float(spec.scale_max)
    if spec.arithmetic == "torchao":
        with np.errstate(all="ignore"):
            amax = np.float32(np.max(np.abs(x))) if x.size else np.float32(0.0)
            return float(np.float32(amax / np.float32(target)))
    return float(_tensor_scale(_finite_amax(x), target, OUT_PARAMS["float32"]))


def _seed_args(seed: int | None) -> tuple[int, bool]:
    return (0, False) if seed is None else (int(seed), True)


def _nan_error(spec: Any) -> ValueError:
    return ValueError(f"x contains NaN and format {spec.name!r} has no NaN code (nan='raise')")


def _out_array(shape: tuple[int, ...], out: str) -> tuple[np.ndarray, int, tuple[int, ...]]:
    dtype = {"float32": np.float32, "float64": np.float64}.get(out, np.uint16)
    op = OUT_PARAMS.get(out, OUT_PARAMS["float32"])
    return np.empty(shape, dtype), OUT_KINDS[out], op


def _fast_paths() -> ModuleType:
    """The float32 fast paths (:mod:`lowbit.emulate._numba_fast`). Imported on first use
    because they are built from this module's helpers and fall back to its kernels."""
    from lowbit.emulate import _numba_fast

    return _numba_fast


def _dialect_kernels() -> ModuleType:
    """Formatbook kernels (:mod:`lowbit.emulate._numba_dialect`), imported on first use."""
    from lowbit.emulate import _numba_dialect

    return _numba_dialect


def quantize(spec: Any, x: np.ndarray, *, seed: int | None, subbooks: Any = None) -> Parts:
    if isinstance(spec, Formatbook):
        return _dialect_kernels().quantize(spec, x, subbooks)
    fast = _fast_paths()
    path = fast.path_of(spec, x.dtype, None)
    if path is not None:
        return fast.quantize(path, spec, x)
    rows, n = x.shape
    if not isinstance(spec, BlockFormat):
        ep, table = element_params(spec), element_table(spec)
        codes = np.empty((rows, n), np.uint16 if spec.bits > 8 else np.uint8)
        mask = np.zeros((rows, n), bool)
        nans = _quant_elem(x, codes, mask, ep, table, *_seed_args(seed))
        if nans and spec.nan == "raise":
            raise _nan_error(spec)
        return Parts(codes=codes, nan_mask=mask if nans else None)
    elem = spec.element
    ep, table = element_params(elem), element_table(elem)
    bp, bf, sp = _block_params_of(spec)
    nb = -(-n // spec.block_size)
    codes = np.empty((rows, n), np.uint8)
    scale_codes = np.empty((rows, nb), np.uint8)
    scales = np.empty((rows, nb), np.float64)
    ts = _tensor_scale_of(spec, x)
    if spec.arithmetic == "torchao":
        ts32 = np.float32(1.0 if ts is None else ts)
        _quant_block_torchao(x, codes, scale_codes, scales, ep, table, bp, bf, sp, ts32)
    else:
        _quant_block(x, codes, scale_codes, scales, ep, table, bp, bf, sp, 1.0 if ts is None else ts, *_seed_args(seed))
    return Parts(codes=codes, scale_codes=scale_codes, scales=scales, tensor_scale=ts)


def dequantize(spec: Any, parts: Parts, out: str) -> np.ndarray:
    if isinstance(spec, Formatbook):
        return _dialect_kernels().dequantize(spec, parts, out)
    codes = parts.codes
    res, okind, op = _out_array(codes.shape, out)
    if not isinstance(spec, BlockFormat):
        mask = parts.nan_mask if parts.nan_mask is not None else np.zeros(codes.shape, bool)
        _dequant_elem(codes, mask, res, element_params(spec), element_table(spec), okind, op)
        return res
    ep, table = element_params(spec.element), element_table(spec.element)
    ts = 1.0 if parts.tensor_scale is None else parts.tensor_scale
    if spec.arithmetic == "torchao" and not isinstance(spec.scale, ExpScaleFormat):
        _dequant_nvfp4_torchao(
            codes, parts.scales, np.float32(ts), parts.tensor_scale is not None, res, ep, table,
            spec.block_size, okind, op,
        )  # fmt: skip
    else:
        _dequant_block(codes, parts.scales, ts, res, ep, table, spec.block_size, okind, op)
    return res


def fake_quant(spec: Any, x: np.ndarray, *, seed: int | None, out: str, subbooks: Any = None) -> np.ndarray:
    if isinstance(spec, Formatbook):
        return _dialect_kernels().fake_quant(spec, x, out, subbooks)
    fast = _fast_paths()
    path = fast.path_of(spec, x.dtype, out)
    if path is not None:
        return fast.fake_quant(path, spec, x)
    res, okind, op = _out_array(x.shape, out)
    if not isinstance(spec, BlockFormat):
        nans = _fq_elem(x, res, element_params(spec), element_table(spec), *_seed_args(seed), okind, op)
        if nans and spec.nan == "raise":
            raise _nan_error(spec)
        return res
    ep, table = element_params(spec.element), element_table(spec.element)
    bp, bf, sp = _block_params_of(spec)
    ts = _tensor_scale_of(spec, x)
    if spec.arithmetic == "torchao":
        _fq_block_torchao(x, res, ep, table, bp, bf, sp, np.float32(1.0 if ts is None else ts), okind, op)
    else:
        _fq_block(x, res, ep, table, bp, bf, sp, 1.0 if ts is None else ts, *_seed_args(seed), okind, op)
    return res
