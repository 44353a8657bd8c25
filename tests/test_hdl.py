"""HDL generators against the Numba emulator, bit for bit.

Golden values come from ``lowbit.quantize`` / ``lowbit.dequantize`` with
``backend="numba"``. Every unit runs three ways on the same vectors: MyHDL's
simulator, the converted Verilog under Icarus and the converted VHDL under GHDL; the Verilog is also linted by
Verilator. Element units are exhaustive (every code, every code pair, every
encoder input; for 8-bit formats the encoder gets every input within 2 LSBs of a
value or a rounding midpoint); block units take Hypothesis-drawn blocks. Every
unit of every built-in format is simulated or has the same HDL, names aside, as
a unit that is (``test_every_builtin_unit_is_simulated_or_the_same_hdl``). A
missing HDL tool skips, with the reason, only the steps that need it.

Besides the built-in formats the tests cover the example plugin's formats
(``mxfp6_e3m2_sr``: stochastic rounding, so no encoder) and the formats of a
third-party plugin written here, registered through the plugin hook only: a
minifloat, a codebook, MX blocks of each and a small formatbook, whose units
come from the same generic generators.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
import lowbit.registry as registry_module
from lowbit import formats
from lowbit.cli import main
from lowbit.emulate.api import Quantized, pack_codes
from lowbit.formats import E8M0, BlockFormat, CodebookFormat, FloatFormat
from lowbit.formats.spec import ExpScaleFormat, Formatbook
from lowbit.hdl import convert, verify
from lowbit.hdl.block import MAC_BITS, MAC_SHIFT, dialect_mag_bits
from lowbit.hdl.tables import GUARD_BITS, Unsupported, element_tables
from lowbit.hdl.units import unit_for, units_for

# A third-party plugin: format specs and a register_formats hook, no HDL.
FP5_E2M2 = FloatFormat(name="fp5_e2m2", ebits=2, mbits=2, bias=1)  # subnormals kept, saturating, largest 7
CB4_LOG = CodebookFormat(name="cb4_log", magnitudes=(0, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 4))
THIRD_PARTY = (
    FP5_E2M2,
    CB4_LOG,
    BlockFormat(name="mxfp5_e2m2", element=FP5_E2M2, block_size=32, scale=E8M0, scale_rule="floor"),
    BlockFormat(name="mxcb4_log", element=CB4_LOG, block_size=16, scale=E8M0, scale_rule="floor"),
    # four dialects on the half-unit grid, lookup-table selection
    Formatbook(name="quad_dialect", selection="lut",
               dialects=((0, 1, 2, 3, 4, 6, 8, 12), (0, 1, 2, 3, 4, 5, 6, 8), (0, 1, 2, 4, 6, 8, 11, 15), (0, 2, 3, 4, 5, 6, 7, 9))),
)


class ThirdPartyFormats:
    @lowbit.hookimpl
    def register_formats(self, register) -> None:
        for spec in THIRD_PARTY:
            register(spec)


@pytest.fixture(scope="module", autouse=True)
def third_party_plugin():
    """A fresh registry with the third-party plugin added for this module's tests
    (formats.get finds its formats by name); the shared registry comes back afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry_module, "_REGISTRY", None)
        registry_module.registry().add_plugin(ThirdPartyFormats(), "hdl_third_party")
        yield


def spec_at_collection(name: str):
    """A spec by name while tests are collected, before the plugin fixture runs."""
    return next((s for s in THIRD_PARTY if s.name == name), None) or formats.get(name)


