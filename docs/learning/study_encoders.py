"""A Kaldi-style log-mel filterbank written for this study (no weights), as an ksr AudioEncoder.

80 mel bins, 25 ms frames every 10 ms (100 frames/s), DC removal, pre-emphasis 0.97, Povey
window, 512-point power spectrum, triangular filters on Kaldi's mel scale (1127 ln(1 + f/700))
between 20 Hz and 8 kHz, natural log floored at 1e-10 (float32 epsilon-like floor), no dither,
snip_edges (frames = 1 + (n - 400) // 160). ``pool=k`` averages k consecutive frames (100/k
frames/s) so the model reads shorter sequences.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from ksr.extract.encoders.base import AudioEncoder

SR, WIN, HOP, NFFT = 16000, 400, 160, 512


def mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_matrix(n_mels: int = 80, low: float = 20.0, high: float = 8000.0) -> torch.Tensor:
    """(NFFT//2 + 1, n_mels) triangular filters, equally spaced on the mel scale."""
    bins = np.arange(NFFT // 2 + 1) * SR / NFFT
    m = mel(bins)
    edges = np.linspace(mel(low), mel(high), n_mels + 2)
    out = np.zeros((len(bins), n_mels))
    for j in range(n_mels):
        left, centre, right = edges[j], edges[j + 1], edges[j + 2]
        up = (m - left) / (centre - left)
        down = (right - m) / (right - centre)
        out[:, j] = np.clip(np.minimum(up, down), 0.0, None)
    return torch.tensor(out, dtype=torch.float32)


class Fbank(AudioEncoder):
    model_type = "fbank"
    min_samples = WIN
    layer = 0
    num_layers = 0

    def __init__(self, n_mels: int = 80, pool: int = 1):
        self.dim, self.pool = n_mels, pool
        self.frame_rate = 100.0 / pool
        self.name = self.spec = f"study-fbank{n_mels}" + (f"@pool={pool}" if pool > 1 else "")
        self.mel = mel_matrix(n_mels)
        self.window = torch.hann_window(WIN, periodic=False, dtype=torch.float64).pow(0.85).float()  # Povey
        self.digest = "sha256:" + hashlib.sha256(self.spec.encode()).hexdigest()

    def num_frames(self, num_samples: int) -> int:
        frames = 1 + (num_samples - WIN) // HOP
        return max(1, math.ceil(frames / self.pool)) if num_samples >= WIN else 0

    def one(self, w: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(w.astype(np.float32))
        frames = x.unfold(0, WIN, HOP)  # (F, 400)
        frames = frames - frames.mean(1, keepdim=True)
        frames = torch.cat([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], 1)
        spec = torch.fft.rfft(frames * self.window, n=NFFT).abs().pow(2)
        feats = torch.log((spec @ self.mel).clamp_min(1e-10))
        if self.pool > 1:
            f = feats.shape[0]
            pad = (-f) % self.pool
            if pad:  # average the last, partial group over its own frames
                feats = torch.cat([feats, feats[-1:].expand(pad, -1)], 0)
            feats = feats.view(-1, self.pool, self.dim).mean(1)
        return feats

    def encode(self, wavs):
        return [self.one(w) for w in self.checked(wavs)]
