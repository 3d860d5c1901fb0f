"""Index files and the directory scan.

Each writer (one extraction rank) owns one index file, ``index-<tag>.json``, listing its
finished shards with their size and SHA-256; no two processes ever write the same file, and a
reader merges all of them. Every write goes to a temporary name, is flushed to disk, and is
renamed over the old file, so a reader sees the old index or the new one, never half of one.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common.files import write_then_rename
from .errors import CacheError, CacheMismatchError
from .schema import (
    INDEX_KIND,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    CacheMeta,
    diff_dicts,
    index_name,
    parse_index_name,
    parse_shard_name,
)

TMP_SUFFIX = ".tmp"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` so that readers see either its old content or the whole new one."""
    # One writer owns each index, so its temporary name is fixed: a rerun of that writer finds it.
    # tests: complete temporary file, not yet renamed (KSR_TEST_KILL_AT=index-write:N)
    write_then_rename(path.with_name(path.name + TMP_SUFFIX), path, "w", lambda f: f.write(text), "index-write")


def check_schema_version(version, where: str) -> None:
    """Refuse a schema version this ksr cannot read (older ones it knows are read as they are)."""
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        hint = (
            "upgrade ksr"
            if isinstance(version, int) and version > max(READABLE_VERSIONS)
            else "extract the cache again with this ksr"
        )
        raise CacheMismatchError(
            f"{where}: cache schema version {version!r}, this ksr reads version "
            f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} or {READABLE_VERSIONS[-1]}: {hint}",
            [f"schema_version: cache has {version!r}, expected one of {list(READABLE_VERSIONS)}"],
        )


@dataclass
class ShardEntry:
    """One finished shard as its writer's index records it."""

    file: str
    n: int
    bytes: int
    sha256: str
    created: str = ""


@dataclass
class WriterIndex:
    tag: str
    meta: CacheMeta
    shards: list[ShardEntry] = field(default_factory=list)
    ksr_version: str = ""
    created: str = ""
    updated: str = ""
    #: The version the file was read at (a writer writes the current one).
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        doc = {
            "kind": INDEX_KIND,
            "schema_version": SCHEMA_VERSION,
            "writer": self.tag,
            "ksr_version": self.ksr_version,
            "created": self.created,
            "updated": self.updated,
            "meta": self.meta.to_dict(),
            "shards": [asdict(s) for s in self.shards],
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def read_index(path: Path) -> WriterIndex:
    """Parse and check one index file; any problem raises ``CacheError`` naming the file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{path}: unreadable index ({e}): restore it or remove the cache") from None
    if not isinstance(doc, dict) or doc.get("kind") != INDEX_KIND:
        raise CacheError(f'{path}: not a ksr cache index (no "kind": "{INDEX_KIND}")')
    check_schema_version(doc.get("schema_version"), str(path))
    try:
        meta = CacheMeta.from_dict(doc["meta"])
        shards = [ShardEntry(**s) for s in doc["shards"]]
        for s in shards:
            if not (isinstance(s.n, int) and isinstance(s.bytes, int) and isinstance(s.sha256, str)):
                raise ValueError(f"malformed entry for {s.file}")
        tag = doc["writer"]
    except CacheError as e:
        raise CacheError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{path}: malformed index ({type(e).__name__}: {e})") from None
    if parse_index_name(Path(path).name) != tag:
        raise CacheError(f"{path}: index of writer {tag!r} under the wrong file name")
    return WriterIndex(
        tag=tag,
        meta=meta,
        shards=shards,
        ksr_version=doc.get("ksr_version", ""),
        created=doc.get("created", ""),
        updated=doc.get("updated", ""),
        schema_version=doc["schema_version"],
    )


def write_index(root: Path, index: WriterIndex) -> None:
    index.updated = now_iso()
    index.schema_version = SCHEMA_VERSION
    atomic_write_text(Path(root) / index_name(index.tag), index.to_json())


@dataclass
class Scan:
    """What a cache directory holds, before any shard is opened.

    ``problems`` make the cache unusable (a reader refuses it). ``unindexed`` shards (finished
    files no index lists: a writer killed between renaming a shard and updating its index, or
    one committing right now) are invisible to readers and a problem for ``verify``.
    ``leftovers`` (``*.tmp``) are unfinished files of an interrupted writer; readers ignore
    them and the writer's rerun removes them.
    """

    root: Path
    indexes: list[WriterIndex]
    meta: CacheMeta | None
    problems: list[str]
    unindexed: list[str]
    leftovers: list[str]

    def entries(self) -> list[tuple[WriterIndex, ShardEntry]]:
        """Every indexed shard, in file-name order (the cache's physical order)."""
        pairs = [(ix, e) for ix in self.indexes for e in ix.shards]
        return sorted(pairs, key=lambda p: p[1].file)

    def unindexed_problems(self) -> list[str]:
        out = []
        for name in self.unindexed:
            tag = parse_shard_name(name)[0]
            out.append(
                f"{self.root / name}: shard not listed in any index (left by an interrupted "
                f"writer, or index-{tag}.json was lost): rerun writer {tag!r} or remove it"
            )
        return out

    def leftover_notes(self) -> list[str]:
        return [
            f"{self.root / name}: unfinished file of an interrupted writer (readers ignore "
            f"it; the writer's rerun removes it)"
            for name in self.leftovers
        ]


def scan_dir(root: Path | str, allow_empty: bool = False) -> Scan:
    """Read every index of ``root`` and compare them with the files present.

    Collects every problem instead of stopping at the first, so ``ksr cache verify`` can
    report them all. ``allow_empty``: a directory without any index is fine (a writer's start).
    """
    root = Path(root)
    if not root.is_dir():
        return Scan(root, [], None, [f"{root}: no such cache directory"], [], [])
    names = sorted(os.listdir(root))
    problems: list[str] = []
    indexes = []
    for name in names:
        if parse_index_name(name) is not None:
            try:
                indexes.append(read_index(root / name))
            except CacheError as e:
                problems.append(str(e))
    if not indexes and not problems and not allow_empty:
        problems.append(f"{root}: no index-*.json file: not a ksr cache, or no shard was finished yet")

    meta = indexes[0].meta if indexes else None
    for ix in indexes[1:]:
        lines = diff_dicts(
            meta.to_dict(),
            ix.meta.to_dict(),
            have_name=f"index-{indexes[0].tag}.json has",
            want_name=f"index-{ix.tag}.json has",
        )
        if lines:
            problems.append(
                f"{root / index_name(ix.tag)}: written for another cache than "
                f"{index_name(indexes[0].tag)}: " + "; ".join(lines)
            )

    listed: dict[str, str] = {}
    present = set(names)
    for ix in indexes:
        for e in ix.shards:
            parsed = parse_shard_name(e.file)
            if parsed is None or parsed[0] != ix.tag:
                problems.append(
                    f"{root / index_name(ix.tag)}: lists {e.file!r}, which is not a shard name of writer {ix.tag!r}"
                )
            elif e.file in listed:
                problems.append(
                    f"{root / e.file}: listed twice (in {index_name(listed[e.file])} and {index_name(ix.tag)})"
                )
            elif e.file not in present:
                problems.append(
                    f"{root / e.file}: missing shard (listed in {index_name(ix.tag)} with {e.n} utterances)"
                )
            listed.setdefault(e.file, ix.tag)
    unindexed = [n for n in names if parse_shard_name(n) is not None and n not in listed]
    leftovers = [n for n in names if n.endswith(TMP_SUFFIX)]
    return Scan(root, indexes, meta, problems, unindexed, leftovers)
