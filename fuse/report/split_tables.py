"""Reports under the split protocol (``ksr train --protocol split``): one model per seed,
reported on each test split of the corpus's official split as a fold would be, then each test
split's metrics as mean ± std over seeds. ``evaluation`` and ``render`` call these; the rest of a report
(per-seed tables, confusion matrices, CSV rows, baselines) is the folds' own."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..train.folds import OFFICIAL_SPLIT, Split
from ..train.metrics import METRICS, mean_std
from .intervals import pct


def split_tests(split: Split) -> list[tuple[str, np.ndarray, str]]:
    """(report key, test utterances, what they are) of one fold: the fold itself, or under the
    split protocol each test split (test1, test2, ...)."""
    if split.tests:
        return [(name, idx, f"{OFFICIAL_SPLIT} {name}") for name, idx in split.tests.items()]
    return [(str(split.fold), split.test, split.test_group)]


def official_split_summary(per_seed: dict[str, Any]) -> dict[str, Any]:
    """Under the split protocol: each test split's metrics, mean and std over seeds, and the run's
    summary (all test splits pooled, mean over seeds). A seed has one model, so the only spread is
    over seeds: ``{m}_std_over_folds`` holds it too, for the tables that show one row per run."""
    names = list(next(iter(per_seed.values()))["folds"])
    tests = {}
    for name in names + ["pooled"]:
        runs = [sr["pooled"] if name == "pooled" else sr["folds"][name] for sr in per_seed.values()]
        row: dict[str, Any] = {"n": runs[0]["n"]}
        for m in METRICS:
            row[m], row[f"{m}_std_over_seeds"] = mean_std([r[m] for r in runs])
        tests[name] = row
    pooled = tests["pooled"]
    summary = {m: pooled[m] for m in METRICS}
    summary.update({f"{m}_std_over_folds": pooled[f"{m}_std_over_seeds"] for m in METRICS})
    if len(per_seed) > 1:
        summary.update({f"{m}_std_over_seeds": pooled[f"{m}_std_over_seeds"] for m in METRICS})
    return {"tests": tests, "summary": summary}


def official_split_lines(report: dict[str, Any], hide_mean: bool) -> list[str]:
    """The split protocol's main table: each test split, mean ± std over seeds."""
    lines = [
        f"Each test split of the {OFFICIAL_SPLIT}, mean ± std over {len(report['seeds'])} seed(s):",
        "",
        "| test split | n | WA % | UA % | macro F1 % | weighted F1 % |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["official_split"].items():
        label = "all test splits pooled" if name == "pooled" else name
        values = (
            " | ".join(f"{pct(row[m])} ± {pct(row[m + '_std_over_seeds'])}" for m in METRICS)
            if not hide_mean
            else "not given: unfinished run (--allow-incomplete) | | |"
        )
        lines.append(f"| {label} | {row['n']} | {values} |")
    return lines
