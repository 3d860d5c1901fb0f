"""Reading a cache: ``open_cache`` -> ``Cache`` -> ``Cache.loader(...)`` -> ``Batch``.

Three places for the features behind one interface, with identical batches (``modes``):

- ``gpu`` / ``host``: every feature row is loaded once (checksums checked while reading) into
  one tensor per modality in the cache's dtype, on the GPU or in RAM; batches are gathered from it.
- ``stream``: rows are read from the shard files on demand with positioned reads; memory use
  does not grow with the corpus.

Utterances are numbered in id order (independent of how many writers made the cache), and a
``Batch`` is built from those numbers only, so every mode gives the same batches, in the same
order for the same ``torch.Generator`` seed. ``Cache.batches`` builds the next batches while the
current one computes (``prefetch``).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .convert import BufferPool, gather_pieces, pieces_per_row, row_pieces, valid_pieces
from .errors import CacheError
from .locks import live_writer_problem
from .modes import MODES, available_ram, resolve_mode
from .prefetch import DEFAULT_AHEAD, DEFAULT_WORKERS, prefetched
from .rows import padding_mask
from .schema import INT_FIELDS, STR_FIELDS, CacheMeta, check_compatible
from .shard import (
    ShardInfo,
    checksum_problem,
    nonfinite_message,
    nonfinite_problem,
    nonfinite_rows,
    pread_exact,
    read_extents_hashed,
)
from .stamps import Stamps
from .util import byte_bar, map_in_threads
from .verify import inspect_cache


@dataclass
class Batch:
    """A batch as the model takes it. Masks are True where a position is padding."""

    audio: torch.Tensor  # (B, max_audio_len, Da) float
    text: torch.Tensor  # (B, max_text_len, Dt) float
    audio_padding_mask: torch.Tensor  # (B, max_audio_len) bool
    text_padding_mask: torch.Tensor  # (B, max_text_len) bool
    labels: torch.Tensor  # (B,) long, indices into Cache.classes
    audio_lengths: torch.Tensor  # (B,) long, valid frames (<= max_audio_len)
    text_lengths: torch.Tensor  # (B,) long
    indices: torch.Tensor  # (B,) long, utterance numbers in the cache
    ids: list[str]
    #: (B, len(Cache.attribute_names)) float32, NaN where the value is missing; (B, 0) without attributes.
    attributes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=non_blocking)
        return Batch(**moved)


def open_cache(
    root: str | Path,
    mode: str = "auto",
    device: str | torch.device = "cpu",
    verify: bool = True,
    progress: bool | None = None,
    expected: dict[str, Any] | None = None,
    gpu_reserve: int | None = None,
    say: Callable[[str], Any] | None = None,
) -> Cache:
    """Open the cache in ``root`` for training on ``device``.

    mode: ``gpu`` (load all features into the device's memory), ``host`` (into RAM; batches
    copied to ``device``), ``stream`` (read from disk per batch), ``auto`` (the first of these
    that fits, ``gpu_reserve`` bytes of GPU memory left to the model), or ``memory`` (the old
    name: gpu on a GPU, host on the CPU); ``ksr.cache.modes`` says how. ``say``: called with one
    line naming the place chosen and why.
    verify: check the SHA-256 against the index of every shard not hashed before (in gpu and
    host mode while loading, at no extra read; in stream mode one extra pass at open); a shard
    whose hash matched once is trusted while its file stamp is unchanged (``stamps``). Sizes,
    schema versions and metadata are always checked.
    expected: if given, ``check_compatible(meta, expected)`` before anything is loaded.
    Raises ``CacheError`` naming the file and the problem on any damage.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    cache = Cache(Path(root), mode, torch.device(device), verify, progress, expected, gpu_reserve)
    if say is not None:
        say(cache.placement)
    return cache


