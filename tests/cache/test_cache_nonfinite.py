"""NaN or inf features in a shard (another writer can store them) are refused by the reader,
naming the shard and the first utterance, and reported by `ksr cache verify`."""

import re

import numpy as np
import pytest
import torch
from support.cli_runner import invoke_ksr

from ksr.cache import CacheError, CacheWriter, open_cache, verify_cache
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances

DA, DT = 8, 6


def write_poisoned(root, monkeypatch, dtype, poison):
    """6 utterances in shards of 3, written with the writer's NaN/inf check switched off;
    ``poison(utt)`` edits utterance dicts in place before they are added."""
    meta = synthetic_meta(DA, DT, dtype=dtype)
    with monkeypatch.context() as m:
        m.setattr("ksr.cache.rows.all_finite", lambda a: True)
        with CacheWriter(root, meta, shard_size=3) as w:
            for utt in synthetic_utterances(6, meta, seed=3):
                poison(utt)
                w.add(**utt)
    return root


def nan_audio(utt):
    if utt["id"] == "utt000004":
        utt["audio"][2, 3] = np.nan


def inf_text(utt):
    if utt["id"] in ("utt000003", "utt000005"):
        utt["text"][1, 0] = np.inf


def message(root, what, count, first):
    which = f"{count} utterance(s) with" if count else "utterance(s) with"
    return (
        f"{root / 'shard-w0-00001.h5'}: {which} NaN or inf {what} features (first: {first!r}): ksr's writer "
        f"refuses such features, so another program wrote this shard; extract the cache again"
    )


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_memory_mode_refuses_the_shard(tmp_path, monkeypatch, dtype):
    root = write_poisoned(tmp_path / "c", monkeypatch, dtype, nan_audio)
    with pytest.raises(CacheError) as err:
        open_cache(root, mode="memory", progress=False)
    assert str(err.value) == message(root, "audio", 1, "utt000004")


def test_memory_mode_counts_every_bad_utterance(tmp_path, monkeypatch):
    root = write_poisoned(tmp_path / "c", monkeypatch, "float16", inf_text)
    with pytest.raises(CacheError) as err:
        open_cache(root, mode="memory", verify=False, progress=False)
    assert str(err.value) == message(root, "text", 2, "utt000003")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_stream_mode_refuses_the_rows_when_read(tmp_path, monkeypatch, dtype):
    root = write_poisoned(tmp_path / "c", monkeypatch, dtype, nan_audio)
    with open_cache(root, mode="stream", progress=False) as cache:
        clean = cache.batch([0, 1, 2, 3, 5])  # the finite rows read as usual
        assert clean.ids == ["utt000000", "utt000001", "utt000002", "utt000003", "utt000005"]
        assert bool(torch.isfinite(clean.audio).all()) and bool(torch.isfinite(clean.text).all())
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            with pytest.raises(CacheError) as err:
                cache.batch([5, 4, 0], dtype=dt)
            assert str(err.value) == message(root, "audio", None, "utt000004")


def test_verify_reports_every_poisoned_shard_and_modality(tmp_path, monkeypatch):
    def both(utt):
        nan_audio(utt)
        inf_text(utt)

    root = write_poisoned(tmp_path / "c", monkeypatch, "float16", both)
    report = verify_cache(root, progress=False)
    assert report.problems == [message(root, "audio", 1, "utt000004"), message(root, "text", 2, "utt000003")]
    # The quick check reads no feature and cannot see them.
    assert verify_cache(root, checksums=False, progress=False).ok


def test_verify_scans_in_blocks(tmp_path, monkeypatch):
    """A shard larger than one read block: the count and first id span the blocks."""
    monkeypatch.setattr("ksr.cache.shard.BLOCK", 2 * 460 * DA * 2)  # two audio rows per block
    root = write_poisoned(tmp_path / "c", monkeypatch, "float16", nan_audio)

    def late(utt):
        if utt["id"] in ("utt000004", "utt000005"):
            utt["audio"][0, 0] = -np.inf

    root2 = write_poisoned(tmp_path / "d", monkeypatch, "float16", late)
    assert verify_cache(root, progress=False).problems == [message(root, "audio", 1, "utt000004")]
    assert verify_cache(root2, progress=False).problems == [message(root2, "audio", 2, "utt000004")]


def test_cache_verify_command(tmp_path, monkeypatch):
    root = write_poisoned(tmp_path / "c", monkeypatch, "float16", nan_audio)
    result = invoke_ksr(["cache", "verify", root], tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == "error: " + message(root, "audio", 1, "utt000004")
    assert re.search("Traceback", result.output) is None
