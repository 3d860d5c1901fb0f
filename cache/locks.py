"""Which writers are writing a cache directory right now.

Every live writer holds an exclusive ``flock`` on ``.lock-<tag>`` in the directory, and has
written its process id into it. The lock is the truth (the kernel drops it when the process
dies, whatever killed it, so a stale file never counts and a recycled process id cannot fool
it); the process id is only there to name the writer in messages. POSIX only: elsewhere no
writer is ever seen as live.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from .errors import CacheError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_PREFIX = ".lock-"
#: A writer taking its lock retries this long: another process may be probing it (a reader's
#: ``live_writers`` holds it shared for an instant).
LOCK_PATIENCE_S = 0.5


def lock_writer(root: Path, tag: str) -> tuple[int | None, bool]:
    """Take writer ``tag``'s lock in ``root`` and record this process's id in it. Returns the
    descriptor that holds the lock until it is closed, and whether this call created the lock
    file (a writer that fails to start removes it again, see :func:`unlock_writer`). Raises
    ``CacheError`` when a live process holds the lock."""
    if fcntl is None:
        return None, False
    path = root / f"{LOCK_PREFIX}{tag}"
    deadline = time.monotonic() + LOCK_PATIENCE_S
    while True:
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # removed in between by a writer that failed to start
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise CacheError(
                    f"{root}: another process is writing as writer {tag!r}; give each writer (rank) its own tag"
                ) from None
            time.sleep(0.02)
            continue
        try:  # the file may have been removed (and made anew) while we waited for its lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, created


def unlock_writer(root: Path, tag: str, fd: int | None, remove: bool) -> None:
    """Release a lock of :func:`lock_writer`; ``remove``: delete the lock file first (while the
    lock is still held, so that a process waiting on the old file sees it is gone and starts over)."""
    if fd is None:
        return
    if remove:
        (root / f"{LOCK_PREFIX}{tag}").unlink(missing_ok=True)
    os.close(fd)  # closing the descriptor releases the flock


def live_writers(root: str | os.PathLike, exclude: Iterable[str] = ()) -> dict[str, str]:
    """The writers of ``root`` (tags not in ``exclude``) whose process is alive and holds its
    lock now, each with the process id it recorded ("" if none)."""
    if fcntl is None:
        return {}
    skip = set(exclude)
    found = {}
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return {}
    for name in names:
        tag = name[len(LOCK_PREFIX) :]
        if not name.startswith(LOCK_PREFIX) or tag in skip:
            continue
        try:
            fd = os.open(Path(root) / name, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # held: a live writer
                found[tag] = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return found


def describe_writers(writers: dict[str, str]) -> str:
    """``writer 'w0' (pid 123)``, or several joined with "and"."""
    return " and ".join(f"writer {tag!r}" + (f" (pid {pid})" if pid else "") for tag, pid in writers.items())


def live_writer_problem(root: str | os.PathLike) -> str | None:
    """The one line for a cache that a live writer is still filling (None when none is)."""
    writers = live_writers(root)
    if not writers:
        return None
    return (
        f"{root}: being written now by {describe_writers(writers)}: what it holds is not the whole cache yet; "
        f"use it once the extraction has finished"
    )
