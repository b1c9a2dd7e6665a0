"""The statistics against their textbook definitions, and the weighted (bootstrap) forms against repetition."""

from __future__ import annotations

import numpy as np
import pytest

from ensrm.evaluate import stats


def brute_auroc(u, margin):
    """P(u_wrong > u_right) + 0.5 P(equal), over every (wrong, right) pair, by enumeration."""
    wrong = [x for x, m in zip(u, margin) if m < 0 or np.isnan(m)]
    right = [x for x, m in zip(u, margin) if m > 0]
    total = sum((w > r) + 0.5 * (w == r) for w in wrong for r in right)
    return total / (len(wrong) * len(right))


def brute_area(u, correct):
    """Mean over k of the accuracy of {u <= k-th smallest u}."""
    u, correct = np.asarray(u), np.asarray(correct)
    ordered = np.sort(u)
    return float(np.mean([correct[u <= ordered[k]].mean() for k in range(len(u))]))


@pytest.fixture()
def tied_data():
    rng = np.random.default_rng(3)
    u = rng.integers(0, 6, size=80).astype(np.float64)  # many ties in the uncertainty
    margin = rng.normal(size=80) - 0.6 * u / 6
    margin[::9] = 0.0  # exact ties in the margin
    margin[5] = np.nan
    return u, margin


def test_correctness_counts_a_tie_as_half():
    assert stats.correctness(np.array([2.0, 0.0, -0.5, np.nan])).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert stats.accuracy(stats.correctness(np.array([1.0, 0.0, 0.0, -1.0])), stats.ones(4))[0] == 0.5


def test_auroc_equals_enumeration_and_average_ranks(tied_data):
    u, margin = tied_data
    got = float(stats.auroc(u, margin, stats.ones(len(u)))[0])
    assert abs(got - brute_auroc(u, margin)) <= 1e-12
    assert abs(got - stats.auroc_from_ranks(u, margin)) <= 1e-12


def test_auroc_extremes_and_undefined():
    m = np.array([-1.0, -1.0, 1.0, 1.0])
    assert stats.auroc(np.array([5.0, 4.0, 1.0, 0.0]), m, stats.ones(4))[0] == 1.0
    assert stats.auroc(np.array([0.0, 1.0, 4.0, 5.0]), m, stats.ones(4))[0] == 0.0
    assert stats.auroc(np.ones(4), m, stats.ones(4))[0] == 0.5
    assert np.isnan(stats.auroc(np.arange(3.0), np.ones(3), stats.ones(3))[0])
    assert stats.auroc_from_ranks(np.arange(3.0), np.ones(3)) is None


def test_weighted_forms_equal_the_statistic_of_the_repeated_sample(tied_data):
    u, margin = tied_data
    correct = stats.correctness(margin)
    weights = stats.bootstrap_weights(np.zeros(len(u), dtype=int), resamples=6, seed=1)
    for w in weights:
        idx = np.repeat(np.arange(len(u)), w.astype(int))
        assert abs(stats.auroc(u, margin, w[None])[0] - brute_auroc(u[idx], margin[idx])) <= 1e-12
        assert abs(stats.selective_area(u, correct, w[None])[0] - brute_area(u[idx], correct[idx])) <= 1e-12
        assert abs(stats.accuracy(correct, w[None])[0] - correct[idx].mean()) <= 1e-12


def test_selective_curve_and_area():
    u = np.array([0.3, 0.1, 0.3, 0.9, 0.5])
    correct = np.array([1.0, 1.0, 0.0, 0.0, 0.5])
    curve = stats.selective_curve(u, correct)
    assert curve["threshold"] == [0.1, 0.3, 0.5, 0.9]
    assert curve["coverage"] == [0.2, 0.6, 0.8, 1.0]
    assert curve["accuracy"] == pytest.approx([1.0, 2 / 3, 2.5 / 4, 2.5 / 5])
    assert stats.selective_area(u, correct, stats.ones(5))[0] == pytest.approx(brute_area(u, correct))
    # the best order keeps every right pair first; random order is the overall accuracy
    assert stats.oracle_area(correct, stats.ones(5))[0] == pytest.approx(np.mean([1, 1, 2.5 / 3, 2.5 / 4, 2.5 / 5]))
    restricted = stats.selective_curve(u, correct, keep=np.array([True, True, False, True, True]))
    assert restricted["coverage"] == [0.2, 0.4, 0.6, 0.8] and restricted["accuracy"][1] == 1.0


def test_deciles_keep_equal_uncertainty_together():
    u = np.array([0.0] * 5 + list(range(1, 16)), dtype=np.float64)
    correct = np.r_[np.ones(5), np.zeros(15)]
    rows = stats.by_quantile(u, correct, bins=10)
    assert sum(r["pairs"] for r in rows) == 20
    assert rows[0]["accuracy"] == 1.0 and rows[0]["pairs"] == 5  # ranks 3 (average) -> all in bin 1
    assert all(r["accuracy"] == 0.0 for r in rows[1:])


def test_bootstrap_is_stratified_and_seeded():
    groups = np.array([0] * 5 + [1] * 3 + [2] * 12)
    a = stats.bootstrap_weights(groups, resamples=40, seed=7)
    b = stats.bootstrap_weights(groups, resamples=40, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, stats.bootstrap_weights(groups, resamples=40, seed=8))
    for g, size in ((0, 5), (1, 3), (2, 12)):
        assert (a[:, groups == g].sum(axis=1) == size).all()
    assert stats.interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert stats.interval(np.array([np.nan])) == [None, None]
