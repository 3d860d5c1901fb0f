"""Training runs on a small synthetic cache: resume, selection labels, refusals, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support.nodes import run_two_nodes
from support.tiny import TINY_MODEL, tiny_cache, tiny_config

from ksr.cache import CacheMismatchError, open_cache
from ksr.cache.synthetic import synthetic_meta, write_synthetic_cache
from ksr.cli import main
from ksr.fuse.report.evaluation import evaluate_run
from ksr.fuse.report.render import write_report
from ksr.fuse.train.recipes import recipe
from ksr.fuse.train.runs import RunError, RunSpec, model_config_for_cache, prepare_run
from ksr.fuse.train.training import train_fold

TINY = tiny_config()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return tiny_cache(root, 120, seed=1)


def make_spec(cache, **recipe_changes):
    r = recipe("official", **{"epochs": 4, "batch_size": 16, "lr": 0.05, **recipe_changes})
    return RunSpec(model=model_config_for_cache(cache, TINY), recipe=r, cache_meta=cache.meta.to_dict())


class Stop(Exception):
    pass


def test_resume_equals_uninterrupted(cache_dir, tmp_path):
    cache = open_cache(cache_dir)
    spec = make_spec(cache)
    whole = tmp_path / "whole"
    prepare_run(whole, spec, resume=False)
    train_fold(cache, spec, whole, fold=2, seed=7, device=torch.device("cpu"), progress=False)

    cut = tmp_path / "cut"
    prepare_run(cut, spec, resume=False)

    def stop_after_second(epoch, record):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_fold(
            cache, spec, cut, fold=2, seed=7, device=torch.device("cpu"), progress=False, on_epoch=stop_after_second
        )
    with pytest.raises(RunError, match="pass --resume"):
        train_fold(cache, spec, cut, fold=2, seed=7, device=torch.device("cpu"), progress=False)
    train_fold(cache, spec, cut, fold=2, seed=7, device=torch.device("cpu"), progress=False, resume=True)

    a = json.loads((whole / "seed7/fold2/history.json").read_text())
    b = json.loads((cut / "seed7/fold2/history.json").read_text())
    assert a == b and len(a["epochs"]) == 4
    for name in ("best.pt", "last.pt"):
        wa = torch.load(whole / "seed7/fold2" / name, weights_only=True)["model"]
        wb = torch.load(cut / "seed7/fold2" / name, weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_learning_rate_follows_the_recipe(cache_dir, tmp_path):
    cache = open_cache(cache_dir)
    spec = make_spec(cache)
    prepare_run(tmp_path, spec, resume=False)
    train_fold(cache, spec, tmp_path, fold=1, seed=0, device=torch.device("cpu"), progress=False)
    lrs = [e["lr"] for e in json.loads((tmp_path / "seed0/fold1/history.json").read_text())["epochs"]]
    assert lrs == pytest.approx([spec.recipe.lr_at(e) for e in range(4)], rel=1e-9)


def test_split_never_leaks_the_test_session(cache_dir, tmp_path):
    cache = open_cache(cache_dir)
    spec = make_spec(cache, epochs=1)
    prepare_run(tmp_path, spec, resume=False)
    train_fold(cache, spec, tmp_path, fold=3, seed=0, device=torch.device("cpu"), progress=False)
    split = json.loads((tmp_path / "seed0/fold3/split.json").read_text())
    session = dict(zip(cache.ids, cache.sessions.tolist(), strict=True))
    assert {session[i] for i in split["test"]} == {"3"}
    assert "3" not in {session[i] for i in split["train"] + split["valid"]}
    assert split["test_group"] == "Session 3"


def test_cli_trains_reports_and_marks_test_selection(cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = [
        "train",
        "--cache",
        str(cache_dir),
        "--run",
        "runs/t",
        "--epochs",
        "2",
        *TINY_MODEL,
        "--batch-size",
        "16",
        "--fold",
        "1",
        "--fold",
        "5",
        "--select",
        "test",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "TEST set" in result.output
    report = json.loads(Path("runs/t/report.json").read_text())
    assert report["select"] == "test" and "MODEL SELECTED ON THE TEST SET" in report["note"]
    assert "MODEL SELECTED ON THE TEST SET" in Path("runs/t/report.md").read_text()
    assert report["folds"] == [1, 5] and {"wa", "ua"} <= set(report["summary"])
    assert report["fold_naming"].startswith("fold k tests Session k")
    assert Path("runs/latest").resolve() == Path("runs/t").resolve()
    # ksr eval --fold 5 on the latest run: fold 5 alone, test = Session 5
    ev = runner.invoke(main, ["eval", "--fold", "5"])
    assert ev.exit_code == 0, ev.output
    fold5 = json.loads(Path("runs/t/report_fold5.json").read_text())
    assert fold5["folds"] == [5]
    assert fold5["seeds"]["123"]["folds"]["5"]["test_group"] == "Session 5"
    assert fold5["summary"]["wa"] == pytest.approx(report["seeds"]["123"]["folds"]["5"]["wa"])
    assert Path("runs/t/report_fold5_confusion_seed123_fold5.png").stat().st_size > 1000
    missing = runner.invoke(main, ["eval", "--fold", "3"])
    assert missing.exit_code == 1 and "fold(s) [3] of seed 123 are not trained" in missing.output
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "already holds trained folds; pass --resume" in again.output


def test_a_cache_from_other_encoders_is_refused(cache_dir, tmp_path):
    cache = open_cache(cache_dir)
    spec = make_spec(cache, epochs=1)
    prepare_run(tmp_path / "run", spec, resume=False)
    train_fold(cache, spec, tmp_path / "run", fold=1, seed=0, device=torch.device("cpu"), progress=False)
    other_root = tmp_path / "other"
    other_meta = synthetic_meta(audio_dim=8, text_dim=16, max_audio_len=30, max_text_len=6, dtype="float32")
    write_synthetic_cache(other_root, 20, other_meta, seed=2)
    with pytest.raises(CacheMismatchError, match="text_encoder.dim"):
        evaluate_run(tmp_path / "run", open_cache(other_root), spec)


def test_report_has_all_metrics_and_pooled_numbers(cache_dir, tmp_path):
    cache = open_cache(cache_dir)
    spec = make_spec(cache, epochs=1)
    prepare_run(tmp_path, spec, resume=False)
    for fold in (1, 2):
        train_fold(cache, spec, tmp_path, fold=fold, seed=0, device=torch.device("cpu"), progress=False)
    report = evaluate_run(tmp_path, cache, spec)
    folds = report["seeds"]["0"]["folds"]
    pooled = report["seeds"]["0"]["pooled"]
    assert pooled["n"] == folds["1"]["n"] + folds["2"]["n"] == int(sum(cache.sessions.astype(int) <= 2))
    assert report["summary"]["wa"] == pytest.approx((folds["1"]["wa"] + folds["2"]["wa"]) / 2)
    hits = sum(f["wa"] * f["n"] for f in folds.values())
    assert pooled["wa"] == pytest.approx(hits / pooled["n"])
    paths = write_report(report, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "report.csv", "report_curves_seed0.png"} <= names
    assert "pooled" in (tmp_path / "out/report.csv").read_text()


def test_two_process_torchrun_trains_and_reports(cache_dir, tmp_path):
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    run = tmp_path / "ddp"
    cmd = [
        str(bin_dir / "torchrun"),
        "--nproc-per-node",
        "2",
        "--no-python",
        str(bin_dir / "ksr"),
        "train",
        "--cache",
        str(cache_dir),
        "--run-dir",
        str(run),
        "--epochs",
        "2",
        *TINY_MODEL,
        "--batch-size",
        "16",
        "--fold",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 ranks" in done.stdout
    report = json.loads((run / "report.json").read_text())
    assert report["folds"] == [4] and 0.0 <= report["summary"]["ua"] <= 1.0
    history = json.loads((run / "seed123/fold4/history.json").read_text())["epochs"]
    assert len(history) == 2
    split = json.loads((run / "seed123/fold4/split.json").read_text())
    assert len(split["train"]) > 0


def test_two_nodes_train_over_a_streamed_cache(cache_dir, tmp_path):
    """``torchrun --nnodes 2`` (one process per node, c10d rendezvous on localhost, gloo): the
    ranks of two nodes train one model over a streamed cache; rank 0 writes."""
    run = tmp_path / "nodes"
    args = ["train", "--cache", cache_dir, "--run-dir", run, "--epochs", "1", *TINY_MODEL, "--batch-size", "16"]
    outs = run_two_nodes([*args, "--fold", "4", "--cache-mode", "stream"], tmp_path)
    assert sum("on 2 ranks" in out for out in outs) == 1  # one node's rank 0 reports
    report = json.loads((run / "report.json").read_text())
    assert report["folds"] == [4]
    assert len(json.loads((run / "seed123/fold4/history.json").read_text())["epochs"]) == 1


def test_ablation_sweeps_and_tabulates(cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "ablate",
            "modality",
            "--cache",
            str(cache_dir),
            "--epochs",
            "1",
            *TINY_MODEL,
            "--batch-size",
            "32",
            "--fold",
            "2",
            "--values",
            "both,audio,text",
        ],
    )
    assert result.exit_code == 0, result.output
    table = json.loads(Path("runs/ablate-modality/ablation.json").read_text())
    assert [r["value"] for r in table["rows"]] == ["both", "audio", "text"]
    for row in table["rows"]:
        run = json.loads(Path(row["run"], "run.json").read_text())
        assert run["model"]["modalities"] == row["value"]
        report = json.loads(Path(row["run"], "report.json").read_text())
        assert report["summary"]["wa"] == pytest.approx(row["wa"])
    assert "| audio |" in Path("runs/ablate-modality/ablation.md").read_text()
    bad = CliRunner().invoke(main, ["ablate", "ccabs", "--cache", str(cache_dir), "--values", "x"])
    assert bad.exit_code != 0
