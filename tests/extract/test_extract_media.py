"""mp4/AAC clips (MELD's audio) decoded with PyAV into 16 kHz mono, and broken clips as one-line
per-item errors. The clips are made here with PyAV from a known 48 kHz stereo signal."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from support.media import RATE, TONES, stereo_tones, write_mp4

from ksr.extract.audio import AudioError, probe_seconds, read_audio, resample
from ksr.extract.corpora.manifest import Utterance
from ksr.extract.plan import utterance_seconds as plan_seconds

pytest.importorskip("av")

SECONDS = 1.0
N48 = int(SECONDS * RATE)
# AAC codes 1024-sample frames; the mp4's edit list removes the encoder's priming samples at the
# start (measured: the decoded signal lines up with the input at lag 0) but the last frame is
# decoded whole, so a clip decodes to n..n+1023 samples at 48 kHz, i.e. n/3..(n+1023)/3 at 16 kHz.
MIN_LEN, MAX_LEN = N48 // 3, (N48 + 1023) // 3 + 1


def _expected_16k() -> np.ndarray:
    """What a lossless copy of the clip gives: the channel mean, resampled by soxr."""
    return resample(stereo_tones(SECONDS).mean(axis=0).astype(np.float32), RATE, 16000)


def _amplitude(x: np.ndarray, freq: float, rate: int = 16000) -> float:
    """Amplitude of the ``freq`` component of ``x`` (a whole number of cycles in 1 s)."""
    n = rate  # the first second: 440 and 660 Hz fall on exact bins, no leakage
    spectrum = np.fft.rfft(x[:n].astype(np.float64))
    return 2 * abs(spectrum[int(round(freq * n / rate))]) / n


@pytest.mark.parametrize("video", [False, True], ids=["audio-only", "with-picture"])
def test_an_aac_clip_decodes_to_16k_mono_close_to_its_signal(tmp_path, video):
    clip = write_mp4(tmp_path / "dia0_utt0.mp4", SECONDS, video=video)
    wav = read_audio(clip)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert MIN_LEN <= len(wav) <= MAX_LEN, len(wav)
    # Mono is the channel MEAN (a sum would double these; no resampling would put the tones
    # at a third of their frequency): 0.5/2 at 440 Hz and 0.3/2 at 660 Hz. AAC is lossy; 5%
    # of each amplitude is well above its error on two steady tones (measured 1.8% and 0.05%).
    for (freq, amp), got in zip(TONES, (_amplitude(wav, f) for f, _ in TONES), strict=True):
        assert got == pytest.approx(amp / 2, rel=0.05), (freq, got)
    assert _amplitude(wav, 1000.0) < 0.005  # nothing where the signal has nothing
    # Sample by sample against a lossless reading: the AAC coding noise (FFmpeg's encoder at its
    # default 128 kb/s) measured 12.5% of the signal's RMS (about -18 dB, most of it in the first
    # 0.2 s, where the coder adapts); 20% still fails a shift by one sample at 16 kHz (23%).
    ref = _expected_16k()
    err = wav[: len(ref)] - ref[: len(wav)]
    assert np.sqrt(np.mean(err**2)) < 0.2 * np.sqrt(np.mean(ref**2))


def test_the_picture_is_skipped_and_changes_no_sample(tmp_path):
    plain = read_audio(write_mp4(tmp_path / "a.mp4", SECONDS))
    with_picture = read_audio(write_mp4(tmp_path / "v.mp4", SECONDS, video=True))
    np.testing.assert_array_equal(plain, with_picture)


def test_a_segment_of_a_clip(tmp_path):
    clip = write_mp4(tmp_path / "a.mp4", SECONDS)
    part = read_audio(clip, start=0.25, end=0.75)
    assert len(part) == 8000
    whole = read_audio(clip)
    # Away from the cut's edges (soxr's filter reaches a few ms) the segment is the same signal.
    np.testing.assert_allclose(part[400:-400], whole[4000 + 400 : 12000 - 400], atol=2e-3)
    with pytest.raises(AudioError, match=r"^segment end 2\.500 s is past the end of a\.mp4 \(1\.0\d+ s\)$"):
        read_audio(clip, start=2.0, end=2.5)


def test_header_durations_for_planning(tmp_path):
    clip = write_mp4(tmp_path / "a.mp4", SECONDS)
    assert probe_seconds(clip) == pytest.approx(SECONDS, abs=0.03)
    row = Utterance("a", clip, "hi", "neu", "s", 1, "U")
    assert plan_seconds(row) == pytest.approx(SECONDS, abs=0.03)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 300)
    assert plan_seconds(Utterance("j", tmp_path / "junk.mp4", "hi", "neu", "s", 1, "U")) == 0.0


def _one_line_error(path, **kw) -> str:
    with pytest.raises(AudioError) as info:
        read_audio(path, **kw)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_broken_clips_are_one_line_errors(tmp_path):
    whole = write_mp4(tmp_path / "whole.mp4", SECONDS).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    for name in ("truncated.mp4", "garbage.mp4"):
        message = _one_line_error(tmp_path / name)
        assert message == (
            f"unreadable audio {name}: Invalid data found when processing input (damaged or truncated file?)"
        )
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert _one_line_error(tmp_path / "empty.mp4") == "unreadable audio empty.mp4: the file is empty (0 bytes)"


def test_a_truncated_clip_with_its_index_first_fails_while_decoding(tmp_path):
    import av

    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        stream = c.add_stream("aac", rate=RATE, layout="stereo")
        data = stereo_tones(1.5)
        for i in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, i : i + 1024]), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = RATE, i
            for p in stream.encode(frame):
                c.mux(p)
        for p in stream.encode(None):
            c.mux(p)
    assert path.read_bytes()[28:40].find(b"moov") >= 0  # the index comes first, the samples after
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = _one_line_error(path)
    assert message.startswith("unreadable audio faststart.mp4: ") and message.endswith("(damaged or truncated file?)")


def test_a_clip_without_sound(tmp_path):
    clip = write_mp4(tmp_path / "mute.mp4", SECONDS, video=True, audio=False)
    assert _one_line_error(clip) == "mute.mp4 has no audio stream"


def test_the_duration_limit_holds_for_clips(tmp_path):
    clip = write_mp4(tmp_path / "a.mp4", SECONDS)
    assert _one_line_error(clip, max_duration=0.5).startswith(
        "a.mp4: 1.0 s of audio by its header, more than the 0.5 s"
    )


def test_without_pyav_a_clip_says_what_to_install(tmp_path, monkeypatch):
    clip = write_mp4(tmp_path / "a.mp4", SECONDS)
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    assert _one_line_error(clip) == (
        "decoding mp4 and other media files needs PyAV: pip install 'ksr[video]' (or: pip install av)"
    )
    with pytest.raises(AudioError, match="needs PyAV"):
        probe_seconds(clip)
    assert plan_seconds(Utterance("a", clip, "hi", "neu", "s", 1, "U")) == 0.0


def test_extraction_reads_clips_and_reports_a_broken_one(tmp_path):
    import csv

    from ksr.cache import verify_cache
    from ksr.extract.corpora.manifest import REQUIRED_COLUMNS
    from ksr.extract.encoders import load_encoder
    from ksr.extract.pipeline import extract_corpus
    from ksr.extract.summary import read_errors

    corpus = tmp_path / "corpus"
    write_mp4(corpus / "good.mp4", 0.6, video=True)
    write_mp4(corpus / "also.m4a", 0.4)
    whole = write_mp4(corpus / "x.mp4", 0.6).read_bytes()
    (corpus / "broken.mp4").write_bytes(whole[:300])
    manifest = corpus / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(REQUIRED_COLUMNS)
        w.writerow(["good", "good.mp4", "Hi there.", "neu", "s1", 1, "F"])
        w.writerow(["also", "also.m4a", "Oh no.", "sad", "s2", 1, "M"])
        w.writerow(["broken", "broken.mp4", "What?", "ang", "s1", 1, "F"])
    home = tmp_path / "tiny"
    audio = load_encoder("tiny-audio", tiny_root=home, device="cpu")
    text = load_encoder("tiny-text", tiny_root=home, device="cpu")
    out = tmp_path / "cache"
    summary = extract_corpus(manifest, out, audio, text, dtype="float32", progress=False, classes=("ang", "neu", "sad"))
    assert summary.extracted == 2 and summary.failed == {"audio": 1}
    assert read_errors(out / "errors-w0.tsv") == [
        (
            "broken",
            "audio",
            "unreadable audio broken.mp4: Invalid data found when processing input (damaged or truncated file?)",
        )
    ]
    assert verify_cache(out, progress=False).ok


def test_extraction_without_pyav_stops_before_it_starts(tmp_path, monkeypatch):
    from ksr.extract.corpora.manifest import REQUIRED_COLUMNS
    from ksr.extract.pipeline import ExtractError, extract_corpus

    write_mp4(tmp_path / "a.mp4", 0.4)
    (tmp_path / "manifest.csv").write_text(",".join(REQUIRED_COLUMNS) + "\na,a.mp4,Hi.,neu,s1,1,F\n")
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(
        ExtractError, match=r"^1 audio file\(s\) such as a\.mp4 are media files: decoding mp4 .* needs PyAV"
    ):
        extract_corpus(
            tmp_path / "manifest.csv", tmp_path / "cache", "tiny-audio", "tiny-text", tiny_root=tmp_path / "k"
        )
    assert not (tmp_path / "cache").exists()  # nothing written, no encoder loaded
