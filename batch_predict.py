"""Predict many utterances at once (``ksr predict --manifest M.csv`` or ``--folder DIR``), with
one checkpoint or the ensemble of a run's selected checkpoints, into one CSV (or the MSP-Podcast
challenge's files, :mod:`ksr.submission`).

The features go through the extraction pipeline (``ksr.extract.pipeline``) exactly as a cache is
made: the encoders the checkpoints record (checked by their weights' digest, as ``ksr predict``
checks them), batches of similar length, audio read ahead, the duration guard, one line per
utterance that cannot be used while the others go on. They are written into a work folder beside
the output, ``OUT.work/`` (the input manifest as ksr reads it, the machine transcripts of
``--asr``, the feature cache), so a killed run continues where it stopped when it is run again:
extraction skips what is stored and encodes every utterance in the batch an uninterrupted run
would have, so the CSV is the same. The work folder is removed once the output is written
(``--keep-features`` keeps it); a work folder made for other inputs or other encoders is made
again.

Every member model then reads the features (``ksr.fuse.train.inference.model_outputs``), and the
ensemble's answer is the mean of the members' class probabilities (and of their attributes,
when the models predict them); the predicted class is the most probable one. The CSV has one
row per predicted utterance, in input order: ``id``, ``label``, ``p_<class>`` for every class,
then the attributes' columns when there are any. Beside it, ``OUT.models.json`` names the models
that voted (and the encoders, inputs and failures), and ``OUT.errors.tsv`` the utterances that
could not be predicted (``id, stage, reason``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .cache import CacheMeta, EncoderInfo, open_cache
from .common import atomic_write, write_json
from .extract.asr.transcribe import side_files, transcribe_manifest
from .extract.audio import MAX_DURATION_S
from .extract.corpora.manifest import Utterance, read_manifest, write_manifest
from .extract.encoders import AudioEncoder, TextEncoder
from .extract.media import CONTAINER_SUFFIXES
from .extract.pipeline import extract_corpus
from .extract.summary import one_line, read_errors
from .fuse.model.model import KSTransformer
from .fuse.model.normalise import SpeakerNormalisedCache, predict_note
from .fuse.model.tasks import learns_classes
from .fuse.train.inference import Outputs, ensemble_outputs, model_outputs
from .fuse.train.runs import RunError, selected_checkpoints
from .predict import PredictError, load_checkpoint_model, load_matching_encoder, pick_device

#: The one "class" of a prediction cache: its utterances have no labels.
UNLABELLED = "unlabelled"
#: Files ``--folder`` takes (by their ending, case-insensitive): soundfile's and PyAV's.
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"}) | CONTAINER_SUFFIXES
#: The cache metadata every member of an ensemble must share: they read one feature cache.
FEATURE_KEYS = (
    "audio_encoder",
    "text_encoder",
    "classes",
    "sample_rate",
    "max_audio_len",
    "max_text_len",
    "dtype",
    "max_audio_seconds",
)
ASR_COLUMN = "asr_text"
#: Sessions from here up are made up, one per utterance without a session of its own.
OWN_GROUP = 10**9


# --- the models ---------------------------------------------------------------------------------


@dataclass
class Member:
    """One model of an ensemble: its name (``seed123/fold5``, or the checkpoint's path)."""

    name: str
    path: Path
    model: KSTransformer


@dataclass
class Ensemble:
    members: list[Member]
    meta: CacheMeta  # the training cache's metadata they share
    source: str  # how the user named them: "--run RUN" or "--checkpoint PATH"

    def learns_classes(self) -> bool:
        """Whether the models' class outputs mean anything (not under ``--task attributes``)."""
        return learns_classes(self.members[0].model.cfg)

    def uses(self, modality: str) -> bool:
        return any(m.model.cfg.modalities in ("both", modality) for m in self.members)


def load_ensemble(checkpoint: str | os.PathLike | None, run: str | os.PathLike | None, device) -> Ensemble:
    """One ``checkpoint``, or every selected checkpoint of ``run`` (all seeds and folds)."""
    if (checkpoint is None) == (run is None):
        raise PredictError("name the model(s): --checkpoint PATH (one model) or --run RUN (all its folds and seeds)")
    if run is not None:
        try:
            named = [(p.parent.relative_to(run).as_posix(), p) for _, _, p in selected_checkpoints(Path(run))]
        except RunError as e:
            raise PredictError(str(e)) from None
        source = f"--run {run}"
    else:
        named, source = [(str(checkpoint), Path(checkpoint))], f"--checkpoint {checkpoint}"
    members, first = [], None
    for name, path in named:
        if not path.is_file():
            raise PredictError(f"{path}: checkpoint not found")
        model, meta = load_checkpoint_model(path, device)
        if first is None:
            first = meta
        differ = [k for k in FEATURE_KEYS if getattr(meta, k) != getattr(first, k)]
        if members and (model.cfg.task, model.cfg.attributes) != (
            members[0].model.cfg.task,
            members[0].model.cfg.attributes,
        ):
            differ.append("task")
        if differ:
            raise PredictError(
                f"{path}: differs from {named[0][1]} ({', '.join(differ)}); the models of an ensemble must "
                f"read the same features and learn the same task"
            )
        members.append(Member(name, path, model))
    return Ensemble(members, first, source)


class UnusedAudio(AudioEncoder):
    """Stands in for the audio encoder of text-only models: one zero frame, nothing loaded."""

    name = spec = "unused"
    frame_rate = 1.0

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def num_frames(self, num_samples: int) -> int:
        return 1

    def encode(self, wavs) -> list[torch.Tensor]:
        return [torch.zeros(1, self.dim) for _ in wavs]


class UnusedText(TextEncoder):
    """Stands in for the text encoder of audio-only models: one zero token, nothing loaded."""

    name = spec = "unused"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, texts) -> list[torch.Tensor]:
        return [torch.zeros(1, self.dim) for _ in texts]

    def tokenize(self, text: str) -> list[str]:
        return []


