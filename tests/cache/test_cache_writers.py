"""One cache, one run of writers: a writer started with its run's ``peers`` refuses to start while
a writer of another run is live (both would store the same utterances), and readers and verify
refuse a cache that a live writer is still filling."""

import os

import pytest

from ksr.cache import CacheError, CacheWriter, open_cache, verify_cache
from ksr.cache.locks import live_writers
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances

DA, DT = 8, 6
PID = os.getpid()

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock")


def other_run(root, tag="w0"):
    return (
        f"{root}: another extraction is writing this cache now as writer {tag!r} (pid {PID}); two runs at once "
        f"would store utterances twice: wait until it has finished (or stop it), then run this again"
    )


def being_written(root, who):
    return (
        f"{root}: being written now by {who}: what it holds is not the whole cache yet; use it once the "
        f"extraction has finished"
    )


def test_a_writer_of_another_run_is_refused_while_one_is_live(tmp_path):
    meta = synthetic_meta(DA, DT)
    ranks = {"rank0", "rank1"}
    with CacheWriter(tmp_path, meta, tag="w0", peers={"w0"}):
        assert (tmp_path / ".lock-w0").read_text() == f"{PID}\n"
        with pytest.raises(CacheError) as err:
            CacheWriter(tmp_path, meta, tag="rank0", peers=ranks)
        assert str(err.value) == other_run(tmp_path)
        assert live_writers(tmp_path) == {"w0": str(PID)}  # the refused writer let go of its lock
        assert not (tmp_path / ".lock-rank0").exists()  # and removed the file it made
        CacheWriter(tmp_path, meta, tag="rank0").close()  # without peers (the library default): no check
    # The first run has finished: a torchrun run's ranks write side by side.
    first = CacheWriter(tmp_path, meta, tag="rank0", peers=ranks)
    second = CacheWriter(tmp_path, meta, tag="rank1", peers=ranks)
    with pytest.raises(CacheError) as err:
        CacheWriter(tmp_path, meta, tag="w0", peers={"w0"})
    assert str(err.value) == (
        f"{tmp_path}: another extraction is writing this cache now as writer 'rank0' (pid {PID}) and writer "
        f"'rank1' (pid {PID}); two runs at once would store utterances twice: wait until it has finished (or "
        f"stop it), then run this again"
    )
    first.close()
    second.close()
    assert live_writers(tmp_path) == {}
    CacheWriter(tmp_path, meta, tag="w0", peers={"w0"}).close()


def test_readers_and_verify_refuse_a_cache_being_written(tmp_path):
    meta = synthetic_meta(DA, DT)
    utts = list(synthetic_utterances(5, meta, seed=1))
    w = CacheWriter(tmp_path, meta, shard_size=2)
    for u in utts:
        w.add(**u)  # two shards finished, one utterance buffered
    for mode in ("memory", "stream"):
        with pytest.raises(CacheError) as err:
            open_cache(tmp_path, mode=mode, progress=False)
        assert str(err.value) == being_written(tmp_path, f"writer 'w0' (pid {PID})")
    report = verify_cache(tmp_path, progress=False)
    assert report.problems == [being_written(tmp_path, f"writer 'w0' (pid {PID})")]
    w.close()
    assert verify_cache(tmp_path, progress=False).ok
    with open_cache(tmp_path, progress=False) as cache:
        assert len(cache) == 5


def test_a_dead_writers_lock_file_is_not_a_live_writer(tmp_path):
    meta = synthetic_meta(DA, DT)
    with CacheWriter(tmp_path, meta, shard_size=2) as w:
        w.add(**next(synthetic_utterances(1, meta)))
    (tmp_path / ".lock-rank3").write_text("999999999\n")  # left by a killed process: no lock held
    assert live_writers(tmp_path) == {}
    assert verify_cache(tmp_path, progress=False).ok
    CacheWriter(tmp_path, meta, tag="w0", peers={"w0"}).close()
