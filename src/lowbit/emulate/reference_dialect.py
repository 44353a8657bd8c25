"""Exact reference for :class:`lowbit.formats.Formatbook` (BlockDialect, arXiv 2501.01144).

Part of the reference backend: every value is a ``fractions.Fraction`` and every
rule is written the way :class:`~lowbit.formats.spec.Formatbook` states it.

Per block of ``block_size`` elements along the block axis:

1. NaN anywhere (or Inf with ``inf_block="nan"``): a NaN block (scale value NaN,
   scale code the NaN code, or 0 plus a NaN mask when the scale format has none).
2. Shared exponent k from the block's largest finite magnitude by the ``floor``
   rule of :func:`lowbit.emulate.reference._exp_scale` with emax = ``spec.emax``
   (reported: floor(log2 amax) - 2 for DialectFP4), clamped to the scale format.
3. Scaled magnitudes m = min(|x| / 2^k, 2^(emax+1)) (Inf counts as 2^(emax+1)).
4. The block's dialect by ``spec.selection`` (mse, two_stage or lut); with
   sub-formatbooks, mse and lut take the argmin over the dialects the block's
   sub-formatbook allows (ties to the lowest allowed id).
5. Element code: sign bit (the sign of x, zeros included) and the index of the
   nearest dialect value to m, ties to the even index (decided); for ``lut``
   the index of the nearest value to the centre of m's level cell (IDX).

Dequantized value: (-1)^s * dialect[index] * grid * 2^k, rounded once into the
output format.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np

from lowbit.emulate.backends import Parts
from lowbit.formats.spec import Formatbook


_INF = Fraction(10**9)  # above every scaled magnitude (they are at most 2^(emax+1))


def _pow2(e: int) -> Fraction:
    return Fraction(2) ** e


@functools.lru_cache(maxsize=1024)
def dialect_values(spec: Formatbook, d: int) -> tuple[Fraction, ...]:
    """Magnitudes of dialect ``d`` as exact values."""
    g = Fraction(spec.grid)
    return tuple(u * g for u in spec.dialects[d])


def nearest_index(values: tuple[Fraction, ...], m: Fraction) -> int:
    """Index of the value nearest to m >= 0, ties to the even index (saturates at the top)."""
    return min(range(len(values)), key=lambda i: (abs(m - values[i]), i % 2))


def fixed_point_level(spec: Formatbook, m: Fraction) -> int:
    """m on the half-grid (step grid / 2) by ``spec.fixed_point_rule``, saturated to the top level."""
    t = m / (Fraction(spec.grid) / 2)
    level = math.floor(t) if spec.fixed_point_rule == "truncate" else round(t)  # round(): ties to even
    return min(level, spec.levels - 1)


@functools.lru_cache(maxsize=64)
def beneficial_ranges(spec: Formatbook) -> list[list[tuple[Fraction, Fraction]]]:
    """Per dialect, its two_stage beneficial range as half-open intervals [lo, hi) of
    scaled magnitudes: the cells (between midpoints, in the merged value set of its
    pair) of the values only this dialect has. The last cell of a pair is open above."""
    out: list[list[tuple[Fraction, Fraction]]] = []
    for p in range(0, len(spec.dialects), 2):
        a, b = dialect_values(spec, p), dialect_values(spec, p + 1)
        merged = sorted(set(a) | set(b))
        for own, other in ((a, b), (b, a)):
            cells = []
            for i, v in enumerate(merged):
                if v in own and v not in other:
                    lo = (merged[i - 1] + v) / 2 if i else Fraction(0)
                    hi = (v + merged[i + 1]) / 2 if i + 1 < len(merged) else _INF
                    cells.append((lo, hi))
            out.append(cells)
    return out


def _select_mse(spec: Formatbook, mags: list[Fraction], allowed: list[int]) -> int:
    def err(d: int) -> Fraction:
        vals = dialect_values(spec, d)
        return sum(((m - vals[nearest_index(vals, m)]) ** 2 for m in mags), Fraction(0))

    return min(allowed, key=lambda d: (err(d), d))


def cell_centre(spec: Formatbook, m: Fraction) -> Fraction:
    """The centre of m's level cell, the value ``lut`` selection and IDX see for m."""
    return (fixed_point_level(spec, m) + Fraction(1, 2)) * (Fraction(spec.grid) / 2)


def _select_lut(spec: Formatbook, mags: list[Fraction], allowed: list[int]) -> int:
    return _select_mse(spec, [cell_centre(spec, m) for m in mags], allowed)


