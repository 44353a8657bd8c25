"""Fixed-point views of format specs: the constants the HDL generators bake in.

Everything here is plain Python computed from a spec with exact fractions
(``lowbit.formats.spec.decode_exact``); nothing reads an emulator.

Element magnitudes are unsigned integers in units of ``2^lsb_exp``, the largest
power of two that divides every finite magnitude of the format:

- FloatFormat: ``lsb_exp = emin - mbits`` (the smallest subnormal step),
- IntFormat: ``lsb_exp = 0``,
- CodebookFormat: the 2-adic valuation shared by its non-zero magnitudes.

Encoder input: a sign bit plus an unsigned magnitude in units of
``2^(lsb_exp - GUARD_BITS)``. Two guard bits make every rounding case of the
format reachable (values on the grid, exact ties, and inputs strictly between a
value and a tie). The encoder is a ladder of constant comparators: threshold
``T_k`` is the smallest input whose rounded result has magnitude rank >= k,
following the spec's rounding (ties to the even code, away, or toward zero),
overflow (saturate, NaN, Inf; judged with the exponent range unbounded: the
value above the maximum is max + ulp(max)) and subnormal flush (rounded first,
flushed after), exactly as the spec's docstring defines them.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import attrs

from lowbit.formats.spec import CodebookFormat, FloatFormat, IntFormat, decode_exact

#: Fraction bits below the format's LSB that the encoder input carries.
GUARD_BITS = 2

#: Widest constant the generators bake in. MyHDL writes integer constants of
#: 2^30 and more as unsized or unsigned literals, which the converted HDL then
#: misreads (docs/hardware.md); formats whose tables need more are refused.
MAX_CONST_BITS = 30

ELEMENT_TYPES = (FloatFormat, IntFormat, CodebookFormat)


class Unsupported(ValueError):
    """The spec does not fit a generic generator; the message says why."""


def _two_adic(v: Fraction) -> int:
    num, den = v.numerator, v.denominator
    return ((num & -num).bit_length() - 1) - ((den & -den).bit_length() - 1)


def _value_units(v: Fraction, lsb_exp: int) -> int:
    u = v / Fraction(2) ** lsb_exp
    assert u.denominator == 1, (v, lsb_exp)
    return int(u)


def sign_bit(fmt: Any) -> int:
    return 1 << (fmt.bits - 1) if fmt.signed else 0


@attrs.frozen
class ElementTables:
    """Decoder and encoder constants of one element format.

    mag        magnitude of every code (units 2^lsb_exp); 0 for NaN/Inf codes
    neg        1 where the code is negative (its value's sign, -0 included)
    nan, inf   1 where the code is NaN / +-Inf
    thresholds encoder comparator constants, ascending (units 2^(lsb_exp - GUARD_BITS))
    enc_pos    code for a non-negative input with rank k (k = number of thresholds passed)
    enc_neg    the same for a negative input
    """

    name: str
    code_bits: int
    lsb_exp: int
    mag: tuple[int, ...]
    neg: tuple[int, ...]
    nan: tuple[int, ...]
    inf: tuple[int, ...]
    thresholds: tuple[int, ...] | None
    enc_pos: tuple[int, ...] | None
    enc_neg: tuple[int, ...] | None
    encoder_note: str

    @property
    def mag_bits(self) -> int:
        return max(1, max(self.mag).bit_length())

    @property
    def in_bits(self) -> int:
        """Encoder input magnitude width: twice the largest threshold fits."""
        assert self.thresholds is not None
        return self.thresholds[-1].bit_length() + 1


def _lsb_exp(fmt: Any) -> int:
    if isinstance(fmt, FloatFormat):
        return fmt.emin - fmt.mbits
    if isinstance(fmt, IntFormat):
        return 0
    return min(_two_adic(Fraction(m)) for m in fmt.magnitudes if m != 0)


def _rank_values(fmt: Any) -> tuple[list[Fraction], list[int], list[int]]:
    """Ascending magnitudes the rounding chooses among (the last one may be the
    virtual overflow value), and the codes a positive / negative input gets."""
    sb = sign_bit(fmt)
    if isinstance(fmt, IntFormat):
        top = max(fmt.max_int, -fmt.min_int)
        vals = [Fraction(m) for m in range(top + 1)]
        pos = [min(m, fmt.max_int) for m in range(top + 1)]
        neg = [max(-m, fmt.min_int) % (1 << fmt.bits) for m in range(top + 1)]
        return vals, pos, neg
    if isinstance(fmt, CodebookFormat):
        vals = [Fraction(m) for m in fmt.magnitudes]
        idx = list(range(len(vals)))
        return vals, idx, [i | sb if fmt.signed else 0 for i in idx]
    vals, pos, neg = [], [], []
    for m in range(fmt.max_code + 1):
        e, frac = m >> fmt.mbits, Fraction(m & ((1 << fmt.mbits) - 1), 1 << fmt.mbits)
        # the rounding grid keeps subnormals even under flush (rounded first, flushed after)
        vals.append(frac * Fraction(2) ** fmt.emin if e == 0 else (1 + frac) * Fraction(2) ** (e - fmt.bias))
        code = 0 if fmt.subnormal == "flush" and e == 0 else m
        pos.append(code)
        neg.append(_float_neg(fmt, code))
    over = _float_overflow(fmt)
    vals.append(vals[-1] + Fraction(2) ** (fmt.emax - fmt.mbits))
    pos.append(over)
    neg.append(_float_neg(fmt, over))
    return vals, pos, neg


def _float_overflow(fmt: FloatFormat) -> int:
    if fmt.overflow == "nan":
        return _nan_code(fmt)
    if fmt.overflow == "inf":
        return ((1 << fmt.ebits) - 1) << fmt.mbits
    return fmt.max_code


def _nan_code(fmt: FloatFormat) -> int:
    return next(c for c in range(1 << fmt.bits) if isinstance(decode_exact(fmt, c), float) and math.isnan(decode_exact(fmt, c)))


def _float_neg(fmt: FloatFormat, mag_code: int) -> int:
    if not fmt.signed:
        return 0
    if fmt.has_nan and fmt.overflow == "nan" and mag_code == _nan_code(fmt):
        return mag_code  # the canonical NaN is positive
    if fmt.special == "fnuz" and mag_code == 0:
        return 0  # no negative zero
    return mag_code | sign_bit(fmt)


def _thresholds(fmt: Any, vals: list[Fraction], unit: Fraction) -> list[int]:
    out = []
    for k in range(1, len(vals)):
        lo, hi = vals[k - 1], vals[k]
        if fmt.rounding == "toward_zero":
            t = hi
            out.append(math.ceil(t / unit))
            continue
        mid = (lo + hi) / 2
        ties_up = fmt.rounding == "nearest_away" or (k - 1) % 2 == 1
        t = mid / unit
        out.append(math.ceil(t) if ties_up or t.denominator != 1 else int(t) + 1)
    return out


def element_tables(fmt: Any) -> ElementTables:
    """The constants of ``fmt``'s decoder and encoder (raises :class:`Unsupported`)."""
    if not isinstance(fmt, ELEMENT_TYPES):
        raise Unsupported(f"{fmt.name}: element generators take FloatFormat, IntFormat or CodebookFormat, not {type(fmt).__name__}")
    lsb_exp = _lsb_exp(fmt)
    n = 1 << fmt.bits
    mag, neg, nan, inf = [], [], [], []
    for c in range(n):
        v = decode_exact(fmt, c)
        is_float = isinstance(v, float)
        nan.append(int(is_float and math.isnan(v)))
        inf.append(int(is_float and math.isinf(v)))
        neg.append(int(not nan[-1] and math.copysign(1.0, float(v)) < 0))
        mag.append(0 if is_float and (nan[-1] or inf[-1]) else _value_units(abs(Fraction(v)), lsb_exp))
    tables = dict(name=fmt.name, code_bits=fmt.bits, lsb_exp=lsb_exp, mag=tuple(mag), neg=tuple(neg), nan=tuple(nan), inf=tuple(inf))
    if max(mag).bit_length() > MAX_CONST_BITS:
        raise Unsupported(f"{fmt.name}: magnitudes need {max(mag).bit_length()} bits (table constants at most {MAX_CONST_BITS})")
    if fmt.rounding == "stochastic":
        return ElementTables(**tables, thresholds=None, enc_pos=None, enc_neg=None,
                             encoder_note=f"{fmt.name}: stochastic rounding has no generic encoder (it needs a random-bit input)")
    vals, pos, negc = _rank_values(fmt)
    unit = Fraction(2) ** (lsb_exp - GUARD_BITS)
    th = _thresholds(fmt, vals, unit)
    if th[-1].bit_length() > MAX_CONST_BITS:
        raise Unsupported(f"{fmt.name}: encoder thresholds need {th[-1].bit_length()} bits (table constants at most {MAX_CONST_BITS})")
    return ElementTables(**tables, thresholds=tuple(th), enc_pos=tuple(pos), enc_neg=tuple(negc), encoder_note="")
