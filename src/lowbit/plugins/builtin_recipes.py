"""The built-in recipes, registered through the same ``register_recipes`` hook a plugin uses.

Every recipe uses the default :class:`~lowbit.emulate.recipes.LayerPolicy`
(embedders, AdaLN modulation and the final layer in full precision) and leaves the
attention operands in full precision; ``apply(model, name, qk=..., pv=...)`` turns
them on. ``six_bit`` and ``static_w8a8`` need :func:`lowbit.emulate.calibrate` before
their first forward.
"""

from __future__ import annotations

from typing import Any, Callable

from lowbit.emulate.recipes import Recipe
from lowbit.emulate.scaled import Scaling
from lowbit.emulate.semantic import Decomposition, SeDA
from lowbit.emulate.sixbit import SixBit
from lowbit.hookspecs import hookimpl

_SEMANTIC = dict(weight="semantic_dialect_16", activation="semantic_dialect_16")

BUILTIN_RECIPES = (
    Recipe(name="fp8", weight="fp8_e4m3", activation="fp8_e4m3", description="FP8 E4M3 weights and activations (W8A8)"),
    Recipe(name="mxfp4", weight="mxfp4", activation="mxfp4", description="OCP MXFP4 weights and activations (W4A4)"),
    Recipe(name="nvfp4", weight="nvfp4", activation="nvfp4", description="NVFP4 weights and activations (W4A4)"),
    Recipe(
        name="block_dialect",
        weight="dialectfp4_mse",
        activation="dialectfp4",
        description="BlockDialect: DialectFP4, least-squares selection for weights, two-stage for activations",
    ),
    Recipe(
        name="semantic_dialect",
        **_SEMANTIC,
        decomposition=Decomposition(),
        assignment=SeDA(),
        description="SemanticDialect: learned formatbook (blocks of 16), attention-guided decomposition and SeDA",
    ),
    Recipe(
        name="semantic_dialect_no_seda",
        **_SEMANTIC,
        decomposition=Decomposition(),
        description="SemanticDialect without semantic-aware dialect assignment (ablation)",
    ),
    Recipe(
        name="semantic_dialect_no_decomp",
        **_SEMANTIC,
        assignment=SeDA(),
        description="SemanticDialect without attention-guided decomposition (ablation)",
    ),
    Recipe(
        name="six_bit",
        weight="nvfp4",
        activation="nvfp4",
        six_bit=SixBit(),
        description="NVFP4 weights; per block and step INT8 or NVFP4 activations by predicted sensitivity; "
        "temporal delta cache (needs calibrate)",
    ),
    Recipe(
        name="static_w8a8",
        weight="int8",
        activation="int8",
        scaling=Scaling(activation="static", smoothquant=0.5),
        description="INT8 per output channel; static per-tensor INT8 activations per step; SmoothQuant "
        "alpha 0.5 (needs calibrate)",
    ),
    Recipe(
        name="w8a8_dynamic",
        weight="int8",
        activation="int8",
        scaling=Scaling(activation="token"),
        description="INT8 per output channel, dynamic per-token INT8 activations",
    ),
)


@hookimpl
def register_recipes(register: Callable[[Any], None]) -> None:
    for recipe in BUILTIN_RECIPES:
        register(recipe)
