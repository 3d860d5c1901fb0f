"""Evaluation: a run's checkpoints scored on their test utterances, per fold, over folds (mean, std,
pooled) and over seeds, beside its baselines. ``render`` writes the report this module builds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...cache import Cache, open_cache
from ...common import resolve_device
from ..model.normalise import normalised_view
from ..train.chance import StallWatch, below_chance, below_chance_message
from ..train.checkpoint import load_model_and_meta
from ..train.folds import OFFICIAL_SPLIT, public_fold_name
from ..train.inference import infer
from ..train.losses import describe_loss, is_class_weighted
from ..train.metrics import METRICS, mean_std, scores
from ..train.probe import PROBE_C_GRID
from ..train.runs import (
    RunError,
    RunSpec,
    baseline_dir,
    cache_split,
    check_recorded_split,
    check_run_matches_cache,
    fold_checkpoint,
    fold_files,
    history_of,
    load_run,
    num_folds,
    run_file,
    trained_folds,
    weighted_baseline_dir,
)
from .attribute_report import add_attribute_report
from .intervals import add_intervals, fold_predictions
from .split_tables import official_split_summary, split_tests
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
    """A run's report: every trained fold (or ``folds``) of every seed scored on its test
    utterances, with the means over folds and seeds, coverage, warnings and intervals."""
    check_run_matches_cache(spec, cache, run_dir)
    cache = normalised_view(cache, spec.model)  # speaker_norm: each speaker's own statistics
    available = trained_folds(run_dir)
    if not available:
        raise RunError(f"{run_dir}: no trained fold (no fold folder with a best.pt); run ksr train first")
    per_seed: dict[str, Any] = {}
    predictions: dict[str, dict[str, dict]] = {}  # per seed and fold: the test utterances' predictions
    warnings: list[str] = []
    for seed, seed_folds in available.items():
        missing = [] if folds is None else [f for f in folds if f not in seed_folds]
        if missing:
            raise RunError(f"{run_dir}: fold(s) {missing} of seed {seed} are not trained (trained: {seed_folds})")
        wanted = seed_folds if folds is None else [f for f in folds if f in seed_folds]
        per_seed[str(seed)] = evaluate_seed(
            run_dir, cache, spec, seed, wanted, device, batch_size, predictions.setdefault(str(seed), {}), warnings
        )
    official = official_split_summary(per_seed) if spec.protocol == "split" else None
    report = {
        "run": str(run_dir),
        "model": model_name(spec.model, spec.recipe.loss),
        "loss": describe_loss(spec.recipe.loss, spec.recipe.focal_gamma, spec.recipe.sampler),
        "protocol": spec.protocol,
        "fold_naming": fold_naming(spec),
        "select": spec.select,
        "task": spec.model.task,  # an attributes-only model's class scores mean nothing
        "selection_metric": spec.metric,
        "note": selection_note(spec),
        "classes": list(cache.classes),
        "seeds": per_seed,
        "folds": sorted({int(f) for f in sum(available.values(), []) if folds is None or f in folds}),
        "coverage": coverage(spec, per_seed, num_folds(cache, spec.protocol)),
        "warnings": warnings,
        "summary": official["summary"] if official else summary_over_seeds(per_seed),
        **({"official_split": official["tests"]} if official else {}),
        "cache_meta": cache.meta.to_dict(),  # what the predictions were made on (ksr compare checks it)
    }
    add_intervals(report, predictions, bootstrap)
    add_attribute_report(report, predictions, cache, spec, bootstrap)  # task attributes/both only
    return report


def evaluate_seed(
    run_dir: Path,
    cache: Cache,
    spec: RunSpec,
    seed: int,
    folds: list[int],
    device: torch.device,
    batch_size: int,
    predictions: dict[str, dict],
    warnings: list[str],
) -> dict[str, Any]:
    """One seed's folds scored on their test utterances (their predictions into ``predictions``,
    what a reader must know into ``warnings``), their mean ± std and the pooled scores."""
    fold_reports, y_all, p_all = {}, [], []
    for fold in folds:
        split = cache_split(cache, spec, fold, seed)
        check_recorded_split(fold_files(run_dir, seed, fold, spec.protocol).root, split, cache.ids)
        model, meta = load_model_and_meta(fold_checkpoint(run_dir, seed, fold, protocol=spec.protocol), device)
        history = history_of(run_dir, seed, fold, spec.protocol)
        unseen = sorted(set(range(len(cache.classes))) - set(np.unique(cache.labels[split.train]).tolist()))
        if unseen:  # the model cannot predict what it never saw: its recall there is a given 0
            where = OFFICIAL_SPLIT if split.tests else f"fold {fold}"
            named = ", ".join(cache.classes[c] for c in unseen)
            warnings.append(f"seed {seed} {where}: no training utterance of {named}: the model cannot have learnt it")
        # The split protocol's one model is reported on each test split as a fold would be.
        for name, test, group in split_tests(split):
            result = infer(model, cache, test, batch_size, device)
            y = cache.labels[test]
            s = scores(y, result.preds, len(cache.classes))
            s.update(test_group=group, selected_epoch=meta.get("epoch"), test_loss=result.loss, history=history)
            if spec.model.architecture == "probe" and meta.get("epoch") is not None:  # its "epochs" are Cs
                s["selected_C"] = PROBE_C_GRID[int(meta["epoch"])]
            if spec.protocol == "session":
                s["public_fold_name"] = public_fold_name(fold_index_session(split.test_group))
            s["epochs_done"] = len(history)
            where = f"seed {seed} {'fold ' if not split.tests else ''}{name}"
            warnings.extend(test_warnings(where, s, result.preds, list(cache.classes)))
            warnings.extend(history_warnings(where, history, cache.labels[split.train], spec))
            fold_reports[name] = s
            predictions[name] = fold_predictions(
                [cache.ids[i] for i in test],
                y,
                result.preds,
                result.probs,
                [str(cache.speakers[i]) for i in test],
                [str(cache.sessions[i]) for i in test],
            )
            predictions[name]["attributes"] = result.attributes  # None unless the model learns attributes
            y_all.append(y)
            p_all.append(result.preds)
    summary = {m: mean_std([f[m] for f in fold_reports.values()]) for m in METRICS}
    pooled = scores(np.concatenate(y_all), np.concatenate(p_all), len(cache.classes))
    return {"folds": fold_reports, "mean_std_over_folds": summary, "pooled": pooled}


def test_warnings(where: str, s: dict[str, Any], preds: np.ndarray, classes: list[str]) -> list[str]:
    """What a reader of one test set's scores ``s`` must know: classes it lacks, a collapsed model."""
    found = []
    if s["absent_classes"]:
        missing = ", ".join(classes[c] for c in s["absent_classes"])
        found.append(
            f"{where}: no test utterance of {missing}: UA and macro F1 average over all {len(classes)} classes "
            f"and count {missing} as 0"
        )
    if below_chance(s["ua"], len(classes)):
        found.append(below_chance_message(where, s["ua"], len(classes)))
    if len(preds) and len(np.unique(preds)) == 1:
        found.append(
            f"{where}: every test utterance was predicted as {classes[int(preds[0])]}: the model collapsed to one class"
        )
    return found


