"""Lazy package exports: a package's ``__getattr__`` that imports a name's module on first use,
so that importing the package stays light (config checks run before torch is imported)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` resolving each name of ``exports``
    (name -> module path) from its module; any other name is an AttributeError."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
