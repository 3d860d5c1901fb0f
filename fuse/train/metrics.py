"""Classification and attribute metrics for emotion recognition reports.

WA (weighted accuracy) is plain accuracy; UA (unweighted accuracy) is the mean of the per-class
recalls; macro F1 averages the per-class F1; weighted F1 weights it by class support. Every
average runs over the full class list given (a class absent from a fold counts with recall and
F1 0, and the report says so), which is scikit-learn's ``labels=range(K), zero_division=0``.

Numeric attributes (arousal, valence, dominance) are scored by Lin's concordance correlation
coefficient, CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2) with population
(co)variances, per attribute over the utterances that have a value (NaN = missing), and by
their mean (``ccc``, what selects an attributes model's epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The metrics every report gives, in this order; any of them can select the epoch.
METRICS = ("wa", "ua", "macro_f1", "weighted_f1")
#: The attribute metric that can select the epoch: the mean CCC over the attributes.
ATTRIBUTE_METRIC = "ccc"


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(K, K) counts: rows are the true classes, columns the predicted ones."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels but {p.size} predictions")
    for name, a in (("label", t), ("prediction", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def scores(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict:
    """WA, UA, macro and weighted F1, per-class recall/precision/F1/support, confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    hits = np.diag(cm)
    recall = _safe_divide(hits, support)
    precision = _safe_divide(hits, predicted)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = cm.sum()
    return {
        "n": int(total),
        "wa": float(hits.sum() / total) if total else 0.0,
        "ua": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "per_class": {
            "recall": recall.tolist(),
            "precision": precision.tolist(),
            "f1": f1.tolist(),
            "support": support.astype(int).tolist(),
        },
        "absent_classes": [k for k in range(num_classes) if support[k] == 0],
        "confusion": cm.astype(int).tolist(),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values to average")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def ccc(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient of two equally long series (float64, population
    moments). 1 for identical series, -1 for one mirrored about the other's mean, 0 when the
    prediction is constant; 0 as well when both are constant (no agreement can be measured)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"ccc needs two 1-D series of one length, got {t.shape} and {p.shape}")
    if t.size == 0:
        raise ValueError("ccc of no values")
    mt, mp = t.mean(), p.mean()
    cov = ((t - mt) * (p - mp)).mean()
    den = ((t - mt) ** 2).mean() + ((p - mp) ** 2).mean() + (mt - mp) ** 2
    return float(2.0 * cov / den) if den > 0 else 0.0


def attribute_scores(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict:
    """CCC per attribute and their mean: ``{"ccc": mean, "ccc_<name>": ..., "counts": {name: n},
    "missing": {name: m}}``, each attribute over the utterances whose true value is not NaN
    (``missing`` counts the others). An attribute with fewer than 2 values scores 0."""
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), len(names))
    p = np.asarray(y_pred, dtype=np.float64).reshape(t.shape)
    out: dict = {"counts": {}, "missing": {}}
    per = []
    for j, name in enumerate(names):
        have = ~np.isnan(t[:, j])
        value = ccc(t[have, j], p[have, j]) if have.sum() >= 2 else 0.0
        out[f"ccc_{name}"] = value
        out["counts"][name] = int(have.sum())
        out["missing"][name] = int((~have).sum())
        per.append(value)
    out[ATTRIBUTE_METRIC] = float(np.mean(per)) if per else 0.0
    return out