# --- the inputs ---------------------------------------------------------------------------------


def _seconds(value: str, column: str, where: str) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise PredictError(f"{where}: {column} {value!r} is not a number of seconds") from None


def manifest_rows(path: str | os.PathLike, text_column: str | None) -> list[Utterance]:
    """The utterances of a prediction manifest: a CSV with columns ``id`` and ``audio`` (relative
    to the CSV's folder, or absolute), optionally ``start``/``end`` (seconds) and the transcript
    column ``text_column``; other columns (a ksr manifest's labels, speakers, ...) are ignored."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"--manifest: file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("id", "audio") if c not in header]
        if missing:
            raise PredictError(
                f"{path}: missing column(s) {', '.join(missing)} (a prediction manifest needs id, audio)"
            )
        if text_column is not None and text_column not in header:
            raise PredictError(
                f"{path}: no column {text_column!r} to take the transcripts from; name it with --text-column, "
                f"or transcribe the audio with --asr SPEC"
            )
        reader.fieldnames = header
        rows = []
        for n, raw in enumerate(reader, start=2):
            values = {k: (v or "").strip() for k, v in raw.items() if k is not None}
            audio = Path(values["audio"])
            session = values.get("session", "")
            rows.append(
                Utterance(
                    id=values["id"],
                    audio=audio if audio.is_absolute() else path.resolve().parent / audio,
                    text=values.get(text_column or "", ""),
                    label=UNLABELLED,
                    # A speaker-normalised model groups by these: without them each utterance
                    # is its own group, as ksr predict treats one utterance.
                    speaker=values.get("speaker") or f"utterance {n - 1}",
                    session=int(session) if session.isascii() and session.isdigit() else OWN_GROUP + n,
                    gender="U",
                    start=_seconds(values.get("start", ""), "start", f"{path} line {n}"),
                    end=_seconds(values.get("end", ""), "end", f"{path} line {n}"),
                )
            )
    if not rows:
        raise PredictError(f"{path} has a header but no rows")
    return rows


def folder_rows(folder: str | os.PathLike) -> list[Utterance]:
    """Every audio file under ``folder`` (sorted; hidden files left out), its id the path
    relative to the folder."""
    root = Path(folder)
    if not root.is_dir():
        raise PredictError(f"--folder: not a folder: {root}")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise PredictError(f"--folder: no audio file ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    return [  # each file its own speaker and session: a speaker-normalised model uses its own statistics
        Utterance(p.relative_to(root).as_posix(), p.resolve(), "", UNLABELLED, f"file {i}", OWN_GROUP + i, "U")
        for i, p in enumerate(files)
    ]


# --- the request --------------------------------------------------------------------------------


@dataclass
class BatchRequest:
    """What ``ksr predict`` in batch mode was asked (see :func:`predict_batch`)."""

    out: Path
    manifest: Path | None = None
    folder: Path | None = None
    checkpoint: Path | None = None
    run: Path | None = None
    text_column: str = "text"
    asr: str | None = None
    audio_encoder: str | None = None
    text_encoder: str | None = None
    device: str = "auto"
    force: bool = False  # overwrite the output; use encoders whose weights differ (with a warning)
    format: str = "csv"
    max_duration: float | None = MAX_DURATION_S
    keep_features: bool = False
    batch_seconds: float | None = None
    tiny_root: str | os.PathLike | None = None
    progress: bool = True
    on_batch: Callable[[int], None] | None = None  # extraction's hook (tests interrupt a run with it)


@dataclass
class BatchResult:
    out: Path
    predicted: int
    failed: list[tuple[str, str, str]]  # (id, stage, reason)
    members: list[str]
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def side_file(out: Path, what: str) -> Path:
    """``OUT.models.json``, ``OUT.errors.tsv``, ``OUT.work``: the files a batch run writes beside OUT."""
    return out.with_name(f"{out.name}.{what}")


def check_batch_request(req: BatchRequest) -> None:
    if (req.manifest is None) == (req.folder is None):
        raise PredictError("batch prediction reads --manifest M.csv or --folder DIR (one of them)")
    if req.out.is_dir():
        raise PredictError(f"--out {req.out} is a folder; name the CSV to write")
    if req.out.exists() and not req.force:
        raise PredictError(f"--out {req.out} exists; pass --force to overwrite it")
    if req.manifest is not None and req.out.resolve() == Path(req.manifest).resolve():
        raise PredictError(f"--out {req.out} is the input manifest; write the predictions to another file")


def transcript_column(req: BatchRequest, ensemble: Ensemble) -> str | None:
    """Where the transcripts come from: None (no model reads text), the ASR's column, or the
    manifest's ``--text-column``; a model that reads text and has none is refused."""
    if not ensemble.uses("text"):
        return None
    if req.asr is not None:
        return ASR_COLUMN
    if req.folder is not None:
        raise PredictError(
            f"{ensemble.source}: the model reads transcripts; a folder has none: name an ASR model with --asr "
            f"SPEC, or give a manifest with a transcript column (--manifest)"
        )
    return req.text_column


