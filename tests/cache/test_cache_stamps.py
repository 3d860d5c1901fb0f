"""Opening without re-reading: shards hashed once are trusted while their file stamp holds; a
changed shard is still refused before its rows are used; what only ``verify`` catches."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from ksr.cache import CacheError, CacheWriter, open_cache, verify_cache
from ksr.cache import reader as reader_mod
from ksr.cache import stamps as stamps_mod
from ksr.cache.stamps import STAMPS_FILE, file_stamp
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances, write_synthetic_cache


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "c"
    write_synthetic_cache(root, 9, synthetic_meta(8, 6), seed=2, shard_size=3)
    return root


@pytest.fixture
def hashes(monkeypatch):
    """Names of the files hashed, by a stream-mode open or verify and by a load into memory."""
    seen = []
    whole, while_loading = stamps_mod.sha256_file, reader_mod.read_extents_hashed
    monkeypatch.setattr(stamps_mod, "sha256_file", lambda path, bar=None: seen.append(path.name) or whole(path, bar))
    monkeypatch.setattr(
        reader_mod, "read_extents_hashed", lambda path, *a: seen.append(path.name) or while_loading(path, *a)
    )
    return seen


def shard(root, k):
    return root / f"shard-w0-{k:05d}.h5"


def flip(path):
    with h5py.File(path, "r") as f:
        offset = f["audio"].id.get_offset() + 17
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_a_shard_hashed_once_is_not_read_again(cache, hashes, monkeypatch):
    monkeypatch.setattr(stamps_mod, "RACY_NS", 0)  # the files were written a moment ago
    names = [shard(cache, k).name for k in range(3)]
    open_cache(cache, mode="stream", progress=False).close()
    assert sorted(hashes) == names
    doc = json.loads((cache / STAMPS_FILE).read_text())
    assert doc["shards"][names[0]]["stamp"] == file_stamp(os.stat(shard(cache, 0)))
    hashes.clear()
    for mode in ("stream", "host", "gpu"):
        with open_cache(cache, mode=mode, progress=False) as c:
            assert len(c.batch([0, 8])) == 2
    assert hashes == []  # nothing hashed, in any mode
    with open_cache(cache, mode="host", verify=False, progress=False):
        pass
    assert hashes == []


def test_fresh_files_are_hashed_at_every_open(cache, hashes):
    """A stamp taken within RACY_NS of the file's last change is not trusted: a write in the same
    tick of the file system's clock would not show in it."""
    for _ in range(2):
        open_cache(cache, mode="stream", progress=False).close()
    assert len(hashes) == 6


@pytest.mark.parametrize("mode", ["stream", "host"])
def test_a_shard_changed_after_its_stamp_is_refused(cache, monkeypatch, mode):
    monkeypatch.setattr(stamps_mod, "RACY_NS", 0)
    assert verify_cache(cache, progress=False).ok  # verify stamps what it hashed
    flip(shard(cache, 1))  # moves its mtime and ctime
    with pytest.raises(CacheError, match=r"shard-w0-00001\.h5: checksum mismatch"):
        open_cache(cache, mode=mode, progress=False)
    assert shard(cache, 1).name not in json.loads((cache / STAMPS_FILE).read_text())["shards"]


def test_an_edit_the_stamp_cannot_see_is_caught_by_verify(cache, monkeypatch):
    """The documented limit: an edit that leaves size, mtime, ctime and inode as they were (here
    made by rewriting the stamp, as a same-tick write or a block-level change would) opens; the
    full hash of ``ksr cache verify`` finds it."""
    monkeypatch.setattr(stamps_mod, "RACY_NS", 0)
    open_cache(cache, mode="stream", progress=False).close()
    flip(shard(cache, 2))
    path = cache / STAMPS_FILE
    doc = json.loads(path.read_text())
    entry = doc["shards"][shard(cache, 2).name]
    entry["stamp"] = file_stamp(os.stat(shard(cache, 2)))
    entry["hashed_ns"] = entry["stamp"][2] + 1
    path.write_text(json.dumps(doc))
    open_cache(cache, mode="stream", progress=False).close()  # not detected at open
    report = verify_cache(cache, progress=False)
    assert [p.split(": ")[1] for p in report.problems] == ["checksum mismatch"]


def test_a_garbled_stamps_file_is_ignored(cache, hashes, monkeypatch):
    monkeypatch.setattr(stamps_mod, "RACY_NS", 0)
    (cache / STAMPS_FILE).write_text("{not json")
    open_cache(cache, mode="stream", progress=False).close()
    assert len(hashes) == 3
    assert json.loads((cache / STAMPS_FILE).read_text())["kind"] == "ksr-cache-verified"
    assert verify_cache(cache, progress=False).ok and verify_cache(cache, progress=False).notes == []


def test_a_stamped_shard_is_not_opened_with_hdf5_again(cache, monkeypatch):
    """Its layout and metadata come with its stamp: the same utterances, labels and rows, and
    none of the shards inspected; a changed index meta still has every shard inspected (and refused)."""
    from ksr.cache import verify as verify_mod

    monkeypatch.setattr(stamps_mod, "RACY_NS", 0)
    first = open_cache(cache, mode="stream", progress=False)
    inspected = []
    real = verify_mod.inspect_shard
    monkeypatch.setattr(verify_mod, "inspect_shard", lambda path, *a: inspected.append(path.name) or real(path, *a))
    again = open_cache(cache, mode="stream", progress=False)
    assert inspected == []
    assert again.ids == first.ids and list(again.labels) == list(first.labels)
    assert list(again.speakers) == list(first.speakers) and list(again.transcripts) == list(first.transcripts)
    batch, expected = again.batch(range(9)), first.batch(range(9))
    assert torch.equal(batch.audio, expected.audio) and torch.equal(batch.text_lengths, expected.text_lengths)
    path = cache / "index-w0.json"
    doc = json.loads(path.read_text())
    doc["meta"]["corpus"] = "another"
    path.write_text(json.dumps(doc))
    with pytest.raises(CacheError, match=r"shard-w0-00000\.h5: made for another cache than index-w0\.json: corpus"):
        open_cache(cache, mode="stream", progress=False)
    assert len(inspected) == 3


def test_attributes_come_back_exactly_from_the_stamps(tmp_path, monkeypatch):
    """Per-utterance attributes, missing values (NaN) among them, are the same whether the open
    read them from the shards or from the stamps."""
    monkeypatch.setattr(stamps_mod, "RACY_NS", 0)
    root = tmp_path / "a"
    meta = synthetic_meta(8, 6, attributes=("activation", "valence"))
    utts = list(synthetic_utterances(7, meta, seed=4))
    utts[2]["attributes"] = [float("nan"), 2.25]
    utts[5]["attributes"] = None  # all missing
    with CacheWriter(root, meta, shard_size=3) as w:
        for u in utts:
            w.add(**u)
    first = open_cache(root, mode="stream", progress=False).attributes
    again = open_cache(root, mode="stream", progress=False).attributes
    assert first.dtype == again.dtype == np.float32 and first.shape == (7, 2)
    assert np.array_equal(first, again, equal_nan=True)
    assert np.isnan(again[2, 0]) and again[2, 1] == 2.25 and np.isnan(again[5]).all()
    assert "attributes" in json.loads((root / STAMPS_FILE).read_text())["shards"]["shard-w0-00000.h5"]["shard"]
