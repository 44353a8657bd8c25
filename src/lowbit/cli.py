"""The ``lowbit`` command line: list formats, quantize files, compare formats, demo.

``lowbit formats``      every registered format and where it comes from
``lowbit quantize``     a tensor file -> packed codes + scales + metadata (.safetensors)
``lowbit dequantize``   that file -> the values it stands for (.npy or .safetensors)
``lowbit compare``      error of several formats on one tensor
``lowbit demo``         the bundled video DiT sampled under every built-in recipe
                       (``--formats``: the format table and a comparison on a sample tensor)
``lowbit recipes``      every registered model recipe (formats, policies, plugin)
``lowbit hdl generate`` a format's hardware unit as Verilog and VHDL-2008
``lowbit hdl report``   Yosys cost of the element multipliers, block dot, quantizer and dequantizer units and selectors

Tensors are read as torch tensors (``.npy`` through numpy, ``.safetensors``
through safetensors.torch, so bfloat16 files work) and every number comes from
the public API: ``quantize``, ``dequantize`` and the registry. Errors a user can
cause (unknown format, missing file, bad axis, bad input) print one line to
stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import attrs
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from safetensors import SafetensorError
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

import lowbit
from lowbit import formats
from lowbit.checkpoint import layout_fields, read_safetensors, spec_json, tensor_layout
from lowbit.emulate import BackendUnavailable, Quantized, available_backends, dequantize, quantize
from lowbit.emulate.api import pack_codes
from lowbit.formats.spec import BLOCK_SPECS, ExpScaleFormat, Formatbook
from lowbit.registry import BUILTIN_PLUGINS, UnknownNameError, registry

#: NVFP4's second-level scale is one float32 for the whole tensor.
TENSOR_SCALE_BITS = 32

#: Widths a power-of-two block scale is charged in the two accountings in use:
#: E8M0 (OCP MX v1.0) and the 5-bit exponent of the BlockDialect paper.
EXPONENT_ACCOUNTINGS = (8, 5)

#: The tensor name a ``.npy`` input gets inside a quantized file.
NPY_TENSOR = "tensor"

#: The arrays a :class:`Quantized` may lack, stored as ``<tensor>.<field>`` when present
#: (``<tensor>.codes`` and, if any, ``<tensor>.tensor_scale`` are written beside them).
OPTIONAL_ARRAYS = ("scale_codes", "scales", "nan_mask")

CLIP_RATE_HELP = (
    "clip rate: the fraction of finite inputs x with |x| > M, where M is the largest magnitude the "
    "format can represent for x's block (the element format's largest value times the block scale and "
    "tensor scale the quantizer chose, i.e. what the largest code dequantizes to there; for element "
    "formats simply their largest value). Inputs in blocks that became NaN do not count as clipped. "
    "MSE, SQNR (10 log10(sum x^2 / sum (q(x) - x)^2)) and max |q(x) - x| are taken over finite inputs."
)


class CliError(Exception):
    """A problem with the command line or its files, reported as one line."""


# Errors a user can provoke; anything else is a bug and keeps its traceback.
USER_ERRORS = (CliError, UnknownNameError, BackendUnavailable, OSError, ValueError, TypeError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a one-line :class:`CliError` (status 2)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------
# the format table


def format_info(name: str) -> dict[str, Any]:
    """One row of ``lowbit formats``: layout, storage cost, backends and plugin of ``name``."""
    spec = formats.get(name)
    block = isinstance(spec, BLOCK_SPECS)
    element = spec.element if block else spec
    return {
        "name": name,
        "kind": "block" if block else "element",
        "element": element.name,
        "rounding": spec.rounding_rule if isinstance(spec, Formatbook) else element.rounding,
        "block_size": spec.block_size if block else None,
        "scale": spec.scale.name if block else None,
        "scale_rule": spec.scale_rule if block else None,
        # BlockFormat.bits spreads the block scale over the block; the tensor
        # scale is one float per tensor, so it is reported beside, not averaged in.
        "bits_per_element": spec.bits,
        "tensor_scale_bits": TENSOR_SCALE_BITS if block and spec.tensor_scale is not None else None,
        # Power-of-two scales are charged 8 bits by OCP MX (E8M0) and 5 bits by the
        # BlockDialect paper; both accountings, labelled, so formats compare fairly.
        "bits_by_exponent": (
            {f"{b}-bit exponent": spec.bits_with_scale(b) for b in EXPONENT_ACCOUNTINGS}
            if block and isinstance(spec.scale, ExpScaleFormat)
            else None
        ),
        "backends": available_backends(spec),
        "plugin": registry().formats.origin[name],
        "spec": attrs.asdict(spec),
    }


def _bits_text(info: dict[str, Any]) -> str:
    """Bits per element as the table shows them, a tensor scale named beside."""
    text = f"{info['bits_per_element']:.4g}"
    if info["tensor_scale_bits"] is not None:
        text += f" + {info['tensor_scale_bits']}-bit tensor scale"
    if info["bits_by_exponent"]:
        text += " (" + ", ".join(f"{label}: {v:.4g}" for label, v in info["bits_by_exponent"].items()) + ")"
    return text


def formats_table(infos: Sequence[dict[str, Any]], title: str) -> Table:
    """A rich table of :func:`format_info` rows."""
    table = Table(title=title, title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "element", "rounding", "block", "scale", "bits/element", "backends", "plugin"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(
            info["name"],
            info["kind"],
            info["element"],
            info["rounding"],
            "-" if info["block_size"] is None else str(info["block_size"]),
            "-" if info["scale"] is None else f"{info['scale']} {info['scale_rule']}",
            _bits_text(info),
            ", ".join(info["backends"]) or "none here",
            info["plugin"],
        )
    return table


# ---------------------------------------------------------------------------
# error statistics


def error_stats(
    x: torch.Tensor, name: str, *, axis: int | None = None, backend: str = "auto", seed: int | None = None
) -> dict[str, Any]:
    """MSE, SQNR, max abs error and clip rate of format ``name`` on ``x`` (see CLIP_RATE_HELP)."""
    spec = formats.get(name)
    q = quantize(x, spec, axis=axis, backend=backend, seed=seed)
    y = _float64(dequantize(q, backend=backend))
    top = _float64(dequantize(_largest_codes(q), backend=backend))
    xf = _float64(x)
    finite = np.isfinite(xf)
    count = int(finite.sum())
    stats: dict[str, Any] = {"format": name, "bits_per_element": spec.bits, "finite_inputs": count}
    if count == 0:
        nan = float("nan")
        return stats | {"mse": nan, "sqnr_db": nan, "max_abs_error": nan, "clip_rate": nan}
    # Non-finite outputs for finite inputs (NaN blocks, overflow to Inf) must
    # show up as non-finite statistics, so nothing is masked past this point.
    with np.errstate(all="ignore"):
        err = y[finite] - xf[finite]
        noise = float(np.sum(err * err))
        signal = float(np.sum(xf[finite] ** 2))
        return stats | {
            "mse": noise / count,
            "sqnr_db": float(10 * np.log10(signal / noise)) if noise else float("inf"),
            "max_abs_error": float(np.max(np.abs(err))),
            "clip_rate": int(np.sum(np.abs(xf[finite]) > top[finite])) / count,
        }


def _largest_codes(q: Quantized) -> Quantized:
    """``q`` with every element code replaced by the largest positive one (same scales)."""
    element = q.element
    # The element's own quantizer says which code its largest value has, so no
    # per-format knowledge of code layouts is needed here.
    largest = quantize(np.array([element.max_value]), element, seed=0).unpacked_codes()[0, 0]
    codes = np.full((q.codes.shape[0], q.n), largest, dtype=q.codes.dtype)
    return q.replace(codes=pack_codes(codes, element), nan_mask=None)


def _float64(t: torch.Tensor) -> np.ndarray:
    """The values of ``t`` as a float64 array (exact for every float dtype)."""
    return t.detach().to(torch.float64).numpy()


def _fmt(value: float, spec: str) -> str:
    """``value`` formatted with ``spec``, or spelt out (nan, inf) when not finite."""
    return format(value, spec) if np.isfinite(value) else str(value)


def compare_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """A rich table of :func:`error_stats` rows."""
    table = Table(title=title, title_justify="left", caption="clip: |x| above the largest value of its block")
    for column in ("format", "bits/element", "MSE", "SQNR dB", "max abs error", "clip"):
        table.add_column(column, justify="left" if column == "format" else "right")
    for r in rows:
        table.add_row(
            r["format"],
            f"{r['bits_per_element']:g}",
            _fmt(r["mse"], ".4g"),
            _fmt(r["sqnr_db"], ".2f"),
            _fmt(r["max_abs_error"], ".4g"),
            _fmt(100 * r["clip_rate"], ".3f") + "%",
        )
    return table


# ---------------------------------------------------------------------------
# files


def read_tensors(path: Path, tensor: str | None = None) -> dict[str, torch.Tensor]:
    """The floating tensors of a ``.npy`` or ``.safetensors`` file (only ``tensor`` if given)."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if path.suffix == ".npy":
        if tensor is not None:
            raise CliError("--tensor selects a tensor of a .safetensors file; a .npy file holds one")
        return {NPY_TENSOR: torch.from_numpy(np.load(path, allow_pickle=False))}
    if path.suffix != ".safetensors":
        raise CliError(f"{path}: expected a .npy or .safetensors file")
    try:
        found = load_torch(path)
    except SafetensorError as exc:
        raise CliError(f"{path}: not a readable safetensors file ({exc})") from None
    floating = {k: v for k, v in found.items() if v.is_floating_point()}
    if tensor is None:
        if not floating:
            raise CliError(f"{path}: no floating-point tensors")
        return floating
    if tensor not in floating:
        raise CliError(f"{path}: no floating-point tensor {tensor!r}; it has {', '.join(floating) or 'none'}")
    return {tensor: floating[tensor]}