def builtin_formats() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The built-in formats (registered by lowbit's own plugins) in registration order:
    those the generators make units for, and those they refuse."""
    table = registry_module.registry().formats
    made, refused = [], []
    for name, spec in table.items.items():
        if table.origin[name] in registry_module.BUILTIN_PLUGINS:
            try:
                units_for(spec)
            except Unsupported:
                refused.append(name)
            else:
                made.append(name)
    return tuple(made), tuple(refused)


BUILTIN, REFUSED = builtin_formats()

# What runs in MyHDL, Icarus and GHDL. Every unit of a built-in format is here or
# has the same Verilog and VHDL as a unit that is (test_every_builtin_unit_is_simulated_or_the_same_hdl).
#: element formats: every unit, exhaustively
ELEMENTS = ("fp4_e2m1", "fp4_e3m0", "fp4_e1m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "int4", "int8",
            "fp6_e3m2_sr", "fp5_e2m2", "cb4_log")
#: fp8_e4m3@ml_dtypes: the one built-in with the `nan` overflow rule, which only its encoder sees
ENCODERS = tuple(n for n in ELEMENTS if n != "fp6_e3m2_sr") + ("fp8_e4m3@ml_dtypes",)
MULTIPLIERS = tuple((n, k) for n in ELEMENTS for k in units_for(spec_at_collection(n)) if k.startswith("mul"))
#: block formats and formatbooks: dot and mac on Hypothesis-drawn blocks
BLOCKS = ("mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "nvfp4", "dialectfp4", "block_dialect_16", "block_dialect_64",
          "semantic_dialect", "semantic_dialect_16", "mxfp6_e3m2_sr", "mxfp5_e2m2", "mxcb4_log", "quad_dialect")
BOOK_MULTIPLIERS = ("dialectfp4", "semantic_dialect", "quad_dialect")
MX_QUANTIZERS = ("mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp5_e2m2")
DEQUANTIZERS = ("mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "nvfp4", "mxfp5_e2m2", "mxcb4_log")
#: every built-in formatbook dequantizer's HDL (dialectfp4_mse and block_dialect_32 have dialectfp4's)
BOOK_DEQUANTIZERS = ("dialectfp4", "semantic_dialect", "semantic_dialect_16", "block_dialect_16", "block_dialect_64")
#: the formatbooks with a quantizer (a selection with a hardware unit: two_stage, lut)
BOOK_QUANTIZERS = ("dialectfp4", "semantic_dialect", "semantic_dialect_16")
SELECTORS = (("dialectfp4", "select"), ("dialectfp4", "select_lut"), ("block_dialect_16", "select_lut"),
             ("block_dialect_64", "select_lut"), ("semantic_dialect", "select_lut"), ("semantic_dialect_16", "select_lut"),
             ("quad_dialect", "select_lut"))
SIMULATED = frozenset(
    [(n, "decoder") for n in ELEMENTS] + list(MULTIPLIERS) + [(n, "encoder") for n in ENCODERS]
    + [(n, "mul") for n in BOOK_MULTIPLIERS] + [(n, k) for n in BLOCKS for k in ("dot", "mac")]
    + [(n, "quant") for n in MX_QUANTIZERS + ("nvfp4",) + BOOK_QUANTIZERS]
    + [(n, "dequant") for n in DEQUANTIZERS + BOOK_DEQUANTIZERS] + list(SELECTORS)
)
#: every format with units: the built-ins, the example plugin's and the third-party ones
HDL_FORMATS = BUILTIN + tuple(n for n in ELEMENTS + BLOCKS if n not in BUILTIN)


@pytest.fixture(scope="session")
def hdl(tmp_path_factory: pytest.TempPathFactory):
    """hdl(format name) -> the folder holding all its units, converted once per
    test run (per format, so xdist workers share the work: their base temps
    share a parent that is this run's alone)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "lowbit_hdl"
    root.mkdir(exist_ok=True)

    def get(name: str) -> Path:
        out = root / name
        with open(root / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / ".done").exists():
                convert.generate([(name, kind) for kind in units_for(formats.get(name))], out)
                (out / ".done").write_text("ok")
        return out

    return get


def skip_reason(tools: tuple[str, ...], step: str) -> str | None:
    missing = verify.missing_tools(tools)
    if missing:
        return (f"{step} skipped: {', '.join(missing)} not on PATH "
                "(`make test` installs the HDL tools with apt-get when run as root)")
    return None


def run_everywhere(unit, vectors, hdl_dir: Path, tmp_path: Path) -> None:
    """MyHDL's simulator (one simulation of all the vectors), then Icarus and GHDL,
    each skipped with the reason when its own tools are missing (after the others ran)."""
    bad = verify.mismatches(unit, vectors, verify.simulate(unit, vectors))
    assert not bad, "MyHDL: " + "\n".join(bad[:5])
    skipped = []
    for tools, step, run in ((verify.ICARUS, "Icarus", verify.run_icarus), (verify.GHDL, "GHDL", verify.run_ghdl)):
        reason = skip_reason(tools, step)
        if reason:
            skipped.append(reason)
            continue
        n, errors, log = run(unit, vectors, hdl_dir, tmp_path / step.lower())
        assert (n, errors) == (len(vectors), 0), f"{step}: " + log[-2000:]
    if skipped:
        pytest.skip("MyHDL passed; " + "; ".join(skipped))


# ---------------------------------------------------------------------------
# golden values from the Numba emulator


def numba_decode(fmt, codes: np.ndarray) -> np.ndarray:
    """float64 value of each code of an element format, by lowbit.dequantize (Numba)."""
    n = len(codes)
    q = Quantized(spec=fmt, shape=(n,), axis=0, dtype="float64", container="numpy", n=n,
                  codes=pack_codes(np.asarray(codes)[None, :], fmt))
    return np.asarray(lowbit.dequantize(q, backend="numba"), dtype=np.float64)


def numba_encode(fmt, values: np.ndarray) -> np.ndarray:
    return lowbit.quantize(np.asarray(values, np.float64)[None, :], fmt, backend="numba").unpacked_codes()[0]


def units_of(v: float, lsb_exp: int) -> int:
    u = Fraction(abs(v)) / Fraction(2) ** lsb_exp
    assert u.denominator == 1, (v, lsb_exp)
    return int(u)


FULL = -1  # a care mask of every bit, whatever the port's width


def product_expectation(p: float, lsb_exp: int) -> dict:
    nan, inf = math.isnan(p), math.isinf(p)
    finite = not (nan or inf)
    return {
        "sign": (int(not nan and math.copysign(1, p) < 0), FULL),
        "mag": (units_of(p, lsb_exp) if finite else 0, FULL if finite else 0),
        "nan": (int(nan), FULL),
        "inf": (int(inf), FULL),
    }


# ---------------------------------------------------------------------------
# element units


@pytest.mark.parametrize("name", ELEMENTS)
def test_decoder_every_code(name, hdl, tmp_path):
    fmt = formats.get(name)
    t = element_tables(fmt)
    codes = np.arange(1 << fmt.bits)
    vals = numba_decode(fmt, codes)
    vectors = [{"code": int(c), **product_expectation(float(v), t.lsb_exp)} for c, v in zip(codes, vals)]
    run_everywhere(unit_for(fmt, "decoder"), vectors, hdl(name), tmp_path)


@pytest.mark.parametrize(("name", "kind"), MULTIPLIERS)
def test_multiplier_every_code_pair(name, kind, hdl, tmp_path):
    fmt = formats.get(name)
    t = element_tables(fmt)
    codes = np.arange(1 << fmt.bits)
    vals = numba_decode(fmt, codes)
    a, b = np.meshgrid(codes, codes, indexing="ij")
    with np.errstate(invalid="ignore"):
        prods = vals[a.ravel()] * vals[b.ravel()]
    vectors = [{"a": int(x), "b": int(y), **product_expectation(float(p), 2 * t.lsb_exp)}
               for x, y, p in zip(a.ravel(), b.ravel(), prods)]
    run_everywhere(unit_for(fmt, kind), vectors, hdl(name), tmp_path)


def numba_dialect_values(book: Formatbook) -> np.ndarray:
    """values[d, code] of a formatbook's element codes under dialect d at scale 1, by
    lowbit.dequantize (Numba) of blocks whose codes and dialect ids are set directly."""
    nd, ncodes, bs = len(book.dialects), 1 << (book.index_bits + 1), book.block_size
    q, _ = quantize_blocks(book, [([1.0] * bs, 0)] * nd)
    codes = np.resize(np.arange(ncodes), (nd, bs))
    q = q.replace(codes=pack_codes(codes, q.element), dialect_ids=np.arange(nd, dtype=np.uint8)[:, None],
                  scale_codes=np.full((nd, 1), book.scale.bias, np.uint8), scales=np.ones((nd, 1)))
    return np.asarray(lowbit.dequantize(q, backend="numba", dtype="float64"))[:, :ncodes]


@pytest.mark.parametrize("name", BOOK_MULTIPLIERS)
def test_formatbook_multiplier_every_code_pair(name, hdl, tmp_path):
    # every code pair; DialectFP4: under every pair of dialects, semantic_dialect (32
    # dialects): every dialect of a with one of b (a permutation), so every (code, dialect)
    # of each operand occurs
    book = formats.get(name)
    vals = numba_dialect_values(book)
    nd, ncodes = vals.shape
    ids = [(i, j) for i in range(nd) for j in range(nd)] if nd <= 16 else [(i, (7 * i + 3) % nd) for i in range(nd)]
    lsb2 = 2 * int(math.log2(book.grid))
    vectors = []
    for ida, idb in ids:
        for ca in range(ncodes):
            for cb in range(ncodes):
                e = product_expectation(float(vals[ida, ca] * vals[idb, cb]), lsb2)
                vectors.append({"a": ca, "b": cb, "ida": ida, "idb": idb, "sign": e["sign"], "mag": e["mag"]})
    run_everywhere(unit_for(book, "mul"), vectors, hdl(name), tmp_path)


def encoder_inputs(fmt, t) -> np.ndarray:
    """Every input magnitude when there are at most 2^13, else every input within
    2 LSBs of a representable value or of a midpoint between neighbours."""
    top = 1 << t.in_bits
    if top <= 1 << 13:
        return np.arange(top)
    grid = sorted({units_of(v, t.lsb_exp - GUARD_BITS) for v in numba_decode(fmt, np.arange(1 << fmt.bits)) if math.isfinite(v)})
    marks = set(grid) | {(x + y) // 2 for x, y in zip(grid, grid[1:])} | {2 * grid[-1] - grid[-2] // 2}
    return np.array(sorted({m + d for m in marks for d in range(-2, 3) if 0 <= m + d < top}))


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_against_numba_quantize(name, hdl, tmp_path):
    fmt = formats.get(name)
    t = element_tables(fmt)
    mags = encoder_inputs(fmt, t)
    unit = Fraction(2) ** (t.lsb_exp - GUARD_BITS)
    vectors = []
    for sign in (0, 1):
        values = np.array([float(-m * unit) if sign else float(m * unit) for m in mags])
        if sign:
            values[mags == 0] = -0.0
        codes = numba_encode(fmt, values)
        vectors += [{"sign": sign, "mag": int(m), "code": (int(c), FULL)} for m, c in zip(mags, codes)]
    run_everywhere(unit_for(fmt, "encoder"), vectors, hdl(name), tmp_path)


def test_a_missing_simulator_skips_only_its_own_run(hdl, tmp_path, monkeypatch):
    """Without ghdl (and yosys, which the simulations do not use) on PATH, MyHDL and
    Icarus still run, and the test is skipped naming ghdl alone."""
    reason = skip_reason(verify.ICARUS, "Icarus")
    if reason:
        pytest.skip(reason)
    which = shutil.which
    monkeypatch.setattr(verify.shutil, "which", lambda tool: None if tool in ("ghdl", "yosys") else which(tool))
    fmt = formats.get("fp4_e2m1")
    vectors = [{"code": int(c), **product_expectation(float(v), element_tables(fmt).lsb_exp)}
               for c, v in enumerate(numba_decode(fmt, np.arange(16)))]
    with pytest.raises(pytest.skip.Exception, match="GHDL skipped: ghdl not on PATH") as skipped:
        run_everywhere(unit_for(fmt, "decoder"), vectors, hdl("fp4_e2m1"), tmp_path)
    assert "Icarus" not in str(skipped.value) and "yosys" not in str(skipped.value)
    assert (tmp_path / "icarus" / "tb.vvp").exists() and not (tmp_path / "ghdl").exists()


def test_stochastic_plugin_format_has_no_encoder_but_a_multiplier():
    units = units_for(formats.get("fp6_e3m2_sr"))
    assert {"decoder", "mul", "mul_expadd"} <= set(units) and "encoder" not in units
    with pytest.raises(Unsupported, match="stochastic"):
        unit_for(formats.get("fp6_e3m2_sr"), "encoder")
    with pytest.raises(Unsupported, match="bits"):
        units_for(formats.get("fp8_e5m2"))


@pytest.mark.parametrize("name", HDL_FORMATS)
def test_verilator_lint_clean(name, hdl):
    reason = skip_reason(verify.VERILATOR, "the lint")
    if reason:
        pytest.skip(reason)
    for unit in units_for(formats.get(name)).values():
        verify.lint_verilator(unit, hdl(name))


def hdl_text(unit, hdl_dir: Path) -> tuple[str, str]:
    """The unit's Verilog and VHDL without the two header lines (they name the format)
    and with the module / entity name replaced: equal for two units exactly when
    their HDL differs in nothing else."""
    texts = []
    for suffix, comment in ((".v", "//"), (".vhd", "--")):
        lines = (hdl_dir / f"{unit.module}{suffix}").read_text().split("\n", 2)
        assert lines[0].startswith(f"{comment} {unit.module}: unit "), lines[0]
        assert lines[1].startswith(f"{comment} Do not edit"), lines[1]
        texts.append(re.sub(rf"\b{unit.module}\b", "UNIT", lines[2]))
    return texts[0], texts[1]


def test_every_builtin_unit_is_simulated_or_the_same_hdl(hdl):
    """Every unit of every built-in format runs in the simulators above (SIMULATED)
    or has, names aside, the same Verilog and VHDL as one that does (the dot of
    mxfp4@torchao is mxfp4's, say), so that unit's simulation covers it. The
    built-ins the generators refuse are the FP8 E5M2 ones (32-bit magnitudes)."""
    assert REFUSED == ("fp8_e5m2", "fp8_e5m2@ml_dtypes", "mxfp8_e5m2")
    classes: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name in BUILTIN:
        for kind, unit in units_for(formats.get(name)).items():
            classes.setdefault(hdl_text(unit, hdl(name)), []).append((name, kind))
    assert all(len({kind for _, kind in members}) == 1 for members in classes.values())  # kinds never share HDL
    uncovered = [members for members in classes.values() if SIMULATED.isdisjoint(members)]
    assert not uncovered, f"neither simulated nor the same HDL as a simulated unit: {uncovered}"


# ---------------------------------------------------------------------------
# block units (Hypothesis-drawn blocks)


def block_strategy(n: int, exps: int = 8):
    """A block: n values in [-6, 6] and a power of two 2^k, |k| <= exps, to scale them by."""
    vals = st.floats(min_value=-6.0, max_value=6.0, width=32, allow_subnormal=False)
    return st.tuples(st.lists(vals, min_size=n, max_size=n), st.integers(-exps, exps))


def quantize_blocks(spec, blocks):
    x = np.array([np.float32(v) * np.float32(2.0**k) for vals, k in blocks for v in vals], np.float32).reshape(len(blocks), -1)
    return lowbit.quantize(x, spec, backend="numba", seed=0), x


def element_values(spec, q) -> np.ndarray:
    """Element values (without scales) of a block-format Quantized, by Numba."""
    codes = q.unpacked_codes()
    return numba_decode(spec.element, codes.ravel()).reshape(codes.shape)


def flat(codes_row: np.ndarray, bits: int) -> int:
    return sum(int(c) << (i * bits) for i, c in enumerate(codes_row))


def exact_dot(x: np.ndarray, y: np.ndarray) -> Fraction:
    return sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, y)), Fraction(0))


