"""Every registered format, plugins included, passes ``lowbit.testing.conformance.check``;
and the check itself catches broken backends and broken properties.

The ``@torchao`` presets take float32 and bfloat16 input only; the check knows
that (``conformance.input_dtypes``) and tests/test_torchao_presets.py compares
them with torchao itself.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable

import numpy as np
import pytest

import lowbit
import lowbit.registry as registry_module
from lowbit.emulate import Backend, reference
from lowbit.formats import E8M0, BlockFormat, CodebookFormat, FloatFormat, IntFormat, evolve, get
from lowbit.formats.spec import SPEC_TYPES
from lowbit.plugins.builtin_formats import FP4_E2M1, INT4, MXFP4, NVFP4
from lowbit.registry import registry
from lowbit.testing import conformance, strategies


def _param(name: str) -> Any:
    torchao = getattr(get(name), "arithmetic", "exact") == "torchao"
    return pytest.param(name, marks=pytest.mark.torchao) if torchao else name


@pytest.mark.parametrize("name", [_param(n) for n in lowbit.formats.names()])
def test_registered_format_conforms(name: str) -> None:
    conformance.check(name)


# Formats no built-in covers, so that every branch of the check runs on a correct format.
EXTRA_SPECS = (
    FloatFormat(name="fp8_e4m3fnuz_flush", ebits=4, mbits=3, bias=8, special="fnuz", subnormal="flush", overflow="nan"),
    FloatFormat(name="fp5_e3m1_unsigned_away", ebits=3, mbits=1, signed=False, rounding="nearest_away"),
    FloatFormat(name="fp6_e3m2_ieee_rtz", ebits=3, mbits=2, special="ieee", overflow="inf", rounding="toward_zero"),
    IntFormat(name="int8_symmetric", int_bits=8, symmetric=True),
    IntFormat(name="uint4", int_bits=4, signed=False),
    IntFormat(name="int4_nan_raise", int_bits=4, symmetric=True, nan="raise"),
    CodebookFormat(name="nf3_like", magnitudes=(0, 0.1, 0.3, 1.0)),
    # 1 + 2^-11 + 2^-30 rounds once to 1 + 2^-10 in float16, but to 1 + 2^-11 in
    # float32 and then (a tie) to 1.0
    CodebookFormat(name="cb_wide", magnitudes=(0, 0.5, 1 + 2**-11 + 2**-30, 2)),
    BlockFormat(name="mx_int8", element=IntFormat(name="int8", int_bits=8), block_size=32, scale=E8M0),
    evolve(MXFP4, name="mxfp4_inf_saturates", inf_block="saturate"),
    evolve(NVFP4, name="nvfp4_stochastic", element=evolve(FP4_E2M1, rounding="stochastic")),
)


def _extra(name: str) -> Any:
    """The spec of EXTRA_SPECS called ``name``."""
    return next(s for s in EXTRA_SPECS if s.name == name)


@pytest.mark.parametrize("spec", EXTRA_SPECS, ids=lambda s: s.name)
def test_unregistered_spec_conforms(spec: Any) -> None:
    conformance.check(spec, examples=10)


def test_torchao_presets_take_float32_and_bfloat16_only() -> None:
    assert conformance.input_dtypes(get("mxfp4@torchao")) == ("float32", "bfloat16")
    assert conformance.input_dtypes(get("mxfp4")) == ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------------------
# the check fails when it should


def _reference_with(**overrides: Callable[..., Any]) -> types.ModuleType:
    """A backend module: the reference backend with some functions replaced."""
    module = types.ModuleType("lowbit_test_mutant_backend")
    for fn in ("quantize", "dequantize", "fake_quant"):
        setattr(module, fn, overrides.get(fn, getattr(reference, fn)))
    return module


class _MutantPlugin:
    @lowbit.hookimpl
    def register_backends(self, register: Callable[[Any], None]) -> None:
        register(Backend(name="mutant", module="lowbit_test_mutant_backend", specs=SPEC_TYPES))


@pytest.fixture
def mutant(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``mutant(quantize=..., ...)`` registers backend "mutant" on a fresh registry."""
    monkeypatch.setattr(registry_module, "_REGISTRY", None)

    def make(**overrides: Callable[..., Any]) -> str:
        monkeypatch.setitem(sys.modules, "lowbit_test_mutant_backend", _reference_with(**overrides))
        registry().add_plugin(_MutantPlugin(), name="mutant_plugin")
        return "mutant"

    return make


