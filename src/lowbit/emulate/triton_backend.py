"""The Triton backend: GPU kernels bit-identical to the Numba backend.

It works on torch tensors where they live: the API hands it the (rows, n)
layout of the input as a tensor on the input's device (float16, bfloat16,
float32 or float64, never widened on the host) and gets tensors on that device
back: unpacked codes (uint8, or uint16 for codes wider than 8 bits), scale codes
(uint8), scale values (float64), the NaN mask (bool) and outputs of the
requested dtype. The kernels (:mod:`lowbit.emulate._triton_kernels`) replay the
Numba generic kernels operation for operation in float64 (see that module for
the numeric argument), so codes, scales and values are bit-identical to Numba's.

Host synchronisation is limited to scalars: the tensor scale of two-level
formats (an amax on the device, then the Numba backend's own float32 rounding
of amax / target on the host) and, for element formats without a NaN code,
whether any NaN was seen (the NaN mask is only kept when it is not empty, as in
Numba; ``nan="raise"`` formats raise on it).

Runs on a CUDA device, or on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's
interpreter, for tests: each program instance costs milliseconds there, so tiles
are made large enough for a few dozen program instances per launch).

Formatbooks (BlockDialect: mse, two_stage and lut selection, sub-formatbooks
included) run the kernels of :mod:`lowbit.emulate._triton_dialect` on the tables of
the Numba backend (``_numba_dialect._params``); the only host synchronisation is,
for a scale format without a NaN code, whether any NaN block needs a NaN mask.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import triton

from lowbit.emulate import _triton_dialect as D
from lowbit.emulate import _triton_kernels as K
from lowbit.emulate._numba_dialect import _params as _dialect_params
from lowbit.emulate.backends import Parts
from lowbit.emulate.numba_backend import (
    OUT_KINDS,
    OUT_PARAMS,
    _block_params_of,
    _nan_error,
    _tensor_scale_of,
    element_params,
    element_table,
)
from lowbit.formats.spec import BlockFormat, ExpScaleFormat, Formatbook

IN_KINDS = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
OUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}

GPU_TILE = 1024  # elements per program instance on a GPU
INTERPRET_PROGRAMS = 4  # program instances per launch aimed at under the interpreter (each costs ~15 ms)
INTERPRET_MAX_TILE = 1 << 16


def interpreting() -> bool:
    """Whether Triton runs its kernels in the interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(x: torch.Tensor) -> None:
    """CPU tensors only under the interpreter, CUDA tensors only without it."""
    if x.device.type == "cpu" and not interpreting():
        raise TypeError("backend 'triton' takes CPU tensors only under TRITON_INTERPRET=1; move x to a CUDA device")
    if x.device.type != "cpu" and interpreting():
        raise TypeError(f"x is on {x.device}, but TRITON_INTERPRET=1 runs Triton kernels on CPU tensors only")
    if x.device.type not in ("cpu", "cuda"):
        raise TypeError(f"backend 'triton' takes CUDA tensors, got a tensor on {x.device}")


# ---------------------------------------------------------------------------
# launch geometry


