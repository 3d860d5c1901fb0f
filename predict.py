"""Predict the emotion of one utterance with a trained checkpoint (``ksr predict``).

The checkpoint's features must be rebuilt exactly as extraction made them: the same encoders
(named and fingerprinted in the cache metadata that training records in every checkpoint, or
in ``RUN/run.json`` for older ones), the same cut and zero-padding to the cache's max lengths,
and the same round trip through the cache's storage dtype. Then the model sees what it would
have seen had the utterance been in its training cache.

This module joins the stages (it imports ``ksr.extract``'s encoders and ``ksr.fuse``'s model),
so it lives at the top of the package, beside ``cli/``. The cut, padding, rounding and masks
are ``ksr.cache``'s own (``stored_row``, ``padding_mask``), the same functions the cache writer
and reader use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import CacheMeta, EncoderInfo, padding_mask, row_problem, stored_row
from .common import DeviceError, KsrError, resolve_device
from .extract.audio import MAX_DURATION_S, AudioError, cut_audio, read_audio
from .extract.encoders import AudioEncoder, EncoderError, TextEncoder, load_encoder, parse_spec, placement
from .fuse.model.config import cache_dims
from .fuse.model.model import KSTransformer
from .fuse.model.normalise import normalise_rows, predict_note, utterance_statistics
from .fuse.model.tasks import attributes_by_name, learns_classes
from .fuse.train.checkpoint import CheckpointError, load_model_and_meta
from .fuse.train.runs import RunError, recorded_cache_meta


class PredictError(KsrError, ValueError):
    """Prediction cannot go on as asked; the message is one line and says what to do."""


@dataclass
class ModelInputs:
    """One utterance as the model takes it (batch of one), plus the true lengths."""

    audio: torch.Tensor | None  # (1, max_audio_len, Da) float32, or None for a text-only model
    text: torch.Tensor | None  # (1, max_text_len, Dt) float32, or None for an audio-only model
    audio_padding_mask: torch.Tensor | None  # (1, max_audio_len) bool, True = padded
    text_padding_mask: torch.Tensor | None
    audio_len: int = 0  # valid frames after cutting
    text_len: int = 0
    tokens: list[str] = field(default_factory=list)  # the kept tokens (text_len of them)


@dataclass
class AttentionMaps:
    """Key-sparse cross attention of the last CCAB, padded positions left out, per head.

    ``text_to_audio[h, i, j]``: how much word ``i`` attends to frame ``j`` in head ``h``
    (keys = frames, so key sparsity drops frames); ``audio_to_text[h, j, i]``: frame ``j`` to
    word ``i`` (key sparsity drops words).
    """

    text_to_audio: np.ndarray  # (H, text_len, audio_len)
    audio_to_text: np.ndarray  # (H, audio_len, text_len)
    tokens: list[str]
    frame_times: np.ndarray  # (audio_len,) start of each frame, in seconds
    layer: str  # which modules the maps come from


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]  # class name -> probability, in the checkpoint's class order
    logits: np.ndarray  # (num_classes,)
    classes: tuple[str, ...]
    checkpoint: str
    encoders: dict[str, str]  # modality -> the spec that was loaded
    inputs: ModelInputs
    attention: AttentionMaps | None = None
    transcript: str | None = None  # the text the model read (given, or heard by the ASR)
    asr: dict[str, Any] | None = None  # the ASR model that wrote it (``WhisperAsr.record()``)
    normalisation: str | None = None  # a speaker-normalised model: where the statistics came from
    #: A model that learns attributes: {name: predicted value} (e.g. activation, valence, dominance)
    attributes: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probabilities": self.probabilities,
            "logits": self.logits.tolist(),
            "classes": list(self.classes),
            "checkpoint": self.checkpoint,
            "encoders": self.encoders,
            "audio_frames": self.inputs.audio_len,
            "text_tokens": self.inputs.tokens,
            "transcript": self.transcript,
            "asr": self.asr,
            "audio_normalisation": self.normalisation,
            **({"attributes": self.attributes} if self.attributes is not None else {}),
        }


# --- the checkpoint and what made its features -------------------------------------------------


def checkpoint_cache_meta(path: str | os.PathLike, meta: dict[str, Any]) -> CacheMeta:
    """The training cache's metadata (``fuse.train.runs.recorded_cache_meta``), as predict's error."""
    try:
        return recorded_cache_meta(path, meta)
    except RunError as e:
        raise PredictError(str(e)) from None


def load_checkpoint_model(path: str | os.PathLike, device: torch.device) -> tuple[KSTransformer, CacheMeta]:
    """The model in eval mode on ``device`` and the cache metadata it was trained with."""
    try:
        model, meta = load_model_and_meta(path, device)
    except CheckpointError as e:
        raise PredictError(str(e)) from None
    cache_meta = checkpoint_cache_meta(path, meta)
    differs = [
        f"{k} {getattr(model.cfg, k)} != {v}" for k, v in cache_dims(cache_meta).items() if getattr(model.cfg, k) != v
    ]
    if differs:
        raise PredictError(f"{path}: the model does not fit its recorded cache metadata ({', '.join(differs)})")
    return model, cache_meta


def recorded_spec(info: EncoderInfo) -> str:
    """The spec that loads the encoder a cache records: its name, at the recorded layer."""
    layer = info.layer.lstrip("-")
    return f"{info.name}@layer={info.layer}" if layer.isdigit() else info.name


def with_recorded_layer(spec: str, info: EncoderInfo) -> str:
    """A user's spec without ``@layer`` takes the recorded layer (the same weights, another
    layer would give other features)."""
    try:
        given = parse_spec(spec).layer
    except EncoderError as e:
        raise PredictError(str(e)) from None
    if given is None and info.layer.lstrip("-").isdigit():
        return f"{spec}@layer={info.layer}"
    return spec


def load_matching_encoder(
    modality: str,
    info: EncoderInfo,
    override: str | None,
    device: torch.device,
    force: bool,
    tiny_root: str | os.PathLike | None,
):
    """The encoder that made the cache's ``modality`` features, checked by its fingerprint."""
    option = f"--{modality}-encoder"
    spec = with_recorded_layer(override, info) if override else recorded_spec(info)
    _, dtype = placement(device, None)
    try:
        encoder = load_encoder(spec, modality=modality, device=device, dtype=dtype, tiny_root=tiny_root)
    except EncoderError as e:
        if override:
            raise PredictError(f"{option} {override}: {e}") from None
        raise PredictError(
            f"cannot load the {modality} encoder the checkpoint records ({spec}): {e}; pass "
            f"{option} SPEC (a local folder is recorded by its last path part only)"
        ) from None
    got = encoder.cache_record()
    if got.dim != info.dim:
        raise PredictError(
            f"{modality} encoder {spec} gives {got.dim}-dim features; the checkpoint was "
            f"trained on {info.dim}-dim features from {info.name}"
        )
    if (
        not force
        and info.checkpoint_digest
        and (got.checkpoint_digest, got.layer) != (info.checkpoint_digest, info.layer)
    ):
        raise PredictError(
            f"{modality} encoder {spec} (weights {got.checkpoint_digest or '?'}, layer {got.layer}) "
            f"is not the one the checkpoint was trained with ({info.name}, weights "
            f"{info.checkpoint_digest}, layer {info.layer}); pass that encoder with {option}, "
            f"or --force to predict anyway"
        )
    return encoder, spec


