"""Fake quantization that also says what it did: bits, error, clipping, dialect usage.

Definitions (used by every report in lowbit):

- ``bits``: storage of the quantized tensor, :meth:`Quantized.nbytes` x 8 (codes,
  scale codes, dialect ids, sub-formatbook ids and masks, tensor scale), plus any
  ``extra_bits`` a caller adds (e.g. a re-quantized residual);
- ``clipped``: elements whose magnitude exceeds the largest magnitude of their
  dequantized block (element formats: of the whole tensor), i.e. elements the format
  saturated; NaN inputs are not counted;
- ``sq_error`` / ``sq_signal``: sums of (y - x)^2 and x^2 in float64, for SQNR.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch

from lowbit.emulate.api import Quantized, SubFormatbooks, dequantize, fake_quant, quantize
from lowbit.formats import resolve

__all__ = ["QuantStats", "error_stats", "fake_quant_with_stats"]


@attrs.frozen
class QuantStats:
    """Totals over one or more quantized tensors; ``a + b`` merges two."""

    elements: int = 0
    bits: float = 0.0
    clipped: int = 0
    sq_error: float = 0.0
    sq_signal: float = 0.0
    dialect_counts: np.ndarray | None = attrs.field(default=None, eq=False)

    def __add__(self, other: QuantStats) -> QuantStats:
        if self.dialect_counts is None or other.dialect_counts is None:
            counts = self.dialect_counts if other.dialect_counts is None else other.dialect_counts
        else:
            counts = self.dialect_counts + other.dialect_counts
        return QuantStats(
            self.elements + other.elements,
            self.bits + other.bits,
            self.clipped + other.clipped,
            self.sq_error + other.sq_error,
            self.sq_signal + other.sq_signal,
            counts,
        )

    @property
    def bits_per_element(self) -> float:
        return self.bits / self.elements if self.elements else float("nan")

    @property
    def clip_rate(self) -> float:
        return self.clipped / self.elements if self.elements else float("nan")

    @property
    def sqnr_db(self) -> float:
        """10 log10(signal / error); inf when the error is zero."""
        if self.sq_error == 0:
            return float("inf")
        return 10 * float(np.log10(self.sq_signal / self.sq_error)) if self.sq_signal > 0 else float("-inf")


def _block_view(a: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """``a`` with ``axis`` last, zero-padded to whole blocks: (rows, blocks, block)."""
    a = a.movedim(axis, -1).reshape(-1, a.shape[axis])
    pad = (-a.shape[1]) % block
    if pad:
        a = torch.nn.functional.pad(a, (0, pad))
    return a.reshape(a.shape[0], -1, block)


def _clipped(x: torch.Tensor, y: torch.Tensor, spec: Any, axis: int) -> int:
    block = getattr(spec, "block_size", None)
    ax, ay = x.detach().abs().float(), y.detach().abs().float()
    if block is None:
        top = ay[~torch.isnan(ay)].max() if ay.numel() else ay.new_zeros(())
        return int((ax > top).sum())
    bx, by = _block_view(ax, axis, block), _block_view(torch.nan_to_num(ay, nan=0.0), axis, block)
    top = by.amax(dim=-1, keepdim=True)
    return int((bx > top).sum())


def error_stats(reference: torch.Tensor, y: torch.Tensor) -> QuantStats:
    """Elements, sum of (y - reference)^2 and of reference^2 in float64, NaNs left out."""
    r = reference.detach().reshape(-1).double()
    d = y.detach().reshape(-1).double() - r
    nan = torch.isnan(d)
    if bool(nan.any()):  # NaN in either operand: leave those elements out
        keep = ~nan
        r, d = r[keep], d[keep]
    return QuantStats(elements=reference.numel(), sq_error=float(torch.dot(d, d)), sq_signal=float(torch.dot(r, r)))


def fake_quant_with_stats(
    x: torch.Tensor,
    fmt: Any,
    *,
    axis: int = -1,
    backend: str = "auto",
    subbooks: SubFormatbooks | None = None,
    extra_bits: float = 0.0,
) -> tuple[torch.Tensor, QuantStats, Quantized]:
    """``fake_quant`` of a torch tensor, with its :class:`QuantStats` and the :class:`Quantized`."""
    spec = resolve(fmt)
    q = quantize(x, spec, axis=axis, backend=backend, subbooks=subbooks)
    # Deterministic formats: fake_quant equals dequantize(q) bit for bit (the conformance
    # suite checks it) and is faster; stochastic rounding must reuse q's random bits.
    if q.seed is None:
        y = fake_quant(x, spec, axis=axis, backend=backend, subbooks=subbooks)
    else:
        y = dequantize(q, backend=backend)
    counts = None
    if q.dialect_ids is not None:
        ids = np.asarray(q.cpu().dialect_ids).ravel().astype(np.int64)
        counts = np.bincount(ids, minlength=len(spec.dialects))
    stats = attrs.evolve(
        error_stats(x, y),
        bits=8.0 * q.nbytes() + extra_bits,
        clipped=_clipped(x, y, spec, axis),
        dialect_counts=counts,
    )
    return y, stats, q
