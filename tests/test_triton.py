"""The Triton backend equals the Numba backend bit for bit (rtol=0, atol=0: NaN made
canonical, signed zeros compared) on codes, scale codes, scale values, tensor scale, NaN
mask, dequantized values in every output dtype and fake_quant, for every registered
format it implements (plugins included) and for specs covering the remaining policies.

The kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set by
tests/conftest.py before anything imports Triton). Each program instance costs milliseconds there, so the
inputs are small and the backend's interpreter tiles keep every launch to a few dozen
program instances. On a GPU machine, ``TRITON_INTERPRET=0 pytest tests/test_triton*.py``
runs the same comparisons with the compiled kernels on CUDA tensors (Numba on CPU copies).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_conformance import EXTRA_SPECS

import lowbit
from lowbit.emulate import BackendUnavailable
from lowbit.emulate.api import _check_backend_name
from lowbit.formats import E8M0, BlockFormat, CodebookFormat, IntFormat, evolve, get
from lowbit.formats.spec import BLOCK_SPECS, Formatbook
from lowbit.plugins.builtin_backends import TRITON
from lowbit.plugins.builtin_formats import FP4_E2M1, NVFP4
from lowbit.testing import strategies
from lowbit.testing.conformance import bits, input_dtypes, raises_on_nan

# where the Triton side runs: the interpreter's CPU tensors, or the compiled kernels on CUDA
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
needs_triton = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs TRITON_INTERPRET=1 or CUDA"
)
# the interpreter evaluates both sides of every tl.where, NaN and Inf lanes included
quiet_interpreter = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
pytestmark = [needs_triton, quiet_interpreter]

OUT_KINDS = strategies.DTYPES
REGISTERED = [n for n in lowbit.formats.names() if TRITON.implements(get(n))]
# policies no registered format has: 16-bit codes, codebook ties away, stochastic codebooks
# and integers, a zero block scale with integer elements, toward-zero MX elements
MORE_SPECS = (
    IntFormat(name="int12", int_bits=12),
    IntFormat(name="int16_sr", int_bits=16, rounding="stochastic", sr_bits=12),
    CodebookFormat(name="cb_away_sr", magnitudes=(0, 0.25, 1.0, 3.0), rounding="stochastic", sr_bits=3),
    CodebookFormat(name="cb_away", magnitudes=(0, 0.25, 1.0, 3.0), rounding="nearest_away", signed=False),
    evolve(NVFP4, name="nvfp4_int4_zero_scale", element=IntFormat(name="int4s", int_bits=4, symmetric=True),
           zero_block="zero_scale", inf_block="inf_amax"),  # fmt: skip
    BlockFormat(name="mx_e2m1_rtz_bs24", element=evolve(FP4_E2M1, rounding="toward_zero"), block_size=24, scale=E8M0,
                inf_block="inf_amax", scale_rule="ceil"),  # fmt: skip
)
SPECS = [*EXTRA_SPECS, *MORE_SPECS]


def _torch(x: np.ndarray) -> torch.Tensor:
    """A CPU tensor of x's dtype (bfloat16 from ml_dtypes via its bits)."""
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy())


def _triton(spec: Any, t: torch.Tensor, **kw: Any) -> lowbit.Quantized:
    """``t`` quantized by the Triton backend on DEVICE."""
    return lowbit.quantize(t.to(DEVICE), spec, backend="triton", **kw)


def _same(what: str, expected: Any, got: Any) -> None:
    e, g = bits(expected), bits(got)
    assert e.dtype == g.dtype and e.shape == g.shape, f"{what}: {e.dtype} {e.shape} vs {g.dtype} {g.shape}"
    where = np.argwhere(e != g)
    assert not len(where), f"{what}: {len(where)} differ, first at {tuple(where[0])}: {e[tuple(where[0])]} vs {g[tuple(where[0])]}"


def _compare(spec: Any, x: np.ndarray, seed: int, *, axis: int = -1, out_kinds: tuple[str, ...] = OUT_KINDS,
             subbooks: Any = None) -> None:  # fmt: skip
    """Triton (on a tensor on DEVICE) against Numba (on the same values on CPU): quantize,
    dequantize, fake_quant (``subbooks``: Formatbooks' sub-formatbooks, given to both). A
    format with nan="raise" must refuse NaN on both; the NaNs are then replaced by 0 and
    the rest compared."""
    t = _torch(x)
    kw = {"seed": seed, "axis": axis, "subbooks": subbooks}
    if raises_on_nan(spec) and torch.isnan(t).any():
        for backend, data in (("numba", t), ("triton", t.to(DEVICE))):
            with pytest.raises(ValueError, match="has no NaN code"):
                lowbit.quantize(data, spec, backend=backend, **kw)
            with pytest.raises(ValueError, match="has no NaN code"):
                lowbit.fake_quant(data, spec, backend=backend, **kw)
        t = torch.where(torch.isnan(t), torch.zeros((), dtype=t.dtype), t)
    qn = lowbit.quantize(t, spec, backend="numba", **kw)
    qt = _triton(spec, t, **kw)
    assert isinstance(qt.codes, torch.Tensor)  # a tensor input keeps its storage on its device
    qc = qt.cpu()
    for field in ("codes", "scale_codes", "scales", "nan_mask", "dialect_ids"):
        a, b = getattr(qn, field), getattr(qc, field)
        assert (a is None) == (b is None), f"{field}: numba {type(a).__name__}, triton {type(b).__name__}"
        if a is not None:
            _same(field, a, b)
    assert (qn.tensor_scale is None) == (qt.tensor_scale is None)
    if qn.tensor_scale is not None:
        _same("tensor_scale", np.float64(qn.tensor_scale), np.float64(qt.tensor_scale))
    for kind in out_kinds:
        _same(f"dequantize to {kind}", lowbit.dequantize(qn, backend="numba", dtype=kind),
              lowbit.dequantize(qt, backend="triton", dtype=kind))  # fmt: skip
    fn = lowbit.fake_quant(t, spec, backend="numba", **kw)
    _same("fake_quant", fn, lowbit.fake_quant(t.to(DEVICE), spec, backend="triton", **kw))


