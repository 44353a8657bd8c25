"""Procedural moving-shape videos and the analytic detectors that judge them.

A video shows one coloured shape on a black background moving in a straight line at
constant speed. Its caption is three words, ``(colour, shape, direction)``, e.g.
``"red circle moving left"``. Videos are float32 tensors of shape
``(3, FRAMES, SIZE, SIZE)`` with values in [-1, 1] (channels R, G, B).

The detectors read a video back without any learned weights:

- foreground: pixels whose brightest channel is above :data:`FOREGROUND_LEVEL`;
- colour: the palette entry nearest to the mean foreground colour;
- shape: the fill ratio of the foreground in its bounding box, per frame
  (square about 1.0, circle about 0.79, triangle about 0.5), majority over frames;
- direction: the sign of the larger of the horizontal and vertical displacements of
  the foreground centroid between the first and the last frame with a foreground.

A detector that finds no foreground answers ``None`` (counted as wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "COLOURS",
    "SHAPES",
    "DIRECTIONS",
    "FRAMES",
    "SIZE",
    "Caption",
    "render",
    "all_captions",
    "random_captions",
    "random_videos",
    "detect",
    "detector_scores",
]

#: Palette in [-1, 1] RGB.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) per frame in pixels
    "left": (-1.5, 0.0),
    "right": (1.5, 0.0),
    "up": (0.0, -1.5),
    "down": (0.0, 1.5),
}
FRAMES = 8
SIZE = 32
SHAPE_SIZE = 12  # side of the shape's bounding box in pixels
FOREGROUND_LEVEL = 0.0
_FILL_SQUARE = 0.9  # fill ratio above: square
_FILL_CIRCLE = 0.64  # fill ratio above (and below the square's): circle; below: triangle


@dataclass(frozen=True)
class Caption:
    """One prompt: indices into :data:`COLOURS`, :data:`SHAPES` and :data:`DIRECTIONS`."""

    colour: int
    shape: int
    direction: int

    def __post_init__(self) -> None:
        for name, value, n in (
            ("colour", self.colour, len(COLOURS)),
            ("shape", self.shape, len(SHAPES)),
            ("direction", self.direction, len(DIRECTIONS)),
        ):
            if not 0 <= value < n:
                raise ValueError(f"{name} index {value} is not in [0, {n})")

    @classmethod
    def parse(cls, text: str) -> Caption:
        """``"red circle moving left"`` (the word ``moving`` is optional)."""
        words = [w for w in text.lower().split() if w != "moving"]
        if len(words) != 3:
            raise ValueError(f"a caption is 'COLOUR SHAPE [moving] DIRECTION', got {text!r}")
        colour, shape, direction = words
        for word, vocab in ((colour, list(COLOURS)), (shape, list(SHAPES)), (direction, list(DIRECTIONS))):
            if word not in vocab:
                raise ValueError(f"unknown word {word!r} in {text!r}; expected one of {vocab}")
        return cls(list(COLOURS).index(colour), SHAPES.index(shape), list(DIRECTIONS).index(direction))

    @property
    def text(self) -> str:
        return f"{list(COLOURS)[self.colour]} {SHAPES[self.shape]} moving {list(DIRECTIONS)[self.direction]}"

    def tokens(self) -> tuple[int, int, int]:
        """Token ids in one vocabulary: colours, then shapes, then directions."""
        return (self.colour, len(COLOURS) + self.shape, len(COLOURS) + len(SHAPES) + self.direction)


VOCAB_SIZE = len(COLOURS) + len(SHAPES) + len(DIRECTIONS)

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5  # pixel centres


def _mask(shape: str, cx: float, cy: float) -> np.ndarray:
    h = SHAPE_SIZE / 2
    dx, dy = _XX - cx, _YY - cy
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    # triangle pointing up: apex at (cx, cy - h), base from (cx - h, cy + h) to (cx + h, cy + h)
    return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)


def render(caption: Caption, start: tuple[float, float]) -> torch.Tensor:
    """The video of ``caption`` whose shape starts centred at ``start = (x, y)``."""
    colour = np.asarray(list(COLOURS.values())[caption.colour], dtype=np.float32)
    dx, dy = list(DIRECTIONS.values())[caption.direction]
    video = np.full((3, FRAMES, SIZE, SIZE), -1.0, dtype=np.float32)
    for t in range(FRAMES):
        m = _mask(SHAPES[caption.shape], start[0] + dx * t, start[1] + dy * t)
        video[:, t][:, m] = colour[:, None]
    return torch.from_numpy(video)


def _random_start(rng: np.random.Generator, direction: int) -> tuple[float, float]:
    """A start whose whole trajectory stays inside the frame."""
    dx, dy = list(DIRECTIONS.values())[direction]
    h = SHAPE_SIZE / 2 + 0.5
    travel_x, travel_y = dx * (FRAMES - 1), dy * (FRAMES - 1)
    lo_x, hi_x = h - min(travel_x, 0), SIZE - h - max(travel_x, 0)
    lo_y, hi_y = h - min(travel_y, 0), SIZE - h - max(travel_y, 0)
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


def all_captions() -> list[Caption]:
    """Every colour x shape x direction (48), colour slowest."""
    return [
        Caption(c, s, d) for c in range(len(COLOURS)) for s in range(len(SHAPES)) for d in range(len(DIRECTIONS))
    ]


def random_captions(n: int, rng: np.random.Generator) -> list[Caption]:
    return [
        Caption(int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES))), int(rng.integers(len(DIRECTIONS))))
        for _ in range(n)
    ]


def random_videos(captions: list[Caption], rng: np.random.Generator) -> torch.Tensor:
    """A batch ``(n, 3, FRAMES, SIZE, SIZE)`` of videos for ``captions`` at random starts."""
    return torch.stack([render(c, _random_start(rng, c.direction)) for c in captions])


def detect(video: torch.Tensor | np.ndarray) -> tuple[int | None, int | None, int | None]:
    """(colour, shape, direction) indices read from one video ``(3, FRAMES, H, W)``."""
    v = np.asarray(video, dtype=np.float32)
    if v.ndim != 4 or v.shape[0] != 3:
        raise ValueError(f"expected one video of shape (3, frames, height, width), got {v.shape}")
    fg = v.max(axis=0) > FOREGROUND_LEVEL  # (T, H, W)
    if not fg.any():
        return None, None, None
    mean = v.transpose(1, 2, 3, 0)[fg].mean(axis=0)
    palette = np.asarray(list(COLOURS.values()), dtype=np.float32)
    colour = int(np.argmin(((palette - mean) ** 2).sum(axis=1)))

    votes = np.zeros(len(SHAPES), dtype=np.int64)
    centroids = []
    for t in range(v.shape[1]):
        ys, xs = np.nonzero(fg[t])
        if len(xs) < 4:
            continue
        centroids.append((xs.mean(), ys.mean()))
        fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
        votes[1 if fill > _FILL_SQUARE else 0 if fill > _FILL_CIRCLE else 2] += 1
    if not centroids:
        return colour, None, None
    shape = int(np.argmax(votes))
    if len(centroids) < 2:
        return colour, shape, None
    mx, my = np.subtract(centroids[-1], centroids[0])
    if abs(mx) >= abs(my):
        direction = list(DIRECTIONS).index("right" if mx > 0 else "left")
    else:
        direction = list(DIRECTIONS).index("down" if my > 0 else "up")
    return colour, shape, direction


def detector_scores(videos: torch.Tensor, captions: list[Caption]) -> dict[str, float]:
    """Fraction of ``videos`` whose detected colour, shape and direction match ``captions``."""
    if len(videos) != len(captions):
        raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
    hits = np.zeros(3)
    for video, caption in zip(videos, captions):
        found = detect(video)
        hits += [found[0] == caption.colour, found[1] == caption.shape, found[2] == caption.direction]
    return dict(zip(("colour", "shape", "direction"), (hits / max(len(captions), 1)).tolist()))
