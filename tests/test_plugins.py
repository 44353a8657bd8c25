"""Plugins: the example package found through its entry point, broken plugins,
run-time registration, and backends and recipes contributed by plugins.

The example package ``examples/lowbit-e3m2-sr`` must be installed into the test
environment (``make test`` installs it); without it the discovery test fails.
Every test that changes what is registered works on a reset process-wide
registry and puts the shared one back afterwards.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lowbit
import lowbit.registry as registry_module
from lowbit.cli import main
from lowbit.emulate import Backend, BackendUnavailable, Quantized, available_backends
from lowbit.formats import E8M0, BlockFormat, FloatFormat, evolve
from lowbit.formats.spec import SPEC_TYPES
from lowbit.plugins.builtin_formats import BUILTIN_FORMATS, FP6_E3M2, MXFP4
from lowbit.registry import LowbitPluginWarning, registry
from lowbit.testing.conformance import assert_same_bits

PLUGIN = "e3m2_sr"
PLUGIN_MODULE = "lowbit_e3m2_sr"
PLUGIN_FORMATS = ("fp6_e3m2_sr", "mxfp6_e3m2_sr")
BUILTIN_ORIGIN = "lowbit.plugins.builtin_formats"
REFERENCE_MODULE = "lowbit.emulate.reference"


def _inputs() -> np.ndarray:
    """Rows of ordinary, subnormal-range, huge, zero, NaN-holding and Inf-holding values."""
    rng = np.random.default_rng(20240611)
    x = rng.standard_normal((6, 80)).astype(np.float32) * 3
    x[1] *= 0.02  # E3M2's subnormals lie below 0.25
    x[2] *= 1e30  # the element format saturates; the block format's scale follows
    x[3] = 0.0
    x[4, 5] = np.nan
    x[5, 70] = -np.inf
    return x


X = _inputs()


def _bits(a: np.ndarray) -> np.ndarray:
    """The bit patterns of a float array, so that NaN equals NaN and -0 differs from +0."""
    return a.view(f"u{a.itemsize}")


def _assert_same_quantized(a: Quantized, b: Quantized) -> None:
    """Codes, scales, tensor scale, NaN mask and seed agree bit for bit."""
    np.testing.assert_array_equal(a.codes, b.codes)
    for field in ("scale_codes", "scales", "nan_mask"):
        fa, fb = getattr(a, field), getattr(b, field)
        assert (fa is None) == (fb is None), field
        if fa is not None:
            np.testing.assert_array_equal(_bits(np.asarray(fa)), _bits(np.asarray(fb)), err_msg=field)
    assert a.tensor_scale == b.tensor_scale
    assert a.seed == b.seed


class ValuesPlugin:
    """A plugin that registers the values it was given, as a third-party module would."""

    def __init__(self, formats: tuple[Any, ...] = (), backends: tuple[Any, ...] = ()) -> None:
        self.formats = formats
        self.backends = backends

    @lowbit.hookimpl
    def register_formats(self, register: Callable[[Any], None]) -> None:
        for value in self.formats:
            register(value)

    @lowbit.hookimpl
    def register_backends(self, register: Callable[[Any], None]) -> None:
        for value in self.backends:
            register(value)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """``lowbit.registry.reset()`` for this test; the shared registry comes back afterwards."""
    monkeypatch.setattr(registry_module, "_REGISTRY", None)


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write an importable module into tmp_path; it is forgotten after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def make(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()  # tmp_path's directory listing may be cached already
        written.append(name)
        return name

    yield make
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def extra_entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``add(name="module", ...)``: entry points in group "lowbit" after the installed ones."""
    installed = importlib.metadata.entry_points

    def add(**plugins: str) -> None:
        fake = [importlib.metadata.EntryPoint(name=n, value=v, group="lowbit") for n, v in plugins.items()]

        def entry_points(**params: Any) -> importlib.metadata.EntryPoints:
            # Other groups go to the real function untouched: numba loads its own
            # extensions through entry_points() and needs the real return type.
            found = installed(**params)
            if params.get("group") != "lowbit":
                return found
            return importlib.metadata.EntryPoints([*found, *fake])

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    return add