class Cache:
    """An open cache: per-utterance metadata in memory, features on the GPU, in RAM or on disk.

    Attributes (all in utterance order, i.e. sorted by id): ``ids`` (list of str), ``labels``
    (int64), ``speakers``, ``sessions``, ``genders``, ``transcripts``, ``splits`` (arrays of str),
    ``audio_lengths``, ``text_lengths`` (int64, valid rows after cutting),
    ``audio_lengths_full``, ``text_lengths_full`` (before cutting), ``attributes`` (float32,
    (n, len(attribute_names)), NaN where missing; no columns for a cache without attributes).
    """

    def __init__(
        self,
        root: Path,
        mode: str,
        device: torch.device,
        verify: bool,
        progress: bool | None,
        expected: dict[str, Any] | None,
        gpu_reserve: int | None = None,
    ):
        self.root = root
        live = live_writer_problem(root)  # a cache still being extracted: only part of it is there
        if live:
            raise CacheError(live)
        stamps = Stamps(root)  # shards hashed (and inspected) before, unchanged since
        ins = inspect_cache(root, stamps=stamps)
        if ins.problems:
            raise CacheError(_first(ins.problems, root))
        self.meta: CacheMeta = ins.scan.meta
        if expected is not None:
            check_compatible(self.meta, expected, where=f"cache {root}")
        self.indexes = ins.scan.indexes  # one per writer: tag, creation time, ksr version
        self.shards: list[ShardInfo] = ins.shards

        phys = {
            k: np.concatenate([s.fields[k] for s in self.shards])
            if self.shards
            else np.zeros(0, dtype=object if k in STR_FIELDS else np.int64)
            for k in INT_FIELDS + STR_FIELDS
        }
        order = np.argsort(phys["id"], kind="stable") if len(phys["id"]) else np.zeros(0, np.int64)
        self._phys = order.astype(np.int64)  # utterance number -> row in shard-file order
        g = {k: v[order] for k, v in phys.items()}
        self.ids: list[str] = g["id"].tolist()
        self.labels = g["label"]
        self.speakers, self.sessions = g["speaker"], g["session"]
        self.genders, self.transcripts = g["gender"], g["transcript"]
        self.splits = g["split"]  # "" for every utterance of a cache made without splits
        self.audio_lengths, self.text_lengths = g["audio_len"], g["text_len"]
        self.audio_lengths_full, self.text_lengths_full = g["audio_len_full"], g["text_len_full"]
        self._id_array = g["id"]
        k = len(self.meta.attributes)
        stored = [s.attributes for s in self.shards]
        self.attributes = (np.concatenate(stored) if stored else np.zeros((0, k), np.float32))[order]

        self.mode, why = resolve_mode(mode, self.feature_bytes, device, gpu_reserve, ram=_available_ram())
        self.placement = f"cache {root.name}: features {_WHERE[self.mode]} ({why})"
        self.device = device  # where batches go
        # Where batches are built: on the GPU in gpu mode, else in (pinned, for CUDA) host memory.
        self.home = device if self.mode == "gpu" else torch.device("cpu")
        # Lengths, labels and masks live where the features live, so a batch needs no copies.
        self._labels_t = torch.as_tensor(self.labels, device=self.home)
        self._alen_t = torch.as_tensor(self.audio_lengths, device=self.home)
        self._tlen_t = torch.as_tensor(self.text_lengths, device=self.home)
        self._attributes_t = torch.as_tensor(self.attributes, device=self.home)
        loads = self.mode != "stream"
        verified = stamps if verify else None
        # Progress over the bytes read at open: whole files when hashing, feature rows otherwise.
        hashed = {s.entry.file for s in self.shards if verified is not None and not _trusted(verified, s)}
        row_bytes = self.meta.audio_row_bytes + self.meta.text_row_bytes
        bar = byte_bar(
            sum(s.entry.bytes if s.entry.file in hashed else s.n * row_bytes * loads for s in self.shards),
            f"{'loading' if loads else 'checking'} {root.name}",
            progress,
            enabled=bool(hashed) or loads,
        )
        try:
            store = _MemoryStore if loads else _StreamStore
            self._store = store(self.shards, self.meta, self.home, verified, bar)
        finally:
            bar.close()
            stamps.save()
        self._store.buffers.pinned = device.type == "cuda" and self.home.type == "cpu"

    # -- what is in the cache -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The numeric attributes stored per utterance (manifest column names); () when none."""
        return self.meta.attributes

    @property
    def feature_bytes(self) -> int:
        """Bytes of the padded feature arrays (what memory mode holds)."""
        return len(self) * (self.meta.audio_row_bytes + self.meta.text_row_bytes)

    @property
    def feature_bytes_in_use(self) -> int:
        """Bytes of features this open cache holds in memory (none when streamed)."""
        return 0 if self.mode == "stream" else self.feature_bytes

    @property
    def disk_bytes(self) -> int:
        return sum(s.entry.bytes for s in self.shards)

    def select(
        self, *, sessions: Any = None, speakers: Any = None, ids: Iterable[str] | None = None, exclude: bool = False
    ) -> np.ndarray:
        """Utterance numbers (sorted) matching every criterion given; ``exclude`` takes the
        complement. Leave-one-session-out: ``test = select(sessions="5")``,
        ``train = select(sessions="5", exclude=True)``. A value the cache does not hold is an
        error (a typo must not make an empty fold)."""
        keep = np.ones(len(self), dtype=bool)
        for values, column, what in (
            (sessions, self.sessions, "session"),
            (speakers, self.speakers, "speaker"),
            (ids, self._id_array, "id"),
        ):
            if values is None:
                continue
            values = [str(v) for v in ([values] if isinstance(values, (str, int)) else values)]
            known = set(column.tolist())
            unknown = [v for v in values if v not in known]
            if unknown:
                shown = sorted(known) if what != "id" else []
                raise CacheError(
                    f"{self.root}: {len(unknown)} unknown {what}(s) {unknown[:5]}"
                    + (f"; the cache has {shown}" if shown else "")
                )
            keep &= np.isin(column, values)
        return np.flatnonzero(~keep if exclude else keep)

    # -- batches -------------------------------------------------------------------------------

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> Batch:
        """The batch of the given utterance numbers, in that order."""
        idx = self._check_indices(indices)
        audio, text = self._store.gather(self._phys[idx], dtype)
        it = torch.as_tensor(idx, device=self.device)
        alen, tlen = self._alen_t[it], self._tlen_t[it]
        return Batch(
            audio=audio,
            text=text,
            audio_padding_mask=padding_mask(alen, self.meta.max_audio_len),
            text_padding_mask=padding_mask(tlen, self.meta.max_text_len),
            labels=self._labels_t[it],
            audio_lengths=alen,
            text_lengths=tlen,
            indices=it,
            ids=[self.ids[i] for i in idx.tolist()],
            attributes=self._attributes_t[it],
        )

    def loader(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 32,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> BatchLoader:
        """An iterable of batches over ``indices`` (all utterances if None); each iteration is
        one epoch and, with ``shuffle``, draws a new order from ``generator``."""
        idx = np.arange(len(self)) if indices is None else self._check_indices(indices)
        return BatchLoader(self, idx, batch_size, shuffle, generator, drop_last, dtype)

    def batches(
        self,
        parts: Iterable[Sequence[int] | np.ndarray],
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        ahead: int = DEFAULT_AHEAD,
    ) -> Iterator[Batch]:
        """``self.batch(part, dtype)`` on ``device`` (default: the cache's) for each of ``parts``,
        in order. For a CUDA device in host and stream mode, and in stream mode on the CPU, the
        next ``ahead`` batches are built on background threads (for CUDA, in pinned memory,
        copied on a side stream) while the current one is in use; in gpu mode, and in host mode
        on the CPU, a batch is gathered when it is asked for. The batches are the same either way."""
        device = self.device if device is None else torch.device(device)
        workers = DEFAULT_WORKERS
        if self.home.type != "cpu" or (device.type == "cpu" and self.mode == "host"):
            # gpu mode gathers on the device, asynchronously already; host mode on a CPU device
            # would only take cores from the step (torch's threads spin while they wait for them).
            ahead = 0
        elif device.type == "cpu":
            workers = 1  # stream mode on a CPU device: overlap the disk's waits, not the cores' work
        advise = None
        if self.mode == "stream":  # the disk starts on a queued batch's rows at once
            advise = lambda part: self._store.advise(self._phys[self._check_indices(part)])
        return prefetched(lambda part: self.batch(part, dtype), parts, device, ahead, workers, advise)

    def _check_indices(self, indices) -> np.ndarray:
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError("indices must be a 1-D sequence of utterance numbers")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"utterance numbers must lie in 0..{len(self) - 1}")
        return idx

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Cache({str(self.root)!r}, {len(self)} utterances, {len(self.shards)} shards, "
            f"mode={self.mode!r}, device={str(self.device)!r})"
        )


