"""Checking a whole cache directory; ``ksr cache verify`` reports every problem at once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .index import Scan, scan_dir
from .locks import live_writer_problem
from .shard import ShardInfo, checksum_problem, duplicate_ids, inspect_shard, scan_features
from .stamps import Stamps
from .util import byte_bar, map_in_threads


@dataclass
class Inspection:
    """A cache directory checked shard by shard: the usable shards and every problem found."""

    scan: Scan
    shards: list[ShardInfo]
    problems: list[str]
    bytes_hashed: int = 0


def inspect_cache(
    root: str | Path, checksums: bool = False, progress: bool | None = None, stamps: Stamps | None = None
) -> Inspection:
    """Scan the indexes, check every indexed shard (sizes, schema, metadata, ``checksums``) and
    look for ids stored twice. Shards no index lists are left out: readers never see them.
    ``stamps``: take unchanged, stamped shards as inspected before (not with ``checksums``:
    verify inspects everything), and keep what is inspected now for the next open."""
    scan = scan_dir(root)
    out = Inspection(scan, [], list(scan.problems))
    if scan.meta is None:
        return out
    pairs = [(ix, e) for ix, e in scan.entries() if (scan.root / e.file).is_file()]
    verified = stamps if stamps is not None else Stamps(scan.root) if checksums else None
    for ix, entry in pairs:
        path = scan.root / entry.file
        known = verified.known_shard(path, entry, ix.tag, scan.meta) if verified and not checksums else None
        if known is not None:
            out.shards.append(known)
            continue
        before = os.stat(path)
        info, found = inspect_shard(path, entry, ix.tag, scan.meta)
        out.problems += found
        if info is not None:
            out.shards.append(info)
            if verified is not None:
                verified.describe(info, ix.tag, scan.meta, before)
    if checksums:
        # A size mismatch is already reported (as truncation); hashing would only repeat it.
        todo = [e for _, e in pairs if (scan.root / e.file).stat().st_size == e.bytes]
        with byte_bar(sum(e.bytes for e in todo), f"verifying {scan.root.name}", progress) as bar:
            digests = map_in_threads(lambda e: verified.hash(scan.root / e.file, e.sha256, progress=bar), todo)
        verified.save()
        for entry, got in zip(todo, digests, strict=True):
            out.bytes_hashed += entry.bytes
            if got != entry.sha256:
                out.problems.append(checksum_problem(scan.root / entry.file, got, entry.sha256))
    out.problems += duplicate_ids(out.shards)
    return out


@dataclass
class VerifyReport:
    root: Path
    problems: list[str] = field(default_factory=list)  # each makes the cache unusable
    notes: list[str] = field(default_factory=list)  # harmless leftovers of interrupted writers
    shards: int = 0  # usable shards
    utterances: int = 0  # in usable shards
    bytes_hashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(root: str | Path, checksums: bool = True, progress: bool | None = None) -> VerifyReport:
    """Check indexes, files, sizes, schema, metadata, duplicate ids, shards no index lists, and
    (``checksums``) every shard's SHA-256 and every feature value (NaN or inf); collect all
    problems instead of stopping at the first. A writer still filling the cache is a problem too
    (what is there is not the whole cache yet)."""
    live = live_writer_problem(root)
    ins = inspect_cache(root, checksums, progress)
    features: list[str] = []
    if checksums and ins.scan.meta is not None:
        for found in map_in_threads(lambda s: scan_features(s, ins.scan.meta), ins.shards):
            features += found
    return VerifyReport(
        Path(root),
        ([live] if live else []) + ins.problems + features + ins.scan.unindexed_problems(),
        ins.scan.leftover_notes(),
        len(ins.shards),
        sum(s.n for s in ins.shards),
        ins.bytes_hashed,
    )
