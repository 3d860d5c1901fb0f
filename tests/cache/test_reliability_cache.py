"""A damaged cache is refused by every command that reads it (train, eval, cache info), by name.

tests/test_cache_damage.py covers ``open_cache`` and ``verify_cache`` in Python; this file goes
through the commands a user types, and through damage done while a streamed cache is in use.
Each refusal must exit non-zero with one line naming the file and the problem, no traceback.
"""

import json
import os
import re
import shutil

import h5py
import pytest
from support.cli_runner import invoke_ksr
from support.tiny import TINY_MODEL, tiny_cache, tiny_config

import ksr.common.faults
from ksr.cache import CacheWriter
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances
from ksr.fuse.train.recipes import recipe
from ksr.fuse.train.runs import RunSpec, prepare_run

META = dict(audio_dim=8, text_dim=6, max_audio_len=12, max_text_len=5, dtype="float32")
TRAIN = [
    "--epochs",
    "2",
    *TINY_MODEL,
    "--batch-size",
    "8",
    "--fold",
    "2",
    "--device",
    "cpu",
    "--recipe",
    "official",
]


def make_cache(root, seed=3, **meta_changes):
    """30 utterances of writer w0 in 3 shards of 10 (sessions 1..5 in every shard)."""
    meta = synthetic_meta(**{**META, **meta_changes})
    return tiny_cache(root, 30, seed=seed, audio=(3, 1, 10), text=(1, 5), signal=0.5, meta=meta, shard_size=10)


def shard(root, k, tag="w0"):
    return root / f"shard-{tag}-{k:05d}.h5"


def flip_byte(path, dataset="audio", at=41):
    """Flip one bit inside a dataset's bytes (the HDF5 structure stays readable)."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset() + at
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def truncate(root):
    os.truncate(shard(root, 1), shard(root, 1).stat().st_size // 2)


def alter(root):
    flip_byte(shard(root, 2))


def delete(root):
    shard(root, 0).unlink()


def foreign_index(root):
    """The index of another cache (other text encoder width), same writer tag and shard names."""
    other = make_cache(root.parent / "other", seed=4, text_dim=40)
    shutil.copy(other / "index-w0.json", root / "index-w0.json")


def newer_schema(root):
    doc = json.loads((root / "index-w0.json").read_text())
    doc["schema_version"] = 4
    (root / "index-w0.json").write_text(json.dumps(doc))


# damage -> (the file the message names, what it says about it)
DAMAGE = {
    "truncated": (truncate, "shard-w0-00001.h5", r"truncated: \d+ bytes on disk, the index recorded \d+"),
    "altered": (
        alter,
        "shard-w0-00002.h5",
        r"checksum mismatch: SHA-256 [0-9a-f]{16}\.\.\., the index recorded "
        r"[0-9a-f]{16}\.\.\.: the file was altered or damaged",
    ),
    "deleted": (delete, "shard-w0-00000.h5", r"missing shard \(listed in index-w0\.json with 10 utterances\)"),
    # the foreign index records other sizes (its shards are wider): the first shard checked is named
    "foreign index": (
        foreign_index,
        "shard-w0-00000.h5",
        r"does not belong with index-w0\.json, which looks copied from another cache "
        r"\(text_encoder\.dim: index has 40, shard has 6\); restore this cache's own index-w0\.json",
    ),
    "newer schema": (
        newer_schema,
        "index-w0.json",
        r"cache schema version 4, this ksr reads version 1, 2 or 3: upgrade ksr",
    ),
}


@pytest.fixture
def cache(tmp_path):
    return make_cache(tmp_path / "c")


def invoke(args, cwd):
    """Run ``ksr ARGS`` in ``cwd``; the result and its output."""
    result = invoke_ksr(args, cwd)
    return result, result.output


def assert_refused(result, output, path, problem):
    """Exit status 1, click's one-line 'Error: PATH: PROBLEM', no Python traceback."""
    assert result.exit_code == 1, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught error
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    assert re.search(rf"Error: {re.escape(str(path))}: {problem}", errors[0]), errors[0]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_train_refuses_a_damaged_cache(cache, tmp_path, damage):
    do, name, problem = DAMAGE[damage]
    do(cache)
    result, out = invoke(["train", "--cache", cache, "--run", tmp_path / "run", *TRAIN], tmp_path)
    assert_refused(result, out, cache / name, problem)
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_eval_refuses_a_damaged_cache(cache, tmp_path, damage):
    spec = RunSpec(
        model=tiny_config(audio_dim=8, text_dim=6, max_positions=2000),
        recipe=recipe("official"),
        cache_meta=synthetic_meta(**META).to_dict(),
        cache_dir=str(cache),
    )
    prepare_run(tmp_path / "run", spec, resume=False)
    do, name, problem = DAMAGE[damage]
    do(cache)
    for args in (
        ["eval", "--run", tmp_path / "run", "--device", "cpu"],  # the run's own cache
        ["eval", "--run", tmp_path / "run", "--cache", cache, "--device", "cpu"],
    ):
        result, out = invoke(args, tmp_path)
        assert_refused(result, out, cache / name, problem)


@pytest.mark.parametrize("damage", [d for d in DAMAGE if d != "altered"])
def test_cache_info_refuses_a_damaged_cache(cache, tmp_path, damage):
    do, name, problem = DAMAGE[damage]
    do(cache)
    for args in (["cache", "info", cache], ["cache", "info", "--json", cache]):
        result, out = invoke(args, tmp_path)
        assert_refused(result, out, cache / name, problem)