def predict_batch(req: BatchRequest, say: Callable[[str], Any] = print) -> BatchResult:
    """Predict every utterance of ``req.manifest`` or ``req.folder`` into ``req.out`` (module
    docstring). Raises :class:`PredictError` (one line) for problems of the whole run; an
    utterance that cannot be predicted gets its line in ``OUT.errors.tsv`` and the others go on."""
    import time

    from .submission import check_submission, write_batch_output

    started = time.perf_counter()
    req.out = Path(req.out)
    check_batch_request(req)
    device = pick_device(req.device)
    ensemble = load_ensemble(req.checkpoint, req.run, device)
    check_submission(req.format, ensemble.meta.classes if ensemble.learns_classes() else ())
    column = transcript_column(req, ensemble)
    rows = manifest_rows(req.manifest, column if column != ASR_COLUMN else None) if req.manifest else None
    rows = rows or folder_rows(req.folder)
    encoders = feature_encoders(req, ensemble, device, say)
    work = prepare_work(req, rows, encoders, say)
    features, failed = make_features(req, work, rows, column, encoders, ensemble.meta)
    for uid, stage, reason in failed:
        say(f"failed: {uid} ({stage}): {reason}")
    normalised = sorted({m.model.cfg.speaker_norm for m in ensemble.members} - {"none"})
    if normalised:
        say(f"normalisation: {predict_note(normalised[0])}")
    outputs, ids = ensemble_predictions(ensemble, features, device, req.progress)
    order = [i for i in (ids.get(u.id) for u in rows) if i is not None]
    kept = [u for u in rows if u.id in ids]
    probs = None if outputs.probs is None else outputs.probs[order]
    attributes = None if outputs.attributes is None else outputs.attributes[order]
    outputs = Outputs(probs, attributes, outputs.attribute_names)
    files = write_batch_output(req.out, req.format, kept, outputs, ensemble.meta.classes, say)
    files.append(write_sidecars(req, ensemble, encoders, kept, failed))
    if not req.keep_features:
        shutil.rmtree(work, ignore_errors=True)
    return BatchResult(
        req.out, len(kept), failed, [m.name for m in ensemble.members], files, time.perf_counter() - started
    )


