"""Machine transcripts for a manifest (``ksr transcribe MANIFEST --asr SPEC --out MANIFEST2``).

MANIFEST2 is MANIFEST with one more column (``asr_text`` by default) holding what the ASR model
heard; every other column, the human transcript ``text`` included, is written back unchanged (a
row without a human transcript keeps its empty ``text``). Beside it:

- ``MANIFEST2.asr.json``: the ASR model (spec, name, checkpoint digest, hub revision, language),
  the input manifest and its SHA-256, the counts, and the word error rate against the human
  text over the rows that have both (``ksr.extract.asr.wer``);
- ``MANIFEST2.errors.tsv``: one line per row without a machine transcript (``id, stage,
  reason``: a row the manifest reader refused, unreadable or too long audio, a failed model
  call). Such a row keeps an empty ``asr_text``; a refused row is not written (it could not be
  read back).

Rows go to the model in batches of ``batch_size`` in manifest order, their audio read ahead by a
thread exactly as extraction reads it (16 kHz mono, ``max_duration`` refused from the header).
A failed batch is retried one row at a time, so a bad row costs only itself.

Resumable: after each batch its results (transcripts and failures) are appended to
``MANIFEST2.asr-progress.jsonl`` in one write, flushed and fsynced; a killed run leaves at worst
a torn last line, which the rerun drops. The rerun (same manifest, model and batch size, checked
against the progress file's first line) keeps the transcripts recorded, skips the batches they
complete, and redoes whole every other batch (one the kill cut, one with a row that failed: a
failed row is tried again, as extraction retries its failures), recording only what it lacks;
so every row is transcribed in the same batch as in an uninterrupted run and the output is the
same. MANIFEST2 and its side files are written atomically at the end, then the
progress file is removed: a later run starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ... import __version__
from ...common import SAMPLE_RATE, KsrError, faults, resolve_device, sha256_file, write_json
from ..audio import MAX_DURATION_S, read_audio
from ..corpora.manifest import REQUIRED_COLUMNS, SEGMENT_COLUMNS, Utterance, read_manifest, write_manifest
from ..failures import Breaker, encode_isolated
from ..pipeline import DEFAULT_PREFETCH
from ..prefetch import read_ahead
from ..summary import ErrorLog, reason_of
from .recognizer import WhisperAsr, load_asr
from .wer import WordErrors

DEFAULT_COLUMN = "asr_text"
DEFAULT_BATCH_SIZE = 8
STAGES = ("manifest", "audio", "asr")
PROGRESS_KIND = "ksr-asr-progress"
#: What a resumed run must share with the killed one (the model by its digest, not its path).
_COMPARED = ("manifest_sha256", "checkpoint_digest", "language", "column", "batch_size")


class TranscribeError(KsrError, ValueError):
    """A problem of the whole run; the message is one line."""


def side_files(out: str | os.PathLike) -> dict[str, Path]:
    """The files written beside MANIFEST2: metadata, errors, and the progress of a run."""
    out = Path(out)
    return {
        "meta": out.with_name(out.name + ".asr.json"),
        "errors": out.with_name(out.name + ".errors.tsv"),
        "progress": out.with_name(out.name + ".asr-progress.jsonl"),
    }


@dataclass
class TranscribeSummary:
    out: Path
    meta_path: Path
    errors_path: Path
    total: int = 0  # manifest rows, refused ones included
    done_before: int = 0  # transcribed by a killed run and kept
    transcribed: int = 0  # transcribed by this run
    failed: dict[str, int] = field(default_factory=dict)  # stage -> rows
    no_words: int = 0  # transcribed, but the model heard no words
    wer: WordErrors = field(default_factory=WordErrors)
    audio_seconds: float = 0.0
    seconds: float = 0.0

    def format(self) -> str:
        failed = sum(self.failed.values())
        stages = ", ".join(f"{s} {n}" for s, n in self.failed.items())
        lines = [
            f"{self.total} manifest rows: {self.transcribed} transcribed now, {self.done_before} by an "
            f"earlier run, {failed} failed" + (f" ({stages})" if stages else "") + f", {self.no_words} with no words",
        ]
        if self.transcribed and self.seconds > 0:
            lines.append(
                f"{self.transcribed} utterances ({self.audio_seconds / 60:.1f} min of audio) in {self.seconds:.1f} s: "
                f"{self.transcribed / self.seconds:.2f} utterances/s"
            )
        w = self.wer
        if w.rate is None:
            lines.append("WER: no row has both a human transcript (text) and a machine one")
        else:
            lines.append(
                f"WER against the human text: {100 * w.rate:.1f}% ({w.edits} edits / {w.reference_words} words, "
                f"{w.utterances} utterances)"
            )
        lines.append(f"wrote {self.out} and {self.meta_path}; errors file: {self.errors_path} ({failed} lines)")
        return "\n".join(lines)


class _Progress:
    """The append-only record of a run: a header line, then one JSON line per finished row.
    Held under an exclusive lock while the run lives, so a second run on the same output stops."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.records: dict[str, dict] = {}
        self._file = open(path, "a+b")  # created when absent; nothing is cut before the lock is held
        try:
            self._lock()
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]  # a torn last line (a kill mid-write) goes
            if complete and not self._resume(complete, header):
                complete = b""  # nothing worth keeping was recorded: start afresh
            self._file.truncate(len(complete))
            if not complete:  # new, or killed before its first line was whole
                self.append([header])
        except BaseException:
            self._file.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TranscribeError(
                f"another ksr transcribe is writing this output now (it holds {self.path}): wait until it has finished"
            ) from None

    def _resume(self, complete: bytes, header: dict) -> bool:
        """Take the records of a killed run; False when it recorded no transcript and had other
        settings (a run stopped by a wrong option: nothing is lost by starting again)."""
        # Split on newlines only: str.splitlines() would also split inside a transcript (U+2028, ...).
        lines = complete.decode("utf-8", errors="replace").split("\n")[:-1]
        try:
            old = json.loads(lines[0])
            records = [json.loads(line) for line in lines[1:]]
        except ValueError:
            old, records = None, []
        if not isinstance(old, dict) or old.get("kind") != PROGRESS_KIND:
            raise TranscribeError(f"{self.path} is not a ksr transcription progress file: delete it to start again")
        differ = [k for k in _COMPARED if old.get(k) != header[k]]
        if differ and not any("text" in r for r in records):
            return False
        if differ:
            k = differ[0]
            raise TranscribeError(
                f"{self.path}: a killed run with another {k} ({old.get(k)!r}, now {header[k]!r}) left this file; "
                f"rerun it as it was, or delete the file to start again"
            )
        self.records = {r["id"]: r for r in records}
        return True

    def append(self, records: list[dict]) -> None:
        """Every record of a batch in one write, flushed and fsynced."""
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        for r in records:
            if "id" in r:
                self.records[r["id"]] = r

    def close(self) -> None:
        self._file.close()


