"""The manifest: one CSV row per utterance, the contract between a corpus and ``ksr extract``.

Required columns: ``id, audio, text, label, speaker, session, gender``. Optional columns are kept
as they are (``raw_label``, ...); three of them have a meaning: ``start`` and ``end`` (seconds) name a
segment of the audio file, for corpora whose utterances lie inside longer recordings, and ``split``
names the official split of corpora that have one (``train``, ``valid``, ``test`` or ``test1``,
``test2``, ...; then ``session`` may be empty). ``audio``
is a path, relative to the manifest's folder or absolute. The format is documented in
``docs/manifest.md``.

Reading validates. In strict mode (the default) the first problem raises :class:`ManifestError`
with a one-line message naming the file and line; with ``strict=False`` problems of single rows
(duplicate id, empty text, ...) are collected in :attr:`Manifest.problems` and those rows left
out, so that the extraction loop can report each one and go on. Problems of the file itself
(missing, empty, missing columns) always raise.

``text_column`` picks the transcript a reader takes (``ksr extract --text-column``): ``text``
(the human transcript) by default, or another column such as the ``asr_text`` that ``ksr
transcribe`` adds; that column must then be non-empty and ``text`` may be empty.
``text_column=None`` requires no transcript at all (``ksr transcribe`` reads manifests so).
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...cache.schema import SPLIT_RULE, is_split_name
from ...common import KsrError, atomic_write

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "audio", "text", "label", "speaker", "session", "gender")
SEGMENT_COLUMNS: tuple[str, ...] = ("start", "end")
#: The official split of corpora that come with one (``ksr train --protocol split``).
SPLIT_COLUMN = "split"
GENDERS: tuple[str, ...] = ("F", "M", "U")  # U: unknown


class ManifestError(KsrError, ValueError):
    """A manifest that cannot be used; the message is one line and names the file (and line)."""


@dataclass(frozen=True)
class Utterance:
    """One manifest row. ``audio`` is absolute (resolved against the manifest's folder).

    ``session`` is None only in a manifest with a ``split`` column (official-split corpora have
    no sessions); ``split`` is "" when the manifest has no ``split`` column."""

    id: str
    audio: Path
    text: str
    label: str
    speaker: str
    session: int | None
    gender: str
    start: float | None = None
    end: float | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    split: str = ""


@dataclass(frozen=True)
class RowProblem:
    """Why one row was left out (lenient reading)."""

    line: int
    id: str
    reason: str

    def __str__(self) -> str:
        who = f" ({self.id})" if self.id else ""
        return f"line {self.line}{who}: {self.reason}"


@dataclass
class Manifest:
    """The rows of one manifest file, in file order."""

    path: Path
    rows: list[Utterance]
    extra_columns: tuple[str, ...] = ()
    problems: list[RowProblem] = field(default_factory=list)
    text_column: str | None = "text"  # the column each row's ``text`` was read from

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.rows)

    @property
    def labels(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted({r.label for r in self.rows})

    @property
    def root(self) -> Path:
        """The folder that relative ``audio`` paths are resolved against."""
        return self.path.parent


def _parse_seconds(value: str, column: str) -> float | None:
    if value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{column} {value!r} must be a finite number of seconds >= 0")
    return seconds


def _parse_row(
    raw: dict, root: Path, extra_columns: Sequence[str], has_split: bool = False, text_column: str | None = "text"
) -> Utterance:
    """Turn one CSV record into an :class:`Utterance`; raises ValueError with the reason."""
    if None in raw:  # DictReader puts surplus fields under the key None
        raise ValueError(f"{len(raw) - 1 + len(raw[None])} fields, the header has {len(raw) - 1}")
    if any(v is None for v in raw.values()):
        have = sum(v is not None for v in raw.values())
        raise ValueError(f"{have} fields, the header has {len(raw)}")
    values = {k: v.strip() for k, v in raw.items()}
    for column, value in values.items():
        try:  # the file is read with surrogateescape: bad bytes fail their row only
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{column} is not valid UTF-8") from None
        if "\x00" in value:  # HDF5 strings end at a NUL: the cache could not store it
            raise ValueError(f"{column} contains a NUL byte")
    if "\n" in values["id"] or "\r" in values["id"]:  # inside quotes: the CSV itself is well formed
        raise ValueError("id contains a line break (inside quotes): an id must be one line")
    bad = next((c for c in values["id"] if c < " " or c == "\x7f"), None)
    if bad is not None:  # ids become HDF5 strings and report keys: refuse, don't rewrite them
        raise ValueError(f"id contains the control character {bad!r}")
    for column in ("id", "audio", text_column, "label", "speaker"):
        if column is not None and not values[column]:
            if column == text_column:
                raise ValueError("empty transcript" + ("" if column == "text" else f" in column {column}"))
            raise ValueError(f"empty {column}")
    split = values.get(SPLIT_COLUMN, "")
    if has_split and not is_split_name(split):
        raise ValueError(f"split {split!r} is not {SPLIT_RULE}" if split else f"empty split (use {SPLIT_RULE})")
    session = None
    if values["session"] or not has_split:  # official-split corpora have no sessions
        if not (values["session"].isascii() and values["session"].isdigit()):
            # int() would also take "1_0" (as 10), "+1", and Arabic-Indic or other Unicode digits
            # (as the same session as "1"): only 0-9 are a session number here.
            if not values["session"]:
                raise ValueError("empty session (only a manifest with a split column may leave sessions empty)")
            raise ValueError(f"session {values['session']!r} is not an integer (digits 0-9)")
        session = int(values["session"])
    gender = values["gender"].upper()
    if gender not in GENDERS:
        raise ValueError(f"gender {values['gender']!r} is not F, M or U (unknown)")
    start = _parse_seconds(values.get("start", ""), "start")
    end = _parse_seconds(values.get("end", ""), "end")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end:g} s is not after start {start:g} s")
    audio = Path(values["audio"])
    if not audio.is_absolute():
        audio = root / audio
    return Utterance(
        id=values["id"],
        audio=audio,
        text=values[text_column or "text"],
        label=values["label"],
        speaker=values["speaker"],
        session=session,
        gender=gender,
        start=start,
        end=end,
        extra={c: values[c] for c in extra_columns},
        split=split,
    )


def _records(reader: csv.DictReader, path: Path) -> Iterator[dict]:
    """The reader's records; a CSV syntax error (a field over the size limit, which an
    unbalanced quote makes of the rest of the file) is a problem of the whole file."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise ManifestError(
                f"{path} line {reader.line_num + 1}: not readable as CSV ({err}); check the quoting up to this line"
            ) from None