def read_one_tensor(path: Path, tensor: str | None) -> torch.Tensor:
    """The single tensor ``compare`` works on."""
    tensors = read_tensors(path, tensor)
    if len(tensors) > 1:
        raise CliError(f"{path} holds several floating tensors ({', '.join(tensors)}); pick one with --tensor")
    return next(iter(tensors.values()))


def write_quantized(path: Path, quantized: dict[str, Quantized]) -> None:
    """Store quantized tensors (all of one format) with their metadata in a safetensors file."""
    if path.suffix != ".safetensors":
        raise CliError(f"{path}: the output of quantize is a .safetensors file")
    spec = next(iter(quantized.values())).spec
    arrays: dict[str, np.ndarray] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, q in quantized.items():
        arrays[f"{name}.codes"] = np.ascontiguousarray(q.codes)
        for field in OPTIONAL_ARRAYS:
            value = getattr(q, field)
            if value is not None:
                arrays[f"{name}.{field}"] = np.ascontiguousarray(value)
        if q.tensor_scale is not None:
            # Quantized keeps the float32 tensor scale as a Python float; float32 holds it exactly.
            arrays[f"{name}.tensor_scale"] = np.array(q.tensor_scale, np.float32)
        entries[name] = tensor_layout(q)
    metadata = {
        "lowbit.version": lowbit.__version__,
        "lowbit.format": spec.name,
        "lowbit.spec": spec_json(spec),
        "lowbit.tensors": json.dumps(entries),
    }
    save_numpy(arrays, str(path), metadata=metadata)


