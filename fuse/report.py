"""Evaluation reports: per fold, over folds (mean, std, pooled), over seeds; JSON, Markdown, CSV, PNG."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import Cache, open_cache
from ..common import resolve_device, write_json, write_text
from .baselines import PROBE_C_GRID
from .checkpoint import load_model_and_meta
from .folds import OFFICIAL_SPLIT, public_fold_name
from .inference import infer
from .intervals import (
    CI_COLUMNS,
    add_intervals,
    ci_cells,
    fold_predictions,
    interval_lines,
    predictions_path,
    write_predictions,
)
from .metrics import METRICS, mean_std, scores
from .official_split import official_split_lines, official_split_summary, split_tests
from .runs import (
    RunError,
    RunSpec,
    baseline_dir,
    cache_split,
    check_recorded_split,
    check_run_matches_cache,
    fold_checkpoint,
    fold_dir,
    history_of,
    load_run,
    num_folds,
    trained_folds,
)
from .stats import Bootstrap

TEST_SELECTION_NOTE = (
    "MODEL SELECTED ON THE TEST SET (--select test): this reproduces the public implementation's "
    "protocol and overstates the accuracy a new speaker would get"
)


def fold_naming(spec: RunSpec) -> str:
    if spec.protocol == "split":
        return (
            f"{OFFICIAL_SPLIT}: one model per seed trained on train, its epoch chosen on valid, tested on "
            f"each test split"
        )
    if spec.protocol == "session":
        return "fold k tests Session k (the public KS-Transformer code calls it fold 6-k)"
    return "fold k tests the k-th speaker in sorted order; its session partner validates"


def evaluate_run(
    run_dir: Path,
    cache: Cache,
    spec: RunSpec,
    folds: list[int] | None = None,
    device: torch.device = torch.device("cpu"),
    batch_size: int = 64,
    bootstrap: Bootstrap = Bootstrap(),
) -> dict[str, Any]:
    check_run_matches_cache(spec, cache, run_dir)
    available = trained_folds(run_dir)
    if not available:
        raise RunError(f"{run_dir}: no trained fold (no seed*/fold*/best.pt); run ksr train first")
    classes = list(cache.classes)
    k = len(classes)
    per_seed: dict[str, Any] = {}
    predictions: dict[str, dict[str, dict]] = {}  # per seed and fold: the test utterances' predictions
    warnings: list[str] = []
    for seed, seed_folds in available.items():
        wanted = seed_folds if folds is None else [f for f in folds if f in seed_folds]
        missing = [] if folds is None else [f for f in folds if f not in seed_folds]
        if missing:
            raise RunError(f"{run_dir}: fold(s) {missing} of seed {seed} are not trained (trained: {seed_folds})")
        fold_reports, y_all, p_all = {}, [], []
        for fold in wanted:
            split = cache_split(cache, spec, fold, seed)
            check_recorded_split(fold_dir(run_dir, seed, fold, spec.protocol), split, cache.ids)
            model, meta = load_model_and_meta(fold_checkpoint(run_dir, seed, fold, protocol=spec.protocol), device)
            # The split protocol's one model is reported on each test split as a fold would be.
            for name, test, group in split_tests(split):
                result = infer(model, cache, test, batch_size, device)
                y = cache.labels[test]
                s = scores(y, result.preds, k)
                s.update(
                    test_group=group,
                    selected_epoch=meta.get("epoch"),
                    test_loss=result.loss,
                    history=history_of(run_dir, seed, fold, spec.protocol),
                )
                if spec.protocol == "session":
                    s["public_fold_name"] = public_fold_name(fold_index_session(split.test_group))
                s["epochs_done"] = len(s["history"])
                if s["absent_classes"]:
                    missing = ", ".join(classes[c] for c in s["absent_classes"])
                    warnings.append(
                        f"seed {seed} {'fold ' if not split.tests else ''}{name}: no test utterance of {missing}: "
                        f"UA and macro F1 average over all {k} classes and count {missing} as 0"
                    )
                if len(result.preds) and len(np.unique(result.preds)) == 1:
                    warnings.append(
                        f"seed {seed} {'fold ' if not split.tests else ''}{name}: every test utterance was predicted "
                        f"as {classes[int(result.preds[0])]}: the model collapsed to one class"
                    )
                fold_reports[name] = s
                predictions.setdefault(str(seed), {})[name] = fold_predictions(
                    [cache.ids[i] for i in test], y, result.preds
                )
                y_all.append(y)
                p_all.append(result.preds)
        summary = {m: mean_std([f[m] for f in fold_reports.values()]) for m in METRICS}
        pooled = scores(np.concatenate(y_all), np.concatenate(p_all), k)
        per_seed[str(seed)] = {"folds": fold_reports, "mean_std_over_folds": summary, "pooled": pooled}
    seed_means = {m: [s["mean_std_over_folds"][m][0] for s in per_seed.values()] for m in METRICS}
    summary = {m: float(np.mean(v)) for m, v in seed_means.items()}
    summary.update(
        {
            f"{m}_std_over_folds": float(np.mean([s["mean_std_over_folds"][m][1] for s in per_seed.values()]))
            for m in METRICS
        }
    )
    if len(per_seed) > 1:
        summary.update({f"{m}_std_over_seeds": mean_std(v)[1] for m, v in seed_means.items()})
    official = official_split_summary(per_seed) if spec.protocol == "split" else None
    if official:
        summary = official["summary"]
    report = {
        "run": str(run_dir),
        "model": model_name(spec.model),
        "protocol": spec.protocol,
        "fold_naming": fold_naming(spec),
        "select": spec.select,
        "selection_metric": spec.metric,
        "note": SPLIT_SELECTION_NOTE
        if spec.protocol == "split" and spec.select == "valid"
        else SELECTION_NOTES[spec.select],
        "classes": classes,
        "seeds": per_seed,
        "folds": sorted({int(f) for f in sum(available.values(), []) if folds is None or f in folds}),
        "coverage": coverage(spec, per_seed, num_folds(cache, spec.protocol)),
        "warnings": warnings,
        "summary": summary,
        **({"official_split": official["tests"]} if official else {}),
        "cache_meta": cache.meta.to_dict(),  # what the predictions were made on (ksr compare checks it)
    }
    add_intervals(report, predictions, bootstrap)
    return report


def coverage(spec: RunSpec, per_seed: dict[str, Any], folds_planned: int) -> dict[str, Any]:
    """What a report covers: seeds and folds found against the protocol's, epochs done against
    the recipe's. A fold that stopped before its last epoch makes the run unfinished."""
    planned = len(PROBE_C_GRID) if spec.model.architecture == "probe" else spec.recipe.epochs
    split = spec.protocol == "split"  # its test splits share one model per seed: count it once
    unfinished = list(
        dict.fromkeys(
            f"seed {seed} {OFFICIAL_SPLIT if split else f'fold {fold}'}: {f['epochs_done']} of {planned} epochs"
            for seed, sr in per_seed.items()
            for fold, f in sr["folds"].items()
            if f["epochs_done"] < planned
        )
    )
    return {
        "seeds": [int(s) for s in per_seed],
        "folds_found": {s: [1] if split else [int(f) for f in sr["folds"]] for s, sr in per_seed.items()},
        "folds_planned": folds_planned,
        "epochs_planned": planned,
        "unfinished": unfinished,
        "complete": not unfinished,
    }


