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
- ``lazy``: package namespaces whose names are imported on first use (a fast ``ksr --help``).
"""

from .lazy import lazy_names

# Imported on first use (common/lazy.py): `ksr --help` must not pay for torch.
__getattr__ = lazy_names(
    __name__,
    {
        "MAX_AUDIO_FRAMES": "constants",
        "MAX_TEXT_TOKENS": "constants",
        "PAPER_CLASSES": "constants",
        "SAMPLE_RATE": "constants",
        "DeviceError": "devices",
        "default_compute_dtype": "devices",
        "resolve_device": "devices",
        "KsrError": "errors",
        "atomic_save": "files",
        "atomic_write": "files",
        "check_replace": "files",
        "fsync_path": "files",
        "remove_dead_temps": "files",
        "sha256_file": "files",
        "write_json": "files",
        "write_text": "files",
        "Ranks": "ranks",
        "join_process_group": "ranks",
        "ranks_from_env": "ranks",
    },
)

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
