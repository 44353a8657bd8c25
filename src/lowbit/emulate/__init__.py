"""Emulation: quantize / dequantize / fake_quant and the backend table."""

from __future__ import annotations

from lowbit.emulate.api import Quantized, SubFormatbooks, dequantize, fake_quant, pack_bits, quantize, unpack_bits
from lowbit.emulate.backends import Backend, BackendUnavailable, Parts, available_backends
from lowbit.emulate.model import Emulation, apply, calibrate, remove
from lowbit.emulate.recipes import Keep, LayerPolicy, Quantize, Recipe, get_recipe, recipes
from lowbit.emulate.report import LayerReport, OperandReport, Report
from lowbit.emulate.reference import random_bits
from lowbit.emulate.torch_ops import fake_quant_op

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Emulation",
    "Keep",
    "LayerPolicy",
    "LayerReport",
    "OperandReport",
    "Parts",
    "Quantize",
    "Quantized",
    "Recipe",
    "Report",
    "SubFormatbooks",
    "apply",
    "available_backends",
    "calibrate",
    "dequantize",
    "fake_quant",
    "fake_quant_op",
    "get_recipe",
    "pack_bits",
    "quantize",
    "random_bits",
    "recipes",
    "remove",
    "unpack_bits",
]
