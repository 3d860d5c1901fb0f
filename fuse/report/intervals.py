"""What reports keep of each test utterance, and the bootstrap intervals they give.

A report holds, beside its metrics, every test utterance's id, label and prediction per seed and
fold (``report["predictions"]``, written as ``REPORT_predictions.csv`` beside ``REPORT.json``, not
inside it): ``ksr compare`` pairs runs on them without running a model again. The intervals
themselves are ``ksr.fuse.report.stats``'s; this module only places them in reports.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from ...common import KsrError, atomic_write
from ..train.metrics import METRICS
from .stats import Bootstrap, bootstrap_intervals

#: The predictions file's first columns (all it had before issue 25; readers need only these).
PREDICTION_COLUMNS = ("seed", "fold", "id", "label", "prediction")
#: Then, where the report has them: each test utterance's speaker and session, and a ``p_CLASS``
#: column per class (the model's probabilities).
CONTEXT_COLUMNS = ("speaker", "session")


def fold_predictions(
    ids: list[str],
    labels: np.ndarray,
    preds: np.ndarray,
    probs: np.ndarray | None = None,
    speakers: list[str] | None = None,
    sessions: list[str] | None = None,
) -> dict[str, list]:
    """One test set's predictions; with ``probs`` (N, C), speakers and sessions, what calibration,
    late fusion and per-speaker analysis read from the predictions file."""
    got: dict[str, list] = {"ids": list(ids), "labels": [int(v) for v in labels], "preds": [int(v) for v in preds]}
    if probs is not None and speakers is not None and sessions is not None:
        got.update(probs=[[float(p) for p in row] for row in probs], speakers=list(speakers), sessions=list(sessions))
    return got


def add_intervals(report: dict[str, Any], predictions: dict[str, dict[str, dict]], boot: Bootstrap) -> None:
    """Per fold and pooled (stratified by fold) intervals into ``report``, which keeps the
    predictions they were drawn from."""
    k = len(report["classes"])
    report["predictions"] = predictions
    report["bootstrap"] = boot.describe()
    if boot.resamples < 1:
        return
    for seed, sr in report["seeds"].items():
        labels, preds, strata = [], [], []
        for stratum, (fold, f) in enumerate(sr["folds"].items()):  # a fold, or an official test split
            got = predictions[seed][fold]
            f["ci"] = bootstrap_intervals(got["labels"], got["preds"], [0] * len(got["labels"]), k, boot)
            if f["ci"] and all(low == high for low, high in f["ci"].values()):
                report.setdefault("warnings", []).append(zero_width_warning(seed, fold, len(got["labels"]), boot))
            labels += got["labels"]
            preds += got["preds"]
            strata += [stratum] * len(got["labels"])
        sr["pooled"]["ci"] = bootstrap_intervals(labels, preds, strata, k, boot)


def zero_width_warning(seed: str, fold: str, n: int, boot: Bootstrap) -> str:
    """A fold whose interval is one point (one test utterance, or every resample scoring alike)."""
    where = f"seed {seed} {'fold ' if fold.isdigit() else ''}{fold}"
    return (
        f"{where}: its {round(100 * boot.confidence)}% interval has zero width (every resample of its {n} test "
        "utterance(s) scores the same): it does not show how uncertain the score is"
    )


def fold_key(name: str) -> tuple[int, int | str]:
    """Sort key of a report's fold names: folds ("1", "2", ...) by number, test splits by name."""
    return (0, int(name)) if name.isdigit() else (1, name)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _pct_interval(ci: dict[str, list[float]], m: str) -> str:
    return f"[{100 * ci[m][0]:.2f}, {100 * ci[m][1]:.2f}]" if m in ci else ""


