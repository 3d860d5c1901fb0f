"""CacheWriter: appends utterances to a cache directory, one finished shard at a time.

Crash safety: utterances are buffered until a shard is full, then the shard is written under a
temporary name (``shard-<tag>-<seq>.h5.tmp``), flushed to disk, hashed, renamed into place, and
only then added to the writer's index. Readers only see shards an index lists, so a writer
killed at any point leaves nothing half-written visible; its rerun (same tag) removes the
leftovers and skips the ids already stored (``stored_ids()``).

Several writers (e.g. ``torchrun`` extraction ranks) may fill one directory at once, each with
its own tag: they never write the same file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .. import __version__
from ..common import faults, signals
from ..common.files import disk_full_error, ensure_free, fsync_path, is_disk_full, sha256_file
from .errors import CacheError
from .index import TMP_SUFFIX, ShardEntry, WriterIndex, now_iso, scan_dir, write_index
from .locks import describe_writers, live_writers, lock_writer, unlock_writer
from .rows import fill_row
from .schema import (
    INT_FIELDS,
    SPLIT_RULE,
    STR_FIELDS,
    CacheMeta,
    check_compatible,
    check_tag,
    is_split_name,
    parse_shard_name,
    shard_name,
)
from .shard import write_shard

SHARD_METADATA_BYTES = 256 << 10  # a shard's HDF5 structures beside its rows (plus 512 bytes a row)

log = logging.getLogger("ksr.cache")


class CacheWriter:
    """Write utterances into ``root`` as writer ``tag``.

    ``meta`` describes the cache; a directory that already holds shards of another cache
    (other encoders, dims, classes, ...) is refused with the differences spelled out.
    ``shard_size`` utterances are buffered in memory per shard (512 at the default dims in
    float16 is 256 MB).

    Use as a context manager; leaving the block (also on an exception: every utterance that
    ``add`` accepted is complete) writes the last, partial shard.

    ``peers``: the tags of the writers of the same run (``torchrun`` ranks) that may write at the
    same time. When given, a live writer with any other tag (another run: it would store the same
    utterances again) makes the writer refuse to start. None (the default): no such check.
    """

    def __init__(
        self,
        root: str | Path,
        meta: CacheMeta,
        tag: str = "w0",
        shard_size: int = 512,
        peers: set[str] | frozenset[str] | None = None,
    ):
        self.root = Path(root)
        self.meta = meta
        self.tag = check_tag(tag)
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        self.shard_size = int(shard_size)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd, created = lock_writer(self.root, self.tag)
        self._closed = False
        self._failed = False
        try:
            if peers is not None:
                self._refuse_other_runs(set(peers) | {self.tag})
            self._index, self._stored = self._resume()
        except BaseException:
            unlock_writer(self.root, self.tag, self._lock_fd, remove=created)  # a refused start leaves nothing
            self._lock_fd = None
            raise
        self._next_seq = 1 + max((parse_shard_name(e.file)[1] for e in self._index.shards), default=-1)
        self._audio: np.ndarray | None = None  # shard buffers, allocated on the first add
        self._text: np.ndarray | None = None
        self._rows: list[tuple] = []
        self._pending: set[str] = set()
        self._n = 0
        self._stored_view: frozenset[str] | None = None

    # -- opening -------------------------------------------------------------------------------

    def _refuse_other_runs(self, peers: set[str]) -> None:
        others = live_writers(self.root, exclude=peers)
        if others:
            raise CacheError(
                f"{self.root}: another extraction is writing this cache now as {describe_writers(others)}; two runs "
                f"at once would store utterances twice: wait until it has finished (or stop it), then run this again"
            )

    def _unlock(self) -> None:
        unlock_writer(self.root, self.tag, self._lock_fd, remove=False)
        self._lock_fd = None

    def _resume(self) -> tuple[WriterIndex, set[str]]:
        """Check the directory, clean this writer's leftovers, and collect the stored ids."""
        scan = scan_dir(self.root, allow_empty=True)
        if scan.problems:
            raise CacheError(
                f"cannot add to a damaged cache: {scan.problems[0]}"
                + (f" (and {len(scan.problems) - 1} more)" if len(scan.problems) > 1 else "")
            )
        if scan.meta is not None:
            check_compatible(
                scan.meta, self.meta.to_dict(), where=f"{self.root} already holds another cache; the writer's meta"
            )
        own = next((ix for ix in scan.indexes if ix.tag == self.tag), None)
        for name in scan.leftovers + scan.unindexed:
            if name.startswith((f"shard-{self.tag}-", f"index-{self.tag}.")):
                log.warning("%s: removing the leftover of an interrupted writer", self.root / name)
                (self.root / name).unlink(missing_ok=True)
        stored: set[str] = set()
        for _, entry in scan.entries():
            path = self.root / entry.file
            try:
                with h5py.File(path, "r") as f:
                    ids = f["id"].asstr()[()]
            except (OSError, KeyError) as e:
                raise CacheError(f"{path}: cannot read its ids ({e}); run `ksr cache verify`") from None
            stored.update(ids.tolist())
        if own is None:
            own = WriterIndex(self.tag, self.meta, [], __version__, now_iso())
            write_index(self.root, own)
        return own, stored

    # -- adding --------------------------------------------------------------------------------

    def stored_ids(self) -> frozenset[str]:
        """Ids already in finished shards of this directory (all writers, as of this writer's
        start, plus what it finished since): an extraction rerun skips them. Cheap to call
        per utterance (rebuilt only when a shard finishes)."""
        if self._stored_view is None:
            self._stored_view = frozenset(self._stored)
        return self._stored_view

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._stored or utt_id in self._pending

    def add(
        self,
        id: str,
        audio: Any,
        text: Any,
        label: str | int,
        *,
        speaker: str = "",
        session: str = "",
        gender: str = "",
        transcript: str = "",
        split: str = "",
        attributes: Sequence[float] | None = None,
    ) -> None:
        """Add one utterance: ``audio`` (frames, Da) and ``text`` (tokens, Dt) at their true
        lengths, as numpy arrays or torch tensors (any device, any float dtype).

        Sequences longer than the cache's max lengths are cut (the true length is kept as
        ``*_len_full``); shorter ones are zero-padded at the end. ``label`` is a class name
        or its index in ``meta.classes``. ``split``: the utterance's official split (``train``,
        ``valid``, ``test``, ``test1``, ...; "" for none). ``attributes``: one value per name in
        ``meta.attributes``, NaN for a missing one (None: all missing).
        """
        if self._closed:
            raise CacheError(f"{self.root}: writer {self.tag!r} is closed")
        uid = str(id)
        if not uid:
            raise ValueError("utterance id must not be empty")
        if uid in self:
            raise ValueError(
                f"utterance {uid!r} is already stored in {self.root} (skip the ids in writer.stored_ids())"
            )
        label_i = self._label_index(label, uid)
        split = str(split or "")
        if split and not is_split_name(split):
            raise ValueError(f"utterance {uid!r}: split {split!r} is not {SPLIT_RULE}")
        meta = self.meta
        values = _attribute_values(attributes, meta.attributes, uid)
        a = _as_2d(audio, meta.audio_dim, "audio", uid)
        t = _as_2d(text, meta.text_dim, "text", uid)
        if self._audio is None:
            dtype = np.dtype(meta.dtype)
            self._audio = np.zeros((self.shard_size, meta.max_audio_len, meta.audio_dim), dtype)
            self._text = np.zeros((self.shard_size, meta.max_text_len, meta.text_dim), dtype)
        row = self._n
        la = _put_row(self._audio[row], a, uid, "audio")
        lt = _put_row(self._text[row], t, uid, "text")
        # The row is complete before it is counted: an interrupt in between leaves it unused.
        self._rows.append(
            (
                uid,
                label_i,
                la,
                len(a),
                lt,
                len(t),
                str(speaker or ""),
                str(session or ""),
                str(gender or ""),
                str(transcript or ""),
                split,
                values,
            )
        )
        self._n += 1
        self._pending.add(uid)
        if self._n == self.shard_size:
            self.flush()

    def add_batch(
        self,
        ids: Sequence[str],
        audio: Any,
        audio_lengths: Any,
        text: Any,
        text_lengths: Any,
        labels: Sequence[str | int],
        *,
        speakers: Sequence[str] | None = None,
        sessions: Sequence[str] | None = None,
        genders: Sequence[str] | None = None,
        transcripts: Sequence[str] | None = None,
        splits: Sequence[str] | None = None,
        attributes: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Add B utterances from an encoder's padded output: ``audio`` (B, T, Da) with
        ``audio_lengths`` (B,), ``text`` (B, L, Dt) with ``text_lengths`` (B,); rows past each
        length are ignored. A GPU batch is copied to the CPU once, not per utterance."""
        a, t = _as_numpy(audio), _as_numpy(text)
        la, lt = _as_numpy(audio_lengths).astype(np.int64), _as_numpy(text_lengths).astype(np.int64)
        b = len(ids)
        if a.ndim != 3 or t.ndim != 3 or not (len(a) == len(t) == len(la) == len(lt) == len(labels) == b):
            raise ValueError(
                f"add_batch: {b} ids, audio {a.shape}, text {t.shape}, {len(la)} audio and "
                f"{len(lt)} text lengths, {len(labels)} labels: expected (B, T, D) arrays "
                f"and B of everything else"
            )
        if (la > a.shape[1]).any() or (lt > t.shape[1]).any():
            raise ValueError(f"add_batch: a length exceeds the padded batch ({a.shape[1]} frames, {t.shape[1]} tokens)")
        extra = {
            "speaker": speakers,
            "session": sessions,
            "gender": genders,
            "transcript": transcripts,
            "split": splits,
            "attributes": attributes,
        }
        for i, uid in enumerate(ids):
            self.add(
                uid, a[i, : la[i]], t[i, : lt[i]], labels[i], **{k: v[i] for k, v in extra.items() if v is not None}
            )

    def _label_index(self, label: str | int, uid: str) -> int:
        classes = self.meta.classes
        if isinstance(label, str):
            if label not in classes:
                raise ValueError(
                    f"utterance {uid!r}: label {label!r} is not one of the cache's classes {list(classes)}"
                )
            return classes.index(label)
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(classes):
            return int(label)
        raise ValueError(
            f"utterance {uid!r}: label {label!r} is neither a class name nor an index in 0..{len(classes) - 1}"
        )

    # -- finishing -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the buffered utterances as one finished shard now (nothing if none). A SIGTERM
        that arrives meanwhile (``common.signals``) takes effect once the shard is committed."""
        if self._n == 0 or self._failed:
            return
        with signals.deferred():
            self._commit()

    def _commit(self) -> None:
        n = self._n
        name = shard_name(self.tag, self._next_seq)
        tmp, final = self.root / (name + TMP_SUFFIX), self.root / name
        rows = list(zip(*self._rows[:n], strict=True))
        cols = dict(
            zip(
                (
                    "id",
                    "label",
                    "audio_len",
                    "audio_len_full",
                    "text_len",
                    "text_len_full",
                    "speaker",
                    "session",
                    "gender",
                    "transcript",
                    "split",
                    "attributes",
                ),
                rows,
                strict=True,
            )
        )
        created = now_iso()
        # HDF5's own structures (attributes, string datasets, B-trees) come on top of the features.
        features = self._audio[:n].nbytes + self._text[:n].nbytes
        try:
            ensure_free(final, features + SHARD_METADATA_BYTES + 512 * n)
            write_shard(
                tmp,
                self.meta,
                tag=self.tag,
                seq=self._next_seq,
                audio=self._audio[:n],
                text=self._text[:n],
                ints={k: np.asarray(cols[k]) for k in INT_FIELDS},
                strs={k: list(cols[k]) for k in STR_FIELDS},
                created=created,
                ksr_version=__version__,
                attributes=np.array(cols["attributes"], dtype=np.float32).reshape(n, len(self.meta.attributes)),
            )
            faults.point("shard-write")  # tests: the temporary file is written, not renamed
            fsync_path(tmp)
            digest, size = sha256_file(tmp), tmp.stat().st_size
            os.replace(tmp, final)
            fsync_path(self.root)
        except BaseException as exc:
            self._failed = True
            tmp.unlink(missing_ok=True)
            if isinstance(exc, Exception) and is_disk_full(exc):
                raise disk_full_error(final, features, exc) from None
            raise
        # Between the rename above and this index update the shard exists but no reader sees
        # it; a rerun of this writer removes it (its utterances are not in stored_ids()).
        faults.point("shard-renamed")
        self._index.shards.append(ShardEntry(name, n, size, digest, created))
        write_index(self.root, self._index)
        self._stored.update(cols["id"])
        self._stored_view = None
        self._pending.clear()
        self._rows.clear()
        self._n = 0
        self._next_seq += 1

    def close(self) -> None:
        """Write the last partial shard and release the writer's tag. Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._audio = self._text = None
            self._unlock()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CacheWriter({str(self.root)!r}, tag={self.tag!r}, stored={len(self._stored)}, buffered={self._n})"


def _attribute_values(values: Sequence[float] | None, names: tuple[str, ...], uid: str) -> np.ndarray:
    """One float32 per attribute name, NaN where missing; a wrong count or an infinite value is refused."""
    if values is None:
        return np.full(len(names), np.nan, dtype=np.float32)
    out = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(out) != len(names):
        raise ValueError(
            f"utterance {uid!r}: {len(out)} attribute value(s), the cache stores {len(names)} {list(names)}"
        )
    if np.isinf(out).any():
        raise ValueError(f"utterance {uid!r}: an infinite attribute value (store NaN for a missing one)")
    return out


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _as_2d(x: Any, dim: int, what: str, uid: str) -> np.ndarray:
    x = _as_numpy(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"utterance {uid!r}: {what} features of shape {tuple(x.shape)}, expected (length, {dim})")
    if x.shape[0] == 0:
        raise ValueError(f"utterance {uid!r}: empty {what} features (0 rows)")
    return x


def _put_row(row: np.ndarray, x: np.ndarray, uid: str, what: str) -> int:
    try:
        return fill_row(row, x)
    except ValueError as e:
        raise ValueError(f"utterance {uid!r}: {what} {e}") from None
