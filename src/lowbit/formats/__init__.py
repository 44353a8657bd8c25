"""Format specs and the registry lookups.

    >>> import lowbit
    >>> lowbit.formats.get("mxfp4").block_size
    32
"""

from __future__ import annotations

from typing import Any

from lowbit.formats.spec import (
    BF16,
    E5M0,
    E8M0,
    F16,
    F32,
    F64,
    BlockFormat,
    CodebookFormat,
    ExpScaleFormat,
    FloatFormat,
    Format,
    Formatbook,
    IntFormat,
    TensorScale,
    decode_exact,
    evolve,
)
from lowbit.formats.learn import calibration_error, learn_formatbook
from lowbit.registry import registry


def dialect_histogram(q: Any) -> Any:
    """Blocks per dialect id of a quantized Formatbook tensor (an int64 array, one entry per dialect).

    The per-block choice itself is ``q.dialect_ids`` (shape (rows, blocks)).
    """
    import numpy as np

    if not isinstance(getattr(q, "spec", None), Formatbook) or q.dialect_ids is None:
        raise TypeError("dialect_histogram needs a Quantized tensor of a Formatbook format")
    return np.bincount(q.dialect_ids.ravel().astype(np.int64), minlength=len(q.spec.dialects))


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
    "E5M0",
    "E8M0",
    "F16",
    "F32",
    "F64",
    "BlockFormat",
    "CodebookFormat",
    "ExpScaleFormat",
    "FloatFormat",
    "Format",
    "Formatbook",
    "calibration_error",
    "dialect_histogram",
    "IntFormat",
    "TensorScale",
    "decode_exact",
    "evolve",
    "get",
    "learn_formatbook",
    "names",
    "resolve",
]
