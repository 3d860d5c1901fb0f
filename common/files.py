"""Files that a crash cannot leave half written, and file digests.

Every durable file of ksr (checkpoints, run and report JSON, cache indexes and shards,
manifests) is written to a temporary name in its own folder, flushed and fsynced, then renamed
over its final name, and the folder is fsynced so the rename survives a power cut.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import faults
from .errors import KsrError

HASH_BLOCK = 8 << 20  # bytes read per call when hashing: large reads keep the disk streaming
SPACE_MARGIN = 64 << 10  # bytes asked for beyond a file's known size: the file system's own blocks

# What a full disk or an exhausted quota looks like: an errno, or (HDF5, torch) only a message.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "errno = 28,", "errno = 122,")


class DiskFullError(KsrError):
    """A write that the disk, a quota or the file-size limit (``ulimit -f``) had no room for.
    Committed files are intact: every durable file is written to a temporary name first, which
    is removed."""


class NotAFileError(KsrError):
    """An output path that names a device, a pipe or a folder: ksr writes regular files only."""


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the file system that holds ``path`` or its nearest existing folder."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def file_size_limit() -> int | None:
    """The largest file this process may write (``ulimit -f``, RLIMIT_FSIZE), None when unlimited."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk, the quota or the file-size limit is full (errno, or the text
    HDF5 and torch give)."""
    if isinstance(exc, OSError) and exc.errno in (*_FULL_ERRNOS, errno.EFBIG):
        return True
    text = str(exc).lower()
    return isinstance(exc, (OSError, RuntimeError)) and any(t in text for t in _FULL_TEXTS)


def disk_full_error(
    path: str | os.PathLike, needed: int | None = None, exc: BaseException | None = None
) -> DiskFullError:
    """The one-line error for a write to ``path`` that did not fit (``needed``: the bytes it takes;
    ``exc``: the failure, whose errno tells a file-size limit from a full disk)."""
    limit = file_size_limit()
    too_large = isinstance(exc, OSError) and exc.errno == errno.EFBIG
    if limit is not None and (too_large or (needed is not None and needed > limit)):
        return DiskFullError(
            f"file too large: cannot write {path}: the file-size limit (ulimit -f) is {human_bytes(limit)}"
            + (f", the file needs {human_bytes(needed)}" if needed is not None else "")
            + "; raise the limit: the work committed so far is kept"
        )
    need = f"about {human_bytes(needed + SPACE_MARGIN)} needed" if needed is not None else "more needed"
    return DiskFullError(
        f"disk full: cannot write {path} ({human_bytes(free_bytes(path))} free on its file system, {need}); "
        f"free some space or choose another folder: the work committed so far is kept"
    )


def ensure_free(path: str | os.PathLike, needed: int) -> None:
    """Refuse, before writing anything, a file of ``needed`` bytes that the disk has no room for.
    Checking first keeps writers out of their own out-of-space paths (HDF5 has crashed in some)."""
    limit = file_size_limit()
    if free_bytes(path) < needed + SPACE_MARGIN or (limit is not None and needed > limit):
        raise disk_full_error(path, needed)


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


def write_then_rename(
    tmp: Path, final: Path, mode: str, write: Callable[[Any], Any], fault: str = "", size: int | None = None
) -> None:
    """``write(file)`` into ``tmp``, flush and fsync it, rename it over ``final``, fsync the folder.
    ``fault`` names the test-only kill point between the complete temporary file and the rename;
    ``size`` (bytes, when known) is checked against the free space first. A full disk raises
    :class:`DiskFullError` with the temporary file removed."""
    try:
        if size is not None:
            ensure_free(final, size)
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            faults.point(fault)  # tests: a kill here leaves the temporary file unrenamed
        os.replace(tmp, final)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise disk_full_error(final, size, exc) from None
        raise
    fsync_path(final.parent)


def atomic_write(
    path: str | os.PathLike, mode: str, write: Callable[[Any], Any], fault: str | None = None, size: int | None = None
) -> Path:
    """Write ``path`` atomically through ``write(file)``: readers see the old file or the new one.

    The temporary file is ``.{name}.{pid}.{random}.tmp`` beside it, with the usual permissions;
    :func:`remove_dead_temps` deletes such files once their writer has died. ``fault`` defaults
    to ``write:{name}``; ``size``, when known, is checked against the free space first."""
    path = Path(path)
    if path.is_symlink():  # write through the link: replacing it would leave its target stale
        path = path.resolve()
    if path.exists() and not path.is_file():
        raise NotAFileError(f"{path}: not a regular file (a folder, device or pipe); ksr writes its results to files")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give what a plain open() would
    write_then_rename(Path(tmp), path, mode, write, f"write:{path.name}" if fault is None else fault, size)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write, indented for people who read run folders."""
    return write_text(path, json.dumps(obj, indent=1) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    data = text.encode()
    return atomic_write(path, "wb", lambda f: f.write(data), size=len(data))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`. Serialised in memory first: torch turns a failed
    write into an unrelated RuntimeError ("unexpected pos"), and the size is then known in advance."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    return atomic_write(path, "wb", lambda f: f.write(data), size=len(data))


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


def check_replace(out: str | os.PathLike, force: bool, inputs: dict[str, str | os.PathLike] | None = None) -> None:
    """Refuse, in one line, to write ``out`` over an existing file without ``force``, and ever over
    one of the command's ``inputs`` ({what it is: path}), whatever ``force`` says."""
    from .errors import KsrError

    out = Path(out)
    for what, path in (inputs or {}).items():
        if out.exists() and Path(path).exists() and os.path.samefile(out, path):
            raise KsrError(f"{out} is the {what} this command reads; write to another file")
    if out.exists() and not force:
        raise KsrError(f"{out} exists; pass --force to replace it")
