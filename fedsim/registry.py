"""Plug-in registries: one per kind, keyed by the name a scenario YAML uses.

A plug-in is found, in order, as a registered built-in name, as ``path/to/file.py:ClassName`` (a
user's own script), or through the entry-point group of its kind (an installed package).
An unknown name raises :class:`PluginError` listing the valid names.

Listing and validating must stay quick (no torch, MONAI or Flower import), so a built-in whose
module needs heavy libraries at import time (a network, a task) is declared with `lazy`: its name
and one-line description are known at once, its module is imported on the first `get`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    """A plug-in name or file that cannot be resolved; the message is meant for the user."""


class Registry:
    """Name -> plug-in for one kind (attack, defense, dataset, ...)."""

    def __init__(self, kind: str, *, base: type | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.group = group
        self._items: dict[str, Any] = {}
        self._lazy: dict[str, tuple[str, str]] = {}  # name -> ("module:attr", description)

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: register a class or factory under ``name``."""

        def decorator(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def lazy(self, name: str, target: str, description: str) -> None:
        """Declare a built-in as ``module:attr`` without importing its module until it is used."""
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._lazy[name] = (target, description)

    def names(self) -> list[str]:
        """Built-in and entry-point names, sorted."""
        found = set(self._items) | set(self._lazy)
        if self.group:
            found.update(ep.name for ep in entry_points(group=self.group))
        return sorted(found)

    def registered(self) -> list[str]:
        """Built-in names in the order they were registered (e.g. the order of report sections)."""
        return list(dict.fromkeys([*self._items, *self._lazy]))

    def get(self, name: str) -> Any:
        """Resolve ``name`` to the plug-in object, or raise PluginError naming the valid ones."""
        if name in self._items:
            return self._items[name]
        if name in self._lazy:
            module, _, attr = self._lazy[name][0].partition(":")
            self._items[name] = getattr(importlib.import_module(module), attr)
            return self._items[name]
        if ":" in name and name.split(":", 1)[0].endswith(".py"):
            return self._check(_load_from_file(name, self.kind), name)
        if self.group:
            for ep in entry_points(group=self.group):
                if ep.name == name:
                    return self._check(ep.load(), name)
        valid = ", ".join(self.names()) or "none registered yet"
        raise PluginError(f"unknown {self.kind} '{name}' (valid: {valid}; or path/to/file.py:Class)")

    def check_name(self, name: str) -> None:
        """Raise PluginError unless `name` resolves; a lazy built-in is known without importing it."""
        if name not in self._lazy:
            self.get(name)

    def describe(self, name: str) -> str:
        """A plug-in's one-line description for `fedsim list`: declared (lazy), or its `description`,
        or the first line of its docstring."""
        if name in self._lazy and name not in self._items:
            return self._lazy[name][1]
        obj = self.get(name)
        doc = (getattr(obj, "description", None) or getattr(obj, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""

    def _check(self, obj: Any, name: str) -> Any:
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise PluginError(f"{self.kind} '{name}' is not a subclass of {self.base.__name__}")
        return obj


def _load_from_file(spec: str, kind: str) -> Any:
    path_text, _, attr = spec.partition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise PluginError(f"{kind} plug-in file not found: {path_text}")
    # one module per file, whatever kind asks: an attack and the family it names from the same file
    # must see the same classes
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"fedsim_user_{path.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"cannot import {kind} plug-in file: {path_text}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # a user's file: report, don't crash with a traceback
            del sys.modules[module_name]
            raise PluginError(f"{kind} plug-in file {path_text} failed to import: {exc}") from exc
    if not hasattr(module, attr):
        raise PluginError(f"{kind} plug-in file {path_text} has no '{attr}'")
    return getattr(module, attr)


_REGISTRIES: dict[str, Registry] = {}


def registry(kind: str, *, base: type | None = None, group: str | None = None) -> Registry:
    """The registry of ``kind``, created on first call (bases and groups are set by their owners)."""
    reg = _REGISTRIES.get(kind)
    if reg is None:
        reg = _REGISTRIES[kind] = Registry(kind, base=base, group=group)
    else:
        reg.base = base or reg.base
        reg.group = group or reg.group
    return reg


def all_registries() -> dict[str, Registry]:
    """Every registry created so far, by kind (see fedsim.plugins.load_builtins to fill them)."""
    return dict(sorted(_REGISTRIES.items()))