def _tile(total: int) -> int:
    """Elements per program instance: fixed on a GPU; under the interpreter large enough
    that a launch has about INTERPRET_PROGRAMS instances."""
    if not interpreting():
        return GPU_TILE
    return min(max(triton.next_power_of_2(-(-total // INTERPRET_PROGRAMS)), 64), INTERPRET_MAX_TILE)


def _block_tile(total_blocks: int, block_size: int) -> tuple[int, int]:
    """(blocks per program G, lanes per block BSP) of the block kernels."""
    bsp = triton.next_power_of_2(block_size)
    g = max(_tile(total_blocks * bsp) // bsp, 1)
    return g, bsp


def _launch(kernel: Any, total: int, tile: int, *args: Any, **constexprs: Any) -> None:
    if total:
        kernel[(triton.cdiv(total, tile),)](*args, **constexprs, enable_fp_fusion=False)


def _in(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The input as the kernels load it (bfloat16 as int16 bit patterns) and its kind."""
    kind = IN_KINDS[x.dtype]
    return (x.view(torch.int16) if x.dtype == torch.bfloat16 else x), kind


def _out(shape: tuple[int, ...], out: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(result tensor of dtype ``out``, the view the kernels store into)."""
    res = torch.empty(shape, dtype=OUT_DTYPES[out], device=device)
    return res, (res.view(torch.int16) if res.element_size() == 2 else res)


def _table(fmt: Any, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(element_table(fmt)).to(device)


def _seed_args(seed: int | None) -> tuple[int, bool]:
    """(seed * 0x9E3779B9 mod 2^32, use it): the first step of lowbias32, on the host."""
    return (0, False) if seed is None else ((int(seed) * 0x9E3779B9) & 0xFFFFFFFF, True)


def _tensor_scale(spec: BlockFormat, x: torch.Tensor) -> float | None:
    """The Numba backend's tensor scale, from an amax taken on the device."""
    if spec.tensor_scale is None:
        return None
    if x.numel() == 0:
        return _tensor_scale_of(spec, np.zeros(0, np.float64))
    a = x.abs()
    if spec.arithmetic != "torchao":  # finite values only
        a = torch.where(torch.isfinite(a), a, torch.zeros((), dtype=a.dtype, device=a.device))
    return _tensor_scale_of(spec, np.array([a.amax().item()], np.float64))


def _block_consts(spec: BlockFormat, device: torch.device) -> dict[str, Any]:
    bp, bf, sp = _block_params_of(spec)
    scale_table = _table(spec.scale, device) if not isinstance(spec.scale, ExpScaleFormat) else _table(spec.element, device)
    return {"table": _table(spec.element, device), "sp_table": scale_table, "EP": element_params(spec.element),
            "BP": bp, "BF": bf, "SP": sp}  # fmt: skip


def _dialect_args(spec: Formatbook, x: torch.Tensor, subbooks: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(table tensors and sub-formatbook masks, constexprs) of the Formatbook kernels: the
    Numba backend's tables on x's device; without sub-formatbooks the mask pointers are
    placeholders the kernels never read (HAS_SUB=False)."""
    bp, fp, du, dv, err, idx, ben, pair, ni = _dialect_params(spec)
    tables = tuple(torch.from_numpy(t).to(x.device) for t in (du, dv, err, idx, ben, pair))
    if subbooks is None:
        masks = (tables[0], tables[0])
    else:
        allowed, sub = subbooks
        masks = (torch.from_numpy(allowed.astype(np.int8)).to(x.device), torch.from_numpy(sub).to(x.device))
    nd = len(spec.dialects)
    consts = {"BP": bp, "FP": fp, "ND": nd, "NDP": triton.next_power_of_2(nd), "NI": ni,
              "HAS_SUB": subbooks is not None}  # fmt: skip
    return (*tables, *masks), consts


def _dialect_tile(spec: Formatbook, total_blocks: int) -> tuple[int, int]:
    """(G, BSP) of the quantize and fake_quant kernels: on a GPU, mse and lut score every
    dialect on a (G, BSP, dialects) tile, so G shrinks to keep that tile at GPU_TILE."""
    g, bsp = _block_tile(total_blocks, spec.block_size)
    if interpreting() or spec.selection == "two_stage":
        return g, bsp
    return max(GPU_TILE // (bsp * triton.next_power_of_2(len(spec.dialects))), 1), bsp


def _quantize_dialect(spec: Formatbook, x: torch.Tensor, subbooks: Any) -> Parts:
    rows, n = x.shape
    xin, kind = _in(x)
    nb = -(-n // spec.block_size)
    codes = torch.empty((rows, n), dtype=torch.uint8, device=x.device)
    mask = torch.empty((rows, n), dtype=torch.int8, device=x.device)
    scale_codes = torch.empty((rows, nb), dtype=torch.uint8, device=x.device)
    scales = torch.empty((rows, nb), dtype=torch.float64, device=x.device)
    ids = torch.empty((rows, nb), dtype=torch.uint8, device=x.device)
    tables, consts = _dialect_args(spec, x, subbooks)
    g, bsp = _dialect_tile(spec, rows * nb)
    _launch(D.quant_dialect, rows * nb, g, xin, codes, scale_codes, scales, ids, mask, *tables, n, nb, rows * nb,
            **consts, IN_KIND=kind, G=g, BSP=bsp)  # fmt: skip
    has_mask = spec.scale.nan_code is None and bool(mask.any())
    return Parts(codes=codes, scale_codes=scale_codes, scales=scales, nan_mask=mask.bool() if has_mask else None,
                 dialect_ids=ids)  # fmt: skip


def _dequantize_dialect(spec: Formatbook, parts: Parts, out: str) -> torch.Tensor:
    # the kernel indexes (rows, n) and (rows, blocks) arrays by flat offsets: make them dense
    # (the API's unpacked NaN mask is a column slice)
    codes, scales, ids = (a.contiguous() for a in (parts.codes, parts.scales, parts.dialect_ids))
    rows, n = codes.shape
    nb = scales.shape[1]
    res, store = _out((rows, n), out, codes.device)
    g, bsp = _block_tile(rows * nb, spec.block_size)
    dv = torch.from_numpy(_dialect_params(spec)[3]).to(codes.device)
    mask = parts.nan_mask if parts.nan_mask is not None else codes
    _launch(D.dequant_dialect, rows * nb, g, codes, scales, ids, mask, store, dv, n, nb,
            rows * nb, BS=spec.block_size, IB=spec.index_bits, NI=len(spec.dialects[0]),
            HAS_MASK=parts.nan_mask is not None, OUT_KIND=OUT_KINDS[out], OP=OUT_PARAMS.get(out, OUT_PARAMS["float32"]),
            G=g, BSP=bsp)  # fmt: skip
    return res


def _fake_quant_dialect(spec: Formatbook, x: torch.Tensor, out: str, subbooks: Any) -> torch.Tensor:
    rows, n = x.shape
    xin, kind = _in(x)
    nb = -(-n // spec.block_size)
    res, store = _out((rows, n), out, x.device)
    tables, consts = _dialect_args(spec, x, subbooks)
    g, bsp = _dialect_tile(spec, rows * nb)
    _launch(D.fq_dialect, rows * nb, g, xin, store, *tables, n, nb, rows * nb, **consts, IN_KIND=kind,
            OUT_KIND=OUT_KINDS[out], OP=OUT_PARAMS.get(out, OUT_PARAMS["float32"]), G=g, BSP=bsp)  # fmt: skip
    return res


# ---------------------------------------------------------------------------
# the backend functions (tensors in, tensors out)


def quantize(spec: Any, x: torch.Tensor, *, seed: int | None, subbooks: Any = None) -> Parts:
    """``subbooks`` (Formatbooks only, as the Numba backend takes it): None, or (allowed
    (sub-formatbooks, dialects) bool, sub (rows, blocks) int32) numpy arrays."""
    check_device(x)
    if isinstance(spec, Formatbook):
        return _quantize_dialect(spec, x, subbooks)
    rows, n = x.shape
    xin, kind = _in(x)
    seed_mul, use_seed = _seed_args(seed)
    if not isinstance(spec, BlockFormat):
        codes = torch.empty((rows, n), dtype=torch.uint16 if spec.bits > 8 else torch.uint8, device=x.device)
        mask = torch.empty((rows, n), dtype=torch.int8, device=x.device)
        tile = _tile(x.numel())
        ckern = codes.view(torch.int16) if spec.bits > 8 else codes
        _launch(K.quant_elem, x.numel(), tile, xin, ckern, mask, _table(spec, x.device), x.numel(), seed_mul,
                EP=element_params(spec), USE_SEED=use_seed, IN_KIND=kind, BLOCK=tile)  # fmt: skip
        if spec.has_nan or not bool(mask.any()):
            return Parts(codes=codes)
        if spec.nan == "raise":
            raise _nan_error(spec)
        return Parts(codes=codes, nan_mask=mask.bool())
    bs = spec.block_size
    nb = -(-n // bs)
    codes = torch.empty((rows, n), dtype=torch.uint8, device=x.device)
    scale_codes = torch.empty((rows, nb), dtype=torch.uint8, device=x.device)
    scales = torch.empty((rows, nb), dtype=torch.float64, device=x.device)
    ts = _tensor_scale(spec, x)
    c = _block_consts(spec, x.device)
    g, bsp = _block_tile(rows * nb, bs)
    geometry = (n, nb, rows * nb, 1.0 if ts is None else ts)
    if spec.arithmetic == "torchao":
        _launch(K.quant_block_torchao, rows * nb, g, xin, codes, scale_codes, scales, c.pop("table"),
                c.pop("sp_table"), *geometry, **c, IN_KIND=kind, G=g, BSP=bsp)  # fmt: skip
    else:
        _launch(K.quant_block, rows * nb, g, xin, codes, scale_codes, scales, c.pop("table"), c.pop("sp_table"),
                *geometry, seed_mul, **c, USE_SEED=use_seed, IN_KIND=kind, G=g, BSP=bsp)  # fmt: skip
    return Parts(codes=codes, scale_codes=scale_codes, scales=scales, tensor_scale=ts)


def dequantize(spec: Any, parts: Parts, out: str) -> torch.Tensor:
    codes = parts.codes
    check_device(codes)
    if isinstance(spec, Formatbook):
        return _dequantize_dialect(spec, parts, out)
    rows, n = codes.shape
    res, store = _out((rows, n), out, codes.device)
    okind, op = OUT_KINDS[out], OUT_PARAMS.get(out, OUT_PARAMS["float32"])
    if not isinstance(spec, BlockFormat):
        tile = _tile(codes.numel())
        ckern = codes.view(torch.int16) if spec.bits > 8 else codes
        mask = parts.nan_mask if parts.nan_mask is not None else codes
        _launch(K.dequant_elem, codes.numel(), tile, ckern, mask, store, _table(spec, codes.device), codes.numel(),
                EP=element_params(spec), HAS_MASK=parts.nan_mask is not None, OUT_KIND=okind, OP=op,
                BLOCK=tile)  # fmt: skip
        return res
    bs = spec.block_size
    nb = parts.scales.shape[1]
    g, bsp = _block_tile(rows * nb, bs)
    ts = 1.0 if parts.tensor_scale is None else parts.tensor_scale
    args = (codes, parts.scales, store, _table(spec.element, codes.device), n, nb, rows * nb, ts)
    consts = {"EP": element_params(spec.element), "BS": bs, "OUT_KIND": okind, "OP": op, "G": g, "BSP": bsp}
    if spec.arithmetic == "torchao" and not isinstance(spec.scale, ExpScaleFormat):
        _launch(K.dequant_nvfp4_torchao, rows * nb, g, *args, **consts, HAS_TS=parts.tensor_scale is not None)
    else:
        _launch(K.dequant_block, rows * nb, g, *args, **consts)
    return res


def fake_quant(spec: Any, x: torch.Tensor, *, seed: int | None, out: str, subbooks: Any = None) -> torch.Tensor:
    check_device(x)
    if isinstance(spec, Formatbook):
        return _fake_quant_dialect(spec, x, out, subbooks)
    rows, n = x.shape
    xin, kind = _in(x)
    res, store = _out((rows, n), out, x.device)
    okind, op = OUT_KINDS[out], OUT_PARAMS.get(out, OUT_PARAMS["float32"])
    seed_mul, use_seed = _seed_args(seed)
    if not isinstance(spec, BlockFormat):
        if spec.nan == "raise" and not spec.has_nan and bool(torch.isnan(x).any()):
            raise _nan_error(spec)
        tile = _tile(x.numel())
        _launch(K.fq_elem, x.numel(), tile, xin, store, _table(spec, x.device), x.numel(), seed_mul,
                EP=element_params(spec), USE_SEED=use_seed, IN_KIND=kind, OUT_KIND=okind, OP=op,
                BLOCK=tile)  # fmt: skip
        return res
    bs = spec.block_size
    nb = -(-n // bs)
    ts = _tensor_scale(spec, x)
    c = _block_consts(spec, x.device)
    g, bsp = _block_tile(rows * nb, bs)
    geometry = (n, nb, rows * nb, 1.0 if ts is None else ts)
    outs = {"OUT_KIND": okind, "OP": op, "IN_KIND": kind, "G": g, "BSP": bsp}
    if spec.arithmetic == "torchao":
        _launch(K.fq_block_torchao, rows * nb, g, xin, store, c.pop("table"), c.pop("sp_table"), *geometry,
                **c, **outs)  # fmt: skip
    else:
        _launch(K.fq_block, rows * nb, g, xin, store, c.pop("table"), c.pop("sp_table"), *geometry, seed_mul,
                **c, **outs, USE_SEED=use_seed)  # fmt: skip
    return res