def block_pairs_vectors(spec, pairs):
    """Per block pair: the dot unit's inputs, the exact dot of the dequantized
    blocks (per-tensor scales divided out) and the unit's expected outputs."""
    qa, _ = quantize_blocks(spec, [p[0] for p in pairs])
    qb, _ = quantize_blocks(spec, [p[1] for p in pairs])
    deq_a = np.asarray(lowbit.dequantize(qa, backend="numba", dtype="float64"))
    deq_b = np.asarray(lowbit.dequantize(qb, backend="numba", dtype="float64"))
    ts = Fraction(qa.tensor_scale or 1) * Fraction(qb.tensor_scale or 1)
    rows = []
    for i in range(len(pairs)):
        nan = bool(np.isnan(deq_a[i]).any() or np.isnan(deq_b[i]).any())
        dot = None if nan else exact_dot(deq_a[i], deq_b[i]) / ts
        rows.append((i, nan, dot))
    return qa, qb, rows


def mx_like_vectors(spec, pairs):
    qa, qb, rows = block_pairs_vectors(spec, pairs)
    t = element_tables(spec.element)
    ea, eb = element_values(spec, qa), element_values(spec, qb)
    bits, vectors, dots = spec.element.bits, [], []
    ca, cb = qa.unpacked_codes(), qb.unpacked_codes()
    for i, nan, dot in rows:
        sa, sb = int(qa.scale_codes[i, 0]), int(qb.scale_codes[i, 0])
        v = {"a": flat(ca[i], bits), "b": flat(cb[i], bits), "sa": sa, "sb": sb, "nan": (int(nan), FULL)}
        elem_dot = None if nan else exact_dot(ea[i], eb[i])
        total = 0 if nan else units_of(float(elem_dot), 2 * t.lsb_exp) * (1 if elem_dot >= 0 else -1)
        v["total"] = (total, 0 if nan else FULL)
        if isinstance(spec.scale, ExpScaleFormat):
            v["exp"] = (sa + sb, FULL)
            scale = Fraction(2) ** (sa + sb - 2 * spec.scale.bias)
        else:
            st_ = element_tables(spec.scale)
            sva, svb = Fraction(float(qa.scales[i, 0])), Fraction(float(qb.scales[i, 0]))
            v["scale"] = (int(sva * svb / Fraction(2) ** (2 * st_.lsb_exp)), 0 if nan else FULL)
            scale = sva * svb
        if not nan:
            # the golden total and scale are consistent with the dequantized blocks
            assert total * Fraction(2) ** (2 * t.lsb_exp) * scale == dot
        vectors.append(v)
        dots.append((nan, dot, total, v.get("exp", v.get("scale"))[0]))
    return vectors, dots