def read_quantized(path: Path) -> dict[str, Quantized]:
    """The quantized tensors of a file written by :func:`write_quantized`."""
    metadata, arrays = read_safetensors(path, "np")
    if "lowbit.format" not in metadata:
        raise CliError(f"{path}: not a file written by `lowbit quantize` (no lowbit metadata)")
    spec = formats.get(metadata["lowbit.format"])
    if spec_json(spec) != metadata["lowbit.spec"]:
        raise CliError(
            f"{path}: format {spec.name!r} is registered here with a different definition than the file "
            "was written with, so its codes cannot be decoded faithfully"
        )
    result = {}
    for name, entry in json.loads(metadata["lowbit.tensors"]).items():
        ts = arrays.get(f"{name}.tensor_scale")
        result[name] = Quantized(
            spec=spec,
            **layout_fields(entry),
            codes=arrays[f"{name}.codes"],
            tensor_scale=None if ts is None else float(ts),
            **{field: arrays.get(f"{name}.{field}") for field in OPTIONAL_ARRAYS},
        )
    return result


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors to ``.safetensors``, or a single non-bfloat16 tensor to ``.npy``."""
    if path.suffix == ".safetensors":
        save_torch({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return
    if path.suffix != ".npy":
        raise CliError(f"{path}: expected a .npy or .safetensors output file")
    if len(tensors) != 1:
        raise CliError(f"{path}: a .npy file holds one tensor and there are {len(tensors)}; write .safetensors")
    (t,) = tensors.values()
    if t.dtype == torch.bfloat16:
        raise CliError(f"{path}: numpy has no bfloat16; write .safetensors")
    np.save(path, t.numpy())


# ---------------------------------------------------------------------------
# commands


def cmd_formats(args: argparse.Namespace, console: Console) -> None:
    """``lowbit formats``."""
    infos = [format_info(name) for name in formats.names()]
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        console.print(formats_table(infos, "Registered formats"))


# A recipe's optional policies, as ``lowbit recipes`` lists them.
_POLICIES = ("decomposition", "assignment", "scaling", "six_bit")


def recipe_info(name: str) -> dict[str, Any]:
    """One row of ``lowbit recipes``: the recipe's formats, policies and plugin."""
    recipe = registry().recipes.get(name)
    return {
        "name": name,
        **{f: getattr(recipe, f) for f in ("weight", "activation", "qk", "pv")},
        **{f: None if getattr(recipe, f) is None else attrs.asdict(getattr(recipe, f)) for f in _POLICIES},
        "needs_calibration": recipe.needs_calibration,
        "description": recipe.description,
        "plugin": registry().recipes.origin[name],
    }


