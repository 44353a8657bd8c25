"""quantize / dequantize / fake_quant: input checking, layout, packing, dispatch.

Layout: the block axis is moved last and the other axes flattened into rows, so
a backend sees a C-contiguous (rows, n) array; blocks never straddle rows and a
partial last block is padded with zeros (or refused, per the spec's padding).
float16 and bfloat16 inputs are widened to float32 (exact); float64 stays
float64, so it is rounded once, from its own value. The input is never written.

Stochastic rounding draws its bits from (seed, row * n + column) in that layout
(see :func:`lowbit.emulate.random_bits`).
"""

from __future__ import annotations

import secrets
from typing import Any

import attrs
import numpy as np
from attrs import frozen

from lowbit.emulate.backends import Parts, backend_for
from lowbit.formats import resolve
from lowbit.formats.spec import BLOCK_SPECS, BlockFormat, Formatbook

try:  # torch is a hard dependency, but keep numpy-only use cheap to import
    import torch
except ImportError:  # pragma: no cover - torch is pinned in pyproject
    torch = None  # type: ignore[assignment]

FLOAT_KINDS = ("float16", "bfloat16", "float32", "float64")


@frozen(kw_only=True)
class Quantized:
    """A quantized tensor: packed codes, per-block scales, tensor scale, spec.

    codes        uint8, shape (rows, packed columns): codes of 4 bits or fewer
                 two per byte (``spec.nibble_order``), wider codes one per byte
    scale_codes  scale codes per block, shape (rows, blocks), or None
    scales       the scale values (float64) matching ``scale_codes``, or None
    tensor_scale the float32 per-tensor scale, or None
    nan_mask     packed bits marking NaN inputs of element formats without a
                 NaN code (policy ``nan='keep'``), or None
    dialect_ids  formatbooks: the dialect each block chose, shape (rows, blocks)
    seed         the seed stochastic rounding used (None otherwise)
    """

    spec: Any
    shape: tuple[int, ...]
    axis: int
    dtype: str
    container: str
    n: int
    codes: np.ndarray
    scale_codes: np.ndarray | None = None
    scales: np.ndarray | None = None
    tensor_scale: float | None = None
    nan_mask: np.ndarray | None = None
    dialect_ids: np.ndarray | None = None
    seed: int | None = None

    @property
    def element(self) -> Any:
        """The format of the stored codes."""
        return code_format(self.spec)

    def unpacked_codes(self) -> np.ndarray:
        """The element codes, one per element, shape (rows, n)."""
        return unpack_codes(self.codes, self.element, self.n)

    def nbytes(self) -> int:
        """Bytes of storage: packed codes, scale codes and dialect ids (at their bit widths),
        tensor scale."""
        total = self.codes.nbytes
        if self.scale_codes is not None:
            total += (self.scale_codes.size * self.spec.scale.bits + 7) // 8
        if self.dialect_ids is not None:
            total += (self.dialect_ids.size * self.spec.dialect_id_bits + 7) // 8
        if self.tensor_scale is not None:
            total += 4
        return total

    def replace(self, **kw: Any) -> "Quantized":
        return attrs.evolve(self, **kw)


# ---------------------------------------------------------------------------
# packing


def code_format(spec: Any) -> Any:
    """The format whose codes a quantized ``spec`` stores (its element, or its code view)."""
    if isinstance(spec, Formatbook):
        return spec.code_format
    return spec.element if isinstance(spec, BlockFormat) else spec


def pack_codes(codes: np.ndarray, element: Any) -> np.ndarray:
    """Pack (rows, n) codes: 4 bits or fewer two per byte, else one per byte (uint8/uint16)."""
    if element.bits > 8:
        return codes.astype(np.uint16)
    codes = codes.astype(np.uint8)
    if element.bits > 4:
        return codes
    rows, n = codes.shape
    if n % 2:
        codes = np.concatenate([codes, np.zeros((rows, 1), np.uint8)], axis=1)
    first, second = codes[:, 0::2], codes[:, 1::2]
    if element.nibble_order == "low_first":
        return first | (second << 4)
    return (first << 4) | second