def dialect_vectors(book: Formatbook, pairs):
    qa, qb, rows = block_pairs_vectors(book, pairs)
    ca, cb = qa.unpacked_codes(), qb.unpacked_codes()
    bits = book.index_bits + 1
    grid2 = Fraction(book.grid) ** 2
    vectors, dots = [], []
    for i, nan, dot in rows:
        assert not nan
        sa, sb = int(qa.scale_codes[i, 0]), int(qb.scale_codes[i, 0])
        scale = Fraction(2) ** (sa + sb - 2 * book.scale.bias)
        total = dot / (grid2 * scale)
        assert total.denominator == 1
        vectors.append({"a": flat(ca[i], bits), "b": flat(cb[i], bits), "ida": int(qa.dialect_ids[i, 0]),
                        "idb": int(qb.dialect_ids[i, 0]), "sa": sa, "sb": sb,
                        "total": (int(total), FULL), "exp": (sa + sb, FULL)})
        dots.append((False, dot, int(total), sa + sb))
    return vectors, dots


def vectors_for(spec, pairs):
    return dialect_vectors(spec, pairs) if isinstance(spec, Formatbook) else mx_like_vectors(spec, pairs)


#: block-sized inputs are large by design
BIG = [HealthCheck.large_base_example, HealthCheck.data_too_large, HealthCheck.too_slow]


def block_pairs(n: int, exps: int = 8):
    """The block pairs of one example: 12, or 6 of blocks of 64 (12 of those overflow
    Hypothesis's buffer: every draw is rejected as too large)."""
    k = 12 if n <= 32 else 6
    block = block_strategy(n, exps)
    return st.lists(st.tuples(block, block), min_size=k, max_size=k)


PAIRS = {name: block_pairs(spec_at_collection(name).block_size) for name in BLOCKS}


@pytest.mark.parametrize("name", BLOCKS)
def test_block_dot_unit(name, hdl, tmp_path):
    spec = formats.get(name)

    @settings(max_examples=3, deadline=None, database=None, derandomize=True, suppress_health_check=BIG)
    @given(pairs=PAIRS[name])
    def collect(pairs):
        collected.extend(vectors_for(spec, pairs)[0])

    collected: list[dict] = []
    collect()
    run_everywhere(unit_for(spec, "dot"), collected, hdl(name), tmp_path)


def test_mx_nan_block_flags_nan(hdl, tmp_path):
    spec = formats.get("mxfp4")
    blocks = [([float("nan")] + [1.0] * 31, 0), ([2.0] * 32, 0)]
    vectors, dots = vectors_for(spec, [(blocks[0], blocks[1]), (blocks[1], blocks[1])])
    assert [d[0] for d in dots] == [True, False]
    run_everywhere(unit_for(spec, "dot"), vectors, hdl("mxfp4"), tmp_path / "dot")
    # the MAC's nan is sticky until reset; acc is not compared once a NaN went in
    ins = [{k: v[k] for k in ("a", "b", "sa", "sb")} for v in vectors]
    seen_nan = {"acc": (0, 0), "acc_exp": (0, 0), "ovf": (0, 0), "nan": (1, FULL)}
    clear = {"acc": (0, FULL), "acc_exp": (0, FULL), "ovf": (0, FULL), "nan": (0, FULL)}
    seq = [{**ins[1], "rst": 1, "en": 0, **clear}, {**ins[0], "rst": 0, "en": 1, **seen_nan},
           {**ins[1], "rst": 0, "en": 1, **seen_nan}, {**ins[1], "rst": 1, "en": 0, **clear}]
    run_everywhere(unit_for(spec, "mac"), seq, hdl("mxfp4"), tmp_path / "mac")


@pytest.mark.parametrize("name", BLOCKS)
def test_mac_accumulates_block_dots(name, hdl, tmp_path):
    spec = formats.get(name)
    unit = unit_for(spec, "mac")
    pow2 = isinstance(spec.scale, ExpScaleFormat)

    in_names = {p.name for p in unit.ports if not p.out}
    flags = {p.name: (0, FULL) for p in unit.ports if p.name in ("nan", "ovf")}

    # block exponents within +-6 keep the scale sums of the drawn sequences within the
    # MAC_SHIFT = 24 binades the accumulator aligns without its ovf flag (asserted below)
    @settings(max_examples=2, deadline=None, database=None, derandomize=True, suppress_health_check=BIG)
    @given(pairs=block_pairs(spec.block_size, exps=6))
    def collect(pairs):
        dots_vectors, dots = vectors_for(spec, pairs)
        first = {k: v for k, v in dots_vectors[0].items() if k in in_names}
        seq = [{**first, "rst": 1, "en": 0, "acc": (0, FULL), **flags} | ({"acc_exp": (0, FULL)} if pow2 else {})]
        acc_exp = None
        total = Fraction(0)
        for v, (nan, dot, tot, scale) in zip(dots_vectors, dots):
            ins = {k: x for k, x in v.items() if k in in_names}
            if pow2:
                acc_exp = scale if acc_exp is None else min(acc_exp, scale)
                assert max(scale, acc_exp) - acc_exp <= MAC_SHIFT
                total += tot * Fraction(2) ** scale
                acc = total / Fraction(2) ** acc_exp
                assert acc.denominator == 1
                out = {"acc": (int(acc), FULL), "acc_exp": (acc_exp, FULL), **flags}
            else:
                total += tot * scale
                out = {"acc": (int(total), FULL), **flags}
            assert abs(out["acc"][0]) < 1 << (MAC_BITS - 1)
            seq.append({**ins, "rst": 0, "en": 1, **out})
        collected.extend(seq)

    collected: list[dict] = []
    collect()
    run_everywhere(unit, collected, hdl(name), tmp_path)


