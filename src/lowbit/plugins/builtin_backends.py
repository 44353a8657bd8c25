"""The built-in backends: ``reference`` (exact, slow), ``numba`` (fast CPU) and
``triton`` (GPU, or Triton's interpreter on the CPU)."""

from __future__ import annotations

import os
from typing import Any, Callable

from lowbit.emulate.backends import Backend
from lowbit.formats.spec import SPEC_TYPES
from lowbit.hookspecs import hookimpl

REFERENCE = Backend(
    name="reference",
    module="lowbit.emulate.reference",
    specs=SPEC_TYPES,
    description="exact rational arithmetic (Python fractions), slow, obviously right",
)
NUMBA = Backend(
    name="numba",
    module="lowbit.emulate.numba_backend",
    specs=SPEC_TYPES,
    requires=("numba",),
    description="Numba CPU kernels, bit-identical to the reference",
)


def _triton_check() -> str | None:
    """A CUDA device, or TRITON_INTERPRET=1 for the interpreter on CPU tensors."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return (
        "backend 'triton' needs a CUDA device (torch.cuda.is_available() is False here) "
        "or TRITON_INTERPRET=1 in the environment to run its kernels in Triton's interpreter on CPU tensors"
    )


TRITON = Backend(
    name="triton",
    module="lowbit.emulate.triton_backend",
    specs=SPEC_TYPES,
    requires=("triton",),
    check=_triton_check,
    tensors=True,
    description="Triton kernels on torch tensors (CUDA, or TRITON_INTERPRET=1), bit-identical to Numba",
)


@hookimpl
def register_backends(register: Callable[[Any], None]) -> None:
    register(REFERENCE)
    register(NUMBA)
    register(TRITON)
