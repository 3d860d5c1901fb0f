"""The shared low-level helpers: devices, ranks, atomic files, digests."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
import torch

from ksr.common import DeviceError, Ranks, atomic_write, ranks_from_env, remove_dead_temps, resolve_device, sha256_file


def test_auto_is_the_cpu_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "name, words",
    [
        ("bogus", "not a device"),
        ("gpu", "not a device"),
        ("cuda:x", "not a device"),
        ("meta", "cpu or cuda"),
    ],
)
def test_bad_device_names_are_one_line_errors(name, words):
    with pytest.raises(DeviceError, match=words) as caught:
        resolve_device(name)
    assert "\n" not in str(caught.value) and f"--device {name}" in str(caught.value)


def test_cuda_without_a_gpu_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for name in ("cuda", "cuda:9"):
        with pytest.raises(DeviceError, match="no CUDA device is available"):
            resolve_device(name)


def test_ranks_from_torchrun_environment():
    assert ranks_from_env({}) == Ranks(0, 1, 0)
    r = ranks_from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    assert (r.rank, r.world, r.local_rank, r.main, r.tag) == (2, 4, 0, False, "rank2")
    assert r.tags() == {"rank0", "rank1", "rank2", "rank3"}
    assert Ranks().tag == "w0" and Ranks().main
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(ValueError):
            ranks_from_env(bad)


def test_atomic_write_replaces_whole_files_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write(path, "w", lambda f: f.write("one"))
    atomic_write(path, "w", lambda f: f.write("two"))
    assert path.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def fail(f):
        f.write("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, "w", fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_dead_writers_temporaries_go_live_ones_stay(tmp_path):
    dead = tmp_path / ".best.pt.999999999.abc.tmp"  # no such process
    live = tmp_path / f".best.pt.{os.getppid()}.abc.tmp"
    foreign = tmp_path / "notes.tmp"
    for p in (dead, live, foreign):
        p.write_text("x")
    remove_dead_temps(tmp_path)
    assert not dead.exists() and live.exists() and foreign.exists()


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_the_repository_root_is_not_a_second_package():
    """Only the installed `ksr` is importable: `import fuse` from the root would load a second copy
    of the model class (tests run with --import-mode=importlib under python -P)."""
    import importlib.util

    for name in ("fuse", "cache", "extract", "common", "cli"):
        assert importlib.util.find_spec(name) is None, name
    assert importlib.util.find_spec("ksr.fuse") is not None
