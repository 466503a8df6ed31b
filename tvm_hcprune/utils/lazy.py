"""Lazy re-exports: a package names its public objects without importing their modules."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> Callable:
    """Return a module-level ``__getattr__`` that imports ``exports[name]`` on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__`` (for error messages).
    exports : dict
        Public name -> module that defines it.
    namespace : dict
        The package's ``globals()``; resolved names are cached there.
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