def _off_by_one_above(limit: float) -> Callable[..., Any]:
    """quantize that gives the next code to the first element above ``limit``."""

    def quantize(spec: Any, x: np.ndarray, *, seed: int | None) -> Any:
        parts = reference.quantize(spec, x, seed=seed)
        codes = parts.codes.copy()
        hit = np.argwhere(np.abs(x) > limit)
        if len(hit):
            i, j = hit[0]
            codes[i, j] ^= 1
        return parts.replace(codes=codes)

    return quantize


def test_check_catches_a_wrong_code(mutant: Callable[..., str]) -> None:
    # E2M1 values above 6.5 are never decoded codes, so only the drawn inputs reach it
    backend = mutant(quantize=_off_by_one_above(6.5))
    with pytest.raises(AssertionError, match=r"format 'fp4_e2m1': mutant codes differ from reference .*input "):
        conformance.check(FP4_E2M1, backends=[backend], examples=5)


def test_check_catches_a_wrong_round_trip(mutant: Callable[..., str]) -> None:
    backend = mutant(quantize=_off_by_one_above(3.5))
    with pytest.raises(AssertionError, match=r"mutant: decode then quantize does not give the canonical code"):
        conformance.check(FP4_E2M1, backends=[backend], examples=5)


def test_check_catches_a_wrong_scale(mutant: Callable[..., str]) -> None:
    def quantize(spec: Any, x: np.ndarray, *, seed: int | None) -> Any:
        parts = reference.quantize(spec, x, seed=seed)
        if parts.scales is None:  # the element's code round trip
            return parts
        return parts.replace(scales=parts.scales * np.where(parts.scale_codes == 130, 2.0, 1.0))

    backend = mutant(quantize=quantize)
    with pytest.raises(AssertionError, match=r"format 'mxfp4': mutant scales differ from reference .*input block \["):
        conformance.check(MXFP4, backends=[backend], examples=5)


def test_check_catches_fake_quant_that_is_not_dequantize_of_quantize(mutant: Callable[..., str]) -> None:
    def fake_quant(spec: Any, x: np.ndarray, *, seed: int | None, out: str) -> np.ndarray:
        y = reference.fake_quant(spec, x, seed=seed, out=out)
        return np.abs(y) if out == "float32" else y  # loses the sign of -0.0 and of negatives

    backend = mutant(fake_quant=fake_quant)
    with pytest.raises(AssertionError, match=r"mutant fake_quant differs from reference dequantize\(quantize\)"):
        conformance.check(INT4, backends=[backend], examples=5)


def test_check_catches_double_rounding_in_float16_output(mutant: Callable[..., str]) -> None:
    def dequantize(spec: Any, parts: Any, out: str) -> np.ndarray:
        if out != "float16":
            return reference.dequantize(spec, parts, out)
        return reference.dequantize(spec, parts, "float32").astype(np.float16).view(np.uint16)

    backend = mutant(dequantize=dequantize)
    with pytest.raises(AssertionError, match=r"mutant dequantize to float16 differs from reference"):
        conformance.check(_extra("cb_wide"), backends=[backend], examples=5)


# The property checks run after the backend diff, so a broken backend trips the diff
# first; these feed the property checks a broken fake_quant directly.


def _case(spec: Any, values: list[float]) -> Any:
    return conformance._Case(spec, "hand", np.array([values], np.float32))


def test_symmetry_check_catches_an_asymmetric_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    def toward_plus_inf(spec: Any, x: np.ndarray, backend: str, seed: int) -> np.ndarray:
        return np.ceil(x)

    monkeypatch.setattr(conformance, "_fq", toward_plus_inf)
    with pytest.raises(AssertionError, match=r"fake_quant\(-x\) differs from -fake_quant\(x\).*index \(0, 0\)"):
        conformance._check_symmetric(INT4, "numba", _case(INT4, [1.5, 2.0]), 0)


