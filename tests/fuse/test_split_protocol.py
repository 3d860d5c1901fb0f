"""``ksr train --protocol split``: train on the cache's train split, choose epochs on valid, test
on each test split; reports, eval, resume, ablate and the baselines under it; one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score
from support.cli_runner import invoke_ksr
from support.tiny import TINY_MODEL, tiny_cache, tiny_meta

from ksr.cache import open_cache
from ksr.fuse import load_model
from ksr.fuse.train.folds import fold_groups, official_split
from ksr.fuse.train.runs import fold_files, run_of_checkpoint, trained_folds

V1 = Path(__file__).resolve().parents[1] / "data" / "cache-v1"
META = tiny_meta()
PATTERN = ["train"] * 6 + ["valid"] * 2 + ["test1"] * 2 + ["test2"] * 2
SPLITS = PATTERN * 8  # 96 utterances: 48 train, 16 valid, 16 test1, 16 test2
TRAIN = [
    *TINY_MODEL,
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--recipe",
    "official",
    "--lr",
    "0.05",
    "--device",
    "cpu",
]


def make_cache(root: Path, splits: list[str] | None, sessions: int = 0) -> Path:
    n = len(splits) if splits else 60
    return tiny_cache(root, n, seed=1, meta=META, sessions=sessions, splits=splits)


def one_error(result, needle: str) -> str:
    """The run failed with exactly one ``Error:`` line containing ``needle``, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.output
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A split cache and a 2-seed split run of it (with the linear-probe baseline)."""
    root = tmp_path_factory.mktemp("split")
    cache = make_cache(root / "cache", SPLITS)
    result = invoke_ksr(
        ["train", "--cache", cache, "--run", "run", "--protocol", "split", "--seeds", "1,2", *TRAIN], root
    )
    assert result.exit_code == 0, result.output
    return root, cache, root / "run"


def expected_ids(cache_dir: Path) -> dict[str, list[str]]:
    """Each split's ids, from the list the cache was written with (utterance i is utt{i:06d})."""
    out: dict[str, list[str]] = {}
    for i, split in enumerate(SPLITS):
        out.setdefault(split, []).append(f"utt{i:06d}")
    return out


def test_train_valid_and_test_sets_are_the_manifest_splits(trained):
    _, cache, run = trained
    want = expected_ids(cache)
    for folder in ("seed1/split", "seed2/split", "baseline-probe/seed1/split"):
        recorded = json.loads((run / folder / "split.json").read_text())
        assert recorded["protocol"] == "split"
        assert sorted(recorded["train"]) == want["train"]
        assert sorted(recorded["valid"]) == want["valid"]
        assert sorted(recorded["test"]) == sorted(want["test1"] + want["test2"])
        assert {k: sorted(v) for k, v in recorded["tests"].items()} == {"test1": want["test1"], "test2": want["test2"]}
    assert not list(run.glob("seed*/fold*"))  # one fold per seed, named split
    assert json.loads((run / "run.json").read_text())["protocol"] == "split"


def independent_scores(run: Path, cache_dir: Path, seed: int, split: str) -> dict[str, float]:
    """Metrics of best.pt on one test split, computed here with scikit-learn."""
    model = load_model(run / f"seed{seed}/split/best.pt")
    model.eval()
    cache = open_cache(cache_dir, progress=False)
    idx = np.flatnonzero(cache.splits == split)
    batch = cache.batch(idx)
    with torch.no_grad():
        pred = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask).argmax(-1).numpy()
    y = cache.labels[idx]
    labels = list(range(len(cache.classes)))
    return {
        "n": len(idx),
        "wa": accuracy_score(y, pred),
        "ua": recall_score(y, pred, labels=labels, average="macro", zero_division=0),
        "macro_f1": f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "weighted_f1": f1_score(y, pred, labels=labels, average="weighted", zero_division=0),
    }


