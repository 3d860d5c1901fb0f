"""ksr.cache reader: both modes give the same batches; folds; several writers; compatibility."""

import numpy as np
import pytest
import torch

from ksr.cache import CacheError, CacheMismatchError, CacheWriter, check_compatible, open_cache
from ksr.cache import reader as reader_mod
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances, write_synthetic_cache

DA, DT = 8, 6


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_synthetic_cache(root, 23, synthetic_meta(DA, DT), seed=5, shard_size=4)
    return root


def _epochs(cache, seed, epochs=2, **kw):
    g = torch.Generator().manual_seed(seed)
    loader = cache.loader(generator=g, **kw)
    return [list(loader) for _ in range(epochs)]


def _same_batches(x, y):
    assert len(x) == len(y)
    for a, b in zip(x, y, strict=True):
        assert a.ids == b.ids
        for name in (
            "audio",
            "text",
            "audio_padding_mask",
            "text_padding_mask",
            "labels",
            "audio_lengths",
            "text_lengths",
            "indices",
        ):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=5, shuffle=True),
        dict(batch_size=4, shuffle=False),
        dict(batch_size=6, shuffle=True, drop_last=True),
    ],
)
def test_memory_and_stream_give_the_same_batches(cache_dir, kw):
    memory = open_cache(cache_dir, mode="memory", progress=False)
    stream = open_cache(cache_dir, mode="stream", progress=False)
    a, b = _epochs(memory, 7, **kw), _epochs(stream, 7, **kw)
    for x, y in zip(a, b, strict=True):
        _same_batches(x, y)
    n_batches = 23 // kw["batch_size"] if kw.get("drop_last") else -(-23 // kw["batch_size"])
    assert len(a[0]) == n_batches == len(memory.loader(**kw))
    seen = [i for batch in a[0] for i in batch.ids]
    if not kw.get("drop_last"):
        assert sorted(seen) == memory.ids  # every utterance once per epoch
    if kw["shuffle"]:
        assert [b.ids for b in a[0]] != [b.ids for b in a[1]]  # a new order each epoch
        # the order is the generator's permutation of the indices, whatever the mode
        perm = torch.randperm(23, generator=torch.Generator().manual_seed(7)).tolist()
        assert [i for batch in a[0] for i in batch.indices.tolist()] == perm[: len(seen)]
    else:
        assert seen == memory.ids


def test_select_folds(cache_dir):
    cache = open_cache(cache_dir, mode="stream", verify=False, progress=False)
    test = cache.select(sessions="5")
    train = cache.select(sessions=[5], exclude=True)
    assert sorted(np.concatenate([test, train]).tolist()) == list(range(23))
    assert set(cache.sessions[test].tolist()) == {"5"} and "5" not in set(cache.sessions[train].tolist())
    assert cache.select(sessions=["1", "2"]).tolist() == [i for i, s in enumerate(cache.sessions) if s in ("1", "2")]
    speaker = cache.speakers[0]
    assert cache.select(speakers=speaker).tolist() == [i for i, s in enumerate(cache.speakers) if s == speaker]
    ids = [cache.ids[9], cache.ids[2]]
    assert cache.select(ids=ids).tolist() == [2, 9]
    both = cache.select(sessions="1", speakers=speaker)
    assert all(cache.sessions[i] == "1" and cache.speakers[i] == speaker for i in both)
    batch = next(iter(cache.loader(test, batch_size=100)))
    assert batch.indices.tolist() == test.tolist()
    with pytest.raises(CacheError, match=r"unknown session\(s\) \['6'\]; the cache has \['1', '2', '3', '4', '5'\]"):
        cache.select(sessions=6)
    with pytest.raises(CacheError, match=r"1 unknown id\(s\) \['nope'\]"):
        cache.select(ids=["nope", cache.ids[0]])


def test_order_does_not_depend_on_how_the_cache_was_written(tmp_path):
    """Two writers (ranks), other shard sizes: same utterance numbers, same batches."""
    meta = synthetic_meta(DA, DT)
    utts = list(synthetic_utterances(11, meta, seed=4))
    write_synthetic_cache(tmp_path / "one", 11, meta, seed=4, shard_size=5)
    writers = [CacheWriter(tmp_path / "two", meta, tag=f"rank{r}", shard_size=2) for r in range(2)]
    for i, u in enumerate(reversed(utts)):
        writers[i % 2].add(**u)
    for w in writers:
        w.close()
    one = open_cache(tmp_path / "one", mode="memory", progress=False)
    two = open_cache(tmp_path / "two", mode="stream", progress=False)
    assert [ix.tag for ix in two.indexes] == ["rank0", "rank1"]
    assert one.ids == two.ids == sorted(u["id"] for u in utts)
    for x, y in zip(
        _epochs(one, 3, batch_size=4, shuffle=True), _epochs(two, 3, batch_size=4, shuffle=True), strict=True
    ):
        _same_batches(x, y)


def test_writer_resumes_and_skips_stored_ids(tmp_path):
    meta = synthetic_meta(DA, DT)
    utts = list(synthetic_utterances(7, meta, seed=8))
    with CacheWriter(tmp_path, meta, shard_size=3) as w:
        for u in utts[:4]:
            w.add(**u)
    with CacheWriter(tmp_path, meta, shard_size=3) as w:
        assert w.stored_ids() == {u["id"] for u in utts[:4]}
        for u in utts:
            if u["id"] not in w.stored_ids():
                w.add(**u)
    cache = open_cache(tmp_path, progress=False)
    assert cache.ids == [u["id"] for u in utts]
    # 4 utterances in shards of 3 and 1, then the 3 missing ones in a third shard
    assert [(s.path.name, s.n) for s in cache.shards] == [
        ("shard-w0-00000.h5", 3),
        ("shard-w0-00001.h5", 1),
        ("shard-w0-00002.h5", 3),
    ]