def test_symmetry_check_leaves_out_the_extra_negative_integer() -> None:
    # int4: fq(9) = 7 but fq(-9) = -8, and fq(-0.0) = +0.0: neither is a failure
    conformance._check_symmetric(INT4, "numba", _case(INT4, [9.0, -9.0, -0.0, 0.4]), 0)


def test_idempotence_check_catches_a_drifting_fake_quant(monkeypatch: pytest.MonkeyPatch) -> None:
    def drift(spec: Any, x: np.ndarray, backend: str, seed: int) -> np.ndarray:
        return np.nextafter(x, np.inf)

    monkeypatch.setattr(conformance, "_fq", drift)
    with pytest.raises(AssertionError, match=r"format 'fp4_e2m1': numba fake_quant is not idempotent"):
        conformance._check_idempotent(FP4_E2M1, "numba", _case(FP4_E2M1, [1.0, 2.5]), 0)


def test_monotonicity_check_catches_a_decreasing_fake_quant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conformance, "_fq", lambda spec, x, backend, seed: -x)
    with pytest.raises(AssertionError, match=r"not monotonic .*: x = -1.0 <= 2.0 but fake_quant gives 1.0 > -2.0"):
        conformance._check_monotonic(FP4_E2M1, "numba", _case(FP4_E2M1, [2.0, -1.0, np.nan]))


# ---------------------------------------------------------------------------
# canonical codes, from the format definitions


@pytest.mark.parametrize(
    ("spec", "code", "canonical"),
    [
        (FP4_E2M1, 0b1000, 0b1000),  # -0 is a code of its own
        (get("fp8_e4m3"), 0xFF, -1),  # S.1111.111 is NaN: the one NaN code
        (get("fp8_e4m3"), 0x7F, -1),
        (get("fp8_e5m2"), 0xFC, 0xFB),  # -Inf saturates to -57344 (S.11110.11)
        (get("fp8_e5m2@ml_dtypes"), 0xFC, 0xFC),  # overflow="inf" keeps it
        (_extra("fp8_e4m3fnuz_flush"), 0x80, -1),  # fnuz: the "-0" pattern is NaN
        (_extra("fp8_e4m3fnuz_flush"), 0x83, 0),  # flushed negative subnormal: zero, and fnuz has no -0
        (evolve(FP4_E2M1, subnormal="flush"), 0b1001, 0b1000),  # -0.5 flushed keeps its sign
        (_extra("int8_symmetric"), 0x80, None),  # symmetric int8 drops -128: no code for it
        (INT4, 0b1000, 0b1000),  # -8 exists in two's complement
    ],
)
def test_canonical_code(spec: Any, code: int, canonical: int | None) -> None:
    assert conformance.canonical_code(spec, code) == canonical


def test_examples_hold_every_tie_of_e2m1() -> None:
    # formats.md: E2M1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; ties between them, and 7
    # (6 + ulp(6) / 2 with ulp(6) = 2) where overflow starts
    cases = strategies.examples(FP4_E2M1, "float32")
    ties = set(cases["ties"].ravel().tolist())
    assert {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.25, -5.0} <= ties
    assert {np.nextafter(np.float32(2.5), np.float32(3)), np.nextafter(np.float32(2.5), np.float32(2))} <= ties
    specials = cases["specials"].ravel()
    assert {0.0, 2.0**-149, 2.0**-126, np.inf, -np.inf} <= set(specials.tolist()) and np.isnan(specials).any()
    assert np.signbit(specials[specials == 0]).any() and not np.signbit(specials[specials == 0]).all()


def test_block_examples_force_the_scale_of_their_ties() -> None:
    # each tie block of mxfp4 starts with 6 * scale (and holds nothing >= 8 * scale),
    # so the floor rule gives exactly that scale
    for name, x in strategies.examples(MXFP4, "float32").items():
        if name.startswith("ties"):
            anchors = np.abs(x[:, ::32]).astype(np.float64)
            q = lowbit.quantize(x, MXFP4, backend="numba")
            np.testing.assert_array_equal(q.scales[anchors > 0], anchors[anchors > 0] / 6)
