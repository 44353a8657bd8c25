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
    ``Formatbook``     per-block choice among "dialects" (codebooks on a fixed
                       grid) with a shared power-of-two exponent (BlockDialect)

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
            raise ValueError(f"{name}={value!r} is not a known policy; choose one of {', '.join(map(str, allowed))}")

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
        return self.bits_with_scale(self.scale.bits)

    def bits_with_scale(self, scale_bits: int) -> float:
        """Bits per element if each block scale took ``scale_bits`` bits (to compare
        accountings: the BlockDialect paper charges a 5-bit exponent, OCP MX 8)."""
        return self.element.bits + scale_bits / self.block_size

    @property
    def rounding(self) -> str:
        return self.element.rounding


Selection = Literal["mse", "two_stage", "lut"]
FixedPoint = Literal["nearest", "truncate"]
PairTie = Literal["lower_id", "higher_id"]
DialectRounding = Literal["nearest_even"]
DialectInfBlock = Literal["nan", "saturate", "inf_amax"]


def _dialect_table(rows: object) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in row) for row in rows)  # type: ignore[attr-defined]


@frozen(kw_only=True)
class Formatbook:
    """Blocks choose their own codebook ("dialect") from ``dialects`` (BlockDialect).

    Source: BlockDialect (Jang and Tambe, arXiv 2501.01144, no public code).
    "Reported" parts come from descriptions of the paper (the DialectFP4 table,
    the 5-bit exponent, the two-stage rule and its example); "decided" parts are
    this project's choice where the sources are silent. Numerics:

    dialects
        each a tuple of ``2^index_bits`` strictly ascending integers, the first 0:
        magnitudes in units of ``grid`` (DialectFP4: half-units 0..15). An element
        is a sign bit plus the index into its block's dialect; ``dialect_id_bits``
        = ceil(log2(number of dialects)) per block.
    shared exponent
        k = floor(log2(amax)) - emax, from the float's bits, clamped to the scale
        format's exponent range; emax = floor(log2(largest grid value)) (2 for the
        half-unit grid: scaled magnitudes |x| / 2^k lie in [0, 8), the block
        maximum in [4, 8)). Scaled magnitudes above 2^(emax+1) (only when k was
        clamped, or an Inf under ``inf_block="saturate"``) count as 2^(emax+1).
    selection
        ``mse``: the dialect with the least sum of squared errors of the exact
        scaled magnitudes, ties to the lowest id. ``two_stage`` (reported, for
        activations): magnitudes to fixed point on the half-grid (``grid / 2``,
        2^(emax+2)/grid levels: 5 bits for DialectFP4) by ``fixed_point``; the
        largest level truncated to the grid (clamped to the range of pair
        maxima) picks the pair of dialects sharing that maximum; then each
        dialect counts the levels in its beneficial range and the larger count
        wins (``pair_tie`` on equal counts). The beneficial range of a dialect
        of a pair is the set of cells, in the merged value set of the pair,
        of the values only that dialect has; a cell is the half-open interval
        between the midpoints to its neighbours, lower end inclusive. For the
        pair (5.0 vs 4.0, maximum 6.5) that is [4.5, 5.75) and [3.5, 4.5).
        ``lut`` (decided design): a magnitude's level is its cell, floor(m /
        (grid / 2)) saturated to the top level; ERR[level][dialect] is the
        squared distance from the cell's centre (level + 1/2) * grid / 2 to the
        dialect's nearest value and IDX[level][dialect] that value's index. The
        block's dialect is the argmin of the summed ERR (ties to the lowest id):
        exhaustive least squares on the cell centres. Dialect values are
        multiples of the grid, so every midpoint between two of them is a cell
        boundary and no centre is ever a tie: IDX is the nearest value of every
        magnitude in the cell, a magnitude exactly on a midpoint going to the
        larger value (it starts the upper cell).
    fixed_point
        how two_stage and lut put magnitudes on the levels (step grid / 2),
        saturating at the largest level: ``nearest`` (ties to the even level) or
        ``truncate``. ``None`` (default) is the selection's own rule: ``nearest``
        for two_stage (decided), ``truncate`` for lut (required: a rounded level
        can sit exactly on a midpoint of two dialect values).
    rounding
        elements (``mse``, ``two_stage``) round the exact scaled magnitude to
        the nearest value of the block's dialect, ties to the even index
        (decided), saturating at the dialect's maximum.
    nan_block / inf_block / zero_block / padding
        as :class:`BlockFormat`. A NaN block whose scale format has no NaN code
        (the 5-bit exponent) gets scale code 0, a NaN scale value and a NaN mask
        over its elements, so the stored tensor still says NaN.
    """

    name: str
    dialects: tuple[tuple[int, ...], ...] = field(converter=_dialect_table)
    grid: float = 0.5
    block_size: int = 32
    axis: int = -1
    scale: ExpScaleFormat = field(factory=lambda: E5M0)
    selection: str = _policy(Selection, "selection", "mse")
    fixed_point: str | None = field(default=None, validator=_one_of("fixed_point", (*_choices(FixedPoint), None)))
    pair_tie: str = _policy(PairTie, "pair_tie", "lower_id")
    rounding: str = _policy(DialectRounding, "rounding", "nearest_even")
    nan_block: str = _policy(NanBlock, "nan_block", "nan")
    inf_block: str = _policy(DialectInfBlock, "inf_block", "nan")
    zero_block: str = _policy(ZeroBlock, "zero_block", "min_scale")
    padding: str = _policy(Padding, "padding", "zero")
    nibble_order: str = _policy(NibbleOrder, "nibble_order", "low_first")

    def __attrs_post_init__(self) -> None:
        name, d = self.name, self.dialects
        if self.block_size < 1:
            raise ValueError(f"{name}: block_size must be positive, got {self.block_size}")
        if not isinstance(self.scale, ExpScaleFormat):
            raise ValueError(f"{name}: the shared scale must be a power of two (an ExpScaleFormat)")
        if self.zero_block != "min_scale":
            raise ValueError(f"{name}: a power-of-two scale has no zero; zero_block must be 'min_scale'")
        g = Fraction(self.grid)
        if g <= 0 or 1 not in (g.numerator, g.denominator) or (g.numerator * g.denominator) & (g.numerator * g.denominator - 1):
            raise ValueError(f"{name}: grid must be a power of two, got {self.grid}")
        if not 1 <= len(d) <= 256:
            raise ValueError(f"{name}: need 1 to 256 dialects (a block's id is stored in a byte), got {len(d)}")
        n = len(d[0])
        if n < 2 or n & (n - 1) or n > 128:
            raise ValueError(f"{name}: a dialect needs a power-of-two number (2..128) of magnitudes, got {n}")
        for i, row in enumerate(d):
            if len(row) != n:
                raise ValueError(f"{name}: dialect {i} has {len(row)} magnitudes, dialect 0 has {n}")
            if row[0] != 0 or any(b <= a for a, b in zip(row, row[1:])):
                raise ValueError(f"{name}: dialect {i} {row} must start at 0 and strictly increase")
        if max(r[-1] for r in d) > 255:
            raise ValueError(f"{name}: magnitudes must be at most 255 grid units")
        if self.selection == "two_stage":
            self._check_two_stage()
        if self.selection == "lut" and self.fixed_point == "nearest":
            raise ValueError(
                f"{name}: lut selection truncates magnitudes to their level (fixed_point='truncate' or None): "
                "a level rounded to nearest can sit exactly on the midpoint of two dialect values"
            )

    def _check_two_stage(self) -> None:
        name, d = self.name, self.dialects
        if len(d) % 2:
            raise ValueError(f"{name}: two_stage selection needs dialects in pairs, got {len(d)} dialects")
        maxima = []
        for p in range(0, len(d), 2):
            a, b = d[p], d[p + 1]
            if a[-1] != b[-1]:
                raise ValueError(f"{name}: two_stage pairs share a maximum; dialects {p} and {p + 1} end in {a[-1]} and {b[-1]}")
            if a == b:
                raise ValueError(f"{name}: two_stage pair {p}, {p + 1} has two equal dialects")
            maxima.append(a[-1])
        if len(set(maxima)) != len(maxima):
            raise ValueError(f"{name}: two_stage pairs need distinct maxima, got {maxima}")
        top = self.grid_units  # scaled magnitudes are below top * grid
        need = set(range(top // 2, top))
        if not need <= set(maxima):
            raise ValueError(
                f"{name}: two_stage needs a pair for every truncated block maximum {sorted(need)} (grid units); "
                f"pair maxima are {sorted(maxima)}"
            )
        if set(maxima) - need:
            raise ValueError(f"{name}: two_stage pair maxima {sorted(set(maxima) - need)} can never be picked")

    @property
    def fixed_point_rule(self) -> str:
        """The level rule in force: ``fixed_point``, or the selection's own when it is None."""
        if self.fixed_point is not None:
            return self.fixed_point
        return "truncate" if self.selection == "lut" else "nearest"

    @property
    def rounding_rule(self) -> str:
        """How elements round in force: ``rounding`` (mse, two_stage), or ``nearest_up`` for lut,
        whose IDX sends a magnitude exactly on a midpoint to the larger value."""
        return "nearest_up" if self.selection == "lut" else self.rounding

    @property
    def grid_units(self) -> int:
        """2^(emax+1) / grid: the scaled range [0, 2^(emax+1)) in grid units (16 for DialectFP4)."""
        top = max(r[-1] for r in self.dialects) + 1
        return 1 << (top - 1).bit_length()

    @property
    def element(self) -> CodebookFormat:
        """Every grid value below 2^(emax+1) as one signed codebook (the values any dialect can take)."""
        return CodebookFormat(
            name=f"{self.name}_grid",
            magnitudes=tuple(float(u * Fraction(self.grid)) for u in range(self.grid_units)),
        )

    @property
    def code_format(self) -> CodebookFormat:
        """The stored element code: sign bit + index bits (the values depend on the block's dialect)."""
        return CodebookFormat(
            name=f"{self.name}_code",
            magnitudes=tuple(float(u * Fraction(self.grid)) for u in self.dialects[0]),
            nibble_order=self.nibble_order,
        )

    @property
    def emax(self) -> int:
        return self.element.emax

    @property
    def index_bits(self) -> int:
        return len(self.dialects[0]).bit_length() - 1

    @property
    def dialect_id_bits(self) -> int:
        return (len(self.dialects) - 1).bit_length()

    @property
    def levels(self) -> int:
        """Fixed-point levels of two_stage / lut selection (step grid / 2): 32 for DialectFP4."""
        return 2 * self.grid_units

    @property
    def bits(self) -> float:
        """Storage bits per element: code, plus exponent and dialect id spread over the block."""
        return self.bits_with_scale(self.scale.bits)

    def bits_with_scale(self, scale_bits: int) -> float:
        """Bits per element if each shared exponent took ``scale_bits`` bits."""
        return 1 + self.index_bits + (scale_bits + self.dialect_id_bits) / self.block_size

    @property
    def scale_rule(self) -> str:
        return "floor"

    @property
    def tensor_scale(self) -> None:
        return None

    @property
    def arithmetic(self) -> str:
        return "exact"


Format = Union[FloatFormat, IntFormat, CodebookFormat, BlockFormat, Formatbook]
SPEC_TYPES = (FloatFormat, IntFormat, CodebookFormat, BlockFormat, Formatbook)
#: Specs whose elements come in blocks along ``axis`` with per-block scales.
BLOCK_SPECS = (BlockFormat, Formatbook)


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

#: 5-bit exponent with FP16's bias (BlockDialect's shared exponent, reported):
#: 2^(code - 15), codes 0..31, no NaN code.
E5M0 = ExpScaleFormat(name="e5m0", ebits=5, bias=15, nan_code=None)

#: IEEE output formats; the emulators round their results into these once.
F16 = FloatFormat(name="float16", ebits=5, mbits=10, special="ieee", overflow="inf")
BF16 = FloatFormat(name="bfloat16", ebits=8, mbits=7, special="ieee", overflow="inf")
F32 = FloatFormat(name="float32", ebits=8, mbits=23, special="ieee", overflow="inf")
F64 = FloatFormat(name="float64", ebits=11, mbits=52, special="ieee", overflow="inf")
