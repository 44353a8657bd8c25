"""What an :class:`~lowbit.emulate.model.Emulation` did, per layer: a table, JSON and plots.

Per layer (``nn.Linear`` layers and attention modules): quantized or skipped (with the
layer-policy rule that decided), the format of each operand (weight, activation; q, k,
p, v), the SQNR of the layer OUTPUT against the full-precision output of the same layer
on the same input, and per operand the clip rate, storage bits per element (everything
stored, extras such as a re-quantized residual included) and, for Formatbooks, how
many blocks chose each dialect. Statistics follow :mod:`lowbit.emulate.stats`.

JSON is strict: non-finite numbers are written as the strings "inf", "-inf", "nan".
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.table import Table

__all__ = ["LayerReport", "OperandReport", "Report"]


def _num(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)



@attrs.frozen(kw_only=True)
class OperandReport:
    """One quantized operand: format, elements seen, bits per element, clip rate, its own SQNR."""

    format: str
    elements: int
    bits_per_element: float
    clip_rate: float
    sqnr_db: float
    dialect_counts: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "elements": self.elements,
            "bits_per_element": _num(self.bits_per_element),
            "clip_rate": _num(self.clip_rate),
            "sqnr_db": _num(self.sqnr_db),
            "dialect_counts": None if self.dialect_counts is None else list(self.dialect_counts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OperandReport:
        counts = d["dialect_counts"]
        return cls(
            format=d["format"],
            elements=d["elements"],
            bits_per_element=float(d["bits_per_element"]),
            clip_rate=float(d["clip_rate"]),
            sqnr_db=float(d["sqnr_db"]),
            dialect_counts=None if counts is None else tuple(counts),
        )


@attrs.frozen(kw_only=True)
class LayerReport:
    """One layer. ``rule``: the layer-policy match; ``reason``: why it was skipped ("" if not);
    ``attention``: the attention module a semantic policy used for this linear;
    ``semantic``: how often each semantic treatment was applied."""

    name: str
    kind: str
    quantized: bool
    rule: str
    reason: str
    calls: int
    output_sqnr_db: float
    operands: dict[str, OperandReport] = attrs.field(factory=dict, hash=False)
    attention: str | None = None
    semantic: dict[str, int] = attrs.field(factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "quantized": self.quantized,
            "rule": self.rule,
            "reason": self.reason,
            "calls": self.calls,
            "output_sqnr_db": _num(self.output_sqnr_db),
            "operands": {k: op.to_dict() for k, op in self.operands.items()},
            "attention": self.attention,
            "semantic": dict(self.semantic),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerReport:
        return cls(
            **{k: d[k] for k in ("name", "kind", "quantized", "rule", "reason", "calls", "attention")},
            output_sqnr_db=float(d["output_sqnr_db"]),
            operands={k: OperandReport.from_dict(op) for k, op in d["operands"].items()},
            semantic=dict(d["semantic"]),
        )


def _cell(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else str(value)


def _short(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters (the JSON keeps it whole)."""
    return text if len(text) <= width else text[: width - 1] + "…"


