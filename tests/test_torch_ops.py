"""torch.ops.lowbit.fake_quant: the custom op equals lowbit.fake_quant bit for bit, passes
torch.library's opcheck, has a CUDA kernel (equal to Numba's results where TRITON_INTERPRET=0
and CUDA are present), gives a zero or straight-through gradient,
and survives torch.compile (Inductor, on the CPU) and torch.export."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_triton import DEVICE

import lowbit
from lowbit.emulate import fake_quant_op
from lowbit.testing.conformance import assert_same_bits


def _x(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-6, 6, shape, generator=g).float())
    x.view(-1)[:4] = torch.tensor([float("nan"), -0.0, float("inf"), 2.5])
    return x.to(dtype)


@pytest.mark.parametrize(
    ("fmt", "dtype", "axis", "seed"),
    [
        ("mxfp4", torch.float32, None, None),
        ("nvfp4", torch.bfloat16, 0, None),
        ("fp8_e4m3", torch.float16, None, None),
        ("mxfp6_e3m2_sr", torch.float32, 1, 12345),
        ("nvfp4_2level@torchao", torch.float32, -1, None),
    ],
)
def test_op_equals_fake_quant(fmt: str, dtype: torch.dtype, axis: int | None, seed: int | None) -> None:
    x = _x((6, 40), dtype)
    expected = lowbit.fake_quant(x, fmt, axis=axis, seed=seed, backend="numba")
    got = fake_quant_op(x, fmt, axis=axis, seed=seed)
    assert got.is_contiguous()
    assert_same_bits(expected, got)


def test_opcheck() -> None:
    # schema, fake kernel against the real one, autograd registration, dispatch (opcheck
    # compares outputs with assert_close, which takes NaN as a difference: finite input)
    x = _x((4, 32)).nan_to_num(0.0, 0.0, 0.0).requires_grad_()
    for ste in (False, True):
        torch.library.opcheck(torch.ops.lowbit.fake_quant.default, (x, "mxfp4", -1, None, ste))


def test_cuda_kernel_is_registered() -> None:
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lowbit::fake_quant", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lowbit::fake_quant", "CPU")


@pytest.mark.skipif(DEVICE != "cuda" or not torch.cuda.is_available(), reason="needs TRITON_INTERPRET=0 and CUDA")
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "dialectfp4"])
def test_cuda_kernel_equals_numba(fmt: str) -> None:
    x = _x((6, 64))
    assert_same_bits(lowbit.fake_quant(x, fmt, backend="numba"), fake_quant_op(x.to(DEVICE), fmt).cpu())


@pytest.mark.parametrize("ste", [False, True])
def test_gradient(ste: bool) -> None:
    x = _x((3, 32)).requires_grad_()
    w = torch.arange(96.0).reshape(3, 32)
    (fake_quant_op(x, "mxfp4", ste=ste) * w).sum().backward()
    assert_same_bits(w if ste else torch.zeros_like(w), x.grad)


class _QuantLinear(torch.nn.Module):
    """A linear layer whose weight and input go through the op (weights along the
    input features, activations along the last axis)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 16)
        torch.nn.init.normal_(self.linear.weight, generator=torch.Generator().manual_seed(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant_op(self.linear.weight, "nvfp4", axis=1, ste=True)
        y = torch.nn.functional.linear(fake_quant_op(x, "mxfp4", ste=True), w, self.linear.bias)
        return fake_quant_op(torch.relu(y), "fp8_e4m3", ste=True)


def _eager_and(run: Any) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = _QuantLinear()
    x = _x((8, 64), seed=1)
    x.view(-1)[:4] = 1.0  # finite input: the linear layer would spread a NaN
    with torch.no_grad():
        return model(x), run(model, x)


def test_torch_compile_on_cpu() -> None:
    torch._dynamo.reset()
    eager, compiled = _eager_and(lambda m, x: torch.compile(m, fullgraph=True)(x))
    assert_same_bits(eager, compiled)
    assert (eager != 0).any()


def test_torch_export() -> None:
    eager, exported = _eager_and(lambda m, x: torch.export.export(m, (x,)).module()(x))
    assert_same_bits(eager, exported)
    graph = torch.export.export(_QuantLinear(), (torch.zeros(8, 64),)).graph
    assert sum(n.target is torch.ops.lowbit.fake_quant.default for n in graph.nodes) == 3


def test_compiled_training_step_uses_ste() -> None:
    torch._dynamo.reset()
    x = _x((8, 64), seed=2).nan_to_num(0.0, 0.0, 0.0)
    grads = []
    for run in (lambda m: m, torch.compile):
        torch.manual_seed(0)  # the same bias
        model = _QuantLinear()
        run(model)(x).sum().backward()
        grads.append(model.linear.weight.grad)
    assert np.isfinite(grads[0].numpy()).all() and (grads[0] != 0).any()
    # the compiled backward may sum in another order: equal up to rounding
    torch.testing.assert_close(grads[1], grads[0])
