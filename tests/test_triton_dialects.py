"""The Triton Formatbook kernels (BlockDialect: mse, two_stage, lut selection) equal the
Numba backend bit for bit (rtol=0, atol=0: codes, scale codes, scale values, dialect ids,
NaN mask, dequantized values, fake_quant; ``test_triton._compare``).

tests/test_triton.py runs the registered Formatbooks through its hard cases and drawn
inputs; here: policy variants no registered Formatbook has (block sizes 16/24/64,
truncated and rounded levels, ``pair_tie="higher_id"``, E8M0 scales with a NaN code, Inf
saturation and inf_amax, a small grid with 4-value dialects), the adversarial blocks of
tests/test_dialect_fast_paths.py (level boundaries and element midpoints with their
neighbours, sparse blocks whose counts and sums tie, zero, signed-zero, subnormal, huge
and exponent-clamped blocks, NaN and Inf blocks) in every input dtype, partial blocks,
sub-formatbooks for mse and lut, and every axis of a 3-D tensor. Inputs are small: under
TRITON_INTERPRET=1 every program instance costs milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import test_triton
from test_dialect_fast_paths import _adversarial
from test_triton import _compare, _examples, _params, _triton

from lowbit.emulate import SubFormatbooks
from lowbit.formats import evolve, get, names
from lowbit.formats.spec import E8M0, Formatbook
from lowbit.plugins.builtin_backends import TRITON
from lowbit.testing import strategies
from lowbit.testing.conformance import input_dtypes

pytestmark = test_triton.pytestmark  # the interpreter or CUDA; the interpreter's warnings

DIALECTFP4, MSE, SEMANTIC = get("dialectfp4"), get("dialectfp4_mse"), get("semantic_dialect")
REGISTERED = [get(n) for n in names() if isinstance(get(n), Formatbook)]
# a grid-unit formatbook with 4-value dialects (index_bits 2, 8 grid units, 16 levels):
# four pairs for two_stage (maxima 4..7), blocks of 24 (masked lanes in every tile)
SMALL = ((0, 1, 2, 4), (0, 2, 3, 4), (0, 1, 3, 5), (0, 2, 4, 5), (0, 1, 4, 6), (0, 3, 5, 6), (0, 2, 5, 7), (0, 3, 6, 7))
SMALL_TWO_STAGE = Formatbook(name="small_two_stage", dialects=SMALL, grid=1.0, block_size=24, selection="two_stage")
VARIANTS = [
    evolve(DIALECTFP4, name="dialectfp4_b16", block_size=16),
    evolve(DIALECTFP4, name="dialectfp4_b64_truncate", block_size=64, fixed_point="truncate"),
    evolve(DIALECTFP4, name="dialectfp4_higher_id_e8m0", pair_tie="higher_id", scale=E8M0),
    evolve(DIALECTFP4, name="dialectfp4_saturate", inf_block="saturate"),
    evolve(DIALECTFP4, name="dialectfp4_lut", selection="lut"),
    evolve(MSE, name="dialectfp4_mse_e8m0_inf_amax", scale=E8M0, inf_block="inf_amax"),
    evolve(SEMANTIC, name="semantic_dialect_b16_e8m0", block_size=16, scale=E8M0),
    evolve(SEMANTIC, name="semantic_dialect_b64_saturate", block_size=64, inf_block="saturate"),
    SMALL_TWO_STAGE,
    evolve(SMALL_TWO_STAGE, name="small_mse", selection="mse"),
    evolve(SMALL_TWO_STAGE, name="small_lut", selection="lut", fixed_point=None),
]
SELECTABLE = [s for s in REGISTERED + VARIANTS if s.selection != "two_stage"]  # those taking sub-formatbooks


def _names(specs: list[Formatbook]) -> list[str]:
    return [s.name for s in specs]


def test_every_formatbook_is_implemented() -> None:
    assert {s.selection for s in REGISTERED} == {"mse", "two_stage", "lut"}
    for spec in REGISTERED + VARIANTS:
        assert TRITON.implements(spec), spec.name
        assert TRITON.limits(spec) is None


@pytest.mark.parametrize(("spec", "kind"), _params(VARIANTS))
def test_variant_hard_cases(spec: Formatbook, kind: str) -> None:
    _compare(spec, _examples(spec, kind), seed=0)


@pytest.mark.parametrize("spec", VARIANTS, ids=_names(VARIANTS))
def test_variant_drawn_inputs(spec: Formatbook) -> None:
    @settings(max_examples=3, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(x=st.sampled_from(input_dtypes(spec)).flatmap(lambda k: strategies.arrays(spec, k)))
    def drawn(x: np.ndarray) -> None:
        _compare(spec, x, 0, out_kinds=(x.dtype.name,))

    drawn()


# the adversarial blocks of each selection and scale once per input dtype (float32 is
# their own dtype; the others round them, which moves values off and onto boundaries)
ADVERSARIAL = [
    pytest.param(spec, kind, id=f"{spec.name}-{kind}")
    for spec, kinds in (
        (DIALECTFP4, ("float32", "float16")),
        (MSE, ("float32", "bfloat16")),
        (SEMANTIC, ("float32", "float64")),
        (VARIANTS[2], ("float32",)),  # higher_id, E8M0
        (VARIANTS[1], ("bfloat16",)),  # block 64, truncate
        (VARIANTS[4], ("float32",)),  # lut on the DialectFP4 table
        (VARIANTS[5], ("float16",)),  # mse, E8M0, inf_amax
        (SMALL_TWO_STAGE, ("float32",)),
        (VARIANTS[-2], ("float64",)),
        (VARIANTS[-1], ("float32",)),
    )
    for kind in kinds
]


@pytest.mark.parametrize(("spec", "kind"), ADVERSARIAL)
def test_adversarial_blocks(spec: Formatbook, kind: str) -> None:
    x = strategies.cast(_adversarial(spec, seed=len(spec.name)).astype(np.float64), kind)
    _compare(spec, x, seed=0, out_kinds=(kind,))
    # a partial last block next to full ones
    _compare(spec, np.ascontiguousarray(x[:6, : 2 * spec.block_size + 5]), seed=0, out_kinds=("float32",))


def _subbooks(n_dialects: int, ids: np.ndarray, rng: np.random.Generator) -> SubFormatbooks:
    """Sub-formatbooks of 1, 2, 3 dialects (the largest id among them) and all dialects."""
    groups = [[n_dialects - 1], rng.choice(n_dialects, 2, replace=False).tolist(),
              [*rng.choice(n_dialects - 1, 2, replace=False).tolist(), n_dialects - 1], list(range(n_dialects))]  # fmt: skip
    return SubFormatbooks.from_dialects(groups, n_dialects, ids=ids)


@pytest.mark.parametrize("spec", SELECTABLE, ids=_names(SELECTABLE))
def test_sub_formatbooks(spec: Formatbook) -> None:
    rng = np.random.default_rng(len(spec.name))
    bs = spec.block_size
    x = (rng.laplace(size=(6, 3 * bs + bs // 2)) * np.exp2(rng.integers(-6, 6, (6, 1)))).astype(np.float32)
    x[1, 3] = np.nan  # a NaN block among restricted ones
    x[4, bs : 2 * bs] = 0.0
    x[5, :bs] = -0.0
    # one sub-formatbook per row (per token), then one per block
    nd = len(spec.dialects)
    _compare(spec, x, seed=0, out_kinds=("float32",), subbooks=_subbooks(nd, rng.integers(0, 4, (6, 1)), rng))
    sb = _subbooks(nd, rng.integers(0, 4, (6, 4)), rng)
    _compare(spec, x, seed=0, out_kinds=("bfloat16",), subbooks=sb)
    # one id per row and a list per block position (the 4 blocks of a row)
    per_position = np.stack([_subbooks(nd, 0, rng).masks for _ in range(4)], axis=1)
    _compare(spec, x, seed=0, out_kinds=("float32",), subbooks=SubFormatbooks(masks=per_position, ids=rng.integers(0, 4, (6, 1))))
    # the restriction is in force: a block's dialect is one its sub-formatbook allows
    q = _triton(spec, torch.from_numpy(x), subbooks=sb).cpu()
    ok = ~np.isnan(q.scales)
    assert sb.masks[sb.ids, q.dialect_ids][ok].all()
    free = _triton(spec, torch.from_numpy(x)).cpu()
    assert (free.dialect_ids[ok] != q.dialect_ids[ok]).any()  # and it changes some choices


@pytest.mark.parametrize("spec", [DIALECTFP4, MSE, SEMANTIC], ids=_names([DIALECTFP4, MSE, SEMANTIC]))
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_any_axis_and_partial_blocks(spec: Formatbook, axis: int) -> None:
    rng = np.random.default_rng(axis)
    x = (rng.standard_normal((5, 37, 3)) * np.exp2(rng.integers(-8, 8, (5, 37, 3)))).astype(np.float32)
    x[1, 2, 0], x[2, 5, 1], x[0, 0, 2] = np.nan, -np.inf, -0.0
    _compare(spec, x, seed=0, axis=axis, out_kinds=("float32",))
    if spec.selection != "two_stage":  # sub-formatbook ids broadcast along the block axis
        ids = rng.integers(0, 4, tuple(1 if a == axis else s for a, s in enumerate(x.shape)))
        sb = _subbooks(len(spec.dialects), ids, rng)
        _compare(spec, x, seed=0, axis=axis, out_kinds=("float32",), subbooks=sb)
