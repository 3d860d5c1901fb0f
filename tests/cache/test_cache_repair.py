"""`ksr cache repair` removes the duplicate copies two simultaneous runs stored: the first copy of
each id is kept, the cache then verifies and reads exactly as a cache written once; a repair
killed before its index is replaced is finished by running it again."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.cli_runner import invoke_ksr

from ksr.cache import CacheError, CacheWriter, open_cache, verify_cache
from ksr.cache.repair import repair_cache
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances
from ksr.common.faults import ENV as KILL_AT

DA, DT = 8, 6
META = synthetic_meta(DA, DT)
UTTS = list(synthetic_utterances(14, META, seed=5))


def twice(root):
    """Two writers open at once (no peers check, as before ksr refused it): w0 stores utterances
    0-9, rank0 stores 6-13, in shards of 4. In file-name order rank0's shards come first."""
    a = CacheWriter(root, META, tag="w0", shard_size=4)
    b = CacheWriter(root, META, tag="rank0", shard_size=4)
    for u in UTTS[:10]:
        a.add(**u)
    for u in UTTS[6:]:
        b.add(**u)
    a.close()
    b.close()
    return root


@pytest.fixture(scope="module")
def once(tmp_path_factory):
    root = tmp_path_factory.mktemp("once") / "c"
    with CacheWriter(root, META, shard_size=5) as w:
        for u in UTTS:
            w.add(**u)
    return root


def assert_same_contents(root, reference):
    with open_cache(root, progress=False) as got, open_cache(reference, progress=False) as want:
        assert got.ids == want.ids == [u["id"] for u in UTTS]
        a, b = got.batch(np.arange(len(got))), want.batch(np.arange(len(want)))
        for key in ("audio", "text", "labels", "audio_lengths", "text_lengths"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        assert got.speakers.tolist() == want.speakers.tolist()
        assert got.transcripts.tolist() == want.transcripts.tolist()


def test_repair_keeps_the_first_copy_of_each_id(tmp_path, once):
    root = twice(tmp_path / "c")
    before = verify_cache(root, progress=False)
    assert len(before.problems) == 4 and all("is also stored in" in p for p in before.problems)
    with pytest.raises(CacheError, match="is also stored in"):
        open_cache(root, progress=False)
    names = sorted(os.listdir(root))

    dry = repair_cache(root, dry_run=True)
    assert sorted(os.listdir(root)) == names  # nothing changed
    assert dry.format(dry_run=True) == (
        f"{root}: would remove 4 duplicate copies of 4 utterance(s): 1 shard(s) dropped whole, 1 rewritten without them"
    )

    report = repair_cache(root)
    # rank0-00000 (6-9) and rank0-00001 (10-13) are first and kept whole; w0-00000 (0-3) holds no
    # copy; w0-00001 (4-7) loses 6 and 7 and becomes w0-00003; w0-00002 (8, 9) goes.
    assert report.copies == 4 and report.utterances == 4
    assert report.dropped == ["shard-w0-00002.h5"]
    assert report.rewritten == {"shard-w0-00001.h5": "shard-w0-00003.h5"}
    shards = sorted(n for n in os.listdir(root) if n.endswith(".h5"))
    assert shards == ["shard-rank0-00000.h5", "shard-rank0-00001.h5", "shard-w0-00000.h5", "shard-w0-00003.h5"]
    after = verify_cache(root, progress=False)
    assert after.ok and not after.notes and after.utterances == 14
    assert_same_contents(root, once)
    assert repair_cache(root).format() == f"{root}: no utterance is stored twice: nothing to repair"


def test_repair_through_the_command_line(tmp_path):
    root = twice(tmp_path / "c")
    r = invoke_ksr(["cache", "repair", root], tmp_path)
    assert r.exit_code == 0, r.output
    assert r.output == (
        f"{root}: removed 4 duplicate copies of 4 utterance(s): 1 shard(s) dropped whole, 1 rewritten without them\n"
    )
    assert invoke_ksr(["cache", "verify", root], tmp_path).exit_code == 0


def test_repair_refuses_a_damaged_or_live_cache(tmp_path):
    root = twice(tmp_path / "c")
    shard = root / "shard-w0-00001.h5"  # one that repair would rewrite
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(CacheError) as err:
        repair_cache(root)
    assert str(err.value).startswith(f"cannot repair {root}: {shard}: truncated: ")
    assert str(err.value).endswith("; repair only removes duplicate copies")
    clean = tmp_path / "d"
    with CacheWriter(clean, META) as w:
        w.add(**UTTS[0])
        with pytest.raises(CacheError, match=r": being written now by writer 'w0' \(pid \d+\)"):
            repair_cache(clean)


def test_a_repair_killed_before_its_index_is_finished_by_a_rerun(tmp_path, once):
    root = twice(tmp_path / "c")
    env = {**os.environ, KILL_AT: "repair-index:1"}
    killed = subprocess.run(
        [sys.executable, "-m", "ksr.cli", "cache", "repair", str(root)], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    # The rewritten shard is committed but no index lists it; the old copies are all still listed.
    assert (root / "shard-w0-00003.h5").exists()
    report = verify_cache(root, progress=False)
    assert any("shard-w0-00003.h5: shard not listed in any index" in p for p in report.problems)
    again = repair_cache(root)
    assert again.cleaned == ["shard-w0-00003.h5"]
    assert again.rewritten == {"shard-w0-00001.h5": "shard-w0-00003.h5"}
    assert again.format().endswith("(removed 1 unfinished file(s) of interrupted writers)")
    after = verify_cache(root, progress=False)
    assert after.ok and not after.notes, after.problems + after.notes
    assert_same_contents(root, once)
