"""MyHDL block quantizer and block dequantizer units.

Ports carry a block as one flat bus, element i in the bits [i*w + w - 1 : i*w]
of its bus (w the per-element width). N is the block size, B the element code
width, M the element magnitude width (``tables.mag_bits``).

quant (BlockFormat with an E8M0-like power-of-two scale, ``floor`` rule)
    x[N*32] -> q[N*B], s[scale bits]. The input elements are IEEE binary32
    encodings (float32: 8 exponent bits, bias 127, 23 fraction bits, subnormals
    included), the emulator's own input type, so the unit matches
    ``lowbit.quantize`` bit for bit on every float32 block. The scale code is
    the largest exponent field of the block plus ``scale.bias - 127 -
    emax_elem`` (``floor(log2 amax) - emax_elem``, from the float's bits),
    clamped below to the smallest scale code (so an all-zero block gets the
    smallest scale, ``zero_block="min_scale"``). Each element is shifted right
    by the exponent difference into the element encoder's input (units
    2^(lsb_exp - 2), ``tables.GUARD_BITS``) with the shifted-out bits ORed into
    the last bit (a sticky bit, a thermometer of the shift against the
    significand's bits: every rounding decision of the encoder lies on an even
    input, so the sticky bit decides exactly as the full value), then
    rounded by the element encoder (``element.encoder``). A NaN or Inf input
    (``nan_block`` and ``inf_block`` ``"nan"``) gives the NaN scale code and
    element codes 0, as the emulator writes them. Formats for which a shift
    could go left or the scale clamp above could be reached raise
    :class:`~lowbit.hdl.tables.Unsupported`; every registered MX float format
    with the ``floor`` rule and exact arithmetic fits (mxfp4, mxfp6_e2m3,
    mxfp6_e3m2, mxfp8_e4m3; mxfp8_e5m2's element tables are refused).
dequant (BlockFormat)
    q[N*B], s[scale bits] -> v[N*(W+1)], nan. Element i of ``v`` is sign-magnitude:
    bit W the sign of the element's value (-0 kept), bits [W-1:0] its magnitude.
    Power-of-two scale: W = M, the element magnitude in units 2^lsb_exp; the
    value is v * 2^(lsb_exp + s - scale.bias). Float scale (NVFP4's E4M3): W =
    M + Ms (Ms the scale's magnitude width), the exact product of the element
    and the decoded scale in units 2^(lsb_exp + lsb_exp of the scale); the sign
    is the product's; a per-tensor scale is applied outside the unit. nan: the
    scale is NaN or an element is NaN or Inf.
"""

from __future__ import annotations

from typing import Any

from myhdl import ConcatSignal, always_comb, block, intbv

from lowbit.formats.spec import BlockFormat, ExpScaleFormat, FloatFormat
from lowbit.hdl.block import any_set, copy, eq_const, max_tree, sig, slices
from lowbit.hdl.element import decoder, encoder
from lowbit.hdl.tables import GUARD_BITS, Unsupported, element_tables

#: The quantizer's input elements: IEEE binary32.
IN_EBITS, IN_MBITS, IN_BIAS = 8, 23, 127
IN_BITS = 1 + IN_EBITS + IN_MBITS


def quant_constants(spec: BlockFormat) -> dict[str, int]:
    """Constants of the quantizer, or Unsupported with the reason.

    code = clamp(E + d), E the largest exponent field of the block; element shift
    r = code + c - max(e, 1), e the element's exponent field."""
    el = spec.element
    if not isinstance(spec.scale, ExpScaleFormat) or spec.scale_rule != "floor":
        raise Unsupported(f"{spec.name}: the block quantizer takes a power-of-two scale with the 'floor' rule")
    if not isinstance(el, FloatFormat) or el.subnormal != "keep" or el.rounding == "stochastic":
        raise Unsupported(f"{spec.name}: the block quantizer takes float elements with gradual underflow and deterministic rounding")
    if spec.arithmetic != "exact":
        raise Unsupported(f"{spec.name}: the block quantizer follows the exact arithmetic, not {spec.arithmetic!r}")
    if spec.nan_block != "nan" or spec.inf_block != "nan" or spec.scale.nan_code is None or spec.zero_block != "min_scale":
        raise Unsupported(f"{spec.name}: the block quantizer needs NaN blocks for NaN and Inf and a NaN scale code")
    t = element_tables(el)
    d = spec.scale.bias - IN_BIAS - el.emax
    c = IN_BIAS + IN_MBITS - spec.scale.bias + t.lsb_exp - GUARD_BITS
    top_code = spec.scale.max_exp + spec.scale.bias
    if (1 << IN_EBITS) - 2 + d > top_code:
        raise Unsupported(f"{spec.name}: the largest float32 exponent would need the scale clamped above")
    if d + c < 0:
        raise Unsupported(f"{spec.name}: float32 inputs would need a left shift into the encoder")
    # the largest element shifted right by the smallest shift fits the encoder input
    assert ((1 << (IN_MBITS + 1)) - 1) >> (d + c) < 1 << t.in_bits
    return {"d": d, "c": c, "top_code": top_code, "nan_code": spec.scale.nan_code,
            "shift_bits": (top_code + max(c, 0)).bit_length() + 1}


@block
def exp_field(x: Any, e: Any, nan: Any) -> Any:
    """e = the exponent field of a float32 code; nan = the field is all ones."""
    modulus = 1 << IN_EBITS
    top = modulus - 1

    @always_comb
    def split() -> None:
        v = intbv(0)[IN_EBITS:]
        v[:] = (x >> IN_MBITS) % modulus
        e.next = v
        nan.next = v == top

    return split


