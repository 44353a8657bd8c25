"""The built-in backends: ``reference`` (exact, slow) and ``numba`` (fast CPU)."""

from __future__ import annotations

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


@hookimpl
def register_backends(register: Callable[[Any], None]) -> None:
    register(REFERENCE)
    register(NUMBA)
