"""The duration guard: a file (or segment) whose header gives more than ``--max-duration``
seconds (default 600) is refused before any sample is decoded, with one line in the errors
file; the limit can be raised, and is not part of the cache."""

from __future__ import annotations

import csv
import os
import struct

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ksr.cache import open_cache
from ksr.cli import main
from ksr.extract.audio import MAX_DURATION_S, AudioError, read_audio
from ksr.extract.summary import read_errors


def sparse_wav(path, seconds: float, rate: int = 16000):
    """A 16-bit mono WAV of ``seconds`` of silence whose samples take no disk space (a hole)."""
    data = int(seconds * rate) * 2
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    )
    path.write_bytes(header + b"data" + struct.pack("<I", data))
    os.truncate(path, 44 + data)
    return path


def absurd_flac(path):
    """A one-second FLAC whose STREAMINFO claims 2**36 - 1 samples (49.7 days at 16 kHz):
    reading what the header promises would need terabytes."""
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16", format="FLAC")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    packed = int.from_bytes(data[18:26], "big") | ((1 << 36) - 1)  # the low 36 bits: total samples
    data[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    assert sf.info(str(path)).frames == (1 << 36) - 1
    return path


def noise(path, seconds: float, rate: int = 16000):
    rng = np.random.default_rng(int(seconds * 10))
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate, subtype="FLOAT")
    return path


def test_the_default_limit_refuses_a_long_file_before_decoding_it(tmp_path):
    assert MAX_DURATION_S == 600.0
    long = sparse_wav(tmp_path / "long.wav", 700)
    with pytest.raises(AudioError) as err:
        read_audio(long)
    assert str(err.value) == (
        "long.wav: 700.0 s of audio by its header, more than the 600 s one file may decode to "
        "(--max-duration raises the limit)"
    )
    # A segment of it is what would be decoded: five seconds are fine.
    assert len(read_audio(long, start=100.0, end=105.0)) == 5 * 16000
    # At the limit exactly: read (a 600 s file of silence).
    assert len(read_audio(sparse_wav(tmp_path / "edge.wav", 600))) == 600 * 16000


def test_a_header_claiming_an_absurd_length(tmp_path):
    with pytest.raises(AudioError, match=r"^huge\.flac: 4294967\.3 s of audio by its header, more than the 600 s "):
        read_audio(absurd_flac(tmp_path / "huge.flac"))


def test_the_limit_is_a_parameter(tmp_path):
    three = noise(tmp_path / "three.wav", 3.0)
    with pytest.raises(AudioError, match=r"^three\.wav: 3\.0 s of audio by its header, more than the 2\.5 s "):
        read_audio(three, max_duration=2.5)
    assert len(read_audio(three, max_duration=3.0)) == 48000
    assert len(read_audio(three, max_duration=None)) == 48000
    with pytest.raises(ValueError, match="max_duration must be a positive number of seconds, not 0"):
        read_audio(three, max_duration=0)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    noise(root / "short.wav", 1.0)
    noise(root / "three.wav", 3.0)
    sparse_wav(root / "long.wav", 700)
    absurd_flac(root / "huge.flac")
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "gender"])
        for uid, name in (("u_short", "short.wav"), ("u_three", "three.wav"), ("u_long", "long.wav")):
            w.writerow([uid, name, "Excuse me.", "neu", "s1", 1, "F"])
        w.writerow(["u_huge", "huge.flac", "Excuse me.", "ang", "s1", 1, "F"])
    return root


def _extract(corpus, out, *extra, home):
    args = ["extract", corpus / "manifest.csv", "--out", out, "--audio-encoder", "tiny-audio"]
    args += ["--text-encoder", "tiny-text", "--device", "cpu", "--no-progress", *extra]
    return CliRunner(env={"KSR_CACHE_DIR": str(home)}).invoke(main, [str(a) for a in args])


def test_extract_refuses_long_files_per_item_and_a_rerun_may_raise_the_limit(corpus, tmp_path):
    home, out = tmp_path / "home", tmp_path / "cache"
    r = _extract(corpus, out, "--max-duration", "2.5", home=home)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == (
        "4 manifest rows: 0 stored before, 1 extracted now, 0 skipped (label not in the classes), 3 failed (audio 3)"
    )
    hint = "(--max-duration raises the limit)"
    assert sorted(read_errors(out / "errors-w0.tsv")) == [
        (
            "u_huge",
            "audio",
            f"huge.flac: 4294967.3 s of audio by its header, more than the 2.5 s one file may decode to {hint}",
        ),
        (
            "u_long",
            "audio",
            f"long.wav: 700.0 s of audio by its header, more than the 2.5 s one file may decode to {hint}",
        ),
        (
            "u_three",
            "audio",
            f"three.wav: 3.0 s of audio by its header, more than the 2.5 s one file may decode to {hint}",
        ),
    ]
    # The default limit (600 s) lets the 3 s file through; the limit is not in the cache, so the
    # same cache continues.
    again = _extract(corpus, out, home=home)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[0] == (
        "4 manifest rows: 1 stored before, 1 extracted now, 0 skipped (label not in the classes), 2 failed (audio 2)"
    )
    assert [e[0] for e in sorted(read_errors(out / "errors-w0.tsv"))] == ["u_huge", "u_long"]
    with open_cache(out, progress=False) as cache:
        assert cache.ids == ["u_short", "u_three"]


def test_a_bad_limit_is_refused_in_one_line(corpus, tmp_path):
    for value, why in (("0", "not in the range x>0"), ("-3", "not in the range x>0"), ("abc", "is not a valid float")):
        r = _extract(corpus, tmp_path / "cache", "--max-duration", value, home=tmp_path / "home")
        assert r.exit_code == 2 and "--max-duration" in r.output and why in r.output, r.output
    r = _extract(corpus, tmp_path / "cache", "--max-duration", "nan", home=tmp_path / "home")
    assert r.exit_code == 1
    assert r.output.splitlines()[-1] == "Error: max_duration must be a positive number of seconds, not nan"
