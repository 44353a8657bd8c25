"""Fast paths of the Numba backend: float32 kernels for the common configurations.

The generic kernels of :mod:`lowbit.emulate.numba_backend` decide every element
in float64 with exact comparisons, for every policy; they stay the single
fallback. The kernels here take C-contiguous float32 input (and, for
``fake_quant``, write float32 output), compute in float32 where each step is
provably exact, and are branch-free per element so that LLVM vectorises them
(the per-block max of |x| uses the explicit SIMD helper of
:mod:`lowbit.emulate._numba_simd`). Rows (element formats: chunks) run in
parallel for inputs of at least ``PARALLEL_MIN`` elements (see
:func:`threads_for`). Blocks holding a NaN or an Inf, all-zero blocks of
float-scaled formats and the partial block at the end of a row are marked, and
the generic per-block code computes them afterwards. Results are bit-identical to the generic kernels and to the
reference backend, NaN bit patterns and signed zeros included
(tests/test_numba_fast_paths.py).

Which configurations take which path (:func:`path_of`); everything else (float64
input, float16/bfloat16/float64 output, rounding other than nearest-even,
codebooks, ``arithmetic="torchao"``) runs the generic kernels:

``minifloat``
    element ``FloatFormat``: signed, ``special`` none/ieee/fn, subnormals kept,
    ``nearest_even``, NaN representable or ``nan="keep"``, any overflow policy,
    at most 20 mantissa bits, emin - mbits >= -126 and emax <= 103 (every
    quantum, bound and rounding constant below is a normal float32).
``integer``
    element ``IntFormat`` with ``nearest_even`` and ``nan="keep"``.
``pow2_block``
    ``BlockFormat`` with a power-of-two scale (the MX formats), exact arithmetic,
    a block size that is a multiple of 16, a scale exponent range inside
    [-127, 127] and an element that takes ``minifloat`` and whose smallest
    subnormal is at least 2^-124.
``float_scale_block``
    ``BlockFormat`` with a float scale and ``scale_rule="nearest"`` (NVFP4), exact
    arithmetic, a block size that is a multiple of 16, a 4-bit element
    ``FloatFormat`` without specials (8 magnitudes) rounding to nearest even and
    saturating, a scale format of at most 8 bits with 1..3 mantissa bits and at
    most 5 exponent bits, rounding to nearest even and saturating, and clamp
    bounds 0 < scale_min <= scale_max that are values of the scale format.

Why each path is exact:

minifloat
    With a = |x| and e = clamp(floor(log2 a), emin, emax + 1) read from the bits,
    the float32 M = 1.5 * 2^(e - mbits + 23) has ulp 2^(e - mbits), the quantum
    of binade e, and a + M stays in M's binade; so (a + M) - M is a rounded to
    that grid by one IEEE addition (ties to the even multiple) and the
    subtraction is exact. The code is ((e - emin) << mbits) + n with n the
    multiple, which is also bits(a + M) - bits(M); for mbits >= 1 an even n is
    an even code. With mbits = 0 the code's parity also depends on e, and the one
    tie (a = 1.5 * 2^e) is turned down where e - emin is odd. Above 2^(emax + 1)
    the clamped e makes the result exceed the maximum, so overflow is judged on
    the unbounded grid, as the spec says; Inf overflows. NaN is replaced by the
    canonical NaN the generic kernels write (0x7FC00000); the sign is copied
    from x, so zeros keep theirs.
integer
    rint(x) clamped to [min_int, max_int] is exact in float32 (|codes| <= 2^16);
    adding +0.0 turns -0.0 into +0.0 (integer codes have no negative zero).
pow2_block
    The block amax is an integer max over |x|'s bit patterns (non-negative floats
    order like their bits; a pattern >= 0x7F800000 is Inf or NaN: generic block).
    The scale exponent k comes from the generic ``_exp_scale``. v = |x| * 2^-k is
    exact unless v is below 2^-126 (float32 subnormal); then v is less than half
    of the element's smallest subnormal (>= 2^-124) and rounds to zero however the
    product was rounded. The output q * 2^k is one float32 multiply of exact
    operands: one rounding of the exact value, as the generic float64 store.
float_scale_block
    The scale format has at most 256 codes, so per call a table holds, for every
    scale code c with value s_c, everything a block needs (built in float64 from
    exact products: a few significant bits of scale and element values times the
    24 of the float32 tensor scale ts fit in 53):
    * B_c, the amax boundary between codes c and c + 1: amax rounds up past it
      iff amax > mid * elem_max * ts, or equals it and c is odd (ties to even);
    * T_i, the element boundaries: |x| / D with D = s_c * ts rounds past the
      i-th E2M1 midpoint m_i iff |x| > m_i * D, or equals it and i is odd;
    * the steps (v_(i+1) - v_i) * s_c of the element values times s_c (exact).
    Each boundary t becomes a float32 T with (a > T) == (a > t, or a >= t) for
    every float32 a: the largest float32 below t, or t itself when it is a
    float32 and ties go down. Per block the scale code is first estimated: the
    floor code of v = fl32(amax * fl64(1 / (elem_max * ts))), read from a table
    indexed by v's exponent and top mantissa bits (v's relative error is below
    2^-22, far below the 2^-4 spacing of the scale grid, so the floor code is
    wrong only right next to a grid point, where the answer is that grid
    point); then amax > B_c decides the rounding exactly. Elements are the
    prefix sum of the steps whose boundary |x| passes (exact), times ts: one
    float32 multiply, one rounding of the exact q * s_c * ts.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numba
import numpy as np
from numba import prange

from lowbit.emulate._numba_simd import LANES as _LANES
from lowbit.emulate._numba_simd import max_abs_bits
from lowbit.emulate.backends import Parts
from lowbit.emulate.reference import inf_code, nan_code
from lowbit.emulate.numba_backend import (
    OUT_KINDS,
    OUT_PARAMS,
    _block_params_of,
    _exp_scale,
    _fq_listed_blocks,
    _pow2,
    _quant_listed_blocks,
    _tensor_scale_of,
    element_params,
    element_table,
)
from lowbit.formats.spec import BlockFormat, ExpScaleFormat, FloatFormat, IntFormat, decode_exact

_jit = numba.njit(cache=True, nogil=True)
_kernel = numba.njit(cache=True, nogil=True, parallel=True)

_SIGN32 = np.int32(-(2**31))
_ABS32 = np.int32(2**31 - 1)
_INF32_BITS = 0x7F800000
_ALL = 1 << 31  # max_abs_bits limit that keeps every float32 pattern
_NAN32 = np.float32(np.nan)  # the bits (0x7FC00000) the generic kernels store for NaN
_ZERO32 = np.float32(0.0)
_CHUNK = 1 << 16  # elements per parallel work item of the element kernels


# ---------------------------------------------------------------------------
# threads


PARALLEL_MIN = 1 << 20  # elements from which the parallel kernels use more than one thread


@contextlib.contextmanager
def threads_for(n: int) -> Iterator[None]:
    """Parallel kernels run inside on the calling thread alone when they see fewer than
    PARALLEL_MIN elements: waking the thread pool costs more than it saves there, and on a
    busy machine a parallel region can wait a whole scheduler tick (milliseconds) for a
    preempted worker. Numba's thread count is a per-thread setting, restored on exit."""
    if n >= PARALLEL_MIN:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(old)


