"""`ksr train` killed with SIGKILL resumes to exactly the numbers of an uninterrupted run; a damaged
or code-carrying checkpoint is never loaded (resume, eval, load_model, convert-official refuse it).

The kills are real: ``ksr train`` runs in a subprocess and ``KSR_TEST_KILL_AT=phase:count``
(ksr.common.faults) makes it SIGKILL itself at the count-th ``train-batch`` or at the count-th
write of a file (``write:state.pt``: the temporary file is written, not yet renamed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from support.cli_runner import invoke_ksr
from support.tiny import TINY_MODEL, tiny_cache

from ksr.common.faults import ENV as KILL_AT
from ksr.fuse import CheckpointError, load_checkpoint, load_model
from ksr.fuse.train.checkpoint import read_torch_file
from ksr.fuse.train.training import read_training_state

TRAIN = [
    "--epochs",
    "3",
    *TINY_MODEL,
    "--batch-size",
    "8",
    "--fold",
    "2",
    "--recipe",
    "official",
    "--lr",
    "0.05",
    "--device",
    "cpu",
]
FOLD = Path("seed123/fold2")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache") / "c"
    return tiny_cache(root, 60, seed=1, shard_size=20)


def ksr_train(run: Path, cache: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``ksr train`` in a fresh process (one thread: the same float sums in every run)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if kill_at:
        env[KILL_AT] = kill_at
    cmd = [sys.executable, "-m", "ksr.cli", "train", "--cache", str(cache), "--run", str(run), *TRAIN, *extra]
    return subprocess.run(cmd, cwd=run.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = ksr_train(run, cache_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    """Same per-epoch history, same weights in every checkpoint, same report."""
    history = [json.loads((r / FOLD / "history.json").read_text()) for r in (run, reference)]
    assert history[0] == history[1]
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(run / FOLD / name), load_checkpoint(reference / FOLD / name)
        assert a["meta"] == b["meta"] and a["config"] == b["config"], name
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
    a, b = read_training_state(run / FOLD / "state.pt"), read_training_state(reference / FOLD / "state.pt")
    assert (a["epoch"], a["best"], a["history"]) == (b["epoch"], b["best"], b["history"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ra, rb = (json.loads((r / "report.json").read_text()) for r in (run, reference))
    assert ra.pop("run") == str(run) and rb.pop("run") == str(reference)
    assert ra == rb
    assert not [p.name for p in (run / FOLD).iterdir() if p.name.endswith(".tmp")]  # no leftover temp file


def test_the_reference_run_learned_something(reference):
    """A run whose epochs all equal each other would make the comparisons below vacuous."""
    history = json.loads((reference / FOLD / "history.json").read_text())["epochs"]
    assert len(history) == 3
    assert len({e["train_loss"] for e in history}) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_killed_mid_epoch_then_resumed_ends_as_the_uninterrupted_run(cache_dir, reference, tmp_path):
    run = tmp_path / "run"
    split = json.loads((reference / FOLD / "split.json").read_text())
    per_epoch = -(-len(split["train"]) // 8)
    kill = per_epoch + 3  # the third batch of epoch 1
    killed = ksr_train(run, cache_dir, kill_at=f"train-batch:{kill}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # epoch 0 is on disk, complete; nothing of epoch 1 is
    assert read_training_state(run / FOLD / "state.pt")["epoch"] == 0
    assert len(json.loads((run / FOLD / "history.json").read_text())["epochs"]) == 1
    assert load_checkpoint(run / FOLD / "last.pt")["meta"]["epoch"] == 0
    assert not (run / "report.json").exists()

    done = ksr_train(run, cache_dir, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(run, reference)


def test_killed_while_writing_the_state_then_resumed_ends_as_the_uninterrupted_run(cache_dir, reference, tmp_path):
    run = tmp_path / "run"
    killed = ksr_train(run, cache_dir, kill_at="write:state.pt:2")  # epoch 1's state, before its rename
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    fold = run / FOLD
    # epoch 1's checkpoints and history were written; its state was not: state.pt is still epoch 0's
    assert load_checkpoint(fold / "last.pt")["meta"]["epoch"] == 1
    assert len(json.loads((fold / "history.json").read_text())["epochs"]) == 2
    assert read_training_state(fold / "state.pt")["epoch"] == 0
    # epoch 1's state is in a temporary file that was never renamed; cut it to half, as a kill
    # in the middle of the write would have left it: the resumed run must not read it
    temps = [p for p in fold.iterdir() if p.name.startswith(".state.pt.") and p.name.endswith(".tmp")]
    assert len(temps) == 1
    truncate(temps[0])
    with pytest.raises(CheckpointError, match=re.escape(str(temps[0])) + ": damaged or not a torch file"):
        read_torch_file(temps[0])

    done = ksr_train(run, cache_dir, "--resume")  # redoes epoch 1 from epoch 0's state
    assert done.returncode == 0, done.stderr[-2000:]
    assert not temps[0].exists()
    assert_same_run(run, reference)


# ``ksr train`` in a child that waits at its PAUSE-th training batch, once it has told the test
# (by writing a file) that it is there; the test then sends SIGTERM from outside.
_PAUSING_TRAIN = """
import sys, time
from pathlib import Path
from ksr.common import faults
marker, pause, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
seen = {"n": 0}
def point(phase):
    if phase == "train-batch":
        seen["n"] += 1
        if seen["n"] == pause:
            marker.write_text("paused")
            time.sleep(300)
