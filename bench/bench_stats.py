"""fuse.report.stats on an IEMOCAP-sized prediction set: 5,531 test utterances in 5 folds (the 4-class
sessions' sizes), 1,000 bootstrap resamples, as a report and ``ksr compare`` draw them.

Goal (issue 16): the intervals must not slow a report down. Measured: one pooled interval (all
four metrics), a report's intervals per seed (5 folds + pooled), and a paired comparison of two
runs with 1 and 3 seeds; wall and CPU seconds, the best of 3.
"""

from __future__ import annotations

import time

import numpy as np

from ksr.fuse.report.compare import RunPredictions, compare_runs
from ksr.fuse.report.intervals import add_intervals
from ksr.fuse.report.stats import Bootstrap, bootstrap_intervals

SESSIONS = [1085, 1023, 1151, 1031, 1241]  # IEMOCAP's 4-class utterances per session (5,531)


def _best(fn, repeats: int = 3) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def _report(name: str, seeds: list[int], y: np.ndarray, folds: np.ndarray, rng) -> dict:
    ids = np.asarray([f"u{i:05d}" for i in range(y.size)])
    report = {"run": name, "classes": ["ang", "hap", "neu", "sad"], "seeds": {}, "cache_meta": {}, "predictions": {}}
    for s in seeds:
        p = np.where(rng.random(y.size) < 0.7, y, rng.integers(0, 4, y.size))
        report["predictions"][str(s)] = {
            str(f): {"ids": ids[folds == f].tolist(), "labels": y[folds == f].tolist(), "preds": p[folds == f].tolist()}
            for f in range(1, 6)
        }
        report["seeds"][str(s)] = {"folds": {str(f): {} for f in range(1, 6)}, "pooled": {}}
    return report


def run(quick: bool = False) -> str:
    rng = np.random.default_rng(0)
    y = rng.choice(4, size=sum(SESSIONS), p=[0.2, 0.3, 0.31, 0.19])
    folds = np.repeat(np.arange(1, 6), SESSIONS)
    p = np.where(rng.random(y.size) < 0.7, y, rng.integers(0, 4, y.size))
    boot = Bootstrap()
    rows = [("one pooled interval (4 metrics)", _best(lambda: bootstrap_intervals(y, p, folds, 4, boot)))]
    for seeds in ([1], [1, 2, 3]):
        a, b = _report("a", seeds, y, folds, rng), _report("b", seeds, y, folds, rng)
        rows.append(
            (f"a report's intervals, {len(seeds)} seed(s)", _best(lambda a=a: add_intervals(a, a["predictions"], boot)))
        )
        pair = [RunPredictions.from_report(a), RunPredictions.from_report(b)]
        rows.append(
            (f"ksr compare of two runs, {len(seeds)} seed(s) each", _best(lambda pair=pair: compare_runs(pair, boot)))
        )
    lines = [
        "## bootstrap intervals and comparisons (fuse.report.stats)",
        "",
        f"{y.size} utterances in 5 folds, {boot.resamples} resamples; best of 3.",
        "",
        "| what | wall s | CPU s |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {wall:.2f} | {cpu:.2f} |" for what, (wall, cpu) in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
