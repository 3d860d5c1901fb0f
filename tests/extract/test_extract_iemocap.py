"""IEMOCAP parsing on a replica tree in the release's formats and quirks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.extract_fixtures import build_iemocap_replica

from ksr.cli import main
from ksr.extract.corpora.iemocap import (
    EXPECTED_COUNTS,
    IemocapError,
    format_report,
    parse_emo_evaluation,
    parse_transcription,
    parse_utterance_id,
    prepare_iemocap,
)
from ksr.extract.corpora.manifest import read_manifest

# Worked out by hand from tests/extract_fixtures.REPLICA (not computed from it).
EXPECTED_ROWS = {
    # id: (label, raw_label, speaker, gender, session)
    "Ses01F_impro01_F000": ("neu", "neu", "Ses01F", "F", 1),
    "Ses01F_impro01_M000": ("hap", "exc", "Ses01M", "M", 1),
    "Ses01F_impro01_F002": ("ang", "ang", "Ses01F", "F", 1),
    "Ses01M_script01_1_F000": ("sad", "sad", "Ses01F", "F", 1),
    "Ses01M_script01_1_M000": ("hap", "hap", "Ses01M", "M", 1),
    "Ses02F_impro02_F000": ("sad", "sad", "Ses02F", "F", 2),
    "Ses03M_impro05a_M012": ("ang", "ang", "Ses03M", "M", 3),
    "Ses03M_impro05a_F012": ("sad", "sad", "Ses03F", "F", 3),
    "Ses03M_impro08b_F000": ("hap", "exc", "Ses03F", "F", 3),
    "Ses04F_script02_2_M020": ("neu", "neu", "Ses04M", "M", 4),
    "Ses05M_script01_1b_F003": ("hap", "hap", "Ses05F", "F", 5),
    "Ses05M_script01_1b_M003": ("neu", "neu", "Ses05M", "M", 5),
}
EXPECTED_SKIPPED = {
    "per-annotator and other subfolders": 15,  # Attribute/Categorical/Self-evaluation x 5
    "AppleDouble ._ files": 4,
    "transcript lines that are no utterance": 2,  # "M: [GARBAGE]", "F: [LAUGHTER]"
    "transcript lines without a labelled id": 3,  # MXX0, FXX0, F001 (no label)
}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_iemocap_replica(tmp_path_factory.mktemp("iemocap"))


def test_rows_labels_speakers_and_genders(release):
    report = prepare_iemocap(release)
    got = {r.id: (r.label, r.extra["raw_label"], r.speaker, r.gender, r.session) for r in report.rows}
    assert got == EXPECTED_ROWS
    assert report.total == 12
    assert report.complete


def test_text_keeps_colons_and_tokens(release):
    rows = {r.id: r for r in prepare_iemocap(release).rows}
    assert rows["Ses01F_impro01_F002"].text == "Listen: I told you twice: no. [LAUGHTER]"
    assert rows["Ses05M_script01_1b_F003"].text == "That is the funniest thing: really."
    assert rows["Ses01F_impro01_F000"].text == "Excuse me."


def test_wav_paths_and_extra_columns(release):
    row = {r.id: r for r in prepare_iemocap(release).rows}["Ses05M_script01_1b_F003"]
    assert (
        row.audio == (release / "Session5/sentences/wav/Ses05M_script01_1b" / "Ses05M_script01_1b_F003.wav").resolve()
    )
    assert row.extra["dialog"] == "Ses05M_script01_1b"
    assert (row.extra["dialog_start"], row.extra["dialog_end"]) == ("0.2901", "2.2357")
    assert (row.extra["valence"], row.extra["activation"], row.extra["dominance"]) == ("2.5000", "3.0000", "2.0000")
    assert row.start is None and row.end is None  # dialog times do not cut the sentence wav


def test_counts_skips_and_dropped(release):
    report = prepare_iemocap(release)
    assert {s: dict(c) for s, c in report.counts.items()} == {
        1: {"ang": 1, "hap": 2, "neu": 1, "sad": 1},
        2: {"sad": 1},
        3: {"ang": 1, "hap": 1, "sad": 1},
        4: {"neu": 1},
        5: {"hap": 1, "neu": 1},
    }
    assert {s: (g["F"], g["M"]) for s, g in report.genders.items()} == {
        1: (3, 2),
        2: (1, 0),
        3: (2, 1),
        4: (0, 1),
        5: (1, 1),
    }
    assert dict(report.skipped) == EXPECTED_SKIPPED
    assert dict(report.raw_counts) == {
        "neu": 3,
        "exc": 2,
        "xxx": 1,
        "fru": 1,
        "ang": 2,
        "sad": 3,
        "hap": 2,
        "sur": 1,
        "fea": 1,
        "oth": 1,
    }


def test_complete_release_not_giving_5531_warns(release):
    warnings = prepare_iemocap(release).warnings
    assert (
        "a complete release gives 5531 4-class utterances, this copy gave 12: check that "
        "it is complete and unmodified" in warnings
    )
    assert "Session1 gives 5 4-class utterances, the release has 1085" in warnings
    assert len(warnings) == 6  # the total and the five sessions


def test_parent_folder_is_accepted(release):
    assert prepare_iemocap(release.parent).root == release


def test_not_a_release(tmp_path):
    with pytest.raises(
        IemocapError,
        match=r"no Session1\.\.Session5 folders in .*: give the "
        r"path of IEMOCAP_full_release/",
    ):
        prepare_iemocap(tmp_path)


def test_partial_release_warns_but_not_about_5531(tmp_path):
    release = build_iemocap_replica(tmp_path)
    for session in (2, 4):
        for path in sorted((release / f"Session{session}").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (release / f"Session{session}").rmdir()
    report = prepare_iemocap(release)
    assert report.sessions == [1, 3, 5] and not report.complete
    assert report.total == 10
    assert report.warnings[0] == "partial release: Session2, Session4 not found"
    assert not any("5531" in w for w in report.warnings)


def test_missing_wav_and_transcript_are_reported(tmp_path):
    release = build_iemocap_replica(tmp_path, drop_wav="Ses03M_impro05a_F012", drop_transcript="Ses01F_impro01_M000")
    report = prepare_iemocap(release)
    ids = {r.id for r in report.rows}
    assert ids == set(EXPECTED_ROWS) - {"Ses03M_impro05a_F012", "Ses01F_impro01_M000"}
    assert "1 4-class utterances left out, no wav: Ses03M_impro05a_F012" in report.warnings
    assert "1 4-class utterances left out, no transcript: Ses01F_impro01_M000" in report.warnings


def test_parse_utterance_id_reads_the_last_field():
    assert parse_utterance_id("Ses03M_impro05a_F012") == (3, "Ses03M_impro05a", "F")
    assert parse_utterance_id("Ses05M_script01_1b_M003") == (5, "Ses05M_script01_1b", "M")
    assert parse_utterance_id("Ses01F_impro01_MXX0") is None
    assert parse_utterance_id("M: [GARBAGE]") is None


def test_only_ascii_digits_are_numbers_in_ids_and_times(tmp_path):
    """Python's \\d and float() also take Arabic-Indic digits: such an id must not become a
    session 1 utterance, nor such a time a segment."""
    assert parse_utterance_id("Ses\u0660\u0661F_impro01_F000") is None  # Ses٠١F...
    assert parse_utterance_id("Ses01F_impro01_F\u0660\u0660\u0660") is None
    path = tmp_path / "e.txt"
    path.write_text(
        "[\u0666.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F001\tneu\t[2.5000, 2.5000, 2.5000]\n",
        encoding="utf-8",
    )
    entries, malformed = parse_emo_evaluation(path)
    assert [e.id for e in entries] == ["Ses01F_impro01_F001"] and malformed == 1


def test_parse_transcription_quirks(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me: you dropped [LAUGHTER] this.\n"
        "Ses01F_impro01_M000: No times here: still text.\n"
        "Ses01F_impro01_F001 [010.0000-011.0000]:\n"
        "Ses01F_impro01_MXX0 [012.0000-013.5000]: [BREATHING]\n"
        "M: [GARBAGE]\n"
        "\n"
        "Ses01F_impro01_F002 without separator\n"
    )
    texts, not_utterances, unlabelled = parse_transcription(path)
    assert texts == {
        "Ses01F_impro01_F000": "Excuse me: you dropped [LAUGHTER] this.",
        "Ses01F_impro01_M000": "No times here: still text.",
        "Ses01F_impro01_F001": "",
    }
    assert (not_utterances, unlabelled) == (2, 1)


def test_parse_emo_evaluation_reads_summary_lines_only(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"
        "[10.0100 - 11.3925]\tSes01F_impro01_M000\txxx\t[2.0000, 3.5000, 3.0000]\n"
        "[broken line\n"
    )
    entries, malformed = parse_emo_evaluation(path)
    assert [(e.id, e.label, e.start, e.end, e.vad) for e in entries] == [
        ("Ses01F_impro01_F000", "neu", 6.2901, 8.2357, ("2.5000", "2.5000", "2.5000")),
        ("Ses01F_impro01_M000", "xxx", 10.01, 11.3925, ("2.0000", "3.5000", "3.0000")),
    ]
    assert malformed == 1


def test_reference_table_sums_to_5531():
    assert sum(sum(c.values()) for c in EXPECTED_COUNTS.values()) == 5531
    assert sum(c["hap"] for c in EXPECTED_COUNTS.values()) == 1636


def test_format_report_table(release):
    text = format_report(prepare_iemocap(release))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:8]}
    assert rows["1"] == ["1", "1", "2", "1", "1", "5", "3/2", "1085"]
    assert rows["3"] == ["3", "1", "1", "0", "1", "3", "2/1", "1151"]
    assert rows["all"] == ["all", "2", "4", "3", "3", "12", "5531"]
    assert "hap = 2 hap + 2 exc (merged)" in text
    assert "dropped (not in the 4 classes): xxx 1, fru 1, sur 1, fea 1, oth 1" in text
    assert (
        "skipped 24 entries that are not data: 4 AppleDouble ._ files, 15 per-annotator "
        "and other subfolders, 2 transcript lines that are no utterance, 3 transcript "
        "lines without a labelled id"
    ) in text


def test_cli_prepare_iemocap(release, tmp_path):
    out = tmp_path / "out" / "manifest.csv"
    result = CliRunner().invoke(main, ["prepare", "iemocap", str(release), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 12 rows to" in result.stdout
    assert "warning: a complete release gives 5531" in result.stderr
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == [
        "id",
        "audio",
        "text",
        "label",
        "speaker",
        "session",
        "gender",
        "raw_label",
        "dialog",
        "dialog_start",
        "dialog_end",
        "valence",
        "activation",
        "dominance",
    ]
    manifest = read_manifest(out)
    assert {r.id: (r.label, r.extra["raw_label"], r.speaker, r.gender, r.session) for r in manifest} == EXPECTED_ROWS
    assert all(r.audio.is_file() for r in manifest)


def test_cli_prepare_not_a_release(tmp_path):
    result = CliRunner().invoke(main, ["prepare", "iemocap", str(tmp_path), "-o", str(tmp_path / "m.csv")])
    assert result.exit_code == 1
    assert "Error: no Session1..Session5 folders" in result.output
    assert not (tmp_path / "m.csv").exists()


def test_prepare_does_not_replace_a_file_without_force(release, tmp_path):
    out = tmp_path / "mine.csv"
    out.write_text("my own manifest\n")
    result = CliRunner().invoke(main, ["prepare", "iemocap", str(release), "--out", str(out)])
    assert result.exit_code == 1 and result.output == f"Error: {out} exists; pass --force to replace it\n"
    assert out.read_text() == "my own manifest\n"
    forced = CliRunner().invoke(main, ["prepare", "iemocap", str(release), "--out", str(out), "--force"])
    assert forced.exit_code == 0 and len(read_manifest(out)) == 12
