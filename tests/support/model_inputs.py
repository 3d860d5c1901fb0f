"""Small model configs and padded random inputs for the model tests."""

from __future__ import annotations

import torch

from ksr.fuse import ModelConfig


def small_config(**changes) -> ModelConfig:
    """A model small enough for exact float64 checks in a fraction of a second."""
    base = dict(
        audio_dim=16,
        text_dim=24,
        audio_ffn_dim=12,
        text_ffn_dim=20,
        num_layers=(2, 2, 1),
        num_heads=4,
        num_classes=4,
        max_positions=64,
    )
    base.update(changes)
    return ModelConfig(**base)


def padded_inputs(
    cfg: ModelConfig,
    audio_lengths,
    text_lengths,
    ta: int = 37,
    tt: int = 11,
    seed: int = 0,
    dtype=torch.float32,
    junk_in_padding: bool = False,
):
    """Random features with per-item true lengths; padded positions zero (or junk) as asked."""
    g = torch.Generator().manual_seed(seed)
    b = len(audio_lengths)
    audio = torch.randn(b, ta, cfg.audio_dim, generator=g, dtype=dtype)
    text = torch.randn(b, tt, cfg.text_dim, generator=g, dtype=dtype)
    am = torch.arange(ta)[None, :] >= torch.tensor(audio_lengths)[:, None]
    tm = torch.arange(tt)[None, :] >= torch.tensor(text_lengths)[:, None]
    if not junk_in_padding:
        audio = audio.masked_fill(am[..., None], 0.0)
        text = text.masked_fill(tm[..., None], 0.0)
    return audio, text, am, tm
