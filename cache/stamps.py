"""Opening without re-reading: a shard hashed once is trusted while its file is unchanged.

Whoever reads a whole shard and finds its SHA-256 equal to the index's (``ksr cache verify``, a
load into memory, a stream-mode open) records the file's stamp in ``CACHE/.verified.json``:
its size, modification time, status-change time (ctime) and inode number, with the hash and
the time the hashing began. A later open trusts the shard without reading it when the file's
stamp is still the recorded one and the recorded hash is still the index's.

Why the four numbers: writing to a file moves its mtime and ctime, and ctime cannot be set
back (``touch -d`` and ``os.utime`` set mtime; setting it moves ctime); a file replaced by
another (rename, copy) has another inode. Why the hashing time: file times tick coarsely (a
few milliseconds, 1-2 s on some file systems), so a write within the same tick as the last one
would leave the stamp as it was; a stamp is trusted only if the file's ctime is older than the
start of its hashing by ``RACY_NS``, i.e. the bytes hashed had been in place for a while and any
later write must show. docs/cache.md lists what this does and does not detect.

With each stamp goes what inspecting the shard found (its layout and per-utterance metadata):
an open of an unchanged, stamped shard takes them from here instead of opening it with HDF5
(~10 ms a shard; 300 shards for 150,000 utterances). They are used only with the stamp they
were taken with, for the same index entry, writer and cache meta.

The file is a cache of checks, never needed: it is written atomically and best effort (a
read-only cache directory simply hashes at every open), and a missing, foreign or garbled one
is ignored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..common.files import sha256_file
from .index import ShardEntry
from .schema import INT_FIELDS, STR_FIELDS, CacheMeta
from .shard import ShardInfo

STAMPS_FILE = ".verified.json"
STAMPS_KIND = "ksr-cache-verified"
#: How long before its hashing a file must have last changed for its stamp to be trusted.
RACY_NS = 2_000_000_000


def file_stamp(st: os.stat_result) -> list[int]:
    """What a write or a replacement would change: size, mtime, ctime (ns), inode. Not the
    device number: it differs between the nodes that mount one network file system."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class Stamps:
    """The stamps of one cache directory, read at open and written back if any were added."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / STAMPS_FILE
        self.entries: dict[str, dict] = {}
        self.described: dict[str, dict] = {}
        self.added = False
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("kind") == STAMPS_KIND and isinstance(doc.get("shards"), dict):
                self.entries = {k: v for k, v in doc["shards"].items() if _well_formed(v)}
        except (OSError, UnicodeDecodeError, ValueError):
            pass  # none yet, or unreadable: every shard is hashed, as without stamps

    def trusted(self, name: str, sha256: str, st: os.stat_result) -> bool:
        """True when the file ``name`` (stat ``st``) is the one hashed to ``sha256`` before."""
        e = self.entries.get(name)
        if e is None or e["sha256"] != sha256 or e["stamp"] != file_stamp(st):
            return False
        return e["stamp"][2] + RACY_NS < e["hashed_ns"]

    def hash(self, path: Path, expected: str, fd: int | None = None, progress=None) -> str:
        """SHA-256 of ``path`` (``fd``: its descriptor the caller holds), stamped when it is
        ``expected`` and the file did not change while it was read."""
        began = time.time_ns()
        before = os.fstat(fd) if fd is not None else os.stat(path)
        digest = sha256_file(path, progress)
        after = os.fstat(fd) if fd is not None else os.stat(path)
        self.note(path.name, digest, expected, (before, after), began)
        return digest

    def note(self, name: str, got: str, expected: str, stats: tuple[os.stat_result, ...], began: int) -> None:
        """The file ``name`` was read from time ``began`` on (``os.stat`` before and after in
        ``stats``) and hashed to ``got``: stamp it if that is the ``expected`` hash and nothing
        changed meanwhile; forget any old stamp otherwise."""
        stamps = [file_stamp(st) for st in stats]
        if got == expected and all(st == stamps[0] for st in stamps):
            self.entries[name] = {"sha256": got, "stamp": stamps[0], "hashed_ns": began}
            self.added = True
        else:
            self.forget(name)

    def describe(self, info: ShardInfo, tag: str, meta: CacheMeta, st: os.stat_result) -> None:
        """Keep what inspecting the shard ``info`` found (its stat ``st`` taken before), to be
        saved with its stamp: a later open of the unchanged file need not open it with HDF5."""
        self.described[info.entry.file] = {
            "stamp": file_stamp(st),
            "writer": tag,
            "meta": meta.to_dict(),
            "n": info.n,
            "offsets": [info.audio_offset, info.text_offset],
            "fields": {k: v.tolist() for k, v in info.fields.items()},
            # float32 values are exact in JSON (NaN, a missing value, is written as NaN)
            "attributes": None if info.attributes is None else info.attributes.tolist(),
            "attributes_shape": None if info.attributes is None else list(info.attributes.shape),
        }

    def known_shard(self, path: Path, entry: ShardEntry, tag: str, meta: CacheMeta) -> ShardInfo | None:
        """The shard as an earlier inspection found it, when the file is the one stamped then
        (``trusted``) and it was inspected for this index entry, writer and cache meta; None
        otherwise (the caller inspects it)."""
        e = self.entries.get(entry.file)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if e is None or not self.trusted(entry.file, entry.sha256, st) or not isinstance(e.get("shard"), dict):
            return None
        d = e["shard"]
        if d.get("stamp") != e["stamp"] or d.get("writer") != tag or d.get("n") != entry.n:
            return None
        if d.get("meta") != json.loads(json.dumps(meta.to_dict())):
            return None
        try:
            fields = {k: np.asarray(d["fields"][k], dtype=np.int64) for k in INT_FIELDS}
            fields.update({k: np.array(d["fields"][k] or [], dtype=object) for k in STR_FIELDS})
            audio_offset, text_offset = (int(x) for x in d["offsets"])
            attributes = None
            if d.get("attributes") is not None:
                attributes = np.asarray(d["attributes"], dtype=np.float32).reshape(d["attributes_shape"])
        except (KeyError, TypeError, ValueError):
            return None
        if any(v.shape != (entry.n,) for v in fields.values()):
            return None
        return ShardInfo(path, entry, entry.n, audio_offset, text_offset, fields, attributes)

    def forget(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self.added = True

    def save(self) -> None:
        """Write the stamps if any changed; silently not where the directory is read-only."""
        for name, d in self.described.items():  # descriptions go only with their own stamp
            e = self.entries.get(name)
            if e is not None and e["stamp"] == d["stamp"] and e.get("shard") != d:
                e["shard"] = d
                self.added = True
        self.described = {}
        if not self.added:
            return
        tmp = self.path.with_name(f"{STAMPS_FILE}.{os.getpid()}.new")
        try:
            tmp.write_text(json.dumps({"kind": STAMPS_KIND, "shards": self.entries}, sort_keys=True))
            os.replace(tmp, self.path)
            self.added = False
        except OSError:
            tmp.unlink(missing_ok=True)


def _well_formed(e) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("sha256"), str)
        and isinstance(e.get("hashed_ns"), int)
        and isinstance(e.get("stamp"), list)
        and len(e["stamp"]) == 4
        and all(isinstance(x, int) for x in e["stamp"])
    )