def test_cache_info_reads_no_feature_and_says_it_checked_no_checksum(cache, tmp_path):
    alter(cache)  # feature bytes: info does not read them, and says what it did not check
    result, out = invoke(["cache", "info", cache], tmp_path)
    assert result.exit_code == 0, out
    assert out.splitlines()[-1] == (
        "checked: indexes, shard sizes, schema and metadata; not the checksums (run `ksr cache verify`)"
    )
    flip_byte(shard(cache, 1), "label", at=0)  # a label 0..3 becomes 16..19: metadata info does read
    result, out = invoke(["cache", "info", cache], tmp_path)
    assert_refused(result, out, shard(cache, 1), r"1 utterance\(s\) with a label outside 0\.\.3 \(first: 'utt000010'\)")


def add_writer(root, tag, first, n, **meta_changes):
    """Writer ``tag`` adds utterances ``first..first+n-1`` (their own ids) as one shard."""
    meta = synthetic_meta(**{**META, **meta_changes})
    with CacheWriter(root, meta, tag=tag, shard_size=n) as w:
        for i, utt in enumerate(synthetic_utterances(n, meta, seed=first)):
            w.add(**{**utt, "id": f"utt{first + i:06d}"})


def test_verify_reports_every_kind_of_damage_at_once(cache, tmp_path):
    add_writer(cache, "x", 100, 4)
    add_writer(cache, "y", 200, 4)
    truncate(cache)
    alter(cache)
    delete(cache)
    # writer x's index replaced by that of another cache (other text width)
    other = tmp_path / "other"
    add_writer(other, "x", 300, 4, text_dim=7)
    shutil.copy(other / "index-x.json", cache / "index-x.json")
    # writer y's index from a newer ksr
    doc = json.loads((cache / "index-y.json").read_text())
    doc["schema_version"] = 4
    (cache / "index-y.json").write_text(json.dumps(doc))

    result, out = invoke(["cache", "verify", cache], tmp_path)
    assert result.exit_code == 1
    assert "Traceback" not in out
    lines = out.splitlines()
    expected = [
        rf"{cache / 'index-y.json'}: cache schema version 4, this ksr reads version 1, 2 or 3: upgrade ksr",
        rf"{cache / 'index-x.json'}: written for another cache than index-w0\.json: text_encoder\.dim: "
        r"index-w0\.json has 6, index-x\.json has 7",
        rf"{cache / 'shard-w0-00000.h5'}: missing shard \(listed in index-w0\.json with 10 utterances\)",
        rf"{cache / 'shard-w0-00001.h5'}: truncated: \d+ bytes on disk, the index recorded \d+",
        rf"{cache / 'shard-w0-00002.h5'}: checksum mismatch",
        rf"{cache / 'shard-y-00000.h5'}: shard not listed in any index",
    ]
    for pattern in expected:
        assert sum(bool(re.match("error: " + pattern, line)) for line in lines) == 1, (pattern, out)
    assert all(line.startswith("error: ") for line in lines), out


def damage_on_batch(monkeypatch, count, damage):
    """Call ``damage()`` when training reaches its ``count``-th batch (through the test-only hook)."""
    seen = {"n": 0}

    def point(phase):
        if phase == "train-batch":
            seen["n"] += 1
            if seen["n"] == count:
                damage()

    monkeypatch.setattr(ksr.common.faults, "point", point)
    return seen


def overwrite_rows(path):
    """Rewrite bytes in place (same size), as a copy over a file being read would."""
    with h5py.File(path, "r") as f:
        offset = f["audio"].id.get_offset()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x7f" * 64)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (
            "truncated",
            r"truncated: the file ended at byte \d+ \(it had \d+ bytes when the cache was opened\); "
            r"run `ksr cache verify`",
        ),
        (
            "overwritten",
            r"changed on disk after the cache was opened \(modified while in use\): run `ksr cache verify`",
        ),
    ],
)
def test_streamed_training_stops_when_a_shard_is_damaged_while_in_use(cache, tmp_path, monkeypatch, damage, problem):
    target = shard(cache, 1)
    act = {"truncated": lambda: os.truncate(target, 4096), "overwritten": lambda: overwrite_rows(target)}[damage]
    seen = damage_on_batch(monkeypatch, 6, act)  # the second epoch (about 4 batches each)
    result, out = invoke(
        ["train", "--cache", cache, "--cache-mode", "stream", "--run", tmp_path / "run", *TRAIN], tmp_path
    )
    assert seen["n"] >= 6
    assert_refused(result, out, target, problem)


def test_streamed_training_survives_a_shard_deleted_while_in_use(cache, tmp_path, monkeypatch):
    """The open file still holds the checked bytes: the run ends as an undisturbed one does."""
    runs = {}
    for name, act in (("quiet", lambda: None), ("deleted", lambda: shard(cache, 1).unlink())):
        damage_on_batch(monkeypatch, 6, act)
        result, out = invoke(
            ["train", "--cache", cache, "--cache-mode", "stream", "--run", tmp_path / name, *TRAIN], tmp_path
        )
        assert result.exit_code == 0, out
        runs[name] = json.loads((tmp_path / name / "seed123/fold2/history.json").read_text())
    assert not shard(cache, 1).exists()
    assert runs["deleted"] == runs["quiet"]
