"""MELD: read the release (three CSVs and the mp4 clips) and build the 7-class manifest.

The release's format (``shared/reference/corpora.md``):

- ``train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv``, columns ``Sr No.,Utterance,
  Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime``. The
  transcript is ``Utterance``: it holds commas and quotes (standard CSV quoting), and copies
  older than the MELD repository's fix of November 2020 (those of ``MELD.Raw.tar.gz`` among them)
  carry Windows cp1252 punctuation inside otherwise UTF-8 text, in two forms: as C1 control
  characters (0x92 written as the valid UTF-8 of U+0092: 3,492 of them in train_sent_emo.csv,
  with 0x85, 0x91, 0x93, 0x94, 0x96, 0x97) or as raw bytes that are not UTF-8 at all. Each line is
  decoded as UTF-8, only the offending bytes of a line that is not are read as cp1252, and
  U+0080..U+009F are read as the cp1252 characters they stand for (U+0092 -> U+2019); the summary
  says how many lines needed each.
- Clips ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4`` in ``train_splits/``, ``dev_splits_complete/``
  and ``output_repeated_splits_test/`` (test clips may be named ``final_videos_testdia..``);
  these folders sit in the release folder or below it (``train/``, ``dev/``, ``test/``), as the
  archives were unpacked. The same ``dia{D}_utt{U}`` occurs in every split, so the manifest id
  carries its split: ``train_dia0_utt0``, ``valid_dia0_utt0``, ``test_dia0_utt0``.

Emotions become ksr's class names (IEMOCAP's where IEMOCAP has the emotion; joy is hap); the
word as written is kept in ``raw_label``, the sentiment in ``sentiment``. MELD records no gender:
the six main characters' are known (F/M), everyone else's is U. A row whose clip is missing is
left out and named in the summary; the rest goes on. A missing CSV or media folder, a missing
column, or an emotion this module does not know is refused in one line naming the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections import Counter
from pathlib import Path

from ...common import KsrError
from .manifest import Utterance
from .splits import UNKNOWN_SPEAKER, SplitReport

SPLITS: tuple[str, ...] = ("train", "valid", "test")
CSV_FILES: dict[str, str] = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
MEDIA_FOLDERS: dict[str, str] = {
    "train": "train_splits",
    "valid": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}
COLUMNS: tuple[str, ...] = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
EMOTIONS: dict[str, str] = {
    "anger": "ang",
    "disgust": "dis",
    "fear": "fea",
    "joy": "hap",
    "neutral": "neu",
    "sadness": "sad",
    "surprise": "sur",
}
CLASSES: tuple[str, ...] = ("ang", "dis", "fea", "hap", "neu", "sad", "sur")
#: Rows per CSV of the complete release, and the train split's classes (reference/corpora.md).
EXPECTED_ROWS: dict[str, int] = {"train": 9989, "valid": 1109, "test": 2610}
TRAIN_COUNTS: dict[str, int] = {"ang": 1109, "dis": 271, "fea": 268, "hap": 1743, "neu": 4710, "sad": 683, "sur": 1205}
#: MELD records no gender; the main cast's is known. Everyone else (and "All", "Man", ...) is U.
MAIN_CAST: dict[str, str] = {"Chandler": "M", "Joey": "M", "Ross": "M", "Monica": "F", "Phoebe": "F", "Rachel": "F"}
_CLIP = re.compile(r"^(?P<prefix>final_videos_test)?dia(?P<d>\d+)_utt(?P<u>\d+)\.mp4$", re.ASCII)


class MeldError(KsrError, ValueError):
    """The folder given is not a MELD release this module knows."""


def _cp1252_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decode the bytes UTF-8 refused as cp1252 (0x92 -> U+2019); its 5 unused bytes -> U+FFFD."""
    return err.object[err.start : err.end].decode("cp1252", errors="replace"), err.end


codecs.register_error("ksr-meld-cp1252", _cp1252_bytes)
#: U+0080..U+009F (C1 controls, never text) -> the cp1252 character of the same byte value.
_C1 = str.maketrans({c: bytes([c]).decode("cp1252", errors="replace") for c in range(0x80, 0xA0)})
_HAS_C1 = re.compile("[\u0080-\u009f]")


def decode_lines(data: bytes) -> tuple[str, int, int]:
    """``data`` as text, line by line: UTF-8, and in lines that are not, the stray bytes as
    cp1252; then C1 controls as the cp1252 characters they stand for. Returns the text, the
    number of lines with bytes that are not UTF-8, and the number with C1 controls."""
    out, raw, c1 = [], 0, 0
    for line in data.splitlines(keepends=True):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("utf-8", errors="ksr-meld-cp1252")
            raw += 1
        if _HAS_C1.search(text):
            text = text.translate(_C1)
            c1 += 1
        out.append(text)
    return "".join(out).removeprefix("\ufeff"), raw, c1


def _candidates(root: Path, name: str) -> list[Path]:
    """``root/name``, ``root/*/name``, ``root/*/*/name``, shallowest first."""
    found = []
    for pattern in (name, f"*/{name}", f"*/*/{name}"):
        hidden = (p for p in root.glob(pattern) if any(part.startswith(".") for part in p.relative_to(root).parts))
        found.extend(sorted(set(root.glob(pattern)) - set(hidden)))
    return found


