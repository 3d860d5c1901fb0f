"""Running ``ksr`` in-process from a given working directory (click's runner has no cwd)."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner, Result

from ksr.cli import main


def invoke_ksr(args: list, cwd: str | Path) -> Result:
    """``ksr ARGS`` run in ``cwd``; arguments may be paths."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
