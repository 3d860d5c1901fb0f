"""ksr compare, report intervals and ablation comparisons on two tiny runs that differ only by seed."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.cli_runner import invoke_ksr
from support.tiny import TINY_MODEL, tiny_cache

from ksr.fuse.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from ksr.fuse.train.metrics import METRICS, scores

TRAIN = ["--recipe", "ksr", "--epochs", "16", *TINY_MODEL, "--batch-size", "16", "--fold", "1", "--fold", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A weak-signal cache (the models reach 55-60% WA, with different errors) and two runs of the
    same settings with seeds 1 and 2 (about 20 s)."""
    root = tmp_path_factory.mktemp("compare")
    tiny_cache(root / "cache", 200, seed=1, audio=(10, 7, 20), text=(2, 5), signal=0.3)
    for seed in (1, 2):
        args = ["train", "--cache", "cache", "--run", f"s{seed}", *TRAIN, "--seeds", str(seed), "--no-baseline"]
        args += ["--bootstrap", "200"] if seed == 2 else []
        result = invoke_ksr(args, root)
        assert result.exit_code == 0, result.output
    return root


def compare(root: Path, *args) -> tuple:
    result = invoke_ksr(["compare", *args, "--json", "out.json"], root)
    out = root / "out.json"
    got = json.loads(out.read_text()) if result.exit_code == 0 else None
    out.unlink(missing_ok=True)
    return result, got


def copy_run(root: Path, name: str, new: str) -> Path:
    dest = root / new
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(root / name, dest)
    return dest


def test_two_runs_differing_only_by_seed_are_a_null_result(runs):
    # On a fixed seed this is deterministic; the models disagree on about half the utterances
    # yet are right equally often, so a correct test must not call them different.
    result, got = compare(runs, "s1", "s2")
    assert result.exit_code == 0, result.output
    assert "| run B | seeds | metric |" in result.output and "McNemar" in result.output
    (c,) = got["comparisons"]
    assert got["bootstrap"]["resamples"] == DEFAULT_RESAMPLES and got["bootstrap"]["seed"] == DEFAULT_SEED
    assert got["utterances"] == 80 and got["folds"] == [1, 2]
    report_a = json.loads((runs / "s1/report.json").read_text())
    report_b = json.loads((runs / "s2/report.json").read_text())
    for m in METRICS:
        r = c["metrics"][m]
        assert r["a"] == pytest.approx(report_a["seeds"]["1"]["pooled"][m])
        assert r["b"] == pytest.approx(report_b["seeds"]["2"]["pooled"][m])
        assert r["interval"][0] < 0 < r["interval"][1], m
        assert r["p"] > 0.1, m
    (mc,) = c["mcnemar"]
    assert mc["b"] + mc["c"] > 20 and mc["p"] > 0.1
    assert "over_seeds" not in c  # one seed each


