"""The built-in formats.

Element formats follow the OCP Microscaling v1.0 definitions (E2M1, E2M3, E3M2,
E4M3 = ml_dtypes' ``fn`` flavour, E5M2 = IEEE flavour) and saturate on overflow by
default. Block formats: MX (OCP MX v1.0: block 32, E8M0 scale, ``floor`` rule
with the exponent from the float bits), NVFP4 (block 16, E4M3 scale, float32
tensor scale, exact numerics) and presets named after the stack they reproduce
bit for bit (``@torchao`` = torchao 0.18, ``@ml_dtypes`` = ml_dtypes 0.6).

Formatbooks (BlockDialect, arXiv 2501.01144): ``dialectfp4`` is the reported
16-dialect DialectFP4 table with 5-bit shared exponents and the two-stage
selection the paper uses for activations; weights are meant to use
``dialectfp4_mse`` (least squared error per block, as reported for weights).
``block_dialect_16/32/64`` are the same table with least-squares selection at
block sizes 16, 32 and 64. ``semantic_dialect`` has 32 dialects on the
quarter-unit grid learned from calibration data
(``scripts/learn_semantic_dialect.py``) and lookup-table selection;
``semantic_dialect_16`` is the same book at blocks of 16, the format of the
``semantic_dialect`` recipes.
"""

from __future__ import annotations

from typing import Any, Callable

from lowbit.formats.spec import E8M0, BlockFormat, FloatFormat, Formatbook, IntFormat, TensorScale, evolve
from lowbit.hookspecs import hookimpl

FP4_E2M1 = FloatFormat(name="fp4_e2m1", ebits=2, mbits=1)
FP4_E3M0 = FloatFormat(name="fp4_e3m0", ebits=3, mbits=0)
FP4_E1M2 = FloatFormat(name="fp4_e1m2", ebits=1, mbits=2)
FP6_E2M3 = FloatFormat(name="fp6_e2m3", ebits=2, mbits=3)
FP6_E3M2 = FloatFormat(name="fp6_e3m2", ebits=3, mbits=2)
FP8_E4M3 = FloatFormat(name="fp8_e4m3", ebits=4, mbits=3, special="fn")
FP8_E5M2 = FloatFormat(name="fp8_e5m2", ebits=5, mbits=2, special="ieee")
INT4 = IntFormat(name="int4", int_bits=4)
INT8 = IntFormat(name="int8", int_bits=8)

ELEMENTS = (FP4_E2M1, FP4_E3M0, FP4_E1M2, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, INT4, INT8)

# ml_dtypes casts round to nearest even and overflow to NaN (fn) or Inf (IEEE).
ML_DTYPES_PRESETS = (
    evolve(FP8_E4M3, name="fp8_e4m3@ml_dtypes", overflow="nan"),
    evolve(FP8_E5M2, name="fp8_e5m2@ml_dtypes", overflow="inf"),
)


def _mx(name: str, element: FloatFormat, **kw: Any) -> BlockFormat:
    return BlockFormat(name=name, element=element, block_size=32, scale=E8M0, **kw)


MXFP4 = _mx("mxfp4", FP4_E2M1)
MX = (
    MXFP4,
    _mx("mxfp4_ceil", FP4_E2M1, scale_rule="ceil"),
    _mx("mxfp4_even", FP4_E2M1, scale_rule="even"),
    _mx("mxfp4_rceil", FP4_E2M1, scale_rule="rceil"),
    _mx("mxfp6_e2m3", FP6_E2M3),
    _mx("mxfp6_e3m2", FP6_E3M2),
    _mx("mxfp8_e4m3", FP8_E4M3),
    _mx("mxfp8_e5m2", FP8_E5M2),
)

# Exact NVFP4: s = RNE_e4m3(amax_b / (6 * ts)) clamped to [2^-9, 448] (every
# positive E4M3 value), ts = fl32(amax_tensor / 2688); an all-zero block gets
# scale 0. One rounding per step.
NVFP4 = BlockFormat(
    name="nvfp4",
    element=FP4_E2M1,
    block_size=16,
    scale=FP8_E4M3,
    scale_rule="nearest",
    scale_min=2.0**-9,
    scale_max=448.0,
    tensor_scale=TensorScale(),
    zero_block="zero_scale",
)

_TORCHAO = dict(arithmetic="torchao", inf_block="inf_amax")
TORCHAO_PRESETS = (
    evolve(MXFP4, name="mxfp4@torchao", **_TORCHAO),
    evolve(MXFP4, name="mxfp4_rceil@torchao", scale_rule="rceil", **_TORCHAO),
    evolve(MX[4], name="mxfp6_e2m3@torchao", **_TORCHAO),
    evolve(MX[6], name="mxfp8_e4m3@torchao", **_TORCHAO),
    # torchao clamps the block scale to [2^-6, 448] (no subnormal scales).
    evolve(NVFP4, name="nvfp4@torchao", tensor_scale=None, scale_min=2.0**-6, zero_block="min_scale", **_TORCHAO),
    evolve(
        NVFP4,
        name="nvfp4_2level@torchao",
        tensor_scale=TensorScale(amax="all"),
        scale_min=2.0**-6,
        zero_block="min_scale",
        **_TORCHAO,
    ),
)

