"""Never a silent wrong number: unfinished runs are marked, another cache's folds are refused,
a non-finite loss stops training, a collapsed model is flagged, and bad starts write nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.tiny import TINY_MODEL, force_one_class, tiny_cache, tiny_meta

from ksr.cache.synthetic import write_synthetic_cache
from ksr.cli import main
from ksr.common.faults import ENV as KILL_AT
from ksr.fuse import load_checkpoint

TINY = [
    *TINY_MODEL,
    "--batch-size",
    "8",
    "--recipe",
    "official",
    "--lr",
    "0.05",
    "--device",
    "cpu",
]


def make_cache(root: Path, n: int, seed: int, sessions: int = 5) -> Path:
    return tiny_cache(root, n, seed=seed, audio=(10, 7, 20), text=(2, 5), sessions=sessions)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"), 60, seed=1)


def train(run: Path, cache: Path, *extra: str):
    return CliRunner().invoke(main, ["train", "--cache", str(cache), "--run", str(run), *TINY, *extra])


def test_a_run_killed_mid_training_is_reported_as_unfinished(cache_dir, tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    env.update(OMP_NUM_THREADS="1", **{KILL_AT: "train-batch:12"})  # in epoch 2 of 4 (6 batches an epoch)
    cmd = [
        sys.executable,
        "-m",
        "ksr.cli",
        "train",
        "--cache",
        str(cache_dir),
        "--run",
        str(run),
        *TINY,
        "--epochs",
        "4",
        "--fold",
        "2",
    ]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    result = CliRunner().invoke(main, ["eval", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "**UNFINISHED RUN**: seed 123 fold 2: 1 of 4 epochs" in result.output
    assert "not given: unfinished run" in result.output
    report = json.loads((run / "report.json").read_text())
    assert report["coverage"]["complete"] is False and report["coverage"]["folds_found"] == {"123": [2]}
    assert "unfinished run: no mean" in (run / "report.csv").read_text()
    allowed = CliRunner().invoke(main, ["eval", "--run", str(run), "--allow-incomplete"])
    assert "not given" not in allowed.output and "| fold 2 | " in allowed.output


def test_a_cache_with_other_sessions_is_refused_by_eval_and_resume(cache_dir, tmp_path):
    run = tmp_path / "run"
    assert train(run, cache_dir, "--epochs", "1", "--fold", "2", "--no-baseline").exit_code == 0
    other = make_cache(tmp_path / "other", 48, seed=2, sessions=4)  # fold 2 is other utterances there
    refused = CliRunner().invoke(main, ["eval", "--run", str(run), "--cache", str(other)])
    assert refused.exit_code == 1
    assert "fold 2: this cache's train utterances are not the ones the run recorded" in refused.output
    split = (run / "seed123/fold2/split.json").read_text()
    resumed = train(run, other, "--epochs", "1", "--fold", "2", "--no-baseline", "--resume")
    assert resumed.exit_code == 1 and "are not the ones the run recorded" in resumed.output
    assert (run / "seed123/fold2/split.json").read_text() == split  # not rewritten


def test_a_non_finite_loss_stops_training_in_one_line(cache_dir, tmp_path, monkeypatch):
    import torch.nn.functional as F  # the training step's default loss is this module's cross_entropy

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, labels, **kw: real(logits, labels, **kw) * float("nan"))
    result = train(tmp_path / "run", cache_dir, "--epochs", "2", "--fold", "2")
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("Error: fold 2, epoch 1: the training loss is nan; lower --lr")
    )


def test_a_model_that_predicts_one_class_is_flagged(cache_dir, tmp_path):
    run = tmp_path / "run"
    assert train(run, cache_dir, "--epochs", "1", "--fold", "2", "--no-baseline").exit_code == 0
    force_one_class(run / "seed123/fold2/best.pt")  # always "neu"
    result = CliRunner().invoke(main, ["eval", "--run", str(run)])
    assert "**Warning**: seed 123 fold 2: every test utterance was predicted as neu" in result.output
    assert json.loads((run / "report.json").read_text())["warnings"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--fold", "9"], "fold 9 does not exist: the session protocol has folds 1..5 on this cache"),
        (
            ["ablate", "keep-rate", "--values", "0.5,abc", "--root", "ROOT"],
            "keep rate value 'abc' does not make a model",
        ),
        (
            ["ablate", "key-sparse", "--values", "on,maybe", "--root", "ROOT"],
            "key-sparse value 'maybe' does not make a model",
        ),
    ],
)
def test_bad_starts_write_nothing(cache_dir, tmp_path, args, message):
    args = [a.replace("ROOT", str(tmp_path / "root")) for a in args]
    extra = ["--run", str(tmp_path / "run")] if args[0] == "train" else []
    result = CliRunner().invoke(main, [*args, "--cache", str(cache_dir), *TINY, "--epochs", "1", *extra])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "root").exists()


def test_a_run_killed_during_warm_up_resumes_to_the_uninterrupted_numbers(cache_dir, tmp_path):
    args = [*TINY, "--epochs", "3", "--fold", "2", "--warmup-epochs", "1.5", "--no-baseline"]
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    env.update(OMP_NUM_THREADS="1")

    def ksr_train(run, *extra, kill=None):
        cmd = [sys.executable, "-m", "ksr.cli", "train", "--cache", str(cache_dir), "--run", str(run), *args, *extra]
        return subprocess.run(
            cmd, env={**env, **({KILL_AT: kill} if kill else {})}, capture_output=True, text=True, timeout=300
        )

    assert ksr_train(tmp_path / "ref").returncode == 0
    assert ksr_train(tmp_path / "run", kill="train-batch:8").returncode == -signal.SIGKILL  # epoch 2, warming up
    assert ksr_train(tmp_path / "run", "--resume").returncode == 0
    ref, run = (json.loads((tmp_path / r / "seed123/fold2/history.json").read_text()) for r in ("ref", "run"))
    assert run == ref
    lrs = [e["lr"] for e in ref["epochs"]]
    assert lrs[0] == pytest.approx(0.05) and lrs[1] < lrs[0]  # the history keeps the schedule's own rate


def test_resume_takes_the_runs_own_settings_and_refuses_other_ones(cache_dir, tmp_path):
    run = tmp_path / "run"
    first = train(run, cache_dir, "--epochs", "2", "--fold", "2", "--no-baseline", "--pooling", "masked")
    assert first.exit_code == 0, first.output
    # nothing but the cache and the run: the saved model, recipe and selection are used
    again = CliRunner().invoke(
        main, ["train", "--cache", str(cache_dir), "--run", str(run), "--resume", "--fold", "2", "--no-baseline"]
    )
    assert again.exit_code == 0, again.output
    saved = json.loads((run / "run.json").read_text())
    assert saved["model"]["pooling"] == "masked" and saved["recipe"]["name"] == "official"
    other = CliRunner().invoke(
        main, ["train", "--cache", str(cache_dir), "--run", str(run), "--resume", "--fold", "2", "--epochs", "5"]
    )
    assert other.exit_code == 1 and "holds a run with other settings (recipe differ)" in other.output


def test_select_last_keeps_each_folds_last_epoch(cache_dir, tmp_path):
    run = tmp_path / "run"
    result = train(run, cache_dir, "--epochs", "3", "--fold", "2", "--no-baseline", "--select", "last")
    assert result.exit_code == 0, result.output
    history = json.loads((run / "seed123/fold2/history.json").read_text())
    assert history["best"]["epoch"] == 2 and "valid_ua" in history["epochs"][0]  # still scored on validation
    assert load_checkpoint(run / "seed123/fold2/best.pt")["meta"]["epoch"] == 2
    assert "the last epoch of each fold kept (no selection)" in (run / "report.md").read_text()


def test_a_class_absent_from_a_test_fold_is_named(tmp_path):
    """UA and macro F1 average over every class of the cache; a class no test utterance has
    counts as 0 there, and the report names it instead of printing a low UA without a word."""
    from ksr.cache import open_cache

    classes = ("ang", "neu", "hap", "sad", "fea", "dis")
    meta = tiny_meta(classes=classes)
    write_synthetic_cache(tmp_path / "cache", 30, meta, seed=3, sessions=5, signal=1.0)
    cache = open_cache(tmp_path / "cache", progress=False)
    in_session_2 = {classes[int(y)] for y, s in zip(cache.labels, cache.sessions, strict=True) if str(s) == "2"}
    absent = [c for c in classes if c not in in_session_2]
    assert absent  # 6 utterances, 6 classes drawn at random: some class is missing (seed 3)
    run = tmp_path / "run"
    assert train(run, tmp_path / "cache", "--epochs", "1", "--fold", "2", "--no-baseline").exit_code == 0
    warnings = json.loads((run / "report.json").read_text())["warnings"]
    named = [w for w in warnings if "no test utterance of" in w]
    assert named == [
        f"seed 123 fold 2: no test utterance of {', '.join(absent)}: UA and macro F1 average over all 6 classes "
        f"and count {', '.join(absent)} as 0"
    ]


def test_resume_alone_continues_the_seeds_and_folds_of_the_interrupted_command(cache_dir, tmp_path):
    run = tmp_path / "run"
    assert train(run, cache_dir, "--epochs", "1", "--fold", "2", "--seeds", "5", "--no-baseline").exit_code == 0
    saved = json.loads((run / "run.json").read_text())
    assert (saved["seeds"], saved["folds"]) == ([5], [2])
    resumed = CliRunner().invoke(main, ["train", "--cache", str(cache_dir), "--run", str(run), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "training 1 fold(s) x 1 seed(s)" in resumed.output
    assert sorted(p.name for p in run.glob("seed*")) == ["seed5"]  # not the default seed 123, not 5 folds
    again = CliRunner().invoke(main, ["train", "--cache", str(cache_dir), "--run", str(run), "--resume", "--fold", "3"])
    assert again.exit_code == 0 and (run / "seed5" / "fold3" / "best.pt").is_file()  # typed options still win