def test_reports_give_seeded_intervals_and_every_prediction(runs):
    report = json.loads((runs / "s1/report.json").read_text())
    assert report["bootstrap"]["resamples"] == DEFAULT_RESAMPLES and report["bootstrap"]["seed"] == DEFAULT_SEED
    assert "predictions" not in report  # they have their own file
    assert json.loads((runs / "s2/report.json").read_text())["bootstrap"]["resamples"] == 200  # ksr train --bootstrap
    with open(runs / "s1/report_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = report["classes"]
    for fold in ("1", "2"):
        entry = report["seeds"]["1"]["folds"][fold]
        for m in METRICS:
            assert entry["ci"][m][0] <= entry[m] <= entry["ci"][m][1]
        mine = [r for r in rows if r["fold"] == fold]
        split = json.loads((runs / f"s1/seed1/fold{fold}/split.json").read_text())
        assert sorted(r["id"] for r in mine) == sorted(split["test"])
        again = scores([classes.index(r["label"]) for r in mine], [classes.index(r["prediction"]) for r in mine], 4)
        assert again["wa"] == pytest.approx(entry["wa"]) and again["ua"] == pytest.approx(entry["ua"])
    pooled = report["seeds"]["1"]["pooled"]
    assert all(pooled["ci"][m][0] <= pooled[m] <= pooled["ci"][m][1] for m in METRICS)
    header = (runs / "s1/report.csv").read_text().splitlines()[0]
    assert header.endswith("weighted_f1_ci_low,weighted_f1_ci_high")
    assert "## 95% confidence intervals" in (runs / "s1/report.md").read_text()


def test_missing_or_stale_predictions_are_made_again_from_the_checkpoints(runs):
    _, saved = compare(runs, "s1", "s2")
    fresh = copy_run(runs, "s2", "s2-fresh")
    (fresh / "report_predictions.csv").unlink()
    result, got = compare(runs, "s1", "s2-fresh")
    assert result.exit_code == 0, result.output
    assert got["comparisons"][0]["source"] == "checkpoints"
    assert got["comparisons"][0]["metrics"] == saved["comparisons"][0]["metrics"]
    stale = copy_run(runs, "s2", "s2-stale")
    later = (stale / "report_predictions.csv").stat().st_mtime + 10
    os.utime(stale / "seed2/fold1/best.pt", (later, later))
    _, got = compare(runs, "s1", "s2-stale")
    assert got["comparisons"][0]["source"] == "checkpoints"
    _, got = compare(runs, "s1", "s2", "--evaluate")
    assert (
        got["reference_source"] == "checkpoints"
        and got["comparisons"][0]["metrics"] == saved["comparisons"][0]["metrics"]
    )


def edit_predictions(run: Path, keep) -> None:
    path = run / "report_predictions.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in (keep(r) for r in rows) if r)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("cache", "was evaluated on another cache than s1 (text_encoder.dim differs); compare runs on the same cache"),
        ("fold", "tests folds 1 but s1 folds 1, 2; compare runs on the same folds"),
        ("utterance", "tests other utterances than s1 in fold 1 (1 only in the first, 1 only in the second)"),
        ("label", "and s1 give other labels to the same utterances of fold 1; compare runs on the same cache"),
    ],
)
def test_runs_on_other_caches_or_test_sets_are_refused_in_one_line(runs, damage, message):
    other = copy_run(runs, "s2", f"other-{damage}")
    if damage == "cache":
        report = json.loads((other / "report.json").read_text())
        report["cache_meta"]["text_encoder"]["dim"] = 16
        (other / "report.json").write_text(json.dumps(report))
    elif damage == "fold":
        edit_predictions(other, lambda r: r if r["fold"] == "1" else None)
    elif damage == "label":
        first = {}
        relabel = {"ang": "sad", "sad": "ang", "hap": "neu", "neu": "hap"}
        edit_predictions(
            other, lambda r: {**r, "label": relabel[r["label"]]} if first.setdefault("id", r["id"]) == r["id"] else r
        )
    else:
        first = {}
        edit_predictions(other, lambda r: {**r, "id": "renamed"} if first.setdefault("id", r["id"]) == r["id"] else r)
    os.utime(other / "report_predictions.csv")  # newer than the checkpoints: read, not re-evaluated
    result, _ = compare(runs, "s1", other.name)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output
    alone = invoke_ksr(["compare", "s1"], runs)
    assert alone.exit_code == 1 and "at least two runs" in alone.output