def unpack_codes(packed: np.ndarray, element: Any, n: int) -> np.ndarray:
    if element.bits > 4:
        return packed
    rows = packed.shape[0]
    lo, hi = packed & 0xF, packed >> 4
    first, second = (lo, hi) if element.nibble_order == "low_first" else (hi, lo)
    out = np.empty((rows, 2 * packed.shape[1]), np.uint8)
    out[:, 0::2], out[:, 1::2] = first, second
    return np.ascontiguousarray(out[:, :n])


# ---------------------------------------------------------------------------
# input and output conversion


def _kind_of(x: Any) -> tuple[str, str]:
    """(container, float kind) of ``x``; a clear error for anything else."""
    if torch is not None and isinstance(x, torch.Tensor):
        kind = str(x.dtype).removeprefix("torch.")
        if kind not in FLOAT_KINDS:
            raise TypeError(f"x must be a floating tensor (float16, bfloat16, float32, float64), got {x.dtype}")
        if x.device.type != "cpu":
            raise TypeError(f"x is on {x.device}; the CPU backends take CPU tensors")
        return "torch", kind
    if isinstance(x, np.ndarray):
        kind = x.dtype.name
        if kind not in FLOAT_KINDS:
            raise TypeError(f"x must be a floating array (float16, bfloat16, float32, float64), got dtype {x.dtype}")
        return "numpy", kind
    raise TypeError(f"x must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _to_numpy(x: Any, container: str, kind: str) -> np.ndarray:
    """A float32/float64 numpy array with the same values (never a writable alias of x)."""
    if container == "torch":
        x = x.detach()
        if kind == "bfloat16":
            return _bf16_bits_to_f32(x.contiguous().view(torch.int16).numpy().view(np.uint16))
        x = x.numpy()
    if kind == "bfloat16":
        return _bf16_bits_to_f32(np.ascontiguousarray(x).view(np.uint16))
    if kind == "float16":
        return x.astype(np.float32)
    return x


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _from_result(y: np.ndarray, container: str, kind: str) -> Any:
    """Backend output (floats, or uint16 bit patterns for 16-bit kinds) -> x's container."""
    if kind in ("float16", "bfloat16"):
        bits = y.view(np.uint16)
        if container == "torch":
            return torch.from_numpy(bits.view(np.int16).copy()).view(getattr(torch, kind))
        if kind == "float16":
            return bits.view(np.float16)
        import ml_dtypes  # a numpy bfloat16 array can only exist with ml_dtypes installed

        return bits.view(ml_dtypes.bfloat16)
    y = y.astype(np.dtype(kind), copy=False)
    return torch.from_numpy(y) if container == "torch" else y


def _normalize_axis(axis: int, ndim: int) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for a tensor with {ndim} dimensions")
    return int(axis) % ndim


def _layout(x: np.ndarray, axis: int) -> np.ndarray:
    """(rows, n) C-contiguous view/copy with ``axis`` last."""
    moved = np.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    return np.ascontiguousarray(moved.reshape(-1, n) if moved.size else np.empty((int(np.prod(moved.shape[:-1])), n), x.dtype))


def _unlayout(y: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(y.reshape(moved_shape), -1, axis)


def _resolve_seed(spec: Any, seed: int | None, deterministic: bool) -> int | None:
    element = code_format(spec)
    if element.rounding != "stochastic":
        return None
    if seed is None:
        seed = element.sr_seed
    if seed is None:
        if deterministic:
            raise ValueError(
                f"format {spec.name!r} rounds stochastically and deterministic=True, but no seed was given: "
                "pass seed=... or set the format's sr_seed"
            )
        seed = secrets.randbits(32)
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return int(seed)


def _check_backend_name(backend: str) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    return "numba" if backend == "auto" else backend


def _check_arithmetic(spec: Any, kind: str) -> None:
    if getattr(spec, "arithmetic", "exact") == "torchao" and kind not in ("float32", "bfloat16"):
        raise TypeError(
            f"format {spec.name!r} reproduces torchao 0.18, which takes float32 or bfloat16 input; got {kind}"
        )


def _prepare(x: Any, fmt: Any, axis: int | None) -> tuple[Any, str, str, np.ndarray, int, tuple[int, ...]]:
    spec = resolve(fmt)
    container, kind = _kind_of(x)
    _check_arithmetic(spec, kind)
    arr = _to_numpy(x, container, kind)
    shape = tuple(arr.shape)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if axis is None:
        axis = spec.axis if isinstance(spec, BLOCK_SPECS) else -1
    ax = _normalize_axis(axis, arr.ndim)
    x2 = _layout(arr, ax)
    if isinstance(spec, BLOCK_SPECS) and spec.padding == "error" and x2.shape[1] % spec.block_size:
        raise ValueError(
            f"format {spec.name!r} has padding='error' and block_size={spec.block_size}, "
            f"which does not divide the length {x2.shape[1]} of axis {ax}"
        )
    return spec, container, kind, x2, ax, shape


# ---------------------------------------------------------------------------
# the public functions


def quantize(
    x: Any,
    fmt: Any,
    *,
    axis: int | None = None,
    backend: str = "auto",
    seed: int | None = None,
    deterministic: bool = False,
) -> Quantized:
    """Quantize ``x`` (torch tensor or numpy array) to ``fmt`` (a name or a spec).

    ``axis`` is the block axis (default: the spec's). ``backend``: "auto" (Numba
    on the CPU), "numba", "reference" or any registered backend. ``seed`` sets
    stochastic rounding's random bits; ``deterministic=True`` refuses to draw a
    fresh seed when neither ``seed`` nor the spec's ``sr_seed`` is set.
    """
    spec, container, kind, x2, ax, shape = _prepare(x, fmt, axis)
    s = _resolve_seed(spec, seed, deterministic)
    parts = backend_for(spec, _check_backend_name(backend)).quantize(spec, x2, seed=s)
    element = code_format(spec)
    return Quantized(
        spec=spec,
        shape=shape,
        axis=ax,
        dtype=kind,
        container=container,
        n=x2.shape[1],
        codes=pack_codes(parts.codes, element),
        scale_codes=parts.scale_codes,
        scales=parts.scales,
        tensor_scale=parts.tensor_scale,
        nan_mask=None if parts.nan_mask is None else np.packbits(parts.nan_mask, axis=-1),
        dialect_ids=parts.dialect_ids,
        seed=s,
    )


def dequantize(q: Quantized, *, backend: str = "auto", dtype: str | None = None) -> Any:
    """The values ``q`` stands for, in the container and dtype that were quantized.

    ``dtype`` (one of float16, bfloat16, float32, float64) overrides the dtype.
    """
    if not isinstance(q, Quantized):
        raise TypeError(f"q must be a Quantized (from lowbit.quantize), got {type(q).__name__}")
    kind = q.dtype if dtype is None else str(dtype).removeprefix("torch.")
    if kind not in FLOAT_KINDS:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_KINDS)}, got {dtype!r}")
    nan_mask = None
    if q.nan_mask is not None:
        nan_mask = np.unpackbits(q.nan_mask, axis=-1, count=q.n).astype(bool)
    parts = Parts(
        codes=q.unpacked_codes(),
        scale_codes=q.scale_codes,
        scales=q.scales,
        tensor_scale=q.tensor_scale,
        nan_mask=nan_mask,
        dialect_ids=q.dialect_ids,
    )
    y = backend_for(q.spec, _check_backend_name(backend)).dequantize(q.spec, parts, kind)
    return _from_result(_unlayout(y, _moved_shape_source(q.shape), q.axis).reshape(q.shape), q.container, kind)


def fake_quant(
    x: Any,
    fmt: Any,
    *,
    axis: int | None = None,
    backend: str = "auto",
    seed: int | None = None,
    deterministic: bool = False,
) -> Any:
    """``dequantize(quantize(x, fmt, ...))`` in one pass: same shape, dtype and container as ``x``."""
    spec, container, kind, x2, ax, shape = _prepare(x, fmt, axis)
    s = _resolve_seed(spec, seed, deterministic)
    y = backend_for(spec, _check_backend_name(backend)).fake_quant(spec, x2, seed=s, out=kind)
    return _from_result(_unlayout(y, _moved_shape_source(shape), ax).reshape(shape), container, kind)


def _moved_shape_source(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if shape else (1,)