@attrs.frozen(kw_only=True)
class Report:
    """The per-layer report of one Emulation (see the module docstring)."""

    recipe: str
    stats: bool
    forwards: int
    layers: list[LayerReport] = attrs.field(hash=False)
    semantic_state: dict[str, Any] | None = attrs.field(default=None, hash=False)
    six_bit: dict[str, Any] | None = attrs.field(default=None, hash=False)

    @property
    def quantized(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.quantized]

    @property
    def skipped(self) -> list[LayerReport]:
        return [layer for layer in self.layers if not layer.quantized]

    @property
    def summary(self) -> dict[str, Any]:
        """Totals: layers quantized and skipped, and per operand kind (weight, activation, q,
        k, p, v) the storage bits per element and clip rate over every element seen."""
        out: dict[str, Any] = {
            "quantized_layers": len(self.quantized),
            "skipped_layers": len(self.skipped),
            "semantic": {},
        }
        for key in ("weight", "activation", "q", "k", "p", "v"):
            ops = [layer.operands[key] for layer in self.quantized if key in layer.operands]
            elements = sum(op.elements for op in ops)
            seen = [op for op in ops if op.elements]
            out[f"{key}_bits_per_element"] = (
                sum(op.bits_per_element * op.elements for op in seen) / elements if elements else float("nan")
            )
            out[f"{key}_clip_rate"] = sum(op.clip_rate * op.elements for op in seen) / elements if elements else float("nan")
        if self.six_bit is not None and self.six_bit["activation_bits"] is not None:
            # every path counted, full-precision activations included (statistics on or off)
            out["activation_bits_per_element"] = self.six_bit["activation_bits"]
        for layer in self.quantized:
            for applied, n in layer.semantic.items():
                out["semantic"][applied] = out["semantic"].get(applied, 0) + n
        return out

    # -- JSON --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "stats": self.stats,
            "forwards": self.forwards,
            "semantic_state": self.semantic_state,
            "six_bit": self.six_bit,
            "summary": {k: _num(v) if isinstance(v, float) else v for k, v in self.summary.items()},
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self, **kw: Any) -> str:
        """Strict JSON (``allow_nan=False``); keyword arguments go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), allow_nan=False, **{"indent": 2, **kw})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            recipe=d["recipe"],
            stats=d["stats"],
            forwards=d["forwards"],
            semantic_state=d["semantic_state"],
            six_bit=d.get("six_bit"),
            layers=[LayerReport.from_dict(layer) for layer in d["layers"]],
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    # -- table ---------------------------------------------------------------------
    def table(self) -> Table:
        """A rich table, one row per layer."""
        title = f"lowbit emulation: recipe {self.recipe!r}, {self.forwards} forward(s)"
        if not self.stats:
            title += " (statistics off)"
        table = Table(title=title, title_justify="left",
                      caption="out SQNR: layer output vs the full-precision layer on the same input; bits/element: "
                              "stored bits per operand, in the order of formats; clip: activation (or P, or q) "
                              "elements saturated")  # fmt: skip
        for column in ("layer", "kind", "formats", "out SQNR dB", "bits/element", "clip", "dialects", "semantic", "rule"):
            table.add_column(column, overflow="fold", justify="right" if column in ("out SQNR dB", "clip") else "left")
        for layer in self.layers:
            if not layer.quantized:
                table.add_row(layer.name, layer.kind, f"[dim]full precision: {layer.reason}[/dim]", "-", "-", "-",
                              "-", "-", _short(layer.rule))  # fmt: skip
                continue
            ops = layer.operands
            formats = ", ".join(f"{k}={op.format}" for k, op in ops.items())
            bits = " / ".join(_cell(op.bits_per_element, ".3g") for op in ops.values())
            clip_op = ops.get("activation") or ops.get("p") or ops.get("q")
            clip = "-" if clip_op is None else _cell(100 * clip_op.clip_rate, ".3f") + "%"
            dialects = "; ".join(
                f"{k}: {sum(1 for c in op.dialect_counts if c)}/{len(op.dialect_counts)} used"
                for k, op in ops.items()
                if op.dialect_counts is not None
            )
            applied = ", ".join(f"{k} x{n}" for k, n in layer.semantic.items())
            table.add_row(layer.name, layer.kind, formats, _cell(layer.output_sqnr_db, ".2f"), bits, clip,
                          dialects or "-", applied or "-", _short(layer.rule))  # fmt: skip
        return table

    def __rich__(self) -> Table:
        return self.table()

    def __str__(self) -> str:
        buffer = io.StringIO()
        Console(file=buffer, width=200).print(self.table())
        return buffer.getvalue()

    # -- plots ---------------------------------------------------------------------
    def plot(self, directory: str | Path) -> list[Path]:
        """Write ``sqnr.png`` (output SQNR per quantized layer), when any operand used a
        Formatbook ``dialects.png`` (share of blocks per dialect, per layer and operand),
        and under six_bit ``six_bit.png`` (each block's precision or skip per step).
        Returns the paths written."""
        # Figure objects draw on the Agg canvas without pyplot, so the caller's
        # matplotlib backend is left alone.
        import numpy as np
        from matplotlib.figure import Figure

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        layers = self.quantized
        values = [layer.output_sqnr_db for layer in layers]
        fig = Figure(figsize=(8, 1.5 + 0.22 * max(len(layers), 1)))
        ax = fig.subplots()
        y = np.arange(len(layers))
        finite = np.array([v if math.isfinite(v) else np.nan for v in values])
        ax.barh(y, finite, color=["tab:blue" if layer.kind == "linear" else "tab:orange" for layer in layers])
        ax.set_yticks(y, [layer.name for layer in layers], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("output SQNR (dB) vs full precision; blue: linear, orange: attention")
        ax.set_title(f"recipe {self.recipe!r}: per-layer output SQNR ({self.forwards} forwards)")
        fig.tight_layout()
        written.append(out / "sqnr.png")
        fig.savefig(written[-1], dpi=120)

        rows = [
            (f"{layer.name} [{k}]", np.asarray(op.dialect_counts, dtype=float))
            for layer in layers
            for k, op in layer.operands.items()
            if op.dialect_counts is not None and sum(op.dialect_counts)
        ]
        if rows:
            shares = np.stack([c / c.sum() for _, c in rows])
            fig = Figure(figsize=(2 + 0.25 * shares.shape[1], 1.5 + 0.2 * len(rows)))
            ax = fig.subplots()
            image = ax.imshow(shares, aspect="auto", cmap="viridis", interpolation="nearest")
            ax.set_yticks(np.arange(len(rows)), [label for label, _ in rows], fontsize=6)
            ax.set_xlabel("dialect id")
            ax.set_title(f"recipe {self.recipe!r}: share of blocks per dialect")
            fig.colorbar(image, ax=ax, fraction=0.03)
            fig.tight_layout()
            written.append(out / "dialects.png")
            fig.savefig(written[-1], dpi=120)
        if self.six_bit is not None and self.six_bit["steps"]:
            written.append(self._plot_six_bit(out / "six_bit.png"))
        return written

    def _plot_six_bit(self, path: Path) -> Path:
        """What each transformer block did at each step under six_bit (a step x block grid)."""
        import numpy as np
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure

        steps = self.six_bit["steps"]  # type: ignore[index]
        blocks = list(dict.fromkeys(b for step in steps for b in step["blocks"]))
        kinds = ("skip", "nvfp4", "int8", "not run")
        grid = np.array([[kinds.index(step["blocks"].get(b, "not run")) for b in blocks] for step in steps]).T
        fig = Figure(figsize=(2 + 0.3 * len(steps), 1.2 + 0.25 * len(blocks)))
        ax = fig.subplots()
        cmap = ListedColormap(["#dddddd", "tab:blue", "tab:orange", "white"])
        ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(kinds) - 0.5, interpolation="nearest")
        ax.set_yticks(np.arange(len(blocks)), blocks, fontsize=6)
        ax.set_xticks(np.arange(len(steps)), [str(i) for i in range(len(steps))], fontsize=6)
        ax.set_xlabel("denoising step")
        rate = self.six_bit["skip_rate"]  # type: ignore[index]
        ax.set_title(f"recipe {self.recipe!r}: grey skip, blue NVFP4, orange INT8 (skip rate {rate:.0%})", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return path
