"""The reference backend: exact rational arithmetic, one element at a time.

Slow and meant to be obviously right. Every value is a ``fractions.Fraction``;
each rounding picks between the two neighbouring representable values of the
exact quotient, by the rules in :mod:`lowbit.formats.spec`. Outputs are rounded
once into the output format with the same routine. For ``arithmetic="torchao"``
the float32 steps of torchao 0.18 are replayed with numpy float32 operations
(each IEEE correctly rounded), in torchao's order; see docs/formats.md.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from lowbit.emulate import reference_dialect
from lowbit.emulate.backends import Parts
from lowbit.formats.spec import (
    BF16,
    F16,
    F32,
    F64,
    BlockFormat,
    CodebookFormat,
    ExpScaleFormat,
    FloatFormat,
    Formatbook,
    IntFormat,
    decode_exact,
)

OUT_FORMATS = {"float16": F16, "bfloat16": BF16, "float32": F32, "float64": F64}
OUT_BITS = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32, "float64": np.uint64}
OUT_VIEW = {"float32": np.float32, "float64": np.float64}
M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# random bits for stochastic rounding


def random_bits(seed: int, index: int, nbits: int) -> int:
    """The ``nbits`` random bits stochastic rounding uses for element ``index``.

    h = seed * 0x9E3779B9 + index (mod 2^32), then the "lowbias32" integer hash
    (xor-shift 16, * 0x7FEB352D, xor-shift 15, * 0x846CA68B, xor-shift 16);
    the top ``nbits`` bits of h. Every backend computes exactly this.
    """
    h = (seed * 0x9E3779B9 + index) & M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & M32
    h ^= h >> 16
    return h >> (32 - nbits)


# ---------------------------------------------------------------------------
# exact helpers


def floor_log2(a: Fraction) -> int:
    """floor(log2(a)) for a > 0, exactly."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    return e if Fraction(2) ** e <= a else e - 1


def _pow2(e: int) -> Fraction:
    return Fraction(2) ** e


def _as_value(v: float) -> Fraction | float:
    """Finite non-zero floats as exact Fractions; NaN, +-Inf and signed zeros stay floats."""
    return Fraction(v) if math.isfinite(v) and v != 0 else v


def nan_code(fmt: FloatFormat) -> int:
    """The canonical (positive, quiet) NaN code of ``fmt``."""
    if fmt.special == "ieee":
        return (((1 << fmt.ebits) - 1) << fmt.mbits) | (1 << (fmt.mbits - 1))
    if fmt.special == "fn":
        return (1 << (fmt.ebits + fmt.mbits)) - 1
    return 1 << (fmt.bits - 1)  # fnuz: the "negative zero" code


def inf_code(fmt: FloatFormat) -> int:
    return ((1 << fmt.ebits) - 1) << fmt.mbits


def float_code_of(fmt: FloatFormat, val: Fraction) -> int:
    """Magnitude code of a representable non-negative ``val`` (exact)."""
    if val == 0:
        return 0
    e = floor_log2(val)
    if e < fmt.emin:
        return int(val / _pow2(fmt.emin - fmt.mbits))
    m = (val / _pow2(e) - 1) * (1 << fmt.mbits)
    return ((e + fmt.bias) << fmt.mbits) | int(m)


def _choose(lo: Fraction, hi: Fraction, a: Fraction, lo_even: bool, rounding: str, r: int, rbits: int) -> bool:
    """True to round ``a`` (lo <= a < hi) up to ``hi``."""
    if a == lo:
        return False
    if rounding == "toward_zero":
        return False
    if rounding == "stochastic":
        frac = (a - lo) / (hi - lo)
        return math.floor(frac * (1 << rbits)) + r >= (1 << rbits)
    d_lo, d_hi = a - lo, hi - a
    if d_lo != d_hi:
        return d_hi < d_lo
    return rounding == "nearest_away" or not lo_even


class NanNoCode(Exception):
    """A NaN met an element format without a NaN code (policy decides)."""