def test_several_seeds_are_compared_over_seeds_too(runs):
    """Runs X (seed 1 of s1, seed 2 of s2) and Y (the same predictions, seeds swapped): every
    difference averaged over seeds is exactly 0, the paired test over seeds gives p = 1."""
    rows = {}
    for name in ("s1", "s2"):
        with open(runs / name / "report_predictions.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
    for new, first, second in (("X", "s1", "s2"), ("Y", "s2", "s1")):
        run = copy_run(runs, "s1", new)
        shutil.rmtree(run / "seed1")
        with open(run / "report_predictions.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows["s1"][0]))
            w.writeheader()
            w.writerows({**r, "seed": "1"} for r in rows[first])
            w.writerows({**r, "seed": "2"} for r in rows[second])
    result, got = compare(runs, "X", "Y")
    assert result.exit_code == 0, result.output
    c = got["comparisons"][0]
    assert c["seeds"] == [1, 2] and c["seeds_paired"]
    assert [(t["seed_a"], t["seed_b"]) for t in c["mcnemar"]] == [(1, 1), (2, 2)]
    assert c["mcnemar"][0]["b"] == c["mcnemar"][1]["c"]  # the swap mirrors the discordant counts
    for m in METRICS:
        assert c["metrics"][m]["difference"] == pytest.approx(0, abs=1e-12)
        assert c["over_seeds"][m]["mean_difference"] == pytest.approx(0, abs=1e-12)
        assert c["over_seeds"][m]["test"] == "paired t-test" and c["over_seeds"][m]["p"] == pytest.approx(1)
        assert c["over_seed_folds"][m]["n"] == 4
    assert "Over seeds" in result.output


def test_eval_bootstrap_options(runs):
    result = invoke_ksr(["eval", "--run", "s1", "--out", "ev", "--bootstrap", "50", "--bootstrap-seed", "7"], runs)
    assert result.exit_code == 0, result.output
    report = json.loads((runs / "ev/report.json").read_text())
    assert (report["bootstrap"]["resamples"], report["bootstrap"]["seed"]) == (50, 7)
    assert "50 resamples" in result.output
    none = invoke_ksr(["eval", "--run", "s1", "--out", "ev0", "--bootstrap", "0"], runs)
    assert none.exit_code == 0 and "confidence intervals" not in none.output
    assert "ci" not in json.loads((runs / "ev0/report.json").read_text())["seeds"]["1"]["pooled"]


def test_ablation_rows_are_compared_with_the_first(runs):
    args = ["ablate", "modality", "--cache", "cache", "--root", "abl", "--values", "both,text"]
    result = invoke_ksr([*args, "--epochs", "2", *TINY_MODEL, "--batch-size", "32", "--fold", "2"], runs)
    assert result.exit_code == 0, result.output
    table = json.loads((runs / "abl/ablation.json").read_text())
    first, second = table["rows"]
    assert "vs_first" not in first
    pooled = [
        json.loads(Path(runs, r["run"], "report.json").read_text())["seeds"]["123"]["pooled"] for r in (first, second)
    ]
    for m in METRICS:
        assert second["vs_first"]["metrics"][m]["difference"] == pytest.approx(pooled[1][m] - pooled[0][m])
    assert "Against the first row (modalities = both)" in (runs / "abl/ablation.md").read_text()
    lines = (runs / "abl/ablation.csv").read_text().splitlines()
    assert lines[0].split(",")[-2:] == ["weighted_f1_diff_p", "mcnemar_p"]
    assert len(lines[2].split(",")) == len(lines[0].split(","))


def test_damaged_files_and_bad_options_are_refused_in_one_line_that_names_them(runs):
    cases = {
        "bytes": (
            lambda path: path.write_bytes(path.read_bytes()[:60] + b"\xff\xfe" + path.read_bytes()[60:]),
            "not UTF-8 text",
        ),
        "seed": (lambda path: edit_predictions(path.parent, lambda r: {**r, "seed": "x"}), "line 2: seed 'x' is not"),
        "short": (lambda path: path.write_text("seed,fold,id,label,prediction\n1,1,a\n"), "line 2: not 5 fields"),
        "class": (
            lambda path: edit_predictions(path.parent, lambda r: {**r, "label": "joy"}),
            "line 2: class 'joy' is not one",
        ),
    }
    for name, (damage, needle) in cases.items():
        run = copy_run(runs, "s2", f"damaged-{name}")
        damage(run / "report_predictions.csv")
        result, _ = compare(runs, "s1", run.name)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
        assert f"{run.name}/report_predictions.csv" in result.output and needle in result.output, result.output
    run = copy_run(runs, "s2", "damaged-json")
    (run / "report.json").write_bytes(b'{"run": \xff')
    result, _ = compare(runs, "s1", run.name)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert f"{run.name}/report.json: not UTF-8 text" in result.output
    result = invoke_ksr(["compare", "s1", "s2", "--seed", "-5"], runs)
    assert result.exit_code == 2 and "'--seed'" in result.output and "-5" in result.output, result.output


def fake_run(root: Path, name: str, predictions: dict, **report) -> Path:
    """A copy of run s1 whose report is ``report`` over s1's, with these predictions
    {seed: {fold: (ids, labels, preds)}} (class indexes)."""
    run = copy_run(root, "s1", name)
    base = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({**base, **report}))
    classes = base["classes"]
    with open(run / "report_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seed", "fold", "id", "label", "prediction"])
        for seed, folds in predictions.items():
            for fold, (ids, labels, preds) in folds.items():
                w.writerows([seed, fold, i, classes[y], classes[p]] for i, y, p in zip(ids, labels, preds, strict=True))
    return run


def split_predictions(seed: int, accuracy: dict[str, float]) -> dict:
    """Test splits of unequal sizes (30 and 10 utterances): pooling them differs from their mean."""
    rng = np.random.default_rng(seed)
    out = {}
    for test, n in (("test1", 30), ("test2", 10)):
        labels = np.arange(n) % 4
        preds = np.where(rng.random(n) < accuracy[test], labels, (labels + 1 + rng.integers(0, 3, n)) % 4)
        out[test] = ([f"{test}-{i}" for i in range(n)], labels.tolist(), preds.tolist())
    return out


