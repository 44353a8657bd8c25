"""Shared test set-up: the markers the suite uses, and Triton's interpreter.

Triton decides at ``@triton.jit`` time whether a kernel runs in its interpreter, so
TRITON_INTERPRET=1 must be in the environment before any test module (or torch,
through Inductor) imports Triton; set here, it holds for the whole session. An
explicit TRITON_INTERPRET=0 (a GPU machine running the kernels for real) is kept.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "torchao: a preset that reproduces torchao 0.18 (float32 and bfloat16 input only)"
    )
