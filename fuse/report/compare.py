"""``ksr compare``: is run B better than run A on the same test utterances, or is it noise?

Each run's per-utterance predictions come from its report (``RUN/report_predictions.csv``, written
with ``report.json``), or, when that file is missing or older than a checkpoint, from evaluating
its checkpoints again. Runs must have been evaluated on the same cache (its metadata: corpus,
classes, encoders and their digests, lengths) and test the same utterances in the same folds;
otherwise the comparison is refused in one line that says what differs.

Against the first run, every other run gets: the paired bootstrap difference of each metric (pooled
over folds, averaged over a run's seeds) with its interval and p-value, McNemar's test on the pooled
predictions of each pair of seeds, for runs that both learn the same attributes the paired bootstrap
difference of their CCCs (per attribute and the mean), and, when both runs have several seeds, a t-test over seeds on
each seed's number as its report gives it: the mean over folds, or under the split protocol (test
splits test1, test2, ... instead of folds 1, 2, ...) the metric pooled over the test splits, since a
seed has one model there. Folds add a t-test over seed-fold pairs; test splits do not, as they are
tested by the same model, not independent repetitions.

Runs are compared even when one is unfinished (its report's ``coverage``) or chose its epochs on
the test set (``select`` = ``test``), but the result says so: a ``warnings`` list in the JSON, a
warning line in the Markdown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...cache import open_cache
from ...common import KsrError, resolve_device
from ..train.metrics import METRICS, scores
from ..train.runs import ReportFiles, load_run, newest_checkpoint_time
from .attribute_report import read_attribute_predictions
from .intervals import fold_key, read_predictions
from .stats import EXACT_BELOW, Bootstrap, compare_values, mcnemar, paired_bootstrap, paired_ccc_bootstrap

NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro F1", "weighted_f1": "weighted F1"}


class CompareError(KsrError, ValueError):
    """Runs that cannot be compared (the message names what differs)."""


@dataclass
class RunPredictions:
    """One run's test predictions: {seed: {fold: {"ids", "labels", "preds"}}}, and what its report
    says about it (``coverage``, ``select``: None when the report does not say)."""

    run: str
    classes: list[str]
    cache_meta: dict[str, Any]
    predictions: dict[str, dict[str, dict[str, list]]]
    source: str
    coverage: dict[str, Any] | None = None
    select: str | None = None
    #: A model that learns attributes: {"names", "seeds": {seed: {fold: {"ids", "truth", "pred"}}}}
    attributes: dict[str, Any] | None = None

    @classmethod
    def from_report(cls, report: dict[str, Any], source: str = "report") -> RunPredictions:
        if "predictions" not in report or "cache_meta" not in report:
            raise CompareError(f"{report['run']}: its report holds no per-utterance predictions; run ksr eval on it")
        return cls(
            str(report["run"]),
            list(report["classes"]),
            report["cache_meta"],
            report["predictions"],
            source,
            report.get("coverage"),
            report.get("select"),
            report.get("attribute_predictions"),
        )

    @property
    def seeds(self) -> list[str]:
        return sorted(self.predictions, key=int)


def load_run_predictions(
    run_dir: Path, cache_dir: str | None = None, device: str = "auto", evaluate: bool = False
) -> RunPredictions:
    """The run's predictions from its report, or (``evaluate``, no usable file) its checkpoints."""
    from .evaluation import evaluate_run

    run_dir = Path(run_dir)
    spec = load_run(run_dir)
    files = ReportFiles(run_dir)
    report_json, saved = files.json, files.predictions
    if not evaluate and report_json.is_file() and saved.is_file():
        if newest_checkpoint_time(run_dir) <= saved.stat().st_mtime:
            report = _read_report(report_json)
            report["run"] = str(run_dir)
            report["predictions"] = read_predictions(saved, report["classes"])
            if files.attribute_predictions.is_file():
                report["attribute_predictions"] = read_attribute_predictions(files.attribute_predictions)
            report.setdefault("cache_meta", spec.cache_meta)
            return RunPredictions.from_report(report, source=str(saved))
    source = cache_dir or spec.cache_dir
    if not source or not Path(source).is_dir():
        raise CompareError(f"{run_dir}: no saved predictions and its cache {source!r} is not there; pass --cache")
    dev = resolve_device(device)
    cache = open_cache(source, device=dev if dev.type == "cuda" else "cpu")
    report = evaluate_run(run_dir, cache, spec, device=dev, bootstrap=Bootstrap(resamples=0))
    return RunPredictions.from_report(report, source="checkpoints")


