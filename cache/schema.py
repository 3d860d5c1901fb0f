"""The cache schema (version 3): what a cache holds and how it names its files.

docs/cache.md is the human-readable form of this module; change both together, and bump
``SCHEMA_VERSION`` whenever a reader of the old version could misread a new file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import CacheError, CacheMismatchError

SCHEMA_VERSION = 3
#: Versions this ksr reads. Version 2 added each utterance's ``split`` (a manifest's optional
#: train / valid / test* column); a version-1 shard has none, read as "" (no split). Version 3
#: added the numeric attributes (``CacheMeta.attributes`` names them, dataset ``attributes``
#: holds them, NaN where missing); an older shard has none.
READABLE_VERSIONS = (1, 2, 3)

#: Storage dtypes a cache may use for its feature arrays.
DTYPES = ("float16", "float32")

#: Shard datasets. ``audio``/``text`` are the padded feature arrays (contiguous, so one
#: utterance is one contiguous extent of the file); the rest are per-utterance metadata.
AUDIO, TEXT = "audio", "text"
#: Dataset of the per-utterance numeric attributes: float32 (n, len(meta.attributes)), NaN = missing.
ATTRIBUTES = "attributes"
#: The first schema version whose shards hold the ``attributes`` dataset.
ATTRIBUTES_SINCE = 3
INT_FIELDS = ("label", "audio_len", "audio_len_full", "text_len", "text_len_full")
STR_FIELDS = ("id", "speaker", "session", "gender", "transcript", "split")
#: Per-utterance fields a shard of an older schema version lacks: {field: first version with it}.
ADDED_FIELDS = {"split": 2}

#: An utterance's official split: ``train``, ``valid``, or ``test`` with an optional suffix of
#: lowercase letters and digits (``test1``, ``test2``: corpora with several test sets). "" = none.
SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = "train", "valid", "test"
_SPLIT = re.compile(r"^(train|valid|test[a-z0-9]*)$")
SPLIT_RULE = "train, valid, test, or test followed by lowercase letters/digits (e.g. test1)"


def is_split_name(value: str) -> bool:
    """True for ``train``, ``valid``, ``test`` and ``test<suffix>``; False for anything else ("" too)."""
    return isinstance(value, str) and bool(_SPLIT.match(value))


def is_test_split(value: str) -> bool:
    return is_split_name(value) and value.startswith(SPLIT_TEST)


SHARD_KIND = "ksr-cache-shard"
INDEX_KIND = "ksr-cache-index"

_TAG = re.compile(r"^[A-Za-z0-9_]+$")
_SHARD = re.compile(r"^shard-([A-Za-z0-9_]+)-(\d{5,})\.h5$")
_INDEX = re.compile(r"^index-([A-Za-z0-9_]+)\.json$")


def check_tag(tag: str) -> str:
    """A writer tag names one writer (one extraction rank): letters, digits and ``_`` only."""
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise ValueError(f"writer tag {tag!r}: use letters, digits and '_' only (e.g. 'rank0')")
    return tag


def shard_name(tag: str, seq: int) -> str:
    return f"shard-{tag}-{seq:05d}.h5"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """``(tag, seq)`` for a finished shard's file name, None for any other name."""
    m = _SHARD.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def index_name(tag: str) -> str:
    return f"index-{tag}.json"


def parse_index_name(name: str) -> str | None:
    m = _INDEX.match(name)
    return m.group(1) if m else None


@dataclass(frozen=True)
class EncoderInfo:
    """The frozen encoder that made one modality's features.

    ``layer`` is free text ("aggregator", "24", "last"); ``frame_rate`` is frames per second for
    audio and None for text (one row per token).
    """

    name: str
    dim: int
    checkpoint_digest: str = ""
    layer: str = ""
    frame_rate: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "layer", str(self.layer))
        if not self.name:
            raise ValueError("encoder name must not be empty")
        if int(self.dim) != self.dim or self.dim < 1:
            raise ValueError(f"encoder {self.name}: dim must be a positive integer, not {self.dim!r}")
        object.__setattr__(self, "dim", int(self.dim))
        if self.frame_rate is not None:
            object.__setattr__(self, "frame_rate", float(self.frame_rate))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderInfo:
        return _build(cls, d, "encoder")


