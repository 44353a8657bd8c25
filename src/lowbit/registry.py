"""The plugin registry: a pluggy PluginManager over the entry-point group "lowbit".

Built-in plugins (``lowbit.plugins.*``) and third-party packages register through
the same hooks. A plugin that fails to import, raises inside a hook, registers a
value of the wrong kind (a format that is no format spec, a backend that is no
``Backend``, a recipe that is no ``Recipe``) or a name that is already taken produces
a ``LowbitPluginWarning`` naming the plugin and the cause (a wrong value is
skipped); everything else keeps working.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import warnings
from typing import Any, Callable, Generic, TypeVar

import pluggy

from lowbit import hookspecs

ENTRY_POINT_GROUP = "lowbit"
BUILTIN_PLUGINS = ("lowbit.plugins.builtin_formats", "lowbit.plugins.builtin_backends")

T = TypeVar("T")


class LowbitPluginWarning(UserWarning):
    """A plugin could not be loaded or registered something invalid."""


class UnknownNameError(KeyError):
    """A name that nothing registered; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class _Table(Generic[T]):
    """Name -> value, filled by one hook, with the plugin that gave each value."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.items: dict[str, T] = {}
        self.origin: dict[str, str] = {}

    def add(self, value: T, plugin: str, name: str) -> None:
        if name in self.items:
            warnings.warn(
                f"plugin {plugin!r} registers {self.kind} {name!r}, which plugin "
                f"{self.origin[name]!r} already registered; keeping the first",
                LowbitPluginWarning,
                stacklevel=3,  # the plugin's register(...) call
            )
            return
        self.items[name] = value
        self.origin[name] = plugin

    def get(self, name: str) -> T:
        try:
            return self.items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.items, n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            every = "`lowbit formats` lists them all" if self.kind == "format" else f"registered: {', '.join(self.items)}"
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} ({every})") from None


class Registry:
    """Holds the plugin manager and the tables its hooks fill."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("lowbit")
        self.pm.add_hookspecs(hookspecs)
        self.formats: _Table[Any] = _Table("format")
        self.backends: _Table[Any] = _Table("backend")
        self.recipes: _Table[Any] = _Table("recipe")
        self._hooks: tuple[tuple[str, _Table[Any], Callable[[Any], str]], ...] = (
            ("register_formats", self.formats, _check_format),
            ("register_backends", self.backends, _check_backend),
            ("register_recipes", self.recipes, _check_recipe),
        )
        self._loaded = False

    # -- loading ----------------------------------------------------------------
    def load(self) -> None:
        """Register the built-in plugins and the entry points, then fill the tables (once)."""
        if self._loaded:
            return
        self._loaded = True
        for modname in BUILTIN_PLUGINS:
            self.pm.register(importlib.import_module(modname), name=modname)
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            self._register_entry_point(ep)
        self._collect()

    def _register_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        try:
            # pluggy refuses a taken plugin name or a hookimpl whose arguments
            # do not match the hookspec; like an import error, that is the
            # plugin's problem, not lowbit's
            self.pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not break lowbit
            warnings.warn(
                f"plugin {ep.name!r} ({ep.value}) could not be loaded: {type(exc).__name__}: {exc}",
                LowbitPluginWarning,
                stacklevel=3,
            )

    def add_plugin(self, plugin: object, name: str) -> None:
        """Register a plugin object (a module or instance with hookimpls) now."""
        self.load()
        self.pm.register(plugin, name=name)
        self._collect(plugin)

    def _collect(self, only: object | None = None) -> None:
        """Call every hook of every registered plugin (or of ``only``) into its table."""
        for hook, table, check in self._hooks:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if only is None or impl.plugin is only:
                    self._call_one(impl, hook, table, check)

    @staticmethod
    def _call_one(impl: pluggy.HookImpl, hook: str, table: _Table[Any], check: Callable[[Any], str]) -> None:
        name = impl.plugin_name

        def register(value: Any) -> None:
            problem = check(value)
            if problem:  # refuse this value only; the plugin's other values still count
                warnings.warn(
                    f"plugin {name!r} registered an invalid {table.kind}, ignored: {problem}",
                    LowbitPluginWarning,
                    stacklevel=2,  # the plugin's register(...) call
                )
                return
            table.add(value, name, value.name)

        try:
            impl.function(register=register)
        except Exception as exc:
            warnings.warn(
                f"plugin {name!r} raised in {hook}: {type(exc).__name__}: {exc}",
                LowbitPluginWarning,
                stacklevel=4,
            )


def _check_named(value: Any) -> str:
    name = getattr(value, "name", None)
    if not isinstance(name, str) or not name:
        return f"registered value {value!r} has no string `name`"
    return ""


def _check_format(value: Any) -> str:
    from lowbit.formats.spec import SPEC_TYPES

    problem = _check_named(value)
    if not problem and not isinstance(value, SPEC_TYPES):
        problem = f"format {value.name!r} is a {type(value).__name__}, not one of {[t.__name__ for t in SPEC_TYPES]}"
    return problem


def _check_backend(value: Any) -> str:
    from lowbit.emulate.backends import Backend

    problem = _check_named(value)
    if not problem and not isinstance(value, Backend):
        problem = f"backend {value.name!r} is not a lowbit.emulate.Backend"
    return problem


def _check_recipe(value: Any) -> str:
    from lowbit.emulate.recipes import Recipe

    problem = _check_named(value)
    if not problem and not isinstance(value, Recipe):
        problem = f"recipe {value.name!r} is a {type(value).__name__}, not a lowbit.emulate.Recipe"
    return problem


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
        _REGISTRY.load()
    return _REGISTRY


def reset() -> None:
    """Forget everything loaded (tests use this after installing a plugin)."""
    global _REGISTRY
    _REGISTRY = None
