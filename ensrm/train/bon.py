"""Best-of-n without sampling noise: the exact expectation over a pool of scored candidates.

Drawing n of a pool's N candidates without replacement and keeping the one the proxy scores
highest selects the candidate of proxy rank i (1 = lowest) with probability
``C(i - 1, n - 1) / C(N, n)``: it must be drawn, and the other n - 1 must come from the i - 1
below it. The expected gold score of best-of-n is therefore a weighted sum over the pool, exact
for every n <= N at once (the "unbiased best-of-n estimator" of Nakano et al. 2021 and
Gao et al. 2022). numpy only, like :mod:`ensrm.runtime.best_of_n`, which does the selection at
run time; this module evaluates a reward model's best-of-n against a gold score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _log_factorials(n: int) -> np.ndarray:
    """``[n + 1]`` with ``log(k!)`` at index k; summed logs stay finite where factorials overflow."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def best_of_n_weights(pool_size: int, n: int) -> np.ndarray:
    """``[pool_size]`` probabilities that best-of-n picks the candidate of each proxy rank (ascending).

    >>> best_of_n_weights(4, 2).round(4).tolist()      # C(i-1, 1) / C(4, 2) for i = 1..4
    [0.0, 0.1667, 0.3333, 0.5]
    """
    if not 1 <= n <= pool_size:
        raise ValueError(f"n must be between 1 and the pool size {pool_size}, got {n}")
    lf = _log_factorials(pool_size)
    i = np.arange(n, pool_size + 1)  # ranks that can win; lower ones have weight 0
    log_c = lf[i - 1] - lf[n - 1] - lf[i - n]  # log C(i - 1, n - 1)
    log_total = lf[pool_size] - lf[n] - lf[pool_size - n]  # log C(N, n)
    weights = np.zeros(pool_size)
    weights[n - 1:] = np.exp(log_c - log_total)
    return weights


def expected_best_of_n(proxy, gold, ns: Sequence[int]) -> np.ndarray:
    """Expected gold score of best-of-n by ``proxy`` for each n in ``ns``, exact over the pool.

    ``proxy`` and ``gold`` are ``[..., N]`` arrays (one pool per leading index, e.g.
    ``[prompts, N]``); the result is ``[..., len(ns)]``. Proxy ties are broken by pool order,
    so shuffle a pool whose proxy scores tie if that order means something.

    >>> expected_best_of_n([0.1, 0.9, 0.5], [1.0, 0.0, 2.0], [1, 2, 3]).round(4).tolist()
    [1.0, 0.6667, 0.0]
    """
    proxy = np.asarray(proxy, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if proxy.shape != gold.shape or proxy.ndim == 0:
        raise ValueError(f"proxy and gold must have the same [..., N] shape, got {proxy.shape} and {gold.shape}")
    if not (np.isfinite(proxy).all() and np.isfinite(gold).all()):
        raise ValueError("proxy and gold scores must be finite")
    order = np.argsort(proxy, axis=-1, kind="stable")  # [..., N] ascending proxy rank
    ranked_gold = np.take_along_axis(gold, order, axis=-1)  # [..., N]
    weights = np.stack([best_of_n_weights(proxy.shape[-1], int(n)) for n in ns], axis=-1)  # [N, len(ns)]
    return ranked_gold @ weights  # [..., len(ns)]


def best_of_n_kl(n) -> np.ndarray:
    """The analytic KL divergence of best-of-n from the base policy: ``log n - (n - 1) / n``.

    >>> float(best_of_n_kl(1)), round(float(best_of_n_kl(256)), 3)
    (0.0, 4.549)
    """
    n = np.asarray(n, dtype=np.float64)
    return np.log(n) - (n - 1) / n
