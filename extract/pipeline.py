"""The extraction loop: manifest -> frozen encoders -> cache shards (``ksr extract``).

One call, :func:`extract_corpus`, per process; under ``torchrun --nproc-per-node N`` each rank
takes its own share of the manifest (:mod:`ksr.extract.plan`) and writes its own shards with
writer tag ``rank<r>`` (``w0`` for a single process); readers merge every writer's index.

Per utterance: the audio is read (soundfile), mixed to mono and resampled to 16 kHz (soxr) by a
reader thread a few batches ahead; utterances of similar length are encoded together (audio and
transcript, encoders in inference mode on the best device, half precision on a GPU); the
features go to the cache writer, which cuts or zero-pads them to 460 frames / 20 tokens and
records the true lengths. What is stored already (by any writer) is skipped, so a rerun after
a crash only does the rest. An utterance that cannot be used gets one line in
``errors-<tag>.tsv`` and a count in the summary; the run goes on. Whole-run problems (a bad
encoder spec, an unwritable directory, another cache in the directory) stop it with a
one-line message.

ksr writes only inside the output directory: the errors file and the cache files have fixed
names there, and nothing taken from a manifest (ids, paths) is ever used as a file name.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..cache import CacheMeta, CacheWriter, row_problem
from ..cache.index import scan_dir
from ..cache.schema import parse_shard_name
from ..common import (
    MAX_AUDIO_FRAMES,
    MAX_TEXT_TOKENS,
    PAPER_CLASSES,
    SAMPLE_RATE,
    Ranks,
    faults,
    ranks_from_env,
    resolve_device,
    signals,
)
from ..common.files import DiskFullError, disk_full_error, is_disk_full
from .audio import MAX_DURATION_S, AudioError, cut_audio, read_audio
from .corpora.attributes import attribute_columns, declared_range, parse_attributes
from .corpora.manifest import Manifest, Utterance, case_clash, read_manifest
from .encoders import AudioEncoder, Encoder, EncoderError, TextEncoder, load_encoder
from .failures import Breaker, ExtractError, encode_isolated
from .media import check_decoder
from .plan import plan_batches, rank_share, utterance_seconds
from .prefetch import read_ahead
from .summary import STAGES, ErrorLog, ExtractSummary, reason_of

#: Padded audio per batch, by device type. On the CPU a real speech model is compute-bound
#: and batching saves nothing: 10 s batches cost the same CPU time per utterance as one at a
#: time, larger ones more (activations far beyond the CPU caches; docs/extract.md and
#: bench/results.md); only small models, where per-call overhead dominates, gain from larger
#: ones. On a GPU, batches fill the device; 120 s keeps wav2vec 2.0 large in float16 at a few GiB.
DEFAULT_BATCH_SECONDS = {"cpu": 10.0, "cuda": 120.0}
#: Batches of audio read ahead by a thread: neutral with a compute-bound encoder on the CPU,
#: faster with small ones (bench/results.md); with a GPU the CPU is otherwise idle while the
#: device computes.
DEFAULT_PREFETCH = 2
DEFAULT_SHARD_SIZE = 512


def default_classes(labels: Sequence[str]) -> tuple[str, ...]:
    """The class order of a cache when none is given: :data:`PAPER_CLASSES` for the 4-class
    IEMOCAP label set (the public implementation's indexes), otherwise the labels sorted."""
    found = set(labels)
    if found == set(PAPER_CLASSES):
        return PAPER_CLASSES
    return tuple(sorted(found))


def corpus_name(manifest_path: str | os.PathLike) -> str:
    """``data/iemocap/manifest.csv`` -> ``iemocap``; ``lssed.csv`` -> ``lssed``."""
    path = Path(manifest_path).resolve()
    return path.parent.name if path.stem == "manifest" and path.parent.name else path.stem


def _load(
    spec: str | Encoder, modality: str, device: torch.device, compute_dtype: torch.dtype | None, tiny_root
) -> Encoder:
    if isinstance(spec, Encoder):
        if spec.modality != modality:
            raise EncoderError(f"encoder {spec.name!r} is a {spec.modality} encoder, not {modality}")
        return spec
    return load_encoder(spec, modality=modality, device=device, dtype=compute_dtype, tiny_root=tiny_root)


def _tidy_other_writers(root: Path, meta: CacheMeta, ranks: Ranks) -> None:
    """Remove what killed writers of OTHER runs left (a 4-rank run continued by 1 process):
    their writer would clean it on its rerun, but it may never run again. Opening a writer
    with their tag does that cleaning; a tag held by a live process is left alone."""
    from ..cache import CacheError

    scan = scan_dir(root, allow_empty=True)
    tags = set()
    for name in scan.leftovers + scan.unindexed:
        parsed = parse_shard_name(name.removesuffix(".tmp"))
        if parsed is not None:
            tags.add(parsed[0])
        elif name.startswith("index-") and name.endswith(".json.tmp"):
            tags.add(name[len("index-") : -len(".json.tmp")])
    for tag in sorted(tags - ranks.tags()):
        try:
            CacheWriter(root, meta, tag=tag).close()
        except (CacheError, ValueError):
            pass  # live, or not ours to judge: verify reports it
    for path in root.glob("errors-*.tsv"):  # last run's errors of writers not in this run
        if path.name[len("errors-") : -len(".tsv")] not in ranks.tags():
            path.unlink(missing_ok=True)


def _gather(summary: ExtractSummary, ranks: Ranks) -> ExtractSummary:
    """Every rank's counts, merged (torch.distributed over gloo; only metadata travels)."""
    if ranks.world == 1:
        return summary
    import datetime

    import torch.distributed as dist

    try:
        if not dist.is_initialized():
            # Ranks finish at different times: wait as long as the slowest one needs.
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
        parts: list = [None] * ranks.world
        dist.all_gather_object(parts, summary)
        dist.destroy_process_group()
    except (RuntimeError, ValueError) as err:
        print(
            f"warning: rank {ranks.rank}: cannot gather the other ranks' counts "
            f"({reason_of(err)}); this summary is this rank's only",
            file=sys.stderr,
        )
        return summary
    return ExtractSummary.merge(parts)


def extract_corpus(
    manifest: str | os.PathLike | Manifest,
    out_dir: str | os.PathLike,
    audio_encoder: str | AudioEncoder = "paper-audio",
    text_encoder: str | TextEncoder = "paper-text",
    *,
    classes: Sequence[str] | None = None,
    corpus: str | None = None,
    batch_seconds: float | None = None,
    max_batch_items: int = 256,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str | torch.device | None = None,
    compute_dtype: torch.dtype | None = None,
    dtype: str = "float16",
    max_audio_len: int = MAX_AUDIO_FRAMES,
    max_audio_seconds: float | None = None,
    max_duration: float | None = MAX_DURATION_S,
    max_text_len: int = MAX_TEXT_TOKENS,
    text_column: str = "text",
    prefetch: int | None = None,
    progress: bool = True,
    ranks: Ranks | None = None,
    tiny_root: str | os.PathLike | None = None,
    on_batch: Callable[[int], None] | None = None,
    attributes: Sequence[str] | None = None,
    attribute_range: tuple[float, float] | None = None,
) -> ExtractSummary:
    """Extract every utterance of ``manifest`` into the cache ``out_dir``; resumable.

    ``audio_encoder`` / ``text_encoder``: spec strings (``docs/encoders.md``) or loaded
    encoders. ``classes``: the cache's class order (default :func:`default_classes` of the
    manifest's labels); rows with other labels are skipped. ``dtype``: storage dtype of the
    cache; ``compute_dtype``: the encoders' (default float16 on a GPU, float32 on the CPU).
    ``batch_seconds``: padded audio per batch (items x longest); an utterance longer than it
    goes alone (default :data:`DEFAULT_BATCH_SECONDS` for the device). ``prefetch``: batches of
    audio read ahead by a thread (0: none; default :data:`DEFAULT_PREFETCH`).
    ``max_audio_seconds``: encode only the first this-many seconds of each utterance (None:
    all of it); recorded in the cache meta, so a rerun with another value is refused.
    ``max_duration``: a file (or segment) whose header gives more seconds than this is not
    decoded at all but fails at stage ``audio`` (default :data:`MAX_DURATION_S`; None: no limit);
    not recorded in the cache (it changes no feature), so a rerun may raise it.
    ``text_column``: the manifest column the transcripts are taken from (``text``, or e.g. the
    ``asr_text`` of ``ksr transcribe``); recorded in the cache meta. A given ``Manifest`` was
    read with its own ``text_column``, which is the one recorded.
    ``ranks``: default from torchrun's environment. ``on_batch(done)`` is called after each
    batch is handed to the writer, ``done`` counting this run's utterances so far (tests
    interrupt a run with it).
    ``attributes``: the manifest's numeric attribute columns to store (default: every column of
    :data:`~ksr.extract.corpora.attributes.ATTRIBUTE_COLUMNS` the manifest has; () for none);
    ``attribute_range``: their scale (default: the one the corpus declares, by its name). Both
    are recorded in the cache meta.

    Returns the summary (every rank's, merged, under torchrun). Raises :class:`ExtractError`,
    ``ManifestError``, ``EncoderError`` or ``CacheError`` (all one line) for whole-run problems.
    """
    ranks = ranks or ranks_from_env()
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, strict=False, text_column=text_column)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExtractError(f"{out_dir} is a file, not a cache directory")
    try:
        check_decoder(u.audio for u in manifest.rows)
    except AudioError as e:
        raise ExtractError(str(e)) from None
    dev = resolve_device(device, ranks.local_rank)
    audio = _load(audio_encoder, "audio", dev, compute_dtype, tiny_root)
    text = _load(text_encoder, "text", dev, compute_dtype, tiny_root)
    where = "cuda" if audio.device.type == "cuda" else "cpu"
    settings = LoopSettings(
        batch_seconds=DEFAULT_BATCH_SECONDS[where] if batch_seconds is None else batch_seconds,
        max_batch_items=max_batch_items,
        prefetch=DEFAULT_PREFETCH if prefetch is None else prefetch,
        progress=progress,
        on_batch=on_batch,
        max_duration=max_duration,
    )
    corpus = corpus or corpus_name(manifest.path)
    names = attribute_columns(manifest.extra_columns) if attributes is None else tuple(attributes)
    unknown = [a for a in names if a not in manifest.extra_columns]
    if unknown:
        raise ExtractError(f"{manifest.path}: no column(s) {', '.join(unknown)} for the attributes")
    meta = CacheMeta(
        corpus=corpus,
        classes=tuple(cache_classes(manifest, classes)),
        audio_encoder=audio.cache_record(),
        text_encoder=text.cache_record(),
        sample_rate=SAMPLE_RATE,
        max_audio_len=max_audio_len,
        max_text_len=max_text_len,
        dtype=dtype,
        max_audio_seconds=max_audio_seconds,
        text_column=manifest.text_column or "text",
        attributes=names,
        attribute_range=(attribute_range or declared_range(corpus)) if names else None,
    )
    started = time.perf_counter()  # the summary's rate leaves model loading out
    summary = _write_cache(manifest, out_dir, (audio, text), meta, ranks, settings, shard_size)
    summary.seconds = time.perf_counter() - started
    return _gather(summary, ranks)