def cmd_recipes(args: argparse.Namespace, console: Console) -> None:
    """``lowbit recipes``."""
    infos = [recipe_info(name) for name in registry().recipes.items]
    if args.json:
        print(json.dumps(infos, indent=2))
        return
    table = Table(title="Registered recipes (lowbit.emulate.apply(model, name))", title_justify="left")
    for column in ("name", "weight", "activation", "qk", "pv", "policies", "description", "plugin"):
        table.add_column(column, overflow="fold")
    for info in infos:
        policies = "; ".join(
            f"{key}: " + ", ".join(f"{k}={v}" for k, v in info[key].items()) for key in _POLICIES if info[key] is not None
        )
        formats_ = [info[f] or "-" for f in ("weight", "activation", "qk", "pv")]
        table.add_row(info["name"], *formats_, policies or "-", info["description"], info["plugin"])
    console.print(table)


def cmd_quantize(args: argparse.Namespace, console: Console) -> None:
    """``lowbit quantize``."""
    spec = formats.get(args.format)
    tensors = read_tensors(args.input, args.tensor)
    quantized = {
        name: quantize(t, spec, axis=args.axis, backend=args.backend, seed=args.seed) for name, t in tensors.items()
    }
    write_quantized(args.output, quantized)
    stored = sum(q.nbytes() for q in quantized.values())
    original = sum(t.numel() * t.element_size() for t in tensors.values())
    console.print(
        f"{args.output}: {len(quantized)} tensor(s) in {spec.name}, {stored} bytes of codes and scales "
        f"(the input held {original} bytes)"
    )


def cmd_dequantize(args: argparse.Namespace, console: Console) -> None:
    """``lowbit dequantize``."""
    quantized = read_quantized(args.input)
    write_tensors(args.output, {name: dequantize(q, backend=args.backend) for name, q in quantized.items()})
    console.print(f"{args.output}: {len(quantized)} tensor(s)")


