"""The tiny KS-Transformer the training tests use (fast on 2 cores): its command-line settings and
the dims and lengths of the synthetic caches it trains on."""

from ksr.cache.synthetic import synthetic_meta

TINY_MODEL = ["--layers", "1,1,1", "--heads", "2", "--audio-ffn-dim", "8", "--text-ffn-dim", "8"]


def tiny_meta(**changes):
    """A small float32 cache description: 8-dim audio (30 frames), 12-dim text (6 tokens)."""
    return synthetic_meta(audio_dim=8, text_dim=12, max_audio_len=30, max_text_len=6, dtype="float32", **changes)
