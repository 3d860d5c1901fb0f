"""Schema version 2: each utterance's official split is stored and read back; version-1 caches
(tests/data/cache-v1, written by the ksr before splits existed) still load, with no splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ksr.cache import CacheError, CacheWriter, open_cache, verify_cache
from ksr.cache.info import cache_info, format_info
from ksr.cache.schema import SCHEMA_VERSION, is_split_name, is_test_split
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances

V1 = Path(__file__).resolve().parents[1] / "data" / "cache-v1"
META = synthetic_meta(audio_dim=4, text_dim=4, max_audio_len=6, max_text_len=4, dtype="float32")
SPLITS = ["train", "valid", "test1", "test2", "train", "test", ""]


def write(root: Path, splits: list[str], shard_size: int = 3) -> list[dict]:
    utts = list(synthetic_utterances(len(splits), META, seed=2, sessions=0, splits=splits))
    with CacheWriter(root, META, shard_size=shard_size) as w:
        for u in utts:
            w.add(**u)
    return utts


@pytest.mark.parametrize(
    "value, ok, test",
    [
        ("train", True, False),
        ("valid", True, False),
        ("test", True, True),
        ("test1", True, True),
        ("testb2", True, True),
        ("", False, False),
        ("Train", False, False),
        ("dev", False, False),
        ("test-1", False, False),
        ("test_1", False, False),
        ("tests ", False, False),
        ("validation", False, False),
    ],
)
def test_split_names(value, ok, test):
    assert is_split_name(value) is ok
    assert is_test_split(value) is test


def test_splits_round_trip_in_both_modes(tmp_path):
    utts = write(tmp_path, SPLITS)
    for mode in ("memory", "stream"):
        with open_cache(tmp_path, mode=mode, progress=False) as cache:
            assert dict(zip(cache.ids, cache.splits.tolist(), strict=True)) == {u["id"]: u["split"] for u in utts}
            assert set(cache.sessions.tolist()) == {""}
    with h5py.File(tmp_path / "shard-w0-00000.h5", "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION == 3
        assert f["split"].asstr()[()].tolist() == SPLITS[:3]
    assert verify_cache(tmp_path, progress=False).ok


def test_info_counts_splits(tmp_path):
    write(tmp_path, SPLITS)
    info = cache_info(tmp_path)
    assert info["splits"] == {"": 1, "test": 1, "test1": 1, "test2": 1, "train": 2, "valid": 1}
    assert "splits: (none) 1, test 1, test1 1, test2 1, train 2, valid 1" in format_info(info)


def test_writer_refuses_a_bad_split(tmp_path):
    utt = next(synthetic_utterances(1, META, splits=["dev"]))
    with CacheWriter(tmp_path, META) as w:
        with pytest.raises(ValueError, match=r"utterance 'utt000000': split 'dev' is not train, valid, test"):
            w.add(**utt)


def test_a_hand_edited_bad_split_is_refused_by_name(tmp_path):
    write(tmp_path, ["train", "valid", "test"], shard_size=3)
    shard = tmp_path / "shard-w0-00000.h5"
    with h5py.File(shard, "r+") as f:
        f["split"][1] = "dev"
    with pytest.raises(CacheError, match=r"shard-w0-00000\.h5: 1 utterance\(s\) with a split other than train"):
        open_cache(tmp_path, progress=False)


def test_version_2_shard_without_its_split_dataset_is_refused(tmp_path):
    write(tmp_path, ["train", "valid", "test"], shard_size=3)
    with h5py.File(tmp_path / "shard-w0-00000.h5", "r+") as f:
        del f["split"]
    with pytest.raises(CacheError, match=r"shard-w0-00000\.h5: dataset 'split' missing"):
        open_cache(tmp_path, progress=False)


def test_a_version_1_cache_still_loads_with_no_splits(tmp_path):
    """The fixture was written by ksr at schema version 1 (no split dataset, version 1 attributes)."""
    shutil.copytree(V1, tmp_path / "c")
    with h5py.File(tmp_path / "c" / "shard-w0-00000.h5", "r") as f:
        assert f.attrs["schema_version"] == 1 and "split" not in f
    assert verify_cache(tmp_path / "c", progress=False).ok
    with open_cache(tmp_path / "c", mode="memory", progress=False) as cache:
        assert len(cache) == 40 and cache.splits.tolist() == [""] * 40
        assert sorted(set(cache.sessions.tolist())) == ["1", "2", "3", "4", "5"]
        assert np.isfinite(cache.batch(np.arange(40)).audio.numpy()).all()
    text = format_info(cache_info(tmp_path / "c"))
    assert "splits" not in text and text.startswith(f"cache {tmp_path / 'c'} (schema v1), ")


def test_a_version_1_cache_takes_version_2_shards(tmp_path):
    """A writer adding to an old cache writes version-2 shards beside the old ones; both read."""
    shutil.copytree(V1, tmp_path / "c")
    with open_cache(tmp_path / "c", progress=False) as old:
        meta = old.meta
    extra = list(synthetic_utterances(45, meta, seed=9, splits=["train"] * 45))[40:]
    for i, u in enumerate(extra):
        u["id"] = f"new{i}"
    with CacheWriter(tmp_path / "c", meta, tag="w1") as w:
        for u in extra:
            w.add(**u)
    with open_cache(tmp_path / "c", progress=False) as cache:
        got = dict(zip(cache.ids, cache.splits.tolist(), strict=True))
    assert len(got) == 45 and [got[f"new{i}"] for i in range(5)] == ["train"] * 5
    assert sum(v == "" for v in got.values()) == 40
    info = cache_info(tmp_path / "c")
    assert info["schema_versions"] == [1, 3] and "(schema v1, v3)" in format_info(info)