def _assert_other_formats_work() -> None:
    """Every built-in and example format is registered unchanged, and both kinds quantize."""
    import lowbit_e3m2_sr

    formats = registry().formats
    for spec in BUILTIN_FORMATS:
        assert formats.items[spec.name] is spec
        assert formats.origin[spec.name] == BUILTIN_ORIGIN
    for spec in (lowbit_e3m2_sr.FP6_E3M2_SR, lowbit_e3m2_sr.MXFP6_E3M2_SR):
        assert formats.items[spec.name] is spec
        assert formats.origin[spec.name] == PLUGIN
    for name in ("mxfp4", "mxfp6_e3m2_sr"):
        y = lowbit.fake_quant(X, name, seed=1)
        assert y.shape == X.shape and y.dtype == X.dtype


# ---------------------------------------------------------------------------
# the example package


@pytest.mark.filterwarnings("error::lowbit.registry.LowbitPluginWarning")
def test_example_plugin_is_found_through_its_entry_point(isolated_registry: None) -> None:
    eps = [ep for ep in importlib.metadata.entry_points(group="lowbit") if ep.name == PLUGIN]
    assert len(eps) == 1, "examples/lowbit-e3m2-sr is not installed (pip install -e examples/lowbit-e3m2-sr)"
    assert eps[0].value == PLUGIN_MODULE
    assert eps[0].dist is not None and eps[0].dist.name == "lowbit-e3m2-sr"

    reg = registry()
    assert reg.pm.has_plugin(PLUGIN)
    element, block = (lowbit.formats.get(name) for name in PLUGIN_FORMATS)
    assert [reg.formats.origin[name] for name in PLUGIN_FORMATS] == [PLUGIN, PLUGIN]
    assert isinstance(element, FloatFormat)
    assert (element.ebits, element.mbits, element.bias, element.special) == (3, 2, 3, "none")
    assert (element.rounding, element.sr_bits, element.sr_seed) == ("stochastic", 8, None)
    assert isinstance(block, BlockFormat)
    assert (block.element, block.block_size, block.scale, block.scale_rule) == (element, 32, E8M0, "floor")


@pytest.mark.parametrize("name", PLUGIN_FORMATS)
def test_example_formats_numba_equals_reference(name: str) -> None:
    quantized = {b: lowbit.quantize(X, name, backend=b, seed=77) for b in ("reference", "numba")}
    _assert_same_quantized(quantized["reference"], quantized["numba"])
    for b in ("reference", "numba"):  # every dequantize and fake_quant gives the same bits
        y = lowbit.dequantize(quantized[b], backend=b)
        np.testing.assert_array_equal(_bits(y), _bits(lowbit.dequantize(quantized["reference"], backend="reference")))
        np.testing.assert_array_equal(_bits(lowbit.fake_quant(X, name, backend=b, seed=77)), _bits(y))


@pytest.mark.parametrize("name", PLUGIN_FORMATS)
def test_example_formats_round_stochastically(name: str) -> None:
    # 1.1 lies 0.4 of the way from 1.0 to 1.25 (in a block of 1.1s, from 16 to 20
    # under the scale 1/16), so with 8 random bits it rounds up with probability
    # floor(0.4 * 256) / 256 = 102 / 256; over 8192 draws the mean's standard
    # deviation is 0.0014.
    x = np.full((1, 8192), 1.1, np.float32)
    y = lowbit.fake_quant(x, name, seed=5)
    assert set(np.unique(y).tolist()) == {1.0, 1.25}
    assert abs(float(y.mean(dtype=np.float64)) - (1 + 0.25 * 102 / 256)) < 0.006

    assert lowbit.fake_quant(x, name, seed=5).tobytes() == y.tobytes()
    assert lowbit.fake_quant(x, name, seed=6).tobytes() != y.tobytes()
    # no fixed seed: each call draws its own, and determinism must be asked for with one
    assert lowbit.quantize(x, name).seed != lowbit.quantize(x, name).seed
    with pytest.raises(ValueError, match="no seed was given"):
        lowbit.quantize(x, name, deterministic=True)


