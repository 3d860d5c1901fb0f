"""Audio inside media containers (mp4, m4a, mov, mkv, webm, aac): decoded with PyAV.

MELD ships its utterances as mp4 clips (AAC audio, commonly 48 kHz stereo, beside an H.264
picture), which soundfile cannot open. PyAV (PyPI ``av``) binds FFmpeg's libraries and its
wheels bundle them, so ``pip install 'ksr[video]'`` is all a user needs: no system ffmpeg, no
subprocess per clip, and the same FFmpeg on every machine. Only the first audio stream is
decoded (the picture's packets are skipped unread); samples come out as float32 at the file's
own rate and channel count, and :func:`ksr.extract.audio.read_audio` mixes and resamples them
exactly as it does a wav file (channel mean, soxr), so a clip gives the same samples whether it
is read from the mp4 or from a wav made of it losslessly.

Every failure (no audio stream, a damaged or truncated file, PyAV not installed) raises
:class:`~ksr.extract.audio.AudioError` with a one-line reason: a per-utterance error, like any
bad audio.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .audio_errors import AudioError, too_long

#: File name endings read with PyAV instead of soundfile.
CONTAINER_SUFFIXES: frozenset[str] = frozenset({".mp4", ".m4a", ".mov", ".mkv", ".webm", ".aac"})

_INSTALL = "decoding mp4 and other media files needs PyAV: pip install 'ksr[video]' (or: pip install av)"


def is_container(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read with PyAV (by its ending, case-insensitive)."""
    return Path(path).suffix.lower() in CONTAINER_SUFFIXES


def check_decoder(paths) -> None:
    """Before a run: refuse media files (mp4, ...) in one line when PyAV is missing, instead of
    one failed item per file."""
    media = [p for p in paths if is_container(p)]
    if media:
        try:
            _av()
        except AudioError as e:
            raise AudioError(f"{len(media)} audio file(s) such as {Path(media[0]).name} are media files: {e}") from None


def _av():
    try:
        import av
    except ImportError:
        raise AudioError(_INSTALL) from None
    return av


def _reason(err: BaseException) -> str:
    """One line from a PyAV error: FFmpeg's own words, without the errno and the file name."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())


def _header_seconds(container, stream) -> float | None:
    """The audio stream's duration by the file's header, or the container's; None if neither."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE: microseconds
    return None


def probe_container_seconds(path: str | os.PathLike) -> float:
    """The audio's duration in seconds from the header (no sample decoded); 0.0 when unknown."""
    av = _av()
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                return 0.0
            return _header_seconds(container, container.streams.audio[0]) or 0.0
    except (av.error.FFmpegError, OSError, ValueError):
        return 0.0


def decode_container(
    path: Path, *, start: float | None, end: float | None, max_duration: float | None
) -> tuple[np.ndarray, int]:
    """The first audio stream of ``path`` as (frames, channels) float32, and its sample rate.

    Decoding stops once ``end`` is passed. ``max_duration`` is checked against the header before
    any sample is decoded, and again while decoding (a header may lie or be missing), so a huge
    file cannot take the machine's memory. The caller cuts the segment and checks its bounds.
    """
    av = _av()
    name = path.name
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"{name} has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            if not rate or rate <= 0:
                raise AudioError(f"unreadable audio {name}: its audio stream has no sample rate")
            first_s = start or 0.0
            seconds = _header_seconds(container, stream)
            wanted = (end if end is not None else (seconds if seconds is not None else 0.0)) - first_s
            if max_duration is not None and wanted > max_duration:
                raise too_long(name, max_duration, wanted)
            # Never decode past what was asked for, nor past the limit when the header is silent.
            stop = None if end is None else int(round(end * rate)) + rate  # 1 s beyond, then cut
            limit = None if max_duration is None else int(round((first_s + max_duration) * rate))
            to_float = av.AudioResampler(format="fltp")  # any sample format -> float planar, same rate
            chunks: list[np.ndarray] = []
            decoded = 0
            for frame in container.decode(stream):
                for out in to_float.resample(frame):
                    block = out.to_ndarray()
                    chunks.append(block)
                    decoded += block.shape[1]
                if limit is not None and decoded > limit:
                    raise too_long(name, max_duration)
                if stop is not None and decoded >= stop:
                    break
            else:
                chunks.extend(out.to_ndarray() for out in to_float.resample(None))
    except AudioError:
        raise
    except av.error.FFmpegError as err:
        raise AudioError(f"unreadable audio {name}: {_reason(err)} (damaged or truncated file?)") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise AudioError(f"unreadable audio {name}: {_reason(err)}") from None
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), rate
    return np.ascontiguousarray(np.concatenate(chunks, axis=1).T, dtype=np.float32), rate