def encode(fmt: Any, v: float | Fraction, divisor: Fraction = Fraction(1), r: int = 0) -> int:
    """Code of v / divisor in element format ``fmt`` (exact).

    ``v`` may be a float NaN or +-Inf; finite values are exact Fractions or floats.
    """
    if isinstance(v, float) and math.isnan(v):
        if isinstance(fmt, FloatFormat) and fmt.has_nan:
            return nan_code(fmt)
        raise NanNoCode
    neg = (math.copysign(1.0, v) < 0) if isinstance(v, float) else v < 0
    if isinstance(v, float) and math.isinf(v):
        mag_code = _overflow(fmt, neg)
        return _signed(fmt, mag_code, neg)
    a = abs(Fraction(v)) / divisor
    if isinstance(fmt, IntFormat):
        return _encode_int(fmt, a, neg, r)
    if isinstance(fmt, CodebookFormat):
        mags = [Fraction(m) for m in fmt.magnitudes]
        if a >= mags[-1]:
            i = len(mags) - 1
        else:
            i = max(j for j in range(len(mags)) if mags[j] <= a)
            i += _choose(mags[i], mags[i + 1], a, i % 2 == 0, fmt.rounding, r, fmt.sr_bits)
        if not fmt.signed and neg:
            i = 0
        return _signed(fmt, i, neg)
    return _signed(fmt, _encode_float_mag(fmt, a, r, neg), neg)


def _overflow(fmt: Any, neg: bool) -> int:
    """Magnitude code (or full code for ints) an overflowing value gets."""
    if isinstance(fmt, IntFormat):
        return (fmt.min_int if neg else fmt.max_int) % (1 << fmt.bits)
    if isinstance(fmt, CodebookFormat):
        return len(fmt.magnitudes) - 1
    if fmt.overflow == "nan":
        return nan_code(fmt)
    if fmt.overflow == "inf":
        return inf_code(fmt)
    return fmt.max_code


def _encode_float_mag(fmt: FloatFormat, a: Fraction, r: int, neg: bool) -> int:
    if a == 0:
        return 0
    e = max(floor_log2(a), fmt.emin)
    q = _pow2(e - fmt.mbits)
    lo = math.floor(a / q) * q
    hi = lo + q
    max_val = decode_exact(fmt, fmt.max_code)
    lo_code = float_code_of(fmt, lo) if lo <= max_val else fmt.max_code + 1
    up = _choose(lo, hi, a, lo_code % 2 == 0, fmt.rounding, r, fmt.sr_bits)
    val = hi if up else lo
    if val > max_val:
        return _overflow(fmt, neg)
    if fmt.subnormal == "flush" and val < _pow2(fmt.emin):
        return 0
    return float_code_of(fmt, val)


def _encode_int(fmt: IntFormat, a: Fraction, neg: bool, r: int) -> int:
    lo = Fraction(math.floor(a))
    up = _choose(lo, lo + 1, a, lo % 2 == 0, fmt.rounding, r, fmt.sr_bits)
    m = int(lo) + int(up)
    val = -m if neg else m
    val = min(max(val, fmt.min_int), fmt.max_int)
    return val % (1 << fmt.bits)


def _signed(fmt: Any, mag_code: int, neg: bool) -> int:
    if isinstance(fmt, IntFormat):
        return mag_code
    if not fmt.signed:
        return 0 if neg else mag_code
    if isinstance(fmt, FloatFormat):
        if fmt.has_nan and mag_code == nan_code(fmt):
            return mag_code  # NaN is canonical and positive
        if fmt.special == "fnuz" and mag_code == 0:
            return 0  # no negative zero
    return mag_code | (1 << (fmt.bits - 1)) if neg else mag_code


def round_to(fmt: FloatFormat, value: Fraction | float) -> int:
    """Code of ``value`` in an output/scale float format (its own policies)."""
    return encode(fmt, value)


# ---------------------------------------------------------------------------
# element formats


def _element_quantize(fmt: Any, x: np.ndarray, seed: int | None) -> Parts:
    rows, n = x.shape
    codes = np.zeros((rows, n), np.uint16 if fmt.bits > 8 else np.uint8)
    mask = np.zeros((rows, n), bool)
    for i in range(rows):
        for j in range(n):
            r = random_bits(seed, i * n + j, fmt.sr_bits) if seed is not None else 0
            try:
                codes[i, j] = encode(fmt, float(x[i, j]), Fraction(1), r)
            except NanNoCode:
                if fmt.nan == "raise":
                    raise ValueError(f"x contains NaN and format {fmt.name!r} has no NaN code (nan='raise')") from None
                mask[i, j] = True
    return Parts(codes=codes, nan_mask=mask if mask.any() else None)


def _element_values(fmt: Any, codes: np.ndarray) -> list[list[Fraction | float]]:
    return [[decode_exact(fmt, int(c)) for c in row] for row in codes]


def _to_out(values: list[list[Fraction | float]], out: str) -> np.ndarray:
    fmt = OUT_FORMATS[out]
    bits = np.array([[round_to(fmt, v) for v in row] for row in values], dtype=OUT_BITS[out])
    bits = bits.reshape(len(values), -1) if values else bits.reshape(0, 0)
    return bits.view(OUT_VIEW[out]) if out in OUT_VIEW else bits