# ---------------------------------------------------------------------------
# which path


def _minifloat_ok(fmt: Any) -> bool:
    return (
        isinstance(fmt, FloatFormat)
        and fmt.signed
        and fmt.special in ("none", "ieee", "fn")
        and fmt.subnormal == "keep"
        and fmt.rounding == "nearest_even"
        and (fmt.has_nan or fmt.nan == "keep")
        and fmt.mbits <= 20
        and fmt.emin - fmt.mbits >= -126
        and fmt.emax <= 103
    )


@functools.lru_cache(maxsize=None)
def _float_scale_ok(spec: BlockFormat) -> bool:
    elem, sf = spec.element, spec.scale
    if not (isinstance(elem, FloatFormat) and isinstance(sf, FloatFormat)):
        return False
    ok = (
        elem.signed
        and elem.bits == 4
        and elem.special == "none"
        and elem.subnormal == "keep"
        and elem.rounding == "nearest_even"
        and elem.overflow == "saturate"
        and sf.bits <= 8
        and 1 <= sf.mbits <= 3
        and sf.ebits <= 5
        and sf.special in ("none", "ieee", "fn")
        and sf.subnormal == "keep"
        and sf.rounding == "nearest_even"
        and sf.overflow == "saturate"
        and 0 < spec.scale_min <= spec.scale_max
    )
    return ok and all(_code_of(sf, v) is not None for v in (spec.scale_min, spec.scale_max))


