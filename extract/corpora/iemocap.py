"""IEMOCAP: read ``IEMOCAP_full_release`` as released and build the 4-class manifest.

The format and its quirks are described in ``shared/reference/iemocap_format.md``; the points
that matter here:

- labels come from the summary lines (those starting with ``[``) of
  ``Session*/dialog/EmoEvaluation/<dialog>.txt``; the per-annotator folders beside them are skipped;
- transcripts come from ``Session*/dialog/transcriptions/<dialog>.txt``, split on the first
  ``]: `` (or ``: ``) after the id, since texts contain colons; lines that are no utterance (not
  starting with ``Ses``, ``XX`` ids, ids with no label) are skipped;
- the speaker's gender is the letter of the LAST ``_`` field of the id (``..._M012``), never a
  fixed character index: dialog names are irregular (``Ses03M_impro05a``,
  ``Ses05M_script01_1b``) and the dialog letter only says who wore the markers;
- AppleDouble ``._*`` files from macOS copies are junk.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...common import KsrError
from .manifest import Utterance

#: The 4-class task: hap and exc are merged into hap; every other label is dropped.
FOUR_CLASS: dict[str, str] = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}
CLASSES: tuple[str, ...] = ("ang", "hap", "neu", "sad")

#: 4-class counts of the complete release (reference/iemocap_format.md): session -> class -> n.
EXPECTED_COUNTS: dict[int, dict[str, int]] = {
    1: {"ang": 229, "hap": 278, "neu": 384, "sad": 194},
    2: {"ang": 137, "hap": 327, "neu": 362, "sad": 197},
    3: {"ang": 240, "hap": 286, "neu": 320, "sad": 305},
    4: {"ang": 327, "hap": 303, "neu": 258, "sad": 143},
    5: {"ang": 170, "hap": 442, "neu": 384, "sad": 245},
}
EXPECTED_TOTAL = 5531
SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)

# Ses01F_impro01_F000, Ses03M_impro05a_M012, Ses05M_script01_1b_F003: session, dialog, speaker
# letter and number; XX ids (Ses01F_impro01_MXX0) do not match.
# re.ASCII: \d is 0-9 only (Arabic-Indic or other Unicode digits are not an IEMOCAP session).
_ID = re.compile(r"^Ses(?P<session>\d{2})[FM]_(?P<rest>.+)_(?P<gender>[FM])(?P<num>\d{3})$", re.ASCII)
# [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
_SUMMARY = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\s*\]\s+(?P<id>\S+)\s+"
    r"(?P<label>\S+)\s+\[(?P<vad>[^\]]*)\]",
    re.ASCII,
)


class IemocapError(KsrError, ValueError):
    """The folder given is not an IEMOCAP release."""


@dataclass(frozen=True)
class Evaluation:
    """One summary line of an EmoEvaluation file."""

    id: str
    start: float
    end: float
    label: str
    vad: tuple[str, str, str]  # valence, activation, dominance as written (e.g. "2.5000")


@dataclass
class PrepareReport:
    """What :func:`prepare_iemocap` found: the 4-class rows and an account of everything else."""

    root: Path
    rows: list[Utterance] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)  # sessions present in the copy
    counts: dict[int, Counter] = field(default_factory=dict)  # session -> label -> n
    raw_counts: Counter = field(default_factory=Counter)  # raw label of every summary line
    genders: dict[int, Counter] = field(default_factory=dict)  # session -> F/M -> n
    skipped: Counter = field(default_factory=Counter)  # what is not data, by kind
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.rows)

    @property
    def complete(self) -> bool:
        """All five sessions are present."""
        return tuple(self.sessions) == SESSIONS


def parse_utterance_id(uid: str) -> tuple[int, str, str] | None:
    """``Ses03M_impro05a_M012`` -> (3, "Ses03M_impro05a", "M"); None when not a labelled id."""
    m = _ID.match(uid)
    if m is None:
        return None
    return int(m["session"]), uid.rsplit("_", 1)[0], m["gender"]


def parse_emo_evaluation(path: Path) -> tuple[list[Evaluation], int]:
    """The summary lines of one EmoEvaluation file, and the number of malformed ones."""
    entries, malformed = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("["):
                continue  # header, blank lines, per-annotator lines
            m = _SUMMARY.match(line.rstrip("\r\n"))
            if m is None:
                malformed += 1
                continue
            vad = tuple(v.strip() for v in m["vad"].split(","))
            vad = (vad + ("", "", ""))[:3]
            entries.append(Evaluation(m["id"], float(m["start"]), float(m["end"]), m["label"], vad))
    return entries, malformed


def parse_transcription(path: Path) -> tuple[dict[str, str], int, int]:
    """Texts by id from one transcription file.

    Returns (texts, not_utterances, unlabelled): the number of lines that are no utterance (not
    starting with ``Ses``, or with no ``:`` after the id) and of utterance lines whose id is not a
    labelled one (``XX`` ids such as ``Ses01F_impro01_MXX0``).
    """
    texts: dict[str, str] = {}
    not_utterances = unlabelled = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not line.startswith("Ses"):
                not_utterances += 1
                continue
            token = line.split(None, 1)[0]
            after = line[len(token) :]
            if token.endswith(":"):  # "Ses01F_impro01_F000: text", no times
                text = after
            else:
                # Texts contain colons: cut at the FIRST "]:" (end of the times), else ":".
                cut, width = after.find("]:"), 2
                if cut < 0:
                    cut, width = after.find(":"), 1
                if cut < 0:
                    not_utterances += 1
                    continue
                text = after[cut + width :]
            uid = token.rstrip(":")
            if parse_utterance_id(uid) is None:
                unlabelled += 1
                continue
            texts[uid] = text.strip()
    return texts, not_utterances, unlabelled


def _find_root(root: Path) -> Path:
    if not root.is_dir():
        raise IemocapError(f"not a folder: {root}")
    for candidate in (root, root / "IEMOCAP_full_release"):
        if any((candidate / f"Session{s}").is_dir() for s in SESSIONS):
            return candidate
    raise IemocapError(f"no Session1..Session5 folders in {root}: give the path of IEMOCAP_full_release/")


def _data_files(folder: Path, suffix: str, report: PrepareReport) -> list[Path]:
    """Files of ``folder`` ending in ``suffix``, sorted; junk and subfolders are counted."""
    return _scan(folder, report, dirs=False, suffix=suffix)


def _data_dirs(folder: Path, report: PrepareReport) -> list[Path]:
    """Dialog folders of ``sentences/wav``, sorted; junk entries are counted."""
    return _scan(folder, report, dirs=True)


def _scan(folder: Path, report: PrepareReport, *, dirs: bool, suffix: str = "") -> list[Path]:
    """The entries of ``folder`` that are data (sorted), counting each skipped one by kind."""
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("._"):
            report.skipped["AppleDouble ._ files"] += 1
        elif entry.is_dir() != dirs:
            report.skipped["other files" if dirs else "per-annotator and other subfolders"] += 1
        elif not dirs and (entry.name.startswith(".") or not entry.name.endswith(suffix)):
            report.skipped["other files"] += 1
        else:
            found.append(Path(entry.path))
    return found


def _sample(ids: list[str], n: int = 3) -> str:
    more = f", ... ({len(ids)} in all)" if len(ids) > n else ""
    return ", ".join(ids[:n]) + more


@dataclass
class _Tally:
    """What reading the sessions left out or could not read, for the report's warnings."""

    seen: set[str] = field(default_factory=set)
    no_wav: list[str] = field(default_factory=list)
    no_text: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    malformed: int = 0