@block
def floor_scale(emax: Any, nan: Any, s: Any, d: int, nan_code: int, wide: int) -> Any:
    """s = max(emax + d, 0), or the NaN code."""
    dp, dn = max(d, 0), max(-d, 0)

    @always_comb
    def scale() -> None:
        k = intbv(0)[wide:]
        k[:] = emax
        k[:] = k + dp
        if nan:
            s.next = nan_code
        elif k < dn:
            s.next = 0
        else:
            s.next = k - dn

    return scale


@block
def align(x: Any, s: Any, sign: Any, mag: Any, c: int, wide: int) -> Any:
    """sign and magnitude of a float32 code shifted right by s + c - max(e, 1)
    into the encoder's input, the shifted-out bits jammed into the last bit."""
    cp, cn = max(c, 0), max(-c, 0)
    hidden = 1 << IN_MBITS
    mag_bits = len(mag)

    @always_comb
    def shift() -> None:
        v = intbv(0)[IN_BITS:]
        v[:] = x
        e = intbv(0)[IN_EBITS:]
        e[:] = v[IN_BITS - 1 : IN_MBITS]
        m = intbv(0)[IN_MBITS + 1 :]
        ee = intbv(0)[wide:]
        if e == 0:
            m[:] = v[IN_MBITS:]
            ee[:] = 1
        else:
            m[:] = v[IN_MBITS:] + hidden
            ee[:] = e
        r = intbv(0)[wide:]
        r[:] = s
        r[:] = r + cp
        r[:] = r - ee
        r[:] = r - cn
        # only the encoder's input width is kept (the shift is never smaller
        # than quant_constants allows); the sticky bit is a thermometer of r
        # against the significand's bits, not a second shifter
        w = intbv(0)[mag_bits:]
        w[:] = m >> r
        for j in range(IN_MBITS + 1):
            if m[j] and r > j:
                w[0] = 1
        mag.next = w
        sign.next = v[IN_BITS - 1]

    return shift


@block
def zero_if(flag: Any, x: Any, y: Any) -> Any:
    @always_comb
    def gate() -> None:
        if flag:
            y.next = 0
        else:
            y.next = x

    return gate


@block
def block_quant(x: Any, q: Any, s: Any, spec: BlockFormat) -> Any:
    k = quant_constants(spec)
    t = element_tables(spec.element)
    n, b = spec.block_size, t.code_bits
    elems = slices(x, n, IN_BITS)
    exps = [sig(IN_EBITS) for _ in range(n)]
    nans = [sig(1) for _ in range(n)]
    insts: list[Any] = [exp_field(xe, e, f) for xe, e, f in zip(elems, exps, nans)]
    emax, nan = sig(IN_EBITS), sig(1)
    insts += [max_tree(exps, emax), any_set(ConcatSignal(*nans), nan)]
    insts.append(floor_scale(emax, nan, s, k["d"], k["nan_code"], k["shift_bits"]))
    codes = []
    for xe in elems:
        sg, mg, code, out = sig(1), sig(t.in_bits), sig(b), sig(b)
        insts += [align(xe, s, sg, mg, k["c"], k["shift_bits"]), encoder(sg, mg, code, t), zero_if(nan, code, out)]
        codes.append(out)
    insts.append(copy(ConcatSignal(*reversed(codes)), q))
    return insts


def dequant_mag_bits(spec: BlockFormat) -> int:
    """W: the magnitude width of one dequantized element."""
    m = element_tables(spec.element).mag_bits
    if isinstance(spec.scale, ExpScaleFormat):
        return m
    return m + element_tables(spec.scale).mag_bits


@block
def product_sm(sa: Any, ma: Any, sb: Any, mb: Any, sign: Any, mag: Any) -> Any:
    @always_comb
    def mul() -> None:
        mag.next = ma * mb
        sign.next = sa ^ sb

    return mul


@block
def sign_mag(sign: Any, mag: Any, out: Any, wm: int) -> Any:
    """out = mag with sign as bit wm."""

    @always_comb
    def join() -> None:
        p = intbv(0)[wm + 1 :]
        p[wm:] = mag
        p[wm] = sign
        out.next = p

    return join


@block
def block_dequant(q: Any, s: Any, v: Any, nan: Any, spec: BlockFormat) -> Any:
    t = element_tables(spec.element)
    n, b, m, wm = spec.block_size, t.code_bits, t.mag_bits, dequant_mag_bits(spec)
    insts: list[Any] = []
    flags, outs = [], []
    pow2 = isinstance(spec.scale, ExpScaleFormat)
    if pow2:
        if spec.scale.nan_code is not None:
            flags.append(sig(1))
            insts.append(eq_const(s, flags[0], spec.scale.nan_code))
    else:
        st = element_tables(spec.scale)
        ssign, smag = sig(1), sig(st.mag_bits)
        flags += [sig(1), sig(1)]
        insts.append(decoder(s, ssign, smag, flags[0], flags[1], st))
    for code in slices(q, n, b):
        es, em, en, ei, out = sig(1), sig(m), sig(1), sig(1), sig(wm + 1)
        insts.append(decoder(code, es, em, en, ei, t))
        if not pow2:
            ps, pm = sig(1), sig(wm)
            insts.append(product_sm(es, em, ssign, smag, ps, pm))
            es, em = ps, pm
        insts.append(sign_mag(es, em, out, wm))
        flags += [en, ei]
        outs.append(out)
    insts += [copy(ConcatSignal(*reversed(outs)), v), any_set(ConcatSignal(*flags), nan)]
    return insts