faults.point = point
from ksr.cli import main
main(args, prog_name="ksr")
"""


def test_sigterm_mid_epoch_keeps_the_finished_epochs_and_says_so(cache_dir, reference, tmp_path):
    """SIGTERM (timeout, Slurm, systemd, docker) in the middle of epoch 2 of 3: one line, exit
    status 1, epoch 1 committed and nothing of epoch 2; --resume then ends as the uninterrupted run."""
    run, marker = tmp_path / "run", tmp_path / "paused"
    split = json.loads((reference / FOLD / "split.json").read_text())
    per_epoch = -(-len(split["train"]) // 8)
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = ["train", "--cache", str(cache_dir), "--run", str(run), *TRAIN]
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSING_TRAIN, str(marker), str(per_epoch + 2), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        while not marker.exists():
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() - started < 120, "the child never reached its pause"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGTERM)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        "Error: stopped by SIGTERM in fold 2, epoch 2 of 3: the 1 finished epoch(s) are saved; continue with "
        "the same command and --resume"
    )
    fold = run / FOLD
    assert read_training_state(fold / "state.pt")["epoch"] == 0
    assert len(json.loads((fold / "history.json").read_text())["epochs"]) == 1
    assert load_checkpoint(fold / "last.pt")["meta"]["epoch"] == 0
    assert not [p.name for p in fold.iterdir() if p.name.endswith(".tmp")]

    done = ksr_train(run, cache_dir, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(run, reference)


# -- damaged files -----------------------------------------------------------------------------


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def flip_a_weight(path: Path) -> None:
    """One bit in the middle of the largest tensor's bytes (torch itself would load the altered weight)."""
    with zipfile.ZipFile(path) as z:
        entry = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    head = entry.header_offset  # local header: 30 bytes, then the name and the extra field
    name_len, extra_len = struct.unpack("<HH", data[head + 26 : head + 30])
    data[head + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (
        truncate,
        r"damaged or not a torch file \(RuntimeError: PytorchStreamReader failed reading zip "
        r"archive: failed finding central directory\.\); restore an intact copy",
    ),
    "garbage": (garbage, r"damaged or not a torch file \(\w+: [^)]*\); restore an intact copy"),
    "flipped bit": (
        flip_a_weight,
        r"damaged: the CRC-32 of its entry '[^']+' does not match \(the file was altered "
        r"after it was written\); restore an intact copy",
    ),
}


