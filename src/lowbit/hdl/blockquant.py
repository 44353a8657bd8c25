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
quant (BlockFormat with a float scale, the ``nearest`` rule and exact arithmetic: nvfp4)
    x[N*32], ts[31] -> q[N*B], s[scale bits]. ``x`` as above; ``ts`` is the
    tensor scale: the code of a positive, finite float32 without its sign bit
    (the emulator's is fl32(amax_tensor / (elem_max * scale_max)), clamped to
    [2^-149, largest float32]; that reduction over the whole tensor stays outside
    the unit, and a format without a tensor scale drives ts with 1.0). Scale:
    S = RNE(amax / (elem_max * ts)) in the scale format, clamped to [scale_min,
    scale_max] (the clamp is folded into the scale encoder's ROM); amax is the
    largest float32 magnitude of the block (a max tree on the magnitude bits,
    which order as the values). The quotient comes from a restoring divider of
    the two significands normalized to 24 bits: f + 1 quotient bits (f =
    mbits + 3 + bitlen(me), elem_max = me * 2^k with me odd; 8 for NVFP4) and a
    sticky bit for the remainder. That is exact: the quotient has at least
    mbits + 3 significant bits, so every rounding decision of the scale's
    encoder lies on a multiple of twice the quotient's LSB, and the quotient
    is then shifted into the encoder's input (units 2^(lsb - 2)) with the
    shifted-out bits ORed into the last bit, or saturated. Elements: RNE of
    x / (S * ts), exact: the element encoder's thresholds T_k become block-wide
    thresholds T_k * Ms * T (Ms and T the significands of S and ts; a T_k that
    is odd is a tie that rounds down, so it is compared as mid_k * Ms * T + 1),
    and each element's significand is shifted by its exponent minus those of S
    and ts (floor, sticky bit, saturating above the largest threshold) and
    compared with them; the ladder's rank and the sign give the code. All-zero
    block: ``zero_block`` ``zero_scale`` gives scale code 0 and elements +-0
    (``min_scale`` the code of scale_min). A NaN or Inf input: the scale's NaN
    code and element codes 0. Not covered (refused with the reason): the
    ``torchao`` arithmetic presets (nvfp4@torchao, nvfp4_2level@torchao: a
    float32 reciprocal and float32 products, not exact quotients), scale
    formats that do not saturate or round stochastically, and Inf blocks that
    saturate instead of turning NaN.
dequant (BlockFormat)
    q[N*B], s[scale bits] -> v[N*(W+1)], nan. Element i of ``v`` is sign-magnitude:
    bit W the sign of the element's value (-0 kept), bits [W-1:0] its magnitude.
    Power-of-two scale: W = M, the element magnitude in units 2^lsb_exp; the
    value is v * 2^(lsb_exp + s - scale.bias). Float scale (NVFP4's E4M3): W =
    M + Ms (Ms the scale's magnitude width), the exact product of the element
    and the decoded scale in units 2^(lsb_exp + lsb_exp of the scale); the sign
    is the product's; a per-tensor scale is applied outside the unit. nan: the
    scale is NaN or an element is NaN or Inf.
dequant (Formatbook)
    q[N*B] (sign bit + index bits), dialect_id, s[scale bits] -> v[N*(G+1)], exp,
    nan (only where the scale format has a NaN code). The block's dialect row is
    expanded once from dialect_id (``block.expand_row``) and every element muxes
    its magnitude out of it (``block.dialect_element``). Element i of ``v`` is
    sign-magnitude: bit G the code's sign bit (-0 kept), bits [G-1:0] the dialect
    value in grid units (G = ``block.dialect_mag_bits``); exp = s - scale.bias
    (signed), so the value is v * grid * 2^exp. nan: s is the scale's NaN code.
    A book whose scale has no NaN code (E5M0, every registered one) marks a NaN
    block by a NaN mask outside the codes (scale code 0), as for ``dot``.
quant (Formatbook with ``two_stage`` or ``lut`` selection)
    x[N*32] -> q[N*B], dialect_id, s[scale bits], nan (only where the scale format
    has no NaN code: the block's NaN mask). ``x`` as for the MX quantizer. Scale:
    the floor rule from the largest exponent field with the book's emax, clamped to
    the scale format below and above (``floor_scale`` on the field clamped first).
    Each element is aligned (``align``) into units of grid / 8: the half-grid
    level, two guard bits and a sticky bit; an element whose exponent field lies
    above the one the top scale code allows saturates (its scaled magnitude is at
    least 2^(emax+1), which counts as 2^(emax+1)). Levels: the book's fixed_point
    rule on that (truncate, or nearest with ties to the even level), saturated
    to the top level, into the book's selection unit (``block.select_two_stage``
    or ``block.select_lut``). Element index: ``lut``, the IDX row of the block's
    dialect (one ROM per level, addressed by the dialect id, expanded once per
    block) muxed by the element's level; ``two_stage``, the block's row of rounding
    thresholds (one ROM per midpoint, expanded once) against the aligned magnitude:
    midpoints of grid values lie on the half-grid, so the guard and sticky bits
    decide the nearest value exactly, ties to the even index. The code is the
    float's sign bit (zeros included) over the index. A NaN or Inf input: scale
    code the NaN code (0 and nan = 1 without one), dialect id 0, element codes 0,
    as the emulator writes them. ``mse`` books (least squares on the exact
    magnitudes: no selection unit) and books that do not turn Inf blocks into
    NaN are refused with the reason.
"""

from __future__ import annotations

import math
from typing import Any

from myhdl import ConcatSignal, always_comb, block, intbv

from fractions import Fraction

from lowbit.formats.spec import BlockFormat, ExpScaleFormat, FloatFormat, Formatbook
from lowbit.hdl.block import (add2, any_set, copy, dialect_element, dialect_mag_bits, eq_const, expand_row, level_bits,
                              max_tree, product_sm, row_signals, select_lut, select_two_stage, sig, slices)
from lowbit.hdl.element import (decoder, encoder, float_fields, ge_const, ladder_code, ladder_rank, rank_bits, rank_table,
                                rom)
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
    wrap = cp + (1 << wide)
    hidden = 1 << IN_MBITS
    mag_bits = len(mag)
    # (cut with a modulus, not a slice: every bit is read, as the lint wants)
    r_mod, w_mod = 1 << wide, 1 << mag_bits

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
        # the shift wraps modulo 2^wide and the shifted value is cut to the
        # encoder's width, as in the converted HDL: settled, the shift is never
        # negative nor smaller than quant_constants allows, but in a delta cycle
        # s may still belong to the previous block, and MyHDL's intbv checks bounds
        rr = intbv(0)[wide + 1 :]
        rr[:] = s
        rr[:] = rr + wrap
        rr[:] = rr - ee
        rr[:] = rr - cn
        r = intbv(0)[wide:]
        r[:] = rr % r_mod
        # the sticky bit is a thermometer of r against the significand's bits,
        # not a second shifter
        ww = intbv(0)[IN_MBITS + 1 :]
        ww[:] = m >> r
        w = intbv(0)[mag_bits:]
        w[:] = ww % w_mod
        for j in range(IN_MBITS + 1):
            if m[j] and r > j:
                w[0] = 1
        mag.next = w
        sign.next = v[IN_BITS - 1]

    return shift


@block
def const_if(flag: Any, x: Any, y: Any, value: int = 0) -> Any:
    """y = value where flag, else x."""

    @always_comb
    def gate() -> None:
        if flag:
            y.next = value
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
        insts += [align(xe, s, sg, mg, k["c"], k["shift_bits"]), encoder(sg, mg, code, t), const_if(nan, code, out)]
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


@block
def unbias(s: Any, exp: Any, bias: int) -> Any:
    """exp = s - bias (signed)."""

    @always_comb
    def sub() -> None:
        exp.next = s - bias

    return sub


@block
def book_dequant(q: Any, dialect_id: Any, s: Any, v: Any, exp: Any, book: Formatbook, nan: Any = None) -> Any:
    n, ib, g = book.block_size, book.index_bits, dialect_mag_bits(book)
    cols, row = row_signals(book)
    insts: list[Any] = [expand_row(dialect_id, cols, book), unbias(s, exp, book.scale.bias)]
    if nan is not None:
        insts.append(eq_const(s, nan, book.scale.nan_code))
    outs = []
    for code in slices(q, n, ib + 1):
        sg, mg, out = sig(1), sig(g), sig(g + 1)
        insts += [dialect_element(code, row, sg, mg, ib, g), sign_mag(sg, mg, out, g)]
        outs.append(out)
    insts.append(copy(ConcatSignal(*reversed(outs)), v))
    return insts


# ---------------------------------------------------------------------------
# formatbook quantizer (two_stage and lut selection)


def book_quant_constants(book: Formatbook) -> dict[str, int]:
    """Constants of the formatbook quantizer, or Unsupported with the reason.

    As ``quant_constants`` with the half-grid as the element LSB: code = clamp(E + d),
    element shift r = code + c - max(e, 1) into units of grid / 8; an element whose
    exponent field is above e_lim (only where the scale can clamp above) saturates."""
    sf = book.scale
    if book.selection not in ("two_stage", "lut"):
        raise Unsupported(f"{book.name}: the formatbook quantizer takes a selection with a hardware unit (two_stage "
                          f"or lut); {book.selection!r} (least squares on the exact magnitudes) has none")
    if book.nan_block != "nan" or book.inf_block != "nan":
        raise Unsupported(f"{book.name}: the formatbook quantizer needs NaN blocks for NaN and Inf")
    half_lsb = int(math.log2(book.grid)) - 1
    d = sf.bias - IN_BIAS - book.element.emax
    c = IN_BIAS + IN_MBITS - sf.bias + half_lsb - GUARD_BITS
    top_code = sf.max_exp + sf.bias
    if d > 0 or sf.min_exp + sf.bias != 0:
        raise Unsupported(f"{book.name}: the quantizer takes a scale format whose codes start at its smallest "
                          "exponent and to which every subnormal block maximum clamps")
    if d + c < 0:
        raise Unsupported(f"{book.name}: float32 inputs would need a left shift into the level")
    w = level_bits(book) + GUARD_BITS
    assert ((1 << (IN_MBITS + 1)) - 1) >> (d + c) < 1 << w
    return {"d": d, "c": c, "e_lim": top_code - d, "nan_code": sf.nan_code or 0, "w": w,
            "shift_bits": (top_code + max(c, 0)).bit_length() + 1}


@block
def min_const(x: Any, y: Any, limit: int) -> Any:
    @always_comb
    def clamp() -> None:
        if x > limit:
            y.next = limit
        else:
            y.next = x

    return clamp


@block
def to_level(w: Any, lv: Any, nearest: bool, top: int) -> Any:
    """lv = w (units of a level / 4, sticky last bit) on the levels: truncated, or
    rounded to nearest with ties to the even level, saturated to ``top``."""
    wb, rnd = len(w), int(nearest)

    @always_comb
    def level() -> None:
        v = intbv(0)[wb:]
        v[:] = w
        L = intbv(0)[wb - 1 :]
        L[:] = v >> GUARD_BITS
        if rnd == 1 and v[1] and (v[0] or v[2]):
            L[:] = L + 1
        if L > top:
            lv.next = top
        else:
            lv.next = L

    return level


@block
def row_pick(sel: Any, row: Any, y: Any, width: int) -> Any:
    """y = entry ``sel`` of ``row`` (entries of ``width`` bits, entry 0 lowest)."""
    modulus = 1 << width

    @always_comb
    def pick() -> None:
        y.next = (row >> (sel * width)) % modulus

    return pick


@block
def book_code(neg: Any, idx: Any, nan: Any, code: Any, index_bits: int) -> Any:
    """code = the sign bit over the index, 0 in a NaN block."""

    @always_comb
    def join() -> None:
        c = intbv(0)[index_bits + 1 :]
        c[index_bits:] = idx
        c[index_bits] = neg
        if nan:
            code.next = 0
        else:
            code.next = c

    return join


def lut_index(book: Formatbook) -> list[tuple[int, ...]]:
    """IDX[level] per dialect: the index of the value nearest to the cell's centre
    ((2L + 1) grid / 4; never a tie)."""
    return [tuple(min(range(len(r)), key=lambda i: abs(2 * L + 1 - 4 * r[i])) for r in book.dialects)
            for L in range(book.levels)]


def round_thresholds(book: Formatbook) -> list[tuple[int, ...]]:
    """T[i] per dialect, in units of grid / 8: an exact scaled magnitude w passes the
    midpoint of values i and i + 1 (4 (v_i + v_(i+1))) when w >= T[i]; on the midpoint
    itself the even index wins, so T[i] is one above it for an even i."""
    return [tuple(4 * (r[i] + r[i + 1]) + (1 - i % 2) for r in book.dialects) for i in range(len(book.dialects[0]) - 1)]


@block
def book_quant(x: Any, q: Any, dialect_id: Any, s: Any, book: Formatbook, nan: Any = None) -> Any:
    k = book_quant_constants(book)
    n, ib, lb, w = book.block_size, book.index_bits, level_bits(book), k["w"]
    pad = (1 << book.dialect_id_bits) - len(book.dialects)
    elems = slices(x, n, IN_BITS)
    exps = [sig(IN_EBITS) for _ in range(n)]
    nans = [sig(1) for _ in range(n)]
    insts: list[Any] = [exp_field(xe, e, f) for xe, e, f in zip(elems, exps, nans)]
    emax, emax_c, block_nan = sig(IN_EBITS), sig(IN_EBITS), sig(1) if nan is None else nan
    insts += [max_tree(exps, emax), any_set(ConcatSignal(*nans), block_nan), min_const(emax, emax_c, k["e_lim"])]
    insts.append(floor_scale(emax_c, block_nan, s, k["d"], k["nan_code"], k["shift_bits"]))
    # the scaled magnitudes in units of grid / 8 (sticky last bit), saturated where the
    # scale clamped above, and their levels
    signs, mags, levels = [], [], []
    for xe, e in zip(elems, exps):
        sg, al, mg, lv = sig(1), sig(w), sig(w), sig(lb)
        insts.append(align(xe, s, sg, al, k["c"], k["shift_bits"]))
        if k["e_lim"] < IN_EXP_MAX + 1:
            over = sig(1)
            insts += [ge_const(e, over, k["e_lim"] + 1), const_if(over, al, mg, (1 << w) - 1)]
        else:
            mg = al
        insts.append(to_level(mg, lv, book.fixed_point_rule == "nearest", book.levels - 1))
        signs.append(sg)
        mags.append(mg)
        levels.append(lv)
    raw_id, lv_bus = sig(max(1, book.dialect_id_bits)), sig(n * lb)
    select = select_lut if book.selection == "lut" else select_two_stage
    insts += [copy(ConcatSignal(*reversed(levels)), lv_bus), select(lv_bus, raw_id, book), const_if(block_nan, raw_id, dialect_id)]
    # element indices: lut reads the block's IDX row at the level; two_stage compares the
    # exact magnitude with the block's row of rounding thresholds (both rows expanded once)
    codes = []
    if book.selection == "lut":
        cols = [sig(ib) for _ in range(book.levels)]
        insts += [rom(raw_id, col, tab + (0,) * pad) for col, tab in zip(cols, lut_index(book))]
        row = ConcatSignal(*reversed(cols))
    else:
        ths = [sig(w) for _ in book.dialects[0][1:]]  # below 4 levels: they fit w bits
        insts += [rom(raw_id, th, tab + (0,) * pad) for th, tab in zip(ths, round_thresholds(book))]
    for sg, mg, lv in zip(signs, mags, levels):
        idx, code = sig(ib), sig(ib + 1)
        if book.selection == "lut":
            insts.append(row_pick(lv, row, idx, ib))
        else:
            ge = [sig(1) for _ in ths]
            insts += [ge_sig(mg, th, g) for th, g in zip(ths, ge)]
            insts.append(ladder_rank(ge, idx))
        insts.append(book_code(sg, idx, block_nan, code, ib))
        codes.append(code)
    insts.append(copy(ConcatSignal(*reversed(codes)), q))
    return insts


# ---------------------------------------------------------------------------
# quantizer of a float-scaled block format (NVFP4)

#: float32 values are sig * 2^(exp + IN_LSB), exp = max(E, 1) - 1 (element.float_fields)
IN_LSB = 1 - IN_BIAS - IN_MBITS
#: the largest exp of a finite float32 (E = 254)
IN_EXP_MAX = (1 << IN_EBITS) - 3


def _odd_part(v: int) -> tuple[int, int]:
    """(m, e) with v = m * 2^e, m odd."""
    e = (v & -v).bit_length() - 1
    return v >> e, e


def float_quant_constants(spec: BlockFormat) -> dict[str, object]:
    """Constants of the float-scale quantizer, or Unsupported with the reason.

    Names (all exponents are ``float_fields`` exps, ts the tensor scale):
    scale: Xq = amax / (elem_max * ts) in units 2^(lsb_s - 2) = Qp * 2^(us - offset_s),
    us = ea + lt + k2 - la - et, Qp = floor(An 2^(f+1) / (me Tn)) | sticky
    (An, Tn: the significands normalized to 24 bits by la, lt left shifts;
    elem_max = me * 2^ee, me odd). Elements: Z = x / (S ts) * Ms * T in units
    2^(lsb_e - 2) = Xs * 2^(ue - offset_e), ue = ex + k - es - et, compared with
    T_k * Ms * T."""
    el, sc = spec.element, spec.scale
    if not isinstance(sc, FloatFormat) or spec.scale_rule != "nearest":
        raise Unsupported(f"{spec.name}: the float-scale quantizer takes a float scale format with the 'nearest' rule")
    if spec.arithmetic != "exact":
        raise Unsupported(f"{spec.name}: the block quantizer follows the exact arithmetic, not {spec.arithmetic!r}")
    if spec.nan_block != "nan" or spec.inf_block != "nan" or not sc.has_nan:
        raise Unsupported(f"{spec.name}: the block quantizer needs NaN blocks for NaN and Inf and a NaN scale code")
    if sc.overflow != "saturate" or sc.rounding == "stochastic":
        raise Unsupported(f"{spec.name}: the block quantizer needs a scale format that rounds deterministically and saturates")
    te, ts_ = element_tables(el), element_tables(sc)
    if te.thresholds is None:
        raise Unsupported(te.encoder_note)
    assert ts_.thresholds is not None and ts_.enc_pos is not None
    units_min = Fraction(spec.scale_min) / Fraction(2) ** ts_.lsb_exp
    units_max = Fraction(spec.scale_max) / Fraction(2) ** ts_.lsb_exp
    if not (0 < units_min <= units_max and units_min.denominator == units_max.denominator == 1
            and int(units_min) in ts_.mag and int(units_max) in ts_.mag):
        raise Unsupported(f"{spec.name}: scale_min and scale_max must be positive values of {sc.name}")
    cmin, cmax = ts_.mag.index(int(units_min)), ts_.mag.index(int(units_max))
    me, ee = _odd_part(max(te.mag))
    ee += te.lsb_exp
    f = sc.mbits + 3 + me.bit_length()
    k = (1 << sc.ebits) - 2 + IN_EXP_MAX
    k2 = IN_MBITS + IN_EXP_MAX
    offset_e = k + ts_.lsb_exp + te.lsb_exp - GUARD_BITS
    offset_s = k2 + ee + ts_.lsb_exp - GUARD_BITS + f + 1
    if offset_e < 0 or offset_s < 0:
        raise Unsupported(f"{spec.name}: the exponent offsets of the quantizer would be negative")
    p_max = ((1 << (sc.mbits + 1)) - 1) * ((1 << (IN_MBITS + 1)) - 1)
    return {
        "me": me, "f": f, "k": k, "k2": k2, "offset_e": offset_e, "offset_s": offset_s,
        "wz": (te.thresholds[-1] * p_max).bit_length(),
        "scale_codes": tuple(min(max(c, cmin), cmax) if ts_.mag[c] else cmin for c in ts_.enc_pos),
        "nan_code": next(c for c in range(1 << sc.bits) if ts_.nan[c] and not ts_.neg[c]),
        "zero_code": 0 if spec.zero_block == "zero_scale" else cmin,
    }


@block
def normalize(a: Any, an: Any, lz: Any) -> Any:
    """an = a shifted left until its top bit is set, lz = the shift (0 for a = 0)."""
    w, lzb = len(a), len(lz)

    @always_comb
    def norm() -> None:
        v = intbv(0)[w:]
        v[:] = a
        n = intbv(0)[lzb:]
        for i in range(w):
            if v[i]:
                n[:] = w - 1 - i
        lz.next = n
        an.next = v << n

    return norm


@block
def divide(an: Any, tn: Any, qp: Any, me: int, f: int) -> Any:
    """qp = floor(an 2^(f+1) / (me tn)) with the remainder's non-zero flag in bit 0
    (restoring division, f + 1 quotient bits; an < 2 me tn)."""
    wr = (2 * me * ((1 << len(tn)) - 1)).bit_length()
    wq = len(qp)

    @always_comb
    def div() -> None:
        d = intbv(0)[wr:]
        d[:] = tn
        d[:] = d * me
        r = intbv(0)[wr:]
        r[:] = an
        quo = intbv(0)[wq:]
        for i in range(f + 1):
            quo[:] = quo << 1
            if r >= d:
                r[:] = r - d
                quo[0] = 1
            r[:] = r << 1
        quo[:] = quo << 1
        if r != 0:
            quo[0] = 1
        qp.next = quo

    return div


@block
def offset_diff(c: Any, d: Any, y: Any, k: int) -> Any:
    """y = k - c - d (k is at least the largest c + d)."""
    wide = len(y)

    @always_comb
    def sub() -> None:
        v = intbv(0)[wide:]
        v[:] = k
        v[:] = v - c
        v[:] = v - d
        y.next = v

    return sub


@block
def scale_shift(val: Any, u: Any, out: Any, offset: int) -> Any:
    """out = floor(val * 2^(u - offset)) with the bits shifted out ORed into bit 0,
    or all ones when the value is 2^len(out) or more (u and offset unsigned)."""
    vb, ob = len(val), len(out)
    wb = vb + ob
    top = offset + ob
    rb = top.bit_length()

    @always_comb
    def shift() -> None:
        v = intbv(0)[vb:]
        v[:] = val
        w = intbv(0)[wb:]
        w[wb:ob] = v
        r = intbv(0)[rb:]
        o = intbv(0)[ob:]
        if u > top:
            if v != 0:
                o[:] = ~o
        else:
            r[:] = top
            r[:] = r - u
            w[:] = w >> r
            if w[wb:ob] != 0:
                o[:] = ~o
            else:
                o[:] = w[ob:]
                # the sticky bit: a thermometer of r against val's bits
                for j in range(vb):
                    if v[j] and r > j + ob:
                        o[0] = 1
        out.next = o

    return shift


@block
def mul2(x: Any, y: Any, p: Any) -> Any:
    @always_comb
    def mul() -> None:
        p.next = x * y

    return mul


@block
def scaled_threshold(p: Any, th: Any, mid: int, off: int) -> Any:
    """th = mid * p + off; 1 when p = 0 (a zero scale: every element rounds to 0)."""

    @always_comb
    def scale() -> None:
        if p == 0:
            th.next = 1
        else:
            th.next = p * mid + off

    return scale


@block
def ge_sig(x: Any, y: Any, ge: Any) -> Any:
    @always_comb
    def cmp() -> None:
        ge.next = x >= y

    return cmp


@block
def pick_scale(nan: Any, zero: Any, raw: Any, s: Any, nan_code: int, zero_code: int) -> Any:
    @always_comb
    def pick() -> None:
        if nan:
            s.next = nan_code
        elif zero:
            s.next = zero_code
        else:
            s.next = raw

    return pick


@block
def block_quant_float(x: Any, ts: Any, q: Any, s: Any, spec: BlockFormat) -> Any:
    k = float_quant_constants(spec)
    te, tsc = element_tables(spec.element), element_tables(spec.scale)
    assert te.thresholds is not None and tsc.thresholds is not None
    sc = spec.scale
    n, b = spec.block_size, te.code_bits
    insts: list[Any] = []
    # the block maximum (float32 magnitudes order as their bits) and its fields
    # (float_fields gets the 31 magnitude bits: cutting a float32's sign bit with
    # a modulus of 2^31 would put an unsized literal in the converted HDL)
    mags = [x(i * IN_BITS + IN_BITS - 1, i * IN_BITS) for i in range(n)]
    amax = sig(IN_BITS - 1)
    insts.append(max_tree(mags, amax))
    a, ea, t, et = sig(IN_MBITS + 1), sig(IN_EBITS), sig(IN_MBITS + 1), sig(IN_EBITS)
    insts += [float_fields(amax, a, ea, IN_EBITS, IN_MBITS), float_fields(ts, t, et, IN_EBITS, IN_MBITS)]
    nan, zero = sig(1), sig(1)
    insts += [eq_const(ea, nan, IN_EXP_MAX + 1), eq_const(amax, zero, 0)]
    # the block scale: the scale format's encoder on amax / (elem_max ts), clamped by its ROM
    lzb = IN_MBITS.bit_length()
    an, la, tn, lt = sig(IN_MBITS + 1), sig(lzb), sig(IN_MBITS + 1), sig(lzb)
    qp = sig(k["f"] + 2)
    ub_s = (IN_EXP_MAX + 1 + IN_MBITS + k["k2"]).bit_length()
    us_a, us_b, us = sig(ub_s), sig(ub_s), sig(ub_s)
    xin = sig(tsc.in_bits)
    insts += [normalize(a, an, la), normalize(t, tn, lt), divide(an, tn, qp, k["me"], k["f"]),
              add2(ea, lt, us_a), offset_diff(la, et, us_b, k["k2"]), add2(us_a, us_b, us),
              scale_shift(qp, us, xin, k["offset_s"])]
    ge = [sig(1) for _ in tsc.thresholds]
    rank, raw, code_s = sig(rank_bits(tsc)), sig(sc.bits), sig(sc.bits)
    insts += [ge_const(xin, g, th) for g, th in zip(ge, tsc.thresholds)]
    insts += [ladder_rank(ge, rank), rom(rank, raw, rank_table(k["scale_codes"], tsc)),
              pick_scale(nan, zero, raw, code_s, k["nan_code"], k["zero_code"]), copy(code_s, s)]
    # the elements: a ladder against the block's thresholds T_k * Ms * T (T_k = 2 mid + off:
    # off = 1 is a tie that rounds down, so the comparison is strict)
    ms, es, p = sig(sc.mbits + 1), sig(sc.ebits), sig(sc.mbits + 1 + IN_MBITS + 1)
    insts += [float_fields(code_s, ms, es, sc.ebits, sc.mbits), mul2(ms, t, p)]
    ths = [sig(k["wz"]) for _ in te.thresholds]
    insts += [scaled_threshold(p, th, tk & ~1, tk & 1) for th, tk in zip(ths, te.thresholds)]
    ub_e = (IN_EXP_MAX + 1 + k["k"]).bit_length()
    base = sig(ub_e)
    insts.append(offset_diff(es, et, base, k["k"]))
    codes = []
    for i, xe in enumerate(mags):
        xs, xf, ue, z = sig(IN_MBITS + 1), sig(IN_EBITS), sig(ub_e), sig(k["wz"])
        insts += [float_fields(xe, xs, xf, IN_EBITS, IN_MBITS), add2(xf, base, ue), scale_shift(xs, ue, z, k["offset_e"])]
        ge = [sig(1) for _ in ths]
        insts += [ge_sig(z, th, g) for th, g in zip(ths, ge)]
        code, out = sig(b), sig(b)
        insts += [ladder_code(ge, x(i * IN_BITS + IN_BITS - 1), code, te), const_if(nan, code, out)]
        codes.append(out)
    insts.append(copy(ConcatSignal(*reversed(codes)), q))
    return insts
