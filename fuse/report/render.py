"""A report on paper and on disk: Markdown, CSV, and the files ``write_report`` writes."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ...common import write_json, write_text
from ..train.folds import OFFICIAL_SPLIT
from ..train.metrics import METRICS
from ..train.runs import REPORT_STEM, ReportFiles
from .attribute_report import attribute_lines, write_attribute_predictions
from .cross_corpus import cross_corpus_lines
from .intervals import CI_COLUMNS, ci_cells, interval_lines, pct, write_predictions
from .split_tables import official_split_lines


def comparison_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(name, summary) of the model and each baseline attached to its report."""
    return [(report.get("model", "model"), report["summary"])] + [
        (b["model"], b["summary"]) for b in report.get("baselines", {}).values()
    ]


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: what it covers, its warnings, the summary beside the baselines,
    each seed's folds and pooled confusion matrix, the intervals."""
    lines = markdown_heading(report)
    cov = report.get("coverage")
    for warning in report.get("warnings", []):
        lines += [f"**Warning**: {warning}.", ""]
    hide_mean = cov is not None and not cov["complete"] and not report.get("allow_incomplete")
    lines += markdown_summary(report, hide_mean)
    lines += markdown_baselines(report, hide_mean)
    lines += attribute_lines(report, report.get("model", "model"))
    for seed, sr in report["seeds"].items():
        lines += markdown_seed(report, seed, sr)
    lines += interval_lines(report)
    return "\n".join(lines) + "\n"


def markdown_heading(report: dict[str, Any]) -> list[str]:
    """The model, its selection, protocol, classes and what the report covers."""
    lines = [f"# ksr report: {report['run']}", ""]
    if "model" in report:
        lines += [f"Model: {report['model']}.", ""]
    if "loss" in report:  # reports written before ksr named the loss have none
        lines += [f"Training loss: {report['loss']}.", ""]
    if report["select"] == "test":
        lines += [f"**{report['note']}.**", ""]
    else:
        lines += [f"Model selection: {report['note']} (metric: {report['selection_metric']}).", ""]
    lines += [
        f"Protocol: {report['protocol']}; {report['fold_naming']}.",
        f"Classes: {', '.join(report['classes'])}.",
        "",
    ]
    lines += cross_corpus_lines(report)
    cov = report.get("coverage")
    if not cov:
        return lines
    found = "; ".join(f"seed {seed}: folds {', '.join(map(str, folds))}" for seed, folds in cov["folds_found"].items())
    lines += [
        (
            f"Covers seed(s) {', '.join(cov['folds_found'])}: one model per seed on the {OFFICIAL_SPLIT}; "
            f"{cov['epochs_planned']} {cov.get('planned_unit', 'epochs planned')}."
        )
        if report["protocol"] == "split"
        else (
            f"Covers {found} (the protocol has {cov['folds_planned']} folds); "
            f"{cov['epochs_planned']} {cov.get('planned_unit', 'epochs planned')} per fold."
        ),
        "",
    ]
    if not cov["complete"]:
        lines += [
            "**UNFINISHED RUN**: " + "; ".join(cov["unfinished"]) + ". Resume it (ksr train --resume) "
            "before reading its numbers.",
            "",
        ]
    return lines


def single_fold(report: dict[str, Any]) -> str | None:
    """The fold's name when every seed of the report has the same one fold (no std over folds)."""
    names = {tuple(sr["folds"]) for sr in report["seeds"].values()}
    return names.pop()[0] if len(names) == 1 and len(next(iter(names))) == 1 else None


def summary_cells(report: dict[str, Any], summary: dict[str, float]) -> str:
    """Each metric as mean ± std over folds; a single fold has no std over folds to show."""
    if single_fold(report) is not None:
        return " | ".join(pct(summary[m]) for m in METRICS)
    return " | ".join(f"{pct(summary[m])} ± {pct(summary[m + '_std_over_folds'])}" for m in METRICS)


def markdown_summary(report: dict[str, Any], hide_mean: bool) -> list[str]:
    """The mean over folds (each test split under the split protocol), and the std over seeds."""
    s = report["summary"]
    if "official_split" in report:
        return official_split_lines(report, hide_mean)
    fold = single_fold(report)
    name = (
        "mean over folds"
        if fold is None
        else f"fold {fold}" + (" (mean over seeds)" if len(report["seeds"]) > 1 else "")
    )
    mean_row = (
        f"| {name} | {summary_cells(report, s)} |"
        if not hide_mean
        else f"| {name} | not given: unfinished run (--allow-incomplete) | | | |"
    )
    lines = ["| | WA % | UA % | macro F1 % | weighted F1 % |", "|---|---|---|---|---|", mean_row]
    if "wa_std_over_seeds" in s:
        lines.append("| std over seeds | " + " | ".join(pct(s[m + "_std_over_seeds"]) for m in METRICS) + " |")
    return lines


def markdown_baselines(report: dict[str, Any], hide_mean: bool = False) -> list[str]:
    """The model's summary row beside each baseline's (none without baselines); the model's row
    says "not given" where the report withholds its mean."""
    if not report.get("baselines"):
        return []
    over = "all test splits pooled, mean ± std over seeds" if "official_split" in report else "mean ± std over folds"
    lines = [
        "",
        f"Beside its baselines (same cache, folds, seeds and selection; {over}):",
        "",
        "| model | WA % | UA % | macro F1 % | weighted F1 % |",
        "|---|---|---|---|---|",
    ]
    for i, (name, summary) in enumerate(comparison_rows(report)):
        if i == 0 and hide_mean:
            lines.append(f"| {name} | not given: unfinished run (--allow-incomplete) | | | |")
        elif "official_split" in report:
            lines.append(
                f"| {name} | "
                + " | ".join(f"{pct(summary[m])} ± {pct(summary[m + '_std_over_folds'])}" for m in METRICS)
                + " |"
            )
        else:
            lines.append(f"| {name} | {summary_cells(report, summary)} |")
    return lines


