"""quantize / dequantize / fake_quant input handling, layout, packing and errors.

Values here are checked for consistency between equivalent calls (containers,
dtypes, layouts, axes); their correctness is tests/test_golden.py's and
tests/test_conformance.py's job.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from torchao.prototype.mx_formats.kernels import pack_uint4

import lowbit
from lowbit.emulate.api import pack_codes, unpack_codes
from lowbit.formats import FloatFormat, IntFormat, evolve
from lowbit.plugins.builtin_formats import FP4_E2M1, FP6_E2M3, MXFP4
from lowbit.registry import UnknownNameError
from lowbit.testing.conformance import assert_same_bits, bits

DTYPES = ("float16", "bfloat16", "float32", "float64")
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
NUMPY_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}
# formats whose results have few significant bits (power-of-two scales), so that a
# float64 result converts to any narrower dtype with a single rounding
SHORT_VALUED = ("fp4_e2m1", "int8", "mxfp4", "mxfp8_e5m2")


def _data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * np.exp2(rng.integers(-3, 4, shape))).astype(np.float64)


def _as(x: np.ndarray, container: str, dtype: str) -> Any:
    """x (float64) converted to ``dtype`` in ``container`` (values rounded once by numpy/ml_dtypes)."""
    y = x.astype(NUMPY_DTYPES[dtype])
    if container == "numpy":
        return y
    if dtype == "bfloat16":
        return torch.from_numpy(y.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(y.copy())


def _numpy(y: Any) -> np.ndarray:
    """The numpy array of a tensor with the same dtype (bfloat16 as ml_dtypes') and bits."""
    if not isinstance(y, torch.Tensor):
        return y
    if y.dtype == torch.bfloat16:
        return y.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return y.numpy()


# ---------------------------------------------------------------------------
# containers, dtypes, shapes


@pytest.mark.parametrize("container", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", [*SHORT_VALUED, "nvfp4"])
def test_output_has_the_input_container_dtype_and_shape(container: str, dtype: str, fmt: str) -> None:
    x = _as(_data((3, 40)), container, dtype)
    y = lowbit.fake_quant(x, fmt)
    d = lowbit.dequantize(lowbit.quantize(x, fmt))
    for out in (y, d):
        assert type(out) is type(x)
        assert out.dtype == x.dtype and tuple(out.shape) == (3, 40)
    assert_same_bits(y, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", SHORT_VALUED)
def test_every_dtype_gives_the_same_values(dtype: str, fmt: str) -> None:
    x = _as(_data((3, 40)), "numpy", dtype)
    exact = lowbit.fake_quant(x.astype(np.float64), fmt)  # x widened exactly
    assert_same_bits(exact.astype(NUMPY_DTYPES[dtype]), lowbit.fake_quant(x, fmt))
    assert_same_bits(lowbit.fake_quant(x, fmt), _numpy(lowbit.fake_quant(_as(x.astype(np.float64), "torch", dtype), fmt)))


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "mxfp4", "nvfp4"])
def test_dequantize_dtype_override(fmt: str) -> None:
    x = _as(_data((2, 32)), "torch", "float32")
    q = lowbit.quantize(x, fmt)
    for dtype in (torch.bfloat16, "float16", "float64"):
        y = lowbit.dequantize(q, dtype=dtype)
        assert isinstance(y, torch.Tensor) and str(y.dtype).removeprefix("torch.") == str(dtype).removeprefix("torch.")
    assert_same_bits(lowbit.dequantize(q, dtype="float64").to(torch.float32), lowbit.dequantize(q))


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (0, 5), (7,), (2, 3, 5), (2, 1, 33)])
@pytest.mark.parametrize("fmt", ["fp6_e3m2", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_any_shape(shape: tuple[int, ...], fmt: str, container: str) -> None:
    x64 = np.asarray(_data(shape))
    x = _as(x64, container, "float32")
    y = lowbit.fake_quant(x, fmt)
    q = lowbit.quantize(x, fmt)
    assert tuple(y.shape) == shape and q.shape == shape
    assert tuple(lowbit.dequantize(q).shape) == shape
    # the same values as the same data laid out as rows along the last axis
    rows = x64.reshape(int(np.prod(shape[:-1])), shape[-1] if shape else 1).astype(np.float32)
    assert_same_bits(lowbit.fake_quant(rows, fmt).reshape(shape), _numpy(y))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "fp8_e4m3"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_any_axis(fmt: str, axis: int) -> None:
    x = _data((40, 3, 34)).astype(np.float32)
    y = lowbit.fake_quant(x, fmt, axis=axis)
    moved = np.moveaxis(x, axis, -1)
    assert_same_bits(np.moveaxis(lowbit.fake_quant(np.ascontiguousarray(moved), fmt), -1, axis), y)
    q = lowbit.quantize(x, fmt, axis=axis)
    assert q.axis == axis % 3
    assert_same_bits(y, lowbit.dequantize(q))


def test_the_spec_axis_is_the_default() -> None:
    x = _data((64, 5)).astype(np.float32)
    along_rows = evolve(MXFP4, name="mxfp4_axis0", axis=0)
    assert_same_bits(lowbit.fake_quant(x, MXFP4, axis=0), lowbit.fake_quant(x, along_rows))
    assert not np.array_equal(lowbit.fake_quant(x, MXFP4), lowbit.fake_quant(x, along_rows))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["fp4_e2m1", "mxfp4", "nvfp4"])
def test_non_contiguous_input(dtype: str, fmt: str) -> None:
    base = _data((64, 48))
    for container in ("numpy", "torch"):
        x = _as(base, container, dtype)
        views = [x.T, x[::2, 1::3], x[:, ::-1]] if container == "numpy" else [x.t(), x[::2, 1::3], x.flip(1)]
        for view in views:
            dense = view.copy() if container == "numpy" else view.contiguous()
            assert_same_bits(lowbit.fake_quant(dense, fmt), lowbit.fake_quant(view, fmt))
            assert_same_bits(lowbit.dequantize(lowbit.quantize(dense, fmt)), lowbit.dequantize(lowbit.quantize(view, fmt)))


@pytest.mark.parametrize("container", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["fp4_e2m1", "mxfp4", "nvfp4"])
def test_input_is_never_modified(container: str, dtype: str, fmt: str) -> None:
    x64 = _data((4, 64))
    x64[0, :3] = [np.nan, np.inf, -0.0]
    x = _as(x64, container, dtype)
    before = bits(x)
    for backend in ("reference", "numba"):
        y = lowbit.fake_quant(x, fmt, backend=backend)
        q = lowbit.quantize(x, fmt, backend=backend)
        d = lowbit.dequantize(q, backend=backend)
        for out in (y, d):  # writing to a result never reaches x
            out[...] = 0
        np.testing.assert_array_equal(before, bits(x))


# ---------------------------------------------------------------------------
# packing

E2M1_CODES = [1, 2, 3, 4, 5]  # 0.5, 1, 1.5, 2, 3 (OCP E2M1)
E2M1_VALUES = [0.5, 1.0, 1.5, 2.0, 3.0]


@pytest.mark.parametrize(
    ("order", "n", "packed"),
    [
        ("low_first", 4, [0x21, 0x43]),  # element 2i in the low nibble
        ("high_first", 4, [0x12, 0x34]),
        ("low_first", 5, [0x21, 0x43, 0x05]),  # odd length: the last high nibble is 0
        ("high_first", 5, [0x12, 0x34, 0x50]),
    ],
)
def test_nibble_order_by_hand(order: str, n: int, packed: list[int]) -> None:
    spec = evolve(FP4_E2M1, name=f"fp4_e2m1_{order}", nibble_order=order)
    x = np.array([E2M1_VALUES[:n]], np.float32)
    for backend in ("reference", "numba"):
        q = lowbit.quantize(x, spec, backend=backend)
        np.testing.assert_array_equal(q.codes, [packed])
        np.testing.assert_array_equal(q.unpacked_codes(), [E2M1_CODES[:n]])
        assert_same_bits(x, lowbit.dequantize(q, backend=backend))


def test_low_first_packing_is_torchaos() -> None:
    x = _data((6, 64)).astype(np.float32)
    q = lowbit.quantize(x, "mxfp4")
    np.testing.assert_array_equal(pack_uint4(torch.from_numpy(q.unpacked_codes())).numpy(), q.codes)


@pytest.mark.parametrize("order", ["low_first", "high_first"])
@pytest.mark.parametrize("n", [1, 2, 7, 32, 33])
def test_pack_round_trip(order: str, n: int) -> None:
    element = evolve(FP4_E2M1, nibble_order=order)
    codes = np.random.default_rng(n).integers(0, 16, (3, n)).astype(np.uint8)
    packed = pack_codes(codes, element)
    assert packed.dtype == np.uint8 and packed.shape == (3, (n + 1) // 2)
    np.testing.assert_array_equal(unpack_codes(packed, element, n), codes)


@pytest.mark.parametrize("order", ["low_first", "high_first"])
def test_nibble_order_does_not_change_block_values(order: str) -> None:
    x = _data((3, 70)).astype(np.float32)
    spec = evolve(MXFP4, name=f"mxfp4_{order}", element=evolve(FP4_E2M1, nibble_order=order))
    assert_same_bits(lowbit.fake_quant(x, MXFP4), lowbit.dequantize(lowbit.quantize(x, spec)))


@pytest.mark.parametrize(
    ("fmt", "shape", "codes_dtype", "codes_shape"),
    [
        (FP6_E2M3, (2, 5), np.uint8, (2, 5)),  # wider than 4 bits: a byte per code
        ("int8", (2, 5), np.uint8, (2, 5)),
        (IntFormat(name="int12", int_bits=12), (2, 5), np.uint16, (2, 5)),
    ],
)
def test_wide_codes_are_one_per_byte_or_word(fmt: Any, shape: tuple[int, ...], codes_dtype: Any, codes_shape: Any) -> None:
    x = _data(shape).astype(np.float32) * 100
    q = lowbit.quantize(x, fmt)
    assert q.codes.dtype == codes_dtype and q.codes.shape == codes_shape
    assert_same_bits(lowbit.fake_quant(x, fmt), lowbit.dequantize(q))


@pytest.mark.parametrize(
    ("fmt", "shape", "nbytes"),
    [
        ("fp4_e2m1", (3, 5), 3 * 3),  # 5 nibbles take 3 bytes per row
        ("fp6_e2m3", (3, 5), 15),
        ("int8", (3, 5), 15),
        (IntFormat(name="int12", int_bits=12), (2, 3), 12),
        ("mxfp4", (4, 64), 4 * 32 + 4 * 2),  # codes + one E8M0 byte per block of 32
        ("mxfp4", (2, 40), 2 * 20 + 2 * 2),  # 40 = one full block and one partial one
        ("nvfp4", (4, 64), 4 * 32 + 4 * 4 + 4),  # + E4M3 byte per 16 + float32 tensor scale
        ("nvfp4@torchao", (4, 64), 4 * 32 + 4 * 4),  # single level: no tensor scale
    ],
)
def test_nbytes_is_the_packed_size(fmt: Any, shape: tuple[int, ...], nbytes: int) -> None:
    assert lowbit.quantize(_data(shape).astype(np.float32), fmt).nbytes() == nbytes


# ---------------------------------------------------------------------------
# errors


X = np.ones((2, 64), np.float32)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.ones(2, 3, dtype=torch.int32), r"x must be a floating tensor .* got torch\.int32"),
        (np.ones((2, 3), np.int8), r"x must be a floating array .* got dtype int8"),
        (np.ones((2, 3), bool), r"x must be a floating array .* got dtype bool"),
        ([[1.0, 2.0]], r"x must be a torch\.Tensor or numpy\.ndarray, got list"),
    ],
)
def test_non_float_input_is_refused(x: Any, message: str) -> None:
    for call in (lowbit.quantize, lowbit.fake_quant):
        with pytest.raises(TypeError, match=message):
            call(x, "mxfp4")