def _select_two_stage(spec: Formatbook, mags: list[Fraction], allowed: list[int]) -> int:
    assert len(allowed) == len(spec.dialects), "two_stage takes no sub-formatbooks (checked by the API)"
    step = Fraction(spec.grid) / 2
    levels = [fixed_point_level(spec, m) for m in mags]
    top_units = max(levels, default=0) // 2  # the block maximum truncated to the grid
    maxima = [spec.dialects[p][-1] for p in range(0, len(spec.dialects), 2)]
    top_units = min(max(top_units, min(maxima)), max(maxima))
    p = 2 * maxima.index(top_units)
    ranges = beneficial_ranges(spec)
    counts = [sum(1 for lv in levels if any(lo <= lv * step < hi for lo, hi in ranges[d])) for d in (p, p + 1)]
    if counts[0] != counts[1]:
        return p if counts[0] > counts[1] else p + 1
    return p if spec.pair_tie == "lower_id" else p + 1


SELECT = {"mse": _select_mse, "two_stage": _select_two_stage, "lut": _select_lut}


def _block_ranges(n: int, bs: int) -> list[tuple[int, int]]:
    return [(s, min(s + bs, n)) for s in range(0, n, bs)]


def quantize(spec: Formatbook, x: np.ndarray, subbooks: tuple[np.ndarray, np.ndarray] | None = None) -> Parts:
    """``subbooks``: None, or (masks, ids): masks[s][d] says whether sub-formatbook s allows
    dialect d, ids[i][b] is the sub-formatbook of block b of row i."""
    from lowbit.emulate.reference import _exp_scale

    rows, n = x.shape
    blocks = _block_ranges(n, spec.block_size)
    nb = len(blocks)
    codes = np.zeros((rows, n), np.uint8)
    scale_codes = np.zeros((rows, nb), np.uint8)
    scales = np.zeros((rows, nb), np.float64)
    ids = np.zeros((rows, nb), np.uint8)
    mask = np.zeros((rows, n), bool)
    sf = spec.scale
    top = _pow2(spec.emax + 1)
    sign_bit = 1 << spec.index_bits
    for i in range(rows):
        for b, (s, e) in enumerate(blocks):
            vals = [float(v) for v in x[i, s:e]]
            has_nan = any(math.isnan(v) for v in vals)
            has_inf = any(math.isinf(v) for v in vals)
            if has_nan or (has_inf and spec.inf_block == "nan"):
                scales[i, b] = np.nan
                if sf.nan_code is not None:
                    scale_codes[i, b] = sf.nan_code
                else:
                    mask[i, s:e] = True
                continue
            amax: Fraction | float = max((abs(Fraction(v)) for v in vals if not math.isinf(v)), default=Fraction(0))
            if has_inf and spec.inf_block == "inf_amax":
                amax = math.inf
            k = _exp_scale(spec, amax)  # type: ignore[arg-type]
            scale_codes[i, b] = k + sf.bias
            scales[i, b] = 2.0**k
            mags = [top if math.isinf(v) else min(abs(Fraction(v)) / _pow2(k), top) for v in vals]
            allowed = list(range(len(spec.dialects)))
            if subbooks is not None:
                allowed = [d for d in allowed if subbooks[0][subbooks[1][i, b], d]]
            d = SELECT[spec.selection](spec, mags, allowed)
            ids[i, b] = d
            dvals = dialect_values(spec, d)
            for j, (v, m) in enumerate(zip(vals, mags)):
                if spec.selection == "lut":
                    m = cell_centre(spec, m)
                idx = nearest_index(dvals, m)
                neg = math.copysign(1.0, v) < 0
                codes[i, s + j] = idx | (sign_bit if neg else 0)
    return Parts(
        codes=codes,
        scale_codes=scale_codes,
        scales=scales,
        nan_mask=mask if mask.any() else None,
        dialect_ids=ids,
    )


def dequantize(spec: Formatbook, parts: Parts, out: str) -> np.ndarray:
    from lowbit.emulate.reference import _to_out

    rows, n = parts.codes.shape
    assert parts.dialect_ids is not None and parts.scales is not None
    sign_bit = 1 << spec.index_bits
    values: list[list[Fraction | float]] = []
    for i in range(rows):
        row: list[Fraction | float] = []
        for j in range(n):
            b = j // spec.block_size
            scale = float(parts.scales[i, b])
            c = int(parts.codes[i, j])
            if math.isnan(scale) or (parts.nan_mask is not None and parts.nan_mask[i, j]):
                row.append(float("nan"))
                continue
            mag = dialect_values(spec, int(parts.dialect_ids[i, b]))[c & (sign_bit - 1)] * Fraction(scale)
            neg = bool(c & sign_bit)
            row.append((-0.0 if neg else 0.0) if mag == 0 else (-mag if neg else mag))
        values.append(row)
    return _to_out(values, out).reshape(rows, n)
