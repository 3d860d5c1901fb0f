"""`ksr demo --processes 2`: the demo's models trained by two torchrun ranks (DistributedDataParallel),
the corpus and cache made once by rank 0, one report; a failing rank ends in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ksr.extract.corpora.demo import make_demo_corpus


def ksr_demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ksr.cli", "demo", "--data", "data", "--run", "run", *args]
    env = {**os.environ, "KSR_CACHE_DIR": str(tmp_path / "k")}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_train_the_demo_and_rank_0_reports(tmp_path):
    make_demo_corpus(tmp_path / "data", seed=0, per_speaker=4)  # 40 utterances: seconds, not minutes
    done = ksr_demo(tmp_path, "--cache", "cache", "--epochs", "2", "--no-compare", "--processes", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training fused on 2 processes: 5 folds x 2 epochs" in done.stdout
    assert done.stdout.count("| modalities | KS-Transformer UA % | linear probe UA % |") == 1  # rank 0 alone
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["coverage"]["complete"] and report["folds"] == [1, 2, 3, 4, 5]
    # The cache is the one a single process makes: rank 0 wrote it alone, as writer w0.
    assert sorted(p.name for p in (tmp_path / "cache").glob("index-*.json")) == ["index-w0.json"]
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "run").resolve()  # `ksr eval` finds it


def test_a_failing_rank_is_one_line(tmp_path):
    make_demo_corpus(tmp_path / "data", seed=0, per_speaker=4)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index-w0.json").write_text("{not json")  # rank 0's extraction stops on it
    done = ksr_demo(tmp_path, "--cache", "cache", "--epochs", "1", "--no-compare", "--processes", "2")
    assert done.returncode == 1
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 2, done.stderr[-3000:]  # the rank's reason, then the launcher's one line
    assert "the demo's 2 processes stopped" in errors[-1]
    assert "Traceback" not in done.stdout + done.stderr
