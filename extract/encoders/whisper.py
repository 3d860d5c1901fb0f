"""Whisper's encoder as an audio encoder: ``hf:openai/whisper-large-v3``, ``hf:/models/whisper``.

Whisper's encoder reads a fixed 30 s window: the feature extractor turns the audio, zero-padded
to 480 000 samples, into a log-mel spectrogram of 3000 frames (80 mel bins; 128 for large-v3),
two convolutions (the second with stride 2) make 1500 positions, 50 per second, one every 320
samples. The encoder takes no attention mask: padding is silence it has seen in training.

What ksr returns for ``n`` samples:

- **Frames the audio covers.** Frame ``j`` stands for samples ``[320 j, 320 (j + 1))``; the frames
  wholly in the padding are cut away, leaving ``ceil(n / 320)`` frames (frame_rate 50).
- **Audio longer than 30 s** is encoded in consecutive 30 s windows (samples ``[480000 k,
  480000 (k + 1))``, the last one padded as above) whose frames are joined, so ``ceil(n / 320)``
  holds for every length. Windows rather than a cut because the encoder contract is "features of
  the whole utterance" for every kind (the cache's own cut to 460 frames, 9.2 s at 50 frames/s,
  happens after, in one place, for every encoder), a window is exactly how Whisper itself reads
  long audio, and nothing is lost silently. The extra windows cost time only for audio over
  30 s; ``ksr extract --max-audio-seconds 30`` bounds that cost for every encoder alike.
- **Layers** as for the other ``hf:`` models: ``0`` is the input of the first Transformer layer
  (convolutions plus positions), ``num_layers`` the last layer's output including the encoder's
  final layer norm (``last_hidden_state``).

Only the encoder is kept (the decoder is dropped after loading). Every window is padded to the
same 30 s, so batches are exact: a batch gives what one-at-a-time encoding gives, to float
rounding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from .base import SAMPLE_RATE, AudioEncoder, EncoderError
from .hf import HFEncoderMixin, quiet_transformers

#: Windows per forward pass: 16 x 30 s keeps large-v3 in float16 at a few GiB on a GPU.
MAX_WINDOWS = 16


class WhisperAudioEncoder(HFEncoderMixin, AudioEncoder):
    """The encoder of a transformers Whisper checkpoint (hub id or ``save_pretrained`` folder)."""

    min_samples = 1

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        layer: int = -1,
        revision: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_windows: int = MAX_WINDOWS,
    ):
        from transformers import AutoFeatureExtractor

        source = self._setup(source, layer, revision, device, dtype)
        config = self.model.config
        try:
            with quiet_transformers():
                fe = AutoFeatureExtractor.from_pretrained(source, revision=revision)
        except (OSError, ValueError, KeyError) as err:
            reason = " ".join(str(err).split())[:200]
            raise EncoderError(
                f"{source!r} has no usable feature extractor (preprocessor_config.json): {reason}"
            ) from None
        needed = ("n_samples", "hop_length", "nb_max_frames", "feature_size")
        if not all(hasattr(fe, k) for k in needed):
            raise EncoderError(f"{source!r}: its feature extractor ({type(fe).__name__}) is not Whisper's")
        if fe.sampling_rate != SAMPLE_RATE:
            raise EncoderError(f"{source!r} expects {fe.sampling_rate} Hz audio; ksr feeds {SAMPLE_RATE} Hz")
        strides = self.model.conv1.stride[0] * self.model.conv2.stride[0]
        if fe.nb_max_frames != config.max_source_positions * strides or fe.feature_size != config.num_mel_bins:
            raise EncoderError(
                f"{source!r}: the feature extractor makes {fe.feature_size} x "
                f"{fe.nb_max_frames} log-mel frames, the encoder takes {config.num_mel_bins} x "
                f"{config.max_source_positions * strides}"
            )
        self.feature_extractor = fe
        self.window = int(fe.n_samples)  # 480 000 samples = 30 s
        self.hop = int(fe.hop_length) * strides  # 320 samples per encoder frame
        self.positions = int(config.max_source_positions)  # 1500 frames per window
        self.frame_rate = SAMPLE_RATE / self.hop
        self.max_windows = max_windows
        self._hash_checkpoint()

    def _keep(self, model):
        if getattr(model.config, "model_type", None) != "whisper" or not hasattr(model, "get_encoder"):
            raise EncoderError(f"{type(model).__name__} is not a Whisper model")
        return model.get_encoder()

    def _window_frames(self, num_samples: int) -> int:
        return min(math.ceil(num_samples / self.hop), self.positions)

    def num_frames(self, num_samples: int) -> int:
        full, rest = divmod(max(num_samples, 0), self.window)
        return full * self._window_frames(self.window) + self._window_frames(rest)

    def _windows(self, wav: np.ndarray) -> list[np.ndarray]:
        return [wav[i : i + self.window] for i in range(0, len(wav), self.window)]

    def _forward(self, windows: list[np.ndarray]) -> torch.Tensor:
        inputs = self.feature_extractor(windows, sampling_rate=SAMPLE_RATE, padding="max_length", return_tensors="pt")
        mel = inputs["input_features"].to(device=self.device, dtype=self.dtype)
        out = self.model(mel, output_hidden_states=True)
        return out.hidden_states[self.layer]

    @torch.inference_mode()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        wavs = self.checked(wavs)
        windows = [(i, w) for i, wav in enumerate(wavs) for w in self._windows(wav)]
        parts: list[list[torch.Tensor]] = [[] for _ in wavs]
        for start in range(0, len(windows), self.max_windows):
            chunk = windows[start : start + self.max_windows]
            hidden = self._forward([w for _, w in chunk])
            for (i, w), h in zip(chunk, hidden, strict=True):
                parts[i].append(h[: self._window_frames(len(w))].float().cpu())
        rows = [torch.cat(p) for p in parts]
        for wav, r in zip(wavs, rows, strict=True):
            if r.shape[0] != self.num_frames(len(wav)):  # cannot happen: a guard on the above
                raise EncoderError(
                    f"{self.name} gave {r.shape[0]} frames for {len(wav)} "
                    f"samples where {self.num_frames(len(wav))} are due"
                )
        return rows


__all__ = ["WhisperAudioEncoder", "MAX_WINDOWS"]
