"""``ksr extract --max-audio-seconds``: audio cut before encoding, recorded, refused on change.

fbank frames depend only on their own 400 samples, so with it the cut must leave the kept
frames bit for bit as they were (compared with torch.equal, float32 cache).
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from ksr.cache import CacheError, open_cache
from ksr.cache.schema import CacheMeta
from ksr.cli import main
from ksr.extract.audio import cut_audio, read_audio
from ksr.extract.encoders import load_encoder

LENGTHS = {"short": 9000, "edge": 16000, "long": 40000}  # samples; the cut is 1 s = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(11)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "gender"])
        for i, (uid, n) in enumerate(LENGTHS.items()):
            sf.write(root / f"{uid}.wav", 0.2 * rng.standard_normal(n), 16000, subtype="PCM_16")
            w.writerow([uid, f"{uid}.wav", "Excuse me.", ["neu", "ang"][i % 2], "s1", 1, "F"])
    return root


def _extract(corpus, out, *extra, home):
    return CliRunner(env={"KSR_CACHE_DIR": str(home)}).invoke(
        main,
        [
            "extract",
            str(corpus / "manifest.csv"),
            "--out",
            str(out),
            "--audio-encoder",
            "fbank",
            "--text-encoder",
            "tiny-text",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ],
    )


def _rows(out):
    cache = open_cache(out, mode="memory")
    b = cache.batch(np.arange(len(cache)))
    return cache, {
        uid: (b.audio[i, : int(b.audio_lengths[i])], int(cache.audio_lengths_full[i]))
        for i, uid in enumerate(cache.ids)
    }


def test_cut_is_recorded_and_exact_for_fbank(corpus, tmp_path):
    full = _extract(corpus, tmp_path / "full", home=tmp_path)
    cut = _extract(corpus, tmp_path / "cut", "--max-audio-seconds", "1", home=tmp_path)
    assert full.exit_code == 0 and cut.exit_code == 0, full.output + cut.output
    full_cache, full_rows = _rows(tmp_path / "full")
    cut_cache, cut_rows = _rows(tmp_path / "cut")
    assert full_cache.meta.max_audio_seconds is None
    assert cut_cache.meta.max_audio_seconds == 1.0
    enc = load_encoder("fbank")
    for uid, n in LENGTHS.items():
        kept, kept_full = cut_rows[uid]
        whole, whole_full = full_rows[uid]
        assert whole_full == enc.num_frames(n)
        assert kept_full == len(kept) == enc.num_frames(min(n, 16000))  # 98 frames at most
        assert torch.equal(kept, whole[: len(kept)])  # exact: fbank frames are local


def test_rerun_with_another_cut_is_refused(corpus, tmp_path):
    out = tmp_path / "cache"
    assert _extract(corpus, out, "--max-audio-seconds", "1.5", home=tmp_path).exit_code == 0
    again = _extract(corpus, out, "--max-audio-seconds", "1.5", home=tmp_path)
    assert again.exit_code == 0, again.output  # the same cut: the cache is continued
    for extra, have, want in [(("--max-audio-seconds", "2"), "1.5", "2.0"), ((), "1.5", "None")]:
        result = _extract(corpus, out, *extra, home=tmp_path)
        assert result.exit_code != 0
        line = result.output.strip()
        assert "\n" not in line
        assert f"max_audio_seconds: cache has {have}, expected {want}" in line


def test_option_is_checked():
    result = CliRunner().invoke(main, ["extract", "m.csv", "--out", "x", "--max-audio-seconds", "0"])
    assert result.exit_code == 2 and "--max-audio-seconds" in result.output
    with pytest.raises(CacheError, match="max_audio_seconds must be a positive number"):
        CacheMeta.from_dict({**_meta_dict(), "max_audio_seconds": float("nan")})


def _meta_dict():
    from ksr.cache.synthetic import synthetic_meta

    return synthetic_meta(audio_dim=4, text_dim=4).to_dict()


def test_old_meta_without_the_field_reads_as_no_cut():
    d = _meta_dict()
    d.pop("max_audio_seconds")
    meta = CacheMeta.from_dict(json.loads(json.dumps(d)))
    assert meta.max_audio_seconds is None
    assert dataclasses.replace(meta, max_audio_seconds=3).max_audio_seconds == 3.0


def test_cut_audio():
    x = np.arange(50000, dtype=np.float32)
    assert cut_audio(x, None) is x
    assert len(cut_audio(x, 1.0)) == 16000 and len(cut_audio(x, 0.00003)) == 0
    assert len(cut_audio(x, 0.5, rate=8000)) == 4000 and len(cut_audio(x, 10.0)) == 50000


def test_predict_cuts_as_the_cache_did(corpus, tmp_path):
    from ksr.cache.schema import EncoderInfo
    from ksr.predict import audio_inputs

    enc = load_encoder("fbank")
    meta = dataclasses.replace(
        CacheMeta.from_dict(_meta_dict()),
        max_audio_seconds=1.0,
        audio_encoder=EncoderInfo("fbank", 80, enc.digest, "logmel", 100.0),
    )
    row, n = audio_inputs(enc, corpus / "long.wav", meta)
    assert n == enc.num_frames(16000)
    want = enc.encode([read_audio(corpus / "long.wav")[:16000]])[0]
    row = row.reshape(-1, 80)
    assert row.shape[0] == 460 and not row[n:].any()
    torch.testing.assert_close(row[:n].float(), want, atol=0.02, rtol=0)  # a float16 row


def test_extract_options_set_the_kept_lengths(tmp_path):
    """`ksr extract --max-audio-len/--max-text-len` reach the cache (the demo's 230 frames)."""
    from ksr.extract.corpora.demo import make_demo_corpus

    manifest = make_demo_corpus(tmp_path / "data", seed=0, per_speaker=4)
    out = tmp_path / "cache"
    args = [
        "extract",
        str(manifest),
        "--out",
        str(out),
        "--audio-encoder",
        "fbank",
        "--text-encoder",
        "tiny-text",
        "--max-audio-len",
        "230",
        "--max-text-len",
        "12",
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args, env={"KSR_CACHE_DIR": str(tmp_path / "k")})
    assert result.exit_code == 0, result.output
    meta = open_cache(out, progress=False).meta
    assert (meta.max_audio_len, meta.max_text_len) == (230, 12)
