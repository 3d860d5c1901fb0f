"""ksr.cache refuses a damaged or foreign cache, naming the file and the problem; verify lists all."""

import dataclasses
import json
import os
import shutil

import h5py
import pytest

from ksr.cache import CacheError, CacheMismatchError, CacheWriter, EncoderInfo, open_cache, verify_cache
from ksr.cache.synthetic import synthetic_meta, write_synthetic_cache

DA, DT = 8, 6
MODES = ["memory", "stream"]


@pytest.fixture
def cache(tmp_path):
    """9 utterances in 3 shards of writer w0."""
    root = tmp_path / "c"
    write_synthetic_cache(root, 9, synthetic_meta(DA, DT), seed=11, shard_size=3)
    return root


def shard(root, k):
    return root / f"shard-w0-{k:05d}.h5"


def truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def flip_feature_byte(path):
    """Flip one bit inside the audio features (not metadata: HDF5 still opens the file)."""
    with h5py.File(path, "r") as f:
        offset = f["audio"].id.get_offset() + 1001
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def edit_index(root, change):
    path = root / "index-w0.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_intact_cache_verifies(cache):
    report = verify_cache(cache, progress=False)
    assert report.ok and report.problems == [] and report.notes == []
    assert (report.shards, report.utterances) == (3, 9)
    assert report.bytes_hashed == sum(shard(cache, k).stat().st_size for k in range(3))


@pytest.mark.parametrize("mode", MODES)
def test_truncated_shard(cache, mode):
    truncate(shard(cache, 1))
    with pytest.raises(CacheError, match=r"shard-w0-00001\.h5: truncated: \d+ bytes on disk, the index recorded \d+"):
        open_cache(cache, mode=mode, progress=False)


@pytest.mark.parametrize("mode", MODES)
def test_flipped_byte(cache, mode):
    flip_feature_byte(shard(cache, 2))
    with pytest.raises(
        CacheError,
        match=r"shard-w0-00002\.h5: checksum mismatch: SHA-256 [0-9a-f]{16}\.\.\., "
        r"the index recorded [0-9a-f]{16}\.\.\.: the file was altered",
    ):
        open_cache(cache, mode=mode, progress=False)


@pytest.mark.parametrize("mode", MODES)
def test_missing_shard(cache, mode):
    shard(cache, 0).unlink()
    with pytest.raises(
        CacheError, match=r"shard-w0-00000\.h5: missing shard \(listed in index-w0\.json with 3 utterances\)"
    ):
        open_cache(cache, mode=mode, progress=False)


def test_index_mismatch(cache):
    def change(doc):
        doc["shards"][1]["n"] = 4

    edit_index(cache, change)
    with pytest.raises(
        CacheError,
        match=r"shard-w0-00001\.h5: index mismatch: the shard says 3 utterances, "
        r"index-w0\.json says 4",
    ):
        open_cache(cache, progress=False)


@pytest.mark.parametrize("version, hint", [(4, "upgrade ksr"), (0, "extract the cache again")])
def test_schema_version_mismatch_in_index(cache, version, hint):
    edit_index(cache, lambda doc: doc.update(schema_version=version))
    with pytest.raises(
        CacheError,
        match=rf"index-w0\.json: cache schema version {version}, "
        rf"this ksr reads version 1, 2 or 3: {hint}",
    ):
        open_cache(cache, progress=False)


def test_schema_version_mismatch_in_shard(cache):
    with h5py.File(shard(cache, 1), "r+") as f:
        f.attrs["schema_version"] = 4
    report = verify_cache(cache, progress=False)
    assert any(
        "shard-w0-00001.h5: cache schema version 4, this ksr reads version 1, 2 or 3: upgrade ksr" in p
        for p in report.problems
    )
    with pytest.raises(CacheError, match=r"shard-w0-00001\.h5: "):
        open_cache(cache, progress=False)


def test_encoder_mismatch_when_adding_to_a_cache(cache):
    other = dataclasses.replace(synthetic_meta(DA, DT), audio_encoder=EncoderInfo("wav2vec", DA))
    with pytest.raises(
        CacheMismatchError,
        match=r"already holds another cache.*audio_encoder\.name: cache has "
        r"'synthetic-audio', expected 'wav2vec'",
    ):
        CacheWriter(cache, other, tag="rank1")