def _write_cache(
    manifest: Manifest,
    out_dir: Path,
    encoders: tuple[AudioEncoder, TextEncoder],
    meta: CacheMeta,
    ranks: Ranks,
    settings: LoopSettings,
    shard_size: int,
) -> ExtractSummary:
    """The loop inside its writer and errors file; a failure of the cache (disk full, SIGTERM)
    ends as one line that says what is kept."""
    try:  # audio read errors are per utterance (caught in the loop): an OSError here is the cache's
        with (
            signals.sigterm_raises(),  # SIGTERM as SIGINT: the writer still writes its partial shard
            CacheWriter(out_dir, meta, tag=ranks.tag, shard_size=shard_size, peers=ranks.tags()) as writer,
            ErrorLog(out_dir / f"errors-{ranks.tag}.tsv") as log,
        ):
            if ranks.main:
                _tidy_other_writers(out_dir, meta, ranks)
            summary = ExtractionLoop(manifest, writer, log, encoders, meta, ranks, settings).run()
    except (OSError, DiskFullError) as err:
        if isinstance(err, OSError) and is_disk_full(err):
            err = disk_full_error(out_dir, None, err)
        if isinstance(err, DiskFullError):
            raise ExtractError(f"{err}; then run the same command again to continue") from None
        raise ExtractError(f"cannot write the cache in {out_dir}: {err}") from None
    except signals.Terminated:
        raise ExtractError(
            f"stopped by SIGTERM: every utterance extracted so far is stored in {out_dir} (the last, "
            f"partial shard included); run the same command again to continue"
        ) from None
    summary.errors_files = [log.path]
    return summary


