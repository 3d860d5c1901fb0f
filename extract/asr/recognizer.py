"""Speech recognition for machine transcripts (``ksr transcribe``, ``ksr predict --asr``).

An ASR model is named by a spec string::

    hf:<hub id or local folder>[@language=<code>][@revision=<commit>]

a transformers speech-recognition checkpoint: Whisper for now (``hf:openai/whisper-large-v3``,
``hf:/models/whisper-small``), loaded as ``WhisperForConditionalGeneration`` with its
``WhisperProcessor`` (feature extractor + tokenizer) through the same code that loads the ``hf:``
encoders (local folder or hub cache, no download when offline; a checkpoint lacking weights is
refused). ``@language=en`` fixes the language; without it a multilingual Whisper detects it per
30 s window. Decoding is greedy (deterministic), with the checkpoint's generation config
otherwise (its maximum length, its suppressed tokens).

The digest that identifies the model (``checkpoint_digest``) is the encoders' one plus the files
that decide the decoding (``generation_config.json``, added tokens, the text normaliser).

Whisper reads 30 s windows: a longer utterance is cut into consecutive 30 s windows, as the
Whisper encoder of ``extract/encoders/whisper.py`` does, each transcribed alone and the texts
joined with a space (a word cut by a window edge may come out twice or not at all; emotion
corpora rarely have utterances that long).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...common import SAMPLE_RATE, KsrError
from ..encoders.base import EncoderError, placement
from ..encoders.hf import check_local_folder, checkpoint_digest, load_pretrained, quiet_transformers, resolve_model_dir

#: Files besides the encoders' ones that decide what an ASR model writes.
DECODING_FILES = ("generation_config.json", "added_tokens.json", "normalizer.json", "processor_config.json")
#: 30 s windows per generate call (16 x 30 s keeps large-v3 in float16 at a few GiB on a GPU).
MAX_WINDOWS = 16
_OPTION = re.compile(r"@(?P<key>[A-Za-z_]+)=(?P<value>[^@]*)$")
_OPTIONS = ("language", "revision")


class AsrError(KsrError, ValueError):
    """An ASR model that cannot be named or loaded; the message is one line."""


@dataclass(frozen=True)
class AsrSpec:
    source: str
    language: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        options = "".join(f"@{k}={getattr(self, k)}" for k in _OPTIONS if getattr(self, k))
        return f"hf:{self.source}{options}"


def parse_asr_spec(text: str) -> AsrSpec:
    """Parse ``hf:<source>[@language=L][@revision=R]``; raises :class:`AsrError` in one line.
    Options are read from the right, so a folder's path may itself contain ``@``; an option with
    an empty value (``@language=``) is refused."""
    spec, options = text.strip(), {}
    while (m := _OPTION.search(spec)) is not None:
        if m["key"] not in _OPTIONS:
            raise AsrError(f"ASR spec {text!r}: unknown option @{m['key']} (known: @language, @revision)")
        if m["key"] in options:
            raise AsrError(f"ASR spec {text!r}: @{m['key']} given twice")
        value = m["value"].strip()
        if not value:
            example = "@language=en" if m["key"] == "language" else "@revision=<commit>"
            raise AsrError(f"ASR spec {text!r}: @{m['key']} has no value (give one, e.g. {example}, or drop it)")
        options[m["key"]] = value
        spec = spec[: m.start()]
    kind, sep, source = spec.partition(":")
    if kind != "hf" or not sep or not source:
        raise AsrError(f"unknown ASR spec {text!r}: use hf:<hub id or folder of a Whisper checkpoint>")
    return AsrSpec(source, options.get("language"), options.get("revision"))


class WhisperAsr:
    """A transformers Whisper checkpoint that turns 16 kHz mono audio into text."""

    def __init__(
        self,
        spec: str | AsrSpec,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_windows: int = MAX_WINDOWS,
    ):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.spec = parse_asr_spec(spec) if isinstance(spec, str) else spec
        given = self.spec.source
        source = os.path.expanduser(given)
        try:
            check_local_folder(source)
            folder, self.revision = resolve_model_dir(source, self.spec.revision)
            self._check_whisper(source, self.spec.revision)
            model = load_pretrained(source, self.spec.revision, WhisperForConditionalGeneration)
        except EncoderError as e:
            raise AsrError(f"ASR {self.spec}: {e}") from None
        try:
            with quiet_transformers():
                self.processor = WhisperProcessor.from_pretrained(source, revision=self.spec.revision)
        except (OSError, ValueError, KeyError, TypeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise AsrError(
                f"ASR {self.spec}: no usable processor (feature extractor and tokenizer files): {reason}"
            ) from None
        # transformers builds an empty tokenizer, silently, for a folder without tokenizer files:
        # every transcript would come out empty.
        vocab, tokens = int(model.config.vocab_size), len(self.processor.tokenizer)
        if tokens < vocab // 2:
            raise AsrError(
                f"ASR {self.spec}: its tokenizer knows {tokens} tokens for a model that writes {vocab} "
                f"(tokenizer files missing: vocab.json, merges.txt or tokenizer.json?)"
            )
        fe = self.processor.feature_extractor
        if fe.sampling_rate != SAMPLE_RATE:
            raise AsrError(f"ASR {self.spec} expects {fe.sampling_rate} Hz audio; ksr feeds {SAMPLE_RATE} Hz")
        self.device, self.dtype = placement(device, dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.window = int(fe.n_samples)  # 480 000 samples = 30 s
        self.max_windows = max_windows
        self.model_type = model.config.model_type
        self._check_language()
        # Hashed last: from the hub, the processor's files arrive after the weights.
        self.digest = checkpoint_digest(folder, DECODING_FILES)
        self.name = f"hf:{Path(given).name}" if given.startswith(("/", ".", "~")) else f"hf:{given}"

    @staticmethod
    def _check_whisper(source: str, revision: str | None) -> None:
        """Refuse another kind of model before its weights are read."""
        from ..encoders.spec import hf_modality

        if hf_modality(source, revision) != "whisper":
            raise EncoderError("not a Whisper checkpoint (ksr transcribes with Whisper models only, for now)")

    def _check_language(self) -> None:
        """``@language`` must be one the checkpoint knows (a code such as ``en`` or a name)."""
        language = self.spec.language
        if not language:
            return
        known = getattr(self.model.generation_config, "lang_to_id", None) or {}
        if not known:
            raise AsrError(
                f"ASR {self.spec}: this checkpoint names no languages (English-only, or an old generation "
                f"config): drop @language"
            )
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        code = TO_LANGUAGE_CODE.get(language.lower(), language.lower()).strip("<|>")
        if f"<|{code}|>" not in known:
            codes = sorted(k.strip("<|>") for k in known)
            raise AsrError(
                f"ASR {self.spec}: language {language!r} is not one of its {len(codes)}: {', '.join(codes[:12])}, ..."
            )

    def record(self) -> dict[str, Any]:
        """What a transcript's metadata records about the model that wrote it."""
        return {
            "spec": str(self.spec),
            "name": self.name,
            "model_type": self.model_type,
            "checkpoint_digest": self.digest,
            "revision": self.revision,
            "language": self.spec.language,
            "decoding": "greedy",
        }

    def _generate(self, windows: list[np.ndarray]) -> list[str]:
        inputs = self.processor.feature_extractor(
            windows, sampling_rate=SAMPLE_RATE, padding="max_length", return_tensors="pt"
        )
        mel = inputs["input_features"].to(device=self.device, dtype=self.dtype)
        kwargs: dict[str, Any] = {"num_beams": 1, "do_sample": False}
        if self.spec.language:
            kwargs["language"] = self.spec.language
        with quiet_transformers():  # its notes on masks and deprecated arguments, per call
            ids = self.model.generate(mel, **kwargs)
        return [" ".join(t.split()) for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    @torch.inference_mode()
    def transcribe(self, wavs: Sequence[np.ndarray]) -> list[str]:
        """One transcript per utterance (16 kHz mono float32), whitespace-normalised; an
        utterance with no words gives ``""``."""
        windows = [(i, wav[s : s + self.window]) for i, wav in enumerate(wavs) for s in range(0, len(wav), self.window)]
        parts: list[list[str]] = [[] for _ in wavs]
        for start in range(0, len(windows), self.max_windows):
            chunk = windows[start : start + self.max_windows]
            try:
                texts = self._generate([w for _, w in chunk])
            except ValueError as e:  # the generation config refuses the settings (a language, ...)
                raise AsrError(f"ASR {self.spec}: {' '.join(str(e).split())[:300]}") from None
            for (i, _), text in zip(chunk, texts, strict=True):
                if text:
                    parts[i].append(text)
        return [" ".join(p) for p in parts]


def load_asr(spec: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> WhisperAsr:
    """The ASR model a spec names (see the module's docstring)."""
    return WhisperAsr(spec, device=device, dtype=dtype)
