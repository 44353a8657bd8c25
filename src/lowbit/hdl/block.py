"""MyHDL block units: block dot products, a clocked MAC, the dialect selectors and a
formatbook's element multiplier.

Ports carry a block as one flat bus, element i in bits [i*B + B - 1 : i*B].
With N the block size, M the element magnitude width and TW = 2M + clog2(N) + 1:

dot (BlockFormat)   a[N*B], b[N*B], sa, sb (scale codes) -> total[TW] signed,
                    the exact sum of the N element products in units of
                    2^(2 lsb_exp); nan (a NaN scale, or a product that is NaN or
                    Inf). Power-of-two scales (E8M0): exp = sa + sb, so the dot
                    is total * 2^(2 lsb_exp + exp - 2 bias). Float scales (NVFP4's
                    E4M3): scale (signed) = the product of the two decoded scales
                    (units 2^(2 lsb_exp of E4M3)); a per-tensor scale
                    is applied outside the unit.
dot (Formatbook)    a, b (sign + index codes), ida, idb (dialect ids), sa, sb
                    (shared exponents) -> total signed in units of grid^2, exp =
                    sa + sb. Each block's dialect row is expanded once (one ROM
                    per index position, addressed by the id) and every element
                    muxes its magnitude out of that row. The scale format has no
                    NaN code; NaN blocks are marked outside the unit.
mul (Formatbook)    a, b (sign + index codes), ida, idb -> sign (XOR of the code
                    sign bits), mag[2G] (G the width of the largest dialect
                    value): one element of the dot, grid^2 units.
mac                 the dot unit plus registers, on the rising edge of clk:
                    rst clears; en adds the dot product. Float scales: acc +=
                    total * scale (exact). Power-of-two scales: the accumulator
                    (acc, acc_exp) keeps the smallest exponent seen and shifts the
                    other operand left by the difference; a difference above
                    MAC_SHIFT sets the sticky ovf flag (the result is then not
                    exact). nan (BlockFormat only) is sticky. acc is
                    MAC_BITS wide.
select (two_stage)  lv[N*L] (fixed-point levels on the half-grid) -> dialect_id: the
                    largest level truncated to the grid (clamped to the pair
                    maxima) picks a pair of dialects; each dialect counts the
                    levels inside its beneficial range and the larger count wins
                    (``pair_tie`` on equal counts). Both masks are expanded once
                    per block; each level selects its bit.
select_lut          lv[N*L] (levels truncated to the half-grid) -> dialect_id:
                    exhaustive least squares on the cell centres (the ``lut``
                    selection rule, for any Formatbook; the book's own rule
                    only where it selects by ``lut``): every element reads
                    ERR[level][d] (squared distance of its cell centre to dialect
                    d's nearest value, in (grid/4)^2) for every dialect, the
                    per-dialect sums go through an argmin tree, ties to the
                    lowest id.
"""

from __future__ import annotations

from typing import Any, Sequence

from myhdl import ConcatSignal, Signal, always_comb, always_seq, block, intbv

from lowbit.formats.spec import BlockFormat, ExpScaleFormat, Formatbook
from lowbit.hdl.element import decoder, multiplier, rom
from lowbit.hdl.tables import element_tables

MAC_BITS = 64
MAC_SHIFT = 24


def sig(width: int, signed: bool = False) -> Any:
    if signed:
        return Signal(intbv(0, min=-(1 << (width - 1)), max=1 << (width - 1)))
    return Signal(intbv(0)[width:]) if width > 1 else Signal(bool(0))


def total_bits(mag_bits: int, n: int) -> int:
    return 2 * mag_bits + (n - 1).bit_length() + 1


@block
def add2(x: Any, y: Any, s: Any) -> Any:
    @always_comb
    def add() -> None:
        s.next = x + y

    return add


def tree_wiring(terms: Sequence[Any], out: Any, inner: Any) -> list[tuple[Any, Any, Any]]:
    """(x, y, s) of every two-input node of a balanced tree reducing ``terms``
    onto ``out``; ``inner(x, y)`` makes an inner node's output signal."""
    nodes = []
    level = list(terms)
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            s = out if len(level) == 2 else inner(level[i], level[i + 1])
            nodes.append((level[i], level[i + 1], s))
            nxt.append(s)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return nodes


