"""One shard file: writing it, checking it, hashing it, reading its feature rows.

A shard is an HDF5 file whose ``audio`` and ``text`` datasets are stored contiguously (no
chunks, no filters), so utterance ``r`` of ``audio`` is the byte range
``offset + r * row_bytes`` of the file. Readers fetch rows with plain positioned reads: for the
random single-utterance access of a shuffled epoch they beat HDF5's own reads of any layout,
and chunks with HDF5 checksums by more (bench/results.md, docs/cache.md). HDF5 still makes every file self-describing and readable by any tool.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..common.files import HASH_BLOCK
from .convert import all_finite
from .errors import CacheError
from .index import ShardEntry, check_schema_version
from .schema import (
    ADDED_FIELDS,
    ATTRIBUTES,
    ATTRIBUTES_SINCE,
    AUDIO,
    INT_FIELDS,
    SCHEMA_VERSION,
    SHARD_KIND,
    SPLIT_RULE,
    STR_FIELDS,
    TEXT,
    CacheMeta,
    diff_dicts,
    is_split_name,
)

# Byte granularity of hashing and copying: big enough for full disk and hash speed, small
# enough that the scratch buffer does not matter.
BLOCK = HASH_BLOCK

# Align the big datasets to 4 KiB pages (an audio row of 460 x 512 float16 is exactly 115 pages).
_ALIGN = {"alignment_threshold": 1 << 16, "alignment_interval": 4096}


def write_shard(
    path: Path,
    meta: CacheMeta,
    *,
    tag: str,
    seq: int,
    audio: np.ndarray,
    text: np.ndarray,
    ints: dict[str, np.ndarray],
    strs: dict[str, list[str]],
    created: str,
    ksr_version: str,
    attributes: np.ndarray | None = None,
) -> None:
    """Write one complete shard at ``path`` (the caller flushes and renames it afterwards).

    HDF5 lays out the file with the feature datasets allocated (contiguous, no fill); their
    bytes are then written with plain positioned writes, as large as the arrays: faster than
    passing them through HDF5 (bench/results.md), and the layout the reader relies on is guaranteed.
    ``attributes``: (n, len(meta.attributes)) values, NaN where missing (None: all missing).
    """
    n = len(audio)
    if attributes is None:
        attributes = np.full((n, len(meta.attributes)), np.nan, dtype=np.float32)
    features = ((AUDIO, np.ascontiguousarray(audio)), (TEXT, np.ascontiguousarray(text)))
    with h5py.File(path, "w", libver="v110", **_ALIGN) as f:
        f.attrs["kind"] = SHARD_KIND
        f.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
        f.attrs["meta"] = meta.to_json()
        f.attrs["writer"] = tag
        f.attrs["seq"] = np.int64(seq)
        f.attrs["n"] = np.int64(n)
        f.attrs["created"] = created
        f.attrs["ksr_version"] = ksr_version
        offsets = []
        for name, arr in features:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.CONTIGUOUS)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            dset = h5py.h5d.create(
                f.id, name.encode(), h5py.h5t.py_create(arr.dtype), h5py.h5s.create_simple(arr.shape), dcpl=dcpl
            )
            offsets.append(dset.get_offset())
        for name in INT_FIELDS:
            f.create_dataset(name, data=np.asarray(ints[name], dtype=np.int32))
        for name in STR_FIELDS:
            f.create_dataset(name, data=np.array(strs[name], dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset(ATTRIBUTES, data=np.asarray(attributes, dtype=np.float32).reshape(n, len(meta.attributes)))
    fd = os.open(path, os.O_WRONLY)
    try:
        for (_, arr), offset in zip(features, offsets, strict=True):
            view = memoryview(arr).cast("B")
            while len(view):
                done = os.pwrite(fd, view, offset)
                view, offset = view[done:], offset + done
    finally:
        os.close(fd)


@dataclass
class ShardInfo:
    """A checked shard: where its rows are and its per-utterance metadata."""

    path: Path
    entry: ShardEntry
    n: int
    audio_offset: int
    text_offset: int
    fields: dict[str, np.ndarray]  # INT_FIELDS as int64, STR_FIELDS as object arrays of str
    attributes: np.ndarray | None = None  # (n, len(meta.attributes)) float32, NaN = missing


def inspect_shard(path: Path, entry: ShardEntry, tag: str, meta: CacheMeta) -> tuple[ShardInfo | None, list[str]]:
    """Check a shard against its index entry and the cache meta, without reading the features.

    Returns the shard's layout and metadata (None when it cannot be used) and every problem
    found, each a one-line message naming the file.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, [f"{path}: missing shard (listed in index-{tag}.json with {entry.n} utterances)"]
    if size != entry.bytes:
        foreign = _foreign_index_problem(path, entry, tag, meta)
        if foreign:
            return None, [foreign]
        what = "truncated" if size < entry.bytes else "size changed"
        return None, [f"{path}: {what}: {size} bytes on disk, the index recorded {entry.bytes}"]
    problems: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            info = _inspect_open(f, path, entry, tag, meta, size, problems)
    except (OSError, KeyError, ValueError, TypeError) as e:
        return None, [
            f"{path}: not a readable shard ({type(e).__name__}: {_short(e)}): the file was "
            f"damaged; run `ksr cache verify`"
        ]
    return (info if not problems else None), problems


