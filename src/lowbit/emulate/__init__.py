"""Emulation: quantize / dequantize / fake_quant and the backend table."""

from __future__ import annotations

from lowbit.emulate.api import Quantized, SubFormatbooks, dequantize, fake_quant, pack_bits, quantize, unpack_bits
from lowbit.emulate.backends import Backend, BackendUnavailable, Parts, available_backends
from lowbit.emulate.reference import random_bits
from lowbit.emulate.torch_ops import fake_quant_op

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Parts",
    "Quantized",
    "SubFormatbooks",
    "available_backends",
    "dequantize",
    "fake_quant",
    "fake_quant_op",
    "pack_bits",
    "quantize",
    "random_bits",
    "unpack_bits",
]
