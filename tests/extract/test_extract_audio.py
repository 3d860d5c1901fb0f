"""Audio input: mono mixing, resampling to 16 kHz, segments, and the per-item errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from support.extract_fixtures import write_wav

from ksr.extract.audio import AudioError, read_audio, to_mono


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000])
def test_resamples_to_16k_keeping_pitch_and_level(tmp_path, rate):
    path = write_wav(tmp_path / "s.wav", _sine(440.0, rate, 1.0), rate, subtype="FLOAT")
    x = read_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 16000  # one second
    assert abs(_peak_hz(x, 16000) - 440.0) <= 1.0  # 1 Hz bins
    core = x[1000:-1000]  # away from the filter's edge effects
    assert np.sqrt(np.mean(core**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_16k_input_is_returned_unchanged(tmp_path):
    samples = _sine(200.0, 16000, 0.25)
    path = write_wav(tmp_path / "s.wav", samples, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(path), samples)


def test_pcm16_is_scaled_to_unit_range(tmp_path):
    path = tmp_path / "p.wav"
    sf.write(path, np.array([16384, -32768, 0], dtype=np.int16), 16000, subtype="PCM_16")
    np.testing.assert_array_equal(read_audio(path), np.array([0.5, -1.0, 0.0], np.float32))


def test_stereo_is_averaged(tmp_path):
    left, right = _sine(300.0, 16000, 0.5), _sine(700.0, 16000, 0.5, amp=0.25)
    path = write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, "FLOAT")
    expected = ((left.astype(np.float64) + right) / 2).astype(np.float32)
    np.testing.assert_array_equal(read_audio(path), expected)


def test_stereo_at_48k_is_mixed_then_resampled(tmp_path):
    tone = _sine(1000.0, 48000, 0.5)
    stereo = np.stack([tone, -tone * 0.5], axis=1)  # mono mix = 0.25 * tone
    x = read_audio(write_wav(tmp_path / "st.wav", stereo, 48000, "FLOAT"))
    assert len(x) == 8000
    assert abs(_peak_hz(x, 16000) - 1000.0) <= 2.0
    core = x[500:-500]
    assert np.sqrt(np.mean(core**2)) == pytest.approx(0.125 / np.sqrt(2), rel=0.01)


def test_to_mono_shapes():
    assert to_mono(np.zeros((5, 1), np.float32)).shape == (5,)
    assert to_mono(np.zeros(5, np.float32)).shape == (5,)
    with pytest.raises(AudioError, match=r"expected \(frames, channels\) samples"):
        to_mono(np.zeros((2, 2, 2), np.float32))


def test_segment(tmp_path):
    samples = np.arange(32000, dtype=np.float32) / 32000
    path = write_wav(tmp_path / "long.wav", samples, 16000, "FLOAT")
    np.testing.assert_array_equal(read_audio(path, start=0.5, end=1.0), samples[8000:16000])
    np.testing.assert_array_equal(read_audio(path, start=1.5), samples[24000:])
    # an end past the file by less than 0.1 s (rounding in a segment list) is clamped
    np.testing.assert_array_equal(read_audio(path, start=1.9, end=2.05), samples[30400:])


def test_segment_errors(tmp_path):
    path = write_wav(tmp_path / "long.wav", np.zeros(32000, np.float32), 16000, "FLOAT")
    with pytest.raises(
        AudioError,
        match=r"^segment end 3\.000 s is past the end of long\.wav "
        r"\(2\.000 s\)$",
    ):
        read_audio(path, start=1.0, end=3.0)
    with pytest.raises(AudioError, match=r"^segment start 2\.500 s is past the end"):
        read_audio(path, start=2.5)
    with pytest.raises(
        AudioError,
        match=r"^empty audio: long\.wav has no samples in the "
        r"segment$",
    ):
        read_audio(path, start=1.0, end=1.0)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"^audio file not found: .*gone\.wav$"):
        read_audio(tmp_path / "gone.wav")


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.wav"
    path.write_bytes(b"\x00\x05\x16\x07 this is not audio" * 10)
    with pytest.raises(AudioError, match=r"^unreadable audio junk\.wav: ") as info:
        read_audio(path)
    assert "\n" not in str(info.value)


def test_empty_file(tmp_path):
    path = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"^empty audio: empty\.wav has no samples$"):
        read_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_samples(tmp_path, bad):
    samples = np.zeros(1600, np.float32)
    samples[100] = bad
    path = write_wav(tmp_path / "nan.wav", samples, 16000, "FLOAT")
    with pytest.raises(AudioError, match=r"^audio nan\.wav contains NaN or infinite samples$"):
        read_audio(path)
