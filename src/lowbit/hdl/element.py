"""MyHDL element units: decoder, encoder and multiplier of one element format.

Every unit is generated from the spec's :class:`~lowbit.hdl.tables.ElementTables`
(no per-format HDL). Widths, with ``B`` the code width, ``M`` the magnitude
width (``tables.mag_bits``) and ``W`` the encoder input width (``tables.in_bits``):

decoder      code[B] -> sign, mag[M] (units 2^lsb_exp), nan, inf. NaN and Inf
             codes give mag 0; sign is the sign of the code's value (NaN: 0).
encoder      sign, mag[W] (units 2^(lsb_exp - 2)) -> code[B], rounded with the
             spec's rounding and overflow policy (a ladder of constant
             comparators, see ``tables``); finite inputs only.
multiplier   a[B], b[B] -> sign, mag[2M] (units 2^(2 lsb_exp)), nan, inf: the
             exact product. NaN when either input is NaN or Inf times zero;
             sign is 0 for NaN. Two ways of writing it: ``rom`` decodes both
             codes to fixed point and multiplies the magnitudes; ``expadd``
             (float formats with gradual underflow) multiplies the significands
             (hidden bit included) and shifts by the sum of the exponent fields.

MyHDL traps avoided on purpose: ports are copied into local variables before
slicing; flags and tables are case ROMs of small tuples; no Python helpers are
called inside generators.
"""

from __future__ import annotations

from typing import Any

from myhdl import ConcatSignal, Signal, always_comb, block, intbv

from lowbit.formats.spec import FloatFormat
from lowbit.hdl.tables import ElementTables, Unsupported

MUL_STYLES = ("rom", "expadd")


@block
def rom(addr: Any, dout: Any, table: tuple[int, ...]) -> Any:
    """dout = table[addr] (a case ROM)."""

    @always_comb
    def read() -> None:
        dout.next = table[int(addr)]

    return read


@block
def decoder(code: Any, sign: Any, mag: Any, nan: Any, inf: Any, t: ElementTables) -> Any:
    return rom(code, sign, t.neg), rom(code, mag, t.mag), rom(code, nan, t.nan), rom(code, inf, t.inf)


@block
def ge_const(x: Any, y: Any, threshold: int) -> Any:
    """y = x >= threshold (unsigned, threshold < 2^30)."""

    @always_comb
    def cmp() -> None:
        y.next = x >= threshold

    return cmp


@block
def encoder(sign: Any, mag: Any, code: Any, t: ElementTables) -> Any:
    if t.thresholds is None:
        raise Unsupported(t.encoder_note)
    ge = [Signal(bool(0)) for _ in t.thresholds]
    comps = [ge_const(mag, g, th) for g, th in zip(ge, t.thresholds)]
    return comps, ladder_code(ge, sign, code, t)


def rank_bits(t: ElementTables) -> int:
    assert t.thresholds is not None
    return len(t.thresholds).bit_length()


def rank_table(codes: tuple[int, ...], t: ElementTables) -> tuple[int, ...]:
    """``codes`` (one per rank) padded to the rank counter's range."""
    return codes + (codes[-1],) * ((1 << rank_bits(t)) - len(codes))


@block
def ladder_rank(ge: list[Any], rank: Any) -> Any:
    """rank = the number of thresholds passed (``ge`` is a thermometer, ascending)."""
    n, rbits = len(ge), len(rank)
    therm = ConcatSignal(*reversed(ge))

    @always_comb
    def count() -> None:
        r = intbv(0)[rbits:]
        for k in range(n):
            if therm[k]:
                r[:] = k + 1
        rank.next = r

    return count


@block
def ladder_code(ge: list[Any], sign: Any, code: Any, t: ElementTables) -> Any:
    """The encoder after its comparators: ``ge[k]`` = the input passed threshold k."""
    rank = Signal(intbv(0)[rank_bits(t):])
    assert t.enc_pos is not None and t.enc_neg is not None
    table = rank_table(t.enc_pos, t) + rank_table(t.enc_neg, t)
    return ladder_rank(ge, rank), rom(ConcatSignal(sign, rank), code, table)


@block
def product_flags(ma: Any, na: Any, ia: Any, mb: Any, nb: Any, ib: Any, nan: Any, inf: Any) -> Any:
    """NaN: a NaN operand or Inf times zero; Inf: an Inf operand otherwise."""

    @always_comb
    def flags() -> None:
        za = ma == 0 and not na and not ia
        zb = mb == 0 and not nb and not ib
        n = na or nb or (ia and zb) or (ib and za)
        nan.next = n
        inf.next = (ia or ib) and not n

    return flags


