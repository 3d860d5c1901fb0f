"""Statistics for reports and comparisons: bootstrap intervals, paired bootstrap, McNemar, tests
over seeds. numpy and scipy only; no run, cache or report is known here.

The bootstrap resamples test utterances with replacement *within each stratum* (a fold: each
resample keeps every fold's size, as the protocol does) and recomputes the metrics of
``fuse.train.metrics`` on every resample, all resamples at once (one bincount of confusion cells).
Intervals are percentile intervals. A paired bootstrap draws the same utterances for both
predictions, so what the runs share (the utterances, their difficulty) cancels in the difference.

Classes in a resample. ``fuse.train.metrics.scores`` averages UA and macro F1 over every class of the
report; a class with no test utterance counts 0 there. The bootstrap keeps that definition for
the classes the resampled test set lacks (they count 0 in every resample, as in the estimate),
but a class the test set has and a resample happens to miss (a rare class: 3 of 93 utterances are
all missed about once in 20 resamples) has no recall in that resample, not a recall of 0: it is
left out of that resample's UA and macro F1 average. Counting it 0 would pull the interval far
below the estimate (perfect predictions would get a UA interval down to 75% with 4 classes).
On the identity resample both definitions agree, so the point estimate is ``scores``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..train.metrics import METRICS

DEFAULT_RESAMPLES = 1000
#: The bootstrap's default seed; reports record the one they used.
DEFAULT_SEED = 20220523
CONFIDENCE = 0.95
#: McNemar is exact (binomial) below this many discordant utterances, chi-square above.
EXACT_BELOW = 25


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: how many resamples (0: no intervals), which seed, which level."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    confidence: float = CONFIDENCE

    def describe(self) -> dict:
        return {
            "resamples": self.resamples,
            "seed": self.seed,
            "confidence": self.confidence,
            "method": "percentile bootstrap; test utterances resampled with replacement within each fold",
        }


def resample_indices(strata: Sequence[int] | np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indexes into the n utterances: each stratum (in order of first appearance)
    is redrawn from its own members, so every resample has each stratum's size."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, strata.size), dtype=np.int32 if strata.size < 2**31 else np.int64)
    _, first = np.unique(strata, return_index=True)
    for value in strata[np.sort(first)]:
        members = np.flatnonzero(strata == value)
        out[:, members] = members[rng.integers(0, members.size, size=(resamples, members.size))]
    return out


#: Resamples whose confusion cells are counted at once (bounds memory on large test sets).
CHUNK = 256


def confusions(y_true: np.ndarray, y_pred: np.ndarray, index: np.ndarray, num_classes: int) -> np.ndarray:
    """(R, K, K) confusion matrices of the R resamples ``index`` (R, n) of (y_true, y_pred)."""
    k2 = num_classes * num_classes
    codes = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    out = np.empty((index.shape[0], num_classes, num_classes), dtype=np.int64)
    for start in range(0, index.shape[0], CHUNK):
        part = index[start : start + CHUNK]
        cells = codes[part] + np.arange(part.shape[0], dtype=np.int64)[:, None] * k2  # one bincount per chunk
        out[start : start + part.shape[0]] = np.bincount(cells.ravel(), minlength=part.shape[0] * k2).reshape(
            part.shape[0], num_classes, num_classes
        )
    return out


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def metrics_of_confusions(cm: np.ndarray, tested: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """WA, UA, macro and weighted F1 of (R, K, K) confusion matrices, as ``fuse.train.metrics.scores``
    defines them (0 where a ratio is undefined). ``tested`` (K,): the classes the test set that
    was resampled has; one of them absent from a resample's true labels is left out of that
    resample's UA and macro F1 (see the module's docstring). Without it every class counts."""
    cm = cm.astype(np.float64)
    hits = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    total = support.sum(axis=1)
    recall, precision = _divide(hits, support), _divide(hits, predicted)
    f1 = _divide(2 * precision * recall, precision + recall)
    counted = np.ones_like(support, dtype=bool) if tested is None else (support > 0) | ~np.asarray(tested, bool)
    classes = counted.sum(axis=1)
    return {
        "wa": _divide(hits.sum(axis=1), total),
        "ua": _divide((recall * counted).sum(axis=1), classes),
        "macro_f1": _divide((f1 * counted).sum(axis=1), classes),
        "weighted_f1": _divide((f1 * support).sum(axis=1), total),
    }


def resampled_metrics(
    y_true: np.ndarray, preds: np.ndarray, index: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Each metric on each resample (R,); ``preds`` may be (S, n), one row per seed: the metric is
    then the mean over seeds of each seed's metric (as reports average seeds). The classes of
    ``y_true`` are the test set's: one a resample misses is left out of its UA and macro F1."""
    preds = np.atleast_2d(preds)
    tested = np.bincount(np.asarray(y_true, np.int64), minlength=num_classes)[:num_classes] > 0
    per_seed = [metrics_of_confusions(confusions(y_true, p, index, num_classes), tested) for p in preds]
    return {m: np.mean([s[m] for s in per_seed], axis=0) for m in METRICS}