def markdown_seed(report: dict[str, Any], seed: str, sr: dict[str, Any]) -> list[str]:
    """One seed: a row per fold (or test split), the pooled row, the pooled confusion matrix."""
    unit = "test split" if "official_split" in report else "fold"
    probe = any("selected_C" in f for f in sr["folds"].values())  # a logistic regression has no epochs
    lines = [
        "",
        f"## seed {seed}",
        "",
        f"| {unit} | test | {'selected C' if probe else 'selected epoch (from 0)'} | n | WA % | UA % | macro F1 % "
        "| weighted F1 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fold, f in sr["folds"].items():
        lines.append(
            f"| {fold} | {f['test_group']} | {f['selected_C'] if probe else f['selected_epoch']} | {f['n']} | "
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
    for name, row in zip(report["classes"], p["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


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


def write_report(report: dict[str, Any], out_dir: Path, stem: str = REPORT_STEM) -> list[Path]:
    """The report's files (``ReportFiles``): JSON, Markdown, CSV, every test utterance's
    prediction, and PNG figures when matplotlib is installed."""
    files = ReportFiles(Path(out_dir), stem)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    slim = strip_histories(report)
    slim.pop("predictions", None)  # in their own CSV file
    slim.pop("attribute_predictions", None)
    write_json(files.json, slim)
    paths = [files.json, files.markdown, files.csv]
    write_text(files.markdown, to_markdown(report))
    write_text(files.csv, to_csv(report))
    if write_predictions(report, files.predictions):
        paths.append(files.predictions)
    if write_attribute_predictions(report, files.attribute_predictions):
        paths.append(files.attribute_predictions)
    try:
        from .plots import plot_report
    except ImportError:
        return paths
    return paths + plot_report(report, files)


def strip_histories(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-epoch histories (they stay in each fold's history.json)."""
    slim = dict(report)
    slim["seeds"] = {
        seed: {**sr, "folds": {k: {kk: vv for kk, vv in f.items() if kk != "history"} for k, f in sr["folds"].items()}}
        for seed, sr in report["seeds"].items()
    }
    return slim


def printed_summary(report: dict[str, Any]) -> list[str]:
    """What ``ksr train`` prints after a run: the report's warnings, then its mean (or why the
    report gives none: never a number the report withholds), then the baselines'."""
    lines = [f"warning: {w}" for w in report.get("warnings", [])]
    where = f"report: {ReportFiles(Path(report['run'])).markdown}"
    cov = report.get("coverage") or {}
    if not cov.get("complete", True) and not report.get("allow_incomplete"):
        unfinished = "; ".join(cov.get("unfinished", []))
        return [*lines, f"no mean: unfinished run ({unfinished}); continue it with ksr train --resume ({where})"]
    s, fold = report["summary"], single_fold(report)
    for name, t in report.get("official_split", {}).items():  # --protocol split: each test split
        if name != "pooled":
            lines.append(f"  {name}: WA {pct(t['wa'])}%  UA {pct(t['ua'])}%  (n = {t['n']}, mean over seeds)")
    if "official_split" in report:
        over = "all test splits pooled, mean over seeds"
    elif fold is not None:
        seeds = list(report["seeds"])
        over = f"fold {fold}, " + (f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over {len(seeds)} seeds")
    else:
        found = max(len(sr["folds"]) for sr in report["seeds"].values())
        planned = cov.get("folds_planned", found)
        over = "mean over folds" if found >= planned else f"mean over {found} of {planned} folds"
    if report.get("task", "classes") != "attributes":  # an attributes-only model's classifier is untrained
        lines.append(f"WA {pct(s['wa'])}%  UA {pct(s['ua'])}%  macro F1 {pct(s['macro_f1'])}%  ({over}; {where})")
    if "loss" in report:  # reports written before ksr named the loss have none
        lines.append(f"  training loss: {report['loss']}")
    if report.get("task", "classes") != "attributes":
        for name, b in report.get("baselines", {}).items():
            b = b["summary"]
            lines.append(
                f"  {name}: WA {pct(b['wa'])}%  UA {pct(b['ua'])}%  macro F1 {pct(b['macro_f1'])}% (same folds)"
            )
    return lines + attribute_summary_lines(report, f"({over}; {where})")


def attribute_summary_lines(report: dict[str, Any], where: str) -> list[str]:
    """The mean CCC of the model and of the ridge baseline, when the model learns attributes."""
    systems = (report.get("attributes") or {}).get("systems")
    if not systems:
        return []
    model = systems["model"]["summary"]["ccc"]
    first = report.get("task") == "attributes"  # then the CCC is the run's headline
    lines = [f"CCC {model:.3f} {where}" if first else f"  CCC {model:.3f} (same folds)"]
    if "ridge" in systems:
        lines.append(f"  ridge: CCC {systems['ridge']['summary']['ccc']:.3f} (same folds)")
    return lines