def cache_classes(manifest: Manifest, classes: Sequence[str] | None) -> Sequence[str]:
    """The cache's class order: ``classes``, else :func:`default_classes` of the manifest's
    labels; a manifest without one usable row is refused."""
    if classes is None:
        labels = [u.label for u in manifest.rows]
        clash = case_clash(labels)
        if clash:  # a class of its own would change the class order without a word
            raise ExtractError(f"{manifest.path}: {clash} in the manifest, or name the classes with --classes")
        classes = default_classes(labels)
    if not classes:
        first = f" (first: {manifest.problems[0]})" if manifest.problems else ""
        raise ExtractError(
            f"{manifest.path}: no usable rows, {len(manifest.problems)} refused{first}: nothing to extract"
        )
    return classes


@dataclass(frozen=True)
class LoopSettings:
    """How the loop batches, reads ahead and reports (none of it changes a stored feature)."""

    batch_seconds: float
    max_batch_items: int = 256
    prefetch: int = DEFAULT_PREFETCH
    progress: bool = True
    on_batch: Callable[[int], None] | None = None
    max_duration: float | None = MAX_DURATION_S

    def __post_init__(self) -> None:
        if not (self.batch_seconds > 0 and math.isfinite(self.batch_seconds)):
            raise ExtractError(f"batch_seconds must be a positive number of seconds, not {self.batch_seconds}")
        if self.max_duration is not None and not self.max_duration > 0:
            raise ExtractError(f"max_duration must be a positive number of seconds, not {self.max_duration}")