@block
def adder_tree(terms: Sequence[Any], out: Any, signed: bool) -> list[Any]:
    """Instances summing ``terms`` into ``out`` (a balanced tree of add2)."""
    return [add2(x, y, s) for x, y, s in tree_wiring(terms, out, lambda x, y: sig(max(len(x), len(y)) + 1, signed))]


@block
def signed_term(sign: Any, mag: Any, term: Any) -> Any:
    @always_comb
    def conv() -> None:
        if sign:
            term.next = -mag
        else:
            term.next = mag

    return conv


@block
def any_set(bits: Any, y: Any) -> Any:
    @always_comb
    def reduce() -> None:
        y.next = bits != 0

    return reduce


def slices(bus: Any, n: int, width: int) -> list[Any]:
    return [bus((i + 1) * width, i * width) for i in range(n)]


@block
def copy(x: Any, y: Any) -> Any:
    @always_comb
    def wire() -> None:
        y.next = x

    return wire


@block
def max_tree(terms: Sequence[Any], out: Any) -> list[Any]:
    """Instances putting the largest of ``terms`` (unsigned) on ``out``: a tree of max2."""
    return [max2(x, y, m) for x, y, m in tree_wiring(terms, out, lambda x, y: sig(len(out)))]


@block
def dot_block(a: Any, b: Any, sa: Any, sb: Any, total: Any, scale: Any, nan: Any, spec: BlockFormat) -> Any:
    t = element_tables(spec.element)
    n, bits, m = spec.block_size, spec.element.bits, t.mag_bits
    insts: list[Any] = []
    terms, flags = [], []
    for ea, eb in zip(slices(a, n, bits), slices(b, n, bits)):
        s, mg, fn, fi, term = sig(1), sig(2 * m), sig(1), sig(1), sig(2 * m + 1, True)
        insts += [multiplier(ea, eb, s, mg, fn, fi, t, spec.element), signed_term(s, mg, term)]
        terms.append(term)
        flags += [fn, fi]
    insts.append(adder_tree(terms, total, True))
    if isinstance(spec.scale, ExpScaleFormat):
        insts.append(add2(sa, sb, scale))
        snan = []
        if spec.scale.nan_code is not None:
            snan = [sig(1), sig(1)]
            insts += [eq_const(sa, snan[0], spec.scale.nan_code), eq_const(sb, snan[1], spec.scale.nan_code)]
    else:
        st = element_tables(spec.scale)
        sma, smb = sig(st.mag_bits), sig(st.mag_bits)
        snan = [sig(1), sig(1), sig(1), sig(1)]
        sgn = [sig(1), sig(1)]
        insts += [decoder(sa, sgn[0], sma, snan[0], snan[1], st), decoder(sb, sgn[1], smb, snan[2], snan[3], st)]
        insts.append(mul_terms(sgn[0], sma, sgn[1], smb, scale))
    insts.append(any_set(ConcatSignal(*flags, *snan), nan))
    return insts


@block
def dot_pow2(a: Any, b: Any, sa: Any, sb: Any, total: Any, exp: Any, nan: Any, spec: BlockFormat) -> Any:
    """dot_block of a power-of-two scale: its scale output is the exponent sum, port ``exp``."""
    return dot_block(a, b, sa, sb, total, exp, nan, spec)


@block
def eq_const(x: Any, y: Any, value: int) -> Any:
    @always_comb
    def cmp() -> None:
        y.next = x == value

    return cmp


@block
def dialect_element(code: Any, row: Any, sign: Any, mag: Any, index_bits: int, mag_bits: int) -> Any:
    """sign and magnitude of one element: its index muxes the block's expanded row."""
    width = index_bits + 1
    modulus = 1 << mag_bits

    @always_comb
    def pick() -> None:
        c = intbv(0)[width:]
        c[:] = code
        mag.next = (row >> (c[index_bits:] * mag_bits)) % modulus
        sign.next = c[index_bits]

    return pick


@block
def mul_terms(sa: Any, ma: Any, sb: Any, mb: Any, term: Any) -> Any:
    @always_comb
    def mul() -> None:
        if sa ^ sb:
            term.next = -(ma * mb)
        else:
            term.next = ma * mb

    return mul


