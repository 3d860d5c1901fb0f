"""Cross-corpus evaluation (``ksr eval --run RUN --cache OTHER``): a run's models scored on another
corpus's cache.

Every selected checkpoint of the run (each fold's model, of every seed) is tested on ALL the
utterances of the other cache: a model never saw any of them, so there are no folds to hold out.
The report has the shape of a normal one (``ksr.fuse.report.evaluation``): per seed, one row per
fold's model, the mean ± std over those models, the pooled scores, the bootstrap intervals, the
linear-probe baseline scored the same way, plus the ensemble of all the models (mean of their
probabilities) and a ``cross_corpus`` record of which corpus trained and which tested.

The other cache must have been made with the same encoders (name, weights' digest, layer, dims)
and max lengths; its classes must be the run's, or be mapped onto them with ``--class-map``
(``joy=hap,sadness=sad``; ``NAME=-`` leaves that class's utterances out, counted). Anything else
is refused in one line before a model runs.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...cache import Cache, CacheError, check_compatible, open_cache
from ..model.normalise import normalised_view
from ..model.tasks import learns_attributes, learns_classes
from ..train.attributes import true_attributes
from ..train.checkpoint import load_model_and_meta
from ..train.inference import ensemble_outputs, model_outputs
from ..train.metrics import METRICS, mean_std, scores
from ..train.runs import MODEL_CACHE_KEYS, RunError, RunSpec, fold_checkpoint, history_of, load_run, trained_folds
from .attribute_report import attribute_summary_over_seeds, seed_scores
from .evaluation import (
    SELECTION_NOTES,
    coverage,
    evaluate_saved_run,
    model_name,
    summary_over_seeds,
    test_warnings,
)
from .intervals import add_intervals, fold_predictions
from .stats import Bootstrap

#: A class-map target that leaves the class's utterances out.
LEAVE_OUT = "-"
METRIC_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro F1", "weighted_f1": "weighted F1"}


def parse_class_map(text: str | None) -> dict[str, str]:
    """``joy=hap,sadness=sad,fear=-`` -> {"joy": "hap", "sadness": "sad", "fear": "-"}."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for part in text.split(","):
        name, sep, target = (s.strip() for s in part.partition("="))
        if not sep or not name or not target:
            raise RunError(f"--class-map {text!r}: write NAME=CLASS pairs separated by commas (e.g. joy=hap,fear=-)")
        if name in mapping:
            raise RunError(f"--class-map: {name} is mapped twice")
        mapping[name] = target
    return mapping


def label_mapping(tested: tuple[str, ...], trained: tuple[str, ...], class_map: dict[str, str]) -> np.ndarray:
    """For each class of the tested cache, the index of the run's class it counts as (-1: left
    out). A class that is neither one of the run's nor mapped is refused."""
    unknown = [name for name in class_map if name not in tested]
    if unknown:
        raise RunError(f"--class-map: {', '.join(unknown)} is not a class of the tested cache ({', '.join(tested)})")
    bad = [f"{k}={v}" for k, v in class_map.items() if v != LEAVE_OUT and v not in trained]
    if bad:
        raise RunError(
            f"--class-map {', '.join(bad)}: the run's classes are {', '.join(trained)} ({LEAVE_OUT} leaves a class out)"
        )
    targets = [class_map.get(c, c) for c in tested]
    unmatched = [c for c, t in zip(tested, targets, strict=True) if t != LEAVE_OUT and t not in trained]
    if unmatched:
        raise RunError(
            f"the tested cache's class(es) {', '.join(unmatched)} are not the run's ({', '.join(trained)}); map them "
            f"with --class-map NAME=CLASS, or leave them out with NAME={LEAVE_OUT}"
        )
    if all(t == LEAVE_OUT for t in targets):
        raise RunError("--class-map leaves every class of the tested cache out: nothing to score")
    return np.array([-1 if t == LEAVE_OUT else trained.index(t) for t in targets], dtype=np.int64)


def tests_another_corpus(spec: RunSpec, cache_dir: str | None, class_map: str | None, cross: bool) -> bool:
    """Whether ``ksr eval`` scores the run across corpora: asked (``--cross-corpus``, a class
    map), or ``--cache`` holds a corpus of another name than the run's training cache."""
    if cross or class_map:
        return True
    if cache_dir is None or not Path(cache_dir).is_dir():
        return False
    with open_cache(cache_dir, mode="stream", verify=False, progress=False) as cache:
        return cache.meta.corpus != spec.cache_meta.get("corpus")


