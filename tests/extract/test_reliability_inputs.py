"""A corpus with every kind of broken item, and manifests that try to write elsewhere.

Each item either works (stereo, other sample rates) or is left out with one line in the errors
file (its stage and reason) and a count in the summary; the run completes, and the counts add up
to the rows of the manifest. A manifest without a column stops the run in one line, before
anything is written. Ids and paths from a manifest never become file names: nothing appears
outside the output directory.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ksr.cache import verify_cache
from ksr.cache.index import scan_dir
from ksr.cli import main
from ksr.extract.corpora.manifest import REQUIRED_COLUMNS, ManifestError, read_manifest
from ksr.extract.encoders import load_encoder
from ksr.extract.pipeline import extract_corpus
from ksr.extract.summary import read_errors

CLASSES = "ang,neu,hap,sad"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("ksr-home")


@pytest.fixture(scope="module")
def encoders(home):
    return (
        load_encoder("tiny-audio", tiny_root=home / "tiny", device="cpu"),
        load_encoder("tiny-text", tiny_root=home / "tiny", device="cpu"),
    )


def _noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    shape = (int(seconds * rate),) + ((channels,) if channels > 1 else ())
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root``; files with their size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        out.update({str(Path(dirpath, name)): (0, 0) for name in dirnames})
        for name in filenames:
            st = Path(dirpath, name).lstat()
            out[str(Path(dirpath, name))] = (st.st_size, st.st_mtime_ns)
    return out


def _stored_ids(out: Path) -> list[str]:
    ids = []
    for _, entry in scan_dir(out).entries():
        with h5py.File(out / entry.file, "r") as f:
            ids += f["id"].asstr()[()].tolist()
    return ids


def _row(uid: str, audio: str, text: str = "Excuse me.", label: str = "neu") -> str:
    return f"{uid},{audio},{text},{label},spk1,1,F"


def _bad_corpus(d: Path) -> tuple[Path, dict[str, tuple[str, str]], set[str]]:
    """The manifest of every broken item; returns it, id -> (stage, reason) of the ones left
    out (a reason ending in '...' is a prefix), and the ids that work."""
    w = d / "wav"
    w.mkdir(parents=True)
    sf.write(w / "mono.wav", _noise(1.0, 16000, seed=1), 16000)
    sf.write(w / "stereo.wav", _noise(1.2, 16000, 2, seed=2), 16000)
    sf.write(w / "rate8k.wav", _noise(0.9, 8000, seed=3), 8000)
    sf.write(w / "rate44k.wav", _noise(1.1, 44100, 2, seed=4), 44100)
    (w / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk that is no audio" * 8)
    (w / "empty.wav").write_bytes(b"")
    sf.write(w / "zero.wav", np.zeros(0, np.float32), 16000)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        x = _noise(1.0, 16000, seed=5)
        x[1234] = value
        sf.write(w / f"{name}.wav", x, 16000, subtype="FLOAT")
    (w / "folder.wav").mkdir()
    os.mkfifo(w / "pipe.wav")  # opening it would block the run forever
    lines = [
        ",".join(REQUIRED_COLUMNS),
        _row("ok_mono", "wav/mono.wav", label="ang"),  # line 2
        _row("ok_stereo", "wav/stereo.wav", label="hap"),
        _row("ok_8k", "wav/rate8k.wav", label="sad"),
        _row("ok_44k", "wav/rate44k.wav"),  # line 5
        _row("junk", "wav/junk.wav"),
        _row("empty_file", "wav/empty.wav"),
        _row("zero_length", "wav/zero.wav"),
        _row("nan", "wav/nan.wav"),
        _row("inf", "wav/inf.wav"),  # line 10
        _row("missing", "wav/missing.wav"),
        _row("folder", "wav/folder.wav"),
        _row("pipe", "wav/pipe.wav"),
        _row("no_text", "wav/mono.wav", text=" "),
        _row("unknown_label", "wav/mono.wav", label="fru"),  # line 15
        _row("ok_mono", "wav/stereo.wav"),  # duplicate id
        _row("nul_text", "wav/mono.wav", text="a\x00b"),
        "few_fields,wav/mono.wav,Hello",
    ]
    manifest = d / "manifest.csv"
    data = ("\n".join(lines) + "\n").encode("utf-8")
    data += b"latin1,wav/mono.wav,caf\xe9 au lait,neu,spk1,1,F\n"  # line 19
    manifest.write_bytes(data)
    left_out = {
        "junk": ("audio", "unreadable audio junk.wav: ..."),
        "empty_file": ("audio", "unreadable audio empty.wav: the file is empty (0 bytes)"),
        "zero_length": ("audio", "empty audio: zero.wav has no samples"),
        "nan": ("audio", "audio nan.wav contains NaN or infinite samples"),
        "inf": ("audio", "audio inf.wav contains NaN or infinite samples"),
        "missing": ("audio", f"audio file not found: {w.resolve() / 'missing.wav'}"),
        "folder": (
            "audio",
            f"audio path is not a regular file (a folder, pipe or device): {w.resolve() / 'folder.wav'}",
        ),
        "pipe": ("audio", f"audio path is not a regular file (a folder, pipe or device): {w.resolve() / 'pipe.wav'}"),
        "no_text": ("manifest", "line 14: empty transcript"),
        "unknown_label": ("label", f"label 'fru' is not one of the classes {CLASSES}"),
        "ok_mono": ("manifest", "line 16: duplicate id (first on line 2)"),
        "nul_text": ("manifest", "line 17: text contains a NUL byte"),
        "few_fields": ("manifest", "line 18: 3 fields, the header has 7"),
        "latin1": ("manifest", "line 19: text is not valid UTF-8"),
    }
    return manifest, left_out, {"ok_mono", "ok_stereo", "ok_8k", "ok_44k"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_every_bad_item_is_reported_and_the_rest_extracted(tmp_path, home, encoders, monkeypatch):
    manifest, left_out, works = _bad_corpus(tmp_path / "corpus")
    out = tmp_path / "cache"
    args = [
        "extract",
        str(manifest),
        "--out",
        str(out),
        "--audio-encoder",
        "tiny-audio",
        "--text-encoder",
        "tiny-text",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--classes",
        CLASSES,
        "--no-progress",
    ]
    monkeypatch.setenv("KSR_CACHE_DIR", str(home))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rows = 18  # data records of the manifest (the one with 3 fields included)
    assert r.output.splitlines()[0] == (
        f"{rows} manifest rows: 0 stored before, 4 extracted now, 1 skipped (label not in the "
        f"classes), 13 failed (manifest 5, audio 8)"
    )
    assert 4 + 1 + 13 == rows
    assert f"errors file: {out / 'errors-w0.tsv'} (14 lines: one per utterance left out)" in r.output
    lines = read_errors(out / "errors-w0.tsv")
    got = {uid: (stage, reason) for uid, stage, reason in lines}
    assert len(lines) == len(got) == len(left_out)  # one line each
    for uid, (stage, reason) in left_out.items():
        assert got[uid][0] == stage, (uid, got[uid])
        if reason.endswith("..."):
            assert got[uid][1].startswith(reason[:-3]), (uid, got[uid])
        else:
            assert got[uid][1] == reason, (uid, got[uid])
    stored = _stored_ids(out)
    assert sorted(stored) == sorted(works)
    assert len(stored) + len(lines) == rows  # nothing dropped silently, nothing twice
    assert verify_cache(out, progress=False).ok
    # A rerun: the stored four are skipped, the failures retried and reported again.
    again = CliRunner().invoke(main, args)
    assert again.output.splitlines()[0] == (
        f"{rows} manifest rows: 4 stored before, 0 extracted now, 1 skipped (label not in the "
        f"classes), 13 failed (manifest 5, audio 8)"
    )
    assert read_errors(out / "errors-w0.tsv") == lines


def test_a_missing_column_stops_before_anything_is_written(tmp_path, home, monkeypatch):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,audio,text,speaker,session,gender\nu1,a.wav,Hi,spk1,1,F\n", encoding="utf-8")
    out = tmp_path / "cache"
    monkeypatch.setenv("KSR_CACHE_DIR", str(home))
    before = _tree(tmp_path)
    r = CliRunner().invoke(
        main,
        ["extract", str(manifest), "--out", str(out), "--audio-encoder", "tiny-audio", "--text-encoder", "tiny-text"],
    )
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {manifest}: missing column(s) label (a manifest needs id, "
        f"audio, text, label, speaker, session, gender)\n"
    )
    assert _tree(tmp_path) == before and not out.exists()


def test_csv_damage_is_a_clear_line(tmp_path):
    """An unbalanced quote: the record that swallowed the following lines says so; one that
    runs past the CSV field limit stops the whole file, naming the line."""
    head = ",".join(REQUIRED_COLUMNS) + "\n"
    swallow = tmp_path / "swallow.csv"
    swallow.write_text(
        head + 'a,a.wav,"Hello,neu,s,1,F\nb,b.wav,Hi,neu,s,1,F\nc,c.wav,Hi,neu,s,1,F\n', encoding="utf-8"
    )
    m = read_manifest(swallow, strict=False)
    assert m.rows == [] and [str(p) for p in m.problems] == [
        "line 2 (a): 3 fields, the header has 7 (this record runs over lines 2-4: an unbalanced quote?)"
    ]
    huge = tmp_path / "huge.csv"
    huge.write_text(head + 'a,a.wav,"' + "x" * 200_000 + "\nb,b.wav,Hi,neu,s,1,F\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        read_manifest(huge, strict=False)
    assert str(info.value) == (
        f"{huge} line 2: not readable as CSV (field larger than field "
        f"limit (131072)); check the quoting up to this line"
    )


def test_control_characters_in_ids_are_refused_per_row(tmp_path):
    head = ",".join(REQUIRED_COLUMNS) + "\n"
    path = tmp_path / "m.csv"
    path.write_text(
        head + 'ok,a.wav,Hi,neu,s,1,F\n"tab\there",a.wav,Hi,neu,s,1,F\n'
        "nul\x00id,a.wav,Hi,neu,s,1,F\nspk_nul,a.wav,Hi,neu,s\x00x,1,F\n",
        encoding="utf-8",
    )
    m = read_manifest(path, strict=False)
    assert [r.id for r in m.rows] == ["ok"]
    assert [str(p) for p in m.problems] == [
        "line 3 (tab\there): id contains the control character '\\t'",
        "line 4 (nul\x00id): id contains a NUL byte",
        "line 5 (spk_nul): speaker contains a NUL byte",
    ]


def test_ids_and_paths_never_write_outside_the_output_directory(tmp_path, encoders):
    work = tmp_path / "work"
    corpus = work / "corpus" / "in"
    corpus.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sf.write(corpus / "a.wav", _noise(0.8, 16000, seed=8), 16000)
    sf.write(elsewhere / "b.wav", _noise(0.7, 16000, seed=9), 16000)
    (elsewhere / "notes.txt").write_text("not audio\n")
    evil = [
        ("../../evil", "a.wav"),
        ("../evil2", "../in/a.wav"),
        (str(tmp_path / "abs_evil"), str(elsewhere / "b.wav")),
        ("a/b/c", "./a.wav"),
        ("..", "a.wav"),
        (".", "a.wav"),
        ("~/evil", "a.wav"),
        ("index-w0.json", "a.wav"),
        ("shard-w0-00000.h5", "a.wav"),
        ("errors-w0.tsv", "a.wav"),
        ("notes", str(elsewhere / "notes.txt")),
        ("up", "../../../elsewhere/b.wav"),
    ]
    manifest = corpus / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(REQUIRED_COLUMNS)
        for i, (uid, audio) in enumerate(evil):
            w.writerow([uid, audio, "Excuse me.", ["neu", "../lbl"][i % 2], "../../spk", 1, "F"])
    out = work / "out" / "cache"
    before = _tree(tmp_path)
    summary = extract_corpus(
        manifest, out, *encoders, dtype="float32", progress=False, shard_size=5, corpus="../../corpus"
    )
    after = _tree(tmp_path)
    new = {p for p in after if p not in before or after[p] != before[p]}
    assert new and all(Path(p).is_relative_to(out) or p in (str(out.parent), str(out)) for p in new), sorted(new)
    assert summary.failed == {"audio": 1} and summary.extracted == len(evil) - 1  # notes.txt
    assert sorted(_stored_ids(out)) == sorted(uid for uid, _ in evil if uid != "notes")
    assert verify_cache(out, progress=False).ok
