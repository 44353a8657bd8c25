"""Format specs and the registry lookups.

    >>> import lowbit
    >>> lowbit.formats.get("mxfp4").block_size
    32
"""

from __future__ import annotations

from typing import Any

from lowbit.formats.spec import (
    BF16,
    E8M0,
    F16,
    F32,
    F64,
    BlockFormat,
    CodebookFormat,
    ExpScaleFormat,
    FloatFormat,
    Format,
    IntFormat,
    TensorScale,
    decode_exact,
    evolve,
)
from lowbit.registry import registry


def get(name: str) -> Any:
    """The registered spec called ``name``; unknown names list the closest ones."""
    return registry().formats.get(name)


def names() -> list[str]:
    """Every registered format name, in registration order."""
    return list(registry().formats.items)


def resolve(fmt: Any) -> Any:
    """A spec from a name or a spec (specs pass through)."""
    return get(fmt) if isinstance(fmt, str) else fmt


__all__ = [
    "BF16",
    "E8M0",
    "F16",
    "F32",
    "F64",
    "BlockFormat",
    "CodebookFormat",
    "ExpScaleFormat",
    "FloatFormat",
    "Format",
    "IntFormat",
    "TensorScale",
    "decode_exact",
    "evolve",
    "get",
    "names",
    "resolve",
]