def point_metrics(y_true: np.ndarray, preds: np.ndarray, num_classes: int) -> dict[str, float]:
    """The metrics on the utterances as they are (the identity resample)."""
    identity = np.arange(np.asarray(y_true).size)[None, :]
    return {m: float(v[0]) for m, v in resampled_metrics(y_true, preds, identity, num_classes).items()}


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return [float(lo), float(hi)]


def bootstrap_intervals(
    y_true: Sequence[int],
    preds: Sequence[int] | np.ndarray,
    strata: Sequence[int] | np.ndarray,
    num_classes: int,
    boot: Bootstrap = Bootstrap(),
) -> dict[str, list[float]]:
    """{metric: [low, high]}: the ``boot.confidence`` percentile interval of each metric."""
    y = np.asarray(y_true)
    if y.size == 0 or boot.resamples < 1:
        return {}
    index = resample_indices(strata, boot.resamples, boot.seed)
    values = resampled_metrics(y, np.asarray(preds), index, num_classes)
    return {m: percentile_interval(v, boot.confidence) for m, v in values.items()}


def paired_bootstrap(
    y_true: Sequence[int],
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    strata: Sequence[int] | np.ndarray,
    num_classes: int,
    boot: Bootstrap = Bootstrap(),
) -> dict[str, dict[str, float | list[float]]]:
    """For each metric, B minus A: the difference, its percentile interval, and a two-sided
    p-value for "no difference".

    Both are scored on the same resamples. The p-value is the share of resampled differences at
    least as far from the observed one as the observed one is from 0 (the bootstrap distribution
    shifted to the null): p = (1 + #{|d*_r - d| >= |d|}) / (R + 1)."""
    y = np.asarray(y_true)
    index = resample_indices(strata, boot.resamples, boot.seed)
    got_a = resampled_metrics(y, np.asarray(preds_a), index, num_classes)
    got_b = resampled_metrics(y, np.asarray(preds_b), index, num_classes)
    point_a, point_b = point_metrics(y, preds_a, num_classes), point_metrics(y, preds_b, num_classes)
    out = {}
    for m in METRICS:
        d = point_b[m] - point_a[m]
        resampled = got_b[m] - got_a[m]
        far = int(np.count_nonzero(np.abs(resampled - d) >= abs(d)))
        out[m] = {
            "a": point_a[m],
            "b": point_b[m],
            "difference": d,
            "interval": percentile_interval(resampled, boot.confidence),
            "p": (1 + far) / (boot.resamples + 1),
        }
    return out


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """McNemar's test of "A and B are right equally often" on paired utterances.

    b: A right and B wrong; c: A wrong and B right. Below ``EXACT_BELOW`` discordant utterances
    the exact two-sided binomial test (b ~ Bin(b + c, 1/2)); from there on, the chi-square test with
    continuity correction, (|b - c| - 1)^2 / (b + c), one degree of freedom."""
    from scipy import stats

    a, bb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != bb.shape:
        raise ValueError(f"{a.size} and {bb.size} predictions: McNemar needs the same utterances")
    b, c = int(np.count_nonzero(a & ~bb)), int(np.count_nonzero(~a & bb))
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "method": "no discordant utterances", "statistic": None, "p": 1.0}
    if n < EXACT_BELOW:
        p = min(1.0, 2 * float(stats.binom.cdf(min(b, c), n, 0.5)))
        return {"b": b, "c": c, "method": "exact binomial", "statistic": None, "p": p}
    chi2 = (abs(b - c) - 1) ** 2 / n
    return {
        "b": b,
        "c": c,
        "method": "chi-square with continuity correction",
        "statistic": float(chi2),
        "p": float(stats.chi2.sf(chi2, 1)),
    }