def evaluate_saved_run_across(
    run_dir: Path,
    cache_dir: str | None,
    class_map: str | None = None,
    cross: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """``ksr eval``: :func:`evaluate_saved_run` (``options``: its folds, device, bootstrap, ...),
    with the run's models tested on all of ``cache_dir`` when it holds another corpus."""
    if not tests_another_corpus(load_run(run_dir), cache_dir, class_map, cross):
        return evaluate_saved_run(run_dir, cache_dir, **options)
    if cache_dir is None:
        raise RunError("--cross-corpus and --class-map test on another corpus: name its cache with --cache")
    evaluate = partial(evaluate_cross_corpus, class_map=parse_class_map(class_map))
    return evaluate_saved_run(run_dir, cache_dir, evaluate=evaluate, **options)


def check_features_fit(spec: RunSpec, cache: Cache, run_dir: Path) -> None:
    """The run's models read the other cache's features only when the encoders and max lengths
    agree (classes are the class map's business)."""
    expected = {k: v for k, v in spec.cache_meta.items() if k in MODEL_CACHE_KEYS and k != "classes"}
    try:
        check_compatible(cache.meta, expected, where=f"cache {cache.root} for run {run_dir}")
    except CacheError as e:
        raise RunError(f"{e}: the run's models read only features made with the same encoders") from None


def evaluate_cross_corpus(
    run_dir: Path,
    cache: Cache,
    spec: RunSpec,
    class_map: dict[str, str] | None = None,
    folds: list[int] | None = None,
    device: torch.device = torch.device("cpu"),
    bootstrap: Bootstrap = Bootstrap(),
) -> dict[str, Any]:
    """The run's models (every trained fold of every seed, or ``folds``) on all of ``cache``."""
    check_features_fit(spec, cache, run_dir)
    if not learns_classes(spec.model):
        raise RunError(
            f"{run_dir} learns attributes only (--task attributes): cross-corpus evaluation scores classes; "
            f"evaluate a run of --task classes or both"
        )
    cache = normalised_view(cache, spec.model)  # speaker_norm: each speaker's own statistics, as in evaluation
    trained = tuple(spec.cache_meta["classes"])
    mapping = label_mapping(tuple(cache.classes), trained, class_map or {})
    mapped = mapping[cache.labels]
    kept = np.flatnonzero(mapped >= 0)
    y = mapped[kept]
    available = trained_folds(run_dir)
    if not available:
        raise RunError(f"{run_dir}: no trained fold (no fold folder with a best.pt); run ksr train first")
    per_seed, predictions, warnings, members, members_by_seed = {}, {}, [], [], {}
    for seed, seed_folds in available.items():
        wanted = [f for f in seed_folds if folds is None or f in folds]
        fold_reports, preds_of = {}, predictions.setdefault(str(seed), {})
        for fold in wanted:
            model, meta = load_model_and_meta(fold_checkpoint(run_dir, seed, fold, protocol=spec.protocol), device)
            out = model_outputs(model, cache, kept, 64, device)
            members.append(out)
            members_by_seed.setdefault(str(seed), {})[str(fold)] = out.attributes
            s = model_scores(out.probs, y, len(trained))
            history = history_of(run_dir, seed, fold, spec.protocol)
            s.update(test_group=f"all of {cache.meta.corpus}", selected_epoch=meta.get("epoch"), history=history)
            s["epochs_done"] = len(history)
            warnings.extend(test_warnings(f"seed {seed} fold {fold}", s, out.probs.argmax(1), list(trained)))
            fold_reports[str(fold)] = s
            preds_of[str(fold)] = fold_predictions([cache.ids[i] for i in kept], y, out.probs.argmax(1))
        if fold_reports:
            per_seed[str(seed)] = seed_summary(fold_reports, y, len(trained))
    if not per_seed:
        raise RunError(f"{run_dir}: none of the folds {folds} is trained")
    report = cross_corpus_report(run_dir, cache, spec, per_seed, warnings, trained)
    report["cross_corpus"] = corpus_record(spec, cache, class_map or {}, mapping, kept)
    report["ensemble"] = {"models": len(members), **model_scores(ensemble_outputs(members).probs, y, len(trained))}
    add_intervals(report, predictions, bootstrap)
    if learns_attributes(spec.model):
        report["cross_corpus_attributes"] = attribute_part(cache, spec, kept, members_by_seed, bootstrap)
    return report


def attribute_part(
    cache: Cache, spec: RunSpec, kept: np.ndarray, values: dict[str, dict[str, np.ndarray]], boot: Bootstrap
) -> dict[str, Any]:
    """The models' CCC on the tested corpus's attributes (when it holds them), per seed and fold
    model, pooled with intervals, and the summary. No ridge baseline: it would be fitted on the
    training cache, which cross-corpus evaluation does not open."""
    names = list(spec.model.attributes)
    missing = [a for a in names if a not in cache.attribute_names]
    if missing:
        return {"names": names, "scored": False, "why": f"the tested cache holds no {', '.join(missing)} values"}
    truth = true_attributes(cache, kept, spec.model)
    seeds = {
        seed: seed_scores({fold: (truth, pred) for fold, pred in folds.items()}, names, boot)
        for seed, folds in values.items()
    }
    return {"names": names, "scored": True, "seeds": seeds, "summary": attribute_summary_over_seeds(seeds, names)}


def model_scores(probs: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, Any]:
    """The report's scores of one set of predictions, and its mean cross-entropy."""
    s = scores(y, probs.argmax(1), num_classes)
    picked = probs[np.arange(len(y)), y] if len(y) else np.ones(0)
    s["test_loss"] = float(-np.log(np.clip(picked, 1e-12, None)).mean()) if len(y) else 0.0
    return s


def seed_summary(fold_reports: dict[str, Any], y: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Mean ± std over one seed's fold models, and their predictions pooled (each model's
    predictions of the same utterances, one after the other)."""
    summary = {m: mean_std([f[m] for f in fold_reports.values()]) for m in METRICS}
    confusion = np.sum([f["confusion"] for f in fold_reports.values()], axis=0)
    y_all = np.concatenate([np.repeat(np.arange(num_classes), confusion.sum(1))])
    p_all = np.concatenate([np.repeat(np.arange(num_classes), row) for row in confusion])
    return {"folds": fold_reports, "mean_std_over_folds": summary, "pooled": scores(y_all, p_all, num_classes)}


def cross_corpus_report(
    run_dir: Path, cache: Cache, spec: RunSpec, per_seed: dict[str, Any], warnings: list[str], classes
) -> dict[str, Any]:
    trained_on = spec.cache_meta.get("corpus", "?")
    first = next(iter(per_seed.values()))
    return {
        "run": str(run_dir),
        "model": model_name(spec.model),
        "protocol": spec.protocol,
        "fold_naming": (
            f"cross-corpus: fold k's model (trained on {trained_on}) tested on all of {cache.meta.corpus}, "
            f"not on a held-out fold"
        ),
        "select": spec.select,
        "selection_metric": spec.metric,
        "note": SELECTION_NOTES[spec.select],
        "classes": list(classes),
        "seeds": per_seed,
        "folds": sorted({int(f) for sr in per_seed.values() for f in sr["folds"]}),
        "coverage": coverage(spec, per_seed, len(first["folds"])),
        "warnings": warnings,
        "summary": summary_over_seeds(per_seed),
        "cache_meta": cache.meta.to_dict(),
    }


def corpus_record(
    spec: RunSpec, cache: Cache, class_map: dict[str, str], mapping: np.ndarray, kept: np.ndarray
) -> dict[str, Any]:
    """Which corpus trained, which tested, and what the class map did."""
    left_out = {c: int((cache.labels == k).sum()) for k, c in enumerate(cache.classes) if mapping[k] < 0}
    return {
        "trained_on": spec.cache_meta.get("corpus", "?"),
        "train_cache": spec.cache_dir,
        "tested_on": cache.meta.corpus,
        "test_cache": str(cache.root),
        "class_map": class_map,
        "tested": int(len(kept)),
        "left_out": left_out,
    }


def cross_corpus_lines(report: dict[str, Any]) -> list[str]:
    """The Markdown lines that say which corpus trained and which tested (none for a normal report)."""
    cc = report.get("cross_corpus")
    if not cc:
        return []
    mapped = ", ".join(f"{k}={v}" for k, v in cc["class_map"].items()) or "none (the same class names)"
    left = ", ".join(f"{c} ({n})" for c, n in cc["left_out"].items()) or "none"
    e = report["ensemble"]
    return cross_corpus_attribute_lines(report.get("cross_corpus_attributes")) + [
        f"**Cross-corpus**: trained on {cc['trained_on']} ({cc['train_cache'] or 'cache not recorded'}), tested on "
        f"{cc['tested_on']} ({cc['test_cache']}): {cc['tested']} utterances; class map: {mapped}; left out: {left}.",
        "",
        f"Ensemble of the {e['models']} models (mean of their probabilities): "
        + ", ".join(f"{METRIC_NAMES.get(m, m)} {100 * e[m]:.2f}%" for m in METRICS)
        + ".",
        "",
    ]


def cross_corpus_attribute_lines(part: dict[str, Any] | None) -> list[str]:
    """The attributes' line of a cross-corpus report: mean CCC and per attribute, mean ± std over
    the fold models (none for a run that learns no attributes)."""
    if not part:
        return []
    if not part["scored"]:
        return [f"Attributes ({', '.join(part['names'])}) not scored: {part['why']}.", ""]
    s = part["summary"]
    cells = [f"mean {s['ccc']:.3f} ± {s['ccc_std_over_folds']:.3f}"] + [
        f"{a} {s['ccc_' + a]:.3f} ± {s['ccc_' + a + '_std_over_folds']:.3f}" for a in part["names"]
    ]
    return [
        "Attributes on the tested corpus, CCC (mean ± std over the fold models; no ridge baseline across "
        "corpora): " + ", ".join(cells) + ".",
        "",
    ]