def prepare_iemocap(root: str | os.PathLike) -> PrepareReport:
    """Read an IEMOCAP release and return the 4-class rows plus a full account.

    ``root`` is ``IEMOCAP_full_release/`` (or its parent). Rows are in session, dialog, file
    order; ``audio`` is absolute. Utterances with a 4-class label but no wav or no transcript
    are left out with a warning; a complete release that does not give 5,531 rows, or a session
    that does not give its reference count, gives a warning too.
    """
    root = _find_root(Path(root))
    report = PrepareReport(root=root)
    report.sessions = [s for s in SESSIONS if (root / f"Session{s}").is_dir()]
    missing_sessions = [s for s in SESSIONS if s not in report.sessions]
    if missing_sessions:
        report.warnings.append("partial release: Session" + ", Session".join(map(str, missing_sessions)) + " not found")
    tally = _Tally()
    for session in report.sessions:
        _read_session(root, session, report, tally)
    _warn(report, tally)
    return report


def _read_session(root: Path, session: int, report: PrepareReport, tally: _Tally) -> None:
    """One session's 4-class rows into ``report``; what it leaves out into ``tally``."""
    base = root / f"Session{session}"
    counts = report.counts.setdefault(session, Counter())
    genders = report.genders.setdefault(session, Counter())
    wavs: dict[str, Path] = {}
    for dialog_dir in _data_dirs(base / "sentences" / "wav", report):
        for wav in _data_files(dialog_dir, ".wav", report):
            wavs[wav.stem] = wav
    texts: dict[str, str] = {}
    for path in _data_files(base / "dialog" / "transcriptions", ".txt", report):
        found, not_utterances, unlabelled = parse_transcription(path)
        texts.update(found)
        report.skipped["transcript lines that are no utterance"] += not_utterances
        report.skipped["transcript lines without a labelled id"] += unlabelled
    labelled: set[str] = set()
    for path in _data_files(base / "dialog" / "EmoEvaluation", ".txt", report):
        entries, bad = parse_emo_evaluation(path)
        tally.malformed += bad
        for e in entries:
            parsed = parse_utterance_id(e.id)
            if parsed is None or parsed[0] != session:
                tally.malformed += 1
                continue
            if e.id in tally.seen:
                tally.duplicates.append(e.id)
                continue
            tally.seen.add(e.id)
            labelled.add(e.id)
            report.raw_counts[e.label] += 1
            label = FOUR_CLASS.get(e.label)
            if label is None:
                continue
            if e.id not in wavs:
                tally.no_wav.append(e.id)
                continue
            if not texts.get(e.id):
                tally.no_text.append(e.id)
                continue
            _, dialog, gender = parsed
            counts[label] += 1
            genders[gender] += 1
            report.rows.append(_utterance(e, label, wavs[e.id], texts[e.id], session, dialog, gender))
    unmatched = [t for t in texts if t not in labelled]
    report.skipped["transcript lines without a labelled id"] += len(unmatched)


