"""Choose a :class:`~ensrm.runtime.filter.ResponseFilter`'s disagreement threshold from the selective curve.

A filter accepts a response when its ensemble std is at most ``max_std`` (and, with
``min_score``, its objective score is at least that). A *pair* is kept when the filter accepts
both of its responses, i.e. when ``max(std_chosen, std_rejected) <= max_std`` — the
``response_std`` uncertainty of :mod:`ensrm.evaluate.analysis`. So the filter's threshold is a
point of that measure's selective curve:

- ``target_accuracy=A``: the largest threshold (the most pairs kept) whose kept pairs reach
  accuracy ``A``;
- ``keep=F``: the smallest threshold that keeps at least the share ``F`` of the pairs.

The saved ``max_std`` lies halfway between the last kept value and the next larger response
std on these pairs, so rescoring them (in other batches, where the last float bits may move)
keeps exactly the same pairs. When the choice keeps every pair no std check is needed and
``max_std`` is ``None``. (The example needs scores of real pairs: not run by the doctests.)

>>> choice = choose_threshold(chosen, rejected, target_accuracy=0.95)          # doctest: +SKIP
>>> choice["max_std"], choice["expected"]["pair_keep"]["value"]                 # doctest: +SKIP
(0.41, 0.83)
"""

from __future__ import annotations

import math

import numpy as np

from ensrm.evaluate import stats
from ensrm.runtime.scores import Scores, parse_objective


def _accepted(scores: Scores, objective: str, min_score: float | None, max_std: float | None) -> np.ndarray:
    """The filter's rule per response ``[n]`` (as :meth:`ResponseFilter.decide_scores`: NaN fails a check)."""
    value = scores.objective(objective).astype(np.float64)
    std = scores.std.astype(np.float64)
    ok = np.ones(len(value), dtype=bool)
    if min_score is not None:
        ok &= value >= min_score
    if max_std is not None:
        ok &= std <= max_std
    return ok


def choose_threshold(chosen: Scores, rejected: Scores, objective: str = "uwo", *,
                     target_accuracy: float | None = None, keep: float | None = None,
                     min_score: float | None = None, weights: np.ndarray | None = None) -> dict:
    """Pick ``max_std`` for ``target_accuracy`` or ``keep`` (exactly one) on these pairs.

    Accuracy is the ``objective``'s (ties half). Returns a JSON-ready dict: the thresholds,
    how they were chosen, and the ``expected`` pair accuracy, pair keep rate and response keep
    rate at them, with bootstrap intervals from ``weights`` (the same pairs: an in-sample,
    hence optimistic, estimate).
    """
    check_filter_options(target_accuracy, keep, min_score)
    objective = parse_objective(objective, chosen.heads.shape[1])
    n = len(chosen)
    margin = chosen.objective(objective).astype(np.float64) - rejected.objective(objective).astype(np.float64)
    correct = stats.correctness(margin)
    std_c, std_r = chosen.std.astype(np.float64), rejected.std.astype(np.float64)
    u = np.maximum(std_c, std_r)  # [n] the pair is kept iff u <= max_std
    allowed = (_accepted(chosen, objective, min_score, None) & _accepted(rejected, objective, min_score, None)
               & np.isfinite(u))
    curve = stats.selective_curve(u, correct, keep=allowed)
    if not curve["threshold"]:
        raise ValueError("no pair passes the score check (`min_score`); no disagreement threshold can keep any")
    max_std = _between(curve["threshold"][_point(curve, target_accuracy, keep)], np.concatenate([std_c, std_r]))
    accept_c = _accepted(chosen, objective, min_score, max_std)
    accept_r = _accepted(rejected, objective, min_score, max_std)
    return {
        "objective": objective,
        "min_score": min_score,
        "max_std": max_std,
        "chosen_by": {"target_accuracy": target_accuracy} if target_accuracy is not None else {"keep": keep},
        "pairs": n,
        "kept_pairs": int((accept_c & accept_r).sum()),
        "expected": _expected(correct, accept_c, accept_r, weights),
        "accuracy_without_filter": float(correct.mean()) if n else None,
    }


