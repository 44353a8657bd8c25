"""Element formats scaled over whole axes: per-channel and per-token INT8, SmoothQuant, Hadamard.

Block formats carry their scales in the format (one per block of a fixed size); the
INT8 schemes of video-DiT quantization papers scale over a whole axis instead: a weight
row (one output channel), an activation row (one token) or a whole tensor. Here the
scale is a float32 tensor computed by the recipe and the element format (a registered
one, ``int8``) does the rounding:

    Q(x) = fake_quant(clamp(x / s, -qmax, qmax), element) * s,   qmax = 127 for int8

in float32, cast back to the input dtype. The clamp makes the grid symmetric (-128 is
never produced). ``s = amax / qmax`` over the axis (dynamic), or a calibrated constant
(static); an all-zero row gets ``s = 1``. Storage: 8 bits per element plus one float32
scale per row (dynamic) or per tensor.

SmoothQuant (Xiao et al., 2023) moves activation outliers into the weights with one
factor per input channel j, ``f_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``: the layer
computes ``(X / f) (W f)^T``, equal to ``X W^T`` before quantization. The online block
Hadamard transform rotates both operands the same way along the reduction axis,
``(X H)(W H)^T = X W^T`` for orthonormal H, spreading outliers before quantization.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch

from lowbit.emulate.api import Quantized, fake_quant
from lowbit.emulate.stats import QuantStats, error_stats, fake_quant_with_stats

__all__ = [
    "Scaling",
    "absmax_scale",
    "hadamard",
    "rotate",
    "rotation_size",
    "scaled_fake_quant",
    "scaled_fake_quant_with_stats",
    "smoothing_factors",
    "step_group",
]

#: The element format of the INT8 schemes and its largest symmetric magnitude.
INT8 = "int8"
INT8_MAX = 127.0
#: Storage of one scale (float32).
SCALE_BITS = 32


def _alpha(instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be in [0, 1] or None, got {value!r}")


def _groups(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a positive integer or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Scaling:
    """INT8 weights and activations scaled over whole axes (a recipe's ``scaling``).

    Weights: per output channel (one scale per row), quantized once. Activations:
    ``"token"``: per token, dynamic (one scale per row at every forward); ``"static"``:
    per tensor, from :func:`lowbit.emulate.calibrate`, a separate scale for each
    denoising step (each root forward since ``reset``), or for each of ``step_groups``
    equal ranges of steps. ``smoothquant``: the SmoothQuant migration strength alpha
    (None: off); its factors also come from calibration.
    """

    activation: Literal["token", "static"] = attrs.field(
        default="token", validator=attrs.validators.in_(("token", "static"))
    )
    smoothquant: float | None = attrs.field(default=None, validator=_alpha)
    step_groups: int | None = attrs.field(default=None, validator=_groups)

    @property
    def needs_calibration(self) -> bool:
        return self.activation == "static" or self.smoothquant is not None


def step_group(step: int, steps: int, groups: int) -> int:
    """The group of denoising step ``step`` when ``steps`` steps are cut into ``groups``
    equal ranges (step ``t`` is in group ``t * groups // steps``)."""
    return step * groups // steps


def absmax_scale(x: torch.Tensor, per_row: bool = True) -> torch.Tensor:
    """float32 scale amax(|x|) / 127 over the last axis (``per_row``) or the whole tensor; 1 where amax is 0."""
    a = x.detach().abs().float()
    amax = a.amax(dim=-1, keepdim=True) if per_row else a.amax()
    return torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))


def _scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(x / s, -127, 127)`` in float32: the values the INT8 element format rounds."""
    return (x.float() / scale).clamp(-INT8_MAX, INT8_MAX)


def scaled_fake_quant(x: torch.Tensor, scale: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``Q(x)`` of the module docstring with INT8 elements (float32, cast to x's dtype)."""
    return (fake_quant(_scaled(x, scale), INT8, backend=backend) * scale).to(x.dtype)


def scaled_fake_quant_with_stats(
    x: torch.Tensor, scale: torch.Tensor, *, backend: str = "auto", rows: bool = True
) -> tuple[torch.Tensor, QuantStats, Quantized]:
    """:func:`scaled_fake_quant`, its statistics (error and clipping against ``x``; bits:
    8 per element plus 32 per scale, one per row when ``rows`` else one in all) and the
    :class:`Quantized` INT8 codes of ``x / scale`` (``dequantize(q) * scale`` in float32,
    cast to x's dtype, is the first result)."""
    n_scales = x.numel() // x.shape[-1] if rows else 1
    y, stats, q = fake_quant_with_stats(_scaled(x, scale), INT8, backend=backend, extra_bits=SCALE_BITS * n_scales)
    out = (y * scale).to(x.dtype)
    # error against x itself (the clamp is part of the quantizer); clipped: the values
    # that round beyond 127 (|x / s| >= 127.5 under ties-to-even)
    err = error_stats(x, out)
    clipped = int((x.detach().float().abs() / scale >= INT8_MAX + 0.5).sum())
    return out, attrs.evolve(stats, sq_error=err.sq_error, sq_signal=err.sq_signal, clipped=clipped), q


def smoothing_factors(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant factors per input channel: ``max|X_j|^alpha / max|W_j|^(1 - alpha)``,
    1 where either maximum is 0 (float32)."""
    w_amax = weight.detach().abs().float().amax(dim=0)
    a = act_amax.float()
    f = a.pow(alpha) / w_amax.pow(1.0 - alpha)
    return torch.where((a > 0) & (w_amax > 0), f, torch.ones_like(f))


@torch.no_grad()
def hadamard(n: int) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix of order ``n`` (a power of two), float32."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard order must be a power of two, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def rotation_size(k: int, size: int) -> int:
    """The Hadamard block used on a reduction axis of ``k``: the largest power of two that
    divides ``k``, at most ``size``."""
    return min(size, k & -k)


def rotate(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` times the block-diagonal Hadamard transform of blocks of :func:`rotation_size`
    along its last axis (in float32 or float64, cast back)."""
    k = x.shape[-1]
    n = rotation_size(k, size)
    if n == 1:
        return x
    dtype = torch.promote_types(x.dtype, torch.float32)
    h = hadamard(n).to(x.device, dtype)
    blocks = x.to(dtype).reshape(*x.shape[:-1], k // n, n) @ h
    return blocks.reshape(x.shape).to(x.dtype)