def _utterance(e: Evaluation, label: str, wav: Path, text: str, session: int, dialog: str, gender: str) -> Utterance:
    return Utterance(
        id=e.id,
        audio=wav.resolve(),
        text=text,
        label=label,
        speaker=f"Ses{session:02d}{gender}",
        session=session,
        gender=gender,
        extra={
            "raw_label": e.label,
            "dialog": dialog,
            "dialog_start": f"{e.start:.4f}",
            "dialog_end": f"{e.end:.4f}",
            "valence": e.vad[0],
            "activation": e.vad[1],
            "dominance": e.vad[2],
        },
    )


def _warn(report: PrepareReport, tally: _Tally) -> None:
    """The report's warnings: lines not read, ids labelled twice, rows left out, counts that
    differ from the release's."""
    if tally.malformed:
        report.warnings.append(f"{tally.malformed} EmoEvaluation summary lines could not be read")
    if tally.duplicates:
        report.warnings.append(f"{len(tally.duplicates)} ids labelled twice, first kept: " + _sample(tally.duplicates))
    if tally.no_wav:
        report.warnings.append(f"{len(tally.no_wav)} 4-class utterances left out, no wav: " + _sample(tally.no_wav))
    if tally.no_text:
        report.warnings.append(
            f"{len(tally.no_text)} 4-class utterances left out, no transcript: " + _sample(tally.no_text)
        )
    for session in report.sessions:
        got, want = sum(report.counts[session].values()), sum(EXPECTED_COUNTS[session].values())
        if got != want:
            report.warnings.append(f"Session{session} gives {got} 4-class utterances, the release has {want}")
    if report.complete and report.total != EXPECTED_TOTAL:
        report.warnings.append(
            f"a complete release gives {EXPECTED_TOTAL} 4-class utterances, this copy gave "
            f"{report.total}: check that it is complete and unmodified"
        )


def format_report(report: PrepareReport) -> str:
    """The counts table and the account of what was skipped, as printed by ``ksr prepare``."""
    lines = [
        f"IEMOCAP 4-class manifest from {report.root}",
        f"{'session':<8}" + "".join(f"{c:>7}" for c in CLASSES) + f"{'total':>8}{'F/M':>10}{'release':>9}",
    ]
    totals: Counter = Counter()
    for session in report.sessions:
        counts, genders = report.counts[session], report.genders[session]
        totals.update(counts)
        fm = f"{genders['F']}/{genders['M']}"
        lines.append(
            f"{session:<8}"
            + "".join(f"{counts[c]:>7}" for c in CLASSES)
            + f"{sum(counts.values()):>8}{fm:>10}"
            + f"{sum(EXPECTED_COUNTS[session].values()):>9}"
        )
    lines.append(
        f"{'all':<8}"
        + "".join(f"{totals[c]:>7}" for c in CLASSES)
        + f"{report.total:>8}{'':>10}{EXPECTED_TOTAL if report.complete else '':>9}"
    )
    lines.append(
        f"hap = {report.raw_counts['hap']} hap + {report.raw_counts['exc']} exc "
        "(merged); raw labels kept in column raw_label"
    )
    dropped = [(k, n) for k, n in report.raw_counts.most_common() if k not in FOUR_CLASS]
    if dropped:
        lines.append("dropped (not in the 4 classes): " + ", ".join(f"{k} {n}" for k, n in dropped))
    skipped = [(k, n) for k, n in sorted(report.skipped.items()) if n]
    if skipped:
        lines.append(
            f"skipped {sum(n for _, n in skipped)} entries that are not data: "
            + ", ".join(f"{n} {k}" for k, n in skipped)
        )
    else:
        lines.append("skipped nothing: no junk found")
    return "\n".join(lines)