def _examples(spec: Any, kind: str) -> np.ndarray:
    """Every named hard case of ``spec`` (ties, zeros, subnormals, huge, Inf, NaN blocks)
    in one array: element cases as one row, block cases as rows padded with zeros (a zero
    block changes no other block, nor the finite amax of a tensor scale)."""
    cases = list(strategies.examples(spec, kind).values())
    if not isinstance(spec, BLOCK_SPECS):
        return np.concatenate([c.reshape(1, -1) for c in cases], axis=1)
    width = max(c.shape[1] for c in cases)
    rows = [np.concatenate([c, np.zeros((c.shape[0], width - c.shape[1]), c.dtype)], axis=1) for c in cases]
    return np.concatenate(rows, axis=0)


def _params(specs: list[Any]) -> list[Any]:
    return [pytest.param(s, kind, id=f"{s.name}-{kind}") for s in specs for kind in input_dtypes(s)]


ALL = [get(n) for n in REGISTERED] + SPECS


@pytest.mark.parametrize(("spec", "kind"), _params(ALL))
def test_hard_cases_match_numba(spec: Any, kind: str) -> None:
    _compare(spec, _examples(spec, kind), seed=20240611)


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_drawn_inputs_match_numba(spec: Any) -> None:
    @settings(max_examples=3, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(x=st.sampled_from(input_dtypes(spec)).flatmap(lambda k: strategies.arrays(spec, k)),
           seed=st.integers(0, 2**32 - 1))  # fmt: skip
    def drawn(x: np.ndarray, seed: int) -> None:
        _compare(spec, x, seed, out_kinds=(x.dtype.name,))

    drawn()


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "nvfp4_2level@torchao", "fp8_e4m3", "mxfp6_e3m2_sr"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_any_axis_and_partial_blocks(name: str, axis: int) -> None:
    rng = np.random.default_rng(axis)
    x = (rng.standard_normal((5, 37, 3)) * np.exp2(rng.integers(-8, 8, (5, 37, 3)))).astype(np.float32)
    x[1, 2, 0], x[2, 5, 1], x[0, 0, 2] = np.nan, -np.inf, -0.0
    _compare(get(name), x, seed=7, axis=axis, out_kinds=("float32",))


def test_nan_mask_of_rows_not_a_multiple_of_8() -> None:
    # fp4_e2m1 has no NaN code: the NaN mask is stored packed, 2 bytes per row of 13, and
    # dequantize must unpack it row by row (a flat read of the unpacked mask misplaces it)
    x = np.random.default_rng(5).standard_normal((3, 13)).astype(np.float32)
    x[0, 12], x[1, 0], x[2, 7] = np.nan, np.nan, np.nan
    _compare(get("fp4_e2m1"), x, seed=1)
    y = lowbit.dequantize(_triton("fp4_e2m1", _torch(x)), backend="triton")
    np.testing.assert_array_equal(np.isnan(y.cpu().numpy()), np.isnan(x))


@pytest.mark.skipif(DEVICE != "cpu", reason="numpy input reaches Triton only in the interpreter")
def test_numpy_input_gives_numpy_storage_and_output() -> None:
    x = np.linspace(-7, 7, 64, dtype=np.float32).reshape(2, 32)
    q = lowbit.quantize(x, "mxfp4", backend="triton")
    assert isinstance(q.codes, np.ndarray)
    _same("codes", lowbit.quantize(x, "mxfp4", backend="numba").codes, q.codes)
    _same("fake_quant", lowbit.fake_quant(x, "mxfp4", backend="numba"), lowbit.fake_quant(x, "mxfp4", backend="triton"))
    _same("dequantize", lowbit.fake_quant(x, "mxfp4", backend="numba"), lowbit.dequantize(q, backend="triton"))


def test_stochastic_bits_are_the_seeds() -> None:
    # the same seed gives Numba's codes; another seed gives other codes (the bits are used)
    x = torch.linspace(-20, 20, 2000).reshape(4, 500)
    a = _triton("fp6_e3m2_sr", x, seed=1).cpu().codes
    _same("codes", lowbit.quantize(x, "fp6_e3m2_sr", backend="numba", seed=1).codes, a)
    assert (_triton("fp6_e3m2_sr", x, seed=2).cpu().codes != a).any()


def test_every_registered_format_is_implemented() -> None:
    # Formatbooks included (their policy variants and sub-formatbooks: tests/test_triton_dialects.py)
    books = [n for n in lowbit.formats.names() if isinstance(get(n), Formatbook)]
    assert books and set(lowbit.formats.names()) == set(REGISTERED)
    assert "triton" in lowbit.emulate.available_backends(get("dialectfp4"))


def test_capability_check_explains_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = TRITON.unavailable_reason()
    assert reason is not None and "CUDA device" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        lowbit.fake_quant(torch.zeros(4), "fp8_e4m3", backend="triton")


def test_auto_picks_numba_for_cpu_data() -> None:
    assert _check_backend_name("auto", torch.zeros(2)) == "numba"
    assert _check_backend_name("auto", np.zeros(2)) == "numba"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_picks_triton_for_cuda_tensors() -> None:
    assert _check_backend_name("auto", torch.zeros(2, device="cuda")) == "triton"
