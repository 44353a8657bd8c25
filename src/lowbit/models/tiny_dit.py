"""The bundled tiny text-conditioned video DiT and its rectified-flow sampler.

The model is a diffusers ``WanTransformer3DModel`` working directly on pixels of the
moving-shape videos of :mod:`lowbit.models.shapes` (no VAE), conditioned on three
caption tokens embedded by :class:`CaptionEncoder`. Rectified flow: with clean video
``x0`` and noise ``e``, ``x_t = (1 - t) x0 + t e`` and the model predicts the velocity
``e - x0`` at timestep ``1000 t``. Sampling integrates from ``t = 1`` to ``t = 0`` with
Euler steps and classifier-free guidance (the null caption is a fourth token id,
trained by dropping 10% of the captions).

The checkpoint (``tiny_wan.safetensors``, float16) carries the model configuration in
its metadata; ``scripts/train_tiny_dit.py`` makes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from lowbit.models.shapes import FRAMES, SIZE, VOCAB_SIZE, Caption, all_captions, detector_scores

__all__ = ["MODEL_CONFIG", "TEXT_DIM", "CaptionEncoder", "TinyVideoDiT", "build", "load_bundled", "sample", "save", "checkpoint_metadata", "detector_eval"]

TEXT_DIM = 64
MODEL_CONFIG: dict = {
    "patch_size": [2, 4, 4],
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": TEXT_DIM,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 64,
}
NULL_TOKEN = VOCAB_SIZE
BUNDLED = "tiny_wan.safetensors"


class CaptionEncoder(nn.Module):
    """Caption tokens (colour, shape, direction) to ``(batch, 3, TEXT_DIM)`` embeddings."""

    def __init__(self, dim: int = TEXT_DIM) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE + 1, dim)

    def forward(self, captions: Sequence[Caption | None]) -> torch.Tensor:
        ids = [c.tokens() if c is not None else (NULL_TOKEN,) * 3 for c in captions]
        return self.embed(torch.tensor(ids, dtype=torch.long, device=self.embed.weight.device))


class TinyVideoDiT(nn.Module):
    """The transformer and its caption encoder, as one module."""

    def __init__(self, config: dict | None = None) -> None:
        super().__init__()
        from diffusers import WanTransformer3DModel

        self.config = dict(MODEL_CONFIG if config is None else config)
        cfg = dict(self.config)
        cfg["patch_size"] = tuple(cfg["patch_size"])
        self.transformer = WanTransformer3DModel(**cfg)
        self.captions = CaptionEncoder(cfg["text_dim"])

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Velocity at ``x`` (batch, 3, T, H, W), ``t`` in [0, 1] (batch,), embedded captions ``text``."""
        return self.transformer(
            hidden_states=x, timestep=t * 1000, encoder_hidden_states=text, return_dict=False
        )[0]


def build(config: dict | None = None) -> TinyVideoDiT:
    return TinyVideoDiT(config)


def save(model: TinyVideoDiT, path: str | Path, meta: dict | None = None) -> None:
    """Write ``model``'s weights as float16 safetensors, with its configuration and ``meta``
    (JSON-encoded values) in the metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps(model.config), **{k: json.dumps(v) for k, v in (meta or {}).items()}}
    save_file(state, str(path), metadata=metadata)


def _checkpoint(path: str | Path | None) -> Path:
    if path is None:
        path = Path(str(resources.files("lowbit.models").joinpath("data", BUNDLED)))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {path}; run scripts/train_tiny_dit.py to make one")
    return path


def checkpoint_metadata(path: str | Path | None = None) -> dict:
    """The decoded metadata of a checkpoint (default: the bundled one): config, step,
    train_minutes, scores (the detector scores at that step)."""
    from safetensors import safe_open

    path = _checkpoint(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata: not a lowbit tiny-DiT checkpoint")
    return {k: json.loads(v) for k, v in meta.items()}


def load_bundled(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> TinyVideoDiT:
    """The trained model shipped with lowbit (or the checkpoint at ``path``), in eval mode."""
    from safetensors.torch import load_file

    path = _checkpoint(path)
    model = build(checkpoint_metadata(path)["config"])
    state = {k: v.to(dtype) for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.to(dtype).eval()


@torch.no_grad()
def sample(
    model: TinyVideoDiT,
    captions: Sequence[Caption],
    noise: torch.Tensor,
    steps: int = 20,
    guidance: float = 3.0,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Videos for ``captions`` from ``noise`` (batch, 3, FRAMES, SIZE, SIZE) in ``steps`` Euler steps.

    ``callback(step, t, velocity)`` sees the guided velocity of every step (for per-step
    velocity error). Returns the final sample clamped to [-1, 1].
    """
    if noise.shape[1:] != (3, FRAMES, SIZE, SIZE) or noise.shape[0] != len(captions):
        raise ValueError(f"noise must have shape ({len(captions)}, 3, {FRAMES}, {SIZE}, {SIZE}), got {tuple(noise.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    n = len(captions)
    text = model.captions(list(captions) + [None] * n if guidance != 1.0 else list(captions))
    x = noise.clone()
    ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    for i in range(steps):
        t = ts[i]
        if guidance != 1.0:
            v_c, v_u = model(torch.cat([x, x]), t.expand(2 * n), text).chunk(2)
            v = v_u + guidance * (v_c - v_u)
        else:
            v = model(x, t.expand(n), text)
        if callback is not None:
            callback(i, t, v)
        x = x + (ts[i + 1] - t) * v
    return x.clamp(-1.0, 1.0)


def detector_eval(model: TinyVideoDiT, seed: int = 1234, steps: int = 20, guidance: float = 3.0) -> dict[str, float]:
    """Detector scores of ``model``'s samples of all 48 captions (noise from ``seed``): the
    fraction with the captioned colour, shape and direction. The training script records
    these in each checkpoint's metadata."""
    captions = all_captions()
    noise = torch.randn((len(captions), 3, FRAMES, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    noise = noise.to(next(model.parameters()).device)
    return detector_scores(sample(model, captions, noise, steps=steps, guidance=guidance).cpu(), captions)