def _foreign_index_problem(path: Path, entry: ShardEntry, tag: str, meta: CacheMeta) -> str | None:
    """When a shard's size disagrees with its index entry, tell a damaged shard from an index
    that belongs to another cache: an intact shard that records another creation time or
    another cache meta than the index says the index is the stranger."""
    try:
        with h5py.File(path, "r") as f:
            created = str(f.attrs.get("created", ""))
            shard_meta = CacheMeta.from_dict(json.loads(f.attrs["meta"]))
    except (OSError, KeyError, ValueError, TypeError, CacheError):
        return None  # unreadable: the shard is the damaged one
    lines = diff_dicts(meta.to_dict(), shard_meta.to_dict(), have_name="index has", want_name="shard has")
    if not lines and (not entry.created or created == entry.created):
        return None
    why = (
        "; ".join(lines)
        if lines
        else (f"the index records a shard created {entry.created}, this one was created {created}")
    )
    return (
        f"{path}: does not belong with index-{tag}.json, which looks copied from another cache "
        f"({why}); restore this cache's own index-{tag}.json or extract again"
    )


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def _inspect_open(
    f: h5py.File, path: Path, entry: ShardEntry, tag: str, meta: CacheMeta, size: int, problems: list[str]
) -> ShardInfo | None:
    attrs = f.attrs
    if attrs.get("kind") != SHARD_KIND:
        problems.append(f"{path}: not a ksr cache shard (attribute kind={attrs.get('kind')!r})")
        return None
    version = attrs.get("schema_version")
    try:
        check_schema_version(int(version) if version is not None else None, str(path))
    except CacheError as e:
        problems.append(str(e))
        return None
    try:
        shard_meta = CacheMeta.from_dict(json.loads(attrs["meta"]))
    except (KeyError, json.JSONDecodeError, CacheError) as e:
        problems.append(f"{path}: unreadable meta attribute ({_short(e)})")
        return None
    lines = diff_dicts(meta.to_dict(), shard_meta.to_dict(), have_name="index has", want_name="shard has")
    if lines:
        problems.append(f"{path}: made for another cache than index-{tag}.json: " + "; ".join(lines))
    if attrs.get("writer") != tag:
        problems.append(f"{path}: written by writer {attrs.get('writer')!r}, listed in index-{tag}.json")
    n = int(attrs.get("n", -1))
    if n != entry.n:
        problems.append(f"{path}: index mismatch: the shard says {n} utterances, index-{tag}.json says {entry.n}")

    offsets = {}
    for name, width, dim in ((AUDIO, meta.max_audio_len, meta.audio_dim), (TEXT, meta.max_text_len, meta.text_dim)):
        d = f.get(name)
        if not isinstance(d, h5py.Dataset):
            problems.append(f"{path}: no dataset {name!r}")
            continue
        if d.shape != (entry.n, width, dim) or d.dtype != np.dtype(meta.dtype):
            problems.append(
                f"{path}: dataset {name!r} is {d.shape} {d.dtype}, the cache says "
                f"({entry.n}, {width}, {dim}) {meta.dtype}"
            )
            continue
        offset = d.id.get_offset()
        layout = d.id.get_create_plist().get_layout()
        if layout != h5py.h5d.CONTIGUOUS or offset is None:
            problems.append(f"{path}: dataset {name!r} is not stored contiguously (schema v1 requires it)")
            continue
        if offset + d.id.get_storage_size() > size:
            problems.append(f"{path}: dataset {name!r} runs past the end of the file")
            continue
        offsets[name] = offset

    fields: dict[str, np.ndarray] = {}
    for name in INT_FIELDS + STR_FIELDS:
        d = f.get(name)
        if d is None and int(version) < ADDED_FIELDS.get(name, 0):  # an older shard: the field is empty
            fields[name] = np.array([""] * entry.n, dtype=object)
            continue
        if not isinstance(d, h5py.Dataset) or d.shape != (entry.n,):
            problems.append(f"{path}: dataset {name!r} missing or not of shape ({entry.n},)")
            continue
        if name in INT_FIELDS and d.dtype.kind not in "iu":  # floats would be truncated to a class silently
            problems.append(f"{path}: dataset {name!r} holds {d.dtype} values, not integers")
            continue
        fields[name] = d.asstr()[()] if name in STR_FIELDS else d[()].astype(np.int64)
    attributes = _read_attributes(f, path, int(version), entry.n, meta, problems)
    if problems:
        return None
    problems += _check_fields(path, fields, meta)
    return ShardInfo(path, entry, entry.n, offsets[AUDIO], offsets[TEXT], fields, attributes)