def path_of(spec: Any, dtype: Any, out: str | None) -> str | None:
    """The fast path that computes ``spec`` for input ``dtype``, or None (generic kernels).

    ``out`` is fake_quant's output kind, None for quantize.
    """
    if np.dtype(dtype) != np.float32 or out not in (None, "float32"):
        return None
    if isinstance(spec, IntFormat):
        return "integer" if spec.rounding == "nearest_even" and spec.nan == "keep" else None
    if isinstance(spec, FloatFormat):
        return "minifloat" if _minifloat_ok(spec) else None
    if not isinstance(spec, BlockFormat) or spec.arithmetic != "exact" or spec.block_size % _LANES:
        return None
    elem = spec.element
    if isinstance(spec.scale, ExpScaleFormat):
        ok = (
            _minifloat_ok(elem)
            and elem.emin - elem.mbits >= -124
            and -127 <= spec.scale.min_exp
            and spec.scale.max_exp <= 127
        )
        return "pow2_block" if ok else None
    return "float_scale_block" if _float_scale_ok(spec) else None


# ---------------------------------------------------------------------------
# parameters (plain tuples: loop invariants in registers)


@functools.lru_cache(maxsize=None)
def _minifloat_params(fmt: FloatFormat) -> tuple[tuple[np.int32, ...], tuple[np.float32, np.float32]]:
    """int32 (mbits, emin, emax + 1, max_code, overflow code, overflow is NaN, NaN code,
    sign bit, has NaN) and float32 (max value, overflow value)."""
    ncode = nan_code(fmt) if fmt.has_nan else 0
    ovf_code = {"saturate": fmt.max_code, "nan": ncode, "inf": inf_code(fmt)}[fmt.overflow]
    ovf_value = {"saturate": fmt.max_value, "nan": math.nan, "inf": math.inf}[fmt.overflow]
    mp = (
        fmt.mbits, fmt.emin, fmt.emax + 1, fmt.max_code, ovf_code, int(fmt.overflow == "nan"), ncode,
        1 << (fmt.bits - 1), int(fmt.has_nan),
    )  # fmt: skip
    return tuple(np.int32(v) for v in mp), (np.float32(fmt.max_value), np.float32(ovf_value))


def _code_of(fmt: FloatFormat, value: float) -> int | None:
    """The non-negative code whose value is exactly ``value``, or None."""
    v = Fraction(value)
    return next((c for c in range(1 << (fmt.bits - int(fmt.signed))) if decode_exact(fmt, c) == v), None)


