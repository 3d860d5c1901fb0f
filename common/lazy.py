"""Package namespaces whose names are imported when first used (PEP 562).

``ksr --help`` and ``ksr prepare`` need neither torch nor h5py; a package ``__init__`` that
imported its submodules eagerly made every command pay about 2 s and 240 MB for torch before it
parsed its options (bench/results.md, "startup"). Each package lists its public names and the
submodule that defines each; the submodule is imported on first access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``where`` maps each public name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(importlib.import_module(package), name, value)  # the next access is a plain lookup
        return value

    return __getattr__