def dialect_mag_bits(book: Formatbook) -> int:
    return max(r[-1] for r in book.dialects).bit_length()


@block
def expand_row(dialect_id: Any, cols: Sequence[Any], book: Formatbook) -> Any:
    """One ROM per index position addressed by the dialect id: the block's row."""
    pad = (1 << book.dialect_id_bits) - len(book.dialects)
    return [rom(dialect_id, col, tuple(r[j] for r in book.dialects) + (0,) * pad) for j, col in enumerate(cols)]


def row_signals(book: Formatbook) -> tuple[list[Any], Any]:
    """(cols, row): one signal per index position for ``expand_row`` and the row they make,
    index 0 in the lowest bits."""
    cols = [sig(dialect_mag_bits(book)) for _ in book.dialects[0]]
    return cols, ConcatSignal(*reversed(cols))


@block
def product_sm(sa: Any, ma: Any, sb: Any, mb: Any, sign: Any, mag: Any) -> Any:
    """sign = sa XOR sb, mag = ma * mb."""

    @always_comb
    def mul() -> None:
        sign.next = sa ^ sb
        mag.next = ma * mb

    return mul


@block
def mul_formatbook(a: Any, b: Any, ida: Any, idb: Any, sign: Any, mag: Any, book: Formatbook) -> Any:
    """Element multiplier of a formatbook: one element of ``dot_formatbook`` (each operand's
    row expanded from its dialect id and muxed by its index), its exact product in grid^2
    units and the XOR of the sign bits (a zero keeps its sign, as in the emulator)."""
    ib, g = book.index_bits, dialect_mag_bits(book)
    insts, signs, mags = [], [], []
    for code, dialect_id in ((a, ida), (b, idb)):
        cols, row = row_signals(book)
        s, m = sig(1), sig(g)
        insts += [expand_row(dialect_id, cols, book), dialect_element(code, row, s, m, ib, g)]
        signs.append(s)
        mags.append(m)
    insts.append(product_sm(signs[0], mags[0], signs[1], mags[1], sign, mag))
    return insts


@block
def dot_formatbook(a: Any, b: Any, ida: Any, idb: Any, sa: Any, sb: Any, total: Any, exp: Any, book: Formatbook) -> Any:
    n, ib, g = book.block_size, book.index_bits, dialect_mag_bits(book)
    (cols_a, row_a), (cols_b, row_b) = row_signals(book), row_signals(book)
    insts: list[Any] = [expand_row(ida, cols_a, book), expand_row(idb, cols_b, book)]
    insts.append(add2(sa, sb, exp))
    terms = []
    for ca, cb in zip(slices(a, n, ib + 1), slices(b, n, ib + 1)):
        s_a, s_b, m_a, m_b, term = sig(1), sig(1), sig(g), sig(g), sig(2 * g + 1, True)
        insts += [dialect_element(ca, row_a, s_a, m_a, ib, g), dialect_element(cb, row_b, s_b, m_b, ib, g)]
        insts.append(mul_terms(s_a, m_a, s_b, m_b, term))
        terms.append(term)
    insts.append(adder_tree(terms, total, True))
    return insts


@block
def sticky_nan(clk: Any, rst: Any, en: Any, dnan: Any, nan: Any) -> Any:
    @always_seq(clk.posedge, reset=None)
    def step() -> None:
        if rst:
            nan.next = 0
        elif en and dnan:
            nan.next = 1

    return step


@block
def mac_float_scale(clk: Any, rst: Any, en: Any, total: Any, scale: Any, acc: Any) -> Any:
    @always_seq(clk.posedge, reset=None)
    def step() -> None:
        if rst:
            acc.next = 0
        elif en:
            acc.next = acc + total * scale

    return step


@block
def mac_pow2_scale(clk: Any, rst: Any, en: Any, total: Any, exp: Any, acc: Any, acc_exp: Any, ovf: Any) -> Any:
    started = Signal(bool(0))
    lo, hi = acc.min, acc.max

    @always_seq(clk.posedge, reset=None)
    def step() -> None:
        # the dot is widened to the accumulator before it is shifted (VHDL's
        # shift_left keeps its operand's width)
        t = intbv(0, min=lo, max=hi)
        t[:] = total
        if rst:
            acc.next = 0
            acc_exp.next = 0
            started.next = 0
            ovf.next = 0
        elif en:
            if not started:
                acc.next = t
                acc_exp.next = exp
                started.next = 1
            elif exp >= acc_exp:
                if exp - acc_exp > MAC_SHIFT:
                    ovf.next = 1
                else:
                    acc.next = acc + (t << (exp - acc_exp))
            else:
                if acc_exp - exp > MAC_SHIFT:
                    ovf.next = 1
                else:
                    acc.next = (acc << (acc_exp - exp)) + t
                    acc_exp.next = exp

    return step


