"""The attribute part of a report: CCC per attribute and their mean, with bootstrap intervals,
for the model and, on the same folds and seeds, the ridge-regression baseline.

``report["attributes"]`` holds, for each system (``model``, ``ridge``): per seed, each fold's
scores (``metrics.attribute_scores``) and the pooled scores with their intervals (utterances
resampled within each fold); and the summary over folds and seeds (mean, std over folds, std
over seeds with several seeds). Missing values (NaN) are left out of every score and counted.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from ...cache import Cache
from ...common import KsrError, atomic_write
from ..model.tasks import learns_attributes, learns_classes
from ..train.attributes import true_attributes
from ..train.metrics import ATTRIBUTE_METRIC, attribute_scores, mean_std
from ..train.ridge import RIDGE_ALPHA_GRID, fit_ridge, ridge_features
from ..train.runs import RunSpec, cache_split
from .stats import Bootstrap, ccc_intervals, ccc_keys

SYSTEMS = {"model": "the model", "ridge": "ridge regression on the linear probe's pooled features"}


def add_attribute_report(
    report: dict[str, Any], predictions: dict[str, dict[str, dict]], cache: Cache, spec: RunSpec, boot: Bootstrap
) -> None:
    """Score the model's attribute predictions (``predictions[seed][fold]["attributes"]``, set by
    the evaluation) and fit and score the ridge baseline on the same folds, into ``report``."""
    cfg = spec.model
    if not learns_attributes(cfg):
        return
    if not learns_classes(cfg):
        report.setdefault("warnings", []).append(
            "the model learns the attributes only (--task attributes): its class scores below come from a "
            "classifier that was never trained; read the attribute section"
        )
    names = list(cfg.attributes)
    features = ridge_features(cache, cfg)
    where = {uid: i for i, uid in enumerate(cache.ids)}
    fits: dict[tuple[str, int], Any] = {}
    systems: dict[str, dict[str, Any]] = {"model": {}, "ridge": {}}
    alphas: dict[str, dict[str, float]] = {}
    kept: dict[str, dict[str, dict[str, list]]] = {}  # per seed and fold: ids, true and predicted values
    for seed, folds in predictions.items():
        got: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"model": {}, "ridge": {}}
        for fold, p in folds.items():
            idx = np.array([where[i] for i in p["ids"]], dtype=np.int64)
            truth = true_attributes(cache, idx, cfg)
            split = cache_split(cache, spec, int(fold) if fold.isdigit() else 1, int(seed))
            key = (seed, split.fold)
            if key not in fits:
                selection = split.test if spec.select == "test" else split.valid
                fits[key] = fit_ridge(features, cache, split.train, selection, cfg)
            alphas.setdefault(seed, {})[fold] = fits[key].alpha
            got["model"][fold] = (truth, np.asarray(p["attributes"], np.float64))
            got["ridge"][fold] = (truth, fits[key].predict(features[idx]))
            kept.setdefault(seed, {})[fold] = {"ids": list(p["ids"]), "truth": truth, "pred": got["model"][fold][1]}
        for system, per_fold in got.items():
            systems[system][seed] = seed_scores(per_fold, names, boot)
    report["attributes"] = {
        "names": names,
        "systems": {s: {"seeds": v, "summary": attribute_summary_over_seeds(v, names)} for s, v in systems.items()},
        "ridge": {"alpha_grid": list(RIDGE_ALPHA_GRID), "alphas": alphas, "features": SYSTEMS["ridge"]},
    }
    report["attribute_predictions"] = {"names": names, "seeds": kept}  # written to its own CSV file


def seed_scores(per_fold: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], boot: Bootstrap) -> dict:
    """One seed's attribute scores per fold, their mean ± std over folds, and pooled with intervals."""
    folds = {fold: attribute_scores(t, p, names) for fold, (t, p) in per_fold.items()}
    truth = np.concatenate([t for t, _ in per_fold.values()])
    pred = np.concatenate([p for _, p in per_fold.values()])
    strata = np.concatenate([[k] * len(t) for k, (t, _) in enumerate(per_fold.values())])
    pooled = attribute_scores(truth, pred, names)
    pooled["ci"] = ccc_intervals(truth, pred, strata, names, boot)
    over = {k: mean_std([f[k] for f in folds.values()]) for k in ccc_keys(names)}
    return {"folds": folds, "mean_std_over_folds": over, "pooled": pooled}


def attribute_summary_over_seeds(per_seed: dict[str, dict], names: list[str]) -> dict[str, float]:
    """Each CCC's mean over folds averaged over seeds, its std over folds likewise, and with
    several seeds the std of the seeds' means."""
    out: dict[str, float] = {}
    for k in ccc_keys(names):
        means = [s["mean_std_over_folds"][k][0] for s in per_seed.values()]
        out[k] = float(np.mean(means))
        out[f"{k}_std_over_folds"] = float(np.mean([s["mean_std_over_folds"][k][1] for s in per_seed.values()]))
        if len(means) > 1:
            out[f"{k}_std_over_seeds"] = mean_std(means)[1]
    return out


