"""Audio input: read with soundfile, mix to mono, resample to 16 kHz with soxr.

Media containers (``.mp4`` and kin, MELD's clips) are decoded with PyAV instead
(:mod:`ksr.extract.media`); mixing and resampling are the same for both.

Every encoder takes 16 kHz mono float32. A file that cannot give that raises :class:`AudioError`
with a one-line reason; the extraction loop catches it per utterance, writes the reason to its
errors file and goes on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..common import SAMPLE_RATE
from .audio_errors import MAX_DURATION_S, AudioError, too_long
from .media import decode_container, is_container, probe_container_seconds

#: A segment end past the end of the file by at most this much (rounding in segment lists) is
#: clamped; more is an error.
END_TOLERANCE_S = 0.1


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Mix (frames, channels) to (frames,) by averaging the channels; 1-D input is returned."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"expected (frames, channels) samples, got shape {samples.shape}")
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 samples from ``rate`` to ``target`` Hz (soxr, high quality)."""
    if rate == target:
        return samples
    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


def read_audio(
    path: str | os.PathLike,
    *,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    max_duration: float | None = MAX_DURATION_S,
) -> np.ndarray:
    """Read a file (or its segment ``start``..``end`` seconds) as mono float32 at ``sample_rate``.

    Raises :class:`AudioError` for a missing, unreadable or empty file, a path that is not a
    regular file, a segment outside the file, samples that are NaN or infinite, and a file (or
    segment) whose header gives more than ``max_duration`` seconds (None: no limit).
    """
    if max_duration is not None and not max_duration > 0:
        raise ValueError(f"max_duration must be a positive number of seconds, not {max_duration!r}")
    path = Path(path)
    if not path.is_file():
        if path.exists():  # never opened: a pipe or a device could block the run forever
            raise AudioError(f"audio path is not a regular file (a folder, pipe or device): {path}")
        raise AudioError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"unreadable audio {path.name}: the file is empty (0 bytes)")
    if is_container(path):
        decoded, rate = decode_container(path, start=start, end=end, max_duration=max_duration)
        first, last = _segment(path.name, rate, decoded.shape[0], start, end, None)
        samples = decoded[first:last]
    else:
        samples, rate = _read_soundfile(path, start, end, max_duration)
    if samples.shape[0] == 0:
        raise AudioError(
            f"empty audio: {path.name} has no samples" + ("" if start is None and end is None else " in the segment")
        )
    if not np.isfinite(samples).all():
        raise AudioError(f"audio {path.name} contains NaN or infinite samples")
    return np.ascontiguousarray(resample(to_mono(samples), rate, sample_rate))


def _segment(
    name: str, rate: int, total: int, start: float | None, end: float | None, max_duration: float | None
) -> tuple[int, int]:
    """The first and last sample of ``start``..``end`` in a file of ``total`` samples (an end
    just past the file is clamped); AudioError for a segment outside the file or too long."""
    first = 0 if start is None else int(round(start * rate))
    last = total if end is None else int(round(end * rate))
    if end is not None and last > total:
        if last - total > END_TOLERANCE_S * rate:
            raise AudioError(f"segment end {end:.3f} s is past the end of {name} ({total / rate:.3f} s)")
        last = total
    if first >= total and total > 0:
        raise AudioError(f"segment start {start:.3f} s is past the end of {name} ({total / rate:.3f} s)")
    seconds = max(last - first, 0) / rate
    if max_duration is not None and seconds > max_duration:
        raise too_long(name, max_duration, seconds)
    return first, max(last, first)


def _read_soundfile(
    path: Path, start: float | None, end: float | None, max_duration: float | None
) -> tuple[np.ndarray, int]:
    """The segment of a file soundfile reads, as (frames, channels) float32, and its rate."""
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            first, last = _segment(path.name, rate, f.frames, start, end, max_duration)
            f.seek(first)
            return f.read(last - first, dtype="float32", always_2d=True), rate
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        reason = " ".join(str(err).split())  # one line
        raise AudioError(f"unreadable audio {path.name}: {reason}") from None


def probe_seconds(path: str | os.PathLike) -> float:
    """The audio's duration in seconds from the file's header, no sample decoded; raises what
    soundfile or PyAV raise for a file they cannot open (the caller decides)."""
    if is_container(path):
        return probe_container_seconds(path)
    info = sf.info(str(path))
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


def cut_audio(samples: np.ndarray, max_seconds: float | None, rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first ``max_seconds`` of ``samples`` (``round(max_seconds * rate)`` samples); all of
    them when ``max_seconds`` is None (``ksr extract --max-audio-seconds``)."""
    if max_seconds is None:
        return samples
    return samples[: int(round(max_seconds * rate))]
