"""A full disk anywhere ends in one line naming the path and the space, with committed work intact.

The file system is made "full" by patching the free-space query (the preflight check) or by a
write that fails with ENOSPC (what a real full disk does mid-write); the tests then check what is
left on disk and that a rerun with room completes.
"""

from __future__ import annotations

import errno
import json
import signal

import pytest
import torch
from click.testing import CliRunner
from support.tiny import TINY_MODEL, tiny_meta

import ksr.common.files as files
from ksr.cache import CacheWriter, open_cache, verify_cache
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances, write_synthetic_cache
from ksr.cli import main
from ksr.common import atomic_save, atomic_write, write_json
from ksr.common.files import DiskFullError, human_bytes, is_disk_full


def _full(monkeypatch, free: int = 0) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda path: free)


def test_what_counts_as_a_full_disk():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # HDF5 through h5py: the errno is only in the text
    assert is_disk_full(OSError("Unable to synchronously create file (file write failed: errno = 28, error message"))
    assert is_disk_full(RuntimeError("Can't write data (No space left on device)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("No space left on device"))  # not an I/O error
    assert not is_disk_full(OSError("errno = 280, something else"))


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 999, 1000, 2_500_000, 3 * 10**12)] == [
        "0 bytes",
        "999 bytes",
        "1.0 KB",
        "2.5 MB",
        "3.0 TB",
    ]


def test_preflight_refuses_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_json(path, {"old": 1})
    _full(monkeypatch, free=10)
    with pytest.raises(DiskFullError) as caught:
        write_json(path, {"new": "x" * 100})
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and "10 bytes free" in message and "needed" in message
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary file left


def test_enospc_mid_write_removes_the_temporary_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")

    def write(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="disk full: cannot write .*report.md"):
        atomic_write(path, "wb", write)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_other_write_errors_pass_through(tmp_path):
    def write(f):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "x", "wb", write)
    assert not isinstance(caught.value, DiskFullError) and caught.value.errno == errno.EIO


def test_checkpoint_size_is_checked_before_writing(tmp_path, monkeypatch):
    state = {"w": torch.zeros(1000)}
    atomic_save(state, tmp_path / "best.pt")
    size = (tmp_path / "best.pt").stat().st_size
    _full(monkeypatch, free=size)  # the file fits, its margin does not
    with pytest.raises(DiskFullError, match=rf"about {human_bytes(size + files.SPACE_MARGIN)} needed"):
        atomic_save({"w": torch.ones(1000)}, tmp_path / "best.pt")
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["w"], torch.zeros(1000))


def test_cache_writer_keeps_committed_shards_and_a_rerun_completes(tmp_path, monkeypatch):
    meta = synthetic_meta(8, 6)
    utts = list(synthetic_utterances(5, meta, seed=3))
    root = tmp_path / "c"
    with pytest.raises(DiskFullError, match=r"cannot write .*shard-w0-00001\.h5 "):
        with CacheWriter(root, meta, shard_size=2) as w:
            for i, utt in enumerate(utts):
                if i == 3:
                    _full(monkeypatch)  # the disk fills after the first shard
                w.add(**utt)
    assert not list(root.glob("*.tmp"))
    assert len(open_cache(root)) == 2  # the committed shard, readable
    monkeypatch.undo()
    with CacheWriter(root, meta, shard_size=2) as w:  # the rerun: skips what is stored
        for utt in utts:
            if utt["id"] not in w:
                w.add(**utt)
    assert verify_cache(root).ok
    cache = open_cache(root)
    assert sorted(cache.ids) == sorted(u["id"] for u in utts)


def test_hdf5_out_of_space_is_one_error(tmp_path, monkeypatch):
    """HDF5 reports a failed write as an OSError whose errno is only in its text."""
    meta = synthetic_meta(8, 6)
    utt = next(iter(synthetic_utterances(1, meta, seed=4)))

    def no_room(*args, **kwargs):
        raise OSError("Unable to synchronously create file (file write failed: errno = 28, error message = 'No sp')")

    import ksr.cache.writer as writer_module

    monkeypatch.setattr(writer_module, "write_shard", no_room)
    with pytest.raises(DiskFullError, match="shard-w0-00000.h5"):
        with CacheWriter(tmp_path / "c", meta, shard_size=4) as w:
            w.add(**utt)
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix in (".h5", ".tmp")]


def test_train_on_a_full_disk_is_one_line_and_resume_completes(tmp_path, monkeypatch):
    meta = tiny_meta()
    write_synthetic_cache(tmp_path / "cache", 40, meta, seed=1, signal=1.0)
    run = tmp_path / "run"
    args = ["train", "--cache", str(tmp_path / "cache"), "--run", str(run), "--fold", "1", "--epochs", "2"]
    args += [*TINY_MODEL, "--no-baseline"]
    real = files.free_bytes
    monkeypatch.setattr(files, "free_bytes", lambda p: 0 if str(p).endswith(".pt") else real(p))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: disk full: cannot write ") and "--resume" in last
    assert "Traceback" not in result.output
    monkeypatch.undo()
    result = CliRunner().invoke(main, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    history = json.loads(next(run.glob("seed*/fold1/history.json")).read_text())
    assert len(history["epochs"]) == 2


def test_sigterm_outside_a_fold_is_one_line_with_the_signal_status(monkeypatch):
    import ksr.fuse.report.cross_corpus as report

    def stopped_at_report(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(report, "evaluate_saved_run_across", stopped_at_report)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(main, ["eval", "--run", "/nonexistent-run"])
    assert signal.getsignal(signal.SIGTERM) == before
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: stopped by SIGTERM")


def test_a_link_is_written_through_and_a_pipe_is_refused(tmp_path):
    import os

    from ksr.common.files import NotAFileError

    target = tmp_path / "real.json"
    (tmp_path / "link.json").symlink_to(target)
    write_json(tmp_path / "link.json", {"a": 1})
    assert (tmp_path / "link.json").is_symlink() and json.loads(target.read_text()) == {"a": 1}
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotAFileError, match=r"pipe: not a regular file \(a folder, device or pipe\)"):
        write_json(tmp_path / "pipe", {"a": 1})
    assert not (tmp_path / "pipe").is_file() and (tmp_path / "pipe").exists()


def test_the_file_size_limit_is_checked_like_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "file_size_limit", lambda: 1000)
    with pytest.raises(
        DiskFullError, match=r"file too large: cannot write .*big\.pt: the file-size limit \(ulimit -f\)"
    ):
        atomic_save({"w": torch.zeros(1000)}, tmp_path / "big.pt")
    assert not list(tmp_path.iterdir())
    assert is_disk_full(OSError(errno.EFBIG, "File too large"))
