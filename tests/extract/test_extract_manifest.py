"""The manifest: reading with validation, writing, the documented example, ``ksr prepare check``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ksr.cli import main
from ksr.extract.corpora.manifest import ManifestError, Utterance, read_manifest, write_manifest

HEADER = "id,audio,text,label,speaker,session,gender\n"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


def _write(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_rows_and_resolves_audio(tmp_path):
    path = _write(
        tmp_path, HEADER + 'a,wav/a.wav,Hello there.,neu,s1,3,f\nb,/abs/b.flac,"Well, ""no"": never.",ang,s2,1,M\n'
    )
    m = read_manifest(path)
    assert [r.id for r in m] == ["a", "b"]
    a, b = m.rows
    assert a.audio == tmp_path.resolve() / "wav" / "a.wav"
    assert b.audio == Path("/abs/b.flac")
    assert b.text == 'Well, "no": never.'
    assert (a.session, a.gender, a.start, a.end, dict(a.extra)) == (3, "F", None, None, {})
    assert m.labels == ["ang", "neu"]


def test_round_trip_keeps_everything(tmp_path):
    rows = [
        Utterance(
            "u1",
            tmp_path / "audio" / "u1.wav",
            'Text, with "quotes": and\nnewline é',
            "hap",
            "spk1",
            2,
            "F",
            start=1.25,
            end=3.5,
            extra={"raw_label": "exc"},
        ),
        Utterance(
            "u2", Path("/elsewhere/u2.wav"), "Plain.", "sad", "spk2", 5, "U", extra={"raw_label": "sad", "note": "x"}
        ),
    ]
    path = write_manifest(tmp_path / "m.csv", rows)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ("id,audio,text,label,speaker,session,gender,start,end,raw_label,note")
    assert ",audio/u1.wav," in text and ",/elsewhere/u2.wav," in text  # relative under root
    back = read_manifest(path)
    assert back.rows[0] == Utterance(
        "u1",
        (tmp_path / "audio" / "u1.wav").resolve(),
        rows[0].text,
        "hap",
        "spk1",
        2,
        "F",
        1.25,
        3.5,
        {"raw_label": "exc", "note": ""},
    )
    assert back.rows[1].extra == {"raw_label": "sad", "note": "x"}
    assert back.extra_columns == ("raw_label", "note")
    assert not list(tmp_path.glob(".m.csv.*"))  # no temporary file left


def test_writer_refuses_clashing_extra_column(tmp_path):
    row = Utterance("u1", tmp_path / "a.wav", "t", "hap", "s", 1, "F", extra={"label": "x"})
    with pytest.raises(ManifestError, match=r"extra column\(s\) label clash"):
        write_manifest(tmp_path / "m.csv", [row])


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "a,a.wav,t,neu,s,1,M\n").encode())
    assert read_manifest(path).rows[0].id == "a"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "",
            r"m\.csv is empty: a manifest starts with a header line naming the columns id, "
            r"audio, text, label, speaker, session, gender$",
        ),
        (
            "id,audio,text,speaker,session\n",
            r"m\.csv: missing column\(s\) label, gender \(a "
            r"manifest needs id, audio, text, label, speaker, "
            r"session, gender\)$",
        ),
        ("id,audio,text,label,speaker,session,gender,id\n", r"m\.csv: column\(s\) id appear more than once$"),
        (HEADER, r"m\.csv has a header but no rows$"),
        (
            HEADER + "a,a.wav,t,neu,s,1,F\nb,b.wav,t,neu,s,1,F\na,c.wav,t,neu,s,1,F\n",
            r"m\.csv line 4 \(a\): duplicate id \(first on line 2\)$",
        ),
        (HEADER + ",a.wav,t,neu,s,1,F\n", r"m\.csv line 2: empty id$"),
        (HEADER + "a,,t,neu,s,1,F\n", r"line 2 \(a\): empty audio$"),
        (HEADER + "a,a.wav,  ,neu,s,1,F\n", r"line 2 \(a\): empty transcript$"),
        (HEADER + "a,a.wav,t,,s,1,F\n", r"line 2 \(a\): empty label$"),
        (HEADER + "a,a.wav,t,neu,s,one,F\n", r"line 2 \(a\): session 'one' is not an integer \(digits 0-9\)$"),
        # int() reads these as 10, 1, 1 and -1: a session number is ASCII digits only
        (HEADER + "a,a.wav,t,neu,s,1_0,F\n", r"line 2 \(a\): session '1_0' is not an integer \(digits 0-9\)$"),
        (HEADER + "a,a.wav,t,neu,s,\u0661,F\n", r"line 2 \(a\): session '\u0661' is not an integer \(digits 0-9\)$"),
        (HEADER + "a,a.wav,t,neu,s,+1,F\n", r"line 2 \(a\): session '\+1' is not an integer \(digits 0-9\)$"),
        (HEADER + "a,a.wav,t,neu,s,-1,F\n", r"line 2 \(a\): session '-1' is not an integer \(digits 0-9\)$"),
        (HEADER + "a,a.wav,t,neu,s,1,X\n", r"line 2 \(a\): gender 'X' is not F, M or U"),
        (HEADER + "a,a.wav,t,neu,s,1\n", r"line 2 \(a\): 6 fields, the header has 7$"),
        (HEADER + "a,a.wav,t,neu,s,1,F,extra\n", r"line 2 \(a\): 8 fields, the header has 7$"),
        (
            HEADER.strip() + ",start,end\na,a.wav,t,neu,s,1,F,2.0,1.0\n",
            r"line 2 \(a\): end 1 s is not after start 2 s$",
        ),
        (
            HEADER.strip() + ",start\na,a.wav,t,neu,s,1,F,soon\n",
            r"line 2 \(a\): start 'soon' is not a number of seconds$",
        ),
    ],
)
def test_errors_are_one_clear_line(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match=r"^manifest not found: .*nope\.csv$"):
        read_manifest(tmp_path / "nope.csv")


def test_line_numbers_count_multiline_texts(tmp_path):
    path = _write(tmp_path, HEADER + 'a,a.wav,"two\nlines",neu,s,1,F\nb,b.wav,t,neu,s,x,F\n')
    with pytest.raises(ManifestError, match=r"line 4 \(b\): session 'x'"):
        read_manifest(path)


def test_lenient_reading_collects_problems(tmp_path):
    path = _write(
        tmp_path, HEADER + "a,a.wav,t,neu,s,1,F\na,b.wav,t,neu,s,1,F\nc,c.wav,,neu,s,1,F\nd,d.wav,t,sad,s,2,M\n"
    )
    m = read_manifest(path, strict=False)
    assert [r.id for r in m] == ["a", "d"]
    assert [str(p) for p in m.problems] == [
        "line 3 (a): duplicate id (first on line 2)",
        "line 4 (c): empty transcript",
    ]


def _docs_example() -> str:
    match = re.search(r"```csv\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert match, "docs/manifest.md has no ```csv example"
    return match.group(1)


def test_documented_example_is_a_valid_manifest(tmp_path):
    m = read_manifest(_write(tmp_path, _docs_example()))
    assert [r.id for r in m] == ["spk01_0001", "spk01_0002", "spk02_0001", "spk02_0002"]
    seg = m.rows[2]
    assert (seg.start, seg.end, seg.text) == (12.5, 15.75, 'She said: "not today".')
    assert m.rows[3].audio == Path("/data/other/spk02_0002.wav")
    assert m.rows[0].extra == {"raw_label": "surprised-happy"}


def test_cli_check(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    path = _write(tmp_path, HEADER + "a,a.wav,t,neu,s1,1,F\nb,b.wav,t,sad,s2,2,M\nb,b2.wav,t,sad,s2,2,M\n")
    result = CliRunner().invoke(main, ["prepare", "check", str(path)])
    assert result.exit_code == 1
    assert "2 usable rows, 2 speakers" in result.stdout
    assert "labels: neu 1, sad 1" in result.stdout
    assert "error: line 4 (b): duplicate id (first on line 3)" in result.stderr
    assert f"error: b: audio file not found: {tmp_path.resolve() / 'b.wav'}" in result.stderr
    assert "Error: 1 bad rows, 1 missing audio files" in result.stderr


@pytest.mark.parametrize(
    "encoding, what",
    [
        ("utf-16", "UTF-16 text (little-endian: it starts with that byte-order mark)"),
        ("utf-16-le", "UTF-16 text (little-endian: every other byte of its header is NUL)"),
        ("utf-16-be", "UTF-16 text (big-endian: every other byte of its header is NUL)"),
        ("utf-32", "UTF-32 text (little-endian: it starts with that byte-order mark)"),
        ("utf-32-be", None),  # no mark: 3 NULs, then a letter; not guessed, read as (bad) UTF-8
    ],
)
def test_a_utf16_or_utf32_manifest_is_named_as_such(tmp_path, encoding, what):
    path = tmp_path / "m.csv"
    path.write_bytes((HEADER + "a,a.wav,t,neu,s,1,F\n").encode(encoding))
    with pytest.raises(ManifestError) as info:
        read_manifest(path, strict=False)
    if what is None:
        assert "missing column(s)" in str(info.value)
        return
    enc = what.split()[0]
    assert str(info.value) == (
        f"{path} is {what}, not UTF-8: save it as UTF-8 (e.g. iconv -f {enc} -t UTF-8 m.csv > manifest-utf8.csv)"
    )


def test_utf8_with_a_bom_and_a_nul_in_a_row_are_not_utf16(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(("\ufeff" + HEADER + "a,a.wav,t,neu,s,1,F\nb\x00,a.wav,t,neu,s,1,F\n").encode("utf-8"))
    m = read_manifest(path, strict=False)
    assert [r.id for r in m] == ["a"] and [str(p) for p in m.problems] == ["line 3 (b\x00): id contains a NUL byte"]


def test_a_quoted_line_break_in_an_id_is_named_not_blamed_on_quotes(tmp_path):
    path = _write(tmp_path, HEADER + '"a\nb",a.wav,t,neu,s,1,F\nc,c.wav,t,neu,s,1,F\n')
    m = read_manifest(path, strict=False)
    assert [r.id for r in m] == ["c"]
    assert [str(p) for p in m.problems] == [
        "line 2 (a\nb): id contains a line break (inside quotes): an id must be one line"
    ]
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert str(info.value).endswith("line 2 (a\nb): id contains a line break (inside quotes): an id must be one line")
    assert "unbalanced" not in str(info.value)
    crlf = _write(tmp_path, HEADER + '"a\r\n",x.wav,t,neu,s,1,F\n"d\re",a.wav,t,neu,s,1,F\n')
    assert [str(p) for p in read_manifest(crlf, strict=False).problems] == [
        "line 4 (d\re): id contains a line break (inside quotes): an id must be one line"
    ]  # "a\r\n" (lines 2-3) is "a" once its surrounding space is stripped, as every field is


def test_prepare_check_names_a_utf16_manifest_in_one_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes((HEADER + "a,a.wav,t,neu,s,1,F\n").encode("utf-16"))
    r = CliRunner().invoke(main, ["prepare", "check", str(path)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.splitlines()[-1] == (
        f"Error: {path} is UTF-16 text (little-endian: it starts with that byte-order mark), not UTF-8: save it "
        f"as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 m.csv > manifest-utf8.csv)"
    )