# ---------------------------------------------------------------------------
# broken plugins


BROKEN_PLUGINS = {
    "import_fails": (
        """
        raise RuntimeError("needs libfoo 2.0")
        """,
        r"plugin 'import_fails' \(lowbit_test_import_fails\) could not be loaded: RuntimeError: needs libfoo 2\.0",
    ),
    "raises_in_hook": (
        """
        import lowbit

        @lowbit.hookimpl
        def register_formats(register):
            raise ZeroDivisionError("table not built")
        """,
        r"plugin 'raises_in_hook' raised in register_formats: ZeroDivisionError: table not built",
    ),
    "wrong_signature": (
        """
        import lowbit

        @lowbit.hookimpl
        def register_formats(reg):
            pass
        """,
        r"plugin 'wrong_signature' \(lowbit_test_wrong_signature\) could not be loaded: PluginValidationError: "
        r".*\{'reg'\} are declared in the hookimpl but can not be found in the hookspec",
    ),
    PLUGIN: (  # a second distribution claiming the example's plugin name
        """
        import lowbit

        @lowbit.hookimpl
        def register_formats(register):
            pass
        """,
        rf"plugin '{PLUGIN}' \(lowbit_test_{PLUGIN}\) could not be loaded: ValueError: Plugin name already registered",
    ),
}


