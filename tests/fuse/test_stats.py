"""fuse.stats against slow references written from the formulas (loops over resamples, utterances
and classes), McNemar against hand computations, and the behaviour intervals must have."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ksr.fuse.report.stats import (
    Bootstrap,
    bootstrap_intervals,
    compare_values,
    mcnemar,
    paired_bootstrap,
    resample_indices,
    resampled_metrics,
)
from ksr.fuse.train.metrics import METRICS

K = 4


def predictions(n: int, accuracy: float, seed: int, folds: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.choice(K, size=n, p=[0.4, 0.3, 0.2, 0.1])
    p = np.where(rng.random(n) < accuracy, y, rng.integers(0, K, n))
    strata = np.sort(rng.integers(1, folds + 1, n))
    return y, p, strata


# --- the slow references ------------------------------------------------------------------------


def slow_metrics(y, p, tested=None):
    """WA, UA, macro F1, weighted F1 from their definitions, one class and one utterance at a time.

    ``tested``: the classes of the test set that ``y`` was resampled from; one of them missing from
    ``y`` has no recall and is left out of UA and macro F1. Every other class counts, 0 when
    absent (``scores``'s definition, and the only one when ``tested`` is None)."""
    n = len(y)
    recall, f1, support = [], [], []
    counted = [k for k in range(K) if tested is None or k in y or k not in tested]
    for k in range(K):
        tp = sum(1 for t, q in zip(y, p, strict=True) if t == k and q == k)
        sup = sum(1 for t in y if t == k)
        pred = sum(1 for q in p if q == k)
        r = tp / sup if sup else 0.0
        pr = tp / pred if pred else 0.0
        recall.append(r)
        f1.append(2 * pr * r / (pr + r) if pr + r else 0.0)
        support.append(sup)
    return {
        "wa": sum(1 for t, q in zip(y, p, strict=True) if t == q) / n,
        "ua": sum(recall[k] for k in counted) / len(counted),
        "macro_f1": sum(f1[k] for k in counted) / len(counted),
        "weighted_f1": sum(f * s for f, s in zip(f1, support, strict=True)) / n,
    }


def slow_quantile(values, q):
    """The linear-interpolation quantile (numpy's default), from its definition."""
    v = sorted(values)
    h = (len(v) - 1) * q
    lo = math.floor(h)
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def slow_draw(strata, resamples, seed):
    """Utterance indexes per resample, one stratum (fold) at a time, as rows of Python lists."""
    rng = np.random.default_rng(seed)
    order = list(dict.fromkeys(strata))  # strata in order of first appearance
    rows = [[None] * len(strata) for _ in range(resamples)]
    for s in order:
        members = [i for i, v in enumerate(strata) if v == s]
        draws = rng.integers(0, len(members), size=(resamples, len(members)))
        for r in range(resamples):
            for j, i in enumerate(members):
                rows[r][i] = members[draws[r][j]]
    return rows


# --- bootstrap --------------------------------------------------------------------------------


def test_resampling_is_stratified_and_seeded():
    strata = np.array([2, 2, 1, 1, 1, 3, 2, 3, 1])
    idx = resample_indices(strata, 200, seed=5)
    assert idx.shape == (200, 9)
    assert np.array_equal(strata[idx], np.broadcast_to(strata, idx.shape))  # every draw stays in its fold
    assert np.array_equal(idx, resample_indices(strata, 200, seed=5))
    assert not np.array_equal(idx, resample_indices(strata, 200, seed=6))
    assert idx.tolist() == slow_draw(strata.tolist(), 200, 5)
    # with replacement: some resample repeats an utterance of fold 1 (4 members, 200 draws)
    assert any(len(set(row[[2, 3, 4, 8]])) < 4 for row in idx)


def test_bootstrap_intervals_equal_the_slow_reference():
    y, p, strata = predictions(150, 0.6, seed=1)
    boot = Bootstrap(resamples=300, seed=11)
    fast = bootstrap_intervals(y, p, strata, K, boot)
    rows = slow_draw(strata.tolist(), boot.resamples, boot.seed)
    values = {m: [] for m in METRICS}
    for row in rows:
        got = slow_metrics([int(y[i]) for i in row], [int(p[i]) for i in row], tested=set(y.tolist()))
        for m in METRICS:
            values[m].append(got[m])
    for m in METRICS:
        want = [slow_quantile(values[m], 0.025), slow_quantile(values[m], 0.975)]
        assert fast[m] == pytest.approx(want, abs=1e-12), m


def test_a_rare_class_missed_by_a_resample_is_left_out_not_counted_zero():
    # 3 of 93 utterances: about 1 resample in 20 lacks class 3; counting its recall 0 there put the
    # lower end of a perfect model's UA interval at 75%
    y = np.array([0] * 30 + [1] * 30 + [2] * 30 + [3] * 3)
    boot = Bootstrap(resamples=1000, seed=3)
    idx = resample_indices(np.zeros(y.size, int), boot.resamples, boot.seed)
    assert np.count_nonzero(~np.any(y[idx] == 3, axis=1)) > 2.5 / 100 * boot.resamples  # the case happens
    perfect = bootstrap_intervals(y, y, np.zeros(y.size, int), K, boot)
    assert perfect == {m: [1.0, 1.0] for m in METRICS}
    assert paired_bootstrap(y, y, y.copy(), np.zeros(y.size, int), K, boot)["ua"]["interval"] == [0.0, 0.0]
    # a class the test set lacks still counts 0, in the estimate as in every resample
    three = y[y < 3]
    assert bootstrap_intervals(three, three, np.zeros(three.size, int), K, boot)["ua"] == [0.75, 0.75]
    assert resampled_metrics(three, three, np.arange(three.size)[None, :], K)["ua"][0] == 0.75


def test_rare_class_intervals_equal_the_slow_reference():
    rng = np.random.default_rng(8)
    y = np.array([0] * 25 + [1] * 20 + [2] * 15 + [3] * 2)
    p = np.where(rng.random(y.size) < 0.7, y, rng.integers(0, K, y.size))
    p[-1] = 0  # one of the two utterances of class 3 is missed
    strata = np.repeat([1, 2], [31, 31])
    boot = Bootstrap(resamples=300, seed=21)
    fast = bootstrap_intervals(y, p, strata, K, boot)
    rows = slow_draw(strata.tolist(), boot.resamples, boot.seed)
    assert any(3 not in [int(y[i]) for i in row] for row in rows)
    values = {m: [] for m in METRICS}
    for row in rows:
        got = slow_metrics([int(y[i]) for i in row], [int(p[i]) for i in row], tested={0, 1, 2, 3})
        for m in METRICS:
            values[m].append(got[m])
    for m in METRICS:
        want = [slow_quantile(values[m], 0.025), slow_quantile(values[m], 0.975)]
        assert fast[m] == pytest.approx(want, abs=1e-12), m


def test_several_seeds_are_averaged_per_resample():
    y, p, strata = predictions(80, 0.5, seed=2)
    q = np.where(np.arange(80) % 3 == 0, (p + 1) % K, p)
    idx = resample_indices(strata, 50, seed=3)
    both = resampled_metrics(y, np.stack([p, q]), idx, K)
    for r in (0, 17, 49):
        a = slow_metrics(y[idx[r]].tolist(), p[idx[r]].tolist(), set(y.tolist()))
        b = slow_metrics(y[idx[r]].tolist(), q[idx[r]].tolist(), set(y.tolist()))
        for m in METRICS:
            assert both[m][r] == pytest.approx((a[m] + b[m]) / 2, abs=1e-12)


def test_intervals_contain_the_estimate_and_narrow_with_more_data():
    y, p, strata = predictions(200, 0.65, seed=4)
    point = slow_metrics(y.tolist(), p.tolist())
    small = bootstrap_intervals(y, p, strata, K)
    # the same utterances ten times over: the same estimate, about sqrt(10) times narrower
    big = bootstrap_intervals(np.tile(y, 10), np.tile(p, 10), np.repeat(strata, 10), K)
    for m in METRICS:
        assert small[m][0] < point[m] < small[m][1], m
        assert big[m][0] < point[m] < big[m][1], m
        ratio = (big[m][1] - big[m][0]) / (small[m][1] - small[m][0])
        assert 0.2 < ratio < 0.45, (m, ratio)


def test_paired_bootstrap_equals_the_slow_reference():
    y, p, strata = predictions(120, 0.6, seed=5)
    rng = np.random.default_rng(9)
    q = np.where(rng.random(120) < 0.6, y, p)  # B fixes most of A's errors
    boot = Bootstrap(resamples=250, seed=13)
    fast = paired_bootstrap(y, p, q, strata, K, boot)
    rows = slow_draw(strata.tolist(), boot.resamples, boot.seed)
    a0, b0 = slow_metrics(y.tolist(), p.tolist()), slow_metrics(y.tolist(), q.tolist())
    for m in METRICS:
        d = b0[m] - a0[m]
        diffs = []
        for row in rows:
            yr = [int(y[i]) for i in row]
            tested = set(y.tolist())
            diffs.append(
                slow_metrics(yr, [int(q[i]) for i in row], tested)[m]
                - slow_metrics(yr, [int(p[i]) for i in row], tested)[m]
            )
        far = sum(1 for x in diffs if abs(x - d) >= abs(d))
        got = fast[m]
        assert got["difference"] == pytest.approx(d, abs=1e-12)
        assert got["a"] == pytest.approx(a0[m]) and got["b"] == pytest.approx(b0[m])
        assert got["interval"] == pytest.approx([slow_quantile(diffs, 0.025), slow_quantile(diffs, 0.975)], abs=1e-12)
        assert got["p"] == pytest.approx((1 + far) / (boot.resamples + 1))
    assert fast["wa"]["difference"] > 0.05 and fast["wa"]["p"] < 0.01  # a real improvement is found


def test_paired_bootstrap_of_equal_predictions_and_of_swapped_runs():
    y, p, strata = predictions(100, 0.6, seed=6)
    same = paired_bootstrap(y, p, p.copy(), strata, K, Bootstrap(200))
    for m in METRICS:
        assert same[m]["difference"] == 0 and same[m]["interval"] == [0.0, 0.0] and same[m]["p"] == 1.0
    q = np.roll(p, 7)
    ab, ba = paired_bootstrap(y, p, q, strata, K, Bootstrap(200)), paired_bootstrap(y, q, p, strata, K, Bootstrap(200))
    for m in METRICS:
        assert ab[m]["difference"] == pytest.approx(-ba[m]["difference"])
        assert ab[m]["interval"] == pytest.approx([-ba[m]["interval"][1], -ba[m]["interval"][0]])
        assert ab[m]["p"] == pytest.approx(ba[m]["p"])


# --- McNemar and tests over seeds --------------------------------------------------------------------


def discordant(b: int, c: int, both: int = 5):
    """Correctness of A and B: b utterances only A gets right, c only B, ``both`` both."""
    a = [True] * b + [False] * c + [True] * both + [False] * 3
    bb = [False] * b + [True] * c + [True] * both + [False] * 3
    return a, bb


def test_mcnemar_exact_by_hand():
    got = mcnemar(*discordant(3, 9))
    # 12 discordant: p = 2 * P(X <= 3), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66 + 220) / 4096
    assert (got["b"], got["c"], got["method"]) == (3, 9, "exact binomial")
    assert got["p"] == pytest.approx(2 * 299 / 4096, abs=1e-12)
    assert mcnemar(*discordant(4, 4))["p"] == 1.0
    assert mcnemar(*discordant(0, 0)) == {
        "b": 0,
        "c": 0,
        "method": "no discordant utterances",
        "statistic": None,
        "p": 1.0,
    }


def test_mcnemar_chi_square_by_hand():
    got = mcnemar(*discordant(10, 30))
    # (|10 - 30| - 1)^2 / 40 = 9.025; chi-square(1) survival = erfc(sqrt(x / 2))
    assert got["method"] == "chi-square with continuity correction"
    assert got["statistic"] == pytest.approx(9.025)
    assert got["p"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)), rel=1e-9)
    assert mcnemar(*discordant(30, 10))["p"] == pytest.approx(got["p"])


def test_tests_over_seeds_by_hand():
    a, b = [0.60, 0.62, 0.58], [0.64, 0.63, 0.61]
    got = compare_values(a, b, paired=True)
    d = [0.04, 0.01, 0.03]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    from scipy import stats

    assert got["mean_difference"] == pytest.approx(mean) and got["std"] == pytest.approx(sd)
    assert got["p"] == pytest.approx(2 * stats.t.sf(t, 2))
    welch = compare_values(a, b + [0.66], paired=False)
    assert welch["test"].startswith("Welch") and welch["mean_difference"] == pytest.approx(0.635 - 0.60)
    assert compare_values([0.5], [0.6], paired=True) is None
    assert compare_values(a, a, paired=True)["p"] == 1.0
