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
    n = len(t.thresholds)
    ge = [Signal(bool(0)) for _ in range(n)]
    comps = [ge_const(mag, ge[k], t.thresholds[k]) for k in range(n)]
    rbits = n.bit_length()
    rank = Signal(intbv(0)[rbits:])
    therm = ConcatSignal(*reversed(ge))

    @always_comb
    def count() -> None:
        r = intbv(0)[rbits:]
        for k in range(n):
            if therm[k]:
                r[:] = k + 1
        rank.next = r

    pad = (1 << rbits) - (n + 1)
    table = t.enc_pos + (t.enc_pos[-1],) * pad + t.enc_neg + (t.enc_neg[-1],) * pad
    sel = ConcatSignal(sign, rank)
    return comps, count, rom(sel, code, table)


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
def float_fields(code: Any, sig: Any, exp: Any, ebits: int, mbits: int) -> Any:
    """sig = significand with the hidden bit, exp = max(E, 1) - 1 (value = sig 2^(exp + lsb_exp))."""
    width = ebits + mbits  # the sign bit is not read
    modulus = 1 << width
    hidden = 1 << mbits

    @always_comb
    def split() -> None:
        c = intbv(0)[width:]
        c[:] = code % modulus
        e = intbv(0)[ebits:]
        e[:] = c[ebits + mbits : mbits]
        if e == 0:
            sig.next = c[mbits:]
            exp.next = 0
        else:
            sig.next = c[mbits:] + hidden
            exp.next = e - 1

    return split


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