def compare_values(a: Sequence[float], b: Sequence[float], paired: bool) -> dict | None:
    """B minus A over repeated runs (seeds, or seed-fold pairs): mean difference and a two-sided
    t-test, paired when the runs pair up (same seeds), Welch's otherwise. None below 2 values."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2 or (paired and a.size != b.size):
        return None
    if paired:
        d = b - a
        test = "paired t-test"
        p = float(stats.ttest_rel(b, a).pvalue) if np.any(d != d[0]) else (1.0 if d[0] == 0 else 0.0)
        return {"test": test, "n": int(d.size), "mean_difference": float(d.mean()), "std": float(d.std(ddof=1)), "p": p}
    p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    return {
        "test": "Welch t-test (unpaired: the runs have different seeds)",
        "n": int(min(a.size, b.size)),
        "mean_difference": float(b.mean() - a.mean()),
        "std": None,
        "p": p if np.isfinite(p) else 1.0,
    }


def resampled_ccc(truth: np.ndarray, pred: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(R, A + 1): each resample's CCC per attribute (NaN truth left out, as ``metrics.ccc`` over
    the rest; 0 below 2 values or with no spread) and, last, their mean. ``index`` (R, n) from
    :func:`resample_indices`; ``truth`` and ``pred`` (n, A)."""
    out = np.zeros((len(index), truth.shape[1] + 1))
    for lo in range(0, len(index), CHUNK):
        ix = index[lo : lo + CHUNK]
        for j in range(truth.shape[1]):
            t, p = truth[ix, j], pred[ix, j]
            have = ~np.isnan(t)
            n = have.sum(axis=1)
            safe = np.maximum(n, 1)
            mt = np.where(have, t, 0).sum(axis=1) / safe
            mp = np.where(have, p, 0).sum(axis=1) / safe
            dt, dp = np.where(have, t - mt[:, None], 0), np.where(have, p - mp[:, None], 0)
            den = (dt**2).sum(axis=1) / safe + (dp**2).sum(axis=1) / safe + (mt - mp) ** 2
            cov = (dt * dp).sum(axis=1) / safe
            ok = (n >= 2) & (den > 0)
            out[lo : lo + CHUNK, j] = np.where(ok, 2 * cov / np.where(ok, den, 1), 0.0)
    out[:, -1] = out[:, :-1].mean(axis=1) if truth.shape[1] else 0.0
    return out


def ccc_keys(names: Sequence[str]) -> list[str]:
    """The attribute scores' keys in ``resampled_ccc``'s column order: ``ccc_<name>``..., ``ccc``."""
    return [f"ccc_{n}" for n in names] + ["ccc"]


def ccc_intervals(
    truth: np.ndarray, pred: np.ndarray, strata: Sequence[int], names: Sequence[str], boot: Bootstrap = Bootstrap()
) -> dict[str, list[float]]:
    """{``ccc_<name>`` and ``ccc``: [low, high]}: percentile intervals of the attribute CCCs,
    utterances resampled within each stratum (fold)."""
    if len(truth) == 0 or boot.resamples < 1:
        return {}
    values = resampled_ccc(
        np.asarray(truth, np.float64), np.asarray(pred, np.float64), resample_indices(strata, boot.resamples, boot.seed)
    )
    return {k: percentile_interval(values[:, i], boot.confidence) for i, k in enumerate(ccc_keys(names))}


def paired_ccc_bootstrap(
    truth: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    strata: Sequence[int],
    names: Sequence[str],
    boot: Bootstrap = Bootstrap(),
) -> dict[str, dict[str, float | list[float]]]:
    """:func:`paired_bootstrap` for the attribute CCCs (B minus A on the same resamples), per
    attribute and for their mean (``ccc``). ``pred_a``/``pred_b``: (n, A), or (seeds, n, A), each
    statistic then averaged over the run's seeds."""
    truth = np.asarray(truth, np.float64)
    index = resample_indices(strata, boot.resamples, boot.seed)
    identity = np.arange(len(truth))[None, :]

    def over_seeds(pred: np.ndarray, ix: np.ndarray) -> np.ndarray:
        pred = np.asarray(pred, np.float64)
        runs = pred if pred.ndim == 3 else pred[None]
        return np.mean([resampled_ccc(truth, p, ix) for p in runs], axis=0)

    got_a, got_b = over_seeds(pred_a, index), over_seeds(pred_b, index)
    point_a, point_b = over_seeds(pred_a, identity)[0], over_seeds(pred_b, identity)[0]
    out = {}
    for i, key in enumerate(ccc_keys(names)):
        d = point_b[i] - point_a[i]
        resampled = got_b[:, i] - got_a[:, i]
        far = int(np.count_nonzero(np.abs(resampled - d) >= abs(d)))
        out[key] = {
            "a": float(point_a[i]),
            "b": float(point_b[i]),
            "difference": float(d),
            "interval": percentile_interval(resampled, boot.confidence),
            "p": (1 + far) / (boot.resamples + 1),
        }
    return out
