"""``fbank``: a Kaldi-style log-mel filterbank, the classic speech-emotion front end. No weights.

What it computes (Kaldi's ``compute-fbank-feats`` defaults, except ``dither`` = 0 so that the
same audio always gives the same features), for 16 kHz audio:

1. The samples are scaled to the 16-bit range (``x * 32768``), as Kaldi reads a wav file.
2. Frames of 400 samples (25 ms) every 160 samples (10 ms, 100 frames/s), only whole frames
   (``snip_edges``): ``n`` samples give ``1 + (n - 400) // 160`` frames, none below 400.
3. Per frame: its mean is removed, then pre-emphasis ``y[i] = x[i] - 0.97 x[i-1]`` (``y[0] =
   x[0] - 0.97 x[0]``), then the Povey window ``(0.5 - 0.5 cos(2 pi i / 399)) ** 0.85``.
4. Zero-padded to 512 samples, the power spectrum ``|FFT|^2`` of bins 0..255 (31.25 Hz apart;
   the Nyquist bin takes no part, as in Kaldi).
5. ``mel`` triangular filters (80 by default) equally spaced on Kaldi's mel scale ``1127 ln(1 +
   f / 700)`` between 20 Hz and 8000 Hz: filter ``b`` rises from ``m_lo + b d`` to its peak at
   ``m_lo + (b + 1) d`` and falls to ``m_lo + (b + 2) d``, ``d = (m_hi - m_lo) / (mel + 1)``; an
   FFT bin's weight is read at its own frequency's mel value.
6. The natural log of each filter's energy, floored at float32's epsilon (1.19e-7).

A frame depends only on its own 400 samples, so the features of the first ``k`` frames do not
change when the audio is cut after them (``--max-audio-seconds`` is exact for this encoder) and a
batch gives exactly what one-at-a-time encoding gives. Computed in float64, returned as float32.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import numpy as np
import torch

from .base import SAMPLE_RATE, AudioEncoder, EncoderError

KIND = "fbank"
VERSION = 1  # bump when the computation changes: it is part of the digest
FRAME_LENGTH, FRAME_SHIFT, FFT_SIZE = 400, 160, 512
PREEMPHASIS, WINDOW_POWER = 0.97, 0.85
LOW_HZ, HIGH_HZ = 20.0, SAMPLE_RATE / 2
INT16_SCALE = 32768.0
LOG_FLOOR = float(np.finfo(np.float32).eps)
DEFAULT_MEL, MAX_MEL = 80, 128


def kaldi_mel(hz):
    """Kaldi's mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_filters(num_mel: int) -> np.ndarray:
    """The ``(num_mel, FFT_SIZE // 2)`` triangular filter weights over FFT bins 0..255."""
    lo, hi = kaldi_mel(LOW_HZ), kaldi_mel(HIGH_HZ)
    step = (hi - lo) / (num_mel + 1)
    left = lo + step * np.arange(num_mel)[:, None]
    centre, right = left + step, left + 2 * step
    mel = kaldi_mel(np.arange(FFT_SIZE // 2) * SAMPLE_RATE / FFT_SIZE)[None, :]
    rising = (mel - left) / (centre - left)
    falling = (right - mel) / (right - centre)
    weights = np.where(mel <= centre, rising, falling)
    return np.where((mel > left) & (mel < right), weights, 0.0)


def num_fbank_frames(num_samples: int) -> int:
    """Whole 25 ms frames every 10 ms: ``1 + (n - 400) // 160``, 0 below 400 samples."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


class FbankEncoder(AudioEncoder):
    """Log-mel filterbank features, ``mel`` dims at 100 frames/s."""

    model_type = KIND
    frame_rate = SAMPLE_RATE / FRAME_SHIFT
    min_samples = FRAME_LENGTH
    num_layers = 0

    def __init__(self, mel: int = DEFAULT_MEL, *, device=None, dtype=None):
        if not 1 <= mel <= MAX_MEL:
            raise EncoderError(f"{KIND}: @mel={mel} is out of range 1..{MAX_MEL}")
        weights = mel_filters(mel)
        if (weights.sum(axis=1) == 0).any():  # cannot happen up to MAX_MEL; Kaldi refuses too
            raise EncoderError(f"{KIND}: @mel={mel} leaves a filter without FFT bins")
        self.mel = mel
        self.dim = mel
        self.layer = "logmel"
        self.name = KIND if mel == DEFAULT_MEL else f"{KIND}@mel={mel}"
        self.spec = self.name
        # Plain arithmetic on the CPU: a GPU would not pay for the transfer. float64 inside.
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self._filters = torch.from_numpy(weights.T.copy())  # (256, mel), float64
        i = torch.arange(FRAME_LENGTH, dtype=torch.float64)
        self._window = (0.5 - 0.5 * torch.cos(2 * math.pi * i / (FRAME_LENGTH - 1))) ** WINDOW_POWER
        settings = {
            "kind": KIND,
            "version": VERSION,
            "mel": mel,
            "frame_length": FRAME_LENGTH,
            "frame_shift": FRAME_SHIFT,
            "fft": FFT_SIZE,
            "preemphasis": PREEMPHASIS,
            "window": f"povey^{WINDOW_POWER}",
            "low_hz": LOW_HZ,
            "high_hz": HIGH_HZ,
            "scale": INT16_SCALE,
            "dither": 0,
        }
        # No weights: the digest names the computation, so that another mel count (or a
        # future change of the computation) never mixes with these features in one cache.
        self.digest = "sha256:" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def num_frames(self, num_samples: int) -> int:
        return num_fbank_frames(num_samples)

    def _one(self, wav: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(wav.astype(np.float64)) * INT16_SCALE
        frames = x.unfold(0, FRAME_LENGTH, FRAME_SHIFT)  # (T, 400), whole frames only
        frames = frames - frames.mean(dim=1, keepdim=True)
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - PREEMPHASIS * previous) * self._window
        spectrum = torch.fft.rfft(frames, n=FFT_SIZE, dim=1)[:, : FFT_SIZE // 2]
        power = spectrum.real**2 + spectrum.imag**2
        energies = power @ self._filters
        return torch.log(energies.clamp_min(LOG_FLOOR)).float()

    def encode(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return [self._one(w) for w in self.checked(wavs)]

    def describe(self):
        return {**super().describe(), "mel": self.mel}


def load_fbank(spec, *, device=None, dtype=None, tiny_root=None) -> FbankEncoder:
    """The loader behind ``fbank[@mel=N]`` (see ``spec.py``)."""
    if spec.layer is not None or spec.revision is not None:
        raise EncoderError(f"{KIND}: takes no @layer or @revision (it has no layers or weights)")
    mel = spec.options.get("mel", str(DEFAULT_MEL))
    try:
        mel = int(mel)
    except ValueError:
        raise EncoderError(f"{KIND}: @mel={mel!r} is not an integer") from None
    return FbankEncoder(mel, device=device, dtype=dtype)


__all__ = ["FbankEncoder", "load_fbank", "mel_filters", "kaldi_mel", "num_fbank_frames"]