@pytest.mark.parametrize("plugin", list(BROKEN_PLUGINS))
def test_broken_entry_point_plugin_warns_and_the_rest_works(
    plugin: str,
    isolated_registry: None,
    make_module: Callable[[str, str], str],
    extra_entry_points: Callable[..., None],
) -> None:
    source, message = BROKEN_PLUGINS[plugin]
    extra_entry_points(**{plugin: make_module(f"lowbit_test_{plugin}", source)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry()
    plugin_warnings = [str(w.message) for w in caught if issubclass(w.category, LowbitPluginWarning)]
    assert len(plugin_warnings) == 1, plugin_warnings
    assert re.search(message, plugin_warnings[0], re.DOTALL), plugin_warnings[0]
    _assert_other_formats_work()


def test_duplicate_name_keeps_the_first_and_warns(isolated_registry: None) -> None:
    impostor = evolve(MXFP4, block_size=16)
    extra = evolve(FP6_E3M2, name="fp6_e3m2_rtz", rounding="toward_zero")
    with pytest.warns(LowbitPluginWarning) as caught:
        registry().add_plugin(ValuesPlugin(formats=(impostor, extra)), name="dup")
    assert [str(w.message) for w in caught] == [
        f"plugin 'dup' registers format 'mxfp4', which plugin '{BUILTIN_ORIGIN}' already registered; keeping the first"
    ]
    assert lowbit.formats.get("fp6_e3m2_rtz") is extra  # the plugin's other format still counts
    _assert_other_formats_work()


AFTER_BAD = {
    "formats": evolve(FP6_E3M2, name="fp6_e3m2_after_bad"),
    "backends": Backend(name="after_bad", module=REFERENCE_MODULE, specs=SPEC_TYPES),
}


@pytest.mark.parametrize(
    ("kind", "value", "problem"),
    [
        ("formats", "mxfp4", r"registered value 'mxfp4' has no string `name`"),
        ("formats", SimpleNamespace(name="fake"), r"format 'fake' is a SimpleNamespace, not one of \["),
        ("formats", E8M0, r"format 'e8m0' is a ExpScaleFormat, not one of \["),
        ("backends", MXFP4, r"backend 'mxfp4' is not a lowbit\.emulate\.Backend"),
    ],
    ids=["unnamed", "not_a_spec", "scale_not_element", "format_as_backend"],
)
def test_a_value_of_the_wrong_kind_is_refused(kind: str, value: Any, problem: str, isolated_registry: None) -> None:
    good = AFTER_BAD[kind]
    with pytest.warns(LowbitPluginWarning) as caught:
        registry().add_plugin(ValuesPlugin(**{kind: (value, good)}), name="sloppy")
    assert len(caught) == 1
    expected = rf"plugin 'sloppy' registered an invalid {kind.removesuffix('s')}, ignored: {problem}.*"
    assert re.fullmatch(expected, str(caught[0].message)), str(caught[0].message)
    table = getattr(registry(), kind)
    assert [name for name, origin in table.origin.items() if origin == "sloppy"] == [good.name]
    assert table.items[good.name] is good  # the value after the bad one still counts
    _assert_other_formats_work()


@pytest.mark.filterwarnings("error::lowbit.registry.LowbitPluginWarning")
def test_add_plugin_registers_at_run_time(isolated_registry: None) -> None:
    rtz = evolve(FP6_E3M2, name="fp6_e3m2_rtz", rounding="toward_zero")
    with pytest.raises(registry_module.UnknownNameError, match="unknown format 'fp6_e3m2_rtz'"):
        lowbit.formats.get("fp6_e3m2_rtz")
    registry().add_plugin(ValuesPlugin(formats=(rtz,)), name="late")
    assert lowbit.formats.get("fp6_e3m2_rtz") is rtz
    assert registry().formats.origin["fp6_e3m2_rtz"] == "late"
    y = lowbit.fake_quant(np.array([[1.2, -1.2, 27.0, 100.0]], np.float32), "fp6_e3m2_rtz", backend="reference")
    np.testing.assert_array_equal(y, np.array([[1.0, -1.0, 24.0, 28.0]], np.float32))
    _assert_same_quantized(
        lowbit.quantize(X, "fp6_e3m2_rtz", backend="reference"), lowbit.quantize(X, "fp6_e3m2_rtz", backend="numba")
    )


# ---------------------------------------------------------------------------
# backends contributed by plugins


TOY_BACKEND = """
    \"\"\"A toy backend: the reference backend, with a log of what it was asked to do.\"\"\"

    from lowbit.emulate import reference

    CALLS = []


    def quantize(spec, x, *, seed):
        CALLS.append(("quantize", spec.name))
        return reference.quantize(spec, x, seed=seed)


    def dequantize(spec, parts, out):
        CALLS.append(("dequantize", spec.name))
        return reference.dequantize(spec, parts, out)


    def fake_quant(spec, x, *, seed, out):
        CALLS.append(("fake_quant", spec.name))
        return reference.fake_quant(spec, x, seed=seed, out=out)
"""


@pytest.fixture
def toy_backend(isolated_registry: None, make_module: Callable[[str, str], str]) -> Any:
    """A plugin backend "toy" that implements only the spec named fp6_e3m2_sr; returns its module."""
    module = make_module("lowbit_test_toy_backend", TOY_BACKEND)
    toy = Backend(name="toy", module=module, specs=("fp6_e3m2_sr",), description="reference, logged")
    registry().add_plugin(ValuesPlugin(backends=(toy,)), name="toy_plugin")
    return importlib.import_module(module)


def test_plugin_backend_dispatches_by_spec_name(toy_backend: Any) -> None:
    element, block = (lowbit.formats.get(name) for name in PLUGIN_FORMATS)
    assert "toy" in available_backends(element)
    assert "toy" not in available_backends(block)

    q = lowbit.quantize(X, "fp6_e3m2_sr", backend="toy", seed=3)
    y = lowbit.dequantize(q, backend="toy")
    fq = lowbit.fake_quant(X, "fp6_e3m2_sr", backend="toy", seed=3)
    assert toy_backend.CALLS == [(call, "fp6_e3m2_sr") for call in ("quantize", "dequantize", "fake_quant")]
    _assert_same_quantized(q, lowbit.quantize(X, "fp6_e3m2_sr", backend="numba", seed=3))
    np.testing.assert_array_equal(_bits(y), _bits(fq))
    np.testing.assert_array_equal(_bits(fq), _bits(lowbit.fake_quant(X, "fp6_e3m2_sr", backend="numba", seed=3)))


def test_backend_that_does_not_implement_the_spec_is_an_error(toy_backend: Any) -> None:
    for name in ("mxfp6_e3m2_sr", "mxfp4"):
        with pytest.raises(BackendUnavailable) as err:
            lowbit.fake_quant(X, name, backend="toy", seed=3)
        assert str(err.value) == f"backend 'toy' does not implement format {name!r} (BlockFormat)"
    assert toy_backend.CALLS == []


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        (
            Backend(name="needs_pkg", module=REFERENCE_MODULE, specs=SPEC_TYPES, requires=("lowbit_no_such_pkg",)),
            "backend 'needs_pkg' needs the Python package 'lowbit_no_such_pkg', which is not installed",
        ),
        (
            Backend(name="no_device", module=REFERENCE_MODULE, specs=SPEC_TYPES, check=lambda: "no device found"),
            "no device found",
        ),
    ],
    ids=["requires", "check"],
)
def test_unavailable_backend_reports_why(backend: Backend, reason: str, isolated_registry: None) -> None:
    registry().add_plugin(ValuesPlugin(backends=(backend,)), name="unavailable_plugin")
    assert backend.name not in available_backends(MXFP4)
    for call in (lowbit.quantize, lowbit.fake_quant):
        with pytest.raises(BackendUnavailable) as err:
            call(X, "mxfp4", backend=backend.name)
        assert str(err.value) == reason