def _element_dequantize(fmt: Any, parts: Parts, out: str) -> np.ndarray:
    values = _element_values(fmt, parts.codes)
    if parts.nan_mask is not None:
        for i, j in zip(*np.nonzero(parts.nan_mask)):
            values[i][j] = float("nan")
    return _to_out(values, out).reshape(parts.codes.shape)


# ---------------------------------------------------------------------------
# block formats, exact arithmetic


def _block_ranges(n: int, bs: int) -> list[tuple[int, int]]:
    return [(s, min(s + bs, n)) for s in range(0, n, bs)]


def _exp_scale(spec: BlockFormat | Formatbook, amax: Fraction | float) -> int:
    """Unbiased exponent k of the power-of-two block scale 2^k."""
    sf: ExpScaleFormat = spec.scale  # type: ignore[assignment]
    elem = spec.element
    if isinstance(amax, float):  # inf_amax
        return sf.max_exp
    if amax == 0:
        return sf.min_exp
    rule = spec.scale_rule
    if rule == "floor":
        k = floor_log2(amax) - elem.emax
    elif rule == "ceil":
        k = floor_log2(amax) + (amax != _pow2(floor_log2(amax))) - elem.emax
    elif rule == "even":
        e = floor_log2(amax)
        q = _pow2(e - elem.mbits)
        rounded = math.floor(amax / q + Fraction(1, 2)) * q  # ties away
        k = floor_log2(rounded) - elem.emax
    else:  # rceil: smallest k with elem_max * 2^k >= amax
        t = amax / Fraction(elem.max_value)
        k = floor_log2(t)
        if _pow2(k) < t:
            k += 1
    return min(max(k, sf.min_exp), sf.max_exp)


def _tensor_scale(spec: BlockFormat, x: np.ndarray) -> Fraction | None:
    if spec.tensor_scale is None:
        return None
    finite = x[np.isfinite(x)]
    amax = Fraction(float(np.max(np.abs(finite)))) if finite.size else Fraction(0)
    if amax == 0:
        return Fraction(1)
    target = Fraction(spec.element.max_value) * Fraction(spec.scale_max)
    ts = decode_exact(F32, round_to(F32, amax / target))
    # fl32 underflows to 0 when amax < target * 2^-150 and overflows for huge float64
    # input: keep ts within the positive finite float32 values.
    return min(max(ts, Fraction(2) ** -149), decode_exact(F32, F32.max_code))  # type: ignore[return-value]


def _block_quantize_exact(spec: BlockFormat, x: np.ndarray, seed: int | None) -> Parts:
    rows, n = x.shape
    elem = spec.element
    blocks = _block_ranges(n, spec.block_size)
    nb = len(blocks)
    codes = np.zeros((rows, n), np.uint16 if elem.bits > 8 else np.uint8)
    scale_codes = np.zeros((rows, nb), np.uint8)
    scales = np.zeros((rows, nb), np.float64)
    ts = _tensor_scale(spec, x)
    pow2 = isinstance(spec.scale, ExpScaleFormat)
    for i in range(rows):
        for b, (s, e) in enumerate(blocks):
            vals = [float(v) for v in x[i, s:e]]
            has_nan = any(math.isnan(v) for v in vals)
            has_inf = any(math.isinf(v) for v in vals)
            if has_nan or (has_inf and spec.inf_block == "nan"):
                scale_codes[i, b] = spec.scale.nan_code if pow2 else nan_code(spec.scale)
                scales[i, b] = np.nan
                continue
            finite = [abs(Fraction(v)) for v in vals if not math.isinf(v)]
            amax: Fraction | float = max(finite, default=Fraction(0))
            if has_inf and spec.inf_block == "inf_amax":
                amax = math.inf
            if pow2:
                k = _exp_scale(spec, amax)
                scale_codes[i, b] = k + spec.scale.bias
                scales[i, b] = 2.0**k
                divisor = _pow2(k)
            else:
                sfmt: FloatFormat = spec.scale  # type: ignore[assignment]
                if isinstance(amax, float):
                    sval = Fraction(spec.scale_max)
                elif amax == 0:
                    sval = Fraction(0) if spec.zero_block == "zero_scale" else Fraction(spec.scale_min)
                else:
                    t = amax / (Fraction(elem.max_value) * (ts if ts is not None else 1))
                    sval = decode_exact(sfmt, round_to(sfmt, t))  # type: ignore[assignment]
                    sval = min(max(sval, Fraction(spec.scale_min)), Fraction(spec.scale_max))
                scale_codes[i, b] = round_to(sfmt, sval)
                scales[i, b] = float(sval)
                divisor = sval * (ts if ts is not None else 1)
            for j in range(s, e):
                r = random_bits(seed, i * n + j, elem.sr_bits) if seed is not None else 0
                v = vals[j - s]
                if divisor == 0:
                    v = math.copysign(0.0, v)
                    codes[i, j] = encode(elem, v)
                else:
                    codes[i, j] = encode(elem, _as_value(v), divisor, r)
    return Parts(
        codes=codes,
        scale_codes=scale_codes,
        scales=scales,
        tensor_scale=None if ts is None else float(ts),
    )