@pytest.mark.parametrize("name", ["mxfp4", "dialectfp4"])
def test_mac_flags_an_exponent_gap_above_mac_shift(name, hdl, tmp_path):
    """Power-of-two scales: a dot whose exponent sum lies more than MAC_SHIFT above or
    below the accumulator's sets the sticky ovf flag; a gap of exactly MAC_SHIFT still
    adds exactly; reset clears the flag."""
    spec = formats.get(name)
    unit = unit_for(spec, "mac")
    in_names = {p.name for p in unit.ports if not p.out}
    nan = {"nan": (0, FULL)} if "nan" in {p.name for p in unit.ports} else {}
    vals = [(-1.0) ** j * (j % 7 + 1) * 0.75 for j in range(spec.block_size)]
    h = MAC_SHIFT // 2
    ks = [(0, 0), (h, h), (h + 1, h), (-h - 1, -h), (-h, -h)]  # block exponents of a and b
    vectors, dots = vectors_for(spec, [((vals, ka), (vals[::-1], kb)) for ka, kb in ks])
    e0, t0, t1, t4 = dots[0][3], dots[0][2], dots[1][2], dots[4][2]
    assert [d[3] - e0 for d in dots] == [0, MAC_SHIFT, MAC_SHIFT + 1, -MAC_SHIFT - 1, -MAC_SHIFT] and t0 and t1 and t4
    ins = [{k: v[k] for k in in_names if k in v} for v in vectors]

    def out(acc, acc_exp, ovf):
        exact = ovf == 0  # once a dot was dropped the sum is not exact: acc is not compared
        return {"acc": (acc, FULL if exact else 0), "acc_exp": (acc_exp, FULL if exact else 0), "ovf": (ovf, FULL), **nan}

    reset = {**ins[0], "rst": 1, "en": 0, **out(0, 0, 0)}
    seq = [reset,  # gaps of MAC_SHIFT and MAC_SHIFT + 1 below, then above, each after a reset
           {**ins[0], "rst": 0, "en": 1, **out(t0, e0, 0)},
           {**ins[4], "rst": 0, "en": 1, **out((t0 << MAC_SHIFT) + t4, e0 - MAC_SHIFT, 0)},
           reset,
           {**ins[0], "rst": 0, "en": 1, **out(t0, e0, 0)},
           {**ins[3], "rst": 0, "en": 1, **out(0, 0, 1)},
           reset,
           {**ins[0], "rst": 0, "en": 1, **out(t0, e0, 0)},
           {**ins[1], "rst": 0, "en": 1, **out(t0 + (t1 << MAC_SHIFT), e0, 0)},
           {**ins[2], "rst": 0, "en": 1, **out(0, 0, 1)},
           {**ins[0], "rst": 0, "en": 1, **out(0, 0, 1)},  # sticky
           reset]
    run_everywhere(unit, seq, hdl(name), tmp_path)


# ---------------------------------------------------------------------------
# block quantizer and dequantizer


def float32_bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def padded_block(values, n: int) -> np.ndarray:
    """A float32 block of n elements: the first n ``values``, zeros after them."""
    out = np.zeros(n, np.float32)
    v = np.array(values, np.float32)[:n]
    out[: len(v)] = v
    return out


#: the most values of mx_edge_blocks' sweep (mxfp6_e3m2's whole sweep: 133 blocks)
SWEEP = 4096


def mx_edge_blocks(spec) -> np.ndarray:
    """Hand-picked float32 blocks: every eighth of an element LSB at one scale,
    all zero, all -0, every rounding tie of the element grid, values just off
    the ties, the largest and smallest exponents, subnormals, and NaN / Inf blocks."""
    n = spec.block_size
    vals = numba_decode(spec.element, np.arange(1 << spec.element.bits))
    grid = sorted({abs(float(v)) for v in vals if math.isfinite(v)})
    top = grid[-1]
    ties = [(x + y) / 2 for x, y in zip(grid, grid[1:])] + [top + (top - grid[-2]) / 2]  # the last: the overflow midpoint
    pattern = ties + [np.nextafter(np.float32(t), np.float32(0)) for t in ties] + [np.nextafter(np.float32(t), np.float32(np.inf)) for t in ties]
    biggest = float(np.finfo(np.float32).max)
    tiny = float(np.finfo(np.float32).smallest_subnormal)

    block = functools.partial(padded_block, n=n)

    signs = np.where(np.arange(n) % 2, -1, 1).astype(np.float32)
    # every eighth of an element LSB below 2^(emax + 1), or the lowest SWEEP of them
    # (FP8: those below 1), each block's scale pinned to 1 by its first element: the
    # encoder's guard bits and the sticky bit at every offset
    pin = 2.0 ** spec.element.emax
    fine = np.arange(0, 2 * pin, 2.0 ** (element_tables(spec.element).lsb_exp - GUARD_BITS - 1))[:SWEEP]
    steps = [block([pin, *fine[k : k + n - 1]]) * signs for k in range(0, len(fine), n - 1)]
    blocks = steps + [
        np.zeros(n, np.float32),
        -np.zeros(n, np.float32),
        block([2.0 ** spec.element.emax] + pattern) * signs,  # amax a power of two: the element grid unscaled
        block([2.0 ** spec.element.emax * 1.999] + pattern),
        block([biggest, -biggest / 3, 1.0, tiny]),
        block([biggest / 2 ** 30, 2.0 ** -120, -(2.0 ** -126)]),
        block([tiny, -tiny * 3, tiny * 1000, 2.0 ** -127]),  # subnormal amax: the smallest scale
        block([2.0 ** -127 * 7, 2.0 ** -126, 2.0 ** -125 * 1.5]),
        block([1.0, float("nan"), 2.0]),
        block([float("inf"), 1.0]),
        block([-float("inf")]),
    ]
    return np.stack(blocks)


def quant_vectors(spec, x: np.ndarray) -> list[dict]:
    q = lowbit.quantize(x, spec, backend="numba")
    codes, bits = q.unpacked_codes(), spec.element.bits
    xb = float32_bits(x)
    return [{"x": flat(xb[i], 32), "q": (flat(codes[i], bits), FULL), "s": (int(q.scale_codes[i, 0]), FULL)}
            for i in range(len(x))]


def float32_draws(blocks, draw_sets: int) -> np.ndarray:
    """``draw_sets`` derandomized Hypothesis examples of 12 blocks each from ``blocks``,
    as float32 rows."""

    @settings(max_examples=draw_sets, deadline=None, database=None, derandomize=True, suppress_health_check=BIG)
    @given(st.lists(blocks, min_size=12, max_size=12))
    def collect(bs):
        out.extend(bs)

    out: list = []
    collect()
    return np.array(out, np.float32)


def drawn_blocks(spec, draw_sets: int) -> np.ndarray:
    """Hypothesis-drawn float32 blocks: values of one magnitude range, and raw
    finite float32 bit patterns (every exponent)."""
    n = spec.block_size
    patterns = st.integers(0, (1 << 32) - 1).filter(lambda b: (b >> 23) & 0xFF != 0xFF)
    blocks = st.one_of(block_strategy(n).map(lambda b: [np.float32(v) * np.float32(2.0 ** b[1]) for v in b[0]]),
                       st.lists(patterns, min_size=n, max_size=n).map(lambda b: list(np.array(b, np.uint32).view(np.float32))))
    return float32_draws(blocks, draw_sets)


@pytest.mark.parametrize("name", MX_QUANTIZERS)
def test_mx_block_quantizer(name, hdl, tmp_path):
    spec = formats.get(name)
    x = np.concatenate([mx_edge_blocks(spec), drawn_blocks(spec, 4)])
    vectors = quant_vectors(spec, x)
    scales = {v["s"][0] for v in vectors}
    assert {0, spec.scale.nan_code} <= scales and len(scales) > 20  # the clamp, NaN blocks and many exponents
    run_everywhere(unit_for(spec, "quant"), vectors, hdl(name), tmp_path)


def test_block_quantizer_is_refused_with_the_reason():
    assert "quant" in units_for(formats.get("mxfp4")) and "quant" in units_for(formats.get("nvfp4"))
    with pytest.raises(Unsupported, match="'floor' rule"):
        unit_for(formats.get("mxfp4_ceil"), "quant")
    for name in ("mxfp4@torchao", "nvfp4@torchao", "nvfp4_2level@torchao"):
        with pytest.raises(Unsupported, match="exact arithmetic"):
            unit_for(formats.get(name), "quant")


