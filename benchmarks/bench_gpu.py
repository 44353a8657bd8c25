"""GPU fake-quant bandwidth of every built-in format (Triton backend) against a device copy.

    python benchmarks/bench_gpu.py [--sizes 4096 16384] [--dtypes float32 bfloat16]
                                   [--repeats 7] [--formats 'mx*'] [--json] [--check]

For each built-in format the Triton backend implements, each size (size x size) and
each input dtype: the median over ``--repeats`` timed calls (CUDA events, after a
warm-up call that compiles the kernels) of ``lowbit.fake_quant`` on a CUDA tensor,
and, interleaved with them so both see the same clocks, the median of a
device-to-device ``copy_`` of the same tensor into an existing one. Achieved
bandwidth counts the bytes fake_quant must move (the input read once, the output
written once, both in the input dtype), and its ratio to the copy's bandwidth is
reported per row. A format the Triton backend does not implement is listed as such.

Targets (issue 4, H100/H200): mxfp4, nvfp4 and the element formats at >= 80% of the
copy bandwidth; dialectfp4 and semantic_dialect at >= 60%. ``--check`` exits with
status 1 when a measured target is missed. Numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import sys
from typing import Any, Callable

import torch

import lowbit
from lowbit.plugins.builtin_backends import TRITON
from lowbit.plugins.builtin_formats import BUILTIN_FORMATS

TARGETS = {"mxfp4": 0.8, "nvfp4": 0.8, "dialectfp4": 0.6, "semantic_dialect": 0.6}
ELEMENT_TARGET = 0.8


def _target(spec: Any) -> float | None:
    if spec.name in TARGETS:
        return TARGETS[spec.name]
    return ELEMENT_TARGET if not hasattr(spec, "block_size") else None


def _median_ms(fn: Callable[[], Any], copy: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median ms of fn, median ms of copy), timed alternately with CUDA events."""
    times: dict[str, list[float]] = {"fn": [], "copy": []}
    for _ in range(repeats):
        for key, f in (("fn", fn), ("copy", copy)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f()
            end.record()
            torch.cuda.synchronize()
            times[key].append(start.elapsed_time(end))
    return statistics.median(times["fn"]), statistics.median(times["copy"])


def run(sizes: list[int], dtypes: list[str], repeats: int, pattern: str) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        for dtype in dtypes:
            x = torch.randn(size, size, device="cuda", dtype=getattr(torch, dtype))
            dst = torch.empty_like(x)
            nbytes = 2 * x.numel() * x.element_size()
            for spec in BUILTIN_FORMATS:
                if not fnmatch.fnmatch(spec.name, pattern):
                    continue
                row: dict[str, Any] = {"format": spec.name, "size": size, "dtype": dtype, "target": _target(spec)}
                if not TRITON.implements(spec):
                    rows.append({**row, "status": "not implemented"})
                    continue
                if getattr(spec, "arithmetic", "exact") == "torchao" and dtype not in ("float32", "bfloat16"):
                    continue
                fn = lambda: lowbit.fake_quant(x, spec, backend="triton", seed=0)  # noqa: E731
                fn()  # compile
                torch.cuda.synchronize()
                ms, copy_ms = _median_ms(fn, lambda: dst.copy_(x), repeats)
                gbs, copy_gbs = nbytes / ms / 1e6, nbytes / copy_ms / 1e6
                rows.append({**row, "status": "ok", "ms": ms, "gb_s": gbs, "copy_gb_s": copy_gbs, "ratio": gbs / copy_gbs})
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'format':24} {'size':>6} {'dtype':9} {'ms':>8} {'GB/s':>8} {'copy GB/s':>10} {'ratio':>6} target"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['format']:24} {r['size']:>6} {r['dtype']:9} {r['status']}")
            continue
        target = "" if r["target"] is None else f">= {r['target']:.0%}" + ("" if r["ratio"] >= r["target"] else " MISSED")
        lines.append(
            f"{r['format']:24} {r['size']:>6} {r['dtype']:9} {r['ms']:8.3f} {r['gb_s']:8.1f} "
            f"{r['copy_gb_s']:10.1f} {r['ratio']:6.2f} {target}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--formats", default="*", help="glob over format names")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device", file=sys.stderr)
        return 2
    rows = run(args.sizes, args.dtypes, args.repeats, args.formats)
    header = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "repeats": args.repeats}
    print(json.dumps({"machine": header, "rows": rows}, indent=1) if args.json else f"{header}\n{_table(rows)}")
    missed = [r for r in rows if r["status"] == "ok" and r["target"] is not None and r["ratio"] < r["target"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
