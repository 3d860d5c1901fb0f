"""MSP-Podcast on replica trees in the release's layout: Audios/, Labels/labels_consensus.csv,
Transcripts/; X and O labels, Unknown speakers, Test1/Test2/Test3/Development, an older release
(labels_concensus.csv, Validation, one folder down) and a turn without transcript. The manifest
is read back with the csv module and every row checked against values written out by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.extract_fixtures import write_wav

from ksr.cli import main
from ksr.extract.corpora.msp_podcast import MspPodcastError, prepare_msp_podcast

HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"
# (stem, EmoClass, act, val, dom, SpkrID, Gender, Split_Set, transcript or None)
TURNS = [
    ("MSP-PODCAST_0001_0008", "N", "2.2", "4.0", "2.6", "30", "Male", "Test1", "well I think so"),
    ("MSP-PODCAST_0002_0033", "H", "4.8", "6.2", "4.4", "127", "Female", "Train", "that's great, really"),
    ("MSP-PODCAST_0003_0010", "A", "6.0", "2.0", "5.6", "Unknown", "Unknown", "Train", "stop it now"),
    ("MSP-PODCAST_0004_0001", "S", "2.0", "2.2", "3.0", "45", "Female", "Development", "I miss them"),
    ("MSP-PODCAST_0005_0002", "X", "3.2", "3.6", "3.4", "30", "Male", "Train", "hm"),
    ("MSP-PODCAST_0006_0003", "O", "4.0", "4.0", "4.0", "127", "Female", "Test2", "what"),
    ("MSP-PODCAST_0007_0004", "U", "5.0", "5.0", "4.2", "12", "Male", "Test2", "no way"),
    ("MSP-PODCAST_0008_0005", "C", "4.0", "3.0", "5.0", "Unknown", "Female", "Test1", "sure, sure"),
    ("MSP-PODCAST_0009_0006", "N", "4.0", "4.0", "4.0", "Unknown", "Unknown", "Test3", "hidden"),
    ("MSP-PODCAST_0010_0007", "N", "3.0", "4.2", "3.2", "45", "Female", "Test2", None),  # no transcript
    ("MSP-PODCAST_0011_0008", "H", "5.0", "6.0", "4.0", "12", "Male", "Train", "no wav for me"),
    ("MSP-PODCAST_0012_0009", "F", "5.6", "2.4", "2.8", "127", "Female", "Train", "what was that"),
    ("MSP-PODCAST_0013_0010", "D", "4.4", "2.2", "4.6", "12", "Male", "Development", "gross"),
]
NO_WAV = {"MSP-PODCAST_0011_0008"}


def build_msp(root: Path, *, old: bool = False) -> Path:
    """The replica release under ``root``; ``old``: a 1.x release (labels_concensus.csv,
    Validation for Development), unpacked one folder below ``root``."""
    base = root / "MSP-PODCAST-Publish-1.8" if old else root
    lines = [HEADER]
    for i, (stem, emo, act, val, dom, spk, gender, split, text) in enumerate(TURNS):
        if old and split == "Development":
            split = "Validation"
        if old and split == "Test3":
            continue  # no Test3 before release 1.10
        lines.append(f"{stem}.wav,{emo},{act},{val},{dom},{spk},{gender},{split}")
        if stem not in NO_WAV:
            write_wav(base / "Audios" / f"{stem}.wav", np.full(800 + i, 0.01 * (i + 1), np.float32))
        if text is not None:
            path = base / "Transcripts" / f"{stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"  {text} \n", encoding="utf-8")  # stray spaces and a newline, as typed
    (base / "Audios" / "._MSP-PODCAST_0001_0008.wav").write_bytes(b"\x00\x05\x16\x07junk")
    labels = base / "Labels" / ("labels_concensus.csv" if old else "labels_consensus.csv")
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    (base / "Labels" / "labels_consensus.json").write_text("{}")  # beside it in the release, unused
    return base


# Every row each task must write, worked out by hand from TURNS:
# id: (label, speaker, gender, split, raw, act, val, dom, text)
ROWS_4 = {
    "MSP-PODCAST_0001_0008": ("neu", "30", "M", "test1", "N", "2.2", "4.0", "2.6", "well I think so"),
    "MSP-PODCAST_0002_0033": ("hap", "127", "F", "train", "H", "4.8", "6.2", "4.4", "that's great, really"),
    "MSP-PODCAST_0003_0010": ("ang", "unknown", "U", "train", "A", "6.0", "2.0", "5.6", "stop it now"),
    "MSP-PODCAST_0004_0001": ("sad", "45", "F", "valid", "S", "2.0", "2.2", "3.0", "I miss them"),
    "MSP-PODCAST_0010_0007": ("neu", "45", "F", "test2", "N", "3.0", "4.2", "3.2", ""),
}
ROWS_8 = dict(
    ROWS_4,
    **{
        "MSP-PODCAST_0007_0004": ("sur", "12", "M", "test2", "U", "5.0", "5.0", "4.2", "no way"),
        "MSP-PODCAST_0008_0005": ("con", "unknown", "F", "test1", "C", "4.0", "3.0", "5.0", "sure, sure"),
        "MSP-PODCAST_0012_0009": ("fea", "127", "F", "train", "F", "5.6", "2.4", "2.8", "what was that"),
        "MSP-PODCAST_0013_0010": ("dis", "12", "M", "valid", "D", "4.4", "2.2", "4.6", "gross"),
    },
)
COLUMNS = ["id", "audio", "text", "label", "speaker", "session", "gender", "split", "raw_label"]
COLUMNS += ["activation", "valence", "dominance"]


def _prepare(root: Path, out: Path, *task: str):
    result = CliRunner().invoke(main, ["prepare", "msp-podcast", str(root), "--out", str(out), *task])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader), result.output


def _check_rows(rows: list[dict], expected: dict, base: Path, manifest: Path) -> None:
    assert [r["id"] for r in rows] == [t[0] for t in TURNS if t[0] in expected]  # the labels file's order
    for r in rows:
        label, speaker, gender, split, raw, act, val, dom, text = expected[r["id"]]
        wav = (base / "Audios" / f"{r['id']}.wav").resolve()
        under = wav.is_relative_to(manifest.parent.resolve())  # written relative to the manifest then
        assert r == {
            "id": r["id"],
            "audio": wav.relative_to(manifest.parent.resolve()).as_posix() if under else str(wav),
            "text": text,
            "label": label,
            "speaker": speaker,
            "session": "",
            "gender": gender,
            "split": split,
            "raw_label": raw,
            "activation": act,
            "valence": val,
            "dominance": dom,
        }


def test_4class_rows_and_summary(tmp_path):
    base = build_msp(tmp_path / "msp")
    header, rows, output = _prepare(base, tmp_path / "out" / "manifest.csv")
    assert header == COLUMNS
    _check_rows(rows, ROWS_4, base, tmp_path / "out" / "manifest.csv")
    assert rows[0]["audio"].startswith("/")  # not under the manifest's folder: absolute
    lines = output.splitlines()
    assert lines[1:7] == [
        "split       ang    hap    neu    sad   total  no text",
        "train         1      1      0      0       2        0",
        "valid         0      0      0      1       1        0",
        "test1         0      0      1      0       1        0",
        "test2         0      0      1      0       1        1",
        "all           1      1      2      1       5        1",
    ]
    assert (
        "not written: 1 O (other), 1 X (no agreement), 1 Test3 (no public labels), 4 not in the 4 classes "
        "(U 1 F 1 D 1 C 1)" in lines
    )
    assert "left out, no wav in Audios/: 1 (MSP-PODCAST_0011_0008)" in lines
    assert any(line.startswith("1 rows have no transcript: written with an empty text") for line in lines)
    assert "splits: Train -> train, Development -> valid, Test1 -> test1, Test2 -> test2" in lines
    assert "1 rows with SpkrID Unknown: speaker 'unknown'" in lines
    assert lines[-1] == f"wrote 5 rows to {tmp_path / 'out' / 'manifest.csv'}"


def test_8class_rows(tmp_path):
    base = build_msp(tmp_path / "msp")
    _, rows, output = _prepare(base, tmp_path / "manifest.csv", "--task", "8class")
    _check_rows(rows, ROWS_8, base, tmp_path / "manifest.csv")
    assert rows[0]["audio"] == "msp/Audios/MSP-PODCAST_0001_0008.wav"  # under it: relative
    assert "split       ang    sad    hap    sur    fea    dis    con    neu   total  no text" in output
    assert "not written: 1 O (other), 1 X (no agreement), 1 Test3 (no public labels)\n" in output
    assert "2 rows with SpkrID Unknown: speaker 'unknown'" in output


def test_an_older_release_one_folder_down(tmp_path):
    base = build_msp(tmp_path / "downloads", old=True)
    _, rows, output = _prepare(tmp_path / "downloads", tmp_path / "manifest.csv")
    _check_rows(rows, ROWS_4, base, tmp_path / "manifest.csv")  # Validation is valid, as Development is
    assert "splits: Train -> train, Validation -> valid, Test1 -> test1, Test2 -> test2" in output
    assert "labels: Labels/labels_concensus.csv;" in output


def test_without_transcripts_every_text_is_empty(tmp_path):
    base = build_msp(tmp_path / "msp")
    for path in (base / "Transcripts").iterdir():
        path.unlink()
    (base / "Transcripts").rmdir()
    report = prepare_msp_podcast(base)
    assert [r.text for r in report.rows] == [""] * 5
    assert dict(report.no_text) == {"train": 2, "valid": 1, "test1": 1, "test2": 1}
    assert "no transcripts found (Transcripts/<turn>.txt): every text is empty" in report.notes


def _labels(base: Path) -> Path:
    return base / "Labels" / "labels_consensus.csv"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t.replace("SpkrID,", "Speaker,"),
            "{labels}: not the consensus labels format this release reader knows: no column(s) SpkrID "
            "(expected FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set)",
        ),
        (
            lambda t: t.replace(",Test2\n", ",Test4\n", 1),
            "{labels} line 7: Split_Set 'Test4' is not one of Train, Development, Validation, Test1, Test2, "
            "Test3 (a release of another format?)",
        ),
        (
            lambda t: t.replace(".wav,H,4.8", ".wav,Happy,4.8"),
            "{labels} line 3: EmoClass 'Happy' is not one of A S H U F D C N O X (a release of another format?)",
        ),
        (
            lambda t: t.replace("Female,Development", "Woman,Development", 1),
            "{labels} line 5: Gender 'Woman' is not Female, Male or Unknown",
        ),
        (lambda t: t.replace("Gender,", "EmoClass,", 1), "{labels}: column(s) EmoClass appear more than once"),
    ],
    ids=["column", "split", "class", "gender", "twice"],
)
def test_an_unknown_format_is_refused_in_one_line(tmp_path, change, message):
    base = build_msp(tmp_path / "msp")
    labels = _labels(base)
    labels.write_text(change(labels.read_text(encoding="utf-8")), encoding="utf-8", newline="")
    result = CliRunner().invoke(main, ["prepare", "msp-podcast", str(base), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 1
    assert result.output == f"Error: {message.format(labels=labels)}\n"
    assert not (tmp_path / "m.csv").exists()


def test_a_folder_that_is_no_release(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MspPodcastError) as info:
        prepare_msp_podcast(tmp_path / "empty")
    assert str(info.value) == (
        f"no Labels/labels_consensus.csv (nor Labels/labels_concensus.csv, older releases) in {tmp_path / 'empty'} "
        "or a folder below it: give the MSP-Podcast release folder (with Audios/ and Labels/)"
    )
    base = build_msp(tmp_path / "msp")
    for path in (base / "Audios").iterdir():
        path.unlink()
    (base / "Audios").rmdir()
    with pytest.raises(MspPodcastError, match=r"^no Audios/ folder beside .*Labels \(the release's wav files\)$"):
        prepare_msp_podcast(base)
    with pytest.raises(MspPodcastError, match="unknown task '6class': one of 4class, 8class"):
        prepare_msp_podcast(base, "6class")


def test_a_turn_listed_twice_keeps_its_first_row(tmp_path):
    base = build_msp(tmp_path / "msp")
    with open(_labels(base), "a", encoding="utf-8", newline="") as f:
        f.write("MSP-PODCAST_0002_0033.wav,A,1.0,1.0,1.0,127,Female,Test1\r\n")
    report = prepare_msp_podcast(base)
    assert [r.label for r in report.rows if r.id == "MSP-PODCAST_0002_0033"] == ["hap"]
    assert report.problems["listed twice (first kept)"] == ["MSP-PODCAST_0002_0033"]
    assert report.total == 5


def test_the_manifest_is_never_written_into_the_release(tmp_path):
    build_msp(tmp_path)
    labels = tmp_path / "Labels" / "labels_consensus.csv"
    before = labels.read_bytes()
    args = ["prepare", "msp-podcast", str(tmp_path), "--out", str(labels), "--force"]  # not even with --force
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: --out {labels} is inside the release folder {tmp_path}: write the manifest elsewhere"
    )
    assert labels.read_bytes() == before


def test_prepare_does_not_replace_a_file_without_force(tmp_path):
    base = build_msp(tmp_path / "msp")
    out = tmp_path / "mine.csv"
    out.write_text("my own manifest\n")
    result = CliRunner().invoke(main, ["prepare", "msp-podcast", str(base), "--out", str(out)])
    assert result.exit_code == 1 and result.output == f"Error: {out} exists; pass --force to replace it\n"
    assert out.read_text() == "my own manifest\n"
    forced = CliRunner().invoke(main, ["prepare", "msp-podcast", str(base), "--out", str(out), "--force"])
    assert forced.exit_code == 0 and out.read_text().startswith("id,audio,text,label")