@pytest.mark.parametrize("axis", [2, -3, 64])
def test_axis_out_of_range(axis: int) -> None:
    with pytest.raises(ValueError, match=rf"axis={axis} is out of range for a tensor with 2 dimensions"):
        lowbit.fake_quant(X, "mxfp4", axis=axis)
    with pytest.raises(TypeError, match=r"axis must be an int, got str"):
        lowbit.quantize(X, "mxfp4", axis="0")  # type: ignore[arg-type]


def test_padding_error_when_the_block_does_not_divide() -> None:
    strict = evolve(MXFP4, name="mxfp4_strict", padding="error")
    message = r"'mxfp4_strict' has padding='error' and block_size=32, which does not divide the length 40 of axis 1"
    with pytest.raises(ValueError, match=message):
        lowbit.quantize(np.ones((2, 40), np.float32), strict)
    assert_same_bits(lowbit.fake_quant(X, MXFP4), lowbit.fake_quant(X, strict))  # 64 divides


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: evolve(FP4_E2M1, rounding="nearest"),
            r"rounding='nearest' is not a known policy; choose one of nearest_even, nearest_away, toward_zero, stochastic",
        ),
        (lambda: evolve(FP4_E2M1, overflow="clip"), r"overflow='clip' is not a known policy"),
        (lambda: evolve(FP4_E2M1, subnormal="drop"), r"subnormal='drop' is not a known policy"),
        (lambda: evolve(FP4_E2M1, nibble_order="middle"), r"nibble_order='middle' is not a known policy"),
        (lambda: evolve(FP4_E2M1, nan="zero"), r"nan='zero' is not a known policy"),
        (lambda: FloatFormat(name="f", ebits=4, mbits=3, special="fnx"), r"special='fnx' is not a known policy"),
        (lambda: evolve(MXFP4, scale_rule="round"), r"scale_rule='round' is not a known policy"),
        (lambda: evolve(MXFP4, inf_block="ignore"), r"inf_block='ignore' is not a known policy"),
        (lambda: evolve(MXFP4, padding="wrap"), r"padding='wrap' is not a known policy"),
        (lambda: evolve(FP4_E2M1, sr_bits=0), r"sr_bits must be between 1 and 24, got 0"),
        (lambda: evolve(FP4_E2M1, overflow="nan"), r"fp4_e2m1: overflow='nan' needs a NaN code"),
        (lambda: evolve(MXFP4, name="b", block_size=0), r"b: block_size must be positive"),
    ],
)
def test_unknown_policy_values_fail_at_construction(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_stochastic_rounding_without_a_seed_under_deterministic() -> None:
    sr = evolve(FP4_E2M1, name="fp4_e2m1_sr", rounding="stochastic")
    for call in (lowbit.quantize, lowbit.fake_quant):
        with pytest.raises(ValueError, match=r"'fp4_e2m1_sr' rounds stochastically and deterministic=True, but no seed"):
            call(X, sr, deterministic=True)
        call(X, sr, deterministic=True, seed=1)
        call(X, evolve(sr, sr_seed=1), deterministic=True)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\), got -1"):
        lowbit.quantize(X, sr, seed=-1)
    assert isinstance(lowbit.quantize(X, sr).seed, int)  # not deterministic: a fresh seed, recorded


def test_unknown_backend_lists_the_close_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown backend 'numbaa'; closest: numba"):
        lowbit.fake_quant(X, "mxfp4", backend="numbaa")
    with pytest.raises(TypeError, match=r"backend must be a string"):
        lowbit.fake_quant(X, "mxfp4", backend=None)  # type: ignore[arg-type]


def test_unknown_format_lists_the_close_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown format 'mxfp5'; closest: mxfp4"):
        lowbit.quantize(X, "mxfp5")
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError
        lowbit.fake_quant(X, "nvpf4")


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_torchao_presets_refuse_inputs_torchao_does_not_take(dtype: str) -> None:
    message = rf"'mxfp4@torchao' reproduces torchao 0.18, which takes float32 or bfloat16 input; got {dtype}"
    with pytest.raises(TypeError, match=message):
        lowbit.fake_quant(X.astype(dtype), "mxfp4@torchao")


def test_dequantize_argument_errors() -> None:
    with pytest.raises(TypeError, match=r"q must be a Quantized \(from lowbit.quantize\), got ndarray"):
        lowbit.dequantize(X)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dtype must be one of float16, bfloat16, float32, float64, got 'int8'"):
        lowbit.dequantize(lowbit.quantize(X, "mxfp4"), dtype="int8")
