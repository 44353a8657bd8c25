"""Format specifications: frozen values, data only.

A spec says *what* a format is and *which* numeric policy applies at every point
where two stacks could reasonably disagree. Behaviour lives in the backends
(``lowbit.emulate``), which read these fields; nothing here computes.

Element formats
    ``FloatFormat``    any ExMy minifloat (bias, subnormals, Inf/NaN encoding)
    ``IntFormat``      two's complement or unsigned integers
    ``CodebookFormat`` sign + index into an explicit table of magnitudes
Scale formats
    ``ExpScaleFormat`` power-of-two scales such as OCP E8M0
    (a ``FloatFormat`` such as E4M3 also serves as a scale format)
Block formats
    ``BlockFormat``    element + block size + scale + scale rule (+ tensor scale)

Policy vocabulary (documented once here, used by every backend):

rounding
    ``nearest_even`` ties to the even code (IEEE default), ``nearest_away`` ties
    away from zero, ``toward_zero`` truncation, ``stochastic``: round up with
    probability floor(frac * 2^sr_bits) / 2^sr_bits, using the counter-based
    random bits of :func:`lowbit.emulate.random_bits` (seed + element index).
overflow
    what a finite value that rounds beyond the largest finite magnitude, or an
    Inf input, becomes: ``saturate`` (largest finite, sign kept), ``nan`` (the
    NaN code; needs one), ``inf`` (the Inf code; needs one). "Rounds beyond" is
    judged as if the exponent range were unbounded: the value just above the
    maximum is max + ulp(max), so e.g. E4M3 (max 448) overflows above 464.
nan (element formats that have no NaN code)
    ``keep``: the code written is 0 and a NaN mask travels with the quantized
    tensor, so dequantize and fake_quant return NaN again; ``raise``: an error.
subnormal
    ``keep`` (gradual underflow) or ``flush`` (results that would be subnormal
    become signed zero; subnormal codes decode to zero and are never produced).
special (FloatFormat)
    ``ieee``: top exponent reserved (Inf: mantissa 0, NaN: otherwise);
    ``fn``: no Inf, only the all-ones code is NaN (ml_dtypes ``float8_e4m3fn``);
    ``fnuz``: no Inf, no negative zero, NaN is the code 0b1000... ; ``none``: every
    code is finite (E2M1, E2M3, E3M2).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal, Union

import attrs
from attrs import field, frozen

Rounding = Literal["nearest_even", "nearest_away", "toward_zero", "stochastic"]
Overflow = Literal["saturate", "nan", "inf"]
NanInput = Literal["keep", "raise"]
Subnormal = Literal["keep", "flush"]
Special = Literal["ieee", "fn", "fnuz", "none"]
NibbleOrder = Literal["low_first", "high_first"]
ScaleRule = Literal["floor", "ceil", "even", "rceil", "nearest"]
NanBlock = Literal["nan"]
InfBlock = Literal["nan", "saturate", "inf_amax"]
ZeroBlock = Literal["min_scale", "zero_scale"]
Padding = Literal["zero", "error"]
Arithmetic = Literal["exact", "torchao"]
TensorAmax = Literal["finite", "all"]

ROUNDINGS: tuple[str, ...] = Rounding.__args__  # type: ignore[attr-defined]
OVERFLOWS: tuple[str, ...] = Overflow.__args__  # type: ignore[attr-defined]


def _one_of(name: str, allowed: tuple[str, ...]):
    def check(_inst: object, _attr: object, value: object) -> None:
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not a known policy; choose one of {', '.join(allowed)}")

    return check


def _choices(lit: object) -> tuple[str, ...]:
    return lit.__args__  # type: ignore[attr-defined]


def _policy(lit: object, name: str, default: str):
    return field(default=default, validator=_one_of(name, _choices(lit)))


@frozen(kw_only=True)
class _ElementPolicies:
    """Policies shared by every element format."""

    name: str
    rounding: str = _policy(Rounding, "rounding", "nearest_even")
    overflow: str = _policy(Overflow, "overflow", "saturate")
    nan: str = _policy(NanInput, "nan", "keep")
    sr_bits: int = field(default=8)
    sr_seed: int | None = None
    nibble_order: str = _policy(NibbleOrder, "nibble_order", "low_first")

    @sr_bits.validator
    def _sr_bits(self, _a: object, value: int) -> None:
        if not 1 <= value <= 24:
            raise ValueError(f"sr_bits must be between 1 and 24, got {value}")

    @property
    def has_nan(self) -> bool:
        return False

    @property
    def has_inf(self) -> bool:
        return False

    def _check_overflow(self) -> None:
        if self.overflow == "nan" and not self.has_nan:
            raise ValueError(f"{self.name}: overflow='nan' needs a NaN code, and this format has none")
        if self.overflow == "inf" and not self.has_inf:
            raise ValueError(f"{self.name}: overflow='inf' needs an Inf code, and this format has none")


@frozen(kw_only=True)
class FloatFormat(_ElementPolicies):
    """An ExMy minifloat: 1 sign bit (if signed), ``ebits`` exponent, ``mbits`` mantissa.

    Value of a normal code: (-1)^s * 2^(E - bias) * (1 + M / 2^mbits); of a
    subnormal code (E == 0): (-1)^s * 2^(1 - bias) * M / 2^mbits.
    """

    ebits: int
    mbits: int
    bias: int = field()
    signed: bool = True
    special: str = _policy(Special, "special", "none")
    subnormal: str = _policy(Subnormal, "subnormal", "keep")

    @bias.default
    def _bias_default(self) -> int:
        return (1 << (self.ebits - 1)) - 1

    def __attrs_post_init__(self) -> None:
        if self.ebits < 1 or self.mbits < 0:
            raise ValueError(f"{self.name}: need ebits >= 1 and mbits >= 0")
        if self.special == "ieee" and (self.ebits < 2 or self.mbits < 1):
            raise ValueError(f"{self.name}: special='ieee' needs at least 2 exponent bits and 1 mantissa bit")
        if self.special == "fn" and self.mbits == 0:
            raise ValueError(f"{self.name}: special='fn' needs mantissa bits")
        if self.special == "fnuz" and not self.signed:
            raise ValueError(f"{self.name}: special='fnuz' needs a sign bit")
        self._check_overflow()

    @property
    def bits(self) -> int:
        return int(self.signed) + self.ebits + self.mbits

    @property
    def has_nan(self) -> bool:
        return self.special != "none"

    @property
    def has_inf(self) -> bool:
        return self.special == "ieee"

    @property
    def max_code(self) -> int:
        """Magnitude code (sign bit clear) of the largest finite value."""
        allones = (1 << (self.ebits + self.mbits)) - 1
        if self.special == "ieee":
            return allones - (1 << self.mbits)
        if self.special == "fn":
            return allones - 1
        return allones

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite value (OCP's emax_elem)."""
        return (self.max_code >> self.mbits) - self.bias

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal value."""
        return 1 - self.bias

    @property
    def max_value(self) -> float:
        return float(decode_exact(self, self.max_code))


@frozen(kw_only=True)
class IntFormat(_ElementPolicies):
    """Integers in ``bits`` bits: two's complement when signed.

    ``symmetric`` drops the most negative code (-2^(bits-1)) so the range is
    +-(2^(bits-1) - 1), as symmetric quantizers use.
    """

    int_bits: int
    signed: bool = True
    symmetric: bool = False

    def __attrs_post_init__(self) -> None:
        if not 2 <= self.int_bits <= 16:
            raise ValueError(f"{self.name}: int_bits must be in 2..16")
        if self.overflow != "saturate":
            raise ValueError(f"{self.name}: integer formats only saturate")

    @property
    def bits(self) -> int:
        return self.int_bits

    @property
    def max_int(self) -> int:
        return (1 << (self.int_bits - int(self.signed))) - 1

    @property
    def min_int(self) -> int:
        if not self.signed:
            return 0
        return -self.max_int if self.symmetric else -self.max_int - 1

    @property
    def max_value(self) -> float:
        return float(self.max_int)

    @property
    def emax(self) -> int:
        return math.floor(math.log2(self.max_int))


@frozen(kw_only=True)
class CodebookFormat(_ElementPolicies):
    """Sign bit + index into ``magnitudes`` (ascending, first is 0).

    Rounding goes to the nearest magnitude; ``nearest_even`` breaks ties toward
    the even index, ``nearest_away`` toward the larger magnitude.
    """

    magnitudes: tuple[float, ...] = field(converter=tuple)
    signed: bool = True

    def __attrs_post_init__(self) -> None:
        m = self.magnitudes
        n = len(m)
        if n < 2 or n & (n - 1):
            raise ValueError(f"{self.name}: need a power-of-two number of magnitudes, got {n}")
        if m[0] != 0 or any(b <= a for a, b in zip(m, m[1:])):
            raise ValueError(f"{self.name}: magnitudes must start at 0 and strictly increase")
        if any(not math.isfinite(v) for v in m):
            raise ValueError(f"{self.name}: magnitudes must be finite")
        if self.overflow != "saturate":
            raise ValueError(f"{self.name}: codebook formats only saturate")

    @property
    def index_bits(self) -> int:
        return len(self.magnitudes).bit_length() - 1

    @property
    def bits(self) -> int:
        return int(self.signed) + self.index_bits

    @property
    def max_value(self) -> float:
        return self.magnitudes[-1]

    @property
    def emax(self) -> int:
        return math.frexp(self.magnitudes[-1])[1] - 1


@frozen(kw_only=True)
class ExpScaleFormat:
    """Power-of-two scale: value 2^(code - bias); ``nan_code`` (if any) is NaN.

    OCP E8M0: 8 bits, bias 127, code 255 = NaN, no zero, no sign, no Inf.
    """

    name: str
    ebits: int
    bias: int
    nan_code: int | None

    @property
    def bits(self) -> int:
        return self.ebits

    @property
    def min_exp(self) -> int:
        return -self.bias

    @property
    def max_exp(self) -> int:
        top = (1 << self.ebits) - 1
        return (top - 1 if self.nan_code == top else top) - self.bias

    @property
    def has_nan(self) -> bool:
        return self.nan_code is not None


@frozen(kw_only=True)
class TensorScale:
    """A second-level float32 scale for the whole tensor (NVFP4 two-level).

    ts = fl32(amax_tensor / (element max * scale max)); 1 when amax is 0; clamped
    to [2^-149, largest float32] where fl32 would underflow to 0 or overflow.
    ``amax``: ``finite`` takes the maximum over finite values (a NaN or Inf only
    spoils its own block); ``all`` propagates NaN/Inf into ts (torchao).
    """

    amax: str = _policy(TensorAmax, "amax", "finite")


ElementFormat = Union[FloatFormat, IntFormat, CodebookFormat]
ScaleFormat = Union[ExpScaleFormat, FloatFormat]


@frozen(kw_only=True)
class BlockFormat:
    """Blocks of ``block_size`` consecutive elements along ``axis`` share a scale.

    scale_rule (how the block scale X follows from the block's amax):
      ``floor``  X = 2^(floor(log2 amax) - emax_elem)            (OCP MX v1.0)
      ``ceil``   X = 2^(ceil(log2 amax) - emax_elem)
      ``even``   amax first rounded to the element's mantissa width, ties away,
                 then ``floor``                                   (torchao EVEN)
      ``rceil``  the smallest power of two with X * elem_max >= amax (no clipping)
      ``nearest`` (float scales) X = RNE(amax / (elem_max * ts)) in the scale
                 format, clamped to [scale_min, scale_max]
    All exponents come from the float's bits, never from a float32 log2.

    nan_block ``nan``: a NaN anywhere makes the block's scale NaN (all NaN).
    inf_block ``nan``: the block becomes NaN (microxcaling); ``saturate``: the
      scale comes from the finite elements and Inf elements become +-max;
      ``inf_amax``: the Inf is the block amax, so the scale is the largest the
      rule allows, Inf elements saturate and the rest mostly flush (torchao).
    zero_block: an all-zero block gets the smallest scale code (``min_scale``)
      or the scale format's zero (``zero_scale``, float scales only).
    padding: a partial last block of a row is padded with zeros (``zero``) or is
      an error (``error``). Blocks never straddle rows.
    arithmetic ``exact``: every step is one correctly rounded operation on exact
      values; ``torchao``: torchao 0.18's float32 order of operations with all its
      deviations (docs/formats.md lists them; only float32/bfloat16 input).
    """

    name: str
    element: ElementFormat
    block_size: int
    axis: int = -1
    scale: ScaleFormat
    scale_rule: str = _policy(ScaleRule, "scale_rule", "floor")
    scale_min: float | None = None
    scale_max: float | None = None
    tensor_scale: TensorScale | None = None
    nan_block: str = _policy(NanBlock, "nan_block", "nan")
    inf_block: str = _policy(InfBlock, "inf_block", "nan")
    zero_block: str = _policy(ZeroBlock, "zero_block", "min_scale")
    padding: str = _policy(Padding, "padding", "zero")
    arithmetic: str = _policy(Arithmetic, "arithmetic", "exact")

    def __attrs_post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"{self.name}: block_size must be positive, got {self.block_size}")
        pow2 = isinstance(self.scale, ExpScaleFormat)
        if pow2 and self.scale_rule == "nearest":
            raise ValueError(f"{self.name}: scale_rule='nearest' needs a float scale format")
        if not pow2 and self.scale_rule != "nearest":
            raise ValueError(f"{self.name}: a float scale format needs scale_rule='nearest'")
        if self.scale_rule == "even" and not isinstance(self.element, FloatFormat):
            raise ValueError(f"{self.name}: scale_rule='even' needs a float element format")
        if self.zero_block == "zero_scale" and pow2:
            raise ValueError(f"{self.name}: zero_block='zero_scale' needs a scale format with a zero")
        if self.tensor_scale is not None and pow2:
            raise ValueError(f"{self.name}: a tensor scale needs a float block scale format")
        if not pow2 and (self.scale_min is None or self.scale_max is None):
            raise ValueError(f"{self.name}: float scale formats need scale_min and scale_max")
        if self.tensor_scale is not None and self.tensor_scale.amax == "all" and self.arithmetic != "torchao":
            raise ValueError(f"{self.name}: tensor_scale amax='all' is torchao's behaviour; it needs arithmetic='torchao'")
        if self.element.rounding == "stochastic" and self.arithmetic != "exact":
            raise ValueError(f"{self.name}: stochastic rounding needs arithmetic='exact'")

    @property
    def bits(self) -> float:
        """Storage bits per element, the scale's bits spread over the block."""
        return self.element.bits + self.scale.bits / self.block_size

    @property
    def rounding(self) -> str:
        return self.element.rounding


Format = Union[FloatFormat, IntFormat, CodebookFormat, BlockFormat]
SPEC_TYPES = (FloatFormat, IntFormat, CodebookFormat, BlockFormat)


def evolve(spec, **changes):
    """A copy of ``spec`` with ``changes`` (``name`` included when you rename it)."""
    return attrs.evolve(spec, **changes)


def decode_exact(fmt: ElementFormat, code: int) -> Fraction | float:
    """Exact value of ``code`` straight from the format's definition.

    Returns a Fraction for finite codes, ``float('nan')`` / ``+-inf`` otherwise.
    Negative zero is returned as the float ``-0.0``.
    """
    nbits = fmt.bits
    if not 0 <= code < (1 << nbits):
        raise ValueError(f"{fmt.name}: code {code} is out of range for {nbits} bits")
    if isinstance(fmt, IntFormat):
        if fmt.signed and code >= 1 << (nbits - 1):
            code -= 1 << nbits
        if code < fmt.min_int:
            return float("nan")  # the dropped code of a symmetric format
        return Fraction(code)
    sign_bit = 1 << (nbits - 1) if fmt.signed else 0
    neg = bool(code & sign_bit)
    mag = code & (sign_bit - 1) if fmt.signed else code
    if isinstance(fmt, CodebookFormat):
        v: Fraction | float = Fraction(fmt.magnitudes[mag])
    else:
        if fmt.special == "fnuz" and neg and mag == 0:
            return float("nan")
        if fmt.special == "fn" and mag == (1 << (fmt.ebits + fmt.mbits)) - 1:
            return float("nan")
        e, m = mag >> fmt.mbits, mag & ((1 << fmt.mbits) - 1)
        if fmt.special == "ieee" and e == (1 << fmt.ebits) - 1:
            return float("nan") if m else (float("-inf") if neg else float("inf"))
        if e == 0:
            v = Fraction(m, 1 << fmt.mbits) * Fraction(2) ** (1 - fmt.bias)
            if fmt.subnormal == "flush":
                v = Fraction(0)
        else:
            v = (1 + Fraction(m, 1 << fmt.mbits)) * Fraction(2) ** (e - fmt.bias)
    if v == 0 and neg:
        return -0.0
    return -v if neg else v


#: OCP MX v1.0 scale: 2^(code - 127), code 255 is NaN.
E8M0 = ExpScaleFormat(name="e8m0", ebits=8, bias=127, nan_code=255)

#: IEEE output formats; the emulators round their results into these once.
F16 = FloatFormat(name="float16", ebits=5, mbits=10, special="ieee", overflow="inf")
BF16 = FloatFormat(name="bfloat16", ebits=8, mbits=7, special="ieee", overflow="inf")
F32 = FloatFormat(name="float32", ebits=8, mbits=23, special="ieee", overflow="inf")
F64 = FloatFormat(name="float64", ebits=11, mbits=52, special="ieee", overflow="inf")
