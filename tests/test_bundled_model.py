"""The shipped tiny video DiT: size, configuration and the detector scores recorded in it.

The scores are recorded by scripts/train_tiny_dit.py from the shipped float16 weights;
sampling them again must give the same scores up to one video in 48 per attribute,
since float32 CPU kernels may round differently on another machine. The recorded
scores must meet the issue's targets (colour 90%, shape 90%, direction 80% of the
full-precision samples; reported in docs/tiny_dit.md).
"""

from __future__ import annotations

from importlib import resources

import pytest

from lowbit.models import tiny_dit


def test_bundled_checkpoint_is_small_and_self_describing():
    path = resources.files("lowbit.models").joinpath("data", tiny_dit.BUNDLED)
    assert path.is_file()
    assert path.stat().st_size <= 8 * 2**20
    meta = tiny_dit.checkpoint_metadata()
    assert set(meta) == {"config", "step", "train_minutes", "scores"}
    assert meta["step"] > 0 and meta["train_minutes"] > 0


def test_recorded_scores_meet_the_targets():
    scores = tiny_dit.checkpoint_metadata()["scores"]
    assert set(scores) == {"colour", "shape", "direction"}
    assert scores["colour"] >= 0.90 and scores["shape"] >= 0.90 and scores["direction"] >= 0.80, scores


def test_bundled_checkpoint_reproduces_its_recorded_scores():
    meta = tiny_dit.checkpoint_metadata()
    model = tiny_dit.load_bundled()
    assert model.config == meta["config"]
    scores = tiny_dit.detector_eval(model)
    assert scores == pytest.approx(meta["scores"], abs=1 / 48 + 1e-9)
