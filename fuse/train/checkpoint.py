"""ksr checkpoints: plain tensors plus a JSON-able config, loadable with ``weights_only=True``.

Layout: ``{"format": "ksr-checkpoint", "format_version": 1, "config": ModelConfig.to_dict(),
"model": state_dict, "meta": {...}}``. Nothing in it needs pickle beyond tensors and plain
containers, so ``torch.load(path, weights_only=True)`` reads it and refuses anything else.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...common import KsrError, atomic_save
from ..model.architectures import build_model
from ..model.config import ModelConfig

FORMAT = "ksr-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(KsrError, ValueError):
    """A checkpoint that cannot be read as what the caller asked for (the message says why)."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write the model as a ksr checkpoint (atomically, see ``atomic_save``)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    return atomic_save(payload, path)


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``, after checking the file's CRC-32s (torch does not,
    and would load altered weights). Raises ``CheckpointError`` with a one-line reason for a damaged
    file and for a file whose unpickling would import code (nothing of it is run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):  # torch's format since 1.6; older files are plain pickles
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad is not None:
                raise CheckpointError(
                    f"{path}: damaged: the CRC-32 of its entry {bad!r} does not match "
                    "(the file was altered after it was written); restore an intact copy"
                )
        with warnings.catch_warnings():  # a plain pickle of protocol > 2 warns before it is refused
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # the unpickler of a damaged file raises almost anything (KeyError, EOFError, ...)
        code = _pickled_global(e)
        if code:
            raise CheckpointError(
                f"{path}: refused: it holds more than tensors and plain containers (loading "
                f"it would import {code}: pickled code); ksr only loads weights_only "
                "checkpoints"
            ) from None
        first = _first_sentence(e)
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise CheckpointError(f"{path}: damaged or not a torch file ({reason}); restore an intact copy") from None


def _first_sentence(error: Exception) -> str:
    """What went wrong, in a few words: torch's messages are paragraphs, the cause near the end."""
    text = str(error)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return detail.group(1).strip()[:160]
    return re.split(r"(?<=\.)\s", " ".join(text.split()), maxsplit=1)[0][:160]


def _pickled_global(error: Exception) -> str:
    """The code object (``module.name``) a weights_only load refused, or '' for other failures."""
    if not isinstance(error, pickle.UnpicklingError):
        return ""
    found = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", str(error))
    return found.group(1) if found else ""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and "model" in ckpt and "format" not in ckpt:
            hint = "; if it was saved by the public KS-Transformer code, run `ksr convert-official` first"
        raise CheckpointError(f"{path}: not a ksr checkpoint{hint}")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt['format_version']} is newer than this ksr "
            f"understands ({FORMAT_VERSION}); upgrade ksr"
        )
    return ckpt


def load_model_and_meta(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a ksr checkpoint (eval mode, on ``device``) and the checkpoint's
    ``meta`` (fold, seed, epoch, and the training cache's metadata). The one checkpoint loader:
    ``ksr eval``, ``ksr predict`` and :func:`load_model` all read checkpoints through it."""
    ckpt = load_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
        state = ckpt["model"]
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from None
    model = build_model(cfg)
    load_state_strict(model, state, str(path))
    meta = ckpt.get("meta")
    return model.to(device).eval(), dict(meta) if isinstance(meta, dict) else {}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The model stored in a ksr checkpoint, in eval mode, on ``device``."""
    return load_model_and_meta(path, device)[0]


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor; refuse missing, unexpected or mis-shaped entries, naming them."""
    expected = model.state_dict()
    problems = describe_key_mismatch(
        {k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in state.items()}
    )
    if problems:
        raise CheckpointError(f"{source}: {problems}")
    model.load_state_dict(state, strict=True)


def describe_key_mismatch(expected: dict[str, tuple], found: dict[str, tuple], limit: int = 8) -> str:
    """'' when the key sets and shapes agree, else one line naming the missing, extra and mis-shaped keys."""

    def names(keys: list[str]) -> str:
        more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shaped = [f"{k} {found[k]} != expected {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing keys: {names(missing)}")
    if extra:
        parts.append(f"unexpected keys: {names(extra)}")
    if shaped:
        parts.append(f"wrong shapes: {names(shaped)}")
    return "; ".join(parts)
