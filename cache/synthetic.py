"""Synthetic utterances and caches: the same data for a given seed, without any corpus or encoder.

Used by the tests and the benchmark, and by anyone who needs a cache to train on without
extracting one. Features carry a small class-dependent offset so a model can learn the labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .schema import CacheMeta, EncoderInfo
from .writer import CacheWriter


def synthetic_meta(
    audio_dim: int = 512,
    text_dim: int = 1024,
    dtype: str = "float16",
    classes: tuple[str, ...] = ("ang", "neu", "hap", "sad"),
    corpus: str = "synthetic",
    max_audio_len: int = 460,
    max_text_len: int = 20,
    attributes: tuple[str, ...] = (),
) -> CacheMeta:
    return CacheMeta(
        corpus=corpus,
        classes=classes,
        dtype=dtype,
        max_audio_len=max_audio_len,
        max_text_len=max_text_len,
        audio_encoder=EncoderInfo("synthetic-audio", audio_dim, "none", "0", 100.0),
        text_encoder=EncoderInfo("synthetic-text", text_dim, "none", "0"),
        attributes=attributes,
        attribute_range=(1.0, 5.0) if attributes else None,
    )


def synthetic_utterances(
    n: int,
    meta: CacheMeta,
    seed: int = 0,
    sessions: int = 5,
    audio_lengths: list[int] | None = None,
    text_lengths: list[int] | None = None,
    signal: float = 0.5,
    splits: list[str] | None = None,
) -> Iterator[dict]:
    """``n`` utterances as ``CacheWriter.add`` keyword arguments, float32 features at their true
    lengths (audio 80..999 frames, text 3..39 tokens unless given). Session ``k`` has speakers
    ``S{k}F`` and ``S{k}M``; ids sort in generation order. ``splits``: one official split per
    utterance (then ``sessions=0`` leaves the sessions empty, as official-split corpora have none).
    A meta with ``attributes`` gives each utterance values on 1-5 that follow its class (attribute
    ``j`` rises with the class index for even ``j``, falls for odd ``j``) plus noise, drawn from a
    generator of their own (the features stay those of the same seed without attributes)."""
    rng = np.random.default_rng(seed)
    attribute_rng = np.random.default_rng([seed, 1])
    classes = len(meta.classes)
    dirs_a = rng.standard_normal((classes, meta.audio_dim), dtype=np.float32)
    dirs_t = rng.standard_normal((classes, meta.text_dim), dtype=np.float32)
    for i in range(n):
        la = int(audio_lengths[i]) if audio_lengths is not None else int(rng.integers(80, 1000))
        lt = int(text_lengths[i]) if text_lengths is not None else int(rng.integers(3, 40))
        label = int(rng.integers(classes))
        session = 1 + i % sessions if sessions else 0
        gender = "F" if rng.random() < 0.5 else "M"
        audio = rng.standard_normal((la, meta.audio_dim), dtype=np.float32)
        audio += signal * dirs_a[label]
        text = rng.standard_normal((lt, meta.text_dim), dtype=np.float32)
        text += signal * dirs_t[label]
        yield {
            "id": f"utt{i:06d}",
            "audio": audio,
            "text": text,
            "label": meta.classes[label],
            "speaker": f"S{session}{gender}" if sessions else f"P{i % 7}{gender}",
            "session": str(session) if sessions else "",
            "gender": gender,
            "transcript": f"synthetic utterance {i} ({meta.classes[label]})",
            **({"split": splits[i]} if splits is not None else {}),
            **({"attributes": _attributes_of(label, classes, meta, attribute_rng)} if meta.attributes else {}),
        }


def _attributes_of(label: int, classes: int, meta: CacheMeta, rng: np.random.Generator) -> np.ndarray:
    rise = label / max(classes - 1, 1)  # 0..1 along the class list
    levels = np.array([rise if j % 2 == 0 else 1.0 - rise for j in range(len(meta.attributes))])
    return np.clip(1.5 + 3.0 * levels + 0.3 * rng.standard_normal(len(levels)), 1.0, 5.0).astype(np.float32)


def write_synthetic_cache(
    root: str | Path,
    n: int,
    meta: CacheMeta | None = None,
    seed: int = 0,
    tag: str = "w0",
    shard_size: int = 512,
    **kwargs,
) -> CacheMeta:
    """Write ``synthetic_utterances(n, meta, seed, **kwargs)`` into ``root``; returns the meta."""
    meta = meta or synthetic_meta()
    with CacheWriter(root, meta, tag=tag, shard_size=shard_size) as w:
        for utt in synthetic_utterances(n, meta, seed, **kwargs):
            w.add(**utt)
    return meta
