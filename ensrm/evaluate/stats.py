"""The statistics of ``ensrm eval``, each defined once, on weighted pairs (numpy only).

Every statistic takes a ``weights`` array ``[B, n]``: how many times each of the ``n`` pairs
counts in each of ``B`` samples. The point estimate is one sample of all ones; a bootstrap
replicate is a sample of multinomial counts (:func:`bootstrap_weights`). One code path serves
both, so an interval is always the interval *of the reported number*.

Definitions (``m`` a pair's margin: the chosen response's score minus the rejected one's):

- **correctness** of a pair: 1 when ``m > 0``, 0.5 when ``m == 0`` (a tie is half right), 0 when
  ``m < 0`` or ``m`` is NaN; **accuracy** is its weighted mean;
- **wrong**: ``m < 0`` or NaN; a tie is neither right nor wrong and is left out of the AUROC;
- **AUROC** of an uncertainty ``u`` for predicting a wrong pair: the probability that a wrong
  pair has a higher ``u`` than a right one, ties in ``u`` counting one half (the Mann–Whitney
  statistic with average ranks); ``None`` when there is no wrong or no right pair;
- **selective-prediction curve**: for each distinct value ``t`` of ``u``, keep the pairs with
  ``u <= t`` (the most uncertain are rejected first; equal ``u`` are kept or rejected together,
  as a threshold would); coverage is the kept share, accuracy the kept pairs' accuracy;
- its **area**: the mean over ``k = 1..n`` of the accuracy at the smallest threshold keeping
  the ``k`` least uncertain pairs, i.e. the area under accuracy-vs-coverage as a right step
  function. Keeping pairs at random gives the overall accuracy; the best possible order
  (every right pair before every tie before every wrong one, one at a time) gives the
  ``oracle`` area;
- **bootstrap interval**: the 2.5th and 97.5th percentiles (numpy's linear interpolation) of
  the statistic over ``B`` resamples of the pairs with replacement, drawn within each subset
  (so every subset keeps its size) from a fixed seed.

>>> margin = np.array([1.0, -1.0, 0.0, 2.0])
>>> float(accuracy(correctness(margin), ones(4))[0])
0.625
"""

from __future__ import annotations

import numpy as np

#: Resamples and seed of every bootstrap interval unless the caller says otherwise.
RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


def ones(n: int) -> np.ndarray:
    """The point estimate's weights: every pair once, ``[1, n]``."""
    return np.ones((1, n), dtype=np.float64)