def evaluate_saved_run(
    run_dir: Path,
    cache_dir: str | None = None,
    folds: list[int] | None = None,
    device: str = "auto",
    allow_incomplete: bool = False,
    bootstrap: Bootstrap = Bootstrap(),
) -> dict[str, Any]:
    """``ksr eval``: the run's report on ``cache_dir`` (default: the cache it was trained on)."""
    spec = load_run(run_dir)
    if folds and spec.protocol == "split":
        raise RunError(f"{run_dir} was trained on the official split (one fold): --fold does not apply")
    source = cache_dir or spec.cache_dir
    if not source or not Path(source).is_dir():
        raise RunError(f"the run's cache {source!r} is not there; pass --cache")
    dev = resolve_device(device)
    cache = open_cache(source, device=dev if dev.type == "cuda" else "cpu")
    report = evaluate_run(run_dir, cache, spec, folds=folds, device=dev, bootstrap=bootstrap)
    report["allow_incomplete"] = allow_incomplete
    probe_dir = baseline_dir(run_dir)
    if (probe_dir / "run.json").is_file() and trained_folds(probe_dir):
        attach_baseline(
            report,
            "linear probe",
            evaluate_run(probe_dir, cache, load_run(probe_dir), folds=folds, device=dev, bootstrap=bootstrap),
        )
    return report


