"""FP6 E3M2 with stochastic rounding, as a lowbit element format and an MX block format.

Element ``fp6_e3m2_sr``: OCP Microscaling v1.0 FP6 E3M2 (1 sign, 3 exponent and
2 mantissa bits, bias 3, subnormals kept, no Inf or NaN codes, largest value 28).
Rounding is stochastic with 8 random bits: a value between two neighbouring
codes rounds up with probability floor(frac * 2^8) / 2^8, where frac is its
distance from the lower code in units of the gap (the rule lowbit documents in
``lowbit.formats.spec``). There is no fixed seed: each call draws a fresh one
unless the caller passes ``seed=...``. Overflow saturates to +-28; a NaN input
is kept through lowbit's NaN mask, since the format has no NaN code.

Block ``mxfp6_e3m2_sr``: OCP MX v1.0 layout - 32 consecutive elements along the
last axis share an E8M0 scale X = 2^(floor(log2 amax) - 4) (the ``floor`` rule;
4 is E3M2's largest exponent), and the elements round stochastically as above.
"""

from __future__ import annotations

from typing import Any, Callable

import lowbit
from lowbit.formats import E8M0, BlockFormat, FloatFormat

FP6_E3M2_SR = FloatFormat(
    name="fp6_e3m2_sr",
    ebits=3,
    mbits=2,
    bias=3,
    special="none",
    subnormal="keep",
    overflow="saturate",
    rounding="stochastic",
    sr_bits=8,
    sr_seed=None,
)

MXFP6_E3M2_SR = BlockFormat(
    name="mxfp6_e3m2_sr",
    element=FP6_E3M2_SR,
    block_size=32,
    scale=E8M0,
    scale_rule="floor",
)


@lowbit.hookimpl
def register_formats(register: Callable[[Any], None]) -> None:
    """Register the element format and its MX block format."""
    register(FP6_E3M2_SR)
    register(MXFP6_E3M2_SR)
