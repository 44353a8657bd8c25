"""The main job (``lowbit demo``): the bundled video DiT under every built-in recipe.

Every variant samples the same captions from the same noise (fixed seeds), so each
quantized video is compared with its full-precision twin (the "FVD-FP16" idea of
the SemanticDialect paper, here with frame-level metrics; no learned metric is
available offline). Outputs, in the chosen folder:

- ``metrics.json``: the table below, plus each recipe's emulation report;
- ``side_by_side.gif``: one row per caption, one column per variant;
- ``frames.png``: every frame of the first captions, one row per variant;
- ``psnr.png``: PSNR against full precision and effective bits per recipe;
- ``<recipe>/``: the per-layer SQNR and dialect-usage plots of that recipe's report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from lowbit.emulate import apply, calibrate
from lowbit.emulate.recipes import Recipe, resolve_recipe
from lowbit.models import metrics
from lowbit.models.shapes import FRAMES, SIZE, Caption, all_captions
from lowbit.models.tiny_dit import TinyVideoDiT, load_bundled, sample

__all__ = ["CALIBRATION_CAPTIONS", "CALIBRATION_SEED", "DEMO_CAPTIONS", "DEMO_RECIPES", "Variant", "demo_noise", "run_variants", "metrics_rows", "write_outputs", "run"]

DEMO_CAPTIONS: tuple[str, ...] = (
    "red circle moving left",
    "green square moving right",
    "blue triangle moving up",
    "yellow circle moving down",
    "red triangle moving right",
    "green circle moving up",
    "blue square moving down",
    "yellow triangle moving left",
)
DEMO_RECIPES: tuple[str, ...] = (
    "fp8",
    "mxfp4",
    "nvfp4",
    "block_dialect",
    "semantic_dialect",
    "semantic_dialect_no_seda",
    "semantic_dialect_no_decomp",
    "six_bit",
    "static_w8a8",
    "w8a8_dynamic",
)
FULL = "full precision"
#: Captions and noise seed of the calibration run of recipes that need one (``six_bit``,
#: ``static_w8a8``): every fifth caption, which covers every colour, shape and direction,
#: from other noise than any sampled video.
CALIBRATION_CAPTIONS: tuple[Caption, ...] = tuple(all_captions()[::5])
CALIBRATION_SEED = 1000


@dataclass
class Variant:
    """One sampling run: its videos, per-step velocities, time and emulation report."""

    name: str
    videos: torch.Tensor
    velocities: list[torch.Tensor]
    seconds: float
    report: Any = None  # the lowbit.emulate Report of a recipe run; None for full precision


def demo_noise(n: int, seed: int = 0) -> torch.Tensor:
    """Noise for ``n`` videos: video ``i`` uses seed ``seed + i``, whatever ``n`` is."""
    return torch.stack(
        [torch.randn((3, FRAMES, SIZE, SIZE), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]
    )


def run_variants(
    model: TinyVideoDiT,
    captions: Sequence[Caption],
    noise: torch.Tensor,
    recipes: Sequence[str | Recipe],
    *,
    steps: int = 20,
    guidance: float = 3.0,
    stats: bool = True,
    progress: Progress | None = None,
) -> list[Variant]:
    """Full precision, then each recipe applied to ``model.transformer``, from the same noise.

    A recipe that needs calibration is first calibrated on one sampling run of
    :data:`CALIBRATION_CAPTIONS` (noise from :data:`CALIBRATION_SEED`) with the same
    steps and guidance; that run is not timed.
    """
    chosen = [resolve_recipe(r, {}) for r in recipes]
    total = (len(chosen) + 1 + sum(r.needs_calibration for r in chosen)) * steps
    task = None if progress is None else progress.add_task("sampling", total=total)
    calibration_noise = demo_noise(len(CALIBRATION_CAPTIONS), seed=CALIBRATION_SEED).to(noise.device)

    def calibration_run(name: str) -> None:
        def callback(i: int, t: torch.Tensor, v: torch.Tensor) -> None:
            if progress is not None:
                progress.update(task, advance=1, description=f"{'calibrating ' + name:<28}")

        sample(model, CALIBRATION_CAPTIONS, calibration_noise, steps=steps, guidance=guidance, callback=callback)

    def one(name: str) -> Variant:
        velocities: list[torch.Tensor] = []

        def callback(i: int, t: torch.Tensor, v: torch.Tensor) -> None:
            velocities.append(v.clone())
            if progress is not None:
                progress.update(task, advance=1, description=f"{name:<28}")

        t0 = time.perf_counter()
        videos = sample(model, captions, noise, steps=steps, guidance=guidance, callback=callback)
        return Variant(name, videos, velocities, time.perf_counter() - t0)

    out = [one(FULL)]
    for recipe in chosen:
        if recipe.needs_calibration:
            emulation = calibrate(model.transformer, recipe, lambda m, name=recipe.name: calibration_run(name), steps=steps,
                                  stats=stats, progress=False)  # fmt: skip
        else:
            emulation = apply(model.transformer, recipe, stats=stats)
        with emulation as emu:
            v = one(recipe.name)
            v.report = emu.report()
        out.append(v)
    return out


def _bits(report: Any, kind: str) -> float:
    return float(report.summary[f"{kind}_bits_per_element"])


def metrics_rows(variants: Sequence[Variant]) -> list[dict]:
    """One row per variant: quality against the first (full-precision) variant, bits and time.

    PSNR values are capped at 99 dB (identical videos), so the rows stay valid JSON."""
    ref = variants[0]
    rows = []
    for v in variants:
        agree = metrics.detector_agreement(ref.videos, v.videos)
        vel = [float(metrics.velocity_error(r, q).mean()) for r, q in zip(ref.velocities, v.velocities)]
        rows.append(
            {
                "variant": v.name,
                "psnr_db": float(metrics.psnr(ref.videos, v.videos).clamp(max=99.0).mean()),
                "ssim": float(metrics.ssim(ref.videos, v.videos).mean()),
                "temporal_psnr_db": float(metrics.temporal_psnr(ref.videos, v.videos).clamp(max=99.0).mean()),
                "flicker": float(metrics.flicker(v.videos).mean()),
                "flow_error": float(metrics.flow_error(ref.videos, v.videos).mean()),
                "agreement": agree,
                "velocity_error": float(np.mean(vel)),
                "weight_bits": _bits(v.report, "weight") if v.report is not None else 32.0,
                "activation_bits": _bits(v.report, "activation") if v.report is not None else 32.0,
                "seconds": v.seconds,
            }
        )
    return rows


def rows_table(rows: Sequence[dict], title: str) -> Table:
    table = Table(title=title)
    cols = ("variant", "PSNR dB", "SSIM", "temporal PSNR", "flicker", "flow err", "agree c/s/d", "vel err",
            "bits W/A", "time s")
    for c in cols:
        table.add_column(c, justify="left" if c == "variant" else "right")
    for i, r in enumerate(rows):
        a = r["agreement"]
        quality = (
            ["reference", "-", "-", f"{r['flicker']:.4f}", "-", "-", "-"]
            if i == 0
            else [
                f"{r['psnr_db']:.2f}",
                f"{r['ssim']:.4f}",
                f"{r['temporal_psnr_db']:.2f}",
                f"{r['flicker']:.4f}",
                f"{r['flow_error']:.3f}",
                f"{a['colour']:.2f}/{a['shape']:.2f}/{a['direction']:.2f}",
                f"{r['velocity_error']:.4f}",
            ]
        )
        table.add_row(r["variant"], *quality, f"{r['weight_bits']:.2f}/{r['activation_bits']:.2f}", f"{r['seconds']:.1f}")
    return table


def _to_uint8(videos: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8."""
    v = ((videos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 4, 1).numpy()


def write_gif(variants: Sequence[Variant], path: Path, scale: int = 3) -> None:
    """Rows: captions; columns: variants (labelled on top); one GIF frame per video frame."""
    from PIL import Image, ImageDraw

    tile, pad, header = SIZE * scale, 4, 14
    clips = [_to_uint8(v.videos) for v in variants]
    n = clips[0].shape[0]
    width = len(variants) * (tile + pad) + pad
    height = header + n * (tile + pad) + pad
    frames = []
    for t in range(FRAMES):
        img = Image.new("RGB", (width, height), (40, 40, 40))
        draw = ImageDraw.Draw(img)
        for j, (v, clip) in enumerate(zip(variants, clips)):
            x = pad + j * (tile + pad)
            draw.text((x, 1), v.name[: tile // 6], fill=(230, 230, 230))
            for i in range(n):
                frame = Image.fromarray(clip[i, t]).resize((tile, tile), Image.NEAREST)
                img.paste(frame, (x, header + i * (tile + pad)))
        frames.append(img)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)


def write_frames(variants: Sequence[Variant], captions: Sequence[Caption], path: Path, count: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(captions))
    clips = [_to_uint8(v.videos) for v in variants]
    fig, axes = plt.subplots(
        count * len(variants), FRAMES, figsize=(FRAMES * 0.9, count * len(variants) * 0.9), squeeze=False
    )
    for c in range(count):
        for j, (v, clip) in enumerate(zip(variants, clips)):
            row = c * len(variants) + j
            for t in range(FRAMES):
                ax = axes[row, t]
                ax.imshow(clip[c, t], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(v.name, rotation=0, ha="right", va="center", fontsize=7)
        axes[c * len(variants), FRAMES // 2].set_title(captions[c].text, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_psnr_plot(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[1:]  # full precision is the reference
    names = [r["variant"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [r["psnr_db"] for r in rows], color="tab:blue")
    ax.set_ylabel("PSNR vs full precision (dB)")
    ax2 = ax.twinx()
    ax2.plot(names, [r["activation_bits"] for r in rows], "o-", color="tab:red")
    ax2.set_ylabel("activation bits per element", color="tab:red")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(variants: Sequence[Variant], captions: Sequence[Caption], rows: Sequence[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "captions": [c.text for c in captions],
        "rows": list(rows),
        "reports": {v.name: v.report.to_dict() for v in variants[1:]},
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=1))
    write_gif(variants, out / "side_by_side.gif")
    write_frames(variants, captions, out / "frames.png")
    write_psnr_plot(rows, out / "psnr.png")
    for v in variants[1:]:
        v.report.plot(out / v.name)


def run(
    out: Path,
    *,
    console: Console | None = None,
    recipes: Sequence[str] = DEMO_RECIPES,
    captions: Sequence[str] = DEMO_CAPTIONS,
    steps: int = 20,
    seed: int = 0,
    model_path: Path | None = None,
) -> list[dict]:
    """Run the demo; returns the table rows and writes the outputs to ``out``."""
    console = console or Console()
    torch.manual_seed(seed)
    model = load_bundled(model_path)
    caps = [Caption.parse(c) for c in captions]
    noise = demo_noise(len(caps), seed)
    with Progress(console=console, transient=True) as progress:
        variants = run_variants(model, caps, noise, recipes, steps=steps, progress=progress)
    rows = metrics_rows(variants)
    console.print(
        rows_table(rows, f"Bundled tiny video DiT: {len(caps)} captions, {steps} steps, same noise; metrics against full precision")
    )
    write_outputs(variants, caps, rows, out)
    console.print(f"outputs written to {out}/ (side_by_side.gif, frames.png, psnr.png, metrics.json, per-recipe plots)")
    return rows
