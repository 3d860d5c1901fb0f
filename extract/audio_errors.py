"""What a bad audio file raises, and the duration guard's limit: shared by every decoder
(``audio`` for what soundfile reads, ``media`` for containers through PyAV)."""

from __future__ import annotations

from ..common import KsrError

#: The most audio, in seconds, one file (or its segment) may decode to; checked from the file's
#: header before any sample is read, so that one huge file, or one whose header claims an absurd
#: length, cannot take the machine's memory. ``--max-duration`` (extract, transcribe, predict) raises it.
MAX_DURATION_S = 600.0


class AudioError(KsrError, ValueError):
    """An utterance whose audio cannot be used; the message is a one-line reason."""


def too_long(name: str, max_duration: float, seconds: float | None = None) -> AudioError:
    """The duration guard's one line (``seconds``: what the header gives, when it gives it)."""
    have = f"{seconds:.1f} s of audio by its header, more than" if seconds is not None else "more than"
    return AudioError(f"{name}: {have} the {max_duration:g} s one file may decode to (--max-duration raises the limit)")
