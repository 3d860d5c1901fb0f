"""``ksr cache info``: what a cache holds, from its metadata alone (no feature is read)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .reader import open_cache
from .schema import SCHEMA_VERSION, index_name


def cache_info(root: str | Path) -> dict[str, Any]:
    """A JSON-able summary: meta, writers, counts per class/session/speaker/gender, cut
    sequences, and size on disk against the ideal size of the padded features."""
    root = Path(root)
    with open_cache(root, mode="stream", verify=False, progress=False) as cache:
        meta = cache.meta
        n = len(cache)
        versions = sorted({ix.schema_version for ix in cache.indexes})
        disk = cache.disk_bytes + sum((root / index_name(ix.tag)).stat().st_size for ix in cache.indexes)
        return {
            "root": str(root),
            # a cache written by an older ksr and added to by this one holds both versions
            "schema_version": max(versions, default=SCHEMA_VERSION),
            "schema_versions": versions,
            "meta": meta.to_dict(),
            "utterances": n,
            "shards": len(cache.shards),
            "writers": [
                {
                    "tag": ix.tag,
                    "shards": len(ix.shards),
                    "utterances": sum(e.n for e in ix.shards),
                    "created": ix.created,
                    "updated": ix.updated,
                    "ksr_version": ix.ksr_version,
                }
                for ix in cache.indexes
            ],
            "classes": {c: int((cache.labels == i).sum()) for i, c in enumerate(meta.classes)},
            "sessions": _counts(cache.sessions),
            "splits": _counts(cache.splits) if any(cache.splits.tolist()) else {},
            # per attribute: utterances with a value, and without one (NaN)
            "attributes": {
                a: {
                    "values": int((~np.isnan(cache.attributes[:, j])).sum()),
                    "missing": int(np.isnan(cache.attributes[:, j]).sum()),
                }
                for j, a in enumerate(meta.attributes)
            },
            "speakers": _counts(cache.speakers),
            "genders": _counts(cache.genders),
            "cut": {
                "audio": int((cache.audio_lengths_full > meta.max_audio_len).sum()),
                "text": int((cache.text_lengths_full > meta.max_text_len).sum()),
            },
            "size_on_disk": disk,
            "ideal_size": cache.feature_bytes,
        }


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(values.tolist()).items()))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def _line(counts: dict[str, int], most: int = 24) -> str:
    """``name count, ...``, or a summary when there are too many names (LSSED has 820 speakers)."""
    if len(counts) > most:
        n = sorted(counts.values())
        return f"{len(n)} distinct; utterances each: min {n[0]}, median {n[len(n) // 2]}, max {n[-1]}"
    return ", ".join(f"{k or '(none)'} {v}" for k, v in counts.items()) or "(none)"


def _attribute_line(counts: dict[str, dict[str, int]], scale: list[float] | None) -> str:
    where = f"scale {scale[0]:g}-{scale[1]:g}" if scale else "no declared scale"
    each = ", ".join(f"{a} {c['values']} ({c['missing']} missing)" for a, c in counts.items())
    return f"attributes ({where}): {each}"


def format_info(info: dict[str, Any]) -> str:
    """The summary as the text ``ksr cache info`` prints."""
    m = info["meta"]
    a, t = m["audio_encoder"], m["text_encoder"]

    def enc(e: dict[str, Any]) -> str:
        parts = [e["name"]]
        if e["layer"]:
            parts.append(f"layer {e['layer']}")
        if e["frame_rate"]:
            parts.append(f"{e['frame_rate']:g} frames/s")
        parts.append(f"checkpoint {e['checkpoint_digest'] or '(no digest)'}")
        return ", ".join(parts)

    ideal, disk = info["ideal_size"], info["size_on_disk"]
    over = f"{100 * (disk - ideal) / ideal:+.2f}%" if ideal else "n/a"
    writers = "; ".join(
        f"{w['tag']}: {w['shards']} shards, {w['utterances']} utterances, created "
        f"{w['created']}, ksr {w['ksr_version']}"
        for w in info["writers"]
    )
    lines = [
        f"cache {info['root']} (schema {', '.join(f'v{v}' for v in info.get('schema_versions', [info['schema_version']]))}), "
        f"corpus {m['corpus']!r}",
        f"utterances: {info['utterances']} in {info['shards']} shards; writers: {writers}",
        f"audio: {m['max_audio_len']} x {a['dim']} {m['dtype']}  <- {enc(a)}; sample rate {m['sample_rate']} Hz",
        f"text:  {m['max_text_len']} x {t['dim']} {m['dtype']}  <- {enc(t)}; transcripts from column "
        f"{m.get('text_column', 'text')}",
        f"cut to the max length: {info['cut']['audio']} audio, {info['cut']['text']} text",
        f"classes: {_line(info['classes'])}",
        f"sessions: {_line(info['sessions'])}",
        *([f"splits: {_line(info['splits'])}"] if info.get("splits") else []),
        *([_attribute_line(info["attributes"], m.get("attribute_range"))] if info.get("attributes") else []),
        f"speakers: {_line(info['speakers'])}",
        f"genders: {_line(info['genders'])}",
        f"size on disk: {_size(disk)}; ideal (N x (audio + text) x itemsize): {_size(ideal)} ({over})",
        # info reads no feature, so it does not hash the shards; say so rather than imply "intact"
        "checked: indexes, shard sizes, schema and metadata; not the checksums (run `ksr cache verify`)",
    ]
    return "\n".join(lines)
