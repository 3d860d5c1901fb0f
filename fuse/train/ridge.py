"""The attribute baseline: ridge regression on the linear probe's pooled features.

Every attribute score stands beside it, on the same cache, folds and seeds: the features are the
probe's (``probe.pooled_features``: [mean, std] of each modality's true frames and tokens),
standardised with the training utterances' statistics; one scikit-learn ``Ridge`` per attribute
is fitted on the training utterances that have a value, for each strength in
:data:`RIDGE_ALPHA_GRID`, and the strength whose predictions score the best mean CCC on the
selection set (the run's: validation, or test under ``--select test``) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...cache import Cache
from ..model.baselines import PoolingProbe
from ..model.config import ModelConfig
from .attributes import true_attributes
from .metrics import ATTRIBUTE_METRIC, attribute_scores
from .probe import pooled_features

#: Regularisation strengths the ridge baseline tries; the selection set picks one.
RIDGE_ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


@dataclass
class RidgeFit:
    """One fold's fitted baseline: the chosen strength, its selection score, and the fits."""

    alpha: float
    selection_ccc: float
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (A, width)
    intercept: np.ndarray  # (A,)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, A) attribute values for the pooled ``features`` (N, width)."""
        return ((features - self.mean) / self.scale) @ self.coef.T + self.intercept


def ridge_features(cache: Cache, cfg: ModelConfig) -> np.ndarray:
    """The probe's pooled features (N, width) of every cache utterance, in cache order."""
    probe = PoolingProbe(cfg.replace(architecture="probe", task="classes", attributes=()))
    return pooled_features(probe, cache, np.arange(len(cache)))


def _fit(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import Ridge

    coef, intercept = np.zeros((y.shape[1], z.shape[1])), np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        have = ~np.isnan(y[:, j])
        if have.sum() >= 2:
            fitted = Ridge(alpha=alpha).fit(z[have], y[have, j])
            coef[j], intercept[j] = fitted.coef_, fitted.intercept_
        elif have.any():
            intercept[j] = y[have, j].mean()
    return coef, intercept


def fit_ridge(
    features: np.ndarray, cache: Cache, train: np.ndarray, selection: np.ndarray, cfg: ModelConfig
) -> RidgeFit:
    """The baseline of one fold: fitted on ``train``, its strength chosen on ``selection``
    (utterance numbers; ``features`` from :func:`ridge_features`)."""
    x = features[train]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    y = true_attributes(cache, train, cfg)
    truth = true_attributes(cache, selection, cfg)
    best: RidgeFit | None = None
    for alpha in RIDGE_ALPHA_GRID:
        coef, intercept = _fit(z, y, alpha)
        fit = RidgeFit(alpha, 0.0, mean, scale, coef, intercept)
        fit.selection_ccc = attribute_scores(truth, fit.predict(features[selection]), cfg.attributes)[ATTRIBUTE_METRIC]
        if best is None or fit.selection_ccc > best.selection_ccc:
            best = fit
    return best