# --- features -----------------------------------------------------------------------------------


def feature_encoders(req: BatchRequest, ensemble: Ensemble, device, say) -> tuple[AudioEncoder, TextEncoder]:
    """The encoders the checkpoints record (or the overrides), fingerprint-checked; a modality
    no member reads gets a stand-in that loads nothing."""
    meta = ensemble.meta
    found = []
    for modality, info, override in (
        ("audio", meta.audio_encoder, req.audio_encoder),
        ("text", meta.text_encoder, req.text_encoder),
    ):
        if not ensemble.uses(modality):
            found.append((UnusedAudio if modality == "audio" else UnusedText)(info.dim))
            continue
        encoder, spec = load_matching_encoder(modality, info, override, device, req.force, req.tiny_root)
        got = encoder.cache_record()
        if info.checkpoint_digest and (got.checkpoint_digest, got.layer) != (info.checkpoint_digest, info.layer):
            say(f"warning: --force: {modality} encoder {spec} is not the one the models were trained with")
        found.append(encoder)
    return found[0], found[1]


def _record(encoder) -> dict[str, Any]:
    info: EncoderInfo = encoder.cache_record()
    return info.to_dict()


def prepare_work(req: BatchRequest, rows: list[Utterance], encoders, say) -> Path:
    """The work folder with the inputs' manifest; one made for other inputs, encoders or
    transcripts is emptied first (its features would not be these)."""
    work = side_file(req.out, "work")
    manifest = work / "manifest.csv"
    text = io.StringIO()
    for u in rows:  # what decides the features: ids, files, segments, transcripts
        text.write(json.dumps([u.id, str(u.audio), u.start, u.end, u.text]) + "\n")
    key = {
        "inputs_sha256": hashlib.sha256(text.getvalue().encode("utf-8", "surrogateescape")).hexdigest(),
        "encoders": [_record(e) for e in encoders],
        "asr": req.asr,
    }
    request = work / "request.json"
    if request.is_file():
        try:
            same = json.loads(request.read_text()) == json.loads(json.dumps(key))
        except ValueError:
            same = False
        if not same:
            say(f"{work}: made for other inputs or encoders; starting it afresh")
            shutil.rmtree(work)
    elif work.exists():
        shutil.rmtree(work)  # killed before it recorded its request: nothing in it can be trusted
    work.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, rows, extra_columns=())
    write_json(request, key)
    return work