@functools.lru_cache(maxsize=None)
def _float_scale_consts(spec: BlockFormat) -> tuple[tuple[int, int, int], tuple[float, ...], np.ndarray, np.ndarray]:
    """(code of scale_min, code of scale_max, bits to drop for the floor-code table), per
    element midpoint i: (m_i, 1.0 where a tie goes up, v_(i+1) - v_i), the exact scale
    values by code (one extra entry so that every code has a successor), and the floor
    code table: entry k is the largest code in [code of scale_min, code of scale_max]
    whose value is at most the float32 with bits k << (23 - scale mbits), clamped to
    that range. The scale values have at most mbits + 1 significant bits, so every
    float32 with those top bits has the same floor code."""
    elem, sf = spec.element, spec.scale
    mags = [decode_exact(elem, c) for c in range(8)]
    mids = tuple(float((a + b) / 2) for a, b in zip(mags, mags[1:]))
    ups = tuple(float(i % 2) for i in range(7))  # the tie goes to the even code
    steps = tuple(float(b - a) for a, b in zip(mags, mags[1:]))
    cmin, cmax = _code_of(sf, spec.scale_min), _code_of(sf, spec.scale_max)
    vals = np.array([float(decode_exact(sf, c)) for c in range(cmax + 2)], np.float64)
    shift = 23 - sf.mbits
    # every finite float32 and +Inf (the estimate overflows to Inf when amax / (elem_max * ts) does)
    prefixes = (np.arange((0x7F800000 >> shift) + 1, dtype=np.uint32) << np.uint32(shift)).view(np.float32)
    floor = cmin + np.searchsorted(vals[cmin : cmax + 1], prefixes.astype(np.float64), side="right") - 1
    lut = np.clip(floor, cmin, cmax).astype(np.int64)
    return (cmin, cmax, shift), mids + ups + steps, vals, lut


# ---------------------------------------------------------------------------
# float32 helpers


@_jit
def _f32_bits(v):
    return np.float32(v).view(np.int32)


@_jit
def _bits_f32(b):
    return np.int32(b).view(np.float32)


@_jit
def _signed(y, xb):
    """y >= 0 with the sign of the input whose bits are xb; NaN becomes the canonical NaN."""
    return _NAN32 if y != y else _bits_f32(_f32_bits(y) | (xb & _SIGN32))