# --- features as the cache stores them ----------------------------------------------------------


def audio_inputs(
    encoder: AudioEncoder, audio_path: str | os.PathLike, meta: CacheMeta, max_duration: float = MAX_DURATION_S
) -> tuple[torch.Tensor, int]:
    try:
        wav = read_audio(audio_path, sample_rate=meta.sample_rate, max_duration=max_duration)
        wav = cut_audio(wav, meta.max_audio_seconds, meta.sample_rate)
    except AudioError as e:
        raise PredictError(f"--audio: {e}") from None
    if len(wav) < encoder.min_samples:
        raise PredictError(
            f"{audio_path}: too short: {len(wav)} samples at {meta.sample_rate} Hz; "
            f"{encoder.name} needs {encoder.min_samples} for one frame"
        )
    feats = encoder.encode([wav])[0]
    problem = row_problem(feats, meta.max_audio_len, "audio", meta.dtype)
    if problem:
        raise PredictError(f"{audio_path}: {problem}")
    return stored_row(feats, meta.max_audio_len, meta.dtype)


def text_inputs(encoder: TextEncoder, text: str, meta: CacheMeta) -> tuple[torch.Tensor, int, list[str]]:
    if not text.strip():
        raise PredictError("--text is empty; give the utterance's transcript")
    bad = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:  # bytes the shell passed that are not UTF-8 arrive as lone surrogates
        raise PredictError(
            f"--text is not valid UTF-8 (character {bad + 1} is the byte {ord(text[bad]) & 0xFF:#04x}); "
            f"give the transcript in UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        )
    feats = encoder.encode([text])[0]
    problem = row_problem(feats, meta.max_text_len, "text", meta.dtype)
    if problem:
        raise PredictError(f"--text: {problem}")
    row, n = stored_row(feats, meta.max_text_len, meta.dtype)
    return row, n, encoder.tokenize(text)[:n]


def transcribe_audio(
    spec: str, audio_path: str | os.PathLike, device: torch.device, max_duration: float = MAX_DURATION_S
) -> tuple[str, dict[str, Any]]:
    """The transcript the ASR model ``spec`` hears in the file (all of it, read as extraction
    reads it), and the model's record."""
    from .extract.asr.recognizer import AsrError, load_asr

    try:
        wav = read_audio(audio_path, max_duration=max_duration)
    except AudioError as e:
        raise PredictError(f"--audio: {e}") from None
    try:
        asr = load_asr(spec, device=device)
        text = asr.transcribe([wav])[0]
    except (AsrError, EncoderError) as e:
        raise PredictError(f"--asr: {e}") from None
    if not text:
        raise PredictError(f"--asr: {asr.spec} heard no words in {audio_path}; give the transcript with --text")
    return text, asr.record()


# --- attention ----------------------------------------------------------------------------------


def check_has_cross_attention(model: KSTransformer) -> None:
    if model.cfg.architecture != "ks-transformer":
        raise PredictError(f"--attention: this {model.cfg.architecture} baseline has no cross-modal attention to draw")
    if model.cfg.modalities != "both":
        raise PredictError(f"--attention: this {model.cfg.modalities}-only model has no cross-modal attention to draw")
    if not model.cfg.num_layers[1]:
        raise PredictError(
            "--attention: this model has no CCAB (0 interaction layers), so no cross-modal attention to draw"
        )


# --- the whole prediction -----------------------------------------------------------------------


def pick_device(name: str | torch.device = "auto") -> torch.device:
    try:
        return resolve_device(name)
    except DeviceError as e:
        raise PredictError(str(e)) from None


def predict_one(
    checkpoint: str | os.PathLike,
    audio_path: str | os.PathLike | None = None,
    text: str | None = None,
    *,
    audio_encoder: str | None = None,
    text_encoder: str | None = None,
    device: str | torch.device = "auto",
    attention: bool = False,
    force: bool = False,
    tiny_root: str | os.PathLike | None = None,
    max_duration: float = MAX_DURATION_S,
    asr: str | None = None,
) -> Prediction:
    """Label and class probabilities of one utterance (``audio_path`` and its transcript ``text``).

    Encoders are the ones the checkpoint records, unless ``audio_encoder``/``text_encoder``
    (spec strings) override them; a loaded encoder whose fingerprint (checkpoint digest and
    layer) differs from the recorded one is refused unless ``force``. ``attention``: also
    return the last CCAB's cross attention maps (see :class:`AttentionMaps`). ``max_duration``:
    the audio file's longest decodable length in seconds, by its header, as in extraction.
    ``asr``: an ASR spec (``ksr.extract.asr.recognizer``) that transcribes the audio when a model that
    reads text is given no ``text``.
    Raises :class:`PredictError` with a one-line message.
    """
    dev = pick_device(device)
    model, meta = load_checkpoint_model(checkpoint, dev)
    transcribe = check_request(model, checkpoint, audio_path, text, asr, attention)
    asr_record = None
    if transcribe:
        text, asr_record = transcribe_audio(asr, audio_path, dev, max_duration)
    loading = EncoderChoice(audio_encoder, text_encoder, dev, force, tiny_root)
    inputs, specs, frame_rate = model_inputs(model, meta, loading, audio_path, text, max_duration)
    normalisation = None
    if model.cfg.speaker_norm != "none" and inputs.audio is not None:
        mean, std = utterance_statistics(inputs.audio[0], inputs.audio_len)
        inputs.audio = normalise_rows(inputs.audio, inputs.audio_padding_mask, mean[None], std[None])
        normalisation = predict_note(model.cfg.speaker_norm)
    with torch.no_grad():
        args = [
            t.to(dev) if t is not None else None
            for t in (inputs.audio, inputs.text, inputs.audio_padding_mask, inputs.text_padding_mask)
        ]
        output, maps = model(*args, return_attention=True) if attention else (model(*args), None)
        output = output[0].float().cpu()
    logits = output[: model.cfg.num_classes]  # a model of task attributes: an untrained classifier's
    probs = logits.softmax(-1).numpy().astype(np.float64)
    classes = tuple(meta.classes)
    attributes = {k: float(v) for k, v in attributes_by_name(output, model.cfg).items()}
    result = Prediction(
        label=classes[int(np.argmax(probs))] if learns_classes(model.cfg) else "",
        probabilities={c: float(p) for c, p in zip(classes, probs, strict=True)},
        logits=logits.numpy(),
        classes=classes,
        checkpoint=str(checkpoint),
        encoders=specs,
        inputs=inputs,
        transcript=text if model.cfg.modalities != "audio" else None,
        asr=asr_record,
        normalisation=normalisation,
        attributes=attributes or None,
    )
    if attention:
        la, lt = inputs.audio_len, inputs.text_len
        result.attention = AttentionMaps(
            text_to_audio=maps["text_to_audio"][-1][0, :, :lt, :la].float().cpu().numpy(),
            audio_to_text=maps["audio_to_text"][-1][0, :, :la, :lt].float().cpu().numpy(),
            tokens=inputs.tokens,
            frame_times=np.arange(la) / float(frame_rate),
            layer=f"CCAB {model.cfg.num_layers[1]} cross layer",
        )
    return result


def check_request(
    model: KSTransformer, checkpoint, audio_path, text: str | None, asr: str | None, attention: bool
) -> bool:
    """Refuse, before any encoder loads, what the model cannot be given; whether the audio must be
    transcribed (a model that reads text, given no text but an ASR model)."""
    modalities = model.cfg.modalities
    uses_audio, uses_text = modalities in ("both", "audio"), modalities in ("both", "text")
    kind = {"both": "fused (audio + text)", "audio": "audio-only", "text": "text-only"}[modalities]
    if uses_audio and audio_path is None:
        raise PredictError(f"{checkpoint}: this {kind} model needs the utterance's audio (--audio)")
    transcribe = uses_text and text is None
    if transcribe and asr is None:
        raise PredictError(
            f"{checkpoint}: this {kind} model needs the utterance's transcript: give it with --text, "
            f"or name an ASR model with --asr to transcribe the audio"
        )
    if transcribe and audio_path is None:
        raise PredictError("--asr transcribes the utterance's audio: give it with --audio (or give --text)")
    if (uses_audio or transcribe) and not Path(audio_path).is_file():  # before the (slow) models load
        raise PredictError(f"--audio: audio file not found: {audio_path}")
    if attention:
        check_has_cross_attention(model)
    return transcribe


@dataclass(frozen=True)
class EncoderChoice:
    """Which encoders make the features: the recorded ones unless a spec overrides them."""

    audio: str | None
    text: str | None
    device: torch.device
    force: bool
    tiny_root: str | os.PathLike | None


def model_inputs(
    model: KSTransformer, meta: CacheMeta, choice: EncoderChoice, audio_path, text: str | None, max_duration: float
) -> tuple[ModelInputs, dict[str, str], float | None]:
    """The model's inputs as the training cache stored them, the encoder specs used, and the
    audio frame rate (None for a text-only model)."""
    modalities = model.cfg.modalities
    specs: dict[str, str] = {}
    inputs = ModelInputs(None, None, None, None)
    frame_rate = None
    dev, force, tiny = choice.device, choice.force, choice.tiny_root
    if modalities in ("both", "audio"):
        enc, specs["audio"] = load_matching_encoder("audio", meta.audio_encoder, choice.audio, dev, force, tiny)
        row, inputs.audio_len = audio_inputs(enc, audio_path, meta, max_duration)
        inputs.audio = row[None]
        inputs.audio_padding_mask = padding_mask(torch.tensor([inputs.audio_len]), meta.max_audio_len)
        frame_rate = meta.audio_encoder.frame_rate or enc.frame_rate
        del enc
    if modalities in ("both", "text"):
        enc, specs["text"] = load_matching_encoder("text", meta.text_encoder, choice.text, dev, force, tiny)
        row, inputs.text_len, inputs.tokens = text_inputs(enc, text, meta)
        inputs.text = row[None]
        inputs.text_padding_mask = padding_mask(torch.tensor([inputs.text_len]), meta.max_text_len)
        del enc
    return inputs, specs, frame_rate


def readable_token(token: str) -> str:
    """A BPE token for a plot label: the byte-level space marker shown as a plain space."""
    return token.replace("\u0120", " ").replace("\u2581", " ").strip() or "\u2423"  # a lone space marker: ␣


def draw_attention(prediction: Prediction, path: str | os.PathLike) -> Path:
    """The PNG of ``prediction.attention`` (averaged over heads): words by audio frames, words
    attending to frames on top, frames attending to words (transposed) below."""
    from .fuse.report.plots import attention_figure

    maps = prediction.attention
    if maps is None:
        raise PredictError("no attention maps: call predict_one(..., attention=True)")
    top = maps.text_to_audio.mean(axis=0)
    bottom = maps.audio_to_text.mean(axis=0).T
    panels = {
        "text -> audio: each word (query) over the audio frames (keys); key sparsity drops frames": top,
        "audio -> text, transposed: each frame (query) over the words (keys); key sparsity drops words": bottom,
    }
    title = (
        f"key-sparse cross attention, {maps.layer} (last interaction layer), mean over heads; "
        f"predicted {prediction.label} ({100 * prediction.probabilities[prediction.label]:.0f}%)"
    )
    return attention_figure(panels, [readable_token(t) for t in maps.tokens], maps.frame_times, title, Path(path))
