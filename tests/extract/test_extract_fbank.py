"""``fbank``: Kaldi-style log-mel filterbank, checked against a slow reference written here.

The reference follows Kaldi's feature-window and mel-bank code path step by step in plain Python
and numpy loops: its own DFT (a sum of cosines and sines, no FFT), its own triangles (a loop
over bins, Kaldi's branch ``mel <= centre`` rising, else falling), in float64. The encoder
computes in float64 too and returns float32, so the two agree to float32 rounding of values of
size ~10-30 (|x| ulp ~2e-6): ATOL = 1e-4 is about 50x that, while any wrong step (no
pre-emphasis, Hann instead of Povey, mel bins off by one) moves values by far more than 1e-2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ksr.extract.audio import AudioError
from ksr.extract.encoders import EncoderError, load_encoder, parse_spec

ATOL = 1e-4


def reference_fbank(wav: np.ndarray, num_mel: int = 80) -> np.ndarray:
    """Kaldi's compute-fbank-feats (dither 0, snip_edges), written out loop by loop."""
    x = [float(v) * 32768.0 for v in wav]
    n_frames = 0 if len(x) < 400 else 1 + (len(x) - 400) // 160
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / (num_mel + 1)
    bank = np.zeros((num_mel, 256))
    for b in range(num_mel):
        left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for k in range(256):
            m = mel(k * 16000.0 / 512)
            if left < m < right:
                bank[b, k] = (m - left) / (centre - left) if m <= centre else (right - m) / (right - centre)
    window = [(0.5 - 0.5 * math.cos(2 * math.pi * i / 399)) ** 0.85 for i in range(400)]
    t = np.arange(512)
    out = np.zeros((n_frames, num_mel))
    for f in range(n_frames):
        frame = x[f * 160 : f * 160 + 400]
        mean = sum(frame) / 400
        frame = [v - mean for v in frame]
        for i in range(399, 0, -1):
            frame[i] -= 0.97 * frame[i - 1]
        frame[0] -= 0.97 * frame[0]
        padded = np.zeros(512)
        padded[:400] = [v * w for v, w in zip(frame, window, strict=True)]
        power = np.zeros(256)
        for k in range(256):
            re = np.sum(padded * np.cos(2 * np.pi * k * t / 512))
            im = np.sum(padded * np.sin(2 * np.pi * k * t / 512))
            power[k] = re * re + im * im
        for b in range(num_mel):
            out[f, b] = math.log(max(float(bank[b] @ power), np.finfo(np.float32).eps))
    return out


@pytest.fixture(scope="module")
def speechlike():
    """A voiced, amplitude-modulated signal with noise, 0.5 s (1 s for one item)."""
    rng = np.random.default_rng(3)
    t = np.arange(16000) / 16000
    voiced = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 12))
    wav = 0.05 * voiced * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(16000)
    return wav.astype(np.float32)


def test_matches_reference(speechlike):
    enc = load_encoder("fbank")
    for wav in (speechlike[:400], speechlike[:2403], speechlike[:8000]):
        got = enc.encode([wav])[0]
        want = reference_fbank(wav)
        assert got.shape == want.shape and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, atol=ATOL, rtol=0)
        assert 5 < want.max() < 40  # the values are the size the tolerance was set for


def test_mel_option_matches_reference(speechlike):
    enc = load_encoder("fbank@mel=40")
    assert enc.dim == 40 and enc.spec == "fbank@mel=40"
    wav = speechlike[:3000]
    np.testing.assert_allclose(enc.encode([wav])[0].numpy(), reference_fbank(wav, 40), atol=ATOL, rtol=0)


