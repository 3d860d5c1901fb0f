"""Per-speaker (per-session) normalisation and validation on a held-out training speaker."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.tiny import TINY_MODEL, tiny_cache

from ksr.cache import open_cache
from ksr.cli import main
from ksr.fuse.model.config import ModelConfig
from ksr.fuse.model.normalise import (
    SpeakerNormalisedCache,
    inputs_note,
    normalise_rows,
    normalised_view,
    predict_note,
    utterance_statistics,
)
from ksr.fuse.train.folds import make_split


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tiny_cache(tmp_path_factory.mktemp("spk") / "cache", 40, seed=5)
    return open_cache(root, progress=False)


def _reference_stats(cache, speaker):
    """Mean and std over the speaker's true frames, straight from the cache's rows (numpy)."""
    rows = []
    for i in np.flatnonzero(cache.speakers == speaker):
        b = cache.batch([i])
        rows.append(b.audio[0, : int(cache.audio_lengths[i])].double().numpy())
    rows = np.concatenate(rows)
    return rows.mean(axis=0), rows.std(axis=0)


def test_every_utterance_is_standardised_with_its_own_speakers_statistics(cache):
    view = SpeakerNormalisedCache(cache, "speaker")
    for speaker in sorted(set(cache.speakers.tolist()))[:3]:
        mean, std = _reference_stats(cache, speaker)
        i = int(np.flatnonzero(cache.speakers == speaker)[0])
        raw, got = cache.batch([i]), view.batch([i])
        n = int(cache.audio_lengths[i])
        want = (raw.audio[0, :n].double().numpy() - mean) / std
        np.testing.assert_allclose(got.audio[0, :n].numpy(), want, rtol=1e-4, atol=1e-4)
        assert not got.audio[0, n:].any()  # padding stays zero
        assert torch.equal(got.text, raw.text) and torch.equal(got.labels, raw.labels)  # audio only
    # over a speaker's true frames the normalised audio has mean 0 and std 1
    idx = np.flatnonzero(cache.speakers == cache.speakers[0])
    frames = np.concatenate([view.batch([i]).audio[0, : int(cache.audio_lengths[i])].numpy() for i in idx])
    np.testing.assert_allclose(frames.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(frames.std(axis=0), 1, atol=1e-3)
    # the loader, the prefetched batches training reads and len() all go through the view
    assert len(view) == len(cache)
    first = next(iter(view.loader([int(idx[0])], batch_size=4)))
    assert torch.equal(first.audio, view.batch([int(idx[0])]).audio)
    parts = [idx[:2], idx[2:4]]
    for got, part in zip(view.batches(parts, "cpu"), parts, strict=True):
        assert torch.equal(got.audio, view.batch(part).audio)


def test_sessions_group_by_session_and_none_is_the_cache_itself(cache):
    assert normalised_view(cache, ModelConfig()) is cache  # the default model reads the cache as it is
    by_session = normalised_view(cache, ModelConfig(speaker_norm="session"))
    i = int(np.flatnonzero(cache.sessions == "3")[0])
    rows = np.concatenate(
        [
            cache.batch([j]).audio[0, : int(cache.audio_lengths[j])].double().numpy()
            for j in np.flatnonzero(cache.sessions == "3")
        ]
    )
    n = int(cache.audio_lengths[i])
    want = (cache.batch([i]).audio[0, :n].double().numpy() - rows.mean(0)) / rows.std(0)
    np.testing.assert_allclose(by_session.batch([i]).audio[0, :n].numpy(), want, rtol=1e-4, atol=1e-4)
    assert normalised_view(by_session, ModelConfig(speaker_norm="speaker")).by == "speaker"


def test_one_utterance_alone_uses_its_own_frames():
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4) ** 1.5
    mask = torch.tensor([[False] * 4 + [True] * 2])
    mean, std = utterance_statistics(x, 4)
    out = normalise_rows(x[None], mask, mean[None], std[None])[0]
    ref = x[:4].double().numpy()
    np.testing.assert_allclose(out[:4].numpy(), (ref - ref.mean(0)) / ref.std(0), rtol=1e-5)
    assert not out[4:].any()
    assert "this utterance's own statistics" in predict_note("speaker") and "per-speaker" in predict_note("speaker")
    assert "standardised per session" in inputs_note("session")


def test_validation_on_a_held_out_training_speaker():
    sessions = ["1", "1", "2", "2", "3", "3", "4", "4"] * 3
    speakers = [f"s{s}{'ab'[i % 2]}" for i, s in enumerate(sessions)]
    labels = [i % 4 for i in range(len(sessions))]
    split = make_split("session", 1, sessions, speakers, labels, seed=7, validation="speaker")
    held = {speakers[i] for i in split.valid}
    assert len(held) == 1 and held.pop()[1] != "1"  # one whole speaker of a training session
    assert not {speakers[i] for i in split.train} & {speakers[i] for i in split.valid}
    assert sorted([*split.train, *split.valid, *split.test]) == list(range(len(sessions)))
    again = make_split("session", 1, sessions, speakers, labels, seed=7, validation="speaker")
    assert np.array_equal(again.valid, split.valid)  # seeded
    with pytest.raises(ValueError, match="--validation speaker needs two or more training speakers"):
        make_split("session", 1, ["1", "2"], ["a", "b"], [0, 1], validation="speaker")


def test_cli_trains_with_speaker_norm_and_speaker_validation(tmp_path):
    root = tiny_cache(tmp_path / "cache", 40, seed=5)
    run = tmp_path / "run"
    args = ["train", "--cache", str(root), "--run", str(run), *TINY_MODEL, "--fold", "2", "--epochs", "1"]
    out = CliRunner().invoke(main, [*args, "--speaker-norm", "speaker", "--validation", "speaker", "--bootstrap", "0"])
    assert out.exit_code == 0, out.output
    saved = json.loads((run / "run.json").read_text())
    assert saved["model"]["speaker_norm"] == "speaker" and saved["validation"] == "speaker"
    probe = json.loads((run / "baseline-probe" / "run.json").read_text())
    assert probe["model"]["speaker_norm"] == "speaker"  # the probe reads the same features
    report = json.loads((run / "report.json").read_text())
    assert report["note"] == "model selected on a training speaker held out whole (--validation speaker)"
    plain = CliRunner().invoke(main, [*args[:4], str(tmp_path / "plain"), *args[5:], "--bootstrap", "0"])
    assert plain.exit_code == 0, plain.output
    note = json.loads((tmp_path / "plain" / "report.json").read_text())["note"]
    assert "cannot see a speaker shift (--validation speaker can)" in note