def _read_report(path: Path) -> dict[str, Any]:
    """A report.json, or a one-line refusal naming it."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CompareError(f"{path}: not UTF-8 text (byte {e.start}); write it again with ksr eval") from None
    except json.JSONDecodeError as e:
        raise CompareError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); write it again with ksr eval") from None
    if not isinstance(report, dict) or not isinstance(report.get("classes"), list):
        raise CompareError(f"{path}: not a ksr report (no list of classes); write it again with ksr eval")
    return report


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _test_set(run: RunPredictions) -> dict[str, dict[str, int]]:
    """{fold: {id: label}}, the same for every seed of the run (else refused)."""
    sets = {
        seed: {f: dict(zip(g["ids"], g["labels"], strict=True)) for f, g in folds.items()}
        for seed, folds in run.predictions.items()
    }
    first = sets[run.seeds[0]]
    for seed, got in sets.items():
        if got != first:
            raise CompareError(f"{run.run}: seed {seed} tests other utterances than seed {run.seeds[0]}")
    return first


def check_comparable(runs: list[RunPredictions]) -> dict[str, dict[str, int]]:
    """The common test set, or a one-line refusal naming what differs from the first run."""
    a = runs[0]
    if not a.predictions:
        raise CompareError(f"{a.run}: no test predictions")
    tests_a = _test_set(a)
    for b in runs[1:]:
        if not b.predictions:
            raise CompareError(f"{b.run}: no test predictions")
        fa, fb = _flat(a.cache_meta), _flat(b.cache_meta)
        differs = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        if differs:
            raise CompareError(
                f"{b.run} was evaluated on another cache than {a.run} ({', '.join(differs)} "
                f"{'differs' if len(differs) == 1 else 'differ'}); compare runs on the same cache"
            )
        tests_b = _test_set(b)
        if sorted(tests_a, key=fold_key) != sorted(tests_b, key=fold_key):
            raise CompareError(
                f"{b.run} tests folds {', '.join(sorted(tests_b, key=fold_key))} but {a.run} folds "
                f"{', '.join(sorted(tests_a, key=fold_key))}; compare runs on the same folds"
            )
        for fold in tests_a:
            if tests_a[fold] != tests_b[fold]:
                if set(tests_a[fold]) == set(tests_b[fold]):
                    raise CompareError(
                        f"{b.run} and {a.run} give other labels to the same utterances of fold {fold}; "
                        "compare runs on the same cache"
                    )
                only_a, only_b = set(tests_a[fold]) - set(tests_b[fold]), set(tests_b[fold]) - set(tests_a[fold])
                raise CompareError(
                    f"{b.run} tests other utterances than {a.run} in fold {fold} ({len(only_a)} only in the "
                    f"first, {len(only_b)} only in the second); compare runs with the same protocol and cache"
                )
    return tests_a


def _aligned(run: RunPredictions, order: list[tuple[str, str]]) -> np.ndarray:
    """(seeds, n) predictions in the common utterance order."""
    rows = []
    for seed in run.seeds:
        lookup = {
            (fold, i): p for fold, g in run.predictions[seed].items() for i, p in zip(g["ids"], g["preds"], strict=True)
        }
        rows.append([lookup[key] for key in order])
    return np.asarray(rows, dtype=np.int64)


def _fold_means(run: RunPredictions, k: int) -> dict[str, dict[str, dict[str, float]]]:
    """{seed: {fold: {metric: value}}} as reports compute them."""
    return {
        seed: {f: {m: scores(g["labels"], g["preds"], k)[m] for m in METRICS} for f, g in run.predictions[seed].items()}
        for seed in run.seeds
    }


def _seed_values(run: RunPredictions, k: int, split: bool) -> dict[str, dict[str, float]]:
    """{seed: {metric: value}}: each seed's number as its report gives it, the mean over folds, or
    under the split protocol the metric pooled over the test splits (scored on their predictions
    together, as ``fuse.report.split_tables`` does)."""
    out = {}
    for seed in run.seeds:
        groups = run.predictions[seed].values()
        if split:
            got = scores([y for g in groups for y in g["labels"]], [p for g in groups for p in g["preds"]], k)
            out[seed] = {m: float(got[m]) for m in METRICS}
        else:
            per_fold = [scores(g["labels"], g["preds"], k) for g in groups]
            out[seed] = {m: float(np.mean([f[m] for f in per_fold])) for m in METRICS}
    return out


def is_split(folds: list[str]) -> bool:
    """Test splits (test1, test2, ...: ``--protocol split``) rather than folds (1, 2, ...)."""
    return any(not f.isdigit() for f in folds)


def run_warnings(runs: list[RunPredictions]) -> list[str]:
    """What makes a comparison of these runs unreliable though it is made: unfinished runs, epochs
    chosen on the test set."""
    out = []
    for r in runs:
        cov = r.coverage or {}
        if cov.get("complete") is False:
            left = "; ".join(cov.get("unfinished") or []) or "some fold stopped early"
            out.append(f"{r.run} is an unfinished run ({left}): its numbers are not final")
        if r.select == "test":
            out.append(
                f"{r.run} selected its epochs on the test set (--select test): its numbers are optimistic "
                "and the comparison is biased in its favour"
            )
    return out


def _seed_pairs(a: RunPredictions, b: RunPredictions) -> tuple[list[tuple[str, str]], bool]:
    """Seed pairs for McNemar, in sorted order: seed s with seed s when the runs have the same seeds."""
    return list(zip(a.seeds, b.seeds, strict=False)), a.seeds == b.seeds  # unequal seeds: pairs in order


def compare_runs(runs: list[RunPredictions], boot: Bootstrap = Bootstrap()) -> dict[str, Any]:
    """Every run after the first against the first (see the module's docstring)."""
    if len(runs) < 2:
        raise CompareError("compare needs at least two runs")
    tests = check_comparable(runs)
    k = len(runs[0].classes)
    folds = sorted(tests, key=fold_key)
    order = [(f, i) for f in folds for i in tests[f]]
    y = np.asarray([tests[f][i] for f, i in order])
    strata = np.asarray([folds.index(f) for f, _ in order])
    split = is_split(folds)
    a = runs[0]
    preds_a, folds_a, seeds_a = _aligned(a, order), _fold_means(a, k), _seed_values(a, k, split)
    comparisons = []
    for b in runs[1:]:
        preds_b, folds_b, seeds_b = _aligned(b, order), _fold_means(b, k), _seed_values(b, k, split)
        pairs, same_seeds = _seed_pairs(a, b)
        entry: dict[str, Any] = {
            "run": b.run,
            "source": b.source,
            "seeds": [int(s) for s in b.seeds],
            "metrics": paired_bootstrap(y, preds_a, preds_b, strata, k, boot),
            "mcnemar": [
                {
                    "seed_a": int(sa),
                    "seed_b": int(sb),
                    **mcnemar(preds_a[a.seeds.index(sa)] == y, preds_b[b.seeds.index(sb)] == y),
                }
                for sa, sb in pairs
            ],
            "seeds_paired": same_seeds,
        }
        if len(a.seeds) > 1 and len(b.seeds) > 1:
            entry["over_seeds"] = {
                m: compare_values([seeds_a[s][m] for s in a.seeds], [seeds_b[s][m] for s in b.seeds], paired=same_seeds)
                for m in METRICS
            }
            if same_seeds and not split:
                entry["over_seed_folds"] = {
                    m: compare_values(
                        [folds_a[s][f][m] for s in a.seeds for f in folds],
                        [folds_b[s][f][m] for s in b.seeds for f in folds],
                        paired=True,
                    )
                    for m in METRICS
                }
        if a.attributes and b.attributes:
            entry["attributes"] = compare_attributes(a, b, order, strata, boot)
        comparisons.append(entry)
    return {
        "reference": a.run,
        "reference_source": a.source,
        "reference_seeds": [int(s) for s in a.seeds],
        "classes": a.classes,
        "corpus": a.cache_meta.get("corpus"),
        "utterances": int(y.size),
        "folds": [int(f) if f.isdigit() else f for f in folds],
        "protocol": "split" if split else "folds",
        "seed_value": (
            "each seed's metric pooled over the test splits, as split reports give it"
            if split
            else "each seed's mean over folds, as reports give it"
        ),
        "warnings": run_warnings(runs),
        "bootstrap": {
            **boot.describe(),
            "statistic": f"each metric pooled over the {'test splits' if split else 'folds'}, averaged over a run's "
            "seeds; differences are B - A",
            "p_value": "(1 + #{|d*_r - d| >= |d|}) / (R + 1), two-sided",
        },
        "mcnemar_rule": f"exact binomial below {EXACT_BELOW} discordant utterances, else chi-square with continuity correction",
        "comparisons": comparisons,
    }


def _aligned_attributes(run: RunPredictions, order: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(n, A) true values and (seeds, n, A) predictions of a run's attributes in the common order."""
    truth, preds = None, []
    for seed in run.seeds:
        got = run.attributes["seeds"][seed]
        where = {(fold, uid): (g, i) for fold, g in got.items() for i, uid in enumerate(g["ids"])}
        try:
            rows = [where[key] for key in order]
        except KeyError as e:
            raise CompareError(f"{run.run}: seed {seed} has no attribute prediction for {e}") from None
        preds.append(np.array([g["pred"][i] for g, i in rows], dtype=np.float64))
        truth = np.array([g["truth"][i] for g, i in rows], dtype=np.float64)
    return truth, np.stack(preds)


def compare_attributes(
    a: RunPredictions, b: RunPredictions, order: list[tuple[str, str]], strata: np.ndarray, boot: Bootstrap
) -> dict[str, Any]:
    """B minus A on the attributes' CCC (per attribute and the mean ``ccc``): paired bootstrap on
    the same resamples, each run's CCC averaged over its seeds."""
    if a.attributes["names"] != b.attributes["names"]:
        raise CompareError(
            f"{b.run} predicts the attributes {b.attributes['names']}, {a.run} {a.attributes['names']}; "
            "compare runs that learn the same attributes"
        )
    truth, preds_a = _aligned_attributes(a, order)
    truth_b, preds_b = _aligned_attributes(b, order)
    if not np.array_equal(truth, truth_b, equal_nan=True):
        raise CompareError(f"{b.run} and {a.run} give other attribute values to the same utterances; same cache?")
    return {
        "names": list(a.attributes["names"]),
        **paired_ccc_bootstrap(truth, preds_a, preds_b, strata, a.attributes["names"], boot),
    }


def attribute_compare_lines(result: dict[str, Any]) -> list[str]:
    """The CCC table of ``compare_markdown`` (only for runs that both learn attributes)."""
    rows = [c for c in result["comparisons"] if "attributes" in c]
    if not rows:
        return []
    resamples = result["bootstrap"]["resamples"]
    lines = [
        "",
        "Attributes: CCC (concordance correlation) on the test utterances pooled over the folds, averaged over a "
        "run's seeds; B - A with the paired bootstrap's 95% interval and p:",
        "",
        "| run B | attribute | A | B | B - A | 95% CI | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        att = c["attributes"]
        for key in ["ccc", *(f"ccc_{n}" for n in att["names"])]:
            r = att[key]
            lo, hi = r["interval"]
            name = "mean CCC" if key == "ccc" else key.removeprefix("ccc_")
            lines.append(
                f"| `{c['run']}` | {name} | {r['a']:.3f} | {r['b']:.3f} | {r['difference']:+.3f} | "
                f"[{lo:+.3f}, {hi:+.3f}] | {_p_boot(r['p'], resamples)} |"
            )
    return lines


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _p(p: float | None) -> str:
    return "" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _p_boot(p: float, resamples: int) -> str:
    """A bootstrap p-value; its smallest value, 1 / (R + 1), means no resample was as far."""
    return f"<= {_p(p)}" if p <= 1 / (resamples + 1) else _p(p)


def compare_markdown(result: dict[str, Any]) -> str:
    boot = result["bootstrap"]
    seeds_a = ", ".join(map(str, result["reference_seeds"]))
    split = result.get("protocol") == "split"
    unit = "test split" if split else "fold"
    lines = ["# ksr compare", ""]
    for warning in result.get("warnings", []):
        lines += [f"**Warning**: {warning}.", ""]
    lines += [
        f"Reference A: `{result['reference']}` (seeds {seeds_a}). {result['utterances']} test utterances of "
        f"corpus {result['corpus']} in {unit}s {', '.join(map(str, result['folds']))}, the same for every run.",
        "",
        f"Differences are B - A in percentage points, on each metric pooled over the {unit}s and averaged over a "
        f"run's seeds. {round(100 * boot['confidence'])}% intervals and p-values: paired bootstrap, "
        f"{boot['resamples']} resamples of the test utterances within each {unit} (seed {boot['seed']}), "
        f"p = {boot['p_value']}.",
        "",
        "| run B | seeds | metric | A % | B % | B - A (points) | 95% CI | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        seeds = ", ".join(map(str, c["seeds"]))
        for m in METRICS:
            r = c["metrics"][m]
            lo, hi = r["interval"]
            lines.append(
                f"| `{c['run']}` | {seeds} | {NAMES[m]} | {100 * r['a']:.2f} | {100 * r['b']:.2f} | {_pts(r['difference'])} "
                f"| [{_pts(lo)}, {_pts(hi)}] | {_p_boot(r['p'], boot['resamples'])} |"
            )
    lines += [
        "",
        f"McNemar's test on the pooled predictions (right or wrong on each utterance; {result['mcnemar_rule']}):",
        "",
        "| run B | seed A / B | A right, B wrong | A wrong, B right | test | p |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        for t in c["mcnemar"]:
            stat = f" (chi2 = {t['statistic']:.2f})" if t["statistic"] is not None else ""
            lines.append(
                f"| `{c['run']}` | {t['seed_a']} / {t['seed_b']} | {t['b']} | {t['c']} | {t['method']}{stat} | {_p(t['p'])} |"
            )
    lines += attribute_compare_lines(result)
    over = [c for c in result["comparisons"] if "over_seeds" in c]
    if over:
        lines += [
            "",
            (
                "Over seeds (each seed's metric pooled over the test splits, as split reports give it; no seed-fold "
                "pairs: a seed's test splits are tested by one model):"
                if split
                else "Over seeds (each seed's mean over folds, as reports give it; seed-fold pairs when the runs "
                "share their seeds):"
            ),
            "",
            "| run B | metric | mean B - A over seeds (points) | test | p |"
            + ("" if split else " mean B - A over seed-fold pairs | p |"),
            "|---|---|---|---|---|" + ("" if split else "---|---|"),
        ]
        for c in over:
            for m in METRICS:
                s = c["over_seeds"][m]
                sf = (c.get("over_seed_folds") or {}).get(m)
                row = f"| `{c['run']}` | {NAMES[m]} | {_pts(s['mean_difference'])} | {s['test']}, n = {s['n']} | {_p(s['p'])} |"
                if not split:
                    row += f" {_pts(sf['mean_difference'])} (n = {sf['n']}) | {_p(sf['p'])} |" if sf else " | |"
                lines.append(row)
    return "\n".join(lines) + "\n"


# --- ablation sweeps: every row against the first ----------------------------------------------


def against_first(reports: list[dict[str, Any]], boot: Bootstrap = Bootstrap()) -> dict[str, Any]:
    """``compare_runs`` of the sweep's reports (in memory, with their predictions) against the first;
    a sweep whose rows cannot be paired gets the reason instead."""
    if len(reports) < 2:
        return {"comparisons": []}
    try:
        result = compare_runs([RunPredictions.from_report(r) for r in reports], boot)
    except CompareError as e:
        return {"comparisons": [], "refused": str(e)}
    return result


def ablation_comparison_lines(summary: dict[str, Any]) -> list[str]:
    """The Markdown table of an ablation's rows against its first row."""
    cmp = summary.get("comparison") or {}
    rows = [r for r in summary["rows"] if "vs_first" in r]
    if cmp.get("refused"):
        return ["", f"No comparison against the first row: {cmp['refused']}."]
    if not rows:
        return []
    boot = cmp["bootstrap"]
    first = summary["rows"][0]["value"]
    lines = [
        "",
        f"Against the first row ({summary['label']} = {first}): B - A in points on the metrics pooled over folds "
        f"and averaged over seeds, with the paired bootstrap's {round(100 * boot['confidence'])}% interval and p "
        f"({boot['resamples']} resamples within folds, seed {boot['seed']}); McNemar on the pooled predictions of "
        "the first seed pair.",
        "",
        f"| {summary['label']} | " + " | ".join(f"{NAMES[m]} B - A [95% CI] | p" for m in METRICS) + " | McNemar p |",
        "|---" * (2 * len(METRICS) + 2) + "|",
    ]
    for r in rows:
        cells = []
        for m in METRICS:
            d = r["vs_first"]["metrics"][m]
            lo, hi = d["interval"]
            cells += [f"{_pts(d['difference'])} [{_pts(lo)}, {_pts(hi)}]", _p_boot(d["p"], boot["resamples"])]
        mc = r["vs_first"]["mcnemar"][0]
        lines.append(f"| {r['value']} | " + " | ".join(cells) + f" | {_p(mc['p'])} ({mc['method']}) |")
    return lines


def ablation_csv_cells(row: dict[str, Any]) -> list[str]:
    """``ABLATION_CSV_COLUMNS`` of one row (empty for the first row)."""
    got = row.get("vs_first")
    if not got:
        return [""] * len(ABLATION_CSV_COLUMNS)
    out = []
    for m in METRICS:
        d = got["metrics"][m]
        out += [f"{d['difference']:.6f}", f"{d['interval'][0]:.6f}", f"{d['interval'][1]:.6f}", f"{d['p']:.6f}"]
    return out + [f"{got['mcnemar'][0]['p']:.6f}"]


ABLATION_CSV_COLUMNS = tuple(
    f"{m}_{end}" for m in METRICS for end in ("diff_vs_first", "diff_ci_low", "diff_ci_high", "diff_p")
) + ("mcnemar_p",)