def test_second_live_writer_with_the_same_tag_is_refused(tmp_path):
    meta = synthetic_meta(DA, DT)
    with CacheWriter(tmp_path, meta, tag="rank0"):
        with pytest.raises(CacheError, match=r"another process is writing as writer 'rank0'"):
            CacheWriter(tmp_path, meta, tag="rank0")
        CacheWriter(tmp_path, meta, tag="rank1").close()  # another tag is fine
    CacheWriter(tmp_path, meta, tag="rank0").close()  # and the tag is free again
    with pytest.raises(ValueError, match=r"writer tag 'rank-0'"):
        CacheWriter(tmp_path, meta, tag="rank-0")


def test_empty_cache_opens_with_no_utterances(tmp_path):
    CacheWriter(tmp_path, synthetic_meta(DA, DT)).close()
    cache = open_cache(tmp_path, progress=False)
    assert len(cache) == 0 and list(cache.loader()) == []


def test_check_compatible_spells_out_every_difference():
    meta = synthetic_meta(DA, DT)
    check_compatible(
        meta,
        {
            "audio_dim": DA,
            "text_encoder": {"name": "synthetic-text", "layer": 0},
            "classes": ["ang", "neu", "hap", "sad"],
            "max_audio_len": 460,
        },
    )
    with pytest.raises(CacheMismatchError) as err:
        check_compatible(
            meta, {"audio_encoder": {"name": "wav2vec-large", "dim": 512}, "text_dim": 1024, "dtype": "float16"}
        )
    assert err.value.differences == [
        "audio_encoder.name: cache has 'synthetic-audio', expected 'wav2vec-large'",
        "audio_encoder.dim: cache has 8, expected 512",
        "text_encoder.dim: cache has 6, expected 1024",
    ]
    assert "cache does not fit: audio_encoder.name" in str(err.value)
    with pytest.raises(CacheMismatchError, match=r"max_len: unknown key"):
        check_compatible(meta, {"max_len": 460})


def test_open_cache_checks_the_expected_config(cache_dir):
    with pytest.raises(CacheMismatchError, match=r"audio_encoder\.dim: cache has 8, expected 512"):
        open_cache(cache_dir, expected={"audio_dim": 512}, progress=False)


def test_auto_mode_streams_what_does_not_fit(cache_dir, monkeypatch):
    monkeypatch.setattr(reader_mod, "_available_ram", lambda: 10**12)
    said = []
    assert open_cache(cache_dir, progress=False, say=said.append).mode == "host"
    monkeypatch.setattr(reader_mod, "_available_ram", lambda: 1000)
    assert open_cache(cache_dir, progress=False, say=said.append).mode == "stream"
    assert said[0].startswith(f"cache {cache_dir.name}: features in host memory (the features (")
    assert said[1].endswith("take more than half of the 1.0 KB of RAM available)")
    assert len(said) == 2  # one line per open


@pytest.mark.parametrize("mode", ["memory", "gpu", "host", "stream"])
def test_empty_batch(cache_dir, mode):
    batch = open_cache(cache_dir, mode=mode, progress=False).batch([])
    assert batch.audio.shape == (0, 460, DA) and batch.ids == [] and batch.labels.shape == (0,)


def test_bad_indices(cache_dir):
    cache = open_cache(cache_dir, mode="stream", verify=False, progress=False)
    with pytest.raises(IndexError, match=r"0\.\.22"):
        cache.batch([23])
    with pytest.raises(ValueError, match="1-D"):
        cache.loader(np.array([[1, 2]]))


def test_memory_mode_on_another_device(cache_dir):
    """The accelerator path (features kept on the device, gathered there) on torch's "meta"
    device, which has shapes and dtypes but no data: a smoke test where no GPU is present."""
    for mode in ("gpu", "memory"):  # memory, the old name, is gpu on a device
        cache = open_cache(cache_dir, mode=mode, device="meta", progress=False)
        assert cache.mode == "gpu"
        batch = cache.batch([4, 0])
        for t in (batch.audio, batch.text, batch.audio_padding_mask, batch.labels):
            assert t.device.type == "meta"
        assert batch.audio.shape == (2, 460, DA) and batch.audio.dtype == torch.float32
        assert batch.text_padding_mask.dtype == torch.bool and batch.ids == [cache.ids[4], cache.ids[0]]


@pytest.mark.parametrize("mode", ["host", "stream"])
def test_host_and_stream_feed_another_device(cache_dir, mode):
    """Every mode works with every device: host and stream build batches on the CPU and the
    loader hands them over on the cache's device (stream mode on a GPU was refused before)."""
    cache = open_cache(cache_dir, mode=mode, device="meta", progress=False)
    assert cache.mode == mode and cache.home.type == "cpu"
    assert cache.batch([1]).audio.device.type == "cpu"
    batches = list(cache.loader(batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 3]
    assert all(b.audio.device.type == "meta" and b.labels.device.type == "meta" for b in batches)
