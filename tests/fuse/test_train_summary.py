"""What ``ksr train`` prints after a run: never a mean its report withholds, always the report's
warnings; and what the report itself says of single folds, tiny test folds and the probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.tiny import TINY_MODEL, force_one_class, tiny_cache

from ksr.cli import main
from ksr.fuse.report.intervals import add_intervals
from ksr.fuse.report.stats import Bootstrap

TINY = [*TINY_MODEL, "--batch-size", "8", "--recipe", "official", "--lr", "0.05", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache"), 60, seed=1, audio=(10, 7, 20), text=(2, 5), sessions=5)


def train(run: Path, cache: Path, *extra: str):
    return CliRunner().invoke(main, ["train", "--cache", str(cache), "--run", str(run), *TINY, *extra])


def test_a_fold_another_process_has_not_finished_gives_no_printed_mean(cache_dir, tmp_path):
    run = tmp_path / "run"
    first = train(run, cache_dir, "--epochs", "2", "--fold", "1", "--fold", "2")
    assert first.exit_code == 0, first.output
    # fold 2 as another process leaves it mid-training: one of its two epochs done
    history = run / "seed123/fold2/history.json"
    saved = json.loads(history.read_text())
    saved["epochs"] = saved["epochs"][:1]
    history.write_text(json.dumps(saved))
    again = train(run, cache_dir, "--epochs", "2", "--fold", "1", "--resume")
    assert again.exit_code == 0, again.output
    assert "mean over folds" not in again.output and "linear probe: WA" not in again.output
    assert "no mean: unfinished run (seed 123 fold 2: 1 of 2 epochs)" in again.output
    md = (run / "report.md").read_text()
    assert "| KS-Transformer | not given: unfinished run" in md  # the baseline table withholds it too


def test_the_printed_summary_carries_the_reports_warnings(cache_dir, tmp_path):
    run = tmp_path / "run"
    assert train(run, cache_dir, "--epochs", "1", "--fold", "2", "--no-baseline").exit_code == 0
    force_one_class(run / "seed123/fold2/best.pt")  # always "neu"
    again = train(run, cache_dir, "--epochs", "1", "--fold", "2", "--no-baseline", "--resume")
    assert again.exit_code == 0, again.output
    assert "warning: seed 123 fold 2: every test utterance was predicted as neu" in again.output


def test_a_single_fold_is_printed_without_a_std(cache_dir, tmp_path):
    run = tmp_path / "run"
    result = train(run, cache_dir, "--epochs", "1", "--fold", "2")
    assert result.exit_code == 0, result.output
    assert "(fold 2, seed 123; " in result.output and "mean over folds" not in result.output
    md = (run / "report.md").read_text()
    assert "± 0.00" not in md and "| fold 2 |" in md
    probe = (run / "baseline-probe/report.md").read_text()
    assert "selected epoch" not in probe and "epochs planned" not in probe  # a logistic regression has none
    assert "selected C" in probe


def test_a_zero_width_interval_is_a_warning():
    fold = {"n": 1}
    report = {
        "classes": ["a", "b"],
        "warnings": [],
        "seeds": {"7": {"folds": {"3": fold}, "pooled": {"n": 1}}},
    }
    predictions = {"7": {"3": {"ids": ["u"], "labels": [1], "preds": [1]}}}
    add_intervals(report, predictions, Bootstrap(resamples=50))
    assert fold["ci"]["wa"] == [1.0, 1.0]
    assert report["warnings"] == [
        "seed 7 fold 3: its 95% interval has zero width (every resample of its 1 test utterance(s) scores the "
        "same): it does not show how uncertain the score is"
    ]


def test_a_class_with_no_training_utterance_in_a_fold_is_flagged(tmp_path):
    from support.tiny import tiny_meta

    from ksr.cache import CacheWriter
    from ksr.cache.synthetic import synthetic_utterances

    meta = tiny_meta(classes=("ang", "neu", "hap", "sad", "fea"))
    with CacheWriter(tmp_path / "cache", meta) as w:
        for i, utt in enumerate(synthetic_utterances(40, meta, seed=2, sessions=5, signal=1.0)):
            if utt["label"] == "fea" and utt["session"] != "2":
                utt["label"] = "ang"
            if i == 1:  # session 2: the only sessions with fea
                utt["label"] = "fea"
            utt["audio"], utt["text"] = utt["audio"][:30], utt["text"][:6]
            w.add(**utt)
    run = tmp_path / "run"
    result = train(run, tmp_path / "cache", "--epochs", "1", "--fold", "2", "--fold", "3", "--no-baseline")
    assert result.exit_code == 0, result.output
    expected = "seed 123 fold 2: no training utterance of fea: the model cannot have learnt it"
    assert f"warning: {expected}" in result.output
    warnings = json.loads((run / "report.json").read_text())["warnings"]
    assert expected in warnings and not any("fold 3: no training utterance" in w for w in warnings)


def test_a_fold_another_process_is_training_is_refused_and_a_stale_lock_is_not(cache_dir, tmp_path):
    import os

    from ksr.fuse.train.runs import fold_lock

    run = tmp_path / "run"
    with fold_lock(run, 123, 2):  # as a live `ksr train` holds it
        busy = train(run, cache_dir, "--epochs", "1", "--fold", "2", "--no-baseline")
    assert busy.exit_code == 1 and "Traceback" not in busy.output, busy.output
    assert busy.output.splitlines()[-1] == (
        f"Error: {run / 'seed123/fold2'}: another ksr train (pid {os.getpid()}) is training this fold now; "
        "wait for it to finish (then --resume), or choose another --run"
    )
    assert not (run / "seed123/fold2").exists()
    (run / ".lock-train-seed123-fold2").write_text("999999\n")  # left by a killed process: no flock held
    again = train(run, cache_dir, "--epochs", "1", "--fold", "2", "--no-baseline", "--resume")
    assert again.exit_code == 0, again.output
    assert not (run / ".lock-train-seed123-fold2").exists()


def test_a_seed_given_twice_is_refused_in_one_line(cache_dir, tmp_path):
    result = train(tmp_path / "run", cache_dir, "--epochs", "1", "--seeds", "7,7")
    assert result.exit_code == 2 and "seed 7 is listed twice" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_resume_needs_no_cache_and_an_interrupted_run_says_how_to_continue(cache_dir, tmp_path, monkeypatch):
    from support.cli_runner import invoke_ksr

    import ksr.fuse.report.experiment as experiment

    calls = []
    real = experiment.train_fold

    def interrupted(*args, **kwargs):  # Ctrl-C in the second fold
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "train_fold", interrupted)
    args = ["train", "--cache", cache_dir, "--run", "runs/r", *TINY, "--epochs", "1", "--fold", "1", "--fold", "2"]
    stopped = invoke_ksr([*args, "--no-baseline", "--no-progress"], tmp_path)
    assert stopped.exit_code == 130, stopped.output
    assert stopped.output.splitlines()[-1] == (
        "Error: interrupted; every finished epoch is saved: ksr train --run runs/r --resume continues"
    )
    assert (tmp_path / "runs/latest").resolve() == (tmp_path / "runs/r").resolve()  # bare ksr eval reads it
    assert "\r" not in stopped.output  # --no-progress: no carriage-return bars
    monkeypatch.setattr(experiment, "train_fold", real)
    resumed = invoke_ksr(["train", "--run", "runs/r", "--resume", "--no-baseline"], tmp_path)  # no --cache
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "runs/r/seed123/fold2/best.pt").is_file()
    assert "(mean over 2 of 5 folds; " in resumed.output and "report: runs/r/report.md)" in resumed.output
    missing = invoke_ksr(["train", "--run", "runs/new"], tmp_path)
    assert missing.exit_code == 2 and "--cache is needed" in missing.output, missing.output


def test_the_predictions_file_has_probabilities_speakers_and_sessions_and_reads_back(cache_dir, tmp_path):
    import csv

    import numpy as np

    from ksr.cache import open_cache
    from ksr.fuse.report.intervals import read_predictions

    run = tmp_path / "run"
    assert train(run, cache_dir, "--epochs", "1", "--fold", "2", "--no-baseline").exit_code == 0
    classes = json.loads((run / "report.json").read_text())["classes"]
    with open(run / "report_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["seed", "fold", "id", "label", "prediction", "speaker", "session"] + [
        f"p_{c}" for c in classes
    ]
    cache = open_cache(cache_dir, progress=False)
    where = {u: (str(s), str(g)) for u, s, g in zip(cache.ids, cache.speakers, cache.sessions, strict=True)}
    for r in rows:
        probs = np.array([float(r[f"p_{c}"]) for c in classes])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert classes[int(probs.argmax())] == r["prediction"]
        assert (r["speaker"], r["session"]) == where[r["id"]] and r["session"] == "2"
    back = read_predictions(run / "report_predictions.csv", classes)["123"]["2"]
    assert back["ids"] == [r["id"] for r in rows] and back["preds"] == [classes.index(r["prediction"]) for r in rows]


def test_an_attribute_run_prints_its_ccc_not_an_untrained_classifiers_accuracy(tmp_path):
    from support.tiny import tiny_meta

    names = ("activation", "valence", "dominance")
    cache = tiny_cache(tmp_path / "cache", 60, seed=2, meta=tiny_meta(attributes=names))
    run = tmp_path / "run"
    result = train(run, cache, "--epochs", "2", "--fold", "1", "--fold", "2", "--task", "attributes", "--metric", "ccc")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    model, ridge = (report["attributes"]["systems"][s]["summary"]["ccc"] for s in ("model", "ridge"))
    summary = [line for line in result.output.splitlines() if "report: " in line]
    assert len(summary) == 1 and summary[0].startswith(f"CCC {model:.3f} (mean over 2 of 5 folds; "), result.output
    assert summary[0].endswith(f"report: {run / 'report.md'})")
    assert f"  ridge: CCC {ridge:.3f} (same folds)" in result.output
    assert not [line for line in result.output.splitlines() if line.startswith("WA ")]
    # the attribute means are withheld, like the class means, while a fold is unfinished
    history = run / "seed123/fold2/history.json"
    saved = json.loads(history.read_text())
    saved["epochs"] = saved["epochs"][:1]
    history.write_text(json.dumps(saved))
    again = train(run, cache, "--resume", "--no-baseline")
    assert again.exit_code == 0, again.output
    assert "no mean: unfinished run" in again.output and not [
        line for line in again.output.splitlines() if line.startswith(("CCC ", "WA ", "  ridge"))
    ]
    md = (run / "report.md").read_text()
    assert "| KS-Transformer | not given: unfinished run" in md.split("## Attributes (CCC)")[1]
