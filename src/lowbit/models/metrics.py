"""Video quality metrics for a quantized model against full precision, from the same noise.

No learned metric (FVD, LPIPS, CLIP) is available offline, so these compare a
quantized model's videos with the full-precision model's videos sampled from the
same noise and prompt (reference first where it matters). Videos are torch
tensors ``(B, 3, T, H, W)`` or one video ``(3, T, H, W)``, RGB in [-1, 1] (data
range 2); every metric works in float64 and returns a float64 tensor with one
value per video (shape ``(B,)``, or ``()`` for one video), except
:func:`detector_agreement`, which returns fractions over the batch.

- :func:`psnr`: 10 log10(range^2 / MSE) over the whole video, range 2; inf when equal.
- :func:`ssim`: Wang et al. (2004) SSIM with an 11-tap Gaussian window (sigma
  1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population (co)variances,
  over the valid region (windows that fit inside the frame), computed per frame
  and channel and averaged over channels and frames (scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=2)`` per frame with ``channel_axis``).
- :func:`temporal_psnr`: PSNR of the frame differences x[t+1] - x[t] (range 4):
  motion fidelity.
- :func:`flicker`: mean |x[t+2] - 2 x[t+1] + x[t]| (one video, no reference).
- :func:`flow_error`: mean endpoint error between the Farneback optical flows
  (OpenCV) of consecutive frames of the two videos, in pixels.
- :func:`detector_agreement`: fraction of videos for which the analytic detectors
  of :mod:`lowbit.models.shapes` read the same colour, shape and direction.
- :func:`velocity_error`: relative L2 error ||v - v_ref|| / ||v_ref|| of the
  model's velocity (any tensors with the batch first).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from lowbit.models.shapes import detect

__all__ = ["detector_agreement", "flicker", "flow_error", "psnr", "ssim", "temporal_psnr", "velocity_error"]

DATA_RANGE = 2.0  # videos in [-1, 1]
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as OpenCV's RGB2GRAY


def _videos(a: torch.Tensor, name: str = "a") -> tuple[torch.Tensor, bool]:
    """``a`` as float64 (B, 3, T, H, W), and whether it came with a batch axis."""
    if not isinstance(a, torch.Tensor) or a.ndim not in (4, 5) or a.shape[-4] != 3:
        raise ValueError(f"{name} must be a video tensor (B, 3, T, H, W) or (3, T, H, W), got {getattr(a, 'shape', type(a).__name__)}")
    batched = a.ndim == 5
    return (a if batched else a[None]).detach().cpu().double(), batched


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    va, batched = _videos(a, "a")
    vb, _ = _videos(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return va, vb, batched


def _frames(v: torch.Tensor, at_least: int, metric: str) -> None:
    if v.shape[2] < at_least:
        raise ValueError(f"{metric} needs at least {at_least} frames, got {v.shape[2]}")


def _out(values: torch.Tensor, batched: bool) -> torch.Tensor:
    return values if batched else values[0]


def _psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)  # mse 0: inf


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR per video in dB, data range 2 (inf where the videos are equal)."""
    va, vb, batched = _pair(a, b)
    return _out(_psnr(va, vb, DATA_RANGE), batched)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM per video: the mean over frames and channels of the mean SSIM of each
    frame's channel (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 2)."""
    va, vb, batched = _pair(a, b)
    size, sigma, k1, k2 = 11, 1.5, 0.01, 0.03
    if min(va.shape[-2:]) < size:
        raise ValueError(f"ssim needs frames of at least {size}x{size} pixels, got {tuple(va.shape[-2:])}")
    n, c, t, h, w = va.shape
    win = _gaussian_window(size, sigma)
    rows, cols = win.view(1, 1, size, 1), win.view(1, 1, 1, size)

    def blur(x: torch.Tensor) -> torch.Tensor:  # valid region only
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, rows), cols)

    x = va.permute(0, 2, 1, 3, 4).reshape(-1, 1, h, w)  # one image per (video, frame, channel)
    y = vb.permute(0, 2, 1, 3, 4).reshape(-1, 1, h, w)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (k1 * DATA_RANGE) ** 2, (k2 * DATA_RANGE) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return _out(s.mean(dim=(1, 2, 3)).view(n, t * c).mean(dim=1), batched)