def find_release(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The three CSVs and the three media folders under ``root`` (or up to two folders below)."""
    if not root.is_dir():
        raise MeldError(f"not a folder: {root}")
    csvs, media = {}, {}
    for split in SPLITS:
        files = [p for p in _candidates(root, CSV_FILES[split]) if p.is_file()]
        if not files:
            raise MeldError(
                f"no {CSV_FILES[split]} in {root} or up to two folders below it: give the MELD release folder "
                f"(with {', '.join(CSV_FILES.values())} and the clip folders)"
            )
        csvs[split] = files[0]
        folders = [p for p in _candidates(root, MEDIA_FOLDERS[split]) if p.is_dir()]
        if not folders:
            raise MeldError(
                f"no {MEDIA_FOLDERS[split]}/ folder (the {split} clips) in {root} or up to two folders below it: "
                "unpack MELD.Raw's archives there"
            )
        media[split] = folders[0]
    return csvs, media


def index_clips(folder: Path) -> tuple[dict[tuple[int, int], Path], int]:
    """(dialogue, utterance) -> clip in ``folder``, and how many names carry the test prefix; a
    plain name wins over a prefixed one for the same utterance."""
    clips: dict[tuple[int, int], Path] = {}
    prefixed = 0
    for entry in sorted(os.scandir(folder.resolve()), key=lambda e: e.name):  # absolute paths
        m = _CLIP.match(entry.name)
        if m is None or not entry.is_file():
            continue  # ._ files, .DS_Store, other junk
        key = (int(m["d"]), int(m["u"]))
        if m["prefix"]:
            prefixed += 1
            clips.setdefault(key, Path(entry.path))
        else:
            clips[key] = Path(entry.path)
    return clips, prefixed


def _records(path: Path):
    """The (line, record) rows of one MELD CSV, after checking its header, and the numbers of
    lines mended (see :func:`decode_lines`)."""
    text, *mended = decode_lines(path.read_bytes())
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:  # csv would keep the last copy of a column silently
            raise MeldError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise MeldError(f"{path}: not the MELD format this reader knows: no column(s) {', '.join(missing)}")
        reader.fieldnames = header
        line = reader.line_num + 1
        rows = []
        for record in reader:
            rows.append((line, {k: (v or "").strip() for k, v in record.items() if k is not None}))
            line = reader.line_num + 1
    except csv.Error as err:
        raise MeldError(f"{path} line {reader.line_num}: not readable as CSV ({err})") from None
    return rows, mended


def _int(value: str, column: str, where: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise MeldError(f"{where}: {column} {value!r} is not a whole number")
    return int(value)


def prepare_meld(root: str | os.PathLike) -> SplitReport:
    """Read a MELD release and return its 7-class rows with an account of everything left out.
    Rows are in split, then file order; ``audio`` is the absolute clip path; ``session`` is None
    (written empty) and ``split`` names the official partition."""
    root = Path(root)
    csvs, media = find_release(root)
    report = SplitReport(corpus="MELD 7-class", root=root.resolve(), classes=CLASSES, splits=SPLITS)
    unknown_speakers = 0
    for split in SPLITS:
        path = csvs[split]
        clips, prefixed = index_clips(media[split])
        records, mended = _records(path)
        rel = os.path.relpath(path, root)
        report.notes.append(
            f"{split}: {rel}, clips in {os.path.relpath(media[split], root)}/"
            + (f" ({prefixed} named final_videos_test...)" if prefixed else "")
        )
        raw, c1 = mended
        if raw:
            report.notes.append(
                f"{rel}: {raw} line(s) not valid UTF-8, their stray bytes read as cp1252 (0x92 -> \u2019)"
            )
        if c1:
            report.notes.append(
                f"{rel}: {c1} line(s) with cp1252 punctuation stored as control characters, read as meant "
                "(U+0092 -> \u2019)"
            )
        if len(records) != EXPECTED_ROWS[split]:
            report.warnings.append(f"{rel} has {len(records)} rows, the release's has {EXPECTED_ROWS[split]}")
        labels: Counter = Counter()
        seen: set[tuple[int, int]] = set()
        for line, r in records:
            where = f"{path} line {line}"
            emotion = r["Emotion"].lower()
            if emotion not in EMOTIONS:
                raise MeldError(f"{where}: Emotion {r['Emotion']!r} is not one of {', '.join(EMOTIONS)}")
            key = (_int(r["Dialogue_ID"], "Dialogue_ID", where), _int(r["Utterance_ID"], "Utterance_ID", where))
            uid = f"{split}_dia{key[0]}_utt{key[1]}"
            labels[EMOTIONS[emotion]] += 1
            if key in seen:
                report.problem("listed twice (first kept)", uid)
                continue
            seen.add(key)
            if key not in clips:
                report.problem("clip missing", uid)
                continue
            speaker = " ".join(r["Speaker"].split())
            if not speaker:
                speaker, unknown_speakers = UNKNOWN_SPEAKER, unknown_speakers + 1
            report.add(
                Utterance(
                    id=uid,
                    audio=clips[key],
                    text=" ".join(r["Utterance"].split()),
                    label=EMOTIONS[emotion],
                    speaker=speaker,
                    session=None,  # official splits, no sessions: written empty
                    gender=MAIN_CAST.get(speaker, "U"),
                    split=split,
                    extra={
                        "raw_label": emotion,
                        "sentiment": r["Sentiment"].lower(),
                        "dialogue_id": str(key[0]),
                        "utterance_id": str(key[1]),
                        "season": r.get("Season", ""),
                        "episode": r.get("Episode", ""),
                        "episode_start": r.get("StartTime", ""),  # in the episode, not in the clip
                        "episode_end": r.get("EndTime", ""),
                    },
                ),
                split,
            )
        if split == "train" and len(records) == EXPECTED_ROWS["train"] and dict(labels) != TRAIN_COUNTS:
            report.warnings.append(f"{rel}: class counts differ from the release's ({TRAIN_COUNTS})")
    report.notes.append("raw emotion in raw_label (joy -> hap); gender F/M for the six main characters, U otherwise")
    if unknown_speakers:
        report.notes.append(f"{unknown_speakers} rows with no speaker: speaker {UNKNOWN_SPEAKER!r}")
    return report