def copy_run(reference: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def assert_refused(result, line_pattern: str) -> None:
    """Exit status 1 and one 'Error: ...' line matching, no uncaught exception or traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and re.fullmatch("Error: " + line_pattern, errors[0]), result.output


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_refuses_a_damaged_state(cache_dir, reference, tmp_path, damage):
    run = copy_run(reference, tmp_path)
    state = run / FOLD / "state.pt"
    DAMAGE[damage][0](state)
    result = invoke_ksr(["train", "--cache", cache_dir, "--run", run, *TRAIN, "--resume"], tmp_path)
    assert_refused(
        result,
        rf"cannot resume fold 2: {re.escape(str(state))}: {DAMAGE[damage][1]} "
        rf"\(or remove {re.escape(str(run / FOLD))} to train the fold again\)",
    )


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_eval_refuses_a_damaged_best_checkpoint(reference, tmp_path, damage):
    run = copy_run(reference, tmp_path)
    best = run / FOLD / "best.pt"
    DAMAGE[damage][0](best)
    result = invoke_ksr(["eval", "--run", run, "--device", "cpu"], tmp_path)
    assert_refused(result, rf"{re.escape(str(best))}: {DAMAGE[damage][1]}")
    with pytest.raises(CheckpointError, match=re.escape(str(best))):
        load_model(best)


# -- pickled code ------------------------------------------------------------------------------


class RunsAShellCommand:
    """Unpickling this object calls os.system: what a malicious checkpoint would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_checkpoint_carrying_code_is_refused_everywhere_and_never_run(cache_dir, reference, tmp_path):
    marker = tmp_path / "MARKER"
    payload = {
        "format": "ksr-checkpoint",
        "format_version": 1,
        "config": {},
        "model": {},
        "meta": {"note": RunsAShellCommand(f"touch {marker}")},
    }
    refusal = (
        r": refused: it holds more than tensors and plain containers \(loading it would import posix\.system: "
        r"pickled code\); ksr only loads weights_only checkpoints"
    )
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)

    for load in (read_torch_file, load_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="^" + re.escape(str(evil)) + refusal + "$"):
            load(evil)
    out = tmp_path / "converted.pt"
    assert_refused(invoke_ksr(["convert-official", evil, out], tmp_path), re.escape(str(evil)) + refusal)
    assert not out.exists()

    run = copy_run(reference, tmp_path)
    best, state = run / FOLD / "best.pt", run / FOLD / "state.pt"
    shutil.copy(evil, best)
    assert_refused(invoke_ksr(["eval", "--run", run, "--device", "cpu"], tmp_path), re.escape(str(best)) + refusal)
    torch.save({**payload, "model": RunsAShellCommand(f"touch {marker}")}, state)
    assert_refused(
        invoke_ksr(["train", "--cache", cache_dir, "--run", run, *TRAIN, "--resume"], tmp_path),
        rf"cannot resume fold 2: {re.escape(str(state))}{refusal} "
        rf"\(or remove {re.escape(str(run / FOLD))} to train the fold again\)",
    )
    assert not marker.exists()

    # the payload is real: an unsafe load runs it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_eval_that_cannot_write_its_report_says_where_in_one_line(reference, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke_ksr(["eval", "--run", reference, "--device", "cpu", "--out", blocker / "out"], tmp_path)
    assert_refused(result, rf"\[Errno 20\] Not a directory: '{re.escape(str(blocker / 'out'))}'")


def test_leftover_temps_of_live_writers_are_kept(tmp_path):
    """Cleaning a run folder removes the temporary files of dead writers and of older ksr
    versions (no process id in the name), never those of a process still writing."""
    from ksr.common import remove_dead_temps

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        names = {
            "live": f".best.pt.{live.pid}.abc_1.tmp",
            "dead": f".best.pt.{int(dead.stdout)}.abc_2.tmp",
            "old": ".history.json.k3j_x9.tmp",
            "mine": f".state.pt.{os.getpid()}.zz.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_text("partial")
        (tmp_path / "best.pt").write_text("kept")
        remove_dead_temps(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best.pt", names["live"]])
    finally:
        live.kill()
        live.wait()
