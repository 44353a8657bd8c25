"""lowbit: bit-exact emulation of low-bit number formats for PyTorch models."""

from __future__ import annotations

import os

# torch and Numba each keep an OpenMP thread pool. With OpenMP's default active
# waiting, the threads one pool leaves spinning after a parallel region starve the
# other pool's threads when cores are few: on the 2-core project machine a quantized
# linear layer (Numba fake_quant, then a torch matmul) took 24 ms instead of 3 ms.
# Passive waiting avoids that. OpenMP reads this when torch loads, so it only takes
# effect when lowbit is imported before torch (as in the `lowbit` command and the
# benchmarks); a value the user set is kept. See docs/performance.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lowbit import emulate, formats
from lowbit.checkpoint import CheckpointInfo, load, save
from lowbit.emulate import Quantized, dequantize, fake_quant, quantize
from lowbit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["CheckpointInfo", "Quantized", "dequantize", "emulate", "fake_quant", "formats", "hookimpl", "load", "quantize", "save"]
