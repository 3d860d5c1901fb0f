"""Where a cache's features live while a model trains on them: ``gpu``, ``host`` or ``stream``.

- ``gpu``: every row in the training device's memory; a batch is gathered there (no copy).
  On a CPU device, device memory is host memory: ``gpu`` is then ``host``.
- ``host``: every row in RAM; a batch is gathered on the CPU into pinned memory (when training
  on CUDA) and copied to the device while the previous batch computes.
- ``stream``: rows read from the shard files per batch (memory use independent of the cache's
  size), on background threads, ahead of the batch that computes.

``auto`` takes the first that fits: ``gpu`` when the features fit in the free GPU memory less
what the model needs (``gpu_reserve``), ``host`` when they take at most half the available RAM
(shared by the ranks of one node), ``stream`` otherwise. ``memory``, the name older ksr versions
used, means "in the device's memory": ``gpu`` on a GPU, ``host`` on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..common.files import human_bytes

if TYPE_CHECKING:
    import torch

MODES = ("auto", "gpu", "host", "stream", "memory")
#: The three places features can live (what ``Cache.mode`` says after ``auto`` or an alias).
PLACES = ("gpu", "host", "stream")
#: GPU memory left to the model when ``auto`` weighs the free GPU memory. The default model has
#: 119.1M parameters: weights, gradients and two AdamW moments in float32 take 1.9 GB; a training
#: step keeps ~204 MB per utterance for the backward pass (float32, counted with saved-tensor
#: hooks on the CPU; bf16 autocast keeps less), 6.5 GB for a batch of 32. 12 GiB leaves room for
#: the allocator and the workspaces. An estimate (no GPU was lent to measure it): pass
#: ``gpu_reserve`` to ``open_cache`` for a larger model or batch.
DEFAULT_GPU_RESERVE = 12 << 30
#: ``auto`` keeps a cache in RAM only when it takes at most this share of the available RAM.
HOST_SHARE = 0.5

MODE_HELP = (
    "Where the cache's features live while training: gpu (the device's memory: fastest, the whole "
    "cache must fit), host (RAM, pinned for CUDA; the next batches are gathered and copied while one "
    "computes), stream (read from disk ahead of use: any size), or auto (the first that fits; one line "
    "says which and why). memory, the old name: gpu on a GPU, host on the CPU."
)


def resolve_mode(
    mode: str,
    feature_bytes: int,
    device: torch.device,
    gpu_reserve: int | None = None,
    gpu_free: int | None = None,
    ram: int | None = None,
    local_ranks: int | None = None,
) -> tuple[str, str]:
    """(place, why): the place in ``PLACES`` for ``mode`` and a short reason. ``gpu_free``,
    ``ram`` and ``local_ranks`` default to what this machine reports (tests pass them)."""
    if mode not in MODES:
        raise ValueError(f"cache mode {mode!r}: choose one of {', '.join(MODES)}")
    on_device = device.type != "cpu"
    if mode == "memory":
        mode = "gpu" if on_device else "host"
    if mode == "gpu" and not on_device:
        return "host", "asked for gpu, and the device is the CPU, whose memory is host memory"
    if mode != "auto":
        return mode, "asked for"
    size = human_bytes(feature_bytes)
    reserve = DEFAULT_GPU_RESERVE if gpu_reserve is None else int(gpu_reserve)
    gpu_note = ""
    if device.type == "cuda":
        free = gpu_free_bytes(device) if gpu_free is None else gpu_free
        gpu = f"the free GPU memory ({human_bytes(free)}) less {human_bytes(reserve)} for the model"
        if feature_bytes <= free - reserve:
            return "gpu", f"the features ({size}) fit in {gpu}"
        gpu_note = f"do not fit in {gpu}, and "
    ranks = max(1, local_ranks if local_ranks is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    avail = available_ram() if ram is None else ram
    ram_note = f"half of the {human_bytes(avail)} of RAM available" + (
        f" (shared by {ranks} ranks on this node)" if ranks > 1 else ""
    )
    if feature_bytes <= HOST_SHARE * avail / ranks:
        return "host", f"the features ({size}) {gpu_note}take at most {ram_note}"
    return "stream", f"the features ({size}) {gpu_note}take more than {ram_note}"


def gpu_free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, as the driver reports it (0 when it cannot be asked)."""
    try:
        import torch  # here: ksr --help reads this module's help text without paying for torch

        return int(torch.cuda.mem_get_info(device)[0])
    except (RuntimeError, AssertionError, ValueError):
        return 0


def available_ram() -> int:
    """RAM the system could give this process without swapping (``MemAvailable``)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
