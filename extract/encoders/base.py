"""The encoder interface: frozen models that turn utterances into feature sequences.

An :class:`AudioEncoder` takes 16 kHz mono float32 arrays and returns one ``(frames_i, dim)``
tensor per utterance; a :class:`TextEncoder` takes strings and returns one ``(tokens_i, dim)``
tensor per text. Both return float32 CPU tensors of each item's true length (never padded): the
caller cuts or zero-pads to its fixed length (460 frames, 20 tokens). Each encoder declares what
the cache must record about it (:meth:`Encoder.describe`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...cache import EncoderInfo
from ...common import SAMPLE_RATE, KsrError, default_compute_dtype, resolve_device
from ..audio import AudioError


class EncoderError(KsrError, RuntimeError):
    """An encoder that cannot be built or loaded; the message is one line."""


def placement(device: torch.device | str | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """Where a loaded encoder runs: the asked device and dtype, else the best device; half
    precision only on the best device's own kind (a CPU asked for on a GPU machine gets float32)."""
    device = resolve_device(device)
    return device, dtype or default_compute_dtype(device)


class Encoder(ABC):  # noqa: B024 (a base for the two abstract kinds below)
    """What every encoder declares. Set by subclasses before use."""

    modality: str = ""  # "audio" or "text"
    spec: str = ""  # the spec string that builds this encoder again (see spec.py)
    name: str = ""  # short, human-readable: "tiny-audio", "hf:facebook/wav2vec2-base"
    model_type: str = ""  # e.g. "wav2vec2", "roberta"
    dim: int = 0
    layer: int = 0  # hidden layer taken, 0 = embeddings/input of the first layer, num_layers = last
    num_layers: int = 0
    digest: str = ""  # "sha256:<hex>" over the files that determine the features
    revision: str | None = None  # hub commit, when loaded from the hub
    frame_rate: float | None = None  # audio: nominal frames per second; text: None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of this encoder, for the cache metadata."""
        return {
            "modality": self.modality,
            "spec": self.spec,
            "name": self.name,
            "model_type": self.model_type,
            "dim": self.dim,
            "layer": self.layer,
            "num_layers": self.num_layers,
            "digest": self.digest,
            "revision": self.revision,
            "frame_rate": self.frame_rate,
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def cache_record(self) -> EncoderInfo:
        """What the cache records about this encoder. A local path in the name is reduced to its
        last part: the digest identifies the checkpoint, and a cache stays resumable when the
        checkpoint moves or another machine continues the run."""
        kind, sep, source = self.name.partition(":")
        name = self.name
        if sep and source.startswith(("/", ".", "~")):
            name = f"{kind}:{Path(source).name}"
        return EncoderInfo(
            name=name,
            dim=int(self.dim),
            checkpoint_digest=self.digest or "",
            layer=str(self.layer),
            frame_rate=self.frame_rate,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.spec!r}, dim={self.dim}, layer={self.layer}, "
            f"device={self.device}, dtype={self.dtype})"
        )


class AudioEncoder(Encoder):
    """16 kHz mono float32 arrays -> list of ``(frames_i, dim)`` float32 CPU tensors."""

    modality = "audio"
    sample_rate: int = SAMPLE_RATE
    frame_rate: float = 0.0  # nominal frames per second
    min_samples: int = 1  # shortest input that gives one frame

    @abstractmethod
    def num_frames(self, num_samples: int) -> int:
        """The exact number of frames ``encode`` returns for an input of that many samples."""

    @abstractmethod
    def encode(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Encode a batch; inputs shorter than :attr:`min_samples` raise ``AudioError``."""

    def checked(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The inputs as float32 arrays; ``AudioError`` for one that is not mono or too short."""
        out = [np.asarray(w, dtype=np.float32) for w in wavs]
        for i, w in enumerate(out):
            if w.ndim != 1:
                raise AudioError(f"item {i}: expected mono samples (1-D), got shape {w.shape}")
            if len(w) < self.min_samples:
                raise AudioError(
                    f"item {i}: {len(w)} samples is shorter than the "
                    f"{self.min_samples} that {self.name} needs for one frame"
                )
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sample_rate": self.sample_rate, "min_samples": self.min_samples}


class TextEncoder(Encoder):
    """Strings -> list of ``(tokens_i, dim)`` float32 CPU tensors (special tokens included)."""

    modality = "text"
    frame_rate = None

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Encode a batch of texts."""

    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """The tokens ``encode`` returns one vector for, in order (for inspection and tests)."""
