"""``fake_quant`` as a torch.library custom op, for torch.compile and torch.export.

``torch.ops.lowbit.fake_quant(x, fmt, axis, seed, ste)`` is
:func:`lowbit.fake_quant` of a registered format name: the CPU kernel runs the
Numba backend, the CUDA kernel the Triton backend (bit-identical to each
other), and the fake (meta) kernel gives a contiguous tensor of x's shape and
dtype, so compiled and exported graphs keep the op as one opaque node. The
result is always a new contiguous tensor.

Gradient: fake_quant is piecewise constant, so its derivative is zero almost
everywhere; ``ste=True`` passes the incoming gradient through unchanged instead
(the straight-through estimator of quantization-aware training).

Only registered format names cross the op boundary (a schema takes strings,
not spec values); register a custom spec through a plugin to use it here.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.emulate import api


def _run(x: torch.Tensor, fmt: str, axis: int | None, seed: int | None, backend: str) -> torch.Tensor:
    return api.fake_quant(x, fmt, axis=axis, seed=seed, backend=backend).contiguous()


@torch.library.custom_op("lowbit::fake_quant", mutates_args=(), device_types="cpu")
def _fake_quant(x: torch.Tensor, fmt: str, axis: int | None, seed: int | None, ste: bool) -> torch.Tensor:
    return _run(x, fmt, axis, seed, "numba")


@_fake_quant.register_kernel("cuda")
def _fake_quant_cuda(x: torch.Tensor, fmt: str, axis: int | None, seed: int | None, ste: bool) -> torch.Tensor:
    return _run(x, fmt, axis, seed, "triton")


@_fake_quant.register_fake
def _fake_quant_fake(x: torch.Tensor, fmt: str, axis: int | None, seed: int | None, ste: bool) -> torch.Tensor:
    return x.new_empty(x.shape)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.ste = inputs[4]


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    return (grad if ctx.ste else torch.zeros_like(grad)), None, None, None, None


_fake_quant.register_autograd(_backward, setup_context=_setup_context)


def fake_quant_op(
    x: torch.Tensor, fmt: str, *, axis: int | None = None, seed: int | None = None, ste: bool = False
) -> torch.Tensor:
    """``torch.ops.lowbit.fake_quant``: :func:`lowbit.fake_quant` of the registered format
    ``fmt`` along ``axis`` (default: the format's; Numba on the CPU, Triton on CUDA), traceable by torch.compile
    and torch.export; ``ste=True`` makes the gradient straight-through."""
    return torch.ops.lowbit.fake_quant(x, fmt, axis, seed, ste)