@_jit
def _block_amax_bits(xr, s, bs):
    """max of |x|'s bit patterns over xr[s : s + bs] (bs a multiple of 16)."""
    m = 0
    for c in range(bs // _LANES):
        m = max(m, max_abs_bits(xr, s + c * _LANES, _ALL))
    return m


@_jit
def _grid(ab, mp):
    """(e, M) for the magnitude with bits ab: e = clamp(exponent, emin, emax + 1) and
    M = 1.5 * 2^(e - mbits + 23), whose ulp is the quantum of binade e."""
    e = min(max(np.int32((ab >> 23) - 127), mp[1]), mp[2])
    return e, _bits_f32(((e - mp[0] + 150) << 23) | 0x400000)


@_jit
def _tie_goes_down(ab, e, mp):
    """Without mantissa bits the code of 2^e is odd where e - emin is even, so the tie
    1.5 * 2^e (which the grid rounding sends up) goes down where e - emin is odd."""
    return mp[0] == 0 and (ab & 0x7FFFFF) == 0x400000 and (ab >> 23) - 127 == e and (e - mp[1]) & 1 == 1


@_jit
def _minifloat_value(ab, mp, mf):
    """The magnitude with bits ab rounded into the format, overflow policy applied."""
    e, big = _grid(ab, mp)
    a = _bits_f32(ab)
    y = (a + big) - big
    if _tie_goes_down(ab, e, mp):
        y = _bits_f32((e + 127) << 23)
    return mf[1] if y > mf[0] else y


@_jit
def _minifloat_code(xb, mp):
    """Full code of the value with bits xb (finite or Inf; NaN is the caller's)."""
    ab = xb & _ABS32
    e, big = _grid(ab, mp)
    n = _f32_bits(_bits_f32(ab) + big) - _f32_bits(big)
    if _tie_goes_down(ab, e, mp):
        n = 1
    mag = ((e - mp[1]) << mp[0]) + n
    ovf = mag > mp[3]
    code = (mp[4] if ovf else mag) | (mp[7] if xb < 0 else 0)
    return mp[6] if ovf and mp[5] == 1 else code


@_jit
def _step_sum7(v, t, steps):
    """The sum of the value steps whose threshold ``v`` passes: the nearest of 8 sorted
    values, decided by exact float32 thresholds (built by :func:`_threshold`), as
    one branch-free chain the loop vectoriser keeps in registers."""
    q = steps[0] if v > t[0] else _ZERO32
    q = q + steps[1] if v > t[1] else q
    q = q + steps[2] if v > t[2] else q
    q = q + steps[3] if v > t[3] else q
    q = q + steps[4] if v > t[4] else q
    q = q + steps[5] if v > t[5] else q
    return q + steps[6] if v > t[6] else q


@_jit
def _count7(v, t):
    """How many of the 7 sorted float32 thresholds ``t`` (built by :func:`_threshold`) ``v``
    passes: the index of the nearest of 8 sorted values."""
    n = np.int32(v > t[0]) + np.int32(v > t[1]) + np.int32(v > t[2]) + np.int32(v > t[3])
    return n + np.int32(v > t[4]) + np.int32(v > t[5]) + np.int32(v > t[6])


@_jit
def _threshold(t, up):
    """The float32 T with (a > T) == (a >= t if up else a > t) for every float32 a >= 0 (t > 0)."""
    f = np.float32(t)
    if np.float64(f) > t or (up == 1.0 and np.float64(f) == t):
        f = _bits_f32(_f32_bits(f) - 1)
    return f


# ---------------------------------------------------------------------------
# element formats


@_jit
def _fq_minifloat_span(x, out, mp, mf):
    for j in range(x.size):
        xb = _f32_bits(x[j])
        out[j] = _signed(_minifloat_value(xb & _ABS32, mp, mf), xb)


@_jit
def _quant_minifloat_span(x, codes, mask, mp):
    nans = 0
    for j in range(x.size):
        isnan = x[j] != x[j]
        c = _minifloat_code(_f32_bits(x[j]), mp)
        codes[j] = (mp[6] if mp[8] == 1 else 0) if isnan else c
        no_code = isnan and mp[8] == 0  # a NaN without a NaN code travels in the mask
        mask[j] = no_code
        nans += no_code
    return nans


@_jit
def _fq_integer_span(x, out, lo, hi):
    for j in range(x.size):
        v = x[j]
        y = min(max(np.rint(v), lo), hi) + _ZERO32
        out[j] = _NAN32 if v != v else y


@_jit
def _quant_integer_span(x, codes, mask, lo, hi, bits_mask):
    nans = 0
    for j in range(x.size):
        v = x[j]
        isnan = v != v
        codes[j] = 0 if isnan else np.int64(min(max(np.rint(v), lo), hi)) & bits_mask
        mask[j] = isnan
        nans += isnan
    return nans


@_kernel
def _fq_minifloat(x, out, mp, mf):
    for c in prange((x.size + _CHUNK - 1) // _CHUNK):
        s = c * _CHUNK
        _fq_minifloat_span(x[s : s + _CHUNK], out[s : s + _CHUNK], mp, mf)


@_kernel
def _quant_minifloat(x, codes, mask, mp):
    nans = 0
    for c in prange((x.size + _CHUNK - 1) // _CHUNK):
        s = c * _CHUNK
        nans += _quant_minifloat_span(x[s : s + _CHUNK], codes[s : s + _CHUNK], mask[s : s + _CHUNK], mp)
    return nans


@_kernel
def _fq_integer(x, out, lo, hi):
    for c in prange((x.size + _CHUNK - 1) // _CHUNK):
        s = c * _CHUNK
        _fq_integer_span(x[s : s + _CHUNK], out[s : s + _CHUNK], lo, hi)


@_kernel
def _quant_integer(x, codes, mask, lo, hi, bits_mask):
    nans = 0
    for c in prange((x.size + _CHUNK - 1) // _CHUNK):
        s = c * _CHUNK
        nans += _quant_integer_span(x[s : s + _CHUNK], codes[s : s + _CHUNK], mask[s : s + _CHUNK], lo, hi, bits_mask)
    return nans


# ---------------------------------------------------------------------------
# block formats
#
# A row is done in two passes: the first finds each block's scale code, the second
# quantizes the elements. Separate passes keep each loop short and free of long
# dependency chains, so the CPU overlaps many blocks (measured ~1.4x faster than
# one pass). Indices are unsigned so that Numba emits no negative-index wraparound
# and LLVM vectorises each 16-lane chunk. Blocks a row function does not take (NaN
# or Inf inside, all-zero blocks of float scales, the partial last block) are
# marked in ``left`` and counted; the caller hands them to the generic per-block
# code afterwards, which also keeps that code out of these kernels.


@_jit
def _leave_tail(left, i, n, bs):
    """Mark the partial last block of a row; 1 if there is one."""
    if n % bs:
        left[i, n // bs] = True
        return 1
    return 0


@_jit
def _pow2_scales_row(x, left, codes_b, scales, i, bp, bf):
    """First pass, power-of-two scales: E8M0 codes (and values) of row i's blocks."""
    xr = x[i]
    bs = bp[0]
    nleft = _leave_tail(left, i, xr.size, bs)
    for b in range(xr.size // bs):
        m = _block_amax_bits(xr, b * bs, bs)
        if m >= _INF32_BITS:
            left[i, b] = True
            nleft += 1
        else:
            k = _exp_scale(bp, bf, np.float64(_bits_f32(m)), False)
            codes_b[i, b] = k + bp[5]
            scales[i, b] = _pow2(k)
    return nleft


@_jit
def _fq_pow2_row(x, out, left, codes_b, i, mp, mf, bp):
    xr, orow = x[i], out[i]
    bs = bp[0]
    for b in range(xr.size // bs):
        if left[i, b]:
            continue
        k = np.int64(codes_b[i, b]) - bp[5]
        inv, sc = np.float32(_pow2(-k)), np.float32(_pow2(k))
        for c in range(bs // _LANES):
            base = np.uint64(b * bs + c * _LANES)
            for lane in range(_LANES):
                j = base + np.uint64(lane)
                xb = _f32_bits(xr[j])
                v = _bits_f32(xb & _ABS32) * inv
                orow[j] = _signed(_minifloat_value(_f32_bits(v), mp, mf) * sc, xb)


@_jit
def _quant_pow2_row(x, codes, left, codes_b, i, mp, bp):
    xr, crow = x[i], codes[i]
    bs = bp[0]
    for b in range(xr.size // bs):
        if left[i, b]:
            continue
        inv = np.float32(_pow2(bp[5] - np.int64(codes_b[i, b])))
        for c in range(bs // _LANES):
            base = np.uint64(b * bs + c * _LANES)
            for lane in range(_LANES):
                j = base + np.uint64(lane)
                xb = _f32_bits(xr[j])
                crow[j] = _minifloat_code(_f32_bits(_bits_f32(xb & _ABS32) * inv) | (xb & _SIGN32), mp)


@_kernel
def _fq_pow2_block(x, out, left, codes_b, scales, mp, mf, bp, bf):
    nleft = 0
    for i in prange(x.shape[0]):
        nleft += _pow2_scales_row(x, left, codes_b, scales, i, bp, bf)
        _fq_pow2_row(x, out, left, codes_b, i, mp, mf, bp)
    return nleft


@_kernel
def _quant_pow2_block(x, codes, left, codes_b, scales, mp, bp, bf):
    nleft = 0
    for i in prange(x.shape[0]):
        nleft += _pow2_scales_row(x, left, codes_b, scales, i, bp, bf)
        _quant_pow2_row(x, codes, left, codes_b, i, mp, bp)
    return nleft


@_jit
def _scale_table(sq, el, vals, elem_max, ts):
    """Row c (cmin <= c <= cmax): T_0..T_6, the steps times s_c, and B_c (see the module
    docstring); float32."""
    tab = np.zeros((vals.size, 16), np.float32)
    den = elem_max * ts
    for c in range(sq[0], sq[1] + 1):
        d = vals[c] * ts
        s32 = np.float32(vals[c])
        for i in range(7):
            tab[c, i] = _threshold(el[i] * d, el[7 + i])
            tab[c, 7 + i] = np.float32(el[14 + i]) * s32
        tab[c, 14] = np.inf if c == sq[1] else _threshold((vals[c] + vals[c + 1]) * 0.5 * den, np.float64(c & 1))
    return tab


@_jit
def _float_scales_row(x, left, codes_b, scales, i, sq, tab, lut, vals, ts, bs, elem_max):
    """First pass, float scales: the scale code of each of row i's blocks from its amax
    bits m: the floor code of an estimate of amax / (elem_max * ts) from ``lut``, then
    one exact step up past B_c (see the module docstring)."""
    xr = x[i]
    rden = 1.0 / (elem_max * ts)
    nleft = _leave_tail(left, i, xr.size, bs)
    for b in range(xr.size // bs):
        m = _block_amax_bits(xr, b * bs, bs)
        if m == 0 or m >= _INF32_BITS:
            left[i, b] = True
            nleft += 1
        else:
            v = np.float32(np.float64(_bits_f32(m)) * rden)
            c = np.uint64(lut[np.uint64(_f32_bits(v) >> sq[2])])
            c += np.uint64(_bits_f32(m) > tab[c, 14])
            codes_b[i, b] = c
            scales[i, b] = vals[c]
    return nleft


@_jit
def _fq_float_scale_row(x, out, left, codes_b, i, tab, ts, bs):
    xr, orow = x[i], out[i]
    ts32 = np.float32(ts)
    for b in range(xr.size // bs):
        if left[i, b]:
            continue
        c = np.uint64(codes_b[i, b])
        t = (tab[c, 0], tab[c, 1], tab[c, 2], tab[c, 3], tab[c, 4], tab[c, 5], tab[c, 6])
        steps = (tab[c, 7], tab[c, 8], tab[c, 9], tab[c, 10], tab[c, 11], tab[c, 12], tab[c, 13])
        for k in range(bs // _LANES):
            base = np.uint64(b * bs + k * _LANES)
            for lane in range(_LANES):
                j = base + np.uint64(lane)
                xb = _f32_bits(xr[j])
                q = _step_sum7(_bits_f32(xb & _ABS32), t, steps)
                orow[j] = _bits_f32(_f32_bits(q * ts32) | (xb & _SIGN32))


@_jit
def _quant_float_scale_row(x, codes, left, codes_b, i, tab, bs, sign_bit):
    xr, crow = x[i], codes[i]
    for b in range(xr.size // bs):
        if left[i, b]:
            continue
        c = np.uint64(codes_b[i, b])
        t = (tab[c, 0], tab[c, 1], tab[c, 2], tab[c, 3], tab[c, 4], tab[c, 5], tab[c, 6])
        for k in range(bs // _LANES):
            base = np.uint64(b * bs + k * _LANES)
            for lane in range(_LANES):
                j = base + np.uint64(lane)
                xb = _f32_bits(xr[j])
                n = _count7(_bits_f32(xb & _ABS32), t)
                crow[j] = n | sign_bit if xb < 0 else n


@_kernel
def _fq_float_scale_block(x, out, left, codes_b, scales, sq, tab, lut, vals, ts, bs, elem_max):
    nleft = 0
    for i in prange(x.shape[0]):
        nleft += _float_scales_row(x, left, codes_b, scales, i, sq, tab, lut, vals, ts, bs, elem_max)
        _fq_float_scale_row(x, out, left, codes_b, i, tab, ts, bs)
    return nleft


@_kernel
def _quant_float_scale_block(x, codes, left, codes_b, scales, sq, tab, lut, vals, ts, bs, elem_max, sign_bit):
    nleft = 0
    for i in prange(x.shape[0]):
        nleft += _float_scales_row(x, left, codes_b, scales, i, sq, tab, lut, vals, ts, bs, elem_max)
        _quant_float_scale_row(x, codes, left, codes_b, i, tab, bs, sign_bit)
    return nleft


# ---------------------------------------------------------------------------
# entry points (called by numba_backend for the specs path_of accepts)


@functools.lru_cache(maxsize=None)
def _generic_args(spec: BlockFormat) -> tuple[Any, ...]:
    """Parameters of the generic per-block code: ep, table, bp, bf, sp."""
    return (element_params(spec.element), element_table(spec.element), *_block_params_of(spec))


def _float_scale_setup(spec: BlockFormat, x: np.ndarray) -> tuple[Any, ...]:
    """(sq, table, floor-code table, scale values, ts for the kernels, ts to report)."""
    sq, el, vals, lut = _float_scale_consts(spec)
    ts = _tensor_scale_of(spec, x)
    t = 1.0 if ts is None else ts
    return sq, _scale_table(sq, el, vals, float(spec.element.max_value), t), lut, vals, t, ts


def fake_quant(path: str, spec: Any, x: np.ndarray) -> np.ndarray:
    """float32 fake_quant of the (rows, n) float32 array x along ``path``."""
    out = np.empty(x.shape, np.float32)
    with threads_for(x.size):
        if path == "minifloat":
            _fq_minifloat(x.reshape(-1), out.reshape(-1), *_minifloat_params(spec))
            return out
        if path == "integer":
            _fq_integer(x.reshape(-1), out.reshape(-1), np.float32(spec.min_int), np.float32(spec.max_int))
            return out
        ep, table, bp, bf, sp = _generic_args(spec)
        nb = -(-x.shape[1] // spec.block_size)
        left = np.zeros((x.shape[0], nb), np.bool_)
        per_block = (np.empty(left.shape, np.uint8), np.empty(left.shape, np.float64))  # scale codes, values
        if path == "pow2_block":
            ts = 1.0
            nleft = _fq_pow2_block(x, out, left, *per_block, *_minifloat_params(spec.element), bp, bf)
        else:
            sq, tab, lut, vals, ts, _reported = _float_scale_setup(spec, x)
            nleft = _fq_float_scale_block(x, out, left, *per_block, sq, tab, lut, vals, ts, spec.block_size, bf[0])
    if nleft:
        rows, blocks = np.nonzero(left)
        _fq_listed_blocks(x, out, rows, blocks, ep, table, bp, bf, sp, ts, OUT_KINDS["float32"], OUT_PARAMS["float32"])
    return out


def quantize(path: str, spec: Any, x: np.ndarray) -> Parts:
    """Codes (and scales) of the (rows, n) float32 array x along ``path``."""
    rows, n = x.shape
    if path in ("minifloat", "integer"):
        codes = np.empty((rows, n), np.uint16 if spec.bits > 8 else np.uint8)
        mask = np.empty((rows, n), np.bool_)
        flat = (x.reshape(-1), codes.reshape(-1), mask.reshape(-1))
        with threads_for(x.size):
            if path == "minifloat":
                nans = _quant_minifloat(*flat, _minifloat_params(spec)[0])
            else:
                lo, hi = np.float32(spec.min_int), np.float32(spec.max_int)
                nans = _quant_integer(*flat, lo, hi, (1 << spec.bits) - 1)
        return Parts(codes=codes, nan_mask=mask if nans else None)
    ep, table, bp, bf, sp = _generic_args(spec)
    left = np.zeros((rows, -(-n // spec.block_size)), np.bool_)
    codes = np.empty((rows, n), np.uint8)
    scale_codes = np.empty(left.shape, np.uint8)
    scales = np.empty(left.shape, np.float64)
    reported = None
    with threads_for(x.size):
        if path == "pow2_block":
            ts = 1.0
            nleft = _quant_pow2_block(x, codes, left, scale_codes, scales, _minifloat_params(spec.element)[0], bp, bf)
        else:
            sq, tab, lut, vals, ts, reported = _float_scale_setup(spec, x)
            args = (sq, tab, lut, vals, ts, spec.block_size, bf[0], 1 << (spec.element.bits - 1))
            nleft = _quant_float_scale_block(x, codes, left, scale_codes, scales, *args)
    if nleft:
        rows_left, blocks_left = np.nonzero(left)
        _quant_listed_blocks(x, codes, scale_codes, scales, rows_left, blocks_left, ep, table, bp, bf, sp, ts)
    return Parts(codes=codes, scale_codes=scale_codes, scales=scales, tensor_scale=reported)
