"""Whisper's encoder through ``hf:``: a tiny Whisper with random weights saved to a folder.

Reference: transformers' own ``WhisperModel`` run here by hand on the feature extractor's
30 s log-mel input (the same model class ksr loads, so the same float32 operations in the same
order): features compared at 1e-5 (observed 0 for one window; batches reorder BLAS sums, a few
ulp on O(1) values, ATOL 2e-5 as in test_extract_encoders.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ksr.extract.encoders import EncoderError, load_encoder
from ksr.extract.encoders.tiny import save_tiny_whisper

ATOL = 2e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper", layers=3)


@pytest.fixture(scope="module")
def enc(folder):
    return load_encoder(f"hf:{folder}", modality="audio", device="cpu")


@pytest.fixture(scope="module")
def reference(folder):
    """transformers' WhisperModel and feature extractor, used directly."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    model = WhisperModel.from_pretrained(folder).eval()
    fe = WhisperFeatureExtractor.from_pretrained(folder)

    def states(wav):
        mel = fe([wav], sampling_rate=16000, return_tensors="pt")["input_features"]
        assert mel.shape == (1, 80, 3000)
        with torch.inference_mode():
            return model.encoder(mel, output_hidden_states=True).hidden_states

    return states


def _wav(n, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def test_declares(enc, folder):
    d = enc.describe()
    assert {
        k: d[k]
        for k in (
            "modality",
            "model_type",
            "dim",
            "layer",
            "num_layers",
            "frame_rate",
            "sample_rate",
            "min_samples",
            "revision",
        )
    } == {
        "modality": "audio",
        "model_type": "whisper",
        "dim": 32,
        "layer": 3,
        "num_layers": 3,
        "frame_rate": 50.0,
        "sample_rate": 16000,
        "min_samples": 1,
        "revision": None,
    }
    assert d["spec"] == f"hf:{folder}@layer=3" and d["digest"].startswith("sha256:")
    assert not hasattr(enc.model, "decoder")  # the encoder only


@pytest.mark.parametrize("n", [1, 319, 320, 321, 16000, 16001, 123457, 479999, 480000])
def test_frames_in_one_window(enc, n):
    assert enc.num_frames(n) == math.ceil(n / 320)


def test_frames_beyond_30s(enc):
    for n, frames in [(480001, 1501), (480320, 1501), (480321, 1502), (960000, 3000), (1000000, 3125)]:
        assert enc.num_frames(n) == frames == math.ceil(n / 320)


def test_features_are_the_covered_frames_of_the_padded_window(enc, reference):
    for n in (320, 7777, 16000, 95000):
        wav = _wav(n, seed=n)
        got = enc.encode([wav])[0]
        assert got.shape == (math.ceil(n / 320), 32)
        torch.testing.assert_close(got, reference(wav)[-1][0, : got.shape[0]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [0, 1, 2, -1, -4])
def test_layer_picks_the_hidden_state(folder, reference, layer):
    wav = _wav(24000, seed=5)
    states = reference(wav)
    assert len(states) == 4  # input of layer 1, then 3 layer outputs (the last normed)
    enc = load_encoder(f"hf:{folder}@layer={layer}", device="cpu")
    assert enc.layer == layer % 4
    torch.testing.assert_close(enc.encode([wav])[0], states[layer][0, :75], atol=1e-5, rtol=0)
    others = [i for i in range(4) if i != layer % 4]
    assert all((states[i][0, :75] - states[layer][0, :75]).abs().max() > 1e-2 for i in others)


def test_long_audio_is_windows_joined(enc, reference):
    wav = _wav(480000 + 40000, seed=9)
    got = enc.encode([wav])[0]
    assert got.shape == (1500 + 125, 32)
    first, second = reference(wav[:480000])[-1][0], reference(wav[480000:])[-1][0, :125]
    torch.testing.assert_close(got[:1500], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1500:], second, atol=1e-5, rtol=0)


def test_batch_equals_one_at_a_time(folder):
    enc = load_encoder(
        f"hf:{folder}",
        device="cpu",
    )
    enc.max_windows = 2  # windows of one utterance across two forward passes too
    wavs = [_wav(n, seed=n) for n in (5000, 480000 + 3000, 16000)]
    batch = enc.encode(wavs)
    for w, b in zip(wavs, batch, strict=True):
        torch.testing.assert_close(b, enc.encode([w])[0], atol=ATOL, rtol=0)


def test_refused_as_text_and_bad_layer(folder):
    with pytest.raises(EncoderError, match="is a audio encoder, not text"):
        load_encoder(f"hf:{folder}", modality="text", device="cpu")
    with pytest.raises(EncoderError, match=r"layer 4 is out of range for .*: 0\.\.3"):
        load_encoder(f"hf:{folder}@layer=4", device="cpu")


def test_missing_weights_refused(folder, tmp_path):
    """A checkpoint lacking encoder weights is refused, not run with random ones."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    state = load_file(broken / "model.safetensors")
    del state["encoder.layers.0.fc1.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EncoderError, match="lacks 1 weights .*encoder.layers.0.fc1.weight"):
        load_encoder(f"hf:{broken}", device="cpu")


def test_through_the_pipeline_into_the_cache(folder, enc, tmp_path):
    """``ksr extract --audio-encoder hf:<whisper folder>``: recorded and stored like any encoder."""
    import csv

    import soundfile as sf
    from click.testing import CliRunner

    from ksr.cache import open_cache
    from ksr.cli import main
    from ksr.extract.audio import read_audio

    lengths = {"a": 3000, "b": 16000, "c": 40000}
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "gender"])
        for i, (uid, n) in enumerate(lengths.items()):
            sf.write(tmp_path / f"{uid}.wav", _wav(n, i), 16000, subtype="PCM_16")
            w.writerow([uid, f"{uid}.wav", "Excuse me.", "neu", "s1", 1, "F"])
    result = CliRunner(env={"KSR_CACHE_DIR": str(tmp_path / "home")}).invoke(
        main,
        [
            "extract",
            str(tmp_path / "manifest.csv"),
            "--out",
            str(tmp_path / "cache"),
            "--audio-encoder",
            f"hf:{folder}@layer=2",
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
    info = cache.meta.audio_encoder
    assert (info.name, info.dim, info.layer, info.frame_rate) == ("hf:tiny-whisper", 32, "2", 50.0)
    layer2 = load_encoder(f"hf:{folder}@layer=2", device="cpu")
    assert info.checkpoint_digest == layer2.digest == enc.digest
    b = cache.batch(np.arange(len(cache)))
    for i, uid in enumerate(cache.ids):
        want = layer2.encode([read_audio(tmp_path / f"{uid}.wav")])[0]
        n = int(b.audio_lengths[i])
        assert n == min(460, math.ceil(lengths[uid] / 320)) == min(460, len(want))
        torch.testing.assert_close(b.audio[i, :n], want[:n], atol=ATOL, rtol=0)
