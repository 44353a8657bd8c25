"""Shared test set-up: the markers the suite uses."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "torchao: a preset that reproduces torchao 0.18 (float32 and bfloat16 input only)"
    )
