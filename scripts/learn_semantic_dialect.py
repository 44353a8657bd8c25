"""Learn the ``semantic_dialect`` formatbook (32 dialects on the quarter-unit grid).

Usage::

    .venv/bin/python scripts/learn_semantic_dialect.py [--blocks-per-kind 4000] [--seed 0]

prints the learned table as the Python tuple that ``SEMANTIC_DIALECT_TABLE`` in
``src/lowbit/plugins/builtin_formats.py`` holds.

Calibration mix (:func:`calibration_mix`, one ``numpy.random.default_rng(seed)``
drawing the kinds in this order), ``blocks_per_kind`` blocks of 32 float32 values
per kind:

1. Gaussian: standard normal.
2. Laplace: scale 1.
3. Student-t, 3 degrees of freedom.
4. Outlier-heavy: standard normal, then in each block one element (uniformly
   placed) multiplied by a factor drawn uniformly from [4, 16), the shape of
   activation channels with outliers.

The dialects are learned by :func:`lowbit.formats.learn_formatbook` on the
quarter-unit grid (values 0..31 quarter units, so 0..7.75) with
``method="refine"``, block 32, 8 values per dialect: greedy forward selection on
the half-unit grid (6434 candidates; the quarter grid has 2.6 million, too many
to enumerate), each value doubled, then local-search passes of one-value moves
on the quarter grid until a pass changes nothing (at most 20). The ids are the
order greedy chose the starting dialects in.

Why the quarter grid: on the half-unit grid no 32-dialect book reaches NVFP4 on
Laplace or Student-t blocks (the grid is too coarse near zero; see
benchmarks/bench_dialects.py and docs/performance.md); the quarter grid keeps
4-bit elements and the same per-block bits, and costs 5-bit integer magnitudes
in hardware instead of 4-bit ones.
"""

from __future__ import annotations

import argparse

import numpy as np

from lowbit.formats import learn_formatbook

BLOCK_SIZE = 32
N_DIALECTS = 32
GRID = 0.25
MAX_PASSES = 20
KINDS = ("gaussian", "laplace", "student_t3", "outlier")


def calibration_mix(blocks_per_kind: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    """The seeded calibration blocks per kind, each float32 of shape (blocks_per_kind, 32)."""
    rng = np.random.default_rng(seed)
    shape = (blocks_per_kind, BLOCK_SIZE)
    out = {
        "gaussian": rng.standard_normal(shape),
        "laplace": rng.laplace(size=shape),
        "student_t3": rng.standard_t(3, size=shape),
    }
    outlier = rng.standard_normal(shape)
    where = rng.integers(0, BLOCK_SIZE, size=blocks_per_kind)
    outlier[np.arange(blocks_per_kind), where] *= rng.uniform(4.0, 16.0, size=blocks_per_kind)
    out["outlier"] = outlier
    return {k: v.astype(np.float32) for k, v in out.items()}


def learn_semantic_dialect(blocks_per_kind: int = 4000, seed: int = 0, progress: bool = False) -> tuple[tuple[int, ...], ...]:
    """The 32 learned dialects (quarter units) for the calibration mix."""
    mix = calibration_mix(blocks_per_kind, seed)
    samples = np.concatenate([mix[k] for k in KINDS])
    return learn_formatbook(
        samples, N_DIALECTS, grid=GRID, values_per_dialect=8, block_size=BLOCK_SIZE, method="refine",
        max_passes=MAX_PASSES, progress=progress,
    )  # fmt: skip


def format_table(table: tuple[tuple[int, ...], ...]) -> str:
    """The table as Python source, two dialects per line."""
    lines = ["SEMANTIC_DIALECT_TABLE = ("]
    for i in range(0, len(table), 2):
        lines.append("    " + " ".join(f"{row!r}," for row in table[i : i + 2]))
    lines.append(")  # fmt: skip")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks-per-kind", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(format_table(learn_semantic_dialect(args.blocks_per_kind, args.seed, progress=True)))


if __name__ == "__main__":
    main()