def test_frame_counts():
    enc = load_encoder("fbank")
    for n, frames in [(399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (16160, 99), (480000, 2998)]:
        assert enc.num_frames(n) == frames == (0 if n < 400 else 1 + (n - 400) // 160)
    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (400, 561, 16000, 23456)]
    assert [o.shape for o in enc.encode(wavs)] == [(enc.num_frames(len(w)), 80) for w in wavs]
    with pytest.raises(AudioError, match="399 samples is shorter than the 400 that fbank needs"):
        enc.encode([np.zeros(399, np.float32)])


def test_cut_audio_keeps_the_frames_exactly(speechlike):
    """A frame reads only its own 400 samples: cutting the audio leaves the kept frames as they
    were, bit for bit (what docs/encoders.md says for --max-audio-seconds)."""
    enc = load_encoder("fbank")
    whole = enc.encode([speechlike])[0]
    for cut in (400, 4567, 8000):
        part = enc.encode([speechlike[:cut]])[0]
        assert part.shape[0] == enc.num_frames(cut)
        assert torch.equal(part, whole[: part.shape[0]])


def test_batch_equals_one_at_a_time(speechlike):
    enc = load_encoder("fbank")
    items = [speechlike[:500], speechlike, speechlike[100:9000]]
    batch = enc.encode(items)
    for item, row in zip(items, batch, strict=True):
        assert torch.equal(row, enc.encode([item])[0])


def test_a_tone_peaks_in_its_filter():
    """A 1 kHz tone puts its energy in the filter whose peak is nearest 1 kHz on the mel scale."""
    t = np.arange(8000) / 16000
    feats = load_encoder("fbank").encode([(0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)])[0]
    lo, hi = 1127 * math.log(1 + 20 / 700), 1127 * math.log(1 + 8000 / 700)
    centres = lo + (hi - lo) / 81 * np.arange(1, 81)
    expected = int(np.argmin(abs(centres - 1127 * math.log(1 + 1000 / 700))))
    assert set(feats.argmax(dim=1).tolist()) == {expected}


def test_silence_is_floored():
    feats = load_encoder("fbank").encode([np.zeros(1600, np.float32)])[0]
    assert torch.equal(feats, torch.full((8, 80), math.log(np.finfo(np.float32).eps)))


def test_declares_and_digest():
    d = load_encoder("fbank", modality="audio").describe()
    assert {
        k: d[k]
        for k in (
            "modality",
            "spec",
            "name",
            "model_type",
            "dim",
            "layer",
            "num_layers",
            "frame_rate",
            "sample_rate",
            "min_samples",
            "mel",
            "revision",
        )
    } == {
        "modality": "audio",
        "spec": "fbank",
        "name": "fbank",
        "model_type": "fbank",
        "dim": 80,
        "layer": "logmel",
        "num_layers": 0,
        "frame_rate": 100.0,
        "sample_rate": 16000,
        "min_samples": 400,
        "mel": 80,
        "revision": None,
    }
    assert d["digest"].startswith("sha256:") and len(d["digest"]) == 71
    assert load_encoder("fbank@mel=80").digest == d["digest"]
    assert load_encoder("fbank@mel=64").digest != d["digest"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fbank@mel=0", r"fbank: @mel=0 is out of range 1\.\.128"),
        ("fbank@mel=x", r"fbank: @mel='x' is not an integer"),
        ("fbank@layer=2", r"fbank: takes no @layer or @revision"),
        ("fbank:foo", r"unknown encoder spec 'fbank:foo'"),
        ("tiny-audio@mel=40", r"@mel is an option of fbank only"),
        ("hf:x@mel=40", r"@mel is an option of fbank only"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(EncoderError, match=message):
        load_encoder(spec)


def test_parse():
    assert parse_spec("fbank@mel=64").options == {"mel": "64"}
    assert parse_spec("fbank").kind == "fbank"
    with pytest.raises(EncoderError, match="is a audio encoder, not text"):
        load_encoder("fbank", modality="text")


def test_through_the_pipeline_into_the_cache(tmp_path, speechlike):
    """``ksr extract --audio-encoder fbank``: the cache records the encoder and holds its rows."""
    import csv

    import soundfile as sf
    from click.testing import CliRunner

    from ksr.cache import open_cache
    from ksr.cli import main
    from ksr.extract.audio import read_audio

    lengths = {"u1": 400, "u2": 7000, "u3": 16000}
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "gender"])
        for i, (uid, n) in enumerate(lengths.items()):
            sf.write(tmp_path / f"{uid}.wav", speechlike[:n], 16000, subtype="PCM_16")
            w.writerow([uid, f"{uid}.wav", "Excuse me.", ["neu", "ang"][i % 2], "s1", 1, "F"])
    result = CliRunner(env={"KSR_CACHE_DIR": str(tmp_path / "home")}).invoke(
        main,
        [
            "extract",
            str(tmp_path / "manifest.csv"),
            "--out",
            str(tmp_path / "cache"),
            "--audio-encoder",
            "fbank@mel=64",
            "--text-encoder",
            "tiny-text",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    cache = open_cache(tmp_path / "cache")
    enc = load_encoder("fbank@mel=64")
    info = cache.meta.audio_encoder
    assert (info.name, info.dim, info.layer, info.frame_rate, info.checkpoint_digest) == (
        "fbank@mel=64",
        64,
        "logmel",
        100.0,
        enc.digest,
    )
    b = cache.batch(np.arange(len(cache)))
    assert sorted(cache.ids) == sorted(lengths)
    for i, uid in enumerate(cache.ids):
        want = enc.encode([read_audio(tmp_path / f"{uid}.wav")])[0]
        n = int(b.audio_lengths[i])
        assert n == int(cache.audio_lengths_full[i]) == enc.num_frames(lengths[uid]) == len(want)
        assert torch.equal(b.audio[i, :n], want)
        assert not b.audio[i, n:].any()
