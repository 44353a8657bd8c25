"""The bundled tiny video DiT: building, sampling, checkpoints (lowbit.models.tiny_dit)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lowbit.models import tiny_dit
from lowbit.models.shapes import FRAMES, SIZE, Caption
from lowbit.testing.conformance import assert_same_bits

SMALL = dict(tiny_dit.MODEL_CONFIG, num_layers=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_dit.build(SMALL).eval()


def test_sampling_shapes_and_callback(model):
    caps = [Caption(0, 0, 0), Caption(1, 2, 3)]
    noise = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    seen = []
    out = tiny_dit.sample(model, caps, noise, steps=3, callback=lambda i, t, v: seen.append((i, float(t), v.shape)))
    assert out.shape == noise.shape and out.abs().max() <= 1.0
    assert seen == [(0, 1.0, noise.shape), (1, pytest.approx(2 / 3), noise.shape), (2, pytest.approx(1 / 3), noise.shape)]
    # guidance 1 is the conditional model alone: one Euler step by hand
    one = tiny_dit.sample(model, caps, noise, steps=1, guidance=1.0)
    with torch.no_grad():
        v = model(noise, torch.ones(2), model.captions(caps))
    assert_same_bits((noise - v).clamp(-1, 1), one)


def test_sample_rejects_bad_input(model):
    with pytest.raises(ValueError, match="noise must have shape"):
        tiny_dit.sample(model, [Caption(0, 0, 0)], torch.zeros(2, 3, FRAMES, SIZE, SIZE))
    with pytest.raises(ValueError, match="steps"):
        tiny_dit.sample(model, [Caption(0, 0, 0)], torch.zeros(1, 3, FRAMES, SIZE, SIZE), steps=0)


def test_checkpoint_round_trip_is_float16_exact(model, tmp_path):
    path = tmp_path / "m.safetensors"
    tiny_dit.save(model, path, {"step": 5})
    loaded = tiny_dit.load_bundled(path)
    assert loaded.config == model.config
    assert tiny_dit.checkpoint_metadata(path) == {"config": model.config, "step": 5}
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b
        assert_same_bits(a.to(torch.float16).to(torch.float32), b)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tiny_dit"):
        tiny_dit.load_bundled(tmp_path / "missing.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(ValueError, match="no 'config' metadata"):
        tiny_dit.load_bundled(bare)