def _read_attributes(
    f: h5py.File, path: Path, version: int, n: int, meta: CacheMeta, problems: list[str]
) -> np.ndarray | None:
    """The shard's attribute values (n, k); a shard older than schema version 3 has none (k = 0)."""
    k = len(meta.attributes)
    d = f.get(ATTRIBUTES)
    if d is None and version < ATTRIBUTES_SINCE:
        return np.zeros((n, 0), dtype=np.float32)
    if not isinstance(d, h5py.Dataset) or d.shape != (n, k):
        problems.append(f"{path}: dataset {ATTRIBUTES!r} missing or not of shape ({n}, {k})")
        return None
    values = d[()].astype(np.float32)
    if np.isinf(values).any():
        problems.append(f"{path}: infinite attribute values (ksr stores NaN for a missing value)")
        return None
    return values


def _check_fields(path: Path, fields: dict[str, np.ndarray], meta: CacheMeta) -> list[str]:
    """Value checks a damaged or hand-edited shard could fail; each names the first bad id."""
    out = []
    ids = fields["id"]

    def bad(mask: np.ndarray, what: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            out.append(f"{path}: {int(mask.sum())} utterance(s) with {what} (first: {ids[i]!r})")

    bad(np.array([not s for s in ids]), "an empty id")
    if len(set(ids.tolist())) != len(ids):
        out.append(f"{path}: duplicate ids inside the shard")
    bad(np.array([bool(v) and not is_split_name(v) for v in fields["split"]]), f"a split other than {SPLIT_RULE}")
    bad((fields["label"] < 0) | (fields["label"] >= len(meta.classes)), f"a label outside 0..{len(meta.classes) - 1}")
    for mod, top in (("audio", meta.max_audio_len), ("text", meta.max_text_len)):
        length, full = fields[f"{mod}_len"], fields[f"{mod}_len_full"]
        bad((length < 1) | (length > top), f"{mod}_len outside 1..{top}")
        bad(length != np.minimum(full, top), f"{mod}_len != min({mod}_len_full, {top})")
    return out


def duplicate_ids(shards: list[ShardInfo]) -> list[str]:
    """One problem per id stored in more than one place, naming both shards."""
    seen: dict[str, Path] = {}
    out = []
    for s in shards:
        for uid in s.fields["id"].tolist():
            first = seen.setdefault(uid, s.path)
            if first is not s.path:
                out.append(f"{s.path}: utterance {uid!r} is also stored in {first.name}")
    return out


def nonfinite_rows(rows: np.ndarray) -> np.ndarray | None:
    """Which of the feature ``rows`` (n, length, dim) hold NaN or inf (bool, n), or None when
    all values are finite. Vectorised, a block of rows at a time (small temporaries)."""
    if rows.size == 0:
        return None
    flat = rows.reshape(len(rows), -1)
    step = max(1, BLOCK // max(1, flat.shape[1] * flat.itemsize))
    bad = None
    for lo in range(0, len(flat), step):
        part = flat[lo : lo + step]
        if all_finite(part):
            continue
        if bad is None:
            bad = np.zeros(len(flat), dtype=bool)
        if part.dtype == np.float16:
            bad[lo : lo + step] = ((part.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1)
        else:
            bad[lo : lo + step] = ~np.isfinite(part).all(axis=1)
    return bad


def nonfinite_message(path: Path, what: str, count: int | None, first_id: str) -> str:
    """The one line for a shard holding NaN or inf features (``count`` utterances, None when
    not known). The writer refuses them, so only another writer puts them in a shard."""
    which = f"{count} utterance(s) with" if count is not None else "utterance(s) with"
    return (
        f"{path}: {which} NaN or inf {what} features (first: {first_id!r}): "
        f"ksr's writer refuses such features, so another program wrote this shard; extract the cache again"
    )


def nonfinite_problem(path: Path, ids: np.ndarray, what: str, rows: np.ndarray) -> str | None:
    """``nonfinite_message`` for ``rows`` (utterance ``r`` has id ``ids[r]``), None when finite."""
    bad = nonfinite_rows(rows)
    if bad is None:
        return None
    return nonfinite_message(path, what, int(bad.sum()), ids[int(np.flatnonzero(bad)[0])])


def scan_features(info: ShardInfo, meta: CacheMeta) -> list[str]:
    """Read every feature row of a checked shard, a block of rows at a time, and report the
    non-finite ones, audio and text (one line each)."""
    out = []
    dtype = np.dtype(meta.dtype)
    fd = os.open(info.path, os.O_RDONLY)
    try:
        for what, offset, width, dim in (
            ("audio", info.audio_offset, meta.max_audio_len, meta.audio_dim),
            ("text", info.text_offset, meta.max_text_len, meta.text_dim),
        ):
            row_bytes = width * dim * dtype.itemsize
            step = max(1, BLOCK // row_bytes)
            count, first = 0, None
            for lo in range(0, info.n, step):
                rows = np.empty((min(info.n, lo + step) - lo, width, dim), dtype)
                pread_exact(fd, memoryview(rows).cast("B"), offset + lo * row_bytes, info.path)
                bad = nonfinite_rows(rows)
                if bad is not None:
                    count += int(bad.sum())
                    first = first if first is not None else info.fields["id"][lo + int(np.flatnonzero(bad)[0])]
            if count:
                out.append(nonfinite_message(info.path, what, count, first))
    finally:
        os.close(fd)
    return out


def checksum_problem(path: Path, got: str, recorded: str) -> str:
    return (
        f"{path}: checksum mismatch: SHA-256 {got[:16]}..., the index recorded {recorded[:16]}...: "
        f"the file was altered or damaged"
    )


def read_extents_hashed(path: Path, extents: list[tuple[int, memoryview]], progress=None) -> str:
    """Read the whole file once, in order, hashing every byte; ``extents`` (offset, destination)
    land directly in their destination buffers. Returns the file's SHA-256.

    This is how an in-memory load checks a shard's checksum without a second pass over it.
    """
    h = hashlib.sha256()
    scratch = memoryview(bytearray(BLOCK))
    pos = 0
    with open(path, "rb", buffering=0) as f:
        for offset, dest in sorted(extents, key=lambda e: e[0]):
            if offset < pos:
                raise CacheError(f"{path}: overlapping datasets in the shard")
            _hash_span(f, h, scratch, offset - pos, path, progress)
            dest = dest.cast("B")
            for start in range(0, len(dest), BLOCK):
                part = dest[start : start + BLOCK]
                _readinto_exact(f, part, path)
                h.update(part)
                if progress is not None:
                    progress.update(len(part))
            pos = offset + len(dest)
        while True:
            got = f.readinto(scratch)
            if not got:
                break
            h.update(scratch[:got])
    return h.hexdigest()


def _hash_span(f, h, scratch: memoryview, nbytes: int, path: Path, progress) -> None:
    while nbytes > 0:
        part = scratch[: min(nbytes, len(scratch))]
        _readinto_exact(f, part, path)
        h.update(part)
        nbytes -= len(part)
        if progress is not None:
            progress.update(len(part))


def _readinto_exact(f, view: memoryview, path: Path) -> None:
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise CacheError(f"{path}: truncated: the file ended while reading its features")
        done += got


def pread_exact(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Positioned read of exactly ``len(view)`` bytes (no shared file position, so it is safe
    from several threads and across fork)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            raise CacheError(
                f"{path}: truncated: the file ended at byte {offset + done} while "
                f"reading features; run `ksr cache verify`"
            )
        done += got