# DialectFP4 (reported), in half-units: index 0..5 shared (0, 0.5, 1, 1.5, 2, 3),
# the two largest per dialect; pairs (2i, 2i+1) share a maximum, 7.5 down to 4.0.
# Dialect 7 is E2M1. Dialect 15 is reported with 2.5 at index 5 (least certain row).
DIALECTFP4_TABLE = (
    (0, 1, 2, 3, 4, 6, 11, 15), (0, 1, 2, 3, 4, 6, 9, 15),
    (0, 1, 2, 3, 4, 6, 11, 14), (0, 1, 2, 3, 4, 6, 9, 14),
    (0, 1, 2, 3, 4, 6, 10, 13), (0, 1, 2, 3, 4, 6, 8, 13),
    (0, 1, 2, 3, 4, 6, 10, 12), (0, 1, 2, 3, 4, 6, 8, 12),
    (0, 1, 2, 3, 4, 6, 9, 11), (0, 1, 2, 3, 4, 6, 7, 11),
    (0, 1, 2, 3, 4, 6, 9, 10), (0, 1, 2, 3, 4, 6, 7, 10),
    (0, 1, 2, 3, 4, 6, 8, 9), (0, 1, 2, 3, 4, 6, 7, 9),
    (0, 1, 2, 3, 4, 6, 7, 8), (0, 1, 2, 3, 4, 5, 6, 8),
)  # fmt: skip

DIALECTFP4 = Formatbook(name="dialectfp4", dialects=DIALECTFP4_TABLE, selection="two_stage")
DIALECTFP4_MSE = evolve(DIALECTFP4, name="dialectfp4_mse", selection="mse")
BLOCK_DIALECT = tuple(evolve(DIALECTFP4_MSE, name=f"block_dialect_{bs}", block_size=bs) for bs in (16, 32, 64))
# SemanticDialect-style formatbook (decided design): 32 dialects on the
# quarter-unit grid (0..31 quarter units), learned from a seeded calibration mix
# (Gaussian, Laplace, Student-t(3), outlier-heavy blocks) by
# lowbit.formats.learn_formatbook (refine: greedy on the half-unit grid, then
# one-value moves on the quarter grid). Made by:
#   .venv/bin/python scripts/learn_semantic_dialect.py --blocks-per-kind 4000 --seed 0
# Data, not code: the package never learns at import.
SEMANTIC_DIALECT_TABLE = (
    (0, 1, 2, 3, 4, 6, 20, 28), (0, 1, 2, 3, 4, 6, 9, 22),
    (0, 3, 6, 10, 14, 18, 24, 30), (0, 1, 2, 3, 4, 6, 9, 17),
    (0, 2, 5, 8, 11, 15, 20, 27), (0, 2, 4, 7, 10, 13, 17, 24),
    (0, 2, 4, 6, 9, 13, 17, 30), (0, 2, 4, 6, 8, 11, 14, 20),
    (0, 2, 5, 8, 12, 16, 22, 29), (0, 1, 2, 4, 6, 8, 11, 17),
    (0, 1, 2, 3, 4, 6, 9, 26), (0, 4, 8, 12, 16, 20, 24, 30),
    (0, 2, 4, 6, 8, 11, 15, 24), (0, 2, 4, 6, 9, 12, 15, 19),
    (0, 3, 6, 10, 14, 18, 22, 28), (0, 1, 2, 4, 6, 8, 11, 30),
    (0, 2, 4, 6, 8, 10, 13, 18), (0, 2, 4, 6, 9, 13, 19, 24),
    (0, 2, 4, 6, 9, 12, 16, 22), (0, 2, 4, 6, 8, 11, 14, 22),
    (0, 2, 4, 7, 10, 14, 18, 22), (0, 2, 4, 6, 9, 12, 16, 27),
    (0, 2, 4, 7, 10, 13, 18, 28), (0, 2, 4, 6, 8, 11, 14, 17),
    (0, 2, 4, 7, 10, 14, 20, 30), (0, 2, 4, 7, 10, 13, 16, 20),
    (0, 1, 2, 4, 6, 8, 11, 19), (0, 2, 4, 6, 8, 10, 13, 16),
    (0, 2, 4, 7, 10, 14, 19, 25), (0, 1, 2, 4, 6, 8, 11, 24),
    (0, 4, 8, 12, 16, 21, 26, 31), (0, 2, 5, 8, 12, 16, 20, 25),
)  # fmt: skip

# Lookup-table selection (least squares on the centres of the 1/8-wide level
# cells, 64 levels), block 32, 5-bit shared exponent: 4 + (5 + 5) / 32 bits per element.
SEMANTIC_DIALECT = Formatbook(name="semantic_dialect", dialects=SEMANTIC_DIALECT_TABLE, grid=0.25, selection="lut")
# The same book at blocks of 16: 4 + (5 + 5) / 16 = 4.625 bits per element. The
# semantic_dialect recipes use it (at blocks of 32 they did not beat nvfp4 on the
# bundled model: docs/performance.md).
SEMANTIC_DIALECT_16 = evolve(SEMANTIC_DIALECT, name="semantic_dialect_16", block_size=16)

FORMATBOOKS = (DIALECTFP4, DIALECTFP4_MSE, *BLOCK_DIALECT, SEMANTIC_DIALECT, SEMANTIC_DIALECT_16)

BUILTIN_FORMATS = (*ELEMENTS, *ML_DTYPES_PRESETS, *MX, NVFP4, *TORCHAO_PRESETS, *FORMATBOOKS)


@hookimpl
def register_formats(register: Callable[[Any], None]) -> None:
    for spec in BUILTIN_FORMATS:
        register(spec)