def float_quant_vectors(spec, tensors) -> list[dict]:
    """Per block of each tensor: its float32 codes and the tensor scale Numba
    derived from the whole tensor (the unit's ``ts``: the code without its sign
    bit), and Numba's element and scale codes."""
    vectors = []
    for x in tensors:
        q = lowbit.quantize(x, spec, backend="numba")
        ts = int(np.array(q.tensor_scale, np.float32).view(np.uint32))
        assert ts >> 31 == 0
        codes, bits, xb = q.unpacked_codes(), spec.element.bits, float32_bits(x)
        vectors += [{"x": flat(xb[i], 32), "ts": ts, "q": (flat(codes[i], bits), FULL), "s": (int(q.scale_codes[i, 0]), FULL)}
                    for i in range(len(x))]
    return vectors


def nvfp4_edge_tensors(spec) -> list[np.ndarray]:
    """Hand-picked tensors (a list of float32 arrays of blocks). With the tensor scale
    pinned to 1 (amax 2688 = 6 * 448): blocks whose amax / 6 is every rounding tie of
    the scale format (subnormal, binade boundaries, 448's overflow midpoint) and
    its float32 neighbours, the rest of the block a fixed spread, so elements above
    a rounded-down scale saturate; blocks with an exact scale and every element
    tie with its neighbours; zero, -0, NaN and +-Inf blocks. Then tiny tensors
    (a subnormal tensor scale, one clamped to 2^-149, and one of exactly 2^-149 whose
    element ties are integers), a huge one (blocks
    far below it flush) and one with a tensor scale that is not a power of two.
    The scale's overflow midpoint (464) is not reachable: amax_b / (6 ts) <= 448 (1 + 2^-24)."""
    n = spec.block_size
    sv = numba_decode(spec.scale, np.arange(1 << spec.scale.bits))
    grid = sorted({float(v) for v in sv if math.isfinite(v) and v >= 0})
    emax = float(spec.element.max_value)
    # (448's overflow midpoint is out of reach: amax_b / (6 ts) is at most about 448)
    ties = [(a + b) / 2 for a, b in zip(grid, grid[1:])]
    spread = np.linspace(-0.95, 0.9, n - 1, dtype=np.float32)
    signs = np.where(np.arange(n) % 2, -1, 1).astype(np.float32)

    block = functools.partial(padded_block, n=n)

    pin = block([grid[-1] * emax])  # amax = 2688: the tensor scale is exactly 1
    rows = [pin]
    for t in ties:
        a = np.float32(t * emax)
        for amax in (a, np.nextafter(a, np.float32(0)), np.nextafter(a, np.float32(np.inf))):
            rows.append(np.concatenate([[amax], amax * spread]).astype(np.float32))
    elem = numba_decode(spec.element, np.arange(1 << spec.element.bits))
    eg = sorted({abs(float(v)) for v in elem if math.isfinite(v)})
    eties = [(a + b) / 2 for a, b in zip(eg, eg[1:])]
    epattern = [x for t in eties for x in (t, np.nextafter(np.float32(t), np.float32(0)), np.nextafter(np.float32(t), np.float32(np.inf)))]
    for s in (grid[1], grid[3], grid[9], 1.0, 1.125, 13.0, grid[-1]):  # exact scales: subnormal ones first
        vals = np.array(epattern, np.float32)
        for k in range(0, len(vals), n - 1):
            rows.append(block([s * emax, *(vals[k : k + n - 1] * np.float32(s))]) * signs)
    rows += [np.zeros(n, np.float32), -np.zeros(n, np.float32), block([1.0, float("nan"), 2.0]), block([float("inf"), 1.0]),
             block([-float("inf")])]
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    huge = float(np.finfo(np.float32).max)
    # tensor scale 2^-149 and a block scale of 448: x / (s ts) = k / 448 for x = k * 2^-149,
    # so every element tie is an integer k, and k +- 1, 2 have their extra bits shifted out
    # below the comparison's LSB (both sticky positions matter)
    ks = [448 * t + d for t in eties for d in (-2, -1, 0, 1, 2)]
    subnormal_ties = [block([grid[-1] * emax * tiny, *(np.array(ks[k : k + n - 1], np.float32) * np.float32(tiny))]) * signs
                      for k in range(0, len(ks), n - 1)]
    return [
        np.stack(rows),
        np.stack(subnormal_ties),
        np.stack([block([tiny * 5, -tiny, tiny * 2]), block([tiny]), block([-tiny * 3, tiny * 4])]),  # ts clamped to 2^-149
        np.stack([block([2.0 ** -126 * 3, 2.0 ** -130]), block([2.0 ** -140 * 7, tiny]), block([2.0 ** -133, 2.0 ** -127])]),
        np.stack([block([huge, -huge / 3, 1.0]), block([2.0 ** 100, 1.0]), block([1.0, -2.0, 3.0])]),
        np.stack([block([1000.0, 3.0, -0.5]), block([0.02 * (k + 1) for k in range(n)]), block([2.0 ** -12, 2.0 ** -20])]),
    ]


def test_nvfp4_block_quantizer(hdl, tmp_path):
    spec = formats.get("nvfp4")
    drawn = drawn_blocks(spec, 4)
    tensors = nvfp4_edge_tensors(spec) + [drawn[k : k + 4] for k in range(0, len(drawn), 4)]
    vectors = float_quant_vectors(spec, tensors)
    assert vectors[0]["ts"] == 0x3F800000  # the first tensor's scale is pinned to 1
    scales = {v["s"][0] for v in vectors}
    subnormal_ts = {v["ts"] for v in vectors if v["ts"] >> 23 == 0}
    # zero and NaN blocks, the clamp to 2^-9, subnormal scales, 448, many others; subnormal tensor scales
    assert {0, 0x7F, 1, 2, 3, 0x7E} <= scales and len(scales) > 100 and len(subnormal_ts) >= 2
    run_everywhere(unit_for(spec, "quant"), vectors, hdl("nvfp4"), tmp_path)


def dequant_vectors(spec, x: np.ndarray) -> list[dict]:
    """The dequant unit's inputs (Numba's codes) and outputs (Numba's dequantized
    values with the block scale, and the per-tensor scale, divided out)."""
    q = lowbit.quantize(x, spec, backend="numba")
    deq = np.asarray(lowbit.dequantize(q, backend="numba", dtype="float64"))
    t = element_tables(spec.element)
    codes, bits = q.unpacked_codes(), spec.element.bits
    pow2 = isinstance(spec.scale, ExpScaleFormat)
    wm = t.mag_bits if pow2 else t.mag_bits + element_tables(spec.scale).mag_bits
    ts = Fraction(q.tensor_scale or 1)
    vectors = []
    for i in range(len(x)):
        sc = int(q.scale_codes[i, 0])
        nan = bool(np.isnan(deq[i]).any())
        if pow2:
            unit = Fraction(2) ** (sc - spec.scale.bias + t.lsb_exp) if not nan else None
        else:
            unit = ts * Fraction(2) ** (t.lsb_exp + element_tables(spec.scale).lsb_exp)
        v = 0
        for j, d in enumerate(deq[i]):
            if not nan:
                v |= (units_of(float(Fraction(float(d)) / unit), 0) | int(math.copysign(1, d) < 0) << wm) << (j * (wm + 1))
        vectors.append({"q": flat(codes[i], bits), "s": sc, "v": (v, 0 if nan else FULL), "nan": (int(nan), FULL)})
    return vectors