@block
def mac(clk: Any, rst: Any, en: Any, a: Any, b: Any, sa: Any, sb: Any, acc: Any, spec: Any, nan: Any = None,
        acc_exp: Any = None, ovf: Any = None, ida: Any = None, idb: Any = None) -> Any:
    """Clocked MAC around the dot unit; acc_exp and ovf exist for power-of-two
    scales, nan for BlockFormat (a Formatbook's NaN blocks are marked outside)."""
    total = sig(dot_total_bits(spec), True)
    if isinstance(spec, Formatbook):
        exp = sig(spec.scale.bits + 1)
        return dot_formatbook(a, b, ida, idb, sa, sb, total, exp, spec), mac_pow2_scale(clk, rst, en, total, exp, acc, acc_exp, ovf)
    dnan = sig(1)
    flag = sticky_nan(clk, rst, en, dnan, nan)
    if isinstance(spec.scale, ExpScaleFormat):
        exp = sig(spec.scale.bits + 1)
        return dot_block(a, b, sa, sb, total, exp, dnan, spec), mac_pow2_scale(clk, rst, en, total, exp, acc, acc_exp, ovf), flag
    scale = sig(2 * element_tables(spec.scale).mag_bits + 1, True)
    return dot_block(a, b, sa, sb, total, scale, dnan, spec), mac_float_scale(clk, rst, en, total, scale, acc), flag


def dot_total_bits(spec: Any) -> int:
    if isinstance(spec, Formatbook):
        return total_bits(dialect_mag_bits(spec), spec.block_size)
    return total_bits(element_tables(spec.element).mag_bits, spec.block_size)


# ---------------------------------------------------------------------------
# two-stage selection


def level_bits(book: Formatbook) -> int:
    return (book.levels - 1).bit_length()


def two_stage_tables(book: Formatbook) -> tuple[tuple[int, ...], list[tuple[int, ...]], list[tuple[int, ...]]]:
    """PAIR[t] (t = largest level truncated to the grid), and per level L the
    beneficial-range bit of the first / second dialect of each pair."""
    pairs = [(book.dialects[p], book.dialects[p + 1]) for p in range(0, len(book.dialects), 2)]
    maxima = [d[-1] for d, _ in pairs]
    lo, hi = min(maxima), max(maxima)
    pair_of = tuple(maxima.index(min(max(t, lo), hi)) for t in range(book.grid_units))
    masks = []
    for da, db in pairs:
        merged = sorted(set(da) | set(db))
        cells = {}
        for i, v in enumerate(merged):
            low = merged[i - 1] + v if i else -1  # in half grid units, i.e. levels
            high = v + merged[i + 1] if i + 1 < len(merged) else book.levels
            cells[v] = range(max(low, 0), high)
        only_a = {L for v in set(da) - set(db) for L in cells[v]}
        only_b = {L for v in set(db) - set(da) for L in cells[v]}
        masks.append((only_a, only_b))
    pad = (1 << (len(pairs) - 1).bit_length()) - len(pairs)
    ben_a = [tuple(int(L in ma) for ma, _ in masks) + (0,) * pad for L in range(book.levels)]
    ben_b = [tuple(int(L in mb) for _, mb in masks) + (0,) * pad for L in range(book.levels)]
    return pair_of, ben_a, ben_b


@block
def max2(x: Any, y: Any, m: Any) -> Any:
    @always_comb
    def pick() -> None:
        if x > y:
            m.next = x
        else:
            m.next = y

    return pick


@block
def top_grid(mx: Any, top: Any) -> Any:
    @always_comb
    def trunc() -> None:
        top.next = mx >> 1

    return trunc


