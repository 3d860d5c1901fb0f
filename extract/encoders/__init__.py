"""Frozen encoders behind one interface, chosen by a spec string (see ``spec.py``).

``load_encoder("tiny-audio")``, ``load_encoder("hf:facebook/wav2vec2-base@layer=6")``,
``load_encoder("paper-text")``. transformers is imported only when an encoder is built.
"""

from .base import AudioEncoder, Encoder, EncoderError, TextEncoder, placement
from .spec import PRESETS, EncoderSpec, available_specs, load_encoder, parse_spec, register_kind

__all__ = [
    "AudioEncoder",
    "Encoder",
    "EncoderError",
    "TextEncoder",
    "placement",
    "PRESETS",
    "EncoderSpec",
    "available_specs",
    "load_encoder",
    "parse_spec",
    "register_kind",
]