@dataclass(frozen=True)
class CacheMeta:
    """What makes caches interchangeable: two writers may share a directory only if these agree.

    Provenance (creation time, ksr version, writer tag) is kept per shard and per index, not here.
    """

    corpus: str
    classes: tuple[str, ...]
    audio_encoder: EncoderInfo
    text_encoder: EncoderInfo
    sample_rate: int = 16000
    max_audio_len: int = 460
    max_text_len: int = 20
    dtype: str = "float16"
    #: Audio cut to its first this-many seconds before encoding (``ksr extract
    #: --max-audio-seconds``); None: the whole utterance was encoded.
    max_audio_seconds: float | None = None
    #: The manifest column the transcripts were taken from (``ksr extract --text-column``): the
    #: human ``text``, or a machine transcript such as ``asr_text``. Older caches: ``text``.
    text_column: str = "text"
    #: The numeric emotional attributes stored per utterance (manifest column names, e.g.
    #: ``activation``, ``valence``, ``dominance``), in the order of the ``attributes`` dataset;
    #: () for a cache without them (every cache older than schema version 3).
    attributes: tuple[str, ...] = ()
    #: The scale the corpus declares for them, ``(low, high)`` (IEMOCAP 1-5, MSP-Podcast 1-7);
    #: None when unknown. Extraction reports (and leaves out) values outside it.
    attribute_range: tuple[float, float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "attributes", tuple(str(a) for a in self.attributes))
        if len(set(self.attributes)) != len(self.attributes) or not all(self.attributes):
            raise ValueError(f"attributes must be distinct non-empty names, not {list(self.attributes)}")
        if self.attribute_range is not None:
            low, high = (float(v) for v in self.attribute_range)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"attribute_range must be (low, high) with low < high, not {self.attribute_range!r}")
            object.__setattr__(self, "attribute_range", (low, high))
        if self.max_audio_seconds is not None:
            seconds = float(self.max_audio_seconds)
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ValueError(
                    f"max_audio_seconds must be a positive number of seconds, not {self.max_audio_seconds!r}"
                )
            object.__setattr__(self, "max_audio_seconds", seconds)
        for name in ("audio_encoder", "text_encoder"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, EncoderInfo.from_dict(value))
            elif not isinstance(value, EncoderInfo):
                raise ValueError(f"{name} must be an EncoderInfo, not {type(value).__name__}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be a non-empty list of distinct names, not {list(self.classes)}")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise ValueError(f"text_column must be a column name, not {self.text_column!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: a cache stores float16 or float32")
        for name in ("sample_rate", "max_audio_len", "max_text_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def audio_dim(self) -> int:
        return self.audio_encoder.dim

    @property
    def text_dim(self) -> int:
        return self.text_encoder.dim

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "float16" else 4

    @property
    def audio_row_bytes(self) -> int:
        return self.max_audio_len * self.audio_dim * self.itemsize

    @property
    def text_row_bytes(self) -> int:
        return self.max_text_len * self.text_dim * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["attributes"] = list(self.attributes)
        if self.attribute_range is not None:
            d["attribute_range"] = list(self.attribute_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheMeta:
        return _build(cls, d, "cache meta")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _build(cls, d: Any, what: str):
    """``cls(**d)``, with unknown, missing or malformed fields reported as a schema problem."""
    if not isinstance(d, dict):
        raise CacheError(f"{what}: expected a JSON object, found {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise CacheError(f"{what}: unknown fields {unknown} (written by a newer ksr?)")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise CacheError(f"{what}: {e}") from None


def _same(a: Any, b: Any) -> bool:
    """Equality that treats 24 and "24", 100 and 100.0, tuples and lists as the same value."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) != isinstance(b, str) and a is not None and b is not None:
        return str(a) == str(b)
    return a == b


def diff_dicts(
    have: dict[str, Any],
    want: dict[str, Any],
    prefix: str = "",
    have_name: str = "cache has",
    want_name: str = "expected",
) -> list[str]:
    """One line per key of ``want`` whose value differs in ``have`` (nested dicts by dotted key).

    Keys of ``have`` that ``want`` leaves out are not compared: ``want`` may be partial.
    """
    lines = []
    for key, value in want.items():
        path = f"{prefix}{key}"
        if key not in have:
            lines.append(f"{path}: unknown key (a cache describes {', '.join(sorted(have))})")
        elif isinstance(value, dict) and isinstance(have[key], dict):
            lines += diff_dicts(have[key], value, path + ".", have_name, want_name)
        elif not _same(have[key], value):
            lines.append(f"{path}: {have_name} {have[key]!r}, {want_name} {value!r}")
    return lines


def check_compatible(meta: CacheMeta, expected: dict[str, Any], where: str = "cache") -> None:
    """Raise ``CacheMismatchError`` listing every field where ``meta`` differs from ``expected``.

    ``expected`` uses ``CacheMeta.to_dict()``'s keys and may be partial, e.g.
    ``{"audio_encoder": {"name": "wav2vec-large", "dim": 512}, "classes": [...]}``; the
    shorthands ``audio_dim`` and ``text_dim`` stand for the encoders' ``dim``.
    """
    want = dict(expected)
    for short, enc in (("audio_dim", "audio_encoder"), ("text_dim", "text_encoder")):
        if short in want:
            want.setdefault(enc, {})
            want[enc] = {**want[enc], "dim": want.pop(short)}
    lines = diff_dicts(meta.to_dict(), want)
    if lines:
        raise CacheMismatchError(f"{where} does not fit: " + "; ".join(lines), lines)
