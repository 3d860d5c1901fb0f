"""Optional dependencies: imported when the feature that needs them starts, refused in one line.

TensorBoard curves and ONNX export need packages that training does not; they are extras of
the ksr package (``pip install 'ksr[tensorboard]'``, ``'ksr[export]'``), imported lazily so that
ksr works without them, and a missing one stops the command before any work is done.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import KsrError


class MissingDependency(KsrError):
    """A feature's optional package is not installed (or cannot be imported)."""


def require(module: str, feature: str, extra: str, package: str | None = None) -> ModuleType:
    """``import module``, or a one-line ``MissingDependency`` naming the extra that brings it."""
    package = package or module
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = e.name is not None and module.split(".")[0] == e.name.split(".")[0]
        why = "is not installed" if missing else f"cannot be imported ({' '.join(str(e).split())})"
        raise MissingDependency(
            f"{feature} needs the package {package}, which {why}: pip install 'ksr[{extra}]' (or pip install {package})"
        ) from None


def require_audio(feature: str) -> None:
    """The audio readers of the ``extract`` extra, checked before a command that reads audio does
    any work (without them it would end in an import traceback, or after its first stage)."""
    for module in ("soundfile", "soxr"):
        require(module, feature, "extract")