#: Byte-order marks of the encodings a spreadsheet or Windows tool may save a CSV in, longest first.
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32", "little-endian"),
    (b"\x00\x00\xfe\xff", "UTF-32", "big-endian"),
    (b"\xff\xfe", "UTF-16", "little-endian"),
    (b"\xfe\xff", "UTF-16", "big-endian"),
)


def _encoding_problem(path: Path) -> str | None:
    """Why ``path`` is not UTF-8 text when its first bytes show it is UTF-16 or UTF-32 (read as
    UTF-8 its header would be noise, reported as missing every column). None otherwise."""
    with open(path, "rb") as f:
        head = f.read(4)
    found = next(((enc, order) for bom, enc, order in _BOMS if head.startswith(bom)), None)
    how = "it starts with that byte-order mark"
    if found is None and len(head) == 4:  # no mark: a header of ASCII names, every other byte NUL
        if head[0] and not head[1] and head[2] and not head[3]:
            found, how = ("UTF-16", "little-endian"), "every other byte of its header is NUL"
        elif not head[0] and head[1] and not head[2] and head[3]:
            found, how = ("UTF-16", "big-endian"), "every other byte of its header is NUL"
    if found is None:
        return None
    enc, order = found
    return (
        f"{path} is {enc} text ({order}: {how}), not UTF-8: save it as UTF-8 "
        f"(e.g. iconv -f {enc} -t UTF-8 {path.name} > manifest-utf8.csv)"
    )


