"""``lowbit demo`` end to end on a small random-weight checkpoint (the bundled one is tested
in test_bundled_model.py)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lowbit.cli import main
from lowbit.emulate import recipes
from lowbit.models import demo, tiny_dit
from lowbit.registry import registry
from lowbit.testing.conformance import assert_same_bits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    tiny_dit.save(tiny_dit.build(dict(tiny_dit.MODEL_CONFIG, num_layers=1)), path)
    return path


def test_demo_writes_the_table_gif_frames_and_plots(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["demo", "--model", str(checkpoint), "--out", str(out), "--recipes", "mxfp4,semantic_dialect", "--steps", "2"])
    assert status == 0
    printed = capsys.readouterr().out
    for name in ("full precision", "mxfp4", "semantic_dialect", "PSNR"):
        assert name in printed
    payload = json.loads((out / "metrics.json").read_text())
    assert [r["variant"] for r in payload["rows"]] == ["full precision", "mxfp4", "semantic_dialect"]
    assert payload["captions"] == list(demo.DEMO_CAPTIONS)
    full, mx, sd = payload["rows"]
    assert full["psnr_db"] == 99.0 and full["agreement"] == {"colour": 1.0, "shape": 1.0, "direction": 1.0}
    assert 0 < mx["psnr_db"] < 99 and 0 < sd["psnr_db"] < 99  # quantization changed the videos
    assert mx["weight_bits"] == pytest.approx(4.25) and mx["activation_bits"] == pytest.approx(4.25)
    assert sd["activation_bits"] > 4.3125  # decomposition's residual bits are counted
    gif = Image.open(out / "side_by_side.gif")
    assert gif.n_frames == 8
    assert gif.size[0] > 3 * 96 and gif.size[1] > len(demo.DEMO_CAPTIONS) * 96
    for png in ("frames.png", "psnr.png", "mxfp4/sqnr.png", "semantic_dialect/dialects.png"):
        assert Image.open(out / png).size[0] > 100


def test_demo_recipes_are_every_builtin_recipe():
    # built-in: registered by the project's own plugin (the registry records each recipe's
    # plugin); none is left out of the demo, in registration order
    origin = registry().recipes.origin
    builtin = [name for name in recipes() if origin[name] == "lowbit.plugins.builtin_recipes"]
    assert demo.DEMO_RECIPES == tuple(builtin)


def test_same_noise_gives_the_same_videos(checkpoint):
    model = tiny_dit.load_bundled(checkpoint)
    caps = [demo.Caption.parse(c) for c in demo.DEMO_CAPTIONS[:2]]
    a = demo.run_variants(model, caps, demo.demo_noise(2), ["mxfp4"], steps=2)
    b = demo.run_variants(model, caps, demo.demo_noise(2), ["mxfp4"], steps=2)
    for va, vb in zip(a, b):
        assert_same_bits(va.videos, vb.videos)
    # video i's noise does not depend on how many videos are drawn
    assert_same_bits(demo.demo_noise(3)[:2], demo.demo_noise(2))


def test_unknown_recipe_is_a_clear_error(checkpoint, tmp_path, capsys):
    status = main(["demo", "--model", str(checkpoint), "--out", str(tmp_path), "--recipes", "nope", "--steps", "1"])
    assert status == 2
    assert "nope" in capsys.readouterr().err


def test_table_rows_fill_exactly_the_columns():
    row = {"variant": "v", "psnr_db": 20.0, "ssim": 0.5, "temporal_psnr_db": 21.0, "flicker": 0.1, "flow_error": 0.2,
           "agreement": {"colour": 1.0, "shape": 0.5, "direction": 0.25}, "velocity_error": 0.3,
           "weight_bits": 4.25, "activation_bits": 4.25, "seconds": 1.0}  # fmt: skip
    table = demo.rows_table([dict(row, variant="full precision"), row], "t")
    assert len(table.columns) == 10 and table.row_count == 2
    assert [c._cells[-2] for c in table.columns[-2:]] == ["4.25/4.25", "1.0"]