SELECTION_NOTES = {
    "test": TEST_SELECTION_NOTE,
    "valid": "model selected on a validation set drawn from the training sessions only",
    "last": "the last epoch of each fold kept (no selection)",
}


SPLIT_SELECTION_NOTE = "model selected on the official valid split"


def model_name(cfg) -> str:
    """How reports name a model: its architecture, and the modalities unless both."""
    names = {"ks-transformer": "KS-Transformer", "head": "head baseline", "probe": "linear probe"}
    name = names.get(cfg.architecture, cfg.architecture)
    return name if cfg.modalities == "both" else f"{name}, {cfg.modalities} only"


def attach_baseline(report: dict[str, Any], name: str, baseline: dict[str, Any]) -> None:
    """Put a baseline's summary (same cache, folds, seeds, selection) into ``report``."""
    report.setdefault("baselines", {})[name] = {
        "run": os.path.relpath(baseline["run"], report["run"]),  # the reports move with their run folder
        "model": baseline.get("model", name),
        "summary": baseline["summary"],
    }


def comparison_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(name, summary) of the model and each baseline attached to its report."""
    return [(report.get("model", "model"), report["summary"])] + [
        (b["model"], b["summary"]) for b in report.get("baselines", {}).values()
    ]


def fold_index_session(test_group: str) -> int:
    return int(test_group.split()[-1])


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# ksr report: {report['run']}", ""]
    if "model" in report:
        lines += [f"Model: {report['model']}.", ""]
    if report["select"] == "test":
        lines += [f"**{report['note']}.**", ""]
    else:
        lines += [f"Model selection: {report['note']} (metric: {report['selection_metric']}).", ""]
    lines += [
        f"Protocol: {report['protocol']}; {report['fold_naming']}.",
        f"Classes: {', '.join(report['classes'])}.",
        "",
    ]
    cov = report.get("coverage")
    if cov:
        found = "; ".join(
            f"seed {seed}: folds {', '.join(map(str, folds))}" for seed, folds in cov["folds_found"].items()
        )
        lines += [
            (
                f"Covers seed(s) {', '.join(cov['folds_found'])}: one model per seed on the {OFFICIAL_SPLIT}; "
                f"{cov['epochs_planned']} epochs planned."
            )
            if report["protocol"] == "split"
            else (
                f"Covers {found} (the protocol has {cov['folds_planned']} folds); "
                f"{cov['epochs_planned']} epochs planned per fold."
            ),
            "",
        ]
        if not cov["complete"]:
            lines += [
                "**UNFINISHED RUN**: " + "; ".join(cov["unfinished"]) + ". Resume it (ksr train --resume) "
                "before reading its numbers.",
                "",
            ]
    for warning in report.get("warnings", []):
        lines += [f"**Warning**: {warning}.", ""]
    s = report["summary"]
    hide_mean = cov is not None and not cov["complete"] and not report.get("allow_incomplete")
    mean_row = (
        ("| mean over folds | " + " | ".join(f"{pct(s[m])} ± {pct(s[m + '_std_over_folds'])}" for m in METRICS) + " |")
        if not hide_mean
        else "| mean over folds | not given: unfinished run (--allow-incomplete) | | | |"
    )
    if "official_split" in report:
        lines += official_split_lines(report, hide_mean)
    else:
        lines += ["| | WA % | UA % | macro F1 % | weighted F1 % |", "|---|---|---|---|---|", mean_row]
    if "wa_std_over_seeds" in s and "official_split" not in report:
        lines.append("| std over seeds | " + " | ".join(pct(s[m + "_std_over_seeds"]) for m in METRICS) + " |")
    if report.get("baselines"):
        lines += [
            "",
            "Beside its baselines (same cache, folds, seeds and selection; "
            + (
                "all test splits pooled, mean ± std over seeds):"
                if "official_split" in report
                else "mean ± std over folds):"
            ),
            "",
            "| model | WA % | UA % | macro F1 % | weighted F1 % |",
            "|---|---|---|---|---|",
        ]
        for name, summary in comparison_rows(report):
            lines.append(
                f"| {name} | "
                + " | ".join(f"{pct(summary[m])} ± {pct(summary[m + '_std_over_folds'])}" for m in METRICS)
                + " |"
            )
    unit = "test split" if "official_split" in report else "fold"
    for seed, sr in report["seeds"].items():
        lines += [
            "",
            f"## seed {seed}",
            "",
            f"| {unit} | test | selected epoch (from 0) | n | WA % | UA % | macro F1 % | weighted F1 % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for fold, f in sr["folds"].items():
            lines.append(
                f"| {fold} | {f['test_group']} | {f['selected_epoch']} | {f['n']} | "
                + " | ".join(pct(f[m]) for m in METRICS)
                + " |"
            )
        p = sr["pooled"]
        lines.append(f"| pooled | all {unit}s | | {p['n']} | " + " | ".join(pct(p[m]) for m in METRICS) + " |")
        lines += [
            "",
            "Confusion matrix, pooled (rows: true, columns: predicted):",
            "",
            "| | " + " | ".join(report["classes"]) + " |",
            "|---" * (len(report["classes"]) + 1) + "|",
        ]
        for name, row in zip(report["classes"], p["confusion"]):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += interval_lines(report)
    return "\n".join(lines) + "\n"


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["seed", "fold", "test", "selected_epoch", "n", *METRICS, *CI_COLUMNS])
    for seed, sr in report["seeds"].items():
        for fold, f in sr["folds"].items():
            w.writerow(
                [
                    seed,
                    fold,
                    f["test_group"],
                    f["selected_epoch"],
                    f["n"],
                    *(f"{f[m]:.6f}" for m in METRICS),
                    *ci_cells(f),
                ]
            )
        p = sr["pooled"]
        w.writerow([seed, "pooled", "all", "", p["n"], *(f"{p[m]:.6f}" for m in METRICS), *ci_cells(p)])
    if report.get("coverage", {}).get("complete", True) or report.get("allow_incomplete"):
        w.writerow(["all", "mean", "", "", "", *(f"{report['summary'][m]:.6f}" for m in METRICS)])
    else:
        w.writerow(["all", "unfinished run: no mean", "", "", "", *([""] * len(METRICS))])
    complete = report.get("coverage", {}).get("complete", True) or report.get("allow_incomplete")
    for name, row in report.get("official_split", {}).items() if complete else ():
        w.writerow(["all", "mean over seeds", name, "", row["n"], *(f"{row[m]:.6f}" for m in METRICS)])
    for name, baseline in report.get("baselines", {}).items():
        w.writerow(["baseline", "mean", name, "", "", *(f"{baseline['summary'][m]:.6f}" for m in METRICS)])
    return buf.getvalue()


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "report") -> list[Path]:
    """report.json, report.md, report.csv, report_predictions.csv (every test utterance), and PNG
    figures when matplotlib is installed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slim = strip_histories(report)
    slim.pop("predictions", None)  # in their own CSV file
    write_json(out_dir / f"{stem}.json", slim)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.csv"]
    write_text(paths[1], to_markdown(report))
    write_text(paths[2], to_csv(report))
    if write_predictions(report, predictions_path(paths[0])):
        paths.append(predictions_path(paths[0]))
    try:
        from .plots import plot_report
    except ImportError:
        return paths
    return paths + plot_report(report, out_dir, stem)


def strip_histories(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-epoch histories (they stay in each fold's history.json)."""
    slim = dict(report)
    slim["seeds"] = {
        seed: {**sr, "folds": {k: {kk: vv for kk, vv in f.items() if kk != "history"} for k, f in sr["folds"].items()}}
        for seed, sr in report["seeds"].items()
    }
    return slim
