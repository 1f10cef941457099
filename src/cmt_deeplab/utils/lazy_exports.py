"""Lazy package exports (PEP 562) shared by the packages whose submodules are costly to import.

A package lists ``{public name: submodule}`` and gets back the module-level ``__getattr__`` and
``__dir__``: a name is imported from its submodule on first access only, so importing one light
submodule (``cmt_deeplab.data.metadata``) does not pull in the heavy ones nor create cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for a package with lazily imported names.

    Args:
        package: the package's ``__name__``.
        exports: public name -> submodule (relative to ``package``) that defines it.
        namespace: the package's ``globals()``, listed by ``__dir__`` with the exports.

    Returns:
        ``(__getattr__, __dir__)`` to bind at the package's module level.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
