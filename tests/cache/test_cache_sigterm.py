"""A SIGTERM that arrives while the writer commits a shard takes effect once the shard is in the
index: the buffered utterances are not lost, and closing the writer afterwards writes the rest."""

import os
import signal

import pytest

import ksr.cache.writer as writer_module
from ksr.cache import CacheWriter, open_cache, verify_cache
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances
from ksr.common.signals import Terminated, sigterm_raises

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def test_sigterm_during_a_shard_commit(tmp_path, monkeypatch):
    meta = synthetic_meta(8, 6)
    utts = list(synthetic_utterances(5, meta, seed=2))
    real = writer_module.write_shard
    calls = []

    def write_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # while the first shard is being written
        real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "write_shard", write_shard)
    before = signal.getsignal(signal.SIGTERM)
    added = []
    with pytest.raises(Terminated):
        with sigterm_raises(), CacheWriter(tmp_path / "c", meta, shard_size=2) as w:
            for utt in utts:
                w.add(**utt)
                added.append(utt["id"])
    assert signal.getsignal(signal.SIGTERM) == before
    # The signal came inside the second add (it filled the first shard): the shard was
    # committed, then the exception stopped the loop, and closing wrote nothing more.
    assert added == [utts[0]["id"]]
    assert len(calls) == 1
    assert verify_cache(tmp_path / "c", progress=False).ok
    with open_cache(tmp_path / "c", progress=False) as cache:
        assert cache.ids == [u["id"] for u in utts[:2]]