def test_split_runs_are_compared_over_seeds_on_the_pooled_test_splits(runs):
    accuracy = {
        ("A", "1"): {"test1": 0.5, "test2": 0.9},
        ("A", "2"): {"test1": 0.6, "test2": 0.8},
        ("B", "1"): {"test1": 0.8, "test2": 0.3},
        ("B", "2"): {"test1": 0.7, "test2": 0.5},
    }
    preds = {
        run: {seed: split_predictions(10 * i + int(seed), accuracy[(run, seed)]) for seed in ("1", "2")}
        for i, run in enumerate("AB")
    }
    for run in "AB":
        fake_run(runs, f"split{run}", preds[run], protocol="split", seeds={})
    result, got = compare(runs, "splitA", "splitB")
    assert result.exit_code == 0, result.output
    assert got["folds"] == ["test1", "test2"] and got["protocol"] == "split"
    (c,) = got["comparisons"]
    assert "over_seed_folds" not in c  # test1 and test2 of a seed are one model, not two folds

    def pooled(run, seed):
        folds = preds[run][seed].values()
        return scores(sum((f[1] for f in folds), []), sum((f[2] for f in folds), []), 4)

    def mean_of_splits(run, seed, m):
        return np.mean([scores(f[1], f[2], 4)[m] for f in preds[run][seed].values()])

    for m in METRICS:
        want = np.mean([pooled("B", s)[m] - pooled("A", s)[m] for s in ("1", "2")])
        assert c["over_seeds"][m]["mean_difference"] == pytest.approx(want, abs=1e-12), m
        assert c["over_seeds"][m]["n"] == 2 and c["over_seeds"][m]["test"] == "paired t-test"
    wrong = np.mean([mean_of_splits("B", s, "wa") - mean_of_splits("A", s, "wa") for s in ("1", "2")])
    assert abs(wrong - c["over_seeds"]["wa"]["mean_difference"]) > 0.05  # the mean of the splits is not it
    assert "each seed's metric pooled over the test splits" in result.output
    assert "seed-fold pairs |" not in result.output and "in test splits test1, test2" in result.output


def test_unfinished_runs_and_test_set_selection_are_compared_with_a_warning(runs):
    _, clean = compare(runs, "s1", "s2")
    assert clean["warnings"] == []
    unfinished = copy_run(runs, "s2", "killed")
    report = json.loads((unfinished / "report.json").read_text())
    report["coverage"] = {**report["coverage"], "complete": False, "unfinished": ["seed 2 fold 2: 5 of 16 epochs"]}
    (unfinished / "report.json").write_text(json.dumps(report))
    on_test = copy_run(runs, "s1", "on-test")
    report = json.loads((on_test / "report.json").read_text())
    (on_test / "report.json").write_text(json.dumps({**report, "select": "test"}))
    result, got = compare(runs, "on-test", "killed")
    assert result.exit_code == 0, result.output
    assert got["warnings"] == [
        "on-test selected its epochs on the test set (--select test): its numbers are optimistic and the "
        "comparison is biased in its favour",
        "killed is an unfinished run (seed 2 fold 2: 5 of 16 epochs): its numbers are not final",
    ]
    for warning in got["warnings"]:
        assert f"**Warning**: {warning}." in result.output
    assert got["comparisons"][0]["metrics"] == clean["comparisons"][0]["metrics"]  # compared all the same


def test_a_duplicated_prediction_row_is_refused_in_one_line(runs):
    run = copy_run(runs, "s2", "damaged-duplicate")
    path = run / "report_predictions.csv"
    lines = path.read_text().splitlines()
    first = lines[1].split(",")
    copy = ",".join([*first[:4], "hap" if first[4] != "hap" else "sad", *first[5:]])
    path.write_text("\n".join([*lines[:2], copy, *lines[2:]]) + "\n")
    result, _ = compare(runs, "s1", run.name)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert f"{run.name}/report_predictions.csv, line 3: utterance {first[2]!r} of seed 2 fold 1 is listed twice" in (
        result.output
    )


def test_compare_json_does_not_replace_a_file_without_force(runs):
    out = runs / "mine.json"
    out.write_text("my notes\n")
    result = invoke_ksr(["compare", "s1", "s2", "--json", "mine.json"], runs)
    assert result.exit_code == 1 and "mine.json exists; pass --force to replace it" in result.output
    assert out.read_text() == "my notes\n"
    result = invoke_ksr(["compare", "s1", "s2", "--json", "mine.json", "--force"], runs)
    assert result.exit_code == 0 and json.loads(out.read_text())["comparisons"]
