"""Extraction killed anywhere, then run again: nothing lost, nothing twice, the same cache.

A run is killed with SIGKILL at named phase boundaries of the production code (the test-only
hook ``ksr.common.faults.point``, ``KSR_TEST_KILL_AT=phase:count``) and at random moments, in
chains (killed, killed again, ..., then finished). Each finished cache must verify, hold every
manifest id exactly once, and equal bit for bit, array by array, the cache of a run that was
never interrupted (every run encodes an utterance in the same batch, so no tolerance is needed).

The runs are forked from this process, which has the tiny encoders loaded already (a fresh
interpreter costs ~4 s of imports per run); one test goes through ``python -m ksr.cli`` to show
that the kill hook works through the real entry point too.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from tqdm import tqdm

from ksr.cache import verify_cache
from ksr.cache.index import scan_dir
from ksr.cache.schema import INT_FIELDS, STR_FIELDS
from ksr.cache.stamps import STAMPS_FILE
from ksr.cli import main
from ksr.common import faults
from ksr.extract.corpora.manifest import REQUIRED_COLUMNS
from ksr.extract.encoders import load_encoder
from ksr.extract.pipeline import extract_corpus

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX fork and signals")

N = 42  # utterances
SHARD = 4  # utterances per shard: 11 shards, the last one (2) written when the run ends
BATCH_S = 2.0  # padded seconds per batch: 2 to 8 utterances of 0.25-0.9 s
WORDS = "well I can not believe you did that to me again so happy now".split()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("ksr-home")  # KSR_CACHE_DIR: tiny encoders built once


@pytest.fixture(scope="module")
def encoders(home):
    return (
        load_encoder("tiny-audio", tiny_root=home / "tiny", device="cpu"),
        load_encoder("tiny-text", tiny_root=home / "tiny", device="cpu"),
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """N short utterances of varied length, transcript, label, speaker and session."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    lines = [",".join(REQUIRED_COLUMNS)]
    for i in range(N):
        samples = 0.1 * rng.standard_normal(int(rng.uniform(0.25, 0.9) * 16000))
        sf.write(d / f"u{i:02d}.wav", samples.astype(np.float32), 16000, subtype="FLOAT")
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))
        lines.append(
            f"utt{i:02d},u{i:02d}.wav,{text},{'ang neu hap sad'.split()[i % 4]},spk{i % 3},{1 + i % 5},{'FM'[i % 2]}"
        )
    (d / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d / "manifest.csv"


def _fork_run(manifest: Path, out: Path, encoders, kill_at: str | None = None, kill_after: float | None = None) -> int:
    """Extract in a forked child; ``kill_at``: its KSR_TEST_KILL_AT, ``kill_after``: SIGKILL it
    from here after that many seconds. Returns its exit code (-9: killed). The summary of a
    finished run goes to ``<out>.summary.json`` (beside the cache, not in it)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            # tqdm's lock is a semaphore shared with the parent across fork: a child killed
            # while holding it would block the parent for good. The child gets its own.
            tqdm.set_lock(threading.RLock())
            faults._seen.clear()
            if kill_at:
                os.environ[faults.ENV] = kill_at
            torch.set_num_threads(1)  # every run the same, so the floats are the same
            s = extract_corpus(
                manifest, out, *encoders, shard_size=SHARD, batch_seconds=BATCH_S, dtype="float32", progress=False
            )
            Path(f"{out}.summary.json").write_text(
                json.dumps(
                    dict(
                        total=s.total,
                        stored_before=s.stored_before,
                        extracted=s.extracted,
                        skipped=s.skipped,
                        failed=s.failed,
                    )
                )
            )
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the exit code and stderr
            traceback.print_exc()
        finally:
            os._exit(code)
    started = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        waited = time.monotonic() - started
        if kill_after is not None and waited >= kill_after:
            os.kill(pid, signal.SIGKILL)
            kill_after = None
        elif waited > 300:  # a hang is a failure, not a stuck test run
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the extraction child hung for {waited:.0f} s")
        time.sleep(0.002)


def _stored(out: Path) -> dict[str, dict]:
    """id -> every array and field of it, read straight from the indexed shards with h5py;
    an id stored twice fails here."""
    rows: dict[str, dict] = {}
    for _, entry in scan_dir(out).entries():
        with h5py.File(out / entry.file, "r") as f:
            cols = {k: f[k][()] for k in ("audio", "text", *INT_FIELDS)}
            cols.update({k: f[k].asstr()[()] for k in STR_FIELDS})
        for r, uid in enumerate(cols["id"]):
            assert uid not in rows, f"{uid} stored twice"
            rows[uid] = {k: v[r] for k, v in cols.items()}
    return rows


@pytest.fixture(scope="module")
def reference(corpus, encoders, tmp_path_factory):
    """The cache of an uninterrupted run, and how long that run took."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    started = time.perf_counter()
    assert _fork_run(corpus, out, encoders) == 0
    return _stored(out), time.perf_counter() - started


def _after_kill(out: Path, phase: str) -> None:
    """What a kill at ``phase`` leaves: readers still see whole shards only."""
    report = verify_cache(out, progress=False)
    unindexed = [p for p in report.problems if "shard not listed in any index" in p]
    if not list(out.glob("index-*.json")):  # killed before the writer's first index
        assert phase in ("index-write", "random")
        assert report.problems == [f"{out}: no index-*.json file: not a ksr cache, or no shard was finished yet"]
    elif phase in ("shard-renamed", "index-write") or (phase == "random" and unindexed):
        # renamed into place, not yet in the index: invisible to readers, a rerun removes it
        assert len(unindexed) == 1 and report.problems == unindexed, report.problems
    else:
        assert report.ok, report.problems
    tmp = sorted(p.name for p in out.glob("*.tmp"))
    if phase == "shard-write":
        assert len(tmp) == 1 and tmp[0].startswith("shard-w0-") and len(report.notes) == 1
    elif phase == "index-write":
        assert tmp == ["index-w0.json.tmp"]
    elif phase != "random":
        assert tmp == []
    _stored(out)  # no id twice among the shards readers see


def _finish_and_check(out: Path, corpus: Path, encoders, reference) -> None:
    before = len(_stored(out))
    assert _fork_run(corpus, out, encoders) == 0
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary == dict(total=N, stored_before=before, extracted=N - before, skipped=0, failed={})
    report = verify_cache(out, progress=False)
    assert report.ok and not report.notes, report.problems + report.notes
    assert report.utterances == N
    names = {p.name for p in out.iterdir()}
    shards = {n for n in names if n.startswith("shard-w0-") and n.endswith(".h5")}
    # no leftovers; the stamps of the shards verify_cache hashed are kept on purpose (fast reopen)
    assert names - shards == {"index-w0.json", ".lock-w0", "errors-w0.tsv", STAMPS_FILE}
    got, (want, _) = _stored(out), reference
    assert sorted(got) == [f"utt{i:02d}" for i in range(N)]
    for uid, fields in want.items():
        for key, value in fields.items():  # features with their padding, lengths, metadata
            assert np.array_equal(got[uid][key], value), (uid, key)


def _shards_left(out: Path) -> int:
    return math.ceil((N - len(_stored(out))) / SHARD)


# Each chain starts from an empty directory; every kill must really happen (exit -9). Counts
# are per run: "index-write:1" is the opening of a new writer's index, later ones follow each
# shard; "shard-write:last" is the last, partial shard that the end of the run writes.
CHAINS = {
    "a": ["index-write:1", "extract-batch:3", "shard-write:2", "extract-add:6", "shard-renamed:2", "index-write:3"],
    "b": ["shard-renamed:1", "extract-add:1", "shard-write:1", "index-write:2", "extract-batch:1", "shard-write:last"],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_killed_at_each_phase_then_finished_equals_uninterrupted(chain, corpus, encoders, reference, tmp_path):
    out = tmp_path / "cache"
    for spec in CHAINS[chain]:
        phase, _, count = spec.partition(":")
        if count == "last":
            spec = f"{phase}:{_shards_left(out)}"
        code = _fork_run(corpus, out, encoders, kill_at=spec)
        assert code == -signal.SIGKILL, f"{spec}: the run was not killed (exit {code})"
        _after_kill(out, phase)
    _finish_and_check(out, corpus, encoders, reference)


def test_killed_at_random_moments_then_finished_equals_uninterrupted(corpus, encoders, reference, tmp_path):
    out = tmp_path / "cache"
    rng = random.Random(20240611)  # fixed: a failure can be replayed
    _, seconds = reference
    codes = []
    for _ in range(5):  # anywhere in a run: reading, encoding, writing, hashing, renaming
        left = N - len(_stored(out)) if out.exists() else N
        codes.append(_fork_run(corpus, out, encoders, kill_after=rng.uniform(0.02, seconds * left / N)))
        if out.exists():
            _after_kill(out, "random")
    # Each kill comes before the time the remaining work took uninterrupted: a run may still
    # beat it now and then, but most must have been killed, and none may have crashed.
    assert set(codes) <= {0, -signal.SIGKILL}, codes
    assert codes.count(-signal.SIGKILL) >= 2, codes
    _finish_and_check(out, corpus, encoders, reference)


def test_kill_through_the_command_line_then_rerun(corpus, home, tmp_path, monkeypatch):
    """``ksr extract`` itself, killed while committing its second shard, then run again."""
    out = tmp_path / "cache"
    args = [
        "extract",
        str(corpus),
        "--out",
        str(out),
        "--audio-encoder",
        "tiny-audio",
        "--text-encoder",
        "tiny-text",
        "--dtype",
        "float32",
        "--shard-size",
        str(SHARD),
        "--batch-seconds",
        str(BATCH_S),
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "KSR_CACHE_DIR": str(home), "OMP_NUM_THREADS": "1", faults.ENV: "shard-renamed:2"}
    done = subprocess.run(
        [sys.executable, "-m", "ksr.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    _after_kill(out, "shard-renamed")
    assert len(_stored(out)) == SHARD  # the first shard; the second is not in the index
    monkeypatch.setenv("KSR_CACHE_DIR", str(home))
    monkeypatch.delenv(faults.ENV, raising=False)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == (
        f"{N} manifest rows: {SHARD} stored before, "
        f"{N - SHARD} extracted now, 0 skipped (label not in "
        f"the classes), 0 failed"
    )
    report = verify_cache(out, progress=False)
    assert report.ok and not report.notes and report.utterances == N
    assert sorted(_stored(out)) == [f"utt{i:02d}" for i in range(N)]  # each once


# ``ksr extract`` in a child that counts the utterances handed to the writer and, at the first
# batch boundary after a count that does not fill whole shards, writes the count to a file and
# waits there (the test then sends SIGTERM from outside).
_SIGTERM_CHILD = """
import sys, time
from pathlib import Path
from ksr.cache.writer import CacheWriter
from ksr.common import faults
marker, shard, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
added = {"n": 0}
real_add, real_point = CacheWriter.add, faults.point
def add(self, *a, **k):
    real_add(self, *a, **k)
    added["n"] += 1
def point(phase):
    if phase == "extract-batch" and added["n"] >= 5 and added["n"] % shard:
        marker.write_text(str(added["n"]))
        time.sleep(300)
    real_point(phase)
CacheWriter.add, faults.point = add, point
from ksr.cli import main
main(args, prog_name="ksr")
"""


def test_sigterm_writes_the_partial_shard_and_says_so(corpus, home, encoders, reference, tmp_path):
    """SIGTERM (timeout, Slurm, systemd, docker) is handled like SIGINT: the utterances buffered
    for the current shard are written, one line says so, the exit status is 1; a rerun finishes
    the cache as an uninterrupted run would have."""
    out, marker = tmp_path / "cache", tmp_path / "paused"
    args = ["extract", corpus, "--out", out, "--audio-encoder", "tiny-audio", "--text-encoder", "tiny-text"]
    args += ["--dtype", "float32", "--shard-size", SHARD, "--batch-seconds", BATCH_S, "--device", "cpu"]
    env = {**os.environ, "KSR_CACHE_DIR": str(home), "OMP_NUM_THREADS": "1"}
    env.pop(faults.ENV, None)
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, marker, str(SHARD), *map(str, args), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        while not marker.exists() or not marker.read_text():
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() - started < 120, "the child never reached its pause"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    added = int(marker.read_text())
    assert added % SHARD != 0  # a partial shard was buffered when the signal came
    assert child.returncode == 1, stderr[-2000:]
    assert stdout == "" and "Traceback" not in stderr
    assert stderr.splitlines() == [
        f"Error: stopped by SIGTERM: every utterance extracted so far is stored in {out} (the last, "
        f"partial shard included); run the same command again to continue"
    ]
    report = verify_cache(out, progress=False)
    assert report.ok and not report.notes, report.problems + report.notes
    assert len(_stored(out)) == added  # every utterance handed to the writer, the partial shard's too
    assert len(list(out.glob("shard-w0-*.h5"))) == math.ceil(added / SHARD)
    _finish_and_check(out, corpus, encoders, reference)


def test_a_second_run_into_a_cache_being_written_is_refused(corpus, home, encoders, reference, tmp_path):
    """A plain ``ksr extract`` is writing (paused mid-run); a torchrun rank of another run, and
    readers, refuse the cache meanwhile; once the first run is over, nothing is stored twice."""
    out, marker = tmp_path / "cache", tmp_path / "paused"
    args = ["extract", corpus, "--out", out, "--audio-encoder", "tiny-audio", "--text-encoder", "tiny-text"]
    args += ["--dtype", "float32", "--shard-size", SHARD, "--batch-seconds", BATCH_S, "--device", "cpu"]
    args = [*map(str, args), "--no-progress"]
    env = {**os.environ, "KSR_CACHE_DIR": str(home), "OMP_NUM_THREADS": "1"}
    env.pop(faults.ENV, None)
    first = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, marker, str(SHARD), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        while not marker.exists() or not marker.read_text():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() - started < 120, "the first run never reached its pause"
            time.sleep(0.05)
        rank = {**env, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
        second = subprocess.run(
            [sys.executable, "-m", "ksr.cli", *args], env=rank, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 1, second.stderr[-2000:]
        assert second.stderr.splitlines()[-1] == (
            f"Error: {out}: another extraction is writing this cache now as writer 'w0' (pid {first.pid}); two "
            f"runs at once would store utterances twice: wait until it has finished (or stop it), then run this again"
        )
        assert not list(out.glob("*rank1*"))  # the refused run wrote nothing
        being_written = (
            f"{out}: being written now by writer 'w0' (pid {first.pid}): what it holds is not the whole cache "
            f"yet; use it once the extraction has finished"
        )
        assert verify_cache(out, progress=False).problems == [being_written]
        r = CliRunner().invoke(main, ["cache", "verify", str(out)])
        assert r.exit_code == 1 and r.output.splitlines() == [f"error: {being_written}"]
        os.kill(first.pid, signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 1
    _finish_and_check(out, corpus, encoders, reference)  # every id once, as an uninterrupted run