def test_report_shows_each_test_split_with_metrics_from_the_checkpoints(trained):
    _, cache, run = trained
    report = json.loads((run / "report.json").read_text())
    assert report["protocol"] == "split" and report["folds"] == [1]
    per = {(s, t): independent_scores(run, cache, s, t) for s in (1, 2) for t in ("test1", "test2")}
    for (seed, test), want in per.items():
        got = report["seeds"][str(seed)]["folds"][test]
        assert got["n"] == want["n"] == 16
        for m in ("wa", "ua", "macro_f1", "weighted_f1"):
            assert got[m] == pytest.approx(want[m], abs=1e-12), (seed, test, m)
    for test in ("test1", "test2"):
        row = report["official_split"][test]
        for m in ("wa", "ua", "macro_f1", "weighted_f1"):
            values = [per[(1, test)][m], per[(2, test)][m]]
            assert row[m] == pytest.approx(np.mean(values), abs=1e-12)
            assert row[f"{m}_std_over_seeds"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    md = (run / "report.md").read_text()
    assert "official split" in md and "mean over folds" not in md
    assert "| test1 | 16 | " in md and "| test2 | 16 | " in md and "| all test splits pooled | 32 | " in md
    assert "model selected on the official valid split" in md
    csv_rows = (run / "report.csv").read_text().splitlines()
    assert any(r.startswith("1,test1,official split test1,") for r in csv_rows)
    assert any(r.startswith("all,mean over seeds,test2,,16,") for r in csv_rows)
    assert "linear probe" in report["baselines"]  # the probe ran under the same protocol
    probe = json.loads((run / "baseline-probe/report.json").read_text())
    assert probe["protocol"] == "split" and set(probe["official_split"]) == {"test1", "test2", "pooled"}


def test_eval_reads_the_protocol_and_equals_the_train_report(trained, tmp_path):
    root, _, run = trained
    result = invoke_ksr(["eval", "--run", "run", "--out", tmp_path, "--device", "cpu"], root)
    assert result.exit_code == 0, result.output
    a = json.loads((run / "report.json").read_text())
    b = json.loads((tmp_path / "report.json").read_text())
    assert b.pop("allow_incomplete") is False
    assert a == b
    assert (run / "report.md").read_text() == (tmp_path / "report.md").read_text()
    one_error(invoke_ksr(["eval", "--run", run, "--fold", "1", "--out", tmp_path], root), "--fold does not apply")


def test_resume_and_eval_refuse_a_cache_with_other_splits(trained, tmp_path):
    root, _, run = trained
    # Same utterances, test1 and test2 swapped for one pair: the union of the tests is unchanged.
    swapped = list(SPLITS)
    swapped[8], swapped[10] = swapped[10], swapped[8]
    other = make_cache(tmp_path / "other", swapped)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    line = one_error(
        invoke_ksr(["train", "--cache", other, "--run", copy, "--resume", "--seeds", "1,2", *TRAIN], root),
        "official split: this cache's test1 utterances are not the ones the run recorded",
    )
    assert "use the cache the run was trained on" in line
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before  # nothing rewritten
    one_error(
        invoke_ksr(["eval", "--run", copy, "--cache", other, "--out", tmp_path / "e"], root),
        "test1 utterances are not the ones the run recorded",
    )
    # the run's own cache resumes (nothing left to train) and reports the same numbers
    result = invoke_ksr(["train", "--cache", trained[1], "--run", copy, "--resume", "--seeds", "1,2", *TRAIN], root)
    assert result.exit_code == 0, result.output
    assert (
        json.loads((copy / "report.json").read_text())["summary"]
        == json.loads((run / "report.json").read_text())["summary"]
    )


@pytest.mark.parametrize(
    "splits, extra, needle",
    [
        (None, [], "has no official splits (its manifest had no split column)"),
        (["train", "test1"] * 10, [], "has no 'valid' utterances"),
        (["valid", "test1"] * 10, [], "has no 'train' utterances"),
        (["train", "valid"] * 10, [], "has no test utterances"),
        (SPLITS, ["--fold", "1"], "--fold does not apply to --protocol split"),
        (SPLITS, ["--select", "test"], "--select test is refused under --protocol split"),
    ],
)
def test_split_protocol_refusals_are_one_line_and_write_nothing(tmp_path, splits, extra, needle):
    cache = make_cache(tmp_path / "c", splits, sessions=0 if splits else 5)
    result = invoke_ksr(["train", "--cache", cache, "--run", "run", "--protocol", "split", *TRAIN, *extra], tmp_path)
    one_error(result, needle)
    assert not (tmp_path / "run").exists()


def test_session_protocols_refuse_a_cache_without_sessions(tmp_path):
    cache = make_cache(tmp_path / "c", SPLITS)
    for protocol in ("session", "speaker"):
        result = invoke_ksr(["train", "--cache", cache, "--run", "run", "--protocol", protocol, *TRAIN], tmp_path)
        one_error(result, "has utterances without a session (an official-split corpus?)")
        assert "use --protocol split" in result.output
    assert not (tmp_path / "run").exists()


def test_official_split_needs_every_utterance_split():
    with pytest.raises(ValueError, match=r"^2 of 5 utterances of this cache have no split"):
        official_split(["train", "valid", "", "test", ""])
    split = official_split(["test2", "train", "test10", "valid", "test1", "test"])
    assert list(split.tests) == ["test1", "test2", "test10", "test"]  # natural order
    assert split.train.tolist() == [1] and split.valid.tolist() == [3] and split.test.tolist() == [0, 2, 4, 5]
    assert fold_groups("split", [""] * 3, ["a"] * 3) == ["official split"]


def test_a_version_1_cache_trains_with_the_default_protocol(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    result = invoke_ksr(
        ["train", "--cache", "v1", "--run", "run", "--fold", "2", "--epochs", "1", "--no-baseline", *TRAIN[2:]],
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["protocol"] == "session" and report["folds"] == [2]
    assert report["seeds"]["123"]["folds"]["2"]["test_group"] == "Session 2"
    one_error(
        invoke_ksr(["train", "--cache", "v1", "--run", "r2", "--protocol", "split", *TRAIN], tmp_path),
        "has no official splits",
    )


def test_ablate_under_the_split_protocol(trained, tmp_path):
    _, cache, _ = trained
    args = ["ablate", "baselines", "--values", "head,probe", "--cache", cache, "--protocol", "split", "--root", "ab"]
    result = invoke_ksr([*args, "--seeds", "1", *TRAIN], tmp_path)
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "ab/ablation.json").read_text())
    assert table["protocol"] == "split" and [r["value"] for r in table["rows"]] == ["head", "probe"]
    for row in table["rows"]:
        report = json.loads((tmp_path / row["run"] / "report.json").read_text())
        assert set(report["official_split"]) == {"test1", "test2", "pooled"}
        assert row["wa"] == report["official_split"]["pooled"]["wa"]
        assert (tmp_path / row["run"] / "seed1/split/best.pt").is_file()
    assert "all test splits pooled, mean ± std over seeds" in (tmp_path / "ab/ablation.md").read_text()


def test_the_split_folder_is_a_fold_of_the_run(trained):
    _, _, run = trained
    assert trained_folds(run) == {1: [1], 2: [1]}
    assert run_of_checkpoint(run / "seed2/split/best.pt") == run.resolve()
    assert fold_files(run, 2, 1, "split").root == run / "seed2/split"
    assert fold_files(run, 2, 1).root == run / "seed2/fold1"


def test_split_reports_carry_intervals_and_compare_pairs_them(trained):
    root, cache, run = trained
    report = json.loads((run / "report.json").read_text())
    for seed in ("1", "2"):
        folds = report["seeds"][seed]["folds"]
        assert set(folds) == {"test1", "test2"}
        for f in folds.values():
            low, high = f["ci"]["ua"]
            assert low <= f["ua"] <= high
        low, high = report["seeds"][seed]["pooled"]["ci"]["wa"]
        assert low <= report["seeds"][seed]["pooled"]["wa"] <= high
    rows = (run / "report_predictions.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in rows[1:]} == {"test1", "test2"}
    assert len(rows) - 1 == 2 * len(expected_ids(cache)["test1"] + expected_ids(cache)["test2"])
    result = invoke_ksr(["compare", run, run, "--json", root / "same.json"], root)
    assert result.exit_code == 0, result.output
    same = json.loads((root / "same.json").read_text())
    assert same["folds"] == ["test1", "test2"]
    assert all(v["difference"] == 0 for v in same["comparisons"][0]["metrics"].values())


def test_compare_sees_a_split_run_retrained_after_its_report(trained):
    """Freshness is asked of fuse.train.runs (seedS/split/best.pt), not a fold*/ pattern: a
    predictions file older than the checkpoints is not read."""
    import csv
    import os
    import shutil

    root, _, run = trained
    copy = root / "retrained"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    saved = copy / "report_predictions.csv"
    rows = list(csv.reader(saved.open()))
    classes = json.loads((copy / "report.json").read_text())["classes"]
    stale = [rows[0]] + [[*r[:4], classes[(classes.index(r[4]) + 1) % len(classes)], *r[5:]] for r in rows[1:]]
    with saved.open("w", newline="") as f:
        csv.writer(f).writerows(stale)
    later = saved.stat().st_mtime + 10
    os.utime(copy / "seed2/split/best.pt", (later, later))  # retrained after its report was written
    result = invoke_ksr(["compare", run, copy, "--json", root / "fresh.json"], root)
    assert result.exit_code == 0, result.output
    got = json.loads((root / "fresh.json").read_text())
    assert all(v["difference"] == 0 for v in got["comparisons"][0]["metrics"].values())