def test_encoder_mismatch_between_writers(cache, tmp_path):
    """Shards of another cache (other text encoder) copied into this one are refused."""
    other = dataclasses.replace(synthetic_meta(DA, DT), text_encoder=EncoderInfo("bert", DT, layer=12))
    foreign = tmp_path / "foreign"
    with CacheWriter(foreign, other, tag="x") as w:
        w.add("zzz", [[0.0] * DA], [[0.0] * DT], "neu")
    for f in ("index-x.json", "shard-x-00000.h5"):
        shutil.copy(foreign / f, cache / f)
    with pytest.raises(
        CacheError,
        match=r"index-x\.json: written for another cache than index-w0\.json: "
        r"text_encoder\.name: index-w0\.json has 'synthetic-text', index-x\.json has 'bert'",
    ):
        open_cache(cache, progress=False)


def test_duplicate_id_across_writers(cache, tmp_path):
    twin = tmp_path / "twin"
    write_synthetic_cache(twin, 2, synthetic_meta(DA, DT), seed=11, tag="twin")  # same ids as utt 0, 1
    for f in ("index-twin.json", "shard-twin-00000.h5"):
        shutil.copy(twin / f, cache / f)
    with pytest.raises(
        CacheError, match=r"shard-w0-00000\.h5: utterance 'utt000000' is also stored in shard-twin-00000\.h5"
    ):
        open_cache(cache, progress=False)


def test_unindexed_shard_is_invisible_to_readers_and_reported_by_verify(cache):
    shutil.copy(shard(cache, 0), shard(cache, 7))
    assert len(open_cache(cache, progress=False)) == 9
    report = verify_cache(cache, progress=False)
    assert report.problems == [
        f"{shard(cache, 7)}: shard not listed in any index (left by an interrupted "
        f"writer, or index-w0.json was lost): rerun writer 'w0' or remove it"
    ]


def test_unreadable_index(cache):
    (cache / "index-w0.json").write_text('{"kind": "ksr-cache-index", "schema_ver')
    with pytest.raises(CacheError, match=r"index-w0\.json: unreadable index \(Unterminated string"):
        open_cache(cache, progress=False)


def test_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match=r"no index-\*\.json file: not a ksr cache"):
        open_cache(tmp_path, progress=False)
    with pytest.raises(CacheError, match=r"no such cache directory"):
        open_cache(tmp_path / "nope", progress=False)


def test_stream_read_after_the_file_shrank(cache):
    c = open_cache(cache, mode="stream", progress=False)
    os.truncate(shard(cache, 2), 100)
    with pytest.raises(CacheError, match=r"shard-w0-00002\.h5: truncated: the file ended at byte \d+"):
        c.batch([8])


def test_verify_reports_every_problem_at_once(cache):
    truncate(shard(cache, 0))
    flip_feature_byte(shard(cache, 1))
    shard(cache, 2).unlink()
    (cache / "shard-w0-00003.h5.tmp").write_bytes(b"half a shard")
    report = verify_cache(cache, progress=False)
    assert not report.ok
    assert len(report.problems) == 3
    assert report.problems[0].startswith(f"{shard(cache, 2)}: missing shard")
    assert report.problems[1].startswith(f"{shard(cache, 0)}: truncated")
    assert report.problems[2].startswith(f"{shard(cache, 1)}: checksum mismatch")
    assert report.notes == [
        f"{cache / 'shard-w0-00003.h5.tmp'}: unfinished file of an interrupted writer "
        f"(readers ignore it; the writer's rerun removes it)"
    ]
    # a reader stops at the structural problems (the flipped byte is caught by the checksum
    # only while loading), and points at verify for the full list
    with pytest.raises(CacheError, match=r"missing shard .* \(and 1 more problem\(s\): run `ksr cache verify "):
        open_cache(cache, progress=False)


def test_a_label_array_stored_as_floats_is_refused(cache):
    with h5py.File(shard(cache, 1), "r+") as f:
        labels = f["label"][()]
        del f["label"]
        f.create_dataset("label", data=labels.astype("float32") + 0.5)  # 1.5 would be read as class 1
    report = verify_cache(cache, checksums=False, progress=False)
    assert any("shard-w0-00001.h5: dataset 'label' holds float32 values, not integers" in p for p in report.problems), (
        report.problems
    )
    with pytest.raises(CacheError, match=r"dataset 'label' holds float32 values"):
        open_cache(cache, progress=False)
