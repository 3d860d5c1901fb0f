"""Shared low-level helpers: constants, devices, ranks, durable files, test fault points.

Every stage may import this package; it imports no stage (``../shared/DESIGN.md``). Modules:

- ``constants``: the sample rate, the 460 / 20 lengths, the paper's class order.
- ``errors``: ``KsrError``, the base of every expected failure.
- ``devices``: the one place a ``--device`` value becomes a torch device.
- ``ranks``: this process among torchrun's ranks.
- ``files``: atomic writes, fsync, disk-full errors, file digests.
- ``signals``: SIGTERM handled like SIGINT.
- ``faults``: test-only crash points.
- ``optional``: optional dependencies, refused in one line when missing.
"""

from .constants import MAX_AUDIO_FRAMES, MAX_TEXT_TOKENS, PAPER_CLASSES, SAMPLE_RATE
from .devices import DeviceError, default_compute_dtype, resolve_device
from .errors import KsrError
from .files import (
    atomic_save,
    atomic_write,
    check_replace,
    fsync_path,
    remove_dead_temps,
    sha256_file,
    write_json,
    write_text,
)
from .ranks import Ranks, join_process_group, ranks_from_env

__all__ = [
    "MAX_AUDIO_FRAMES",
    "MAX_TEXT_TOKENS",
    "PAPER_CLASSES",
    "SAMPLE_RATE",
    "DeviceError",
    "KsrError",
    "Ranks",
    "atomic_save",
    "atomic_write",
    "check_replace",
    "default_compute_dtype",
    "fsync_path",
    "join_process_group",
    "ranks_from_env",
    "remove_dead_temps",
    "resolve_device",
    "sha256_file",
    "write_json",
    "write_text",
]
