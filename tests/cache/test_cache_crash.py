"""A writer killed (SIGKILL) in the middle of a shard leaves nothing half-written visible, and its
rerun finishes the cache without losing or duplicating an utterance."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ksr.cache import CacheWriter, open_cache, verify_cache
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# The child writes 7 utterances in shards of 3 and kills itself while committing the second shard.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import ksr.cache.writer as W
    from ksr.cache.synthetic import synthetic_meta, synthetic_utterances

    root, where = sys.argv[1], sys.argv[2]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_write_shard, real_write_index = W.write_shard, W.write_index

    def write_shard(path, meta, **kw):
        real_write_shard(path, meta, **kw)
        if where == "writing" and kw["seq"] == 1:  # half of the file is on disk
            os.truncate(path, os.path.getsize(path) // 2)
            die()

    def write_index(root, index):
        if where == "indexing" and len(index.shards) == 2:  # renamed, not yet in the index
            die()
        real_write_index(root, index)

    W.write_shard, W.write_index = write_shard, write_index
    meta = synthetic_meta(8, 6)
    with W.CacheWriter(root, meta, shard_size=3) as w:
        for utt in synthetic_utterances(7, meta, seed=21):
            w.add(**utt)
""")


def _run_child(root, where):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), where], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("where", ["writing", "indexing"])
def test_killed_writer_leaves_no_half_shard_and_resumes(tmp_path, where):
    root = tmp_path / "c"
    _run_child(root, where)
    names = sorted(os.listdir(root))
    leftover = "shard-w0-00001.h5.tmp" if where == "writing" else "shard-w0-00001.h5"
    assert leftover in names

    utts = list(synthetic_utterances(7, synthetic_meta(8, 6), seed=21))
    for mode in ("memory", "stream"):  # readers see exactly the first, finished shard
        assert open_cache(root, mode=mode, progress=False).ids == [u["id"] for u in utts[:3]]
    report = verify_cache(root, progress=False)
    if where == "writing":
        assert report.ok and len(report.notes) == 1 and "unfinished file" in report.notes[0]
    else:
        assert not report.ok and "shard not listed in any index" in report.problems[0]

    # the rerun removes the leftover, skips the stored ids and writes the rest
    with CacheWriter(root, synthetic_meta(8, 6), shard_size=3) as w:
        assert w.stored_ids() == {u["id"] for u in utts[:3]}
        for u in utts:
            if u["id"] not in w.stored_ids():
                w.add(**u)
    assert verify_cache(root, progress=False).ok
    assert not [n for n in os.listdir(root) if n.endswith(".tmp")]
    cache = open_cache(root, progress=False)
    assert cache.ids == [u["id"] for u in utts]
    assert [s.n for s in cache.shards] == [3, 3, 1]
