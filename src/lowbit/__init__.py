"""lowbit: bit-exact emulation of low-bit number formats for PyTorch models."""

from __future__ import annotations

from lowbit import emulate, formats
from lowbit.emulate import Quantized, dequantize, fake_quant, quantize
from lowbit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["Quantized", "dequantize", "emulate", "fake_quant", "formats", "hookimpl", "quantize"]
