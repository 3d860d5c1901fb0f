"""``ksr cache repair``: remove the duplicate copies of utterances that two runs writing one
cache at once stored (ksr refuses such runs now; caches made before it, or by other programs,
may hold them).

For every id stored more than once, the copy in the first shard (in file-name order, the cache's
physical order) is kept. A shard whose every utterance is kept elsewhere is dropped; a shard that
holds some is rewritten without the others, as a new shard of the same writer. Per writer: the
new shards are committed (temporary file, fsync, rename), then the writer's index is replaced in
one atomic rename, and only then are the old files deleted. Every id keeps at least one copy that
an index lists at every moment, so a repair killed anywhere loses nothing: running it again
finishes it (a killed repair's files no index lists are invisible to readers; the writer's next
run, or ``ksr extract`` into the cache, removes them).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..common import faults
from ..common.files import fsync_path, sha256_file
from .errors import CacheError
from .index import TMP_SUFFIX, ShardEntry, now_iso, write_index
from .locks import live_writer_problem, lock_writer, unlock_writer
from .schema import INT_FIELDS, STR_FIELDS, CacheMeta, parse_shard_name, shard_name
from .shard import ShardInfo, checksum_problem, duplicate_ids, read_extents_hashed, write_shard
from .verify import inspect_cache


@dataclass
class RepairReport:
    root: Path
    copies: int = 0  # duplicate copies removed (or, dry run, to remove)
    utterances: int = 0  # distinct ids that had more than one copy
    dropped: list[str] = field(default_factory=list)  # shard files removed whole
    rewritten: dict[str, str] = field(default_factory=dict)  # old shard file -> its new one ("" in a dry run)
    cleaned: list[str] = field(default_factory=list)  # unfinished or unindexed files of interrupted writers

    def format(self, dry_run: bool = False) -> str:
        cleaned = f" (removed {len(self.cleaned)} unfinished file(s) of interrupted writers)" if self.cleaned else ""
        if not self.copies:
            return f"{self.root}: no utterance is stored twice: nothing to repair{cleaned}"
        verb = "would remove" if dry_run else "removed"
        return (
            f"{self.root}: {verb} {self.copies} duplicate copies of {self.utterances} utterance(s): "
            f"{len(self.dropped)} shard(s) dropped whole, {len(self.rewritten)} rewritten without them{cleaned}"
        )


def repair_cache(root: str | os.PathLike, dry_run: bool = False) -> RepairReport:
    """Remove every duplicate copy in the cache ``root`` (see the module doc). Refuses, with one
    line, a cache that a live writer is filling or that has any problem other than duplicates
    (``ksr cache verify`` lists them): repair must not give a damaged shard a fresh checksum."""
    root = Path(root)
    live = live_writer_problem(root)
    if live:
        raise CacheError(live)
    ins = inspect_cache(root)
    duplicates = set(duplicate_ids(ins.shards))
    other = [p for p in ins.problems if p not in duplicates]
    if other:
        more = f" (and {len(other) - 1} more: run `ksr cache verify {root}`)" if len(other) > 1 else ""
        raise CacheError(f"cannot repair {root}: {other[0]}{more}; repair only removes duplicate copies")
    report = RepairReport(root)
    if not dry_run:
        report.cleaned = _remove_leftovers(root, ins.scan)
    plan: dict[str, list[tuple[ShardInfo, np.ndarray]]] = defaultdict(list)  # writer tag -> shards to change
    seen: set[str] = set()
    counted: set[str] = set()
    for s in ins.shards:  # file-name order: the first copy of an id is kept
        ids = s.fields["id"]
        keep = np.array([uid not in seen for uid in ids.tolist()], dtype=bool)
        seen.update(ids[keep].tolist())
        if keep.all():
            continue
        counted.update(ids[~keep].tolist())
        report.copies += int((~keep).sum())
        plan[parse_shard_name(s.path.name)[0]].append((s, keep))
    report.utterances = len(counted)
    for tag, changes in sorted(plan.items()):
        for s, keep in changes:
            if keep.any():
                report.rewritten[s.path.name] = ""
            else:
                report.dropped.append(s.path.name)
        if not dry_run:
            index = next(ix for ix in ins.scan.indexes if ix.tag == tag)
            report.rewritten.update(_repair_writer(root, ins.scan.meta, index, changes))
    return report


def _remove_leftovers(root: Path, scan) -> list[str]:
    """What interrupted writers (or a killed repair) left: files no index lists, removed under
    each writer's lock, as the writer's own rerun would."""
    names = sorted(scan.leftovers + scan.unindexed)
    tags = set()
    for name in names:
        parsed = parse_shard_name(name.removesuffix(TMP_SUFFIX))
        if parsed is not None:
            tags.add(parsed[0])
        elif name.startswith("index-") and name.endswith(".json" + TMP_SUFFIX):
            tags.add(name[len("index-") : -len(".json" + TMP_SUFFIX)])
    removed = []
    for tag in sorted(tags):
        fd, created = lock_writer(root, tag)
        try:
            for name in names:
                if name.startswith((f"shard-{tag}-", f"index-{tag}.")):
                    (root / name).unlink(missing_ok=True)
                    removed.append(name)
        finally:
            unlock_writer(root, tag, fd, remove=created)
    return removed


def _repair_writer(root: Path, meta: CacheMeta, index, changes: list[tuple[ShardInfo, np.ndarray]]) -> dict[str, str]:
    """Apply one writer's share of the plan under that writer's lock; returns old -> new names."""
    tag = index.tag
    fd, created = lock_writer(root, tag)
    try:
        seqs = [
            p[1]
            for p in map(parse_shard_name, (n.removesuffix(TMP_SUFFIX) for n in os.listdir(root)))
            if p and p[0] == tag
        ]
        next_seq = 1 + max(seqs, default=-1)
        replaced: dict[str, ShardEntry | None] = {}
        for s, keep in changes:
            if not keep.any():
                replaced[s.path.name] = None
                continue
            replaced[s.path.name] = _rewrite(root, meta, tag, next_seq, s, keep)
            next_seq += 1
        faults.point("repair-index")  # tests: new shards committed, the index not yet replaced
        index.shards = [replaced.get(e.file, e) for e in index.shards if replaced.get(e.file, e) is not None]
        write_index(root, index)
        for name in replaced:
            (root / name).unlink(missing_ok=True)
        fsync_path(root)
    finally:
        unlock_writer(root, tag, fd, remove=created)
    return {old: new.file for old, new in replaced.items() if new is not None}


def _rewrite(root: Path, meta: CacheMeta, tag: str, seq: int, s: ShardInfo, keep: np.ndarray) -> ShardEntry:
    """Shard ``s`` without its rows outside ``keep``, committed as ``shard-<tag>-<seq>.h5``. The
    source's checksum is checked while its rows are read: a damaged shard is never copied."""
    dtype = np.dtype(meta.dtype)
    audio = np.empty((s.n, meta.max_audio_len, meta.audio_dim), dtype)
    text = np.empty((s.n, meta.max_text_len, meta.text_dim), dtype)
    got = read_extents_hashed(s.path, [(s.audio_offset, memoryview(audio)), (s.text_offset, memoryview(text))])
    if got != s.entry.sha256:
        raise CacheError(checksum_problem(s.path, got, s.entry.sha256))
    name = shard_name(tag, seq)
    tmp, final = root / (name + TMP_SUFFIX), root / name
    created = now_iso()
    try:
        write_shard(
            tmp,
            meta,
            tag=tag,
            seq=seq,
            audio=audio[keep],
            text=text[keep],
            ints={k: s.fields[k][keep] for k in INT_FIELDS},
            strs={k: s.fields[k][keep].tolist() for k in STR_FIELDS},
            created=created,
            ksr_version=__version__,
            attributes=None if s.attributes is None else s.attributes[keep],
        )
        fsync_path(tmp)
        digest, size = sha256_file(tmp), tmp.stat().st_size
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ShardEntry(name, int(keep.sum()), size, digest, created)
