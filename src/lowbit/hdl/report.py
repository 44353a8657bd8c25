"""Cost report: synthesize units with Yosys and count cells and transistors.

Recipe (fixed, so numbers compare across units): ``synth -flatten -top U`` then
ABC with an explicit script, ``abc -g cmos2 -script +strash;dch;map;topo``
(the default ABC script can run for minutes on a block unit), then
``stat -tech cmos`` for the transistor estimate. NAND2 equivalents are
transistors / 4 (a static CMOS NAND2 has four). Expect +-15-20% from the recipe
and the Yosys version: compare units, not decimals.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from lowbit.hdl.convert import generate
from lowbit.hdl.units import unit_for

#: (format, unit) pairs of the default report.
DEFAULT_UNITS = (
    ("int4", "mul"),
    ("fp4_e2m1", "mul"),  # the element of mxfp4 and nvfp4
    ("fp4_e2m1", "mul_expadd"),
    ("dialectfp4", "mul"),
    ("semantic_dialect", "mul"),
    ("mxfp4", "dot"),
    ("nvfp4", "dot"),
    ("mxfp4", "quant"),
    ("nvfp4", "quant"),
    ("mxfp4", "dequant"),
    ("nvfp4", "dequant"),
    ("dialectfp4", "dot"),
    ("semantic_dialect", "dot"),
    ("semantic_dialect_16", "dot"),  # the semantic_dialect recipes' format: 16 elements
    ("dialectfp4", "select"),
    ("dialectfp4", "select_lut"),
    ("semantic_dialect", "select_lut"),
)

ABC_SCRIPT = "+strash;dch;map;topo"


def synthesize(verilog: Path, module: str) -> dict[str, int]:
    script = f"read_verilog {verilog}; synth -flatten -top {module}; abc -g cmos2 -script {ABC_SCRIPT}; stat -tech cmos"
    res = subprocess.run(["yosys", "-p", script], capture_output=True, text=True, timeout=1800)
    if res.returncode:
        raise RuntimeError(f"yosys failed on {module}:\n{(res.stdout + res.stderr)[-2000:]}")
    log = res.stdout
    cells = int(re.findall(r"Number of cells:\s+(\d+)", log)[-1])
    transistors = int(re.findall(r"Estimated number of transistors:\s+(\d+)", log)[-1])
    return {"cells": cells, "transistors": transistors, "nand2": round(transistors / 4)}


def report(units: Sequence[tuple[str, str]] = DEFAULT_UNITS) -> list[dict[str, object]]:
    from lowbit import formats

    with tempfile.TemporaryDirectory() as tmp:
        generate(list(units), Path(tmp), ["verilog"])
        rows = []
        for fmt, kind in units:
            module = unit_for(formats.get(fmt), kind).module
            rows.append({"format": fmt, "unit": kind, "module": module, **synthesize(Path(tmp) / f"{module}.v", module)})
    return rows


def bar_chart(rows: Sequence[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['format']} {r['unit']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    ax.barh(labels, [r["nand2"] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("NAND2 equivalents (Yosys + ABC cmos2, log scale)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
