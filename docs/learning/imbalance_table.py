"""The imbalance study's table (docs/learning.md, "Imbalanced classes") from its runs' report.json.

python docs/learning/imbalance_table.py WORK     (WORK: the folder study_imbalance.sh filled)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

VARIANTS = ("plain", "weighted", "focal", "balanced", "weighted-focal")
RAREST = "sad"


def seed_scores(report: dict) -> dict[str, list[float]]:
    """Per seed: macro-F1, UA and the rarest class's recall on the (one) test split."""
    rare = report["classes"].index(RAREST)
    tests = [s["folds"]["test"] for s in report["seeds"].values()]
    return {
        "macro_f1": [t["macro_f1"] for t in tests],
        "ua": [t["ua"] for t in tests],
        "rare": [t["per_class"]["recall"][rare] for t in tests],
    }


def cell(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"  # sample std, as ksr reports


def main(work: Path) -> None:
    reports = {v: json.loads((work / "runs" / f"imb-{v}" / "report.json").read_text()) for v in VARIANTS}
    probes = {}
    for name, sub in (("probe", "baseline-probe"), ("weighted probe", "baseline-probe-weighted")):
        found = [work / "runs" / f"imb-{v}" / sub / "report.json" for v in VARIANTS]
        probes[name] = seed_scores(json.loads(next(p for p in found if p.is_file()).read_text()))
    seeds = ", ".join(reports["plain"]["seeds"])
    print(f"seeds {seeds}; mean ± sample std over seeds; % on the balanced test set (128 utterances)\n")
    print("| training | loss | macro-F1 | UA | sad recall | probe macro-F1 / UA | class-weighted probe macro-F1 / UA |")
    print("|---|---|---|---|---|---|---|")
    p, w = probes["probe"], probes["weighted probe"]
    for v, r in reports.items():
        s = seed_scores(r)
        print(
            f"| {v} | {r['loss']} | {cell(s['macro_f1'])} | {cell(s['ua'])} | {cell(s['rare'])} | "
            f"{cell(p['macro_f1'])} / {cell(p['ua'])} | {cell(w['macro_f1'])} / {cell(w['ua'])} |"
        )
    for v, r in reports.items():
        print(v, "per seed macro-F1:", [round(100 * x, 1) for x in seed_scores(r)["macro_f1"]])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
