"""Files that a crash cannot leave half written, and file digests.

Every durable file of ksr (checkpoints, run and report JSON, cache indexes and shards,
manifests) is written to a temporary name in its own folder, flushed and fsynced, then renamed
over its final name, and the folder is fsynced so the rename survives a power cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import faults

HASH_BLOCK = 8 << 20  # bytes read per call when hashing: large reads keep the disk streaming


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's bytes, or a directory's entries (which makes a rename in it durable).
    A filesystem without directory handles gets no directory fsync: the rename is all there is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def write_then_rename(tmp: Path, final: Path, mode: str, write: Callable[[Any], Any], fault: str = "") -> None:
    """``write(file)`` into ``tmp``, flush and fsync it, rename it over ``final``, fsync the folder.
    ``fault`` names the test-only kill point between the complete temporary file and the rename."""
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            faults.point(fault)  # tests: a kill here leaves the temporary file unrenamed
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(final.parent)


def atomic_write(path: str | os.PathLike, mode: str, write: Callable[[Any], Any], fault: str | None = None) -> Path:
    """Write ``path`` atomically through ``write(file)``: readers see the old file or the new one.

    The temporary file is ``.{name}.{pid}.{random}.tmp`` beside it, with the usual permissions;
    :func:`remove_dead_temps` deletes such files once their writer has died. ``fault`` defaults
    to ``write:{name}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give what a plain open() would
    write_then_rename(Path(tmp), path, mode, write, f"write:{path.name}" if fault is None else fault)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write, indented for people who read run folders."""
    return atomic_write(path, "w", lambda f: f.write(json.dumps(obj, indent=1) + "\n"))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    import torch

    return atomic_write(path, "wb", lambda f: torch.save(obj, f))


def remove_dead_temps(folder: str | os.PathLike) -> None:
    """Delete the temporary files of :func:`atomic_write` calls whose process was killed (the files
    they were to replace are intact). Files of a live process, such as another ``ksr train --fold``
    or a ``ksr eval`` writing into the same run, are left to it."""
    for leftover in Path(folder).glob(".*.*.tmp"):
        if not _writer_alive(leftover.name):
            leftover.unlink(missing_ok=True)


def _writer_alive(name: str) -> bool:
    """Whether the process named in ``.{file}.{pid}.{random}.tmp`` is still running."""
    parts = name[: -len(".tmp")].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False  # not one of ours, or an older name without a process id
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # ours: this process is not writing while it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def sha256_file(path: str | os.PathLike, progress: Any = None) -> str:
    """Hex SHA-256 of a whole file (``progress``: a tqdm bar counting bytes)."""
    h = hashlib.sha256()
    view = memoryview(bytearray(HASH_BLOCK))
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(view):
            h.update(view[:got])
            if progress is not None:
                progress.update(got)
    return h.hexdigest()