def _check_out(manifest: Path, out: Path, column: str, columns: tuple[str, ...]) -> None:
    if out.resolve() == manifest.resolve():
        raise TranscribeError(f"--out {out} is the input manifest: write the transcripts to another file")
    if out.exists() and not out.is_file():
        raise TranscribeError(f"--out {out} is a folder, not a file")
    if not column or not column.replace("_", "").isalnum() or not column.isascii():
        raise TranscribeError(f"--column {column!r}: use letters, digits and '_' only")
    if column in REQUIRED_COLUMNS or column in SEGMENT_COLUMNS or column in columns:
        raise TranscribeError(
            f"{manifest} already has a column {column!r}: name the machine transcript's column with --column"
        )


def transcribe_manifest(
    manifest_path: str | os.PathLike,
    out: str | os.PathLike,
    asr: str | WhisperAsr,
    *,
    column: str = DEFAULT_COLUMN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    max_duration: float | None = MAX_DURATION_S,
    prefetch: int = DEFAULT_PREFETCH,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> TranscribeSummary:
    """Write ``out`` = the manifest plus a machine-transcript ``column`` (see the module's
    docstring); resumable. ``asr``: a spec string (``ksr.extract.asr.recognizer``) or a loaded model.
    ``on_batch(done)`` is called after each batch is recorded (tests interrupt a run with it).
    Raises :class:`TranscribeError`, ``ManifestError`` or ``AsrError`` (one line) for
    problems of the whole run."""
    manifest_path, out = Path(manifest_path), Path(out)
    if batch_size < 1:
        raise TranscribeError(f"batch_size must be at least 1, not {batch_size}")
    manifest = read_manifest(manifest_path, strict=False, text_column=None)
    _check_out(manifest_path, out, column, manifest.extra_columns)
    if isinstance(asr, str):
        asr = load_asr(asr, device=resolve_device(device))
    files = side_files(out)
    header = {
        "kind": PROGRESS_KIND,
        "manifest_sha256": sha256_file(manifest_path),
        "checkpoint_digest": asr.digest,
        "language": asr.spec.language,
        "column": column,
        "batch_size": batch_size,
        "asr": asr.record(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = TranscribeSummary(out=out, meta_path=files["meta"], errors_path=files["errors"])
    summary.total = len(manifest.rows) + len(manifest.problems)
    started = time.perf_counter()
    record = _Progress(files["progress"], header)  # first: it refuses a second run on the same output
    try:
        with ErrorLog(files["errors"], stages=STAGES) as log:
            for p in manifest.problems:
                log.add(p.id or f"(line {p.line})", "manifest", f"line {p.line}: {p.reason}")
            summary.done_before = sum("text" in record.records.get(u.id, {}) for u in manifest.rows)
            _run(manifest.rows, asr, record, log, summary, batch_size, max_duration, prefetch, progress, on_batch)
    finally:
        record.close()
    summary.seconds = time.perf_counter() - started
    _finish(manifest, out, column, record.records, header, summary)
    files["progress"].unlink()
    return summary


def _run(
    rows: list[Utterance],
    asr: WhisperAsr,
    record: _Progress,
    log: ErrorLog,
    summary: TranscribeSummary,
    batch_size: int,
    max_duration: float | None,
    prefetch: int,
    progress: bool,
    on_batch: Callable[[int], None] | None,
) -> None:
    # Rows a killed run transcribed are kept; the rows it failed on are tried again.
    done = {i for i, r in record.records.items() if "text" in r}
    # Batches are fixed by manifest order, so a resumed run forms the same ones: a batch with a
    # row not transcribed yet is done again whole, and only such rows are recorded.
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    batches = [b for b in batches if any(u.id not in done for u in b)]
    bar = tqdm(
        total=len(rows) - summary.done_before,
        unit="utt",
        desc="transcribe",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    breaker = Breaker("asr")

    def read(u: Utterance) -> np.ndarray:
        return read_audio(u.audio, start=u.start, end=u.end, max_duration=max_duration)

    finished = 0
    try:
        for batch, wavs in read_ahead(batches, read, depth=prefetch):
            faults.point("transcribe-batch")  # tests: SIGKILL here (KSR_TEST_KILL_AT)
            results: dict[str, dict] = {}
            good = []
            for u, w in zip(batch, wavs, strict=True):
                if isinstance(w, BaseException):
                    results[u.id] = {"id": u.id, "stage": "audio", "reason": reason_of(w)}
                else:
                    good.append((u, w))

            def fail(i: int, reason: str, good=good, results=results) -> None:
                results[good[i][0].id] = {"id": good[i][0].id, "stage": "asr", "reason": reason}

            texts = encode_isolated(asr.transcribe, [w for _, w in good], fail, breaker)
            for (u, w), text in zip(good, texts, strict=True):
                if text is not None:
                    results[u.id] = {"id": u.id, "text": text}
                    if u.id not in done:
                        summary.audio_seconds += len(w) / SAMPLE_RATE
            new = [results[u.id] for u in batch if u.id not in done]
            record.append(new)
            for r in new:
                if "stage" in r:
                    log.add(r["id"], r["stage"], r["reason"])
                else:
                    summary.transcribed += 1
            finished += len(new)
            bar.update(len(new))
            if on_batch is not None:
                on_batch(finished)
    finally:
        bar.close()


def _finish(manifest, out: Path, column: str, records: dict, header: dict, summary: TranscribeSummary) -> None:
    """MANIFEST2 and its metadata, from every recorded row."""
    rows, failed = [], Counter()
    failed["manifest"] = len(manifest.problems)
    for u in manifest.rows:
        r = records[u.id]
        text = r.get("text", "")
        if "stage" in r:
            failed[r["stage"]] += 1
        else:
            summary.no_words += not text
            if u.text:  # no words heard where a human wrote some: all deletions
                summary.wer.add(u.text, text)
        rows.append(dataclasses.replace(u, extra={**u.extra, column: text}))
    summary.failed = {s: failed[s] for s in STAGES if failed[s]}
    write_manifest(out, rows, extra_columns=(*manifest.extra_columns, column))
    write_json(
        summary.meta_path,
        {
            "kind": "ksr-asr-transcripts",
            "column": column,
            "asr": header["asr"],
            "manifest": str(manifest.path.resolve()),
            "manifest_sha256": header["manifest_sha256"],
            "rows": len(rows),
            "transcribed": len(rows) - sum(failed[s] for s in ("audio", "asr")),
            "no_words": summary.no_words,
            "failed": summary.failed,
            "wer": summary.wer.to_dict(),
            "wer_rows": "rows with a human text whose transcription did not fail (no words: all deletions)",
            "batch_size": header["batch_size"],
            "ksr_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