class ExtractionLoop:
    """One rank's pass over its share of the manifest: plan the batches (:meth:`plan`), then
    per batch read the audio (a thread ahead), encode audio and text (:meth:`encode`) and store
    the rows (:meth:`store`); every utterance left out gets its line in the errors file."""

    def __init__(
        self,
        manifest: Manifest,
        writer: CacheWriter,
        log: ErrorLog,
        encoders: tuple[AudioEncoder, TextEncoder],
        meta: CacheMeta,
        ranks: Ranks,
        settings: LoopSettings,
    ) -> None:
        self.manifest, self.writer, self.log, self.meta, self.ranks = manifest, writer, log, meta, ranks
        self.audio, self.text = encoders
        self.settings = settings
        self.summary = ExtractSummary(
            cache_dir=writer.root,
            ranks=ranks.world,
            classes=tuple(meta.classes),
            attributes=meta.attributes,
            attribute_range=meta.attribute_range,
            attribute_missing=dict.fromkeys(meta.attributes, 0),
        )
        self.failed: Counter[str] = Counter()
        self.in_cache: Counter[str] = Counter()  # per class: stored before, or stored by this run
        self.stored = writer.stored_ids()
        self.breakers = {s: Breaker(s) for s in ("audio-encoder", "text-encoder")}

    def run(self) -> ExtractSummary:
        batches, todo = self.plan()
        bar = tqdm(
            total=todo,
            unit="utt",
            desc=f"extract {self.ranks.tag}",
            file=sys.stderr,
            disable=not (self.settings.progress and self.ranks.main),
            dynamic_ncols=True,
            smoothing=0.05,
        )
        loop_start = time.perf_counter()
        done = 0
        try:
            for batch, wavs in read_ahead(batches, self.read, depth=self.settings.prefetch):
                faults.point("extract-batch")  # tests: SIGKILL here (KSR_TEST_KILL_AT)
                self.store(self.encode(batch, wavs))
                new = sum(u.id not in self.stored for u in batch)
                done += new
                bar.update(new)
                elapsed = time.perf_counter() - loop_start
                bar.set_postfix_str(
                    f"{self.summary.audio_seconds / max(elapsed, 1e-9):.1f} s audio/s, "
                    f"{sum(self.failed.values())} failed",
                    refresh=False,
                )
                if self.settings.on_batch is not None:
                    self.settings.on_batch(done)
        finally:
            bar.close()
            self.summary.failed = {s: self.failed[s] for s in STAGES if self.failed[s]}
            self.summary.class_counts = {c: self.in_cache[c] for c in self.meta.classes}
        return self.summary

    def plan(self) -> tuple[list[list[Utterance]], int]:
        """This rank's batches (utterances of similar length) and how many utterances are new;
        rows the manifest reader refused and labels outside the classes are logged here."""
        summary, rows, meta = self.summary, self.manifest.rows, self.meta
        if self.ranks.main:  # rows the reader rejected belong to no share: rank 0 reports them
            for p in self.manifest.problems:
                self.log.add(p.id or f"(line {p.line})", "manifest", f"line {p.line}: {p.reason}")
            summary.total += len(self.manifest.problems)
            self.failed["manifest"] = len(self.manifest.problems)
        if self.ranks.world > 1:  # shares are balanced by duration: every rank probes every file
            seconds = [utterance_seconds(u) for u in rows]
            share = rank_share([u.id for u in rows], seconds, self.ranks)
        else:
            seconds = [0.0] * len(rows)
            share = list(range(len(rows)))
        usable: list[int] = []  # rows of the share with a label of the cache, stored ones too
        for i in share:
            u = rows[i]
            if u.label not in meta.classes:
                self.log.add(u.id, "label", f"label {u.label!r} is not one of the classes {','.join(meta.classes)}")
                summary.skipped += 1
                continue
            usable.append(i)
            if u.id in self.stored:
                summary.stored_before += 1
                self.in_cache[u.label] += 1
        summary.total += len(share)
        if self.ranks.world == 1:
            for i in usable:
                seconds[i] = utterance_seconds(rows[i])
        if meta.max_audio_seconds is not None:  # batches are planned on what is encoded
            seconds = [min(s, meta.max_audio_seconds) for s in seconds]
        # Batches are planned over the stored utterances too, and those with nothing new are
        # dropped: every run then encodes an utterance in the same batch, so a resumed run stores
        # bit for bit what an uninterrupted one does (a batch's make-up moves float rounding). Only
        # a batch that a crash cut is encoded again, its stored utterances thrown away.
        batches = [
            [rows[i] for i in b]
            for b in plan_batches(usable, seconds, self.settings.batch_seconds, self.settings.max_batch_items)
            if any(rows[i].id not in self.stored for i in b)
        ]
        return batches, len(usable) - summary.stored_before

    def read(self, u: Utterance) -> np.ndarray:
        wav = read_audio(u.audio, start=u.start, end=u.end, max_duration=self.settings.max_duration)
        return cut_audio(wav, self.meta.max_audio_seconds)

    def fail(self, u: Utterance, stage: str, reason: str) -> None:
        if u.id in self.stored:  # encoded again for its batch's sake: it is in the cache already
            return
        self.log.add(u.id, stage, reason)
        self.failed[stage] += 1

    def encode(
        self, batch: list[Utterance], wavs: list
    ) -> list[tuple[Utterance, np.ndarray, torch.Tensor, torch.Tensor]]:
        """(utterance, samples, audio features, text features) of the batch's utterances that
        both encoders took; every other one is logged with its stage and reason."""
        audio = self.audio
        good: list[tuple[Utterance, np.ndarray]] = []
        for u, w in zip(batch, wavs, strict=True):
            if isinstance(w, BaseException):
                self.fail(u, "audio", reason_of(w))
            elif len(w) < audio.min_samples:
                self.fail(
                    u,
                    "audio",
                    f"too short: {len(w)} samples ({len(w) / SAMPLE_RATE:.3f} s)"
                    f" at 16 kHz; {audio.name} needs {audio.min_samples} for "
                    f"one frame",
                )
            else:
                good.append((u, w))
        a_feats = encode_isolated(
            audio.encode,
            [w for _, w in good],
            lambda i, r, good=good: self.fail(good[i][0], "audio-encoder", r),
            self.breakers["audio-encoder"],
        )
        both = [(u, w, a) for (u, w), a in zip(good, a_feats, strict=True) if a is not None]
        t_feats = encode_isolated(
            self.text.encode,
            [u.text for u, _, _ in both],
            lambda i, r, both=both: self.fail(both[i][0], "text-encoder", r),
            self.breakers["text-encoder"],
        )
        return [(u, w, a, t) for (u, w, a), t in zip(both, t_feats, strict=True) if t is not None]

    def attribute_values(self, u: Utterance) -> np.ndarray:
        """The utterance's attribute values (NaN where missing or unusable), counted and reported."""
        values, missing, problem = parse_attributes(u.id, u.extra, self.meta.attributes, self.meta.attribute_range)
        for name in missing:
            self.summary.attribute_missing[name] += 1
        if problem:
            self.summary.attribute_problems.append(problem)
        return values

    def store(self, encoded: list[tuple[Utterance, np.ndarray, torch.Tensor, torch.Tensor]]) -> None:
        """Hand each new utterance's features to the writer (a row the cache cannot hold is
        logged at stage ``features``)."""
        meta = self.meta
        for u, w, a, t in encoded:
            if u.id in self.stored:
                continue
            problem = row_problem(a, meta.max_audio_len, "audio", meta.dtype) or row_problem(
                t, meta.max_text_len, "text", meta.dtype
            )
            if problem:
                self.fail(u, "features", problem)
                continue
            values = self.attribute_values(u)
            # Any error from here on is the cache's (disk full, ...): it stops the run.
            self.writer.add(
                u.id,
                a,
                t,
                u.label,
                speaker=u.speaker,
                session="" if u.session is None else str(u.session),
                gender=u.gender,
                transcript=u.text,
                split=u.split,
                attributes=values,
            )
            self.summary.extracted += 1
            self.in_cache[u.label] += 1
            self.summary.audio_seconds += len(w) / SAMPLE_RATE
            faults.point("extract-add")
