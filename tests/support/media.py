"""Tiny real mp4 clips for the tests, encoded with PyAV itself (AAC audio, optionally a picture).

MELD's clips are mp4 files with AAC audio, commonly 48 kHz stereo, beside an H.264 picture; the
tests make clips of that shape from a known signal so that decoding can be checked against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RATE = 48000
#: The test signal: a 440 Hz tone on the left channel and a 660 Hz tone on the right.
TONES = ((440.0, 0.5), (660.0, 0.3))


def stereo_tones(seconds: float, rate: int = RATE) -> np.ndarray:
    """(2, n) float32: channel c is the sine ``TONES[c]`` (frequency, amplitude)."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([a * np.sin(2 * np.pi * f * t) for f, a in TONES]).astype(np.float32)


def write_mp4(path: Path, seconds: float = 1.0, *, rate: int = RATE, video: bool = False, audio: bool = True) -> Path:
    """Write ``stereo_tones(seconds)`` as AAC in an mp4 (moov at the end, FFmpeg's default);
    ``video`` adds a few 32x32 MPEG-4 frames, as MELD's clips carry a picture."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        picture = None
        if video:
            picture = container.add_stream("mpeg4", rate=25)
            picture.width, picture.height, picture.pix_fmt = 32, 32, "yuv420p"
        if audio:
            stream = container.add_stream("aac", rate=rate, layout="stereo")
            data = stereo_tones(seconds, rate)
            for i in range(0, data.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(data[:, i : i + 1024]), format="fltp", layout="stereo"
                )
                frame.sample_rate, frame.pts = rate, i
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        if picture is not None:
            for i in range(max(1, int(seconds * 25))):
                image = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i % 256, np.uint8), format="rgb24")
                image.pts = i
                for packet in picture.encode(image):
                    container.mux(packet)
            for packet in picture.encode(None):
                container.mux(packet)
    return path