def read_manifest(path: str | os.PathLike, *, strict: bool = True, text_column: str | None = "text") -> Manifest:
    """Read and validate a manifest CSV (UTF-8, a BOM is tolerated).

    Raises :class:`ManifestError` for a missing or empty file, missing or repeated columns, a file
    with no rows, and (strict mode) the first bad row. With ``strict=False`` bad rows are left out
    and listed in ``Manifest.problems``; a duplicate id keeps its first row. ``text_column``:
    see the module's docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    root = path.resolve().parent
    problem = _encoding_problem(path)
    if problem:
        raise ManifestError(problem)
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
        except csv.Error as err:
            raise ManifestError(f"{path}: the header line is not readable as CSV ({err})") from None
        if not header:
            raise ManifestError(
                f"{path} is empty: a manifest starts with a header line naming the columns "
                f"{', '.join(REQUIRED_COLUMNS)}"
            )
        header = [h.strip() for h in header]
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise ManifestError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(
                f"{path}: missing column(s) {', '.join(missing)} (a manifest needs {', '.join(REQUIRED_COLUMNS)})"
            )
        if text_column is not None and text_column not in header:
            raise ManifestError(f"{path}: no column {text_column!r} to take the transcripts from")
        reader.fieldnames = header
        has_split = SPLIT_COLUMN in header
        extra_columns = tuple(
            c for c in header if c not in REQUIRED_COLUMNS and c not in SEGMENT_COLUMNS and c != SPLIT_COLUMN
        )
        rows: list[Utterance] = []
        problems: list[RowProblem] = []
        first_line: dict[str, int] = {}
        line = reader.line_num + 1
        for raw in _records(reader, path):
            record_line, line = line, reader.line_num + 1  # a quoted field may span lines
            rid = (raw.get("id") or "").strip()
            try:
                if rid in first_line:
                    raise ValueError(f"duplicate id (first on line {first_line[rid]})")
                row = _parse_row(raw, root, extra_columns, has_split, text_column)
            except ValueError as err:
                reason = str(err)
                if line - record_line > 1 and not any(c in rid for c in "\r\n"):
                    # the rows it swallowed are in no count otherwise; a line break inside a
                    # quoted id is named by the reason itself
                    reason += f" (this record runs over lines {record_line}-{line - 1}: an unbalanced quote?)"
                problem = RowProblem(record_line, rid, reason)
                if strict:
                    raise ManifestError(f"{path} {problem}") from None
                problems.append(problem)
                continue
            first_line[rid] = record_line
            rows.append(row)
    if not rows and not problems:
        raise ManifestError(f"{path} has a header but no rows")
    return Manifest(path=path, rows=rows, extra_columns=extra_columns, problems=problems, text_column=text_column)


def _format_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_manifest(
    path: str | os.PathLike, rows: Iterable[Utterance], extra_columns: Sequence[str] | None = None
) -> Path:
    """Write rows as a manifest CSV, atomically (temporary file, then rename).

    ``audio`` is written relative to the manifest's folder when the file lies under it, absolute
    otherwise (so moving the manifest alone does not break it). ``start``/``end`` columns are
    written when a row has them, ``split`` when a row has one; ``extra_columns`` defaults to the extra
    keys of the rows, in order of first appearance.
    """
    path = Path(path)
    rows = list(rows)
    if extra_columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r.extra))
        extra_columns = tuple(seen)
    clash = [c for c in extra_columns if c in REQUIRED_COLUMNS or c in SEGMENT_COLUMNS or c == SPLIT_COLUMN]
    if clash:
        raise ManifestError(f"extra column(s) {', '.join(clash)} clash with the manifest's own")
    has_segments = any(r.start is not None or r.end is not None for r in rows)
    header = list(REQUIRED_COLUMNS) + (list(SEGMENT_COLUMNS) if has_segments else [])
    has_split = any(r.split for r in rows)
    header += [SPLIT_COLUMN] if has_split else []
    header += list(extra_columns)
    root = path.resolve().parent

    def write(f) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            audio = Path(r.audio)
            if audio.is_absolute() and audio.resolve().is_relative_to(root):
                audio = audio.resolve().relative_to(root)
            session = "" if r.session is None else r.session
            record = [r.id, audio.as_posix(), r.text, r.label, r.speaker, session, r.gender]
            if has_segments:
                record += [_format_seconds(r.start), _format_seconds(r.end)]
            if has_split:
                record.append(r.split)
            record += [r.extra.get(c, "") for c in extra_columns]
            writer.writerow(record)

    atomic_write(path, "w", write)
    return path


#: A label with fewer utterances than this gets a warning (``ksr extract`` warns of such a class).
MIN_LABEL_UTTERANCES = 5


def case_clash(labels: Iterable[str]) -> str | None:
    """The one-line problem of labels that differ only in case (``Ang`` and ``ang``), else None."""
    spellings: dict[str, set[str]] = {}
    for label in labels:
        spellings.setdefault(label.casefold(), set()).add(label)
    clashes = [sorted(v) for v in spellings.values() if len(v) > 1]
    if not clashes:
        return None
    named = "; ".join(", ".join(repr(x) for x in c) for c in sorted(clashes))
    return f"labels {named} differ only in case (ksr would make them two classes): write one spelling"


def label_warnings(labels: Mapping[str, int]) -> list[str]:
    """What a reader of a manifest's label counts must know: labels too rare to be classes (a
    mistyped label?) and labels that differ only in case."""
    found = []
    few = [(k, n) for k, n in sorted(labels.items()) if n < MIN_LABEL_UTTERANCES]
    if few:
        named = ", ".join(f"{k!r} ({n})" for k, n in few)
        found.append(
            f"{len(few)} label(s) with fewer than {MIN_LABEL_UTTERANCES} utterances: {named}; a mistyped label? "
            "Correct it, or name the classes with ksr extract --classes (other labels are then skipped)"
        )
    clash = case_clash(labels)
    return found + ([clash] if clash else [])


def check_manifest(m: Manifest, limit: int = 10) -> tuple[list[str], list[str]]:
    """What ``ksr prepare check`` prints: (summary lines, error lines). Audio files are checked
    to exist; at most ``limit`` missing ones are named."""
    missing = [r for r in m.rows if not r.audio.is_file()]
    labels = Counter(r.label for r in m.rows)
    sessions = Counter("(none)" if r.session is None else r.session for r in m.rows)
    splits = Counter(r.split for r in m.rows if r.split)
    summary = [
        f"{m.path}: {len(m)} usable rows, {len({r.speaker for r in m.rows})} speakers",
        "labels: " + ", ".join(f"{k} {n}" for k, n in sorted(labels.items())),
        "sessions: "
        + ", ".join(
            f"{k}: {n}"
            for k, n in sorted(sessions.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0]).zfill(12)))
        ),
    ]
    if splits:
        summary.append("splits: " + ", ".join(f"{k}: {n}" for k, n in sorted(splits.items())))
    summary += [f"warning: {w}" for w in label_warnings(labels)]
    errors = list(m.problems) + [f"{r.id}: audio file not found: {r.audio}" for r in missing[:limit]]
    if len(missing) > limit:
        errors.append(f"... {len(missing) - limit} more audio files not found")
    if m.problems or missing:
        errors.append(f"{len(m.problems)} bad rows, {len(missing)} missing audio files")
    return summary, errors
