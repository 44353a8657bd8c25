"""Quality and speed of the formatbook (BlockDialect) formats against MXFP4 and NVFP4.

    python benchmarks/bench_dialects.py [--size 4096] [--repeats 7] [--json] [--check]

Quality: the summed squared error of ``fake_quant`` (Numba backend, bit-identical
to the reference) on 4000 blocks of 32 float32 values per distribution (seeded),
laid out as 1000 rows of 128 so that blocks of 16, 32 and 64 all tile them:
Gaussian, Laplace, Student-t (nu = 3) and outlier-heavy (Gaussian with one element
per 32 multiplied by 10). Reported relative to ``mxfp4`` and ``nvfp4``, and the
gap of the two-stage selection (``dialectfp4``) over exhaustive least squares
(``dialectfp4_mse``, same table).

Real data: the weights of every linear layer in the transformer blocks of the
bundled tiny video DiT (``lowbit.models.tiny_dit``, trained; blocks along the
reduction axis) and the inputs those layers receive while sampling four captions
in full precision (20 steps, guidance 3; captured at steps 0, 5, 10, 15 and 19),
each laid out as rows of 128 so that blocks of 16, 32 and 64 tile them.

Speed: the median time of ``lowbit.fake_quant`` on a size x size float32 Gaussian
tensor (after a warm-up call, so compilation is excluded), the formats run in
turn within each repetition so that all see the same machine load, each after a
short pause. Two ratios to ``mxfp4`` are reported: the ratio of the medians, and
the median over repetitions of the ratio within a repetition (``paired``: each
format's call against the ``mxfp4`` call of the same repetition). On the shared VM
of docs/performance.md one format's calls varied between about 10 and 18 ms within
a run (the machine's speed changes over hundreds of milliseconds), which moves the
ratio of the medians from run to run while the paired ratio cancels it; the speed
targets are judged on the paired ratio. ``dialectfp4_mse`` (no fast path) is timed
with at most 3 repetitions. The load average before and after is reported.

Targets (issue 3): ``dialectfp4`` squared error at most 0.8x ``mxfp4`` on Gaussian
and Laplace data; ``semantic_dialect`` below ``nvfp4`` (checked on all four
distributions); ``dialectfp4`` fake_quant time at most
1.5x ``mxfp4``, ``semantic_dialect`` at most 2.5x. ``--check`` exits with status 1
when a target is missed. ``semantic_dialect`` is skipped, with a note, when it is
not registered. Numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

import numpy as np

import lowbit
from bench_formats import machine, median_time
from lowbit.formats import names

BLOCKS, BLOCK = 4000, 32
DISTRIBUTIONS = ("gaussian", "laplace", "student_t3", "outliers")
QUALITY_FORMATS = (
    "mxfp4", "nvfp4", "dialectfp4", "dialectfp4_mse", "block_dialect_16", "block_dialect_64", "semantic_dialect",
    "semantic_dialect_16",
)  # fmt: skip
SPEED_FORMATS = ("mxfp4", "dialectfp4", "semantic_dialect", "dialectfp4_mse")
QUALITY_TARGETS = {  # (format, reference format, distributions, at most this ratio; strict: below)
    "dialectfp4 <= 0.8x mxfp4": ("dialectfp4", "mxfp4", ("gaussian", "laplace"), 0.8, False),
    "semantic_dialect < nvfp4": ("semantic_dialect", "nvfp4", DISTRIBUTIONS, 1.0, True),
}
SPEED_TARGETS = {"dialectfp4": 1.5, "semantic_dialect": 2.5}
MSE_REPEATS = 3


def samples(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, DISTRIBUTIONS.index(kind)])
    n = BLOCKS * BLOCK
    if kind == "gaussian":
        x = rng.standard_normal(n)
    elif kind == "laplace":
        x = rng.laplace(size=n)
    elif kind == "student_t3":
        x = rng.standard_t(3, size=n)
    else:
        x = rng.standard_normal((BLOCKS, BLOCK))
        x[np.arange(BLOCKS), rng.integers(BLOCK, size=BLOCKS)] *= 10.0
    return np.asarray(x, np.float32).reshape(-1, 4 * BLOCK)


def model_samples(path: str | None = None) -> dict[str, np.ndarray]:
    """Block-linear weights and activations of the bundled tiny video DiT, rows of 128."""
    import torch

    from lowbit.models.demo import demo_noise
    from lowbit.models.shapes import Caption
    from lowbit.models.tiny_dit import load_bundled, sample

    model = load_bundled(path)
    linears = {n: m for n, m in model.transformer.named_modules() if n.startswith("blocks.") and isinstance(m, torch.nn.Linear)}
    captured: list[np.ndarray] = []
    step = {"i": 0}

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if step["i"] in (0, 5, 10, 15, 19):
            captured.append(args[0].detach().float().numpy().reshape(-1, 4 * BLOCK))

    handles = [m.register_forward_pre_hook(hook) for m in linears.values()]
    captions = [Caption.parse(c) for c in ("red circle left", "green square right", "blue triangle up", "yellow circle down")]
    try:
        sample(model, captions, demo_noise(len(captions)), steps=20,
               callback=lambda i, t, v: step.update(i=i + 1))  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    weights = np.concatenate([m.weight.detach().float().numpy().reshape(-1, 4 * BLOCK) for m in linears.values()])
    return {"model_weights": weights, "model_activations": np.concatenate(captured)}


def available(fmts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    known = set(names())
    return [f for f in fmts if f in known], [f for f in fmts if f not in known]


def quality(seed: int, model: str | None) -> dict[str, Any]:
    fmts, missing = available(QUALITY_FORMATS)
    sse: dict[str, dict[str, float]] = {}
    data = {kind: samples(kind, seed) for kind in DISTRIBUTIONS}
    data.update(model_samples(model))
    for kind, x in data.items():
        x64 = x.astype(np.float64)
        sse[kind] = {f: float(((lowbit.fake_quant(x, f).astype(np.float64) - x64) ** 2).sum()) for f in fmts}
    rel = {
        kind: {f: {"vs_mxfp4": e[f] / e["mxfp4"], "vs_nvfp4": e[f] / e["nvfp4"]} for f in fmts}
        for kind, e in sse.items()
    }
    gap = {kind: e["dialectfp4"] / e["dialectfp4_mse"] - 1.0 for kind, e in sse.items()}
    return {"sse": sse, "relative": rel, "two_stage_gap": gap, "skipped": missing}


def speed(size: int, repeats: int) -> dict[str, Any]:
    fmts, missing = available(SPEED_FORMATS)
    x = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    for f in fmts:
        lowbit.fake_quant(x[:64], f)  # compile
        lowbit.fake_quant(x, f)
    times: dict[str, list[float]] = {f: [] for f in fmts}
    for r in range(repeats):
        for f in fmts:
            if f == "dialectfp4_mse" and r >= MSE_REPEATS:
                continue
            times[f].append(median_time(lambda f=f: lowbit.fake_quant(x, f), 1))
    med = {f: statistics.median(t) for f, t in times.items()}
    return {
        "size": size,
        "median_s": med,
        "vs_mxfp4": {f: med[f] / med["mxfp4"] for f in fmts},
        "paired_vs_mxfp4": {f: statistics.median(a / b for a, b in zip(t, times["mxfp4"])) for f, t in times.items()},
        "runs": {f: len(t) for f, t in times.items()},
        "skipped": missing,
    }


def targets(q: dict[str, Any], s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, (f, ref, kinds, limit, strict) in QUALITY_TARGETS.items():
        if f in q["skipped"]:
            continue
        ratios = {k: q["sse"][k][f] / q["sse"][k][ref] for k in kinds}
        met = all(r < limit if strict else r <= limit for r in ratios.values())
        out[name] = {"ratios": ratios, "met": met}
    for f, limit in SPEED_TARGETS.items():
        if f in s["skipped"]:
            continue
        ratio = s["paired_vs_mxfp4"][f]
        out[f"{f} time <= {limit}x mxfp4"] = {"ratios": {"paired time": ratio}, "met": ratio <= limit}
    return out


def report(res: dict[str, Any]) -> str:
    m, q, s = res["machine"], res["quality"], res["speed"]
    lines = [
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['numba_threads']} Numba threads; "
        f"load average {res['load_before'][0]:.2f} before, {res['load_after'][0]:.2f} after",
        "",
        f"Squared error relative to mxfp4 / nvfp4 ({BLOCKS} blocks of {BLOCK} per synthetic distribution; model rows as described):",
        "",
        "| format | " + " | ".join(q["relative"]) + " |",
        "|---|" + "---:|" * len(q["relative"]),
    ]
    for f in q["relative"]["gaussian"]:
        rel = [q["relative"][k][f] for k in q["relative"]]
        cells = [f"{r['vs_mxfp4']:.3f} / {r['vs_nvfp4']:.3f}" for r in rel]
        lines.append(f"| `{f}` | " + " | ".join(cells) + " |")
    gaps = ", ".join(f"{k} {100 * g:+.1f}%" for k, g in q["two_stage_gap"].items())
    lines += ["", f"two-stage (dialectfp4) over exhaustive (dialectfp4_mse) squared error: {gaps}", ""]
    lines += [f"fake_quant, {s['size']}x{s['size']} float32 (median):", ""]
    lines += ["| format | ms | vs mxfp4 | paired vs mxfp4 | runs |", "|---|---:|---:|---:|---:|"]
    for f, t in s["median_s"].items():
        ratios = f"{s['vs_mxfp4'][f]:.2f}x | {s['paired_vs_mxfp4'][f]:.2f}x"
        lines.append(f"| `{f}` | {1e3 * t:.1f} | {ratios} | {s['runs'][f]} |")
    lines += ["", "targets:"]
    for name, t in res["targets"].items():
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in t["ratios"].items())
        lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {name}: {ratios}")
    for f in sorted(set(q["skipped"]) | set(s["skipped"])):
        lines.append(f"  note: {f} is not registered; skipped")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="rows = columns of the float32 input timed")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per format (median)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the quality samples")
    ap.add_argument("--model", help="tiny video DiT checkpoint for the real-data rows (default: the bundled one)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    res: dict[str, Any] = {"machine": machine(), "load_before": load_before}
    res["quality"] = quality(args.seed, args.model)
    res["speed"] = speed(args.size, args.repeats)
    res["load_after"] = os.getloadavg()
    res["targets"] = targets(res["quality"], res["speed"])
    print(json.dumps(res, indent=2) if args.json else report(res))
    if args.check and not all(t["met"] for t in res["targets"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