def make_features(
    req: BatchRequest, work: Path, rows: list[Utterance], column: str | None, encoders, meta: CacheMeta
) -> tuple[Path, list[tuple[str, str, str]]]:
    """The feature cache of the inputs (transcribed first with ``--asr``), and the utterances
    that failed, in input order: (id, stage, reason)."""
    manifest = work / "manifest.csv"
    reasons: dict[str, tuple[str, str]] = {}
    if req.asr is not None:
        transcribed = work / "manifest-asr.csv"
        if not transcribed.is_file():  # written last: present means complete
            transcribe_manifest(
                manifest,
                transcribed,
                req.asr,
                column=ASR_COLUMN,
                device=req.device,
                max_duration=req.max_duration,
                progress=req.progress,
            )
        for uid, stage, reason in read_errors(side_files(transcribed)["errors"]):
            reasons[uid] = (stage, reason)
        manifest = transcribed
    features = work / "features"
    extract_corpus(
        read_manifest(manifest, strict=False, text_column=column),
        features,
        encoders[0],
        encoders[1],
        classes=(UNLABELLED,),
        corpus="predict",
        batch_seconds=req.batch_seconds,
        dtype=meta.dtype,
        max_audio_len=meta.max_audio_len,
        max_audio_seconds=meta.max_audio_seconds,
        max_duration=req.max_duration,
        max_text_len=meta.max_text_len,
        progress=req.progress,
        on_batch=req.on_batch,
    )
    for path in sorted(features.glob("errors-*.tsv")):
        for uid, stage, reason in read_errors(path):
            reasons.setdefault(uid, (stage, reason))
    failed = [(u.id, *reasons[u.id]) for u in rows if u.id in reasons]
    known = {u.id for u in rows}
    failed += [(uid, *sr) for uid, sr in reasons.items() if uid not in known]  # e.g. "(line 7)"
    return features, failed


def ensemble_predictions(ensemble: Ensemble, features: Path, device, progress: bool) -> tuple[Outputs, dict]:
    """The members' mean over the feature cache, and its ids' positions ({} when it is empty)."""
    if not any(features.glob("index-*.json")):
        return Outputs(np.zeros((0, len(ensemble.meta.classes)))), {}
    cache = open_cache(features, progress=False)
    bar = tqdm(
        total=len(cache) * len(ensemble.members),
        unit="utt",
        desc=f"predict ({len(ensemble.members)} model{'s' * (len(ensemble.members) > 1)})",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        outputs = [
            model_outputs(m.model, member_view(cache, m.model), None, 32, device, on_batch=bar.update)
            for m in ensemble.members
        ]
    ids = {uid: i for i, uid in enumerate(cache.ids)}
    cache.close()
    return ensemble_outputs(outputs), ids


def member_view(cache, model):
    """The features as a member reads them: a speaker-normalised model gets each utterance
    standardised with its own frames (prediction knows no speakers; ``predict_note`` says so)."""
    if model.cfg.speaker_norm == "none":
        return cache
    return SpeakerNormalisedCache(cache, "utterance")


def write_sidecars(req: BatchRequest, ensemble: Ensemble, encoders, kept: list[Utterance], failed) -> Path:
    """``OUT.errors.tsv`` (the failures) and ``OUT.models.json`` (which models voted, on what)."""
    errors = side_file(req.out, "errors.tsv")
    if failed:
        lines = "".join(f"{one_line(u, 200)}\t{s}\t{one_line(r)}\n" for u, s, r in failed)
        atomic_write(errors, "w", lambda f: f.write("id\tstage\treason\n" + lines))
    else:
        errors.unlink(missing_ok=True)
    return write_json(
        side_file(req.out, "models.json"),
        {
            "output": str(req.out),
            "format": req.format,
            "models": [str(m.path) for m in ensemble.members],
            "members": [m.name for m in ensemble.members],
            "combined": "mean of the members' class probabilities (and attributes); label = the most probable class",
            "source": ensemble.source,
            "classes": list(ensemble.meta.classes),
            "encoders": {"audio": _record(encoders[0]), "text": _record(encoders[1])},
            "inputs": str(req.manifest or req.folder),
            "transcripts": "asr " + req.asr if req.asr else (req.text_column if ensemble.uses("text") else None),
            "predicted": len(kept),
            "failed": len(failed),
            "errors": str(errors) if failed else None,
        },
    )
