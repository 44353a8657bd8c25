"""Video metrics against hand-derived values and scikit-image's SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from lowbit.models.metrics import detector_agreement, flicker, flow_error, psnr, ssim, temporal_psnr, velocity_error
from lowbit.models.shapes import Caption, render


def _smooth_video(seed: int, shape: tuple[int, ...] = (2, 3, 3, 32, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(shape[:-2] + (8, 8), generator=g, dtype=torch.float64) * 2 - 1
    up = torch.nn.functional.interpolate(coarse.flatten(0, -3)[:, None], size=shape[-2:], mode="bilinear")
    return up.reshape(shape)


# ---------------------------------------------------------------------------
# PSNR


def test_psnr_hand_derived() -> None:
    a = torch.zeros(2, 3, 2, 4, 4)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01: 10 log10(4 / 0.01) = 10 log10(400)
    b[1, :, :, :2, :2] = 1.0  # a quarter of the elements off by 1: MSE 0.25, 10 log10(16)
    np.testing.assert_allclose(psnr(a, b).numpy(), [10 * math.log10(400), 10 * math.log10(16)], rtol=1e-6)
    assert psnr(a[0], a[0]).item() == math.inf and psnr(a[0], b[0]).shape == ()


# ---------------------------------------------------------------------------
# SSIM


def test_ssim_matches_scikit_image() -> None:
    a = _smooth_video(1)
    b = (a + 0.15 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).clamp(-1, 1)
    expected = [
        np.mean(
            [
                structural_similarity(
                    a[v, :, t].permute(1, 2, 0).numpy(),
                    b[v, :, t].permute(1, 2, 0).numpy(),
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=2,
                    channel_axis=-1,
                )
                for t in range(a.shape[2])
            ]
        )
        for v in range(a.shape[0])
    ]
    got = ssim(a, b).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert 0.2 < got.min() and got.max() < 0.99  # a real, partial similarity


def test_ssim_identical_and_constant_images() -> None:
    a = _smooth_video(3)
    np.testing.assert_allclose(ssim(a, a).numpy(), [1.0, 1.0], rtol=1e-12)
    # constant frames: no variance, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), C1 = (0.01 * 2)^2
    m1, m2, c1 = 0.5, -0.25, (0.01 * 2) ** 2
    x, y = torch.full((3, 2, 16, 16), m1), torch.full((3, 2, 16, 16), m2)
    assert ssim(x, y).item() == pytest.approx((2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1), rel=1e-12)


# ---------------------------------------------------------------------------
# temporal metrics


def test_temporal_psnr_hand_derived() -> None:
    a = torch.zeros(3, 3, 8, 8)
    assert temporal_psnr(a, a + 0.3).item() == math.inf  # a constant offset keeps the motion
    b = a.clone()
    b[:, 1] = 0.2  # differences +0.2 then -0.2 everywhere: MSE 0.04, 10 log10(16 / 0.04)
    assert temporal_psnr(a, b).item() == pytest.approx(10 * math.log10(400), rel=1e-6)


def test_flicker_closed_forms() -> None:
    t = torch.arange(6, dtype=torch.float64)
    ramp = (0.1 * t).view(1, 6, 1, 1).expand(3, 6, 4, 4)
    assert flicker(ramp).item() == pytest.approx(0.0, abs=1e-15)
    # 0.5 (-1)^t: second difference 0.5 (1 + 2 + 1) = 2 in magnitude
    alternating = (0.5 * (-1) ** t).view(1, 6, 1, 1).expand(3, 6, 4, 4)
    # c t^2: second difference 2c
    quadratic = (0.05 * t**2).view(1, 6, 1, 1).expand(3, 6, 4, 4)
    np.testing.assert_allclose(flicker(torch.stack([alternating, quadratic])).numpy(), [2.0, 0.1], rtol=1e-12)


# ---------------------------------------------------------------------------
# optical flow, detectors, velocity


def test_flow_error_zero_for_identical_and_positive_for_different_motion() -> None:
    right = render(Caption(0, 1, 1), (10.0, 16.0))  # red square moving right
    left = render(Caption(0, 1, 0), (22.0, 16.0))  # the same square moving left
    videos = torch.stack([right, left])
    assert flow_error(videos, videos).tolist() == [0.0, 0.0]
    err = flow_error(right, left).item()
    still = torch.stack([right[:, :1]] * 8, dim=1)[:, :, 0]  # the first frame held: no motion
    assert err > 0.5 and flow_error(right, still).item() > 0.1


def _sliding_texture(shift: float, frames: int = 8, size: int = 32) -> torch.Tensor:
    """A grey (3, T, H, W) video of smooth texture moving right by ``shift`` pixels per
    frame: frame t is f(x - shift t, y) of a fixed sum of sinusoids, sampled anew per
    frame (no wrap-around). The texture has gradients in both axes everywhere (periods
    11 to 24 pixels, more than twice the largest shift), so the flow is defined at every
    pixel."""
    axis = torch.arange(size, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    video = torch.stack(
        [
            0.4 * torch.sin(2 * math.pi * (x - shift * t) / 16 + 0.3) * torch.cos(2 * math.pi * y / 24)
            + 0.3 * torch.sin(2 * math.pi * ((x - shift * t) / 11 + y / 13))
            for t in range(frames)
        ]
    )
    return video.expand(3, -1, -1, -1)


@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0])
def test_flow_error_of_a_known_shift(shift: float) -> None:
    # The true flow of the moving video is (shift, 0) at every pixel and that of the still
    # video (shift 0) is 0, so the endpoint error is `shift`; against the same texture
    # moving left it is 2 shift. Farneback fits local quadratic polynomials, so it is only
    # approximate (most where texture enters and leaves at the borders): measured within
    # 1% here (e.g. 0.9925 and 1.9841 for shift 1); the tolerance is 3%.
    right, still, left = (_sliding_texture(s) for s in (shift, 0.0, -shift))
    assert flow_error(right, still).item() == pytest.approx(shift, rel=0.03)
    assert flow_error(right, left).item() == pytest.approx(2 * shift, rel=0.03)


def test_detector_agreement() -> None:
    a = torch.stack([render(Caption(0, 0, 0), (20.0, 16.0)), render(Caption(2, 1, 2), (16.0, 22.0))])
    b = torch.stack([render(Caption(0, 0, 0), (20.0, 16.0)), render(Caption(1, 1, 3), (16.0, 10.0))])
    assert detector_agreement(a, b) == {"colour": 0.5, "shape": 1.0, "direction": 0.5}
    blank = torch.full_like(a, -1.0)  # no foreground: nothing detected, nothing agrees
    assert detector_agreement(blank, blank) == {"colour": 0.0, "shape": 0.0, "direction": 0.0}


def test_velocity_error_hand_derived() -> None:
    ref = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    v = torch.tensor([[3.0, 5.0], [0.0, 0.0], [1.0, 0.0]])
    assert velocity_error(ref, v).tolist() == [0.2, 0.0, math.inf]
    assert velocity_error(torch.ones(2, 4, 3, 3), torch.ones(2, 4, 3, 3) * 1.5).tolist() == pytest.approx([0.5, 0.5])


def test_clear_errors() -> None:
    v = torch.zeros(3, 4, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        psnr(v, torch.zeros(3, 4, 16, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        psnr(torch.zeros(4, 4, 16, 16), torch.zeros(4, 4, 16, 16))
    with pytest.raises(ValueError, match="at least 3 frames"):
        flicker(v[:, :2])
    with pytest.raises(ValueError, match="11x11"):
        ssim(v[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="batch first"):
        velocity_error(torch.zeros(2, 3), torch.zeros(3, 2))
