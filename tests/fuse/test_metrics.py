"""Metrics against scikit-learn on constructed predictions."""

from __future__ import annotations

import numpy as np
import pytest

from ksr.fuse.train.metrics import confusion_matrix, mean_std, scores

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def sklearn_scores(t, p, k):
    labels = list(range(k))
    return {
        "wa": sklearn_metrics.accuracy_score(t, p),
        "ua": sklearn_metrics.recall_score(t, p, labels=labels, average="macro", zero_division=0),
        "macro_f1": sklearn_metrics.f1_score(t, p, labels=labels, average="macro", zero_division=0),
        "weighted_f1": sklearn_metrics.f1_score(t, p, labels=labels, average="weighted", zero_division=0),
    }


@pytest.mark.parametrize("seed", range(6))
def test_scores_match_sklearn_on_imbalanced_predictions(seed):
    rng = np.random.default_rng(seed)
    k = 4
    t = rng.choice(k, size=300, p=[0.2, 0.3, 0.4, 0.1])
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, k, 300))
    got = scores(t, p, k)
    want = sklearn_scores(t, p, k)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["confusion"] == sklearn_metrics.confusion_matrix(t, p, labels=list(range(k))).tolist()


def test_constructed_case_by_hand():
    # class 0: 3 of 4 right; class 1: 1 of 2; class 2: 0 of 1; class 3 never occurs but is predicted once
    t = [0, 0, 0, 0, 1, 1, 2]
    p = [0, 0, 0, 1, 1, 3, 0]
    s = scores(t, p, 4)
    assert s["wa"] == pytest.approx(4 / 7)
    assert s["ua"] == pytest.approx((3 / 4 + 1 / 2 + 0 + 0) / 4)
    assert s["absent_classes"] == [3]
    assert s["confusion"][0] == [3, 1, 0, 0] and s["confusion"][1] == [0, 1, 0, 1]
    for name, value in sklearn_scores(t, p, 4).items():
        assert s[name] == pytest.approx(value), name


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        confusion_matrix([0, 1, 2], [0, 1], 3)
    with pytest.raises(ValueError, match=r"prediction outside 0\.\.2"):
        confusion_matrix([0, 1], [0, 3], 3)


def test_mean_std():
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([0.6, 0.7, 0.8])
    assert m == pytest.approx(0.7) and s == pytest.approx(0.1)