def temporal_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR per video of the frame differences x[t+1] - x[t] (data range 4), in dB."""
    va, vb, batched = _pair(a, b)
    _frames(va, 2, "temporal_psnr")
    return _out(_psnr(va.diff(dim=2), vb.diff(dim=2), 2 * DATA_RANGE), batched)


def flicker(a: torch.Tensor) -> torch.Tensor:
    """Mean absolute second temporal difference |x[t+2] - 2 x[t+1] + x[t]| per video."""
    va, batched = _videos(a)
    _frames(va, 3, "flicker")
    return _out(va.diff(n=2, dim=2).abs().flatten(1).mean(dim=1), batched)


def _gray(v: torch.Tensor) -> np.ndarray:
    """(T, H, W) float32 luma on OpenCV's 8-bit scale [0, 255] (clipped, not rounded)."""
    luma = torch.tensordot(torch.tensor(LUMA, dtype=torch.float64), v.clamp(-1, 1), dims=([0], [0]))
    return ((luma + 1) * 127.5).numpy().astype(np.float32)


def flow_error(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    pyr_scale: float = 0.5,
    levels: int = 3,
    winsize: int = 15,
    iterations: int = 3,
    poly_n: int = 5,
    poly_sigma: float = 1.2,
) -> torch.Tensor:
    """Mean endpoint error (pixels) per video between the optical flows of a and b.

    Each flow is OpenCV's Farneback flow (``cv2.calcOpticalFlowFarneback``, these
    parameters, flags 0: the OpenCV tutorial's values) from frame t to t+1 of the
    video's BT.601 luma on the [0, 255] scale (float, clipped to the range); the
    error is ||flow_a - flow_b|| per pixel, averaged over pixels and frame pairs.
    """
    va, vb, batched = _pair(a, b)
    _frames(va, 2, "flow_error")
    errors = []
    for x, y in zip(va, vb):
        gx, gy = _gray(x), _gray(y)
        per_pair = []
        for t in range(len(gx) - 1):
            fx, fy = (
                cv2.calcOpticalFlowFarneback(g[t], g[t + 1], None, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, 0)
                for g in (gx, gy)
            )
            per_pair.append(float(np.sqrt(((fx.astype(np.float64) - fy) ** 2).sum(axis=-1)).mean()))
        errors.append(sum(per_pair) / len(per_pair))
    return _out(torch.tensor(errors, dtype=torch.float64), batched)


def detector_agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Fraction of videos whose detected colour, shape and direction
    (:func:`lowbit.models.shapes.detect`) are the same on a and b; a detector that
    finds nothing (None) never agrees."""
    va, vb, _ = _pair(a, b)
    hits = np.zeros(3)
    for x, y in zip(va, vb):
        hits += [p is not None and p == q for p, q in zip(detect(x.float()), detect(y.float()))]
    return dict(zip(("colour", "shape", "direction"), (hits / len(va)).tolist()))


def velocity_error(v_ref: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Relative L2 error ||v - v_ref|| / ||v_ref|| per batch item (dim 0), float64.

    A zero reference gives 0 where v is zero too and inf otherwise.
    """
    if not isinstance(v_ref, torch.Tensor) or not isinstance(v, torch.Tensor) or v_ref.shape != v.shape or v.ndim < 1:
        raise ValueError(
            f"v_ref and v must be tensors of one shape with the batch first, got {getattr(v_ref, 'shape', v_ref)} "
            f"and {getattr(v, 'shape', v)}"
        )
    r, x = (t.detach().cpu().double().reshape(len(t), -1) for t in (v_ref, v))
    num, den = (x - r).norm(dim=1), r.norm(dim=1)
    return torch.where(num == 0, torch.zeros_like(num), num / den)  # den 0 < num: inf

