"""The moving-shape videos and their analytic detectors (lowbit.models.shapes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.models import shapes
from lowbit.models.shapes import COLOURS, DIRECTIONS, FRAMES, SHAPES, SIZE, Caption


def test_detectors_read_ground_truth_videos():
    rng = np.random.default_rng(7)
    captions = shapes.random_captions(300, rng)
    videos = shapes.random_videos(captions, rng)
    assert videos.shape == (300, 3, FRAMES, SIZE, SIZE)
    assert shapes.detector_scores(videos, captions) == {"colour": 1.0, "shape": 1.0, "direction": 1.0}


def test_render_by_definition():
    # a red square of side 12 centred at (10.0, 16.0) moving right 1.5 px per frame
    cap = Caption.parse("red square moving right")
    v = shapes.render(cap, (10.0, 16.0)).numpy()
    assert v.min() == -1.0 and v.max() == 1.0
    fg = v.max(axis=0) > 0
    for t in range(FRAMES):
        ys, xs = np.nonzero(fg[t])
        cx = 10.0 + 1.5 * t
        # pixel centres c + 0.5 inside [cx - 6, cx + 6]
        assert xs.min() == int(np.ceil(cx - 6 - 0.5)) and xs.max() == int(np.floor(cx + 6 - 0.5))
        assert ys.min() == 10 and ys.max() == 21
        assert (v[:, t][:, fg[t]] == np.array([[1.0], [-1.0], [-1.0]])).all()


def test_trajectories_stay_inside_the_frame():
    rng = np.random.default_rng(3)
    for d in range(len(DIRECTIONS)):
        for _ in range(20):
            x, y = shapes._random_start(rng, d)
            dx, dy = list(DIRECTIONS.values())[d]
            for t in (0, FRAMES - 1):
                cx, cy = x + dx * t, y + dy * t
                assert 6 <= cx <= SIZE - 6 and 6 <= cy <= SIZE - 6


def test_detect_on_a_blank_video_is_none():
    assert shapes.detect(torch.full((3, FRAMES, SIZE, SIZE), -1.0)) == (None, None, None)


def test_a_wrong_attribute_is_detected_as_wrong():
    cap = Caption.parse("blue triangle moving up")
    v = shapes.render(cap, (16.0, 22.0))
    assert shapes.detect(v) == (2, 2, 2)
    wrong = Caption(0, 0, 0)
    assert shapes.detector_scores(v[None], [wrong]) == {"colour": 0.0, "shape": 0.0, "direction": 0.0}


def test_caption_parsing_and_tokens():
    cap = Caption.parse("Yellow circle down")
    assert cap == Caption(list(COLOURS).index("yellow"), SHAPES.index("circle"), list(DIRECTIONS).index("down"))
    assert cap.text == "yellow circle moving down"
    assert cap.tokens() == (3, 4, 10)
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        Caption.parse("purple circle moving left")
    with pytest.raises(ValueError, match="COLOUR SHAPE"):
        Caption.parse("red circle")
    with pytest.raises(ValueError, match="shape index 3"):
        Caption(0, 3, 0)
    with pytest.raises(ValueError, match="videos but"):
        shapes.detector_scores(torch.zeros(2, 3, FRAMES, SIZE, SIZE), [cap])
    with pytest.raises(ValueError, match="one video"):
        shapes.detect(np.zeros((FRAMES, SIZE, SIZE)))