def check_filter_options(target_accuracy: float | None, keep: float | None, min_score: float | None = None) -> None:
    """Refuse anything but exactly one of ``target_accuracy`` and ``keep`` in (0, 1], or a non-finite ``min_score``.

    >>> check_filter_options(0.9, 0.5)
    Traceback (most recent call last):
    ValueError: give exactly one of `target_accuracy` and `keep`
    """
    if (target_accuracy is None) == (keep is None):
        raise ValueError("give exactly one of `target_accuracy` and `keep`")
    for name, value in (("target_accuracy", target_accuracy), ("keep", keep)):
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"`{name}` must be in (0, 1], got {value}")
    if min_score is not None and not math.isfinite(min_score):
        raise ValueError(f"`min_score` must be a finite number, got {min_score}")


def _point(curve: dict, target_accuracy: float | None, keep: float | None) -> int:
    """The index on the selective ``curve`` that ``target_accuracy`` (the most pairs kept at that accuracy) or
    ``keep`` (the fewest pairs kept that are at least that share) picks."""
    coverage, accuracy = np.array(curve["coverage"]), np.array(curve["accuracy"])
    if target_accuracy is not None:
        reach = np.flatnonzero(accuracy >= target_accuracy)
        if reach.size == 0:
            best = int(np.argmax(accuracy))
            raise ValueError(f"no disagreement threshold reaches accuracy {target_accuracy:g} on these pairs; the "
                             f"best is {accuracy[best]:.4f} keeping {coverage[best]:.2%} of them")
        return int(reach[-1])
    reach = np.flatnonzero(coverage >= keep - 1e-12)
    if reach.size == 0:
        raise ValueError(f"at most {coverage[-1]:.2%} of the pairs pass the score check; cannot keep {keep:g}")
    return int(reach[0])


def _between(last: float, responses: np.ndarray) -> float | None:
    """``max_std`` halfway between ``last`` (the largest std kept) and the next larger one of ``responses``
    ``[2n]``, so a rescoring's last-bit changes keep the same pairs; ``None`` (no check) when none is larger.

    >>> _between(0.25, np.array([0.1, 0.25, 0.75, np.nan]))
    0.5
    """
    above = responses[np.isfinite(responses) & (responses > last)]
    return None if above.size == 0 else float((last + above.min()) / 2.0)


def _expected(correct: np.ndarray, accept_c: np.ndarray, accept_r: np.ndarray, weights: np.ndarray | None) -> dict:
    """The kept pairs' accuracy, the pair and the response keep rates, each with its interval over ``weights``."""
    n = len(correct)
    kept = accept_c & accept_r  # [n]
    w = stats.ones(n) if weights is None else weights

    def pair_keep(w):
        return (w @ kept) / w.sum(axis=1)

    def kept_accuracy(w):
        return stats.accuracy(correct, w * kept)

    def response_keep(w):
        return (w @ (accept_c.astype(np.float64) + accept_r)) / (2.0 * w.sum(axis=1))

    def estimate(function):
        value = float(function(stats.ones(n))[0])
        return {"value": value if math.isfinite(value) else None,
                "interval": stats.interval(function(w)) if weights is not None else [None, None]}

    return {"accuracy": estimate(kept_accuracy), "pair_keep": estimate(pair_keep),
            "response_keep": estimate(response_keep)}


def build_filter(scorer, choice: dict, source: str | None = None):
    """The :class:`ResponseFilter` ``choice`` describes, on ``scorer``'s bundle, with how it was fitted."""
    from ensrm.runtime.filter import ResponseFilter

    fitted = {"method": "ensrm eval", "records": choice["pairs"], "pairs_file": source,
              **choice["chosen_by"], "expected_accuracy": choice["expected"]["accuracy"]["value"],
              "expected_pair_keep": choice["expected"]["pair_keep"]["value"],
              "expected_response_keep": choice["expected"]["response_keep"]["value"]}
    return ResponseFilter(scorer, objective=choice["objective"], min_score=choice["min_score"],
                          max_std=choice["max_std"], fitted=fitted)
