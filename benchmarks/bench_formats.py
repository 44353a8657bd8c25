"""Fake-quant throughput of every built-in format, against a float32 copy and torchao.

    python benchmarks/bench_formats.py [--size 4096] [--repeats 7] [--json] [--check]

For each built-in format (the ``@`` presets included) on a size x size float32
tensor: the median time of ``lowbit.fake_quant`` (Numba backend, after a warm-up
call so that compilation is excluded), interleaved with float32 copies into an
existing array so that all see the same machine load, each after a short pause.
The copy baseline is the faster of ``np.copyto`` (one thread) and torch's
``copy_`` (all threads), the memory bandwidth one or all cores reach; the ratio
of fake_quant's rate to it is taken per format. Where torchao 0.18 has the format (MX via ``to_mx`` + ``to_dtype``,
NVFP4 via ``NVFP4Tensor.to_nvfp4`` + ``dequantize``), its CPU path is timed in
the same run (median of 5; ``--torchao-rows`` times it on fewer rows, but its
fixed costs make small slices look slower per element) and compared per element.

Targets (issue 2): mxfp4 and nvfp4 at >= 25% of the copy rate, the element
formats fp4_e2m1, fp6_*, fp8_*, int4, int8 at >= 40%. ``--check`` exits with
status 1 when a target is missed. Numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import numba
import numpy as np
import torch

import lowbit
from lowbit.emulate import _numba_fast
from lowbit.plugins.builtin_formats import BUILTIN_FORMATS

TARGETS = {"mxfp4": 0.25, "nvfp4": 0.25, **{p: 0.40 for p in ("fp4_e2m1", "fp6_*", "fp8_*", "int4", "int8")}}


def target_of(name: str) -> float | None:
    return next((t for pattern, t in TARGETS.items() if fnmatch.fnmatchcase(name, pattern)), None)


def torchao_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchao 0.18's quantize + dequantize for the format, or None where it has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.config import ScaleCalculationMode as Mode
        from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
        from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    base = name.split("@")[0]
    elems = {
        "mxfp4": torch.float4_e2m1fn_x2, "mxfp6_e2m3": DTYPE_FP6_E2M3, "mxfp6_e3m2": DTYPE_FP6_E3M2,
        "mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2,
    }  # fmt: skip
    modes = {"ceil": Mode.CEIL, "even": Mode.EVEN, "rceil": Mode.RCEIL}
    head, _, rule = base.partition("_") if base.startswith("mxfp4_") else (base, "", "")
    if head in elems:
        elem, mode = elems[head], modes.get(rule, Mode.FLOOR)

        def mx(x: torch.Tensor) -> torch.Tensor:
            scale, data = to_mx(x, elem, 32, mode)
            return to_dtype(data, scale, elem, 32, torch.float32)

        return mx
    if name == "nvfp4@torchao":
        return lambda x: NVFP4Tensor.to_nvfp4(x).dequantize(torch.float32)
    if base in ("nvfp4", "nvfp4_2level"):
        return lambda x: NVFP4Tensor.to_nvfp4(
            x, per_tensor_scale=per_tensor_amax_to_scale(torch.max(torch.abs(x)))
        ).dequantize(torch.float32)
    return None


PAUSE_S = 0.02  # before each timed call: Numba's OpenMP workers spin for a while after a
# parallel region, and that tail must not land in the next measurement (the copy)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        time.sleep(PAUSE_S)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fn: Callable[[], Any], copies: list[Callable[[], Any]], repeats: int) -> tuple[float, float]:
    """Median seconds of fn and of the fastest copy, run alternately (same machine load)."""
    tf: list[float] = []
    tc: list[list[float]] = [[] for _ in copies]
    for _ in range(repeats):
        for times, copy in zip(tc, copies):
            times.append(median_time(copy, 1))
        tf.append(median_time(fn, 1))
    return statistics.median(tf), min(statistics.median(t) for t in tc)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cpus": numba.config.NUMBA_DEFAULT_NUM_THREADS,
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
    }


def run(size: int, repeats: int, torchao_rows: int, names: list[str]) -> dict[str, Any]:
    import torchao

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size, size, generator=gen, dtype=torch.float32)
    xn = x.numpy()
    dst = torch.empty_like(x)
    copies = [lambda: np.copyto(dst.numpy(), xn), lambda: dst.copy_(x)]
    for copy in copies:
        copy()
    x_ao = x[:torchao_rows].contiguous()
    n, n_ao = x.numel(), x_ao.numel()
    slow = {}
    for name in names:  # warm-up: compile every kernel before anything is timed
        lowbit.fake_quant(x, name, backend="numba")
        slow[name] = median_time(lambda: lowbit.fake_quant(x, name, backend="numba"), 1) > 0.5  # noqa: B023
    rows = []
    for name in names:
        spec = lowbit.formats.get(name)
        fq = lambda: lowbit.fake_quant(x, spec, backend="numba")  # noqa: E731
        fq()
        t_fq, t_copy = interleaved(fq, copies, 3 if slow[name] else repeats)
        row: dict[str, Any] = {
            "format": name,
            "path": _numba_fast.path_of(spec, np.float32, "float32") or "generic",
            "melem_s": n / t_fq / 1e6,
            "copy_melem_s": n / t_copy / 1e6,
            "of_copy": t_copy / t_fq,
            "torchao_melem_s": None,
            "vs_torchao": None,
            "target": target_of(name),
        }
        ao = torchao_fn(name)
        if ao is not None:
            ao(x_ao)
            t_ao = median_time(lambda: ao(x_ao), 5)
            row["torchao_melem_s"] = n_ao / t_ao / 1e6
            row["vs_torchao"] = row["melem_s"] / row["torchao_melem_s"]
        row["met"] = None if row["target"] is None else row["of_copy"] >= row["target"]
        rows.append(row)
        print(f"  {name}: {row['melem_s']:.0f} M/s", file=sys.stderr, flush=True)
    copy_rates = [r["copy_melem_s"] for r in rows]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "torchao": torchao.__version__,
        "shape": [size, size],
        "repeats": repeats,
        "torchao_rows": torchao_rows,
        "copy_melem_s": statistics.median(copy_rates),
        "results": rows,
    }


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['numba_threads']} Numba threads; "
        f"numba {m['numba']}, torch {m['torch']}, torchao {res['torchao']}, numpy {m['numpy']}",
        f"{res['shape'][0]}x{res['shape'][1]} float32, median of {res['repeats']}; float32 copy "
        f"(faster of np.copyto and torch copy_) {res['copy_melem_s']:.0f} M elements/s (median over the run)",
        "",
        "| format | path | M elem/s | of copy | torchao M elem/s | x torchao | target | met |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["results"]:
        ao = "—" if r["torchao_melem_s"] is None else f"{r['torchao_melem_s']:.1f}"
        vs = "—" if r["vs_torchao"] is None else f"{r['vs_torchao']:.{0 if r['vs_torchao'] >= 10 else 1}f}x"
        tgt = "—" if r["target"] is None else f">= {r['target']:.0%}"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| `{r['format']}` | {r['path']} | {r['melem_s']:.0f} | {r['of_copy']:.1%} | {ao} | {vs} | {tgt} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="rows = columns of the float32 input")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per format (median)")
    ap.add_argument("--torchao-rows", type=int, help="rows of the slice torchao is timed on (default: all)")
    ap.add_argument("--formats", default="*", help="comma-separated glob patterns of built-in format names")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = ap.parse_args(argv)
    patterns = args.formats.split(",")
    names = [s.name for s in BUILTIN_FORMATS if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    res = run(args.size, args.repeats, args.torchao_rows or args.size, names)
    print(json.dumps(res, indent=2) if args.json else table(res))
    missed = [r["format"] for r in res["results"] if r["met"] is False]
    if args.check and missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