def bootstrap_weights(groups: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Multinomial resample counts ``[resamples, n]``, drawn within each group of ``groups`` ``[n]``.

    Each group of size ``n_g`` gets ``n_g`` draws with replacement from its own members, so its
    size (and so every subset's share) is the same in every replicate.

    >>> w = bootstrap_weights(np.array([0, 0, 1]), resamples=5)
    >>> w.shape, w[:, :2].sum(axis=1).tolist(), w[:, 2].tolist()
    ((5, 3), [2.0, 2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(groups)), dtype=np.float64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        counts = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=resamples)
        weights[:, members] = counts
    return weights


def interval(samples: np.ndarray, level: float = LEVEL) -> list[float | None]:
    """``[low, high]``: the central ``level`` percentile interval of bootstrap ``samples`` ``[B]`` (NaN ignored)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [None, None]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [float(low), float(high)]


def correctness(margin: np.ndarray) -> np.ndarray:
    """1 / 0.5 / 0 per pair for a positive / zero / negative (or NaN) margin, float64, shape of ``margin``.

    >>> correctness(np.array([0.3, 0.0, -2.0, np.nan])).tolist()
    [1.0, 0.5, 0.0, 0.0]
    """
    margin = np.asarray(margin, dtype=np.float64)
    return np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))


def accuracy(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted accuracy ``[B]`` (or ``[B, M]`` for ``correct`` ``[n, M]``); NaN where the weights are all 0."""
    total = weights.sum(axis=1)  # [B]
    sums = weights @ correct  # [B] or [B, M]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / (total[:, None] if sums.ndim == 2 else total)


def _blocks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable ascending order of ``values`` and the start of each run of equal values in it."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts


def _block_sums(x: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of ``x`` ``[B, n]`` over each block of equal values: ``[B, blocks]``."""
    return np.add.reduceat(x[:, order], starts, axis=1)


def auroc(uncertainty: np.ndarray, margin: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC ``[B]`` of ``uncertainty`` ``[n]`` for predicting a wrong pair (see the module docstring).

    NaN in a sample with no wrong or no right pair. Ties in the uncertainty count one half.

    >>> u = np.array([0.9, 0.1, 0.5, 0.5])
    >>> m = np.array([-1.0, 1.0, 1.0, -1.0])
    >>> float(auroc(u, m, ones(4))[0])
    0.875
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    margin = np.asarray(margin, dtype=np.float64)
    wrong = (margin < 0) | np.isnan(margin)
    right = margin > 0
    order, starts = _blocks(uncertainty)
    wrong_b = _block_sums(weights * wrong, order, starts)  # [B, blocks]
    right_b = _block_sums(weights * right, order, starts)  # [B, blocks]
    right_below = np.cumsum(right_b, axis=1) - right_b  # right pairs with a strictly lower uncertainty
    pairs = wrong_b.sum(axis=1) * right_b.sum(axis=1)  # [B]
    won = (wrong_b * (right_below + 0.5 * right_b)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, won / pairs, np.nan)


def auroc_from_ranks(uncertainty: np.ndarray, margin: np.ndarray) -> float | None:
    """The same AUROC by the textbook formula, from average ranks (a check on :func:`auroc`).

    ``(R_wrong - n_wrong (n_wrong + 1) / 2) / (n_wrong n_right)`` with ``R_wrong`` the sum of the
    wrong pairs' average ranks among the right and wrong pairs (ties left out).

    >>> auroc_from_ranks(np.array([0.9, 0.1, 0.5, 0.5]), np.array([-1.0, 1.0, 1.0, -1.0]))
    0.875
    """
    from ensrm.calibration.metrics import rankdata

    margin = np.asarray(margin, dtype=np.float64)
    wrong = (margin < 0) | np.isnan(margin)
    right = margin > 0
    used = wrong | right
    ranks = rankdata(np.asarray(uncertainty, dtype=np.float64)[used])
    n_wrong, n_right = int(wrong.sum()), int(right.sum())
    if n_wrong == 0 or n_right == 0:
        return None
    rank_sum = float(ranks[wrong[used]].sum())
    return (rank_sum - n_wrong * (n_wrong + 1) / 2.0) / (n_wrong * n_right)


def selective_curve(uncertainty: np.ndarray, correct: np.ndarray, keep: np.ndarray | None = None) -> dict:
    """The selective-prediction curve at every distinct uncertainty (point estimate).

    ``keep`` ``[n]`` (optional) marks the pairs any threshold may keep (e.g. those passing a
    score check); coverage is still over all pairs. Returns ``threshold``, ``coverage``,
    ``accuracy`` (lists, ascending threshold) and ``kept`` counts.

    >>> c = selective_curve(np.array([0.1, 0.2, 0.2, 0.9]), np.array([1.0, 1.0, 0.0, 0.0]))
    >>> c["threshold"], c["coverage"], c["accuracy"]
    ([0.1, 0.2, 0.9], [0.25, 0.75, 1.0], [1.0, 0.6666666666666666, 0.5])
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    n = len(uncertainty)
    allowed = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    u = uncertainty[allowed]
    c = np.asarray(correct, dtype=np.float64)[allowed]
    if u.size == 0:
        return {"threshold": [], "coverage": [], "accuracy": [], "kept": []}
    order, starts = _blocks(u)
    ends = np.r_[starts[1:], len(u)]  # one past each block
    kept = ends  # pairs with u <= the block's value
    sums = np.cumsum(c[order])[ends - 1]
    return {"threshold": u[order][starts].tolist(), "coverage": (kept / n).tolist(),
            "accuracy": (sums / kept).tolist(), "kept": kept.tolist()}


def selective_area(uncertainty: np.ndarray, correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Area ``[B]`` under the selective-prediction curve (see the module docstring).

    >>> float(selective_area(np.array([0.1, 0.2, 0.2, 0.9]), np.array([1.0, 1.0, 0.0, 0.0]), ones(4))[0])
    0.7083333333333333
    """
    order, starts = _blocks(np.asarray(uncertainty, dtype=np.float64))
    count_b = _block_sums(weights, order, starts)  # [B, blocks]
    correct_b = _block_sums(weights * correct, order, starts)  # [B, blocks]
    kept, right = np.cumsum(count_b, axis=1), np.cumsum(correct_b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(kept > 0, right / np.where(kept > 0, kept, 1.0), 0.0)  # accuracy at each block's threshold
        return (count_b * step).sum(axis=1) / weights.sum(axis=1)


def oracle_area(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The largest possible selective area ``[B]``: right pairs kept first, then ties, then wrong ones,
    one at a time (no uncertainty can order them better).

    With ``A`` right, ``T`` tied and ``Z`` wrong pairs (``n`` in all) and ``H`` the harmonic numbers,
    the accuracy after ``k`` pairs is 1 up to ``A``, ``(A + j / 2) / (A + j)`` for the ``j``-th tie,
    then ``(A + T / 2) / (A + T + j)``; the area is their mean:
    ``[A + T/2 + (A/2)(H(A+T) - H(A)) + (A + T/2)(H(n) - H(A+T))] / n``.

    >>> float(oracle_area(np.array([1.0, 1.0, 0.5, 0.0, 0.0]), ones(5))[0])
    0.7916666666666666
    """
    correct = np.asarray(correct, dtype=np.float64)
    right = np.rint(weights @ (correct == 1.0)).astype(np.int64)  # [B]
    tied = np.rint(weights @ (correct == 0.5)).astype(np.int64)  # [B]
    total = np.rint(weights.sum(axis=1)).astype(np.int64)  # [B]
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, int(total.max(initial=0)) + 1))]  # H[0..n]
    area = (right + 0.5 * tied + 0.5 * right * (harmonic[right + tied] - harmonic[right])
            + (right + 0.5 * tied) * (harmonic[total] - harmonic[right + tied]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return area / total


def by_quantile(uncertainty: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict]:
    """Accuracy by uncertainty quantile bin (deciles by default), lowest uncertainty first.

    A pair's bin is ``floor(bins * (r - 1) / n)`` with ``r`` its average rank, so equal
    uncertainties share a bin and bins may differ in size.

    >>> [b["accuracy"] for b in by_quantile(np.arange(4.0), np.array([1.0, 1.0, 0.0, 0.5]), bins=2)]
    [1.0, 0.25]
    """
    from ensrm.calibration.metrics import rankdata

    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(uncertainty)
    if n == 0:
        return []
    index = np.floor(bins * (rankdata(uncertainty) - 1.0) / n).astype(np.int64)
    rows = []
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        u = uncertainty[members]
        rows.append({"bin": b + 1, "pairs": int(members.sum()), "accuracy": float(correct[members].mean()),
                     "uncertainty": [float(u.min()), float(u.max())]})
    return rows