@pytest.mark.parametrize("name", DEQUANTIZERS)
def test_block_dequantizer(name, hdl, tmp_path):
    spec = formats.get(name)
    x = np.concatenate([mx_edge_blocks(spec), drawn_blocks(spec, 2)])
    vectors = dequant_vectors(spec, x)
    assert 0 < sum(v["nan"][0] for v in vectors) < len(vectors)
    run_everywhere(unit_for(spec, "dequant"), vectors, hdl(name), tmp_path)


def book_edge_blocks(book: Formatbook) -> np.ndarray:
    """Hand-picked float32 blocks of a formatbook: with the shared exponent pinned to 0
    by a first element 2^emax, every multiple of grid/4 below 2^(emax+1) (every level
    boundary, every midpoint of two dialect values, the points between) and its float32
    neighbours; for each dialect maximum M (grid units), blocks of amax M * grid holding
    the multiples of grid/2 below it (ties and level boundaries under the dialects of
    that maximum) and, for two-stage books, one element on each level tie beside it; all
    zero, all -0; the largest float32 and subnormals (the shared exponent clamped above
    and below); NaN, Inf and -Inf blocks."""
    n, g = book.block_size, Fraction(book.grid)
    signs = np.where(np.arange(n) % 2, -1, 1).astype(np.float32)

    block = functools.partial(padded_block, n=n)

    def chunks(lead, values):
        return [block([lead, *values[k : k + n - 1]]) * signs for k in range(0, len(values), n - 1)]

    top = 2.0 ** (book.emax + 1)
    fine = np.arange(0, top, float(g / 4), dtype=np.float32)
    fine = np.concatenate([fine, np.nextafter(fine, np.float32(0)), np.nextafter(fine, np.float32(top))])
    rows = chunks(2.0 ** book.emax, fine)
    for m in sorted({d[-1] for d in book.dialects}):
        rows += chunks(float(m * g), [float(j * g / 2) for j in range(2 * m)])
        if book.selection == "two_stage":
            # one element on a level tie (ties to the even level) beside the pair's maximum:
            # the level alone decides the beneficial-range counts
            rows += [block([float(m * g), float((j + Fraction(1, 2)) * g / 2)]) for j in range(2 * m)]
    biggest = float(np.finfo(np.float32).max)
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    rows += [np.zeros(n, np.float32), -np.zeros(n, np.float32), block([biggest, -biggest / 3, 1.0, tiny]),
             block([tiny * 5, -tiny, tiny * 2]), block([1.0, float("nan"), 2.0]), block([float("inf"), 1.0]),
             block([-float("inf")])]
    return np.stack(rows)


def book_dequant_vectors(book: Formatbook, x: np.ndarray) -> list[dict]:
    """The dequant unit's inputs (Numba's codes, dialect ids and scale codes) and outputs
    (Numba's dequantized values over grid * 2^k, and k). A NaN block of a scale format
    without a NaN code is marked by the NaN mask outside the unit: it has no vector."""
    q = lowbit.quantize(x, book, backend="numba")
    deq = np.asarray(lowbit.dequantize(q, backend="numba", dtype="float64"))
    codes, bits, g = q.unpacked_codes(), book.index_bits + 1, dialect_mag_bits(book)
    vectors = []
    for i in range(len(x)):
        sc = int(q.scale_codes[i, 0])
        nan = bool(np.isnan(deq[i]).any())
        if nan and book.scale.nan_code is None:
            continue
        k = sc - book.scale.bias
        v = 0
        for j, d in enumerate(deq[i]):
            if not nan:
                u = abs(Fraction(float(d))) / (Fraction(book.grid) * Fraction(2) ** k)
                assert u.denominator == 1
                v |= (int(u) | int(math.copysign(1, d) < 0) << g) << (j * (g + 1))
        vec = {"q": flat(codes[i], bits), "dialect_id": int(q.dialect_ids[i, 0]), "s": sc,
               "v": (v, 0 if nan else FULL), "exp": (k, 0 if nan else FULL)}
        if book.scale.nan_code is not None:
            vec["nan"] = (int(nan), FULL)
        vectors.append(vec)
    return vectors


@pytest.mark.parametrize("name", BOOK_DEQUANTIZERS)
def test_formatbook_dequantizer(name, hdl, tmp_path):
    book = formats.get(name)
    vectors = book_dequant_vectors(book, np.concatenate([book_edge_blocks(book), drawn_blocks(book, 2)]))
    scales = {v["s"] for v in vectors}
    assert len({v["dialect_id"] for v in vectors}) > 2 and {0, (1 << book.scale.bits) - 1} <= scales and len(scales) > 5
    run_everywhere(unit_for(book, "dequant"), vectors, hdl(name), tmp_path)


def book_quant_vectors(book: Formatbook, x: np.ndarray) -> list[dict]:
    """The quant unit's input (float32 codes) and outputs (Numba's element codes, dialect
    id and scale code, and the NaN mask where the scale format has no NaN code)."""
    q = lowbit.quantize(x, book, backend="numba")
    codes, bits, xb = q.unpacked_codes(), book.index_bits + 1, float32_bits(x)
    vectors = []
    for i in range(len(x)):
        vec = {"x": flat(xb[i], 32), "q": (flat(codes[i], bits), FULL), "dialect_id": (int(q.dialect_ids[i, 0]), FULL),
               "s": (int(q.scale_codes[i, 0]), FULL)}
        if book.scale.nan_code is None:
            vec["nan"] = (int(q.nan_mask is not None and q.nan_mask[i].any()), FULL)
        vectors.append(vec)
    return vectors


def tie_blocks(book: Formatbook, draw_sets: int) -> np.ndarray:
    """Hypothesis-drawn float32 blocks of multiples of grid / 4 below 2^(emax+1) (level
    boundaries and midpoints of dialect values) and their float32 neighbours, signed,
    times 2^k: ties and boundaries under whatever dialect the block selects."""
    top = 2.0 ** (book.emax + 1)
    fine = np.arange(0, top, book.grid / 4, dtype=np.float32)
    values = sorted({float(v) for v in np.concatenate([fine, np.nextafter(fine, np.float32(0)), np.nextafter(fine, np.float32(top))])})
    value = st.tuples(st.sampled_from(values), st.booleans()).map(lambda v: -v[0] if v[1] else v[0])
    blocks = st.tuples(st.lists(value, min_size=book.block_size, max_size=book.block_size), st.integers(-8, 8))
    return float32_draws(blocks.map(lambda b: np.array(b[0], np.float32) * np.float32(2.0 ** b[1])), draw_sets)


@pytest.mark.parametrize("name", BOOK_QUANTIZERS)
def test_formatbook_quantizer(name, hdl, tmp_path):
    book = formats.get(name)
    x = np.concatenate([book_edge_blocks(book), tie_blocks(book, 2), drawn_blocks(book, 2)])
    vectors = book_quant_vectors(book, x)
    scales = {v["s"][0] for v in vectors}
    assert {0, (1 << book.scale.bits) - 1} <= scales and len(scales) > 5  # both clamps, many exponents
    assert len({v["dialect_id"][0] for v in vectors}) > 4 and {v["nan"][0] for v in vectors} == {0, 1}
    run_everywhere(unit_for(book, "quant"), vectors, hdl(name), tmp_path)


