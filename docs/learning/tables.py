"""Markdown tables from the study's logs (log_*.jsonl): every logged run, model UA beside the probe.

python tables.py [LOG...]   (default: every log_*.jsonl here)
Columns: UA with the epoch selected on validation UA (ksr's rule) mean ± std over folds (± std over
seeds when there are several seeds), the last epoch's test UA, the probe on the same splits, final
training accuracy (mean over folds), and the seconds the runs took (wall; CPU where logged)."""
import glob, json, sys
from collections import OrderedDict
import numpy as np
import harness as H

files = sys.argv[1:] or sorted(glob.glob(str(H.HERE / "log_*.jsonl")))
groups = OrderedDict()
for f in files:
    for l in open(f):
        r = json.loads(l)
        groups.setdefault((f.split("/")[-1], r["label"]), []).append(r)
print("| log | run | model UA % (valid-selected) | last-epoch UA % | probe UA % | train acc | seeds x folds | wall s (cpu s) |")
print("|---|---|---|---|---|---|---|---|")
for (f, label), runs in groups.items():
    rows = [x for r in runs for x in r["rows"]]
    prows = [x for r in runs for x in r["probe"]]
    m, p = H.summarise(rows, "ua"), H.summarise(prows, "ua")
    last = H.summarise(rows, "last_ua")
    seeds = sorted({x["seed"] for x in rows})
    def f_(s):
        t = f"{100 * s['mean']:.1f} ± {100 * s['std_folds']:.1f}"
        return t + (f" (± {100 * s['std_seeds']:.1f} seeds)" if len(seeds) > 1 else "")
    cpu = sum(x.get("cpu_seconds", 0) for x in rows)
    acc = np.mean([x["final_train_acc"] for x in rows])
    print(f"| {f} | {label} | {f_(m)} | {f_(last)} | {f_(p) if prows else '-'} | {acc:.2f} | {len(seeds)} x {len(rows) // len(seeds)} | "
          f"{sum(x['seconds'] for x in rows):.0f}" + (f" ({cpu:.0f})" if cpu else "") + " |")