@block
def bit_pick(mask: Any, level: Any, y: Any) -> Any:
    @always_comb
    def pick() -> None:
        y.next = mask[level]

    return pick


@block
def decide(pair: Any, ca: Any, cb: Any, dialect_id: Any, tie: int) -> Any:
    @always_comb
    def decide() -> None:
        if ca > cb:
            dialect_id.next = pair * 2
        elif cb > ca:
            dialect_id.next = pair * 2 + 1
        else:
            dialect_id.next = pair * 2 + tie

    return decide


@block
def select_two_stage(lv: Any, dialect_id: Any, book: Formatbook) -> Any:
    n, lb = book.block_size, level_bits(book)
    pair_of, ben_a, ben_b = two_stage_tables(book)
    levels = slices(lv, n, lb)
    insts: list[Any] = []
    # stage 1: the block maximum picks the pair
    mx, top = sig(lb), sig(lb - 1)
    insts.append(max_tree(levels, mx))
    pbits = max(1, (len(book.dialects) // 2 - 1).bit_length())
    pair = Signal(intbv(0)[pbits:])
    insts += [top_grid(mx, top), rom(top, pair, pair_of)]
    # stage 2: the pair's beneficial-range masks, expanded once, then one bit per level
    counts = []
    for table in (ben_a, ben_b):
        bits = [sig(1) for _ in range(book.levels)]
        insts += [rom(pair, bits[L], table[L]) for L in range(book.levels)]
        mask = ConcatSignal(*reversed(bits))
        picks = [Signal(intbv(0)[1:]) for _ in range(n)]
        insts += [bit_pick(mask, lvl, p) for lvl, p in zip(levels, picks)]
        count = Signal(intbv(0)[n.bit_length():])
        insts.append(adder_tree(picks, count, False))
        counts.append(count)
    insts.append(decide(pair, counts[0], counts[1], dialect_id, int(book.pair_tie == "higher_id")))
    return insts



# ---------------------------------------------------------------------------
# exhaustive least-squares selection (the ``lut`` rule)


def lut_errors(book: Formatbook) -> list[tuple[int, ...]]:
    """ERR[level] per dialect: the centre of cell L is (2L + 1) grid/4 and a
    dialect value v is 4v grid/4, so the squared error is an integer in (grid/4)^2."""
    return [tuple(min((2 * L + 1 - 4 * v) ** 2 for v in d) for d in book.dialects) for L in range(book.levels)]


@block
def keep_min(sx: Any, ix: Any, sy: Any, iy: Any, s: Any, i: Any) -> Any:
    """(s, i) = the (sum, id) pair with the smaller sum, x (the lower ids) on
    ties; ids are signals or constant ints; s None: only the id is wanted."""
    if s is None:

        @always_comb
        def pick_id() -> None:
            if sy < sx:
                i.next = iy
            else:
                i.next = ix

        return pick_id

    @always_comb
    def pick() -> None:
        if sy < sx:
            s.next = sy
            i.next = iy
        else:
            s.next = sx
            i.next = ix

    return pick


@block
def select_lut(lv: Any, dialect_id: Any, book: Formatbook) -> Any:
    n, lb, nd = book.block_size, level_bits(book), len(book.dialects)
    err = lut_errors(book)
    ebits = max(max(row) for row in err).bit_length()
    sbits = ebits + (n - 1).bit_length()
    levels = slices(lv, n, lb)
    insts: list[Any] = []
    sums = []
    for d in range(nd):
        column = tuple(row[d] for row in err)
        terms = [sig(ebits) for _ in range(n)]
        insts += [rom(lvl, term, column) for lvl, term in zip(levels, terms)]
        total = sig(sbits)
        insts.append(adder_tree(terms, total, False))
        sums.append(total)
    # argmin tree; its leaves pair dialects 2k, 2k + 1 with constant ids
    level: list[tuple[Any, Any]] = [(sums[d], d) for d in range(nd)]
    while True:
        last = len(level) <= 2
        nxt = []
        for k in range(0, len(level), 2):
            x, y = level[k], level[min(k + 1, len(level) - 1)]
            s, i = (None, dialect_id) if last else (sig(sbits), sig(max(1, book.dialect_id_bits)))
            insts.append(keep_min(*x, *y, s, i))
            nxt.append((s, i))
        if last:
            return insts
        level = nxt