# ---------------------------------------------------------------------------
# recipes contributed by plugins


RECIPE_PLUGIN = """
    \"\"\"A third-party recipe plugin: the recipe of docs/models.md, after a value that is no Recipe.\"\"\"

    from types import SimpleNamespace

    import lowbit
    from lowbit.emulate import Recipe

    W4A8 = Recipe(name="w4a8", weight="mxfp4", activation="mxfp8_e4m3")


    @lowbit.hookimpl
    def register_recipes(register):
        register(SimpleNamespace(name="bogus"))  # named, but no Recipe: apply and `lowbit recipes` cannot use it
        register(W4A8)
"""


def test_plugin_recipe_applies_by_name_and_a_non_recipe_is_skipped(
    isolated_registry: None,
    make_module: Callable[[str, str], str],
    extra_entry_points: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = make_module("lowbit_test_recipe_plugin", RECIPE_PLUGIN)
    extra_entry_points(recipe_plugin=module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = lowbit.emulate.recipes()
    assert [str(w.message) for w in caught if issubclass(w.category, LowbitPluginWarning)] == [
        "plugin 'recipe_plugin' registered an invalid recipe, ignored: "
        "recipe 'bogus' is a SimpleNamespace, not a lowbit.emulate.Recipe"
    ]
    assert table["w4a8"] is importlib.import_module(module).W4A8 and "bogus" not in table
    origin = registry().recipes.origin
    assert origin["w4a8"] == "recipe_plugin" and origin["mxfp4"] == "lowbit.plugins.builtin_recipes"

    # used by name: weights in mxfp4, inputs in mxfp8_e4m3, both in blocks along the input features
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 16)
    x = torch.randn(3, 64)
    with lowbit.emulate.apply(linear, "w4a8"):
        y = linear(x)
    w = linear.weight.detach()
    expected = F.linear(lowbit.fake_quant(x, "mxfp8_e4m3", axis=-1), lowbit.fake_quant(w, "mxfp4", axis=-1), linear.bias)
    assert_same_bits(expected, y)
    with pytest.raises(ValueError, match="unknown recipe 'bogus'"):
        lowbit.emulate.apply(linear, "bogus")

    assert main(["recipes", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == list(table) and "bogus" not in rows
    assert [rows["w4a8"][k] for k in ("weight", "activation", "plugin")] == ["mxfp4", "mxfp8_e4m3", "recipe_plugin"]
    assert main(["recipes"]) == 0
    assert re.search(r"w4a8 .* mxfp4 .* mxfp8_e4m3 .* recipe_plugin", capsys.readouterr().out)