def _cell(summary: dict[str, float], k: str) -> str:
    spread = summary.get(f"{k}_std_over_seeds", summary[f"{k}_std_over_folds"])
    return f"{summary[k]:.3f} ± {spread:.3f}"


def attribute_lines(report: dict[str, Any], model_name: str = "model") -> list[str]:
    """The report's attribute section in Markdown: the summary of the model beside the ridge
    baseline, then each seed's pooled CCCs with their intervals."""
    a = report.get("attributes")
    if not a:
        return []
    names, keys = a["names"], ccc_keys(a["names"])
    lines = [
        "## Attributes (CCC)",
        "",
        f"Concordance correlation per attribute and their mean ({ATTRIBUTE_METRIC}); mean over folds ± std "
        f"(over seeds when there are several, else over folds). Baseline: {a['ridge']['features']}, "
        f"strength chosen on the selection set from {a['ridge']['alpha_grid']}, same folds and seeds.",
        "",
        "| system | mean CCC | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    labels = {"model": model_name, "ridge": "ridge (probe features)"}
    cov = report.get("coverage") or {}
    hidden = not cov.get("complete", True) and not report.get("allow_incomplete")  # as the class means
    for system, entry in a["systems"].items():
        s = entry["summary"]
        if system == "model" and hidden:
            lines.append(f"| {labels[system]} | not given: unfinished run (--allow-incomplete) |" + " |" * len(names))
            continue
        lines.append(f"| {labels[system]} | {_cell(s, 'ccc')} | " + " | ".join(_cell(s, k) for k in keys[:-1]) + " |")
    lines += ["", "Pooled test utterances per seed, 95% bootstrap intervals:", ""]
    lines += ["| system | seed | n | mean CCC | " + " | ".join(names) + " |", "|---" * (len(names) + 4) + "|"]
    for system, entry in a["systems"].items():
        for seed, sr in entry["seeds"].items():
            p = sr["pooled"]
            cells = [_interval(p, k) for k in [keys[-1], *keys[:-1]]]
            n = max(p["counts"].values()) if p["counts"] else 0
            lines.append(f"| {labels[system]} | {seed} | {n} | " + " | ".join(cells) + " |")
    missing = {k: v for k, v in next(iter(a["systems"]["model"]["seeds"].values()))["pooled"]["missing"].items() if v}
    if missing:
        lines += ["", "Left out (no value): " + ", ".join(f"{k} {v}" for k, v in missing.items()) + " test utterances."]
    return lines + [""]


def _interval(p: dict[str, Any], k: str) -> str:
    ci = p.get("ci", {}).get(k)
    return f"{p[k]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{p[k]:.3f}"


def write_attribute_predictions(report: dict[str, Any], path: Path) -> Path | None:
    """One row per seed, fold and test utterance: id, then each attribute's true and predicted
    value (``<name>``, ``<name>_predicted``; an empty cell for a missing true value)."""
    got = report.get("attribute_predictions")
    if not got:
        return None
    names = got["names"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["seed", "fold", "id", *(c for n in names for c in (n, f"{n}_predicted"))])
    for seed, folds in got["seeds"].items():
        for fold, p in folds.items():
            for i, uid in enumerate(p["ids"]):
                cells = [
                    (
                        "" if math.isnan(p["truth"][i][j]) else repr(float(p["truth"][i][j])),
                        repr(float(p["pred"][i][j])),
                    )
                    for j in range(len(names))
                ]
                w.writerow([seed, fold, uid, *(c for pair in cells for c in pair)])
    return atomic_write(path, "w", lambda f: f.write(buf.getvalue()))


def read_attribute_predictions(path: Path) -> dict[str, Any]:
    """``report["attribute_predictions"]`` back from :func:`write_attribute_predictions`'s file;
    a damaged file is refused in one line naming it."""
    again = "write it again with ksr eval"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, [])
            if header[:3] != ["seed", "fold", "id"] or len(header) < 5 or len(header) % 2 == 0:
                raise KsrError(f"{path}: not a ksr attribute predictions file; {again}")
            names = header[3::2]
            seeds: dict[str, dict[str, dict[str, list]]] = {}
            for line, row in enumerate(rows, start=2):
                if len(row) != len(header):
                    raise KsrError(f"{path}, line {line}: not {len(header)} fields; {again}")
                got = seeds.setdefault(row[0], {}).setdefault(row[1], {"ids": [], "truth": [], "pred": []})
                got["ids"].append(row[2])
                got["truth"].append([float(v) if v else math.nan for v in row[3::2]])
                got["pred"].append([float(v) for v in row[4::2]])
    except (ValueError, UnicodeDecodeError, csv.Error) as e:
        raise KsrError(f"{path}: not a readable attribute predictions file ({e}); {again}") from None
    for folds in seeds.values():
        for p in folds.values():
            p["truth"], p["pred"] = np.asarray(p["truth"]), np.asarray(p["pred"])
    return {"names": names, "seeds": seeds}