@block
def product_sign(sa: Any, sb: Any, nan_i: Any, sign: Any, nan: Any) -> Any:
    """The product's sign (0 for NaN) and its NaN flag."""

    @always_comb
    def flags() -> None:
        if nan_i:
            sign.next = 0
        else:
            sign.next = sa ^ sb
        nan.next = nan_i

    return flags


@block
def mul_rom(a: Any, b: Any, sign: Any, mag: Any, nan: Any, inf: Any, t: ElementTables) -> Any:
    m = t.mag_bits
    sa, sb, na, nb, ia, ib = (Signal(bool(0)) for _ in range(6))
    ma, mb = Signal(intbv(0)[m:]), Signal(intbv(0)[m:])
    nan_i = Signal(bool(0))

    @always_comb
    def prod() -> None:
        mag.next = ma * mb

    return (
        decoder(a, sa, ma, na, ia, t),
        decoder(b, sb, mb, nb, ib, t),
        product_flags(ma, na, ia, mb, nb, ib, nan_i, inf),
        product_sign(sa, sb, nan_i, sign, nan),
        prod,
    )


@block
def low_bits(code: Any, low: Any) -> Any:
    """low = code without the bits above len(low) (a sign bit)."""
    modulus = 1 << len(low)

    @always_comb
    def cut() -> None:
        low.next = code % modulus

    return cut


@block
def float_fields(code: Any, sig: Any, exp: Any, ebits: int, mbits: int) -> Any:
    """sig = significand with the hidden bit, exp = max(E, 1) - 1 (value = sig 2^(exp + lsb_exp)).

    ``code`` is ebits + mbits wide, or has a sign bit above them (not read)."""
    width = ebits + mbits
    hidden = 1 << mbits
    insts = []
    if len(code) != width:
        mag = Signal(intbv(0)[width:])
        insts.append(low_bits(code, mag))
    else:
        mag = code

    if mbits == 0:
        # no fraction field (c[0:] is no slice): sig is the hidden bit alone

        @always_comb
        def split_exp_only() -> None:
            c = intbv(0)[width:]
            c[:] = mag
            if c == 0:
                sig.next = 0
                exp.next = 0
            else:
                sig.next = 1
                exp.next = c - 1

        return insts, split_exp_only

    @always_comb
    def split() -> None:
        # a copy, then slices: a port may itself be a slice of a bus
        c = intbv(0)[width:]
        c[:] = mag
        e = intbv(0)[ebits:]
        e[:] = c[ebits + mbits : mbits]
        if e == 0:
            sig.next = c[mbits:]
            exp.next = 0
        else:
            sig.next = c[mbits:] + hidden
            exp.next = e - 1

    return insts, split


@block
def mul_expadd(a: Any, b: Any, sign: Any, mag: Any, nan: Any, inf: Any, t: ElementTables, fmt: FloatFormat) -> Any:
    eb, mb_ = fmt.ebits, fmt.mbits
    siga, sigb = Signal(intbv(0)[mb_ + 1 :]), Signal(intbv(0)[mb_ + 1 :])
    xa, xb = Signal(intbv(0)[eb:]), Signal(intbv(0)[eb:])
    sa, sb, na, nb, ia, ib = (Signal(bool(0)) for _ in range(6))
    nan_i = Signal(bool(0))

    @always_comb
    def prod() -> None:
        # the shift amount gets its own, wide enough variable: Verilog sizes a
        # shift amount by its operands alone, so xa + xb would wrap
        sh = intbv(0)[eb + 1 :]
        sh[:] = xa + xb
        mag.next = (siga * sigb) << sh

    return (
        float_fields(a, siga, xa, eb, mb_),
        float_fields(b, sigb, xb, eb, mb_),
        rom(a, sa, t.neg), rom(b, sb, t.neg),
        rom(a, na, t.nan), rom(b, nb, t.nan),
        rom(a, ia, t.inf), rom(b, ib, t.inf),
        product_flags(siga, na, ia, sigb, nb, ib, nan_i, inf),
        product_sign(sa, sb, nan_i, sign, nan),
        prod,
    )


def check_mul_style(fmt: Any, style: str) -> None:
    if style not in MUL_STYLES:
        raise Unsupported(f"multiplier style {style!r} is not one of {', '.join(MUL_STYLES)}")
    if style == "expadd" and not (isinstance(fmt, FloatFormat) and fmt.subnormal == "keep"):
        raise Unsupported(f"{fmt.name}: the expadd multiplier needs a float format with gradual underflow")


@block
def multiplier(a: Any, b: Any, sign: Any, mag: Any, nan: Any, inf: Any, t: ElementTables, fmt: Any, style: str = "rom") -> Any:
    check_mul_style(fmt, style)
    if style == "expadd":
        return mul_expadd(a, b, sign, mag, nan, inf, t, fmt)
    return mul_rom(a, b, sign, mag, nan, inf, t)