def interval_lines(report: dict[str, Any]) -> list[str]:
    """The Markdown section of a report's intervals (none when it has none)."""
    boot = report.get("bootstrap")
    if not boot or not boot["resamples"]:
        return []
    lines = [
        "",
        f"## {round(100 * boot['confidence'])}% confidence intervals",
        "",
        f"Percentile bootstrap: {boot['resamples']} resamples of the test utterances (with replacement, "
        f"within each fold), seed {boot['seed']}. The interval reflects which utterances were tested, "
        "not retraining.",
        "",
        "| seed | fold | n | WA % | UA % | macro F1 % | weighted F1 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, sr in report["seeds"].items():
        for fold, f in sr["folds"].items():
            ci = f.get("ci", {})
            lines.append(f"| {seed} | {fold} | {f['n']} | " + " | ".join(_pct_interval(ci, m) for m in METRICS) + " |")
        p = sr["pooled"]
        ci = p.get("ci", {})
        lines.append(f"| {seed} | pooled | {p['n']} | " + " | ".join(_pct_interval(ci, m) for m in METRICS) + " |")
    return lines


CI_COLUMNS = tuple(f"{m}_{end}" for m in METRICS for end in ("ci_low", "ci_high"))


def ci_cells(entry: dict[str, Any]) -> list[str]:
    """The CSV cells of ``CI_COLUMNS`` for a fold or pooled entry (empty when it has none)."""
    ci = entry.get("ci", {})
    return [f"{ci[m][i]:.6f}" if m in ci else "" for m in METRICS for i in (0, 1)]


def write_predictions(report: dict[str, Any], path: Path) -> Path | None:
    """One row per seed, fold and test utterance: id, true class, predicted class (names)."""
    if "predictions" not in report:
        return None
    classes = report["classes"]
    buf = io.StringIO()
    w = csv.writer(buf)
    groups = [got for folds in report["predictions"].values() for got in folds.values()]
    full = all("probs" in got for got in groups)  # reports made from an old predictions file lack them
    w.writerow([*PREDICTION_COLUMNS, *((*CONTEXT_COLUMNS, *(f"p_{c}" for c in classes)) if full else ())])
    for seed, folds in report["predictions"].items():
        for fold, got in folds.items():
            for k, (i, y, p) in enumerate(zip(got["ids"], got["labels"], got["preds"], strict=True)):
                extra = [got["speakers"][k], got["sessions"][k], *(f"{v:.6g}" for v in got["probs"][k])] if full else []
                w.writerow([seed, fold, i, classes[y], classes[p], *extra])
    return atomic_write(path, "w", lambda f: f.write(buf.getvalue()))


def read_predictions(path: Path, classes: list[str]) -> dict[str, dict[str, dict]]:
    """``report["predictions"]`` back from ``write_predictions``'s file; a damaged file is refused
    in one line that names it (and the line of the file, where there is one)."""
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, dict[str, dict]] = {}
    seen: set[tuple[str, str, str]] = set()
    again = "write it again with ksr eval"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            header = tuple(rows.fieldnames or ())
            if header[: len(PREDICTION_COLUMNS)] != PREDICTION_COLUMNS:  # later columns are optional
                raise KsrError(f"{path}: not a ksr predictions file (columns {', '.join(PREDICTION_COLUMNS)}, ...)")
            for row in rows:
                where = f"{path}, line {rows.line_num}"
                if None in row or None in row.values():
                    raise KsrError(f"{where}: not {len(header)} fields; {again}")
                if not row["seed"].isdigit() or not row["seed"].isascii():
                    raise KsrError(f"{where}: seed {row['seed']!r} is not a non-negative integer; {again}")
                try:
                    y, p = index[row["label"]], index[row["prediction"]]
                except KeyError as e:
                    raise KsrError(f"{where}: class {e} is not one of the report's classes {classes}") from None
                key = (row["seed"], row["fold"], row["id"])
                if key in seen:  # a copy would count the utterance twice (or with two predictions)
                    raise KsrError(
                        f"{where}: utterance {row['id']!r} of seed {row['seed']} fold {row['fold']} is listed twice; "
                        f"{again}"
                    )
                seen.add(key)
                got = out.setdefault(row["seed"], {}).setdefault(row["fold"], {"ids": [], "labels": [], "preds": []})
                got["ids"].append(row["id"])
                got["labels"].append(y)
                got["preds"].append(p)
    except UnicodeDecodeError as e:
        raise KsrError(f"{path}: not UTF-8 text (byte {e.start}); {again}") from None
    except csv.Error as e:
        raise KsrError(f"{path}: not a readable CSV file ({e}); {again}") from None
    return out
