"""The exact best-of-n estimator against brute-force enumeration of every draw."""

import itertools
import math

import numpy as np
import pytest

from ensrm.train.bon import best_of_n_kl, best_of_n_weights, expected_best_of_n


def brute_force(proxy, gold, n):
    """Mean gold of the proxy's pick over every n-subset of the pool (drawn without replacement)."""
    picks = [gold[max(subset, key=lambda i: proxy[i])] for subset in itertools.combinations(range(len(proxy)), n)]
    return float(np.mean(picks))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_enumeration_on_a_small_pool(seed):
    rng = np.random.default_rng(seed)
    proxy, gold = rng.normal(size=9), rng.normal(size=9)
    expected = [brute_force(proxy, gold, n) for n in range(1, 10)]
    np.testing.assert_allclose(expected_best_of_n(proxy, gold, range(1, 10)), expected, rtol=1e-12, atol=1e-12)


def test_endpoints_and_batched_pools():
    rng = np.random.default_rng(3)
    proxy, gold = rng.normal(size=(4, 50)), rng.normal(size=(4, 50))
    values = expected_best_of_n(proxy, gold, [1, 50])  # [4, 2]
    np.testing.assert_allclose(values[:, 0], gold.mean(axis=1))  # n = 1: a random candidate
    np.testing.assert_allclose(values[:, 1], gold[np.arange(4), proxy.argmax(axis=1)])  # n = N: the proxy's top
    np.testing.assert_allclose(expected_best_of_n(proxy[2], gold[2], [7]), expected_best_of_n(proxy, gold, [7])[2])


def test_weights_are_a_distribution_for_large_pools():
    # C(4096, 256) overflows float64; the log-space weights must still sum to one.
    for n in (1, 2, 256, 4096):
        weights = best_of_n_weights(4096, n)
        assert np.isfinite(weights).all() and weights.sum() == pytest.approx(1.0, abs=1e-9)
        assert (weights[: n - 1] == 0).all()
    assert best_of_n_weights(5, 2)[4] == pytest.approx(math.comb(4, 1) / math.comb(5, 2))


def test_kl_formula():
    assert float(best_of_n_kl(1)) == 0.0
    assert float(best_of_n_kl(16)) == pytest.approx(math.log(16) - 15 / 16)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="between 1 and the pool size 3"):
        expected_best_of_n([1, 2, 3], [1, 2, 3], [4])
    with pytest.raises(ValueError, match="same"):
        expected_best_of_n([1, 2, 3], [1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        expected_best_of_n([1, np.nan], [1, 2], [1])
