"""Backends: who computes quantize / dequantize / fake_quant for which specs.

A :class:`Backend` is a value registered through ``register_backends``. It names
the spec types (or exact spec names) it implements and the module that holds its
functions; the module is imported only when first used. ``check`` says why a
backend cannot run here (``None`` when it can). Nothing falls back silently:
asking for a backend that cannot run, or that does not implement a spec, raises
:class:`BackendUnavailable` with the reason.

A backend module provides, each taking the spec first:

``quantize(spec, x, *, seed) -> Parts``
    x: C-contiguous float32 or float64 array of shape (rows, n), the block axis
    last. Returns unpacked codes (rows, n) and, for block formats, scale codes,
    scale values (rows, blocks) and the tensor scale; for formatbooks also the
    dialect id of every block (rows, blocks).
``dequantize(spec, parts, out) -> ndarray``
    ``out`` names the output format: "float16", "bfloat16", "float32" or
    "float64"; float16/bfloat16 results are returned as uint16 bit patterns.
``fake_quant(spec, x, *, seed, out) -> ndarray``
    exactly ``dequantize(spec, quantize(spec, x, seed=seed), out)``.

A backend with ``tensors=True`` (Triton) takes and returns torch tensors on the
input's device instead: x is the (rows, n) layout in the input's own dtype
(float16, bfloat16, float32 or float64), Parts hold tensors on that device
(``tensor_scale`` stays a float) and outputs are tensors of the requested dtype.
``limits(spec)`` says why a spec of a listed type is not covered (None when it is).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any, Callable

import attrs
import numpy as np
from attrs import field, frozen


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here or does not implement the spec."""


def _no_check() -> str | None:
    return None


def _no_limits(_spec: Any) -> str | None:
    return None


@frozen(kw_only=True)
class Backend:
    """A named implementation of the emulation functions for some specs."""

    name: str
    module: str
    specs: tuple[Any, ...] = field(converter=tuple)
    requires: tuple[str, ...] = field(default=(), converter=tuple)
    check: Callable[[], str | None] = _no_check
    limits: Callable[[Any], str | None] = _no_limits
    tensors: bool = False
    description: str = ""

    def unavailable_reason(self) -> str | None:
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"backend {self.name!r} needs the Python package {mod!r}, which is not installed"
        return self.check()

    def implements(self, spec: Any) -> bool:
        listed = spec.name in self.specs or any(isinstance(k, type) and isinstance(spec, k) for k in self.specs)
        return listed and self.limits(spec) is None

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


@frozen
class Parts:
    """Unpacked quantization results, as backends exchange them."""

    codes: np.ndarray
    scale_codes: np.ndarray | None = None
    scales: np.ndarray | None = None
    tensor_scale: float | None = None
    nan_mask: np.ndarray | None = None
    dialect_ids: np.ndarray | None = None

    def replace(self, **kw: Any) -> "Parts":
        return attrs.evolve(self, **kw)


def takes_tensors(name: str) -> bool:
    """Whether backend ``name`` works on torch tensors on their device (else numpy arrays)."""
    from lowbit.registry import registry

    return registry().backends.get(name).tensors


def backend_for(spec: Any, name: str) -> ModuleType:
    """The loaded module of backend ``name`` for ``spec``, or an explanation."""
    from lowbit.registry import registry

    backend = registry().backends.get(name)
    if not backend.implements(spec):
        why = backend.limits(spec)
        raise BackendUnavailable(
            f"backend {name!r} does not implement format {spec.name!r} ({type(spec).__name__})" + (f": {why}" if why else "")
        )
    reason = backend.unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)
    return backend.load()


def available_backends(spec: Any) -> list[str]:
    """Names of the backends that implement ``spec`` and can run here."""
    from lowbit.registry import registry

    return [
        b.name for b in registry().backends.items.values() if b.implements(spec) and b.unavailable_reason() is None
    ]
