"""Held-out pairwise accuracy of each head, of each aggregate, and the spread between heads (numpy)."""

from __future__ import annotations

import numpy as np


def _accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    diff = chosen - rejected  # [pairs]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))  # a tie is a coin flip


def aggregates(rewards: np.ndarray, uwo_lambda: float = 0.5) -> dict[str, np.ndarray]:
    """The ensemble objectives of ``[n, K]`` rewards: mean, wco (min) and uwo (mean - lambda * var)."""
    mean = rewards.mean(axis=1)  # [n]
    return {
        "mean": mean,
        "wco": rewards.min(axis=1),
        "uwo": mean - uwo_lambda * rewards.var(axis=1),  # population variance, as in the graph
    }


def pairwise_metrics(chosen: np.ndarray, rejected: np.ndarray, uwo_lambda: float = 0.5) -> dict:
    """Accuracy per head and per objective on preference pairs, plus how much the heads differ.

    ``chosen`` and ``rejected`` are ``[pairs, K]`` rewards. An objective is accurate on a pair
    when its aggregate of the chosen response beats its aggregate of the rejected one.

    >>> m = pairwise_metrics(np.array([[2.0, 0.0]]), np.array([[1.0, 1.0]]))
    >>> m["per_head_accuracy"], m["accuracy"]["mean"], m["accuracy"]["wco"]
    ([1.0, 0.0], 0.5, 0.0)
    """
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if chosen.shape != rejected.shape or chosen.ndim != 2 or chosen.shape[0] == 0:
        raise ValueError(f"expected two equal non-empty [pairs, K] arrays, got {chosen.shape} and {rejected.shape}")
    k = chosen.shape[1]
    per_head = [_accuracy(chosen[:, j], rejected[:, j]) for j in range(k)]
    agg_c, agg_r = aggregates(chosen, uwo_lambda), aggregates(rejected, uwo_lambda)
    both = np.concatenate([chosen, rejected])  # [2 * pairs, K]
    margins = chosen - rejected  # [pairs, K]
    if k > 1:
        corr = np.corrcoef(both, rowvar=False)  # [K, K]
        mean_corr = float(np.nanmean(corr[~np.eye(k, dtype=bool)]))
    else:
        mean_corr = 1.0
    return {
        "n_pairs": int(chosen.shape[0]),
        "uwo_lambda": float(uwo_lambda),
        "per_head_accuracy": per_head,
        "accuracy": {name: _accuracy(agg_c[name], agg_r[name]) for name in ("mean", "wco", "uwo")},
        "spread": {
            "head_accuracy_range": float(max(per_head) - min(per_head)),
            "mean_head_std": float(both.std(axis=1).mean()),  # std across heads, averaged over responses
            "mean_head_correlation": mean_corr,
            # pairs on which the heads do not all prefer the same side
            "disagreement_rate": float(np.mean(np.any(margins > 0, axis=1) & np.any(margins <= 0, axis=1))),
        },
    }


def format_metrics(metrics: dict) -> str:
    """A few human-readable lines summarising :func:`pairwise_metrics`."""
    heads = " ".join(f"{a:.3f}" for a in metrics["per_head_accuracy"])
    acc, spread = metrics["accuracy"], metrics["spread"]
    return "\n".join([
        f"held-out pairs: {metrics['n_pairs']}",
        f"per-head accuracy: {heads}",
        f"objective accuracy: mean {acc['mean']:.3f}  wco {acc['wco']:.3f}  "
        f"uwo(lambda={metrics['uwo_lambda']:g}) {acc['uwo']:.3f}",
        f"head spread: accuracy range {spread['head_accuracy_range']:.3f}  mean std {spread['mean_head_std']:.4f}  "
        f"mean corr {spread['mean_head_correlation']:.3f}  disagreement {spread['disagreement_rate']:.3f}",
    ])
