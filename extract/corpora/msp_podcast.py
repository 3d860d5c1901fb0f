"""MSP-Podcast: read a release as distributed and build the 4-class or 8-class manifest.

The release's layout (``shared/reference/corpora.md``): ``Audios/<FileName>`` (wav),
``Labels/labels_consensus.csv`` (``labels_concensus.csv`` in releases up to 1.x), and
``Transcripts/<FileName stem>.txt``. The consensus file has one row per turn:
``FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set``.

- ``EmoClass`` letters: A S H U F D C N are the 8 classes; O (other) and X (no agreement) are
  no class and are left out, counted. The 4-class task keeps A H N S, under the names ksr uses
  for IEMOCAP's 4 classes (ang, hap, neu, sad); the 8-class task adds sur, fea, dis, con.
- ``Split_Set``: Train, Development (``Validation`` in older releases), Test1, Test2 become
  ``train``, ``valid``, ``test1``, ``test2``; Test3 has no public labels and is left out, counted.
- ``SpkrID`` ``Unknown`` becomes the marker ``unknown``; ``Gender`` Female/Male become F/M, and
  anything unstated U.
- A turn without a transcript file is written with an empty text and counted; a turn without
  its wav is left out and named.

Anything else (no labels file, a missing column, a class letter or split name this module does
not know) is refused in one line naming the file: a release of another format is not guessed at.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from ...common import KsrError
from .manifest import Utterance
from .splits import UNKNOWN_SPEAKER, SplitReport

#: The consensus labels' file, by release: the misspelling is that of releases up to 1.x.
LABEL_FILES: tuple[str, ...] = ("labels_consensus.csv", "labels_concensus.csv")
COLUMNS: tuple[str, ...] = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
#: EmoClass letter -> ksr's class name (IEMOCAP's names where IEMOCAP has the emotion).
EMOTIONS: dict[str, str] = {
    "A": "ang",
    "S": "sad",
    "H": "hap",
    "U": "sur",
    "F": "fea",
    "D": "dis",
    "C": "con",
    "N": "neu",
}
#: EmoClass letters that are no emotion class.
NO_CLASS: dict[str, str] = {"O": "other", "X": "no agreement"}
TASKS: dict[str, tuple[str, ...]] = {
    "4class": ("ang", "hap", "neu", "sad"),
    "8class": ("ang", "sad", "hap", "sur", "fea", "dis", "con", "neu"),
}
#: Split_Set -> the manifest's split; Validation is the older releases' name of Development.
SPLITS: dict[str, str] = {
    "Train": "train",
    "Development": "valid",
    "Validation": "valid",
    "Test1": "test1",
    "Test2": "test2",
}
UNLABELLED_SPLITS: frozenset[str] = frozenset({"Test3"})
GENDERS: dict[str, str] = {"female": "F", "male": "M", "f": "F", "m": "M", "unknown": "U", "": "U"}


class MspPodcastError(KsrError, ValueError):
    """The folder given is not an MSP-Podcast release this module knows."""


def find_labels(root: Path) -> Path:
    """The consensus labels file of the release at ``root`` (or in one folder below it)."""
    if not root.is_dir():
        raise MspPodcastError(f"not a folder: {root}")
    bases = [root] + sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str)
    for base in bases:
        for name in LABEL_FILES:
            if (base / "Labels" / name).is_file():
                return base / "Labels" / name
    raise MspPodcastError(
        f"no Labels/{LABEL_FILES[0]} (nor Labels/{LABEL_FILES[1]}, older releases) in {root} or a folder "
        "below it: give the MSP-Podcast release folder (with Audios/ and Labels/)"
    )


def _files(folder: Path, suffix: str) -> dict[str, str]:
    """Name -> path of the files of ``folder`` ending in ``suffix`` (one listing, no stat per
    turn: a release has over 200,000; a Path is made only for the rows written); macOS ``._``
    files are junk."""
    if not folder.is_dir():
        return {}
    folder = folder.resolve()  # once, not per file
    return {
        e.name: e.path
        for e in os.scandir(folder)
        if e.name.endswith(suffix) and not e.name.startswith("._") and e.is_file()
    }


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return " ".join(f.read().split())


def _records(labels: Path):
    """(line, record) for each row of the labels file, after checking its header."""
    with open(labels, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            header = [h.strip() for h in reader.fieldnames or []]
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:  # csv would keep the last copy of a column silently
                raise MspPodcastError(f"{labels}: column(s) {', '.join(repeated)} appear more than once")
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise MspPodcastError(
                    f"{labels}: not the consensus labels format this release reader knows: no column(s) "
                    f"{', '.join(missing)} (expected {','.join(COLUMNS)})"
                )
            reader.fieldnames = header
            line = reader.line_num + 1
            for record in reader:
                yield line, {k: (v or "").strip() for k, v in record.items() if k is not None}
                line = reader.line_num + 1
        except csv.Error as err:
            raise MspPodcastError(f"{labels} line {reader.line_num}: not readable as CSV ({err})") from None
        except UnicodeDecodeError as err:
            raise MspPodcastError(f"{labels}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def prepare_msp_podcast(root: str | os.PathLike, task: str = "4class") -> SplitReport:
    """Read an MSP-Podcast release and return the rows of ``task`` (``4class`` or ``8class``)
    with an account of everything left out. Rows keep the labels file's order; ``audio`` is
    absolute; ``session`` is None (written empty) and ``split`` names the official partition."""
    if task not in TASKS:
        raise MspPodcastError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    classes = TASKS[task]
    labels = find_labels(Path(root))
    base = labels.parent.parent
    audios = base / "Audios"
    if not audios.is_dir():
        raise MspPodcastError(f"no Audios/ folder beside {labels.parent} (the release's wav files)")
    report = SplitReport(
        corpus=f"MSP-Podcast {task[0]}-class",
        root=base,
        classes=classes,
        splits=("train", "valid", "test1", "test2"),
    )
    reading = _Reading(report, classes, _files(audios, ".wav"), _files(base / "Transcripts", ".txt"))
    report.notes.append(
        f"labels: {labels.relative_to(base)}; raw letter in raw_label, EmoAct/EmoVal/EmoDom in "
        "activation/valence/dominance (1-7)"
    )
    if not reading.texts:
        report.notes.append("no transcripts found (Transcripts/<turn>.txt): every text is empty")
    for letter, what in NO_CLASS.items():  # the order the summary lists them in
        report.dropped[f"{letter} ({what})"] = 0
    report.dropped["Test3 (no public labels)"] = 0
    for line, r in _records(labels):
        reading.add(f"{labels} line {line}", line, r)
    reading.finish(task)
    return report


class _Reading:
    """The rows of one labels file, read one at a time into a report."""

    def __init__(self, report: SplitReport, classes: tuple[str, ...], wavs: dict, texts: dict) -> None:
        self.report, self.classes, self.wavs, self.texts = report, classes, wavs, texts
        self.outside: Counter = Counter()  # class letters of the 8 that the task leaves out
        self.seen: set[str] = set()
        self.split_names: Counter = Counter()
        self.unknown_speakers = 0

    def label_of(self, where: str, r: dict[str, str]) -> str | None:
        """The row's class, or None for a row left out (counted); a value of another format stops."""
        letter, split_set = r.get("EmoClass", ""), r.get("Split_Set", "")
        if split_set in UNLABELLED_SPLITS:
            self.report.dropped[f"{split_set} (no public labels)"] += 1
            return None
        if split_set not in SPLITS:
            raise MspPodcastError(
                f"{where}: Split_Set {split_set!r} is not one of {', '.join(SPLITS)}, "
                f"{', '.join(sorted(UNLABELLED_SPLITS))} (a release of another format?)"
            )
        if letter in NO_CLASS:
            self.report.dropped[f"{letter} ({NO_CLASS[letter]})"] += 1
            return None
        if letter not in EMOTIONS:
            raise MspPodcastError(
                f"{where}: EmoClass {letter!r} is not one of {' '.join(EMOTIONS)} {' '.join(NO_CLASS)} "
                "(a release of another format?)"
            )
        if EMOTIONS[letter] not in self.classes:
            self.outside[letter] += 1
            return None
        return EMOTIONS[letter]

    def add(self, where: str, line: int, r: dict[str, str]) -> None:
        report, name = self.report, r.get("FileName", "")
        label = self.label_of(where, r)
        if label is None:
            return
        gender = GENDERS.get(r.get("Gender", "").lower())
        if gender is None:
            raise MspPodcastError(f"{where}: Gender {r['Gender']!r} is not Female, Male or Unknown")
        if not name:
            report.problem("no FileName", f"line {line}")
            return
        uid = name[: -len(".wav")] if name.lower().endswith(".wav") else name
        if uid in self.seen:
            report.problem("listed twice (first kept)", uid)
            return
        self.seen.add(uid)
        wav = self.wavs.get(name if name.lower().endswith(".wav") else name + ".wav")
        if wav is None:
            report.problem("no wav in Audios/", uid)
            return
        speaker = r.get("SpkrID", "")
        if speaker.lower() in ("", "unknown"):
            speaker, self.unknown_speakers = UNKNOWN_SPEAKER, self.unknown_speakers + 1
        transcript = self.texts.get(uid + ".txt")
        split = SPLITS[r["Split_Set"]]
        self.split_names[r["Split_Set"]] += 1
        extra = {
            "raw_label": r["EmoClass"],
            "activation": r.get("EmoAct", ""),
            "valence": r.get("EmoVal", ""),
            "dominance": r.get("EmoDom", ""),
        }
        utterance = Utterance(
            id=uid,
            audio=Path(wav),
            text=_read_text(transcript) if transcript else "",
            label=label,
            speaker=speaker,
            session=None,  # official splits, no sessions: written empty
            gender=gender,
            split=split,
            extra=extra,
        )
        report.add(utterance, split)

    def finish(self, task: str) -> None:
        """The notes and warnings of the whole file."""
        report = self.report
        if self.outside:
            letters = " ".join(f"{k} {self.outside[k]}" for k in EMOTIONS if self.outside[k])
            report.dropped[f"not in the {task[0]} classes ({letters})"] = sum(self.outside.values())
        named = ", ".join(f"{k} -> {SPLITS[k]}" for k in SPLITS if self.split_names[k])
        if named:
            report.notes.append(f"splits: {named}")
        if self.unknown_speakers:
            report.notes.append(f"{self.unknown_speakers} rows with SpkrID Unknown: speaker {UNKNOWN_SPEAKER!r}")
        if not self.split_names["Train"]:
            report.warnings.append("no Train rows: check that the release is complete")