def _dequant_value(q: Fraction | float, scale: float, ts: Fraction) -> Fraction | float:
    """Exact q * scale * ts, with NaN blocks, Inf/NaN codes and signed zeros."""
    if math.isnan(scale):
        return float("nan")
    if isinstance(q, float):  # NaN, +-Inf or -0.0: a positive scale keeps them
        return q
    return q * Fraction(scale) * ts


def _block_dequantize_exact(spec: BlockFormat, parts: Parts, out: str) -> np.ndarray:
    rows, n = parts.codes.shape
    ts = Fraction(parts.tensor_scale) if parts.tensor_scale is not None else Fraction(1)
    blocks = _block_ranges(n, spec.block_size)
    values = [
        [
            _dequant_value(decode_exact(spec.element, int(parts.codes[i, j])), float(parts.scales[i, b]), ts)  # type: ignore[index]
            for b, (s, e) in enumerate(blocks)
            for j in range(s, e)
        ]
        for i in range(rows)
    ]
    return _to_out(values, out).reshape(rows, n)


# ---------------------------------------------------------------------------
# block formats, torchao 0.18 arithmetic (float32 numpy, torchao's order)
#
# Replays torchao.prototype.mx_formats (to_mx, _to_mx_rceil, nvfp4_quantize,
# per_tensor_amax_to_scale, dequantize) step by step. numpy float32 operations are
# correctly rounded, like torch's on the CPU. Element casts are RNE with
# saturation (torchao's bit-twiddling casts agree with that on every non-NaN
# input); codes of elements inside NaN blocks are not meaningful in torchao (its
# casts turn NaN into arbitrary codes) and are written as this backend's encoding
# of the scaled value, code 0 where that is NaN.


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _torchao_log2_f32(d: np.ndarray) -> np.ndarray:
    """float32 log2 as torch computes it on the CPU; correctly rounded near powers of two,
    which is all ceil() can tell apart (checked against torch.log2 in the tests)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2(d.astype(np.float64)).astype(np.float32)


def _torchao_scaled(spec: BlockFormat, xb: np.ndarray, ts32: np.ndarray | None):
    """(scale codes, scale values, scaled float32 elements) for blocks xb (rows, nb, bs)."""
    elem = spec.element
    amax = _f32(np.max(np.abs(xb), axis=-1))  # NaN propagates, like torch.amax
    emax32 = _f32(elem.max_value)
    if isinstance(spec.scale, ExpScaleFormat) and spec.scale_rule == "rceil":
        descale = _f32(amax / emax32)
        lg = np.ceil(_torchao_log2_f32(descale))
        lg = np.clip(np.where(np.isfinite(lg), lg, np.where(lg > 0, 127, -127)), -127, 127)
        code = np.where(np.isnan(descale), 255, np.where(np.isinf(descale), 254, lg + 127)).astype(np.int64)
        rcp = np.where(
            code == 255,
            np.float32(np.nan),
            np.where(code == 254, _f32(2.0**-127), np.where(code == 0, _f32(1.0), _f32(np.exp2(127.0 - code)))),
        )
        data = _f32(xb * _f32(rcp)[..., None])
        data = np.clip(data, -emax32, emax32)
        scales = np.where(code == 255, np.nan, np.exp2(code.astype(np.float64) - 127))
        return code.astype(np.uint8), scales, data
    if isinstance(spec.scale, ExpScaleFormat):
        bits = amax.view(np.int32).astype(np.int64)
        if spec.scale_rule == "even":
            bits = np.where(np.isnan(amax), bits, (bits + (1 << (23 - elem.mbits - 1))) & 0xFF800000)
        pow2 = ((bits >> 23) & 0xFF) - 127
        if spec.scale_rule == "ceil":
            pow2 = pow2 + ((bits & 0x7FFFFF) > 0)
        code = np.clip(pow2 - elem.emax, -127, 128) + 127
        code = np.where(np.isnan(amax), 255, code).astype(np.int64)
        scale_fp32 = np.maximum((code << 23).astype(np.int32).view(np.float32), _f32(2.0**-126))
        data = _f32(xb / scale_fp32[..., None])
        if elem.bits == 8:  # torchao clamps before the float8 cast
            data = np.clip(data, -emax32, emax32)
        scales = np.where(code == 255, np.nan, np.exp2(code.astype(np.float64) - 127))
        return code.astype(np.uint8), scales, data
    # NVFP4: E4M3 block scales
    sfmt: FloatFormat = spec.scale  # type: ignore[assignment]
    block_scale = _f32(amax / emax32)
    if ts32 is not None:
        block_scale = _f32(block_scale / ts32)
    clamped = np.clip(block_scale, _f32(spec.scale_min), _f32(spec.scale_max))
    s_codes = np.array([round_to(sfmt, float(v)) for v in clamped.ravel()], np.uint8).reshape(clamped.shape)
    s32 = _f32([float(decode_exact(sfmt, int(c))) for c in s_codes.ravel()]).reshape(clamped.shape)
    if ts32 is None:
        rcp = _f32(_f32(1.0) / s32)
    else:
        rcp = _f32(_f32(_f32(1.0) / ts32) / s32)
    data = np.clip(_f32(xb * rcp[..., None]), -emax32, emax32)
    return s_codes, s32.astype(np.float64), data


def _torchao_quantize(spec: BlockFormat, x: np.ndarray) -> Parts:
    rows, n = x.shape
    bs = spec.block_size
    nb = -(-n // bs)
    xp = np.zeros((rows, nb * bs), np.float32)
    xp[:, :n] = x
    xb = xp.reshape(rows, nb, bs)
    ts32 = None
    if spec.tensor_scale is not None:
        amax_t = _f32(np.max(np.abs(x))) if x.size else _f32(0.0)
        ts32 = _f32(amax_t / _f32(spec.element.max_value * spec.scale_max))
    with np.errstate(all="ignore"):
        scale_codes, scales, data = _torchao_scaled(spec, xb, ts32)
    flat = data.reshape(rows, nb * bs)[:, :n]
    codes = np.zeros((rows, n), np.uint8)
    for i in range(rows):
        for j in range(n):
            v = float(flat[i, j])
            codes[i, j] = 0 if math.isnan(v) else encode(spec.element, _as_value(v))
    return Parts(
        codes=codes,
        scale_codes=scale_codes,
        scales=scales,
        tensor_scale=None if ts32 is None else float(ts32),
    )


def _torchao_dequantize(spec: BlockFormat, parts: Parts, out: str) -> np.ndarray:
    """MX: one rounding of q * 2^k (torchao multiplies in the output dtype); NVFP4:
    fl_out(fl32(q * fl32(ts * s)))."""
    if isinstance(spec.scale, ExpScaleFormat):
        return _block_dequantize_exact(spec, parts, out)
    rows, n = parts.codes.shape
    with np.errstate(all="ignore"):
        s32 = _f32(parts.scales)
        if parts.tensor_scale is not None:
            s32 = _f32(_f32(parts.tensor_scale) * s32)
        q = _f32([[float(decode_exact(spec.element, int(c))) for c in row] for row in parts.codes]).reshape(rows, n)
        col_block = np.arange(n) // spec.block_size
        y32 = _f32(q * s32[:, col_block]) if n else q
    return _to_out([[_as_value(float(v)) for v in row] for row in y32], out).reshape(rows, n)


# ---------------------------------------------------------------------------
# the backend functions


def quantize(spec: Any, x: np.ndarray, *, seed: int | None, subbooks: Any = None) -> Parts:
    if isinstance(spec, Formatbook):
        return reference_dialect.quantize(spec, x, subbooks)
    if not isinstance(spec, BlockFormat):
        return _element_quantize(spec, x, seed)
    if spec.arithmetic == "torchao":
        return _torchao_quantize(spec, x)
    return _block_quantize_exact(spec, x, seed)


def dequantize(spec: Any, parts: Parts, out: str) -> np.ndarray:
    if isinstance(spec, Formatbook):
        return reference_dialect.dequantize(spec, parts, out)
    if not isinstance(spec, BlockFormat):
        return _element_dequantize(spec, parts, out)
    if spec.arithmetic == "torchao":
        return _torchao_dequantize(spec, parts, out)
    return _block_dequantize_exact(spec, parts, out)


def fake_quant(spec: Any, x: np.ndarray, *, seed: int | None, out: str, subbooks: Any = None) -> np.ndarray:
    return dequantize(spec, quantize(spec, x, seed=seed, subbooks=subbooks), out)