def history_warnings(where: str, history: list[dict], train_labels: np.ndarray, spec: RunSpec) -> list[str]:
    """The fold's training loss still at chance at its last epoch (what training said, kept)."""
    if spec.model.architecture == "probe" or not history or "train_loss" not in history[-1]:
        return []
    said = StallWatch(where, train_labels, spec.recipe, spec.model).check(
        history[-1]["epoch"], history[-1]["train_loss"]
    )
    return [said] if said else []


def fold_test_warning(
    run_dir: Path, cache: Cache, spec: RunSpec, fold: int, seed: int, device: torch.device
) -> str | None:
    """Said at the end of a fold: its kept model's test UA, when below chance (None otherwise)."""
    split = cache_split(cache, spec, fold, seed)
    cache = normalised_view(cache, spec.model)
    model, _ = load_model_and_meta(fold_checkpoint(run_dir, seed, fold, protocol=spec.protocol), device)
    result = infer(model, cache, split.test, 64, device)
    ua = scores(cache.labels[split.test], result.preds, len(cache.classes))["ua"]
    where = f"seed {seed} " + ("official split" if spec.protocol == "split" else f"fold {fold} ({split.test_group})")
    return below_chance_message(where, ua, len(cache.classes)) if below_chance(ua, len(cache.classes)) else None