def cmd_compare(args: argparse.Namespace, console: Console) -> None:
    """``lowbit compare``."""
    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    if not names:
        raise CliError("--formats needs at least one format name")
    for name in names:
        formats.get(name)  # fail on a misspelt name before any work
    x = read_one_tensor(args.input, args.tensor)
    rows = [error_stats(x, name, axis=args.axis, backend=args.backend, seed=args.seed) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(compare_table(rows, f"{args.input} {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"))


def sample_tensor(seed: int = 0) -> np.ndarray:
    """The demo's 256 x 1024 float32 tensor: activation-like rows, fixed seed.

    Rows cycle through Gaussian, Laplace and Student-t(3) (heavy tails), each row
    with its own magnitude (2^-6 .. 2^6, so block and tensor scales matter), and
    one element in a thousand is a 20-100x outlier (what clips under MX scaling).
    """
    rng = np.random.default_rng(seed)
    rows, cols = 256, 1024
    draws = (rng.standard_normal, rng.laplace, lambda size: rng.standard_t(3, size))
    x = np.stack([draws[i % 3](size=cols) for i in range(rows)])
    x *= np.exp2(rng.uniform(-6, 6, size=(rows, 1)))
    outliers = rng.random((rows, cols)) < 1e-3
    x[outliers] *= rng.uniform(20, 100, size=int(outliers.sum()))
    return x.astype(np.float32)


def cmd_demo(args: argparse.Namespace, console: Console) -> None:
    """``lowbit demo``: the video demo (lowbit.models.demo), or with ``--formats`` the format tour."""
    if not args.formats:
        from lowbit.models import demo

        recipes = demo.DEMO_RECIPES if args.recipes is None else tuple(r for r in args.recipes.split(",") if r)
        demo.run(args.out, console=console, recipes=recipes, steps=args.steps, seed=args.seed, model_path=args.model)
        return
    names = formats.names()
    console.print(formats_table([format_info(n) for n in names], "Registered formats"))
    x = torch.from_numpy(sample_tensor())
    builtin = [n for n in names if registry().formats.origin[n] in BUILTIN_PLUGINS]
    # Presets ("name@stack") reproduce another library, deviations included, so
    # they are compared apart from the formats lowbit defines.
    sections = (
        ("Built-in formats", [n for n in builtin if "@" not in n]),
        ("Presets reproducing other stacks", [n for n in builtin if "@" in n]),
    )
    console.print(
        "\nFake-quant error on the bundled sample: 256 x 1024 float32, Gaussian / Laplace / Student-t(3) rows "
        "with magnitudes 2^-6..2^6 and 0.1% outliers (block axis: last). Element formats have no scale, "
        "so they clip everything above their largest value."
    )
    for title, section in sections:
        console.print()
        console.print(compare_table([error_stats(x, n) for n in section], title))


def cmd_hdl_generate(args: argparse.Namespace, console: Console) -> None:
    from lowbit.hdl.convert import generate
    from lowbit.hdl.units import unit_for

    spec = formats.get(args.format)
    kinds = args.unit.split(",")
    for kind in kinds:
        unit_for(spec, kind)  # an unknown or unsupported unit is a one-line error
    files = generate([(spec.name, kind) for kind in kinds], args.out, args.lang.split(","))
    for f in files:
        console.print(str(f))


def cmd_hdl_report(args: argparse.Namespace, console: Console) -> None:
    from lowbit.hdl.report import DEFAULT_UNITS, bar_chart, report
    from lowbit.hdl.units import unit_for
    from lowbit.hdl.verify import missing_tools

    units = DEFAULT_UNITS
    if args.units:
        units = tuple(tuple(u.split(":", 1)) for u in args.units)
        for u, pair in zip(args.units, units):
            if len(pair) != 2:
                raise CliError(f"--units takes FORMAT:UNIT pairs, got {u!r}")
            unit_for(formats.get(pair[0]), pair[1])  # an unknown or unsupported unit is a one-line error
    if missing_tools(["yosys"]):
        raise CliError("`lowbit hdl report` needs yosys on PATH (apt-get install yosys)")
    rows = report(units)
    table = Table(title="Yosys + ABC (cmos2): cells, transistors, NAND2 equivalents")
    for col in ("format", "unit", "cells", "transistors", "nand2"):
        table.add_column(col, justify="left" if col in ("format", "unit") else "right")
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("format", "unit", "cells", "transistors", "nand2")))
    console.print(table)
    bar_chart(rows, args.png)
    console.print(f"bar chart: {args.png}")


