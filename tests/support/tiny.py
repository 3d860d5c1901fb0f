"""The tiny KS-Transformer the training tests use (fast on 2 cores), and the synthetic caches it
trains on: one spelling of each, for the command line and for Python."""

from __future__ import annotations

from pathlib import Path

from ksr.cache.synthetic import synthetic_meta, write_synthetic_cache
from ksr.fuse import ModelConfig

#: The tiny model's settings: one layer per stage, 2 heads, FFN 8.
TINY_SETTINGS = {"num_layers": (1, 1, 1), "num_heads": 2, "audio_ffn_dim": 8, "text_ffn_dim": 8}
#: The same settings as ``ksr train`` options.
TINY_MODEL = ["--layers", "1,1,1", "--heads", "2", "--audio-ffn-dim", "8", "--text-ffn-dim", "8"]


def tiny_config(**changes) -> ModelConfig:
    """The tiny model as a config (positional tables of 64 rows; dims from ``changes`` or the
    default model's, which ``model_config_for_cache`` replaces with a cache's)."""
    return ModelConfig(**{**TINY_SETTINGS, "max_positions": 64, **changes})


def tiny_meta(**changes):
    """A small float32 cache description: 8-dim audio (30 frames), 12-dim text (6 tokens)."""
    return synthetic_meta(audio_dim=8, text_dim=12, max_audio_len=30, max_text_len=6, dtype="float32", **changes)


def tiny_cache(
    root: Path,
    n: int,
    seed: int,
    *,
    audio: tuple[int, int, int] = (10, 7, 40),
    text: tuple[int, int] = (2, 7),
    signal: float = 1.0,
    meta=None,
    **kwargs,
) -> Path:
    """A synthetic cache of ``n`` utterances in ``root`` (``tiny_meta()`` unless ``meta``):
    utterance i has ``a + (k * i) % m`` audio frames for ``audio = (a, k, m)`` and ``t + i % m``
    tokens for ``text = (t, m)``; other keywords go to ``write_synthetic_cache``."""
    a, k, m = audio
    t, mt = text
    write_synthetic_cache(
        root,
        n,
        meta or tiny_meta(),
        seed=seed,
        audio_lengths=[a + (k * i) % m for i in range(n)],
        text_lengths=[t + i % mt for i in range(n)],
        signal=signal,
        **kwargs,
    )
    return root


def force_one_class(checkpoint, class_index: int = 1) -> None:
    """Rewrite a trained tiny model's checkpoint so it predicts ``class_index`` for everything
    (the last classifier bias far above the rest): what a collapsed model looks like."""
    import torch

    from ksr.fuse import load_model
    from ksr.fuse.train.checkpoint import load_checkpoint, save_checkpoint

    model = load_model(checkpoint)
    with torch.no_grad():
        bias = torch.zeros_like(model.classifier[-1].bias)
        bias[class_index] = 1e4
        model.classifier[-1].bias.copy_(bias)
    save_checkpoint(checkpoint, model, load_checkpoint(checkpoint)["meta"])
