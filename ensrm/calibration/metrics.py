"""Ranking agreement between a precision variant and fp32: the numbers the accuracy gate reads.

Best-of-n and filtering depend on order and thresholds, so a variant is compared with fp32 by
Spearman correlation, by how often both pick the same best of ``n`` candidates, and by how
often a filter threshold puts a record on the other side.
"""

from __future__ import annotations

import numpy as np

from ensrm.runtime.scores import Scores

#: Aggregates compared, by their :class:`Scores` attribute names.
AGGREGATES = ("mean", "std", "min", "uwo")
#: Objectives a best-of-n or a filter ranks by (``std`` measures disagreement, not quality).
OBJECTIVES = ("mean", "min", "uwo")


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank (as ``scipy.stats.rankdata``).

    >>> rankdata(np.array([3.0, 1.0, 3.0]))
    array([2.5, 1. , 2.5])
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two ``[n]`` arrays; 1.0 when both are constant and equal.

    >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 25.0]))
    1.0
    """
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float((ra * rb).sum() / denom)


def top1_agreement(reference: np.ndarray, candidate: np.ndarray, n: int, groups: int = 2000,
                   seed: int = 0) -> float:
    """Fraction of random ``n``-subsets whose best record is the same under both scorings.

    Subsets are drawn without replacement within each subset, with a fixed seed, so the
    number is reproducible and smoother than one split of the records into groups.

    >>> x = np.arange(20.0)
    >>> top1_agreement(x, x, 4)
    1.0
    """
    if len(reference) < n:
        raise ValueError(f"best-of-{n} needs at least {n} records, got {len(reference)}")
    rng = np.random.default_rng(seed)
    subsets = np.argsort(rng.random((groups, len(reference))), axis=1)[:, :n]  # [groups, n]
    pick_ref = subsets[np.arange(groups), np.argmax(reference[subsets], axis=1)]
    pick_cand = subsets[np.arange(groups), np.argmax(candidate[subsets], axis=1)]
    return float(np.mean(pick_ref == pick_cand))


def flip_rate(reference: np.ndarray, candidate: np.ndarray, quantile: float = 0.5) -> float:
    """Fraction of records on different sides of the fp32 ``quantile`` threshold.

    The same threshold applies to both, as a filter deployed with one number would.

    >>> flip_rate(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 3.5]))
    0.0
    >>> flip_rate(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 2.0, 1.0, 3.0]))  # the middle two swap sides
    0.5
    """
    threshold = np.quantile(reference, quantile)
    return float(np.mean((reference >= threshold) != (candidate >= threshold)))


def compare_scores(reference: Scores, candidate: Scores, ns: tuple[int, ...] = (4, 16),
                   threshold_quantile: float = 0.5, seed: int = 0) -> dict:
    """Every ranking number the gate reads, as a JSON-ready dict.

    (Needs the scores of a bundle and its variant, so not run by the doctests.)

    >>> report = compare_scores(fp32_scores, int8_scores)         # doctest: +SKIP
    >>> report["spearman"]["min"], report["top1"]["16"]["uwo"]    # doctest: +SKIP
    (0.996, 0.97)
    """
    if len(reference) != len(candidate):
        raise ValueError(f"scored {len(reference)} records in fp32 but {len(candidate)} in the variant")
    finite = all(bool(np.isfinite(getattr(candidate, f)).all()) for f in ("heads",) + AGGREGATES)
    report = {
        "records": len(reference),
        "finite": finite,
        "spearman": {a: spearman(getattr(reference, a), getattr(candidate, a)) for a in AGGREGATES},
        "spearman_heads": [spearman(reference.heads[:, k], candidate.heads[:, k])
                           for k in range(reference.heads.shape[1])],
        "top1": {str(n): {o: top1_agreement(getattr(reference, o), getattr(candidate, o), n, seed=seed)
                          for o in OBJECTIVES}
                 for n in ns if len(reference) >= n},
        "flip_rate": {o: flip_rate(getattr(reference, o), getattr(candidate, o), threshold_quantile)
                      for o in OBJECTIVES},
        "threshold_quantile": threshold_quantile,
        "max_abs_diff": {a: float(np.abs(getattr(reference, a) - getattr(candidate, a)).max(initial=0.0))
                         for a in ("heads",) + AGGREGATES},
    }
    return report
