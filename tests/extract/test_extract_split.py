"""The manifest's optional ``split`` column: its values, empty sessions beside it, writing it
back, and extraction storing each utterance's split in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.cli_runner import invoke_ksr
from support.tiny import TINY_MODEL

from ksr.cache import open_cache
from ksr.extract.corpora.manifest import ManifestError, Utterance, check_manifest, read_manifest, write_manifest
from ksr.extract.encoders import load_encoder
from ksr.extract.pipeline import extract_corpus

HEADER = "id,audio,text,label,speaker,session,gender,split\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_split_column_is_read_and_sessions_may_be_empty(tmp_path):
    path = _write(
        tmp_path,
        HEADER
        + "a,a.wav,t,neu,s1,,F,train\nb,b.wav,t,ang,s2,,M,valid\nc,c.wav,t,sad,s1,,F,test1\n"
        + "d,d.wav,t,hap,s3,4,U,test2\ne,e.wav,t,neu,s3,,U,test\n",
    )
    m = read_manifest(path)
    assert [(r.id, r.session, r.split) for r in m] == [
        ("a", None, "train"),
        ("b", None, "valid"),
        ("c", None, "test1"),
        ("d", 4, "test2"),
        ("e", None, "test"),
    ]
    assert m.extra_columns == ()  # split has a meaning: it is not an extra column
    summary, errors = check_manifest(m)
    assert "sessions: 4: 1, (none): 4" in summary
    assert "splits: test: 1, test1: 1, test2: 1, train: 1, valid: 1" in summary


@pytest.mark.parametrize(
    "row, reason",
    [
        ("a,a.wav,t,neu,s,,F,dev", r"split 'dev' is not train, valid, test, or test followed by lowercase"),
        ("a,a.wav,t,neu,s,,F,Test1", r"split 'Test1' is not train, valid, test"),
        ("a,a.wav,t,neu,s,,F,test-1", r"split 'test-1' is not"),
        ("a,a.wav,t,neu,s,,F,", r"empty split \(use train, valid, test"),
        ("a,a.wav,t,neu,s,x,F,train", r"session 'x' is not an integer"),
    ],
)
def test_bad_split_rows_are_one_line_naming_file_and_line(tmp_path, row, reason):
    path = _write(tmp_path, HEADER + "z,z.wav,t,neu,s,,F,train\n" + row + "\n")
    with pytest.raises(ManifestError, match=rf"^{path} line 3 \(a\): {reason}") as info:
        read_manifest(path)
    assert "\n" not in str(info.value)
    lenient = read_manifest(path, strict=False)  # lenient: the row is a per-row problem
    assert [r.id for r in lenient] == ["z"] and len(lenient.problems) == 1
    assert str(lenient.problems[0]).startswith("line 3 (a): ")


def test_empty_session_needs_a_split_column(tmp_path):
    path = _write(tmp_path, "id,audio,text,label,speaker,session,gender\na,a.wav,t,neu,s,,F\n")
    with pytest.raises(ManifestError, match=r"line 2 \(a\): empty session \(only a manifest with a split column"):
        read_manifest(path)


def test_split_round_trips_through_write_manifest(tmp_path):
    rows = [
        Utterance("u1", tmp_path / "u1.wav", "Hi.", "neu", "p1", None, "F", split="train"),
        Utterance("u2", tmp_path / "u2.wav", "Yo.", "ang", "p2", None, "M", split="test2", extra={"raw": "x"}),
    ]
    path = write_manifest(tmp_path / "m.csv", rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "id,audio,text,label,speaker,session,gender,split,raw"
    assert lines[1] == "u1,u1.wav,Hi.,neu,p1,,F,train,"
    back = read_manifest(path)
    assert [(r.id, r.session, r.split, dict(r.extra)) for r in back] == [
        ("u1", None, "train", {"raw": ""}),
        ("u2", None, "test2", {"raw": "x"}),
    ]
    plain = write_manifest(tmp_path / "p.csv", [Utterance("u", tmp_path / "u.wav", "t", "neu", "s", 1, "F")])
    assert plain.read_text().splitlines()[0] == "id,audio,text,label,speaker,session,gender"
    with pytest.raises(ManifestError, match="clash"):
        write_manifest(tmp_path / "x.csv", rows, extra_columns=["split"])


def test_extraction_stores_each_utterance_split(tmp_path):
    (tmp_path / "wav").mkdir()
    rng = np.random.default_rng(0)
    splits = ["train", "train", "valid", "test1", "test2", "train", "valid", "test1"]
    lines = [HEADER.strip()]
    for i, split in enumerate(splits):
        sf.write(tmp_path / "wav" / f"u{i}.wav", (0.1 * rng.standard_normal(4000)).astype(np.float32), 16000)
        lines.append(f"u{i},wav/u{i}.wav,Sentence {i}.,{'neu' if i % 2 else 'ang'},p{i % 3},,F,{split}")
    lines.append("bad,wav/u0.wav,x,neu,p0,,F,dev")  # a per-item error, as any bad row
    manifest = _write(tmp_path, "\n".join(lines) + "\n")
    tiny = tmp_path / "tiny"
    encoders = (
        load_encoder("tiny-audio", tiny_root=tiny, device="cpu"),
        load_encoder("tiny-text", tiny_root=tiny, device="cpu"),
    )
    summary = extract_corpus(manifest, tmp_path / "cache", *encoders, progress=False, classes=["ang", "neu"])
    assert summary.extracted == len(splits)
    with open_cache(tmp_path / "cache", progress=False) as cache:
        assert dict(zip(cache.ids, cache.splits.tolist(), strict=True)) == {f"u{i}": s for i, s in enumerate(splits)}
        assert set(cache.sessions.tolist()) == {""}
    # The manifest's splits are the run's sets, from the file to split.json.
    args = ["train", "--cache", "cache", "--run", "run", "--protocol", "split", "--epochs", "1", "--no-baseline"]
    result = invoke_ksr([*args, *TINY_MODEL, "--batch-size", "4", "--device", "cpu"], tmp_path)
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run/seed123/split/split.json").read_text())
    by_split = {name: sorted(f"u{i}" for i, s in enumerate(splits) if s == name) for name in set(splits)}
    assert sorted(recorded["train"]) == by_split["train"] and sorted(recorded["valid"]) == by_split["valid"]
    assert {k: sorted(v) for k, v in recorded["tests"].items()} == {
        "test1": by_split["test1"],
        "test2": by_split["test2"],
    }