class BatchLoader:
    """Re-iterable batches of a ``Cache``; ``len()`` is the number of batches per epoch."""

    def __init__(
        self,
        cache: Cache,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        drop_last: bool,
        dtype: torch.dtype,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.cache, self.indices, self.batch_size = cache, indices, int(batch_size)
        self.shuffle, self.generator, self.drop_last, self.dtype = shuffle, generator, drop_last, dtype

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        """Batches on the cache's device, the next ones built ahead (``Cache.batches``)."""
        idx = self.indices
        if self.shuffle:
            idx = idx[torch.randperm(len(idx), generator=self.generator).numpy()]
        parts = (idx[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self)))
        return self.cache.batches(parts, self.cache.device, self.dtype)


# -- storage -----------------------------------------------------------------------------------

_TORCH_DTYPE = {"float16": torch.float16, "float32": torch.float32}
_KEYS = ("audio", "text")


class _Store:
    """Where the feature rows live; ``gather`` returns the rows of a batch in a given dtype."""

    def __init__(self, shards: list[ShardInfo], meta: CacheMeta):
        self.meta = meta
        self.shapes = {"audio": (meta.max_audio_len, meta.audio_dim), "text": (meta.max_text_len, meta.text_dim)}
        self.np_dtype = np.dtype(meta.dtype)
        self.torch_dtype = _TORCH_DTYPE[meta.dtype]
        # Rows are copied in k equal pieces; per row (in shard-file order), how many to read.
        self.pieces = {k: pieces_per_row(math.prod(shape)) for k, shape in self.shapes.items()}
        self.valid = {}
        for key, (width, dim) in self.shapes.items():
            lengths = np.concatenate([s.fields[f"{key}_len"] for s in shards]) if shards else np.zeros(0, np.int64)
            self.valid[key] = valid_pieces(lengths, width, dim, self.pieces[key])
        self.buffers = BufferPool()

    def gather(self, phys: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _MemoryStore(_Store):
    """All rows of the cache in one tensor per modality, rows in shard-file order."""

    def __init__(self, shards: list[ShardInfo], meta: CacheMeta, device: torch.device, verified, bar):
        super().__init__(shards, meta)
        n = sum(s.n for s in shards)
        self.device = device
        self.rows = {k: torch.empty((n,) + self.shapes[k], dtype=self.torch_dtype, device=device) for k in _KEYS}
        on_cpu = device.type == "cpu"
        starts = np.cumsum([0] + [s.n for s in shards])

        def load(i: int) -> None:
            s, lo, hi = shards[i], int(starts[i]), int(starts[i + 1])
            # Read straight into the final tensor on the CPU; through a staging copy for a GPU.
            dest = {
                k: self.rows[k][lo:hi]
                if on_cpu
                else torch.empty((s.n,) + self.shapes[k], dtype=self.torch_dtype, pin_memory=device.type == "cuda")
                for k in _KEYS
            }
            extents = [
                (s.audio_offset, memoryview(dest["audio"].numpy())),
                (s.text_offset, memoryview(dest["text"].numpy())),
            ]
            fd = os.open(s.path, os.O_RDONLY)
            try:
                held = os.fstat(fd)
                if verified is not None and not verified.trusted(s.entry.file, s.entry.sha256, held):
                    began = time.time_ns()
                    got = read_extents_hashed(s.path, extents, bar)  # the path, while fd holds the file
                    verified.note(s.entry.file, got, s.entry.sha256, (held, os.fstat(fd), os.stat(s.path)), began)
                    if got != s.entry.sha256:
                        raise CacheError(checksum_problem(s.path, got, s.entry.sha256))
                else:
                    for offset, view in extents:
                        pread_exact(fd, view.cast("B"), offset, s.path)
                        bar.update(view.nbytes)
            finally:
                os.close(fd)
            for k in _KEYS:  # NaN or inf would train to NaN losses: refuse the shard by name
                problem = nonfinite_problem(s.path, s.fields["id"], k, dest[k].numpy())
                if problem:
                    raise CacheError(problem)
            if not on_cpu:
                for k in _KEYS:
                    self.rows[k][lo:hi].copy_(dest[k])

        map_in_threads(load, list(range(len(shards))))
        # Every row's pieces, made once: a batch then only picks from these lists.
        self.row_pieces = {k: row_pieces(self.rows[k], self.pieces[k]) for k in _KEYS} if on_cpu else None

    def gather(self, phys: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        if self.device.type != "cpu":
            idx = torch.as_tensor(phys, device=self.device)
            return tuple(self.rows[k].index_select(0, idx).to(dtype) for k in _KEYS)
        out = []
        for key in _KEYS:
            result = self.buffers.empty((len(phys),) + self.shapes[key], dtype)
            k = self.pieces[key]
            gather_pieces(result, self.row_pieces[key], (phys * k).tolist(), self.valid[key][phys].tolist(), k)
            out.append(result)
        return tuple(out)

    def close(self) -> None:
        self.rows = self.row_pieces = None


class _StreamStore(_Store):
    """Rows read from the shard files per batch with positioned reads (no memory map: a file
    that shrinks under a reader gives an error naming it, not a crash).

    The files are opened (and their size and modification time noted) before they are hashed,
    and every batch checks that the shards it reads still have them: a shard written to after
    the open is refused by name instead of feeding altered rows to training. A shard deleted or
    replaced by rename after the open is harmless: the open file still holds the checked bytes.
    """

    def __init__(self, shards: list[ShardInfo], meta: CacheMeta, device: torch.device, verified, bar):
        super().__init__(shards, meta)
        self.paths = [s.path for s in shards]
        self.fds: list[int] = []
        try:  # a failure part-way closes what was opened
            for p in self.paths:
                self.fds.append(os.open(p, os.O_RDONLY))
            self.stamps = [_stamp(fd) for fd in self.fds]
            if verified is not None:

                def check(i: int) -> None:
                    s = shards[i]
                    if verified.trusted(s.entry.file, s.entry.sha256, os.fstat(self.fds[i])):
                        return  # hashed before, unchanged since (the stamp includes the inode)
                    got = verified.hash(s.path, s.entry.sha256, self.fds[i], bar)
                    if got != s.entry.sha256:
                        raise CacheError(checksum_problem(s.path, got, s.entry.sha256))
                    # The hash read the path: it must still name the file this reader holds.
                    held, named = os.fstat(self.fds[i]), os.stat(s.path)
                    if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                        raise CacheError(f"{s.path}: replaced while the cache was being opened; open it again")

                map_in_threads(check, list(range(len(shards))))
        except BaseException:
            self.close()
            raise
        self.starts = np.cumsum([0] + [s.n for s in shards])
        self.ids = [s.fields["id"] for s in shards]
        self.offsets = {"audio": [s.audio_offset for s in shards], "text": [s.text_offset for s in shards]}
        self._local = threading.local()  # per-thread staging buffers, reused across batches

    def gather(self, phys: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        shard = np.searchsorted(self.starts, phys, side="right") - 1
        row = phys - self.starts[shard]
        for s in np.unique(shard).tolist():
            self._check_unchanged(s)
        out = []
        for key in _KEYS:
            result = self.buffers.empty((len(phys),) + self.shapes[key], dtype)
            direct = dtype == self.torch_dtype  # no conversion: read straight into the result
            target = result.numpy() if direct else self._stage(key, len(phys))
            offsets = self.offsets[key]
            row_bytes = math.prod(self.shapes[key]) * target.itemsize
            for j in np.argsort(phys, kind="stable").tolist():  # read in file order
                s = int(shard[j])
                pread_exact(
                    self.fds[s], memoryview(target[j]).cast("B"), offsets[s] + int(row[j]) * row_bytes, self.paths[s]
                )
            if not direct:
                k = self.pieces[key]
                gather_pieces(
                    result,
                    row_pieces(torch.from_numpy(target), k),
                    range(0, len(phys) * k, k),
                    self.valid[key][phys].tolist(),
                    k,
                )
            self._check_finite(result, key, shard, row)
            out.append(result)
        return tuple(out)

    def advise(self, phys: np.ndarray) -> None:
        """Ask the kernel for every row of a coming batch at once (``POSIX_FADV_WILLNEED``): rows
        not in the page cache are read from disk in parallel, and ahead, instead of one ``pread``
        at a time when the batch is built."""
        if _WILLNEED is None or not len(phys):
            return
        shard = np.searchsorted(self.starts, phys, side="right") - 1
        row = phys - self.starts[shard]
        for key in _KEYS:
            row_bytes = math.prod(self.shapes[key]) * self.np_dtype.itemsize
            offsets = self.offsets[key]
            for s, r in zip(shard.tolist(), row.tolist(), strict=True):
                os.posix_fadvise(self.fds[s], offsets[s] + r * row_bytes, row_bytes, _WILLNEED)

    def _check_finite(self, result: torch.Tensor, key: str, shard: np.ndarray, row: np.ndarray) -> None:
        """Refuse NaN or inf in the rows just read, naming their shard (as memory mode does at load)."""
        if result.dtype in (torch.float16, torch.float32, torch.float64):
            bad = nonfinite_rows(result.numpy())  # numpy's check is ~10x faster than torch's here
        else:
            bad = (~torch.isfinite(result).flatten(1).all(dim=1)).numpy()
        if bad is None or not bad.any():
            return
        j = int(np.flatnonzero(bad)[0])
        s = int(shard[j])
        raise CacheError(nonfinite_message(self.paths[s], key, None, self.ids[s][int(row[j])]))

    def _check_unchanged(self, s: int) -> None:
        (size, mtime), (was_size, was_mtime) = _stamp(self.fds[s]), self.stamps[s]
        if size < was_size:
            raise CacheError(
                f"{self.paths[s]}: truncated: the file ended at byte {size} (it had {was_size} "
                f"bytes when the cache was opened); run `ksr cache verify`"
            )
        if (size, mtime) != (was_size, was_mtime):
            raise CacheError(
                f"{self.paths[s]}: changed on disk after the cache was opened (modified "
                f"{'and grew ' if size > was_size else ''}while in use): run `ksr cache verify`"
            )

    def _stage(self, key: str, n: int) -> np.ndarray:
        buf = getattr(self._local, key, None)
        if buf is None or len(buf) < n:
            buf = np.empty((n,) + self.shapes[key], dtype=self.np_dtype)
            setattr(self._local, key, buf)
        return buf[:n]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __del__(self) -> None:
        if getattr(self, "fds", None):
            self.close()


# -- helpers -----------------------------------------------------------------------------------


def _first(problems: list[str], root: Path) -> str:
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more problem(s): run `ksr cache verify {root}`)" if more else "")


def _trusted(verified: Stamps, s: ShardInfo) -> bool:
    try:
        return verified.trusted(s.entry.file, s.entry.sha256, os.stat(s.path))
    except OSError:
        return False


def _stamp(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def _available_ram() -> int:
    return available_ram()  # one name for tests to replace


_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)  # not on macOS or Windows
_WHERE = {"gpu": "in GPU memory", "host": "in host memory", "stream": "streamed from disk"}