# ---------------------------------------------------------------------------
# parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``lowbit`` argument parser with one sub-command per ``cmd_*`` function."""
    parser = _Parser(prog="lowbit", description="Bit-exact emulation of low-bit number formats.")
    parser.add_argument("--version", action="version", version=f"lowbit {lowbit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace, Console], None], summary: str, **kw: Any) -> _Parser:
        sub = commands.add_parser(name, help=summary, description=summary, **kw)
        sub.set_defaults(func=func)
        return sub

    def numerics(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--axis", type=int, default=None, help="block axis (default: the format's, the last)")
        sub.add_argument("--backend", default="auto", help="emulation backend: auto, numba, reference, ...")
        sub.add_argument("--seed", type=int, default=None, help="seed for formats that round stochastically")

    sub = command("formats", cmd_formats, "list every registered format")
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = command("quantize", cmd_quantize, "quantize a tensor file into packed codes, scales and metadata")
    sub.add_argument("--format", required=True, help="a registered format name (see `lowbit formats`)")
    sub.add_argument("input", type=Path, help="a .npy or .safetensors file")
    sub.add_argument("output", type=Path, help="a .safetensors file to write")
    sub.add_argument("--tensor", help="quantize only this tensor of a .safetensors input (default: every floating one)")
    numerics(sub)

    sub = command("dequantize", cmd_dequantize, "reconstruct the values of a file written by `lowbit quantize`")
    sub.add_argument("input", type=Path, help="a .safetensors file from `lowbit quantize`")
    sub.add_argument("output", type=Path, help=".npy (one tensor) or .safetensors")
    sub.add_argument("--backend", default="auto", help="emulation backend: auto, numba, reference, ...")

    sub = command("compare", cmd_compare, "error of several formats on one tensor", epilog=CLIP_RATE_HELP)
    sub.add_argument("--formats", required=True, help="comma-separated format names, e.g. mxfp4,nvfp4,fp8_e4m3")
    sub.add_argument("input", type=Path, help="a .npy or .safetensors file")
    sub.add_argument("--tensor", help="the tensor of a .safetensors input holding several")
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    numerics(sub)

    sub = command("demo", cmd_demo, "the bundled video DiT under every built-in recipe: table, GIFs, plots")
    sub.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    sub.add_argument("--recipes", help="comma-separated recipes (default: every built-in one)")
    sub.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    sub.add_argument("--seed", type=int, default=0, help="noise seed of the first caption (default 0)")
    sub.add_argument("--model", type=Path, default=None, help="a tiny-DiT checkpoint (default: the bundled one)")
    sub.add_argument("--formats", action="store_true",
                     help="instead: the format table and an error comparison on a bundled sample tensor")

    sub = command("recipes", cmd_recipes, "list every registered model recipe")
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    hdl = commands.add_parser("hdl", help="hardware generators (MyHDL -> Verilog / VHDL-2008)",
                              description="hardware generators (MyHDL -> Verilog / VHDL-2008)")
    hdl_commands = hdl.add_subparsers(dest="hdl_command", required=True, metavar="HDL_COMMAND")
    sub = hdl_commands.add_parser("generate", help="write a format's unit as Verilog and VHDL",
                                  description="write a format's unit as Verilog and VHDL (reproducible bytes)")
    sub.set_defaults(func=cmd_hdl_generate)
    sub.add_argument("format", help="a registered format name")
    sub.add_argument("--unit", required=True,
                     help="comma-separated units: decoder, encoder, mul, mul_expadd (element formats); dot, mac, quant, dequant (block formats); mul, dot, mac, select_lut, select (formatbooks)")
    sub.add_argument("--out", type=Path, required=True, help="output folder")
    sub.add_argument("--lang", default="verilog,vhdl", help="verilog, vhdl or both (default)")
    sub = hdl_commands.add_parser("report", help="synthesize the units with Yosys: cells, transistors, NAND2 equivalents",
                                  description="synthesize the units with Yosys: cells, transistors, NAND2 equivalents")
    sub.set_defaults(func=cmd_hdl_report)
    sub.add_argument("--png", type=Path, default=Path("hdl_report.png"), help="bar chart to write (default hdl_report.png)")
    sub.add_argument("--units", nargs="+", metavar="FORMAT:UNIT",
                     help="only these units, e.g. dialectfp4:dot mxfp4:dot (default: the list in docs/hardware.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 for an error the user can fix)."""
    # Piped or logged output has no width to fit, and rich's 80-column default
    # would fold every table cell, so they get room for the widest table here;
    # a terminal keeps its own width.
    console = Console(width=None if sys.stdout.isatty() else 250)
    try:
        args = build_parser().parse_args(argv)
        args.func(args, console)
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())
        print(f"lowbit: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
