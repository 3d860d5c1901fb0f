"""MELD on replica trees in the release's layout: three *_sent_emo.csv files whose Utterance
column holds quotes, commas and stray cp1252 bytes (0x92) in otherwise UTF-8 text; generic and
empty speakers; clip folders flat or nested one level down; test clips named
final_videos_test...; a missing clip. The manifest is read back with the csv module and every row
checked against values written out by hand."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ksr.cli import main
from ksr.extract.corpora.meld import MeldError, decode_lines, prepare_meld

HEADER = b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
TRAIN = [
    b'1,"also I was the point person on my company\xe2\x80\x99s transition from the KL-5 to GR-6 system.",'
    b'Chandler,neutral,neutral,0,0,8,21,"00:16:16,059","00:16:21,731"',
    b'2,You must\x92ve had your hands full.,The Interviewer,neutral,neutral,0,1,8,21,"00:16:21,940","00:16:23,442"',
    b'3,"Oh, ""quotes"" and, commas!",Joey,joy,positive,0,2,8,21,"00:16:24,000","00:16:25,500"',
    b'4,"Caf\xc3\xa9? I don\x92t know\x85",Rachel,sadness,negative,1,0,2,3,"00:01:00,000","00:01:02,000"',
    b'5,Where is my clip?,Ross,anger,negative,1,1,2,3,"00:01:03,000","00:01:04,000"',
    b'6,Surprise!,All,surprise,positive,2,0,5,6,"00:10:00,000","00:10:01,000"',
    b'7,  Hmm.  ,,fear,negative,2,1,5,6,"00:10:02,000","00:10:03,000"',
]
DEV = [
    # the form of the MELD.Raw copies: cp1252 codes as C1 controls, valid UTF-8 (U+0092, U+0085)
    b'1,He\xc2\x92s  gross\xc2\x85,Monica,disgust,negative,0,0,4,1,"00:02:00,000","00:02:01,500"',
    b'2,"Okay, fine.",Phoebe,neutral,neutral,0,1,4,1,"00:02:02,000","00:02:03,000"',
]
TEST = [
    b'1,Why not?,Mr. Geller,anger,negative,0,0,9,9,"00:03:00,000","00:03:01,000"',
    b'2,"Yes, yes!",Monica,joy,positive,3,2,9,9,"00:03:02,000","00:03:03,000"',
]
CLIPS = {  # the files present, per split (train dia1_utt1 has none)
    "train": ["dia0_utt0.mp4", "dia0_utt1.mp4", "dia0_utt2.mp4", "dia1_utt0.mp4", "dia2_utt0.mp4", "dia2_utt1.mp4"],
    "dev": ["dia0_utt0.mp4", "dia0_utt1.mp4"],
    "test": ["final_videos_testdia0_utt0.mp4", "dia3_utt2.mp4"],
}
FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def build_meld(root: Path, *, nested: bool = False) -> Path:
    """The replica under ``root``: flat (CSVs and clip folders in it), or ``nested`` as MELD.Raw's
    archives unpack (``MELD.Raw/`` with the CSVs, ``MELD.Raw/{train,dev,test}/<clip folder>``)."""
    base = root / "MELD.Raw" if nested else root
    base.mkdir(parents=True, exist_ok=True)
    for name, rows, end in (("train", TRAIN, b"\n"), ("dev", DEV, b"\r\n"), ("test", TEST, b"\n")):
        (base / f"{name}_sent_emo.csv").write_bytes(end.join([HEADER, *rows]) + end)
        folder = (base / name if nested else base) / FOLDERS[name]
        folder.mkdir(parents=True)
        for clip in CLIPS[name]:
            (folder / clip).write_bytes(b"not decoded by prepare")
        (folder / f"._{CLIPS[name][0]}").write_bytes(b"\x00\x05\x16\x07")  # macOS junk
    return base


# id: (text, label, speaker, gender, split, raw_label, sentiment, dialogue, utterance, season,
#      episode, start, end, clip path relative to the replica's base)
ROWS = {
    "train_dia0_utt0": (
        "also I was the point person on my company\u2019s transition from the KL-5 to GR-6 system.",
        "neu", "Chandler", "M", "train", "neutral", "neutral", "0", "0", "8", "21",
        "00:16:16,059", "00:16:21,731", "train_splits/dia0_utt0.mp4",
    ),
    "train_dia0_utt1": (
        "You must\u2019ve had your hands full.",
        "neu", "The Interviewer", "U", "train", "neutral", "neutral", "0", "1", "8", "21",
        "00:16:21,940", "00:16:23,442", "train_splits/dia0_utt1.mp4",
    ),
    "train_dia0_utt2": (
        'Oh, "quotes" and, commas!',
        "hap", "Joey", "M", "train", "joy", "positive", "0", "2", "8", "21",
        "00:16:24,000", "00:16:25,500", "train_splits/dia0_utt2.mp4",
    ),
    "train_dia1_utt0": (
        "Caf\u00e9? I don\u2019t know\u2026",
        "sad", "Rachel", "F", "train", "sadness", "negative", "1", "0", "2", "3",
        "00:01:00,000", "00:01:02,000", "train_splits/dia1_utt0.mp4",
    ),
    "train_dia2_utt0": (
        "Surprise!",
        "sur", "All", "U", "train", "surprise", "positive", "2", "0", "5", "6",
        "00:10:00,000", "00:10:01,000", "train_splits/dia2_utt0.mp4",
    ),
    "train_dia2_utt1": (
        "Hmm.",
        "fea", "unknown", "U", "train", "fear", "negative", "2", "1", "5", "6",
        "00:10:02,000", "00:10:03,000", "train_splits/dia2_utt1.mp4",
    ),
    "valid_dia0_utt0": (
        "He\u2019s gross\u2026",
        "dis", "Monica", "F", "valid", "disgust", "negative", "0", "0", "4", "1",
        "00:02:00,000", "00:02:01,500", "dev_splits_complete/dia0_utt0.mp4",
    ),
    "valid_dia0_utt1": (
        "Okay, fine.",
        "neu", "Phoebe", "F", "valid", "neutral", "neutral", "0", "1", "4", "1",
        "00:02:02,000", "00:02:03,000", "dev_splits_complete/dia0_utt1.mp4",
    ),
    "test_dia0_utt0": (
        "Why not?",
        "ang", "Mr. Geller", "U", "test", "anger", "negative", "0", "0", "9", "9",
        "00:03:00,000", "00:03:01,000", "output_repeated_splits_test/final_videos_testdia0_utt0.mp4",
    ),
    "test_dia3_utt2": (
        "Yes, yes!",
        "hap", "Monica", "F", "test", "joy", "positive", "3", "2", "9", "9",
        "00:03:02,000", "00:03:03,000", "output_repeated_splits_test/dia3_utt2.mp4",
    ),
}  # fmt: skip
COLUMNS = ["id", "audio", "text", "label", "speaker", "session", "gender", "split", "raw_label", "sentiment"]
COLUMNS += ["dialogue_id", "utterance_id", "season", "episode", "episode_start", "episode_end"]


def _clip(base: Path, rel: str, nested: bool) -> Path:
    if nested:  # train_splits/x.mp4 -> train/train_splits/x.mp4
        folder = rel.split("/")[0]
        split = next(k for k, v in FOLDERS.items() if v == folder)
        rel = f"{split}/{rel}"
    return (base / rel).resolve()


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_every_row_of_the_manifest(tmp_path, nested):
    base = build_meld(tmp_path / "meld", nested=nested)
    out = tmp_path / "out" / "meld.csv"
    result = CliRunner().invoke(main, ["prepare", "meld", str(tmp_path / "meld"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert [r["id"] for r in rows] == list(ROWS)  # split, then file order
    for r in rows:
        text, label, spk, gender, split, raw, sent, d, u, season, ep, start, end, clip = ROWS[r["id"]]
        assert r == {
            "id": r["id"],
            "audio": str(_clip(base, clip, nested)),
            "text": text,
            "label": label,
            "speaker": spk,
            "session": "",
            "gender": gender,
            "split": split,
            "raw_label": raw,
            "sentiment": sent,
            "dialogue_id": d,
            "utterance_id": u,
            "season": season,
            "episode": ep,
            "episode_start": start,
            "episode_end": end,
        }
    lines = result.output.splitlines()
    assert lines[1:6] == [
        "split       ang    dis    fea    hap    neu    sad    sur   total  no text",
        "train         0      0      1      1      2      1      1       6        0",
        "valid         0      1      0      0      1      0      0       2        0",
        "test          1      0      0      1      0      0      0       2        0",
        "all           1      1      1      2      3      1      1      10        0",
    ]
    assert "left out, clip missing: 1 (train_dia1_utt1)" in lines
    csv_dir = "MELD.Raw/" if nested else ""
    assert (
        f"{csv_dir}train_sent_emo.csv: 2 line(s) not valid UTF-8, their stray bytes read as cp1252 (0x92 -> \u2019)"
        in lines
    )
    media = "MELD.Raw/test/" if nested else ""
    assert (
        f"test: {csv_dir}test_sent_emo.csv, clips in {media}output_repeated_splits_test/ (1 named final_videos_test...)"
        in lines
    )
    assert (
        f"{csv_dir}dev_sent_emo.csv: 1 line(s) with cp1252 punctuation stored as control characters, read as "
        "meant (U+0092 -> \u2019)" in lines
    )
    assert not any(line.startswith(f"{csv_dir}test_sent_emo.csv: ") for line in lines)  # clean UTF-8: nothing done
    assert "1 rows with no speaker: speaker 'unknown'" in lines
    assert f"warning: {csv_dir}train_sent_emo.csv has 7 rows, the release's has 9989" in lines
    assert lines[-1] == f"wrote 10 rows to {out}"


def test_line_robust_decoding():
    text, raw, c1 = decode_lines(b"\xef\xbb\xbfa,b\ncaf\xc3\xa9 \x92ok\x81\r\nplain\nc1 \xc2\x93q\xc2\x94\n")
    # 0x81 is unused in cp1252; U+0093/U+0094 are cp1252's curly double quotes
    assert text == "a,b\ncaf\u00e9 \u2019ok\ufffd\r\nplain\nc1 \u201cq\u201d\n"
    assert (raw, c1) == (1, 1)


def test_a_release_inside_a_hidden_folder_is_found_and_hidden_copies_below_it_are_not(tmp_path):
    root = tmp_path / ".cache" / "meld"
    build_meld(root, nested=True)  # CSVs one folder down, clips two
    (root / ".trash" / "train" / "train_splits").mkdir(parents=True)  # as deep, sorted first, hidden
    (root / ".trash" / "train_sent_emo.csv").write_bytes(HEADER + b"\n")
    report = prepare_meld(root)
    assert report.total == 10
    assert report.notes[0] == "train: MELD.Raw/train_sent_emo.csv, clips in MELD.Raw/train/train_splits/"


def test_a_prefixed_and_a_plain_clip_of_one_utterance(tmp_path):
    base = build_meld(tmp_path / "meld")
    (base / "output_repeated_splits_test" / "dia0_utt0.mp4").write_bytes(b"x")
    report = prepare_meld(base)
    assert next(r.audio for r in report.rows if r.id == "test_dia0_utt0").name == "dia0_utt0.mp4"


def _refused(tmp_path, message: str) -> None:
    out = tmp_path / "m.csv"
    result = CliRunner().invoke(main, ["prepare", "meld", str(tmp_path / "meld"), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    assert not out.exists()


def test_a_missing_csv_or_clip_folder_is_refused(tmp_path):
    base = build_meld(tmp_path / "meld")
    (base / "dev_sent_emo.csv").rename(base / "dev.csv")
    _refused(
        tmp_path,
        f"no dev_sent_emo.csv in {base} or up to two folders below it: give the MELD release folder (with "
        "train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv and the clip folders)",
    )
    (base / "dev.csv").rename(base / "dev_sent_emo.csv")
    (base / "output_repeated_splits_test").rename(base / "test_clips")
    _refused(
        tmp_path,
        f"no output_repeated_splits_test/ folder (the test clips) in {base} or up to two folders below it: "
        "unpack MELD.Raw's archives there",
    )


@pytest.mark.parametrize(
    "old, new, message",
    [
        (b"Emotion,", b"Emo,", "{csv}: not the MELD format this reader knows: no column(s) Emotion"),
        (b",joy,", b",happy,", "{csv} line 4: Emotion 'happy' is not one of anger, disgust, fear, joy, neutral, "
         "sadness, surprise"),
        (b",0,2,8,", b",0,x2,8,", "{csv} line 4: Utterance_ID 'x2' is not a whole number"),
        (b"Sentiment,", b"Emotion,", "{csv}: column(s) Emotion appear more than once"),
    ],
    ids=["column", "emotion", "id", "twice"],
)  # fmt: skip
def test_an_unknown_format_is_refused_in_one_line(tmp_path, old, new, message):
    base = build_meld(tmp_path / "meld")
    path = base / "train_sent_emo.csv"
    path.write_bytes(path.read_bytes().replace(old, new, 1))
    _refused(tmp_path, message.format(csv=path))


def test_not_a_folder(tmp_path):
    with pytest.raises(MeldError) as info:
        prepare_meld(tmp_path / "nowhere")
    assert str(info.value) == f"not a folder: {tmp_path / 'nowhere'}"


def test_without_pyav_prepare_says_extraction_will_need_it(tmp_path, monkeypatch):
    build_meld(tmp_path / "meld")
    monkeypatch.setitem(sys.modules, "av", None)  # find_spec("av") is None, as when not installed
    out = tmp_path / "m.csv"
    result = CliRunner().invoke(main, ["prepare", "meld", str(tmp_path / "meld"), "--out", str(out)])
    assert result.exit_code == 0 and out.is_file()
    assert result.output.splitlines()[-1] == (
        "warning: PyAV is not installed: ksr extract cannot decode the mp4 clips without it (pip install 'ksr[video]')"
    )
