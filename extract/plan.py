"""Planning an extraction: durations, each rank's share, and batches of similar length.

Everything here is decided from the manifest and the audio files' headers alone, never from
what a cache already holds, so that every rank (and every rerun) computes the same shares:
two ranks can then never write the same utterance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..common import SAMPLE_RATE, Ranks
from .audio import probe_seconds
from .corpora.manifest import Utterance


def utterance_seconds(utt: Utterance) -> float:
    """The utterance's duration in seconds from the file header (cheap: no samples are read).

    A file that cannot be probed gives 0.0: it is planned like any other and reading it
    later raises the one-line :class:`~ksr.extract.audio.AudioError` that goes to the errors
    file, so there is a single source of reasons.
    """
    if not os.path.isfile(utt.audio):  # a pipe or device named in a manifest could block
        return 0.0
    try:
        total = probe_seconds(utt.audio)  # soundfile, or PyAV for mp4 and kin
    except Exception:  # noqa: BLE001 - any header problem is reported when the file is read
        return 0.0
    start = utt.start or 0.0
    end = total if utt.end is None else min(utt.end, total)
    return max(end - start, 0.0)


def rank_share(ids: Sequence[str], seconds: Sequence[float], ranks: Ranks) -> list[int]:
    """Positions (into ``ids``) of this rank's utterances.

    Sorted by (duration, id), dealt out round-robin: each rank gets about the same number of
    utterances and of audio seconds (within one utterance's duration), so ranks finish
    together. Deterministic in the manifest and the files alone.
    """
    order = sorted(range(len(ids)), key=lambda i: (-seconds[i], ids[i]))
    return sorted(order[ranks.rank :: ranks.world])


def plan_batches(
    positions: Sequence[int], seconds: Sequence[float], batch_seconds: float, max_items: int = 256
) -> list[list[int]]:
    """Group ``positions`` into batches of similar duration.

    Sorted by duration (longest first, so a memory problem shows in the first batch, not after
    an hour); a batch holds at most ``max_items`` and its padded size (items x longest) stays
    within ``batch_seconds`` of audio. An utterance longer than that goes alone.
    """
    if batch_seconds <= 0:
        raise ValueError(f"batch_seconds must be positive, not {batch_seconds}")
    order = sorted(positions, key=lambda i: (-seconds[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in order:
        s = max(seconds[i], 1.0 / SAMPLE_RATE)
        grow = max(longest, s)
        if current and (grow * (len(current) + 1) > batch_seconds or len(current) >= max_items):
            batches.append(current)
            current, grow = [], s
        current.append(i)
        longest = grow
    if current:
        batches.append(current)
    return batches
