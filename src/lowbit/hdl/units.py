"""Which units a spec gets, with their ports: the table the CLI, the converter,
the simulators and the cost report all read.

Element formats (FloatFormat, IntFormat, CodebookFormat): ``decoder``,
``encoder`` (not for stochastic rounding), ``mul`` (decode and multiply) and, for
float formats with gradual underflow, ``mul_expadd``. Block formats
(BlockFormat, and Formatbook): ``dot`` and ``mac``; a BlockFormat also gets
``dequant`` and, with exact arithmetic and either a power-of-two scale and the
``floor`` rule or a float scale and the ``nearest`` rule, ``quant`` (see
``blockquant``); a Formatbook also gets ``mul`` (the element multiplier: codes and
dialect ids in, sign and exact product in grid^2 units out), ``dequant`` and,
with ``two_stage`` or ``lut`` selection, ``quant`` (see ``blockquant``),
``select_lut`` (exhaustive least squares on the level cells' centres: the ``lut``
selection rule, which is the book's own rule only where it selects by ``lut``; for
a book that selects by ``mse`` it approximates least squares on the exact
magnitudes) and, with two-stage selection, ``select``. A spec that does not fit a generic generator
raises :class:`~lowbit.hdl.tables.Unsupported` with the reason.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import attrs
from myhdl import Signal

from lowbit.formats.spec import BlockFormat, ExpScaleFormat, FloatFormat, Formatbook
from lowbit.hdl import block as blk
from lowbit.hdl import blockquant as bq
from lowbit.hdl import element as el
from lowbit.hdl.tables import ELEMENT_TYPES, Unsupported, element_tables


@attrs.frozen
class Port:
    name: str
    width: int
    out: bool = False
    signed: bool = False


@attrs.frozen
class Unit:
    """One generated unit: module name, ports, and the MyHDL ``@block`` function
    that builds it (called with a signal per port plus ``params``). The block's
    arguments are named as the ports: MyHDL names the converted ports after them."""

    module: str
    kind: str
    ports: tuple[Port, ...]
    block: Callable[..., Any]
    params: dict[str, Any] = attrs.field(factory=dict)
    clocked: bool = False

    def signals(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.ports:
            if p.width == 1 and not p.signed:
                out[p.name] = Signal(bool(0))
            else:
                out[p.name] = blk.sig(p.width, p.signed)
        return out

    def kwargs(self, sigs: dict[str, Any]) -> dict[str, Any]:
        """Arguments of ``block``: call ``unit.block(**unit.kwargs(sigs))`` from inside a @block."""
        return sigs | self.params

    def instance(self) -> Any:
        """A top-level instance with fresh signals (for conversion)."""
        return self.block(**self.kwargs(self.signals()))


def module_name(spec: Any, kind: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", f"{spec.name}_{kind}").strip("_").lower()


def _element_units(fmt: Any) -> dict[str, Unit]:
    t = element_tables(fmt)
    b, m = t.code_bits, t.mag_bits
    units = {
        "decoder": Unit(
            module_name(fmt, "decoder"), "decoder",
            (Port("code", b), Port("sign", 1, True), Port("mag", m, True), Port("nan", 1, True), Port("inf", 1, True)),
            el.decoder, {"t": t},
        ),
    }
    if t.thresholds is not None:
        units["encoder"] = Unit(
            module_name(fmt, "encoder"), "encoder",
            (Port("sign", 1), Port("mag", t.in_bits), Port("code", b, True)),
            el.encoder, {"t": t},
        )
    mul_ports = (Port("a", b), Port("b", b), Port("sign", 1, True), Port("mag", 2 * m, True), Port("nan", 1, True), Port("inf", 1, True))
    for style in el.MUL_STYLES:
        try:
            el.check_mul_style(fmt, style)
        except Unsupported:
            continue
        kind = "mul" if style == "rom" else f"mul_{style}"
        units[kind] = Unit(
            module_name(fmt, kind), kind, mul_ports,
            el.multiplier, {"t": t, "fmt": fmt, "style": style},
        )
    return units


def _block_units(spec: BlockFormat) -> dict[str, Unit]:
    t = element_tables(spec.element)
    n, b = spec.block_size, t.code_bits
    tw = blk.dot_total_bits(spec)
    if isinstance(spec.scale, ExpScaleFormat):
        scale_port = Port("exp", spec.scale.bits + 1, True)
    elif isinstance(spec.scale, FloatFormat):
        scale_port = Port("scale", 2 * element_tables(spec.scale).mag_bits + 1, True, True)
    else:
        raise Unsupported(f"{spec.name}: scale format {type(spec.scale).__name__} has no generator")
    ins = (Port("a", n * b), Port("b", n * b), Port("sa", spec.scale.bits), Port("sb", spec.scale.bits))
    dot = Unit(
        module_name(spec, "dot"), "dot", ins + (Port("total", tw, True, True), scale_port, Port("nan", 1, True)),
        blk.dot_pow2 if scale_port.name == "exp" else blk.dot_block, {"spec": spec},
    )
    units = {"dot": dot, "mac": _mac_unit(spec, ins)}
    try:
        units["quant"] = _quant_unit(spec)
    except Unsupported:
        pass
    units["dequant"] = Unit(
        module_name(spec, "dequant"), "dequant",
        (Port("q", n * b), Port("s", spec.scale.bits), Port("v", n * (bq.dequant_mag_bits(spec) + 1), True), Port("nan", 1, True)),
        bq.block_dequant, {"spec": spec},
    )
    return units


def _quant_unit(spec: BlockFormat) -> Unit:
    """The block quantizer (raises Unsupported with the reason): float32 blocks in;
    a float scale also takes the tensor scale ``ts`` (a positive float32's code
    without its sign bit)."""
    n, b = spec.block_size, element_tables(spec.element).code_bits
    ins = (Port("x", n * bq.IN_BITS),)
    if isinstance(spec.scale, ExpScaleFormat):
        bq.quant_constants(spec)
        fn = bq.block_quant
    else:
        bq.float_quant_constants(spec)
        ins += (Port("ts", bq.IN_BITS - 1),)
        fn = bq.block_quant_float
    return Unit(module_name(spec, "quant"), "quant", ins + (Port("q", n * b, True), Port("s", spec.scale.bits, True)),
                fn, {"spec": spec})


def _mac_unit(spec: Any, ins: tuple[Port, ...]) -> Unit:
    ctrl = (Port("clk", 1), Port("rst", 1), Port("en", 1))
    outs = (Port("acc", blk.MAC_BITS, True, True),)
    if isinstance(spec, BlockFormat):
        outs += (Port("nan", 1, True),)
    if isinstance(spec.scale, ExpScaleFormat):
        outs += (Port("acc_exp", spec.scale.bits + 1, True), Port("ovf", 1, True))
    return Unit(module_name(spec, "mac"), "mac", ctrl + ins + outs, blk.mac, {"spec": spec}, clocked=True)


def _formatbook_units(book: Formatbook) -> dict[str, Unit]:
    n, ib, idb = book.block_size, book.index_bits, book.dialect_id_bits
    tw = blk.dot_total_bits(book)
    ins = (Port("a", n * (ib + 1)), Port("b", n * (ib + 1)), Port("ida", idb), Port("idb", idb),
           Port("sa", book.scale.bits), Port("sb", book.scale.bits))
    units = {
        "dot": Unit(
            module_name(book, "dot"), "dot", ins + (Port("total", tw, True, True), Port("exp", book.scale.bits + 1, True)),
            blk.dot_formatbook, {"book": book},
        ),
    }
    units["mac"] = _mac_unit(book, ins)
    units["mul"] = Unit(
        module_name(book, "mul"), "mul",
        (Port("a", ib + 1), Port("b", ib + 1), Port("ida", idb), Port("idb", idb), Port("sign", 1, True),
         Port("mag", 2 * blk.dialect_mag_bits(book), True)),
        blk.mul_formatbook, {"book": book},
    )
    try:
        units["quant"] = _book_quant_unit(book)
    except Unsupported:
        pass
    # nan: a NaN scale code (without one, a NaN block is a NaN mask outside the codes)
    units["dequant"] = Unit(
        module_name(book, "dequant"), "dequant",
        (Port("q", n * (ib + 1)), Port("dialect_id", idb), Port("s", book.scale.bits),
         Port("v", n * (blk.dialect_mag_bits(book) + 1), True), Port("exp", book.scale.bits + 1, True, True))
        + (Port("nan", 1, True),) * (book.scale.nan_code is not None),
        bq.book_dequant, {"book": book},
    )
    units["select_lut"] = Unit(
        module_name(book, "select_lut"), "select_lut",
        (Port("lv", n * blk.level_bits(book)), Port("dialect_id", idb, True)),
        blk.select_lut, {"book": book},
    )
    if book.selection == "two_stage":
        units["select"] = Unit(
            module_name(book, "select"), "select",
            (Port("lv", n * blk.level_bits(book)), Port("dialect_id", idb, True)),
            blk.select_two_stage, {"book": book},
        )
    return units


def _book_quant_unit(book: Formatbook) -> Unit:
    """The formatbook quantizer (raises Unsupported with the reason): float32 blocks in;
    ``nan`` (the block's NaN mask) where the scale format has no NaN code."""
    bq.book_quant_constants(book)
    n, ib = book.block_size, book.index_bits
    nan = (Port("nan", 1, True),) * (book.scale.nan_code is None)
    return Unit(module_name(book, "quant"), "quant",
                (Port("x", n * bq.IN_BITS), Port("q", n * (ib + 1), True), Port("dialect_id", book.dialect_id_bits, True),
                 Port("s", book.scale.bits, True)) + nan,
                bq.book_quant, {"book": book})


def units_for(spec: Any) -> dict[str, Unit]:
    """Every unit the generic generators make for ``spec`` (raises Unsupported)."""
    if isinstance(spec, ELEMENT_TYPES):
        return _element_units(spec)
    if isinstance(spec, BlockFormat):
        return _block_units(spec)
    if isinstance(spec, Formatbook):
        return _formatbook_units(spec)
    raise Unsupported(f"{spec.name}: no HDL generator for {type(spec).__name__}")


def unit_for(spec: Any, kind: str) -> Unit:
    units = units_for(spec)
    if kind == "encoder" and isinstance(spec, ELEMENT_TYPES) and kind not in units:
        raise Unsupported(element_tables(spec).encoder_note)
    if kind == "quant" and isinstance(spec, BlockFormat) and kind not in units:
        _quant_unit(spec)  # raises Unsupported with the reason
    if kind == "quant" and isinstance(spec, Formatbook) and kind not in units:
        _book_quant_unit(spec)  # raises Unsupported with the reason
    if kind not in units:
        raise Unsupported(f"{spec.name} has no {kind!r} unit; it has: {', '.join(units)}")
    return units[kind]

