"""The one place a ``--device`` value becomes a torch device."""

from __future__ import annotations

import os

import torch

from .errors import KsrError


class DeviceError(KsrError, ValueError):
    """A device name that cannot be used here; the message is one line and says what to use."""


def resolve_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` (or None): this rank's GPU when there is one (``LOCAL_RANK`` under torchrun),
    else the CPU. Otherwise ``cpu``, ``cuda`` or ``cuda:N``, checked to exist."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name}: ksr runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA device is available (use --device cpu)")
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device


def default_compute_dtype(device: torch.device) -> torch.dtype:
    """Frozen encoders run in half precision on a GPU and in float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32
