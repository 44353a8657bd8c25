"""Emulation: quantize / dequantize / fake_quant and the backend table."""

from __future__ import annotations

from lowbit.emulate.api import Quantized, dequantize, fake_quant, quantize
from lowbit.emulate.backends import Backend, BackendUnavailable, Parts, available_backends
from lowbit.emulate.reference import random_bits

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Parts",
    "Quantized",
    "available_backends",
    "dequantize",
    "fake_quant",
    "quantize",
    "random_bits",
]
