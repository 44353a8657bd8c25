"""The plugin hooks. A plugin implements any of them with ``@lowbit.hookimpl``.

Each hook receives a ``register`` callback and calls it once per value; the
built-in formats, backends and recipes use exactly these hooks.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("lowbit")
hookimpl = pluggy.HookimplMarker("lowbit")


@hookspec
def register_formats(register: Callable[[Any], None]) -> None:
    """Call ``register(spec)`` for each format spec (a FloatFormat, IntFormat, CodebookFormat,
    BlockFormat or Formatbook of :mod:`lowbit.formats`)."""


@hookspec
def register_backends(register: Callable[[Any], None]) -> None:
    """Call ``register(backend)`` for each :class:`lowbit.emulate.Backend`."""


@hookspec
def register_recipes(register: Callable[[Any], None]) -> None:
    """Call ``register(recipe)`` for each model recipe (a :class:`lowbit.emulate.Recipe`)."""