def test_formatbook_quantizer_is_refused_for_mse_selection():
    for name in ("dialectfp4_mse", "block_dialect_16", "block_dialect_32", "block_dialect_64"):
        assert "quant" not in units_for(formats.get(name))
        with pytest.raises(Unsupported, match="'mse'"):
            unit_for(formats.get(name), "quant")


def test_formatbook_with_a_nan_scale_code(tmp_path):
    """A formatbook whose scale format has a NaN code (DialectFP4's dialects with an E8M0
    scale, not registered): its dequantizer gets a ``nan`` port (NaN blocks flag, the
    others do not), its quantizer writes the NaN code instead of a NaN mask."""
    book = formats.evolve(formats.get("dialectfp4"), name="dialectfp4_e8m0", scale=E8M0)
    assert "nan" not in {p.name for p in unit_for(formats.get("dialectfp4"), "dequant").ports}
    assert "nan" not in {p.name for p in unit_for(book, "quant").ports}
    x = book_edge_blocks(book)
    vectors = book_dequant_vectors(book, x)
    assert {v["nan"][0] for v in vectors} == {0, 1}
    convert.generate([(book, "dequant"), (book, "quant")], tmp_path / "hdl")
    run_everywhere(unit_for(book, "dequant"), vectors, tmp_path / "hdl", tmp_path / "dequant")
    vectors = book_quant_vectors(book, x)
    assert E8M0.nan_code in {v["s"][0] for v in vectors}
    run_everywhere(unit_for(book, "quant"), vectors, tmp_path / "hdl", tmp_path / "quant")


def selector_level(book: Formatbook, x: float, scale: float) -> int:
    """A scaled magnitude as the selector's fixed-point input (spec: ``fixed_point``)."""
    u = Fraction(abs(float(x))) / Fraction(float(scale)) / (Fraction(book.grid) / 2)
    q = math.floor(u) if book.fixed_point_rule == "truncate" else round(u)  # Fraction rounds half to even
    return min(q, book.levels - 1)


@pytest.mark.parametrize(("name", "kind"), SELECTORS)
def test_selector_picks_numba_dialect(name, kind, hdl, tmp_path):
    """``select`` against the book's two-stage selection; ``select_lut`` against
    the formatbook with ``lut`` selection (the book itself where it selects so, as
    semantic_dialect does; else evolved to it: DialectFP4, and the block_dialect
    books, which select by ``mse``)."""
    hw_book = formats.get(name)
    rule = "two_stage" if kind == "select" else "lut"
    book = hw_book if hw_book.selection == rule else formats.evolve(hw_book, name=f"{name}_{rule}", selection=rule)
    unit = unit_for(hw_book, kind)
    lb = (book.levels - 1).bit_length()

    @settings(max_examples=4, deadline=None, database=None, derandomize=True, suppress_health_check=BIG)
    @given(blocks=st.lists(block_strategy(book.block_size), min_size=12, max_size=12))
    def collect(blocks):
        q, x = quantize_blocks(book, blocks)
        for i in range(len(blocks)):
            levels = [selector_level(book, v, q.scales[i, 0]) for v in x[i]]
            collected.append({"lv": sum(L << (j * lb) for j, L in enumerate(levels)),
                              "dialect_id": (int(q.dialect_ids[i, 0]), FULL)})

    collected: list[dict] = []
    collect()
    assert len({v["dialect_id"][0] for v in collected}) > 1  # the vectors exercise more than one dialect
    run_everywhere(unit, collected, hdl(name), tmp_path)


def test_cli_generate_writes_the_converted_units(tmp_path, capsys):
    status = main(["hdl", "generate", "dialectfp4", "--unit", "mul,dot", "--out", str(tmp_path / "cli")])
    assert status == 0, capsys.readouterr().err
    ref = convert.generate([("dialectfp4", "mul"), ("dialectfp4", "dot")], tmp_path / "ref")
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == sorted(p.name for p in ref)
    for f in ref:
        assert (tmp_path / "cli" / f.name).read_bytes() == f.read_bytes(), f.name
    assert main(["hdl", "generate", "dialectfp4", "--unit", "mac_expadd", "--out", str(tmp_path / "x")]) == 2
    assert "no 'mac_expadd' unit" in capsys.readouterr().err
    assert main(["hdl", "generate", "dialectfp4_mse", "--unit", "quant", "--out", str(tmp_path / "x")]) == 2
    assert "'mse'" in capsys.readouterr().err


def test_cli_report_synthesizes_the_listed_units(tmp_path, capsys):
    assert main(["hdl", "report", "--units", "fp4_e2m1"]) == 2
    assert "FORMAT:UNIT" in capsys.readouterr().err
    assert main(["hdl", "report", "--units", "dialectfp4_mse:quant"]) == 2
    capsys.readouterr()
    if verify.missing_tools(["yosys"]):
        pytest.skip("yosys not on PATH (`make test` installs it with apt-get when run as root)")
    png = tmp_path / "area.png"
    assert main(["hdl", "report", "--units", "fp4_e2m1:mul", "dialectfp4:mul", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cols = [c.strip() for c in line.strip("│|").split("│")]
        if len(cols) == 5 and cols[2].isdigit():
            rows[(cols[0], cols[1])] = [int(c) for c in cols[2:]]
    assert set(rows) == {("fp4_e2m1", "mul"), ("dialectfp4", "mul")}, out
    for cells, transistors, nand2 in rows.values():
        assert 0 < cells < transistors and nand2 == round(transistors / 4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generation_is_reproducible(tmp_path):
    req = [("fp4_e2m1", "encoder"), ("dialectfp4", "select")]
    one = convert.generate(req, tmp_path / "one")
    two = convert.generate(req, tmp_path / "two")
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name
    text = one[0].read_text()
    assert str(tmp_path) not in text and "Date" not in text
    # a unit's bytes do not depend on the units converted before it in the same process
    alone = convert.generate(req[1:], tmp_path / "alone")
    assert [p.read_bytes() for p in alone] == [p.read_bytes() for p in one[2:]]


def test_third_party_formats_generate_by_name_and_unregistered_specs_too(tmp_path, capsys):
    origin = registry_module.registry().formats.origin
    assert {origin[spec.name] for spec in THIRD_PARTY} == {"hdl_third_party"}
    assert set(units_for(formats.get("mxfp5_e2m2"))) == {"dot", "mac", "quant", "dequant"}
    with pytest.raises(Unsupported, match="cb4_log"):  # the MX quantizer needs a float element: refused with the reason
        unit_for(formats.get("mxcb4_log"), "quant")
    assert main(["hdl", "generate", "quad_dialect", "--unit", "dot", "--out", str(tmp_path / "cli"), "--lang", "verilog"]) == 0
    v = (tmp_path / "cli" / "quad_dialect_dot.v").read_text()
    assert v.startswith("// quad_dialect_dot: unit 'dot' of format 'quad_dialect'") and "module quad_dialect_dot" in v
    capsys.readouterr()
    # a spec that no plugin registered converts from the object itself
    spec = formats.evolve(FP5_E2M2, name="fp5_e2m2_unregistered")
    (path,) = convert.generate([(spec, "decoder")], tmp_path / "obj", ["verilog"])
    assert path.name == "fp5_e2m2_unregistered_decoder.v" and "module fp5_e2m2_unregistered_decoder" in path.read_text()