def summary_over_seeds(per_seed: dict[str, Any]) -> dict[str, float]:
    """Each metric's mean over folds, averaged over seeds; the std over folds likewise; and with
    several seeds the std of the seeds' means."""
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
    return summary


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
        "planned_unit": "regularisation strengths (C) tried"
        if spec.model.architecture == "probe"
        else "epochs planned",
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
    evaluate=evaluate_run,
) -> dict[str, Any]:
    """``ksr eval``: the run's report on ``cache_dir`` (default: the cache it was trained on).
    ``evaluate``: what scores a run (and its baseline) on the cache, :func:`evaluate_run` or
    ``ksr.fuse.report.cross_corpus``'s."""
    spec = load_run(run_dir)
    if folds and spec.protocol == "split":
        raise RunError(f"{run_dir} was trained on the official split (one fold): --fold does not apply")
    source = cache_dir or spec.cache_dir
    if not source or not Path(source).is_dir():
        raise RunError(f"the run's cache {source!r} is not there; pass --cache")
    dev = resolve_device(device)
    cache = open_cache(source, device=dev if dev.type == "cuda" else "cpu")
    report = evaluate(run_dir, cache, spec, folds=folds, device=dev, bootstrap=bootstrap)
    report["allow_incomplete"] = allow_incomplete
    for name, probe_dir in (
        ("linear probe", baseline_dir(run_dir)),
        ("class-weighted linear probe", weighted_baseline_dir(run_dir)),
    ):
        if run_file(probe_dir).is_file() and trained_folds(probe_dir):
            attach_baseline(
                report,
                name,
                evaluate(probe_dir, cache, load_run(probe_dir), folds=folds, device=dev, bootstrap=bootstrap),
            )
    return report


SELECTION_NOTES = {
    "test": TEST_SELECTION_NOTE,
    "valid": "model selected on a validation set drawn from the training sessions only",
    "last": "the last epoch of each fold kept (no selection)",
}


SPLIT_SELECTION_NOTE = "model selected on the official valid split"
HELD_OUT_SPEAKER_NOTE = "model selected on a training speaker held out whole (--validation speaker)"
SHARED_SPEAKERS_NOTE = (
    "; that set shares its speakers with training, so it cannot see a speaker shift (--validation speaker can)"
)


def selection_note(spec: RunSpec) -> str:
    """What the report says about how each fold's model was chosen."""
    if spec.protocol == "split" and spec.select == "valid":
        return SPLIT_SELECTION_NOTE
    if spec.select == "valid" and spec.protocol == "session":
        return (
            HELD_OUT_SPEAKER_NOTE if spec.validation == "speaker" else SELECTION_NOTES["valid"] + SHARED_SPEAKERS_NOTE
        )
    return SELECTION_NOTES[spec.select]


def model_name(cfg, loss: str = "ce") -> str:
    """How reports name a model: its architecture, and the modalities unless both (a probe fitted
    with class weights is the class-weighted linear probe)."""
    names = {"ks-transformer": "KS-Transformer", "head": "head baseline", "probe": "linear probe"}
    name = names.get(cfg.architecture, cfg.architecture)
    if cfg.architecture == "probe" and is_class_weighted(loss):
        name = "class-weighted " + name
    return name if cfg.modalities == "both" else f"{name}, {cfg.modalities} only"


def attach_baseline(report: dict[str, Any], name: str, baseline: dict[str, Any]) -> None:
    """Put a baseline's summary (same cache, folds, seeds, selection) into ``report``."""
    report.setdefault("baselines", {})[name] = {
        "run": os.path.relpath(baseline["run"], report["run"]),  # the reports move with their run folder
        "model": baseline.get("model", name),
        "summary": baseline["summary"],
    }


def fold_index_session(test_group: str) -> int:
    return int(test_group.split()[-1])
