"""Fixtures every test gets, and the shared test helpers as the package ``support``.

pytest runs with ``--import-mode=importlib`` and ``python -P``: neither the repository root nor
``tests/`` is on ``sys.path``, so ksr is only importable as the installed ``ksr`` (``import
fuse`` fails) and ``tests/support`` is registered here by its file path.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


def _register_support() -> None:
    folder = Path(__file__).parent / "support"
    spec = importlib.util.spec_from_file_location(
        "support", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["support"] = module
    spec.loader.exec_module(module)


_register_support()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
