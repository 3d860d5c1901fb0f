"""Numeric emotional attributes in a manifest: which columns hold them, on what scale, parsed how.

IEMOCAP (``ksr prepare iemocap``) and MSP-Podcast (``ksr prepare msp-podcast``) write one value
per utterance in the columns ``activation`` (arousal), ``valence`` and ``dominance``; the demo
corpus writes the same three. Extraction stores the ones a manifest has in the cache (schema
version 3), NaN where a row leaves one empty. A value that is not a number or lies outside the
scale the corpus declares is stored as missing and reported, one line per utterance: never a
silent zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

#: The attribute columns ksr knows, in the order a cache stores them.
ATTRIBUTE_COLUMNS = ("activation", "valence", "dominance")

#: The scale each corpus declares for its attributes (docs/corpora.md, shared/reference/corpora.md):
#: IEMOCAP's evaluators rate on 1-5, MSP-Podcast's on 1-7; the demo corpus follows IEMOCAP.
DECLARED_RANGES: dict[str, tuple[float, float]] = {
    "iemocap": (1.0, 5.0),
    "msppodcast": (1.0, 7.0),
    "demo": (1.0, 5.0),
}


def attribute_columns(extra_columns: Sequence[str]) -> tuple[str, ...]:
    """The attribute columns among a manifest's optional columns, in :data:`ATTRIBUTE_COLUMNS` order."""
    present = set(extra_columns)
    return tuple(c for c in ATTRIBUTE_COLUMNS if c in present)


def declared_range(corpus: str) -> tuple[float, float] | None:
    """The scale of a corpus's attributes by its name (``iemocap``, ``MSP-Podcast``, ``msp_podcast``,
    ``demo``); None for a corpus ksr does not know."""
    key = re.sub(r"[^a-z0-9]", "", corpus.lower())
    for name, scale in DECLARED_RANGES.items():
        if key.startswith(name):
            return scale
    return None


def format_range(scale: tuple[float, float]) -> str:
    return f"{scale[0]:g}-{scale[1]:g}"


def parse_attributes(
    uid: str, extra: Mapping[str, str], names: Sequence[str], scale: tuple[float, float] | None
) -> tuple[np.ndarray, list[str], str | None]:
    """One utterance's attribute values: ``(values, missing names, problem)``.

    ``values`` has one float32 per name, NaN where the row leaves the column empty (missing) or
    holds something unusable; ``problem`` is the one line naming each unusable value (not a
    number, or outside ``scale``), None when there is none.
    """
    values = np.full(len(names), np.nan, dtype=np.float32)
    missing: list[str] = []
    bad: list[str] = []
    for i, name in enumerate(names):
        raw = str(extra.get(name, "") or "").strip()
        if not raw:
            missing.append(name)
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            bad.append(f"{name} {raw!r} is not a number")
        elif scale is not None and not scale[0] <= value <= scale[1]:
            bad.append(f"{name} {raw} is outside the corpus's scale {format_range(scale)}")
        else:
            values[i] = value
    problem = f"{uid}: {'; '.join(bad)} (stored as missing)" if bad else None
    return values, missing, problem
