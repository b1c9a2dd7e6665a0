"""From the scores of chosen and rejected responses to every number of the report (numpy only).

:func:`analyse` gives one run's accuracies, uncertainty quality and head diversity;
:func:`compare` the deltas of one run against a reference run on the same pairs (a precision
variant or the torch checkpoint against fp32). The statistics are defined in
:mod:`ensrm.evaluate.stats`; every interval is a bootstrap interval from the same resamples,
so paired deltas are paired. (The example needs scores of real pairs: not run by the doctests.)

>>> weights = bootstrap_weights(groups_of(pairs.subsets))                        # doctest: +SKIP
>>> result = analyse(chosen_scores, rejected_scores, pairs.subsets, weights=weights)  # doctest: +SKIP
>>> result["accuracy"]["overall"]["uwo"]                                          # doctest: +SKIP
{'value': 0.91, 'interval': [0.897, 0.922]}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ensrm.evaluate import stats
from ensrm.runtime.scores import Scores, parse_objective

#: Aggregates every report covers, by objective name (``wco`` is the graph's ``ens_min``).
AGGREGATES = ("mean", "wco", "uwo")

#: Disagreement measures whose power to predict a wrong preference is reported. ``small_margin``
#: is no disagreement at all but the baseline any uncertainty should beat: a pair the objective
#: barely separates is a likely error whatever the heads say.
MEASURES = {
    "margin_std": "std over heads of the heads' margins (chosen - rejected)",
    "response_std": "the larger of the two responses' ens_std (what a ResponseFilter's max_std reads)",
    "small_margin": "-|objective margin| (baseline: a small margin, no disagreement)",
}

# RewardBench (v1) sections and the per-subset example counts its section scores are weighted
# by (allenai/reward-bench, rewardbench/constants.py: SUBSET_MAPPING, EXAMPLE_COUNTS; math-prm
# counts 984 although it has 447 pairs, so that it weighs as much as the six code subsets).
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
REWARDBENCH_WEIGHTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 250,
    "xstest-should-respond": 154, "donotanswer": 136, "math-prm": 984, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
NO_SUBSET = "(none)"


def scorer_names(num_heads: int) -> list[str]:
    """``head:0 .. head:K-1`` then the aggregates: the columns of every accuracy table."""
    return [f"head:{k}" for k in range(num_heads)] + list(AGGREGATES)


def groups_of(subsets: Sequence[str | None]) -> np.ndarray:
    """Integer subset codes ``[n]`` for :func:`~ensrm.evaluate.stats.bootstrap_weights`."""
    _, codes = np.unique([NO_SUBSET if s is None else s for s in subsets], return_inverse=True)
    return codes.reshape(-1)


def margins(chosen: Scores, rejected: Scores) -> dict[str, np.ndarray]:
    """Each scorer's margin ``[n]`` in float64: chosen minus rejected."""
    names = scorer_names(chosen.heads.shape[1])
    return {name: (chosen.objective(name).astype(np.float64) - rejected.objective(name).astype(np.float64))
            for name in names}


def uncertainties(chosen: Scores, rejected: Scores, objective: str) -> dict[str, np.ndarray]:
    """Each of :data:`MEASURES` per pair ``[n]``, float64 (higher: less certain)."""
    head_margins = chosen.heads.astype(np.float64) - rejected.heads.astype(np.float64)  # [n, K]
    margin = chosen.objective(objective).astype(np.float64) - rejected.objective(objective).astype(np.float64)
    return {"margin_std": head_margins.std(axis=1),
            "response_std": np.maximum(chosen.std.astype(np.float64), rejected.std.astype(np.float64)),
            "small_margin": -np.abs(margin)}


def _estimate(point: np.ndarray, samples: np.ndarray | None) -> dict:
    value = float(point[0])
    return {"value": None if not np.isfinite(value) else value,
            "interval": stats.interval(samples) if samples is not None else [None, None]}


def _statistic(function, weights: np.ndarray | None, n: int) -> dict:
    """``function(weights) -> [B]`` as ``{"value", "interval"}`` from the point and the bootstrap weights."""
    return _estimate(function(stats.ones(n)), None if weights is None else function(weights))


def analyse(chosen: Scores, rejected: Scores, subsets: Sequence[str | None] | None = None,
            objective: str = "uwo", weights: np.ndarray | None = None, bins: int = 10) -> dict:
    """Every number of one run's report, as a JSON-ready dict.

    ``weights`` ``[B, n]`` are the bootstrap resamples (:func:`stats.bootstrap_weights`);
    ``None`` gives point estimates with ``[None, None]`` intervals. ``objective`` is the
    aggregate whose errors the uncertainty section predicts.
    """
    n, k = chosen.heads.shape
    subsets = [None] * n if subsets is None else list(subsets)
    objective = parse_objective(objective, k)
    names = scorer_names(k)
    margin = margins(chosen, rejected)
    correct = np.stack([stats.correctness(margin[name]) for name in names], axis=1)  # [n, M]

    def table(members: np.ndarray) -> dict:
        w = None if weights is None else weights[:, members]
        point = stats.accuracy(correct[members], stats.ones(int(members.sum())))  # [1, M]
        sampled = None if w is None else stats.accuracy(correct[members], w)  # [B, M]
        return {name: _estimate(point[:, j], None if sampled is None else sampled[:, j])
                for j, name in enumerate(names)}

    everyone = np.ones(n, dtype=bool)
    result = {
        "pairs": n,
        "heads": k,
        "objective": objective,
        "accuracy": {"overall": table(everyone)},
        "ties": {name: int((margin[name] == 0).sum()) for name in names},
        "nonfinite": {name: int((~np.isfinite(margin[name])).sum()) for name in names},
    }
    labelled = sorted({s for s in subsets if s is not None})
    if labelled:
        result["accuracy"]["subsets"] = {
            name: {"pairs": int(members.sum()), **table(members)}
            for name in labelled + ([NO_SUBSET] if None in subsets else [])
            for members in [np.array([(s or NO_SUBSET) == name for s in subsets])]}
        sections = _sections(correct, subsets, names, weights)
        if sections:
            result["accuracy"]["rewardbench"] = sections
    result["uncertainty"] = _uncertainty(chosen, rejected, margin, correct[:, names.index(objective)], objective,
                                         weights, bins)
    result["diversity"] = _diversity(chosen, rejected)
    return result


def _sections(correct: np.ndarray, subsets: list, names: list[str], weights: np.ndarray | None) -> dict | None:
    """RewardBench section scores: per section, the mean of its subsets' accuracies weighted by
    :data:`REWARDBENCH_WEIGHTS` (subsets absent here are left out); ``score`` is the mean of the sections."""
    present = {s for s in subsets if s is not None}
    matched = {section: [s for s in members if s in present] for section, members in REWARDBENCH_SECTIONS.items()}
    matched = {section: members for section, members in matched.items() if members}
    if not matched:
        return None
    labels = np.array([s or NO_SUBSET for s in subsets])

    def section_scores(w: np.ndarray) -> dict[str, np.ndarray]:  # each [B, M]
        out = {}
        for section, members in matched.items():
            total = sum(REWARDBENCH_WEIGHTS[s] for s in members)
            out[section] = sum(REWARDBENCH_WEIGHTS[s] * stats.accuracy(correct[labels == s], w[:, labels == s])
                               for s in members) / total
        return out

    point = section_scores(stats.ones(len(labels)))
    sampled = None if weights is None else section_scores(weights)
    point["score"] = sum(point.values()) / len(matched)
    if sampled is not None:
        sampled["score"] = sum(sampled.values()) / len(matched)
    return {"subsets": matched, "missing": {section: [s for s in members if s not in present]
                                            for section, members in REWARDBENCH_SECTIONS.items()
                                            if any(s not in present for s in members)},
            "scores": {section: {name: _estimate(point[section][:, j],
                                                 None if sampled is None else sampled[section][:, j])
                                 for j, name in enumerate(names)}
                       for section in point}}


def _uncertainty(chosen: Scores, rejected: Scores, margin: dict, correct: np.ndarray, objective: str,
                 weights: np.ndarray | None, bins: int) -> dict:
    n = len(correct)
    measures = uncertainties(chosen, rejected, objective)
    auroc = {}
    for measure in MEASURES:
        by_aggregate = {}
        for aggregate in AGGREGATES:
            # small_margin is the baseline of one aggregate: its own margin
            u = measures[measure] if measure != "small_margin" else -np.abs(margin[aggregate])
            by_aggregate[aggregate] = _statistic(lambda w: stats.auroc(u, margin[aggregate], w), weights, n)
        auroc[measure] = by_aggregate
    selective = {}
    for measure, u in measures.items():
        selective[measure] = {
            "area": _statistic(lambda w: stats.selective_area(u, correct, w), weights, n),
            "curve": stats.selective_curve(u, correct),
        }
    wrong = int(((margin[objective] < 0) | np.isnan(margin[objective])).sum())
    return {
        "objective": objective,
        "wrong": wrong,
        "ties": int((margin[objective] == 0).sum()),
        "measures": dict(MEASURES),
        "auroc": auroc,
        "selective": selective,
        "selective_random": _statistic(lambda w: stats.accuracy(correct, w), weights, n),
        "selective_oracle": _statistic(lambda w: stats.oracle_area(correct, w), weights, n),
        "by_decile": {measure: stats.by_quantile(u, correct, bins) for measure, u in measures.items()},
    }


def _diversity(chosen: Scores, rejected: Scores) -> dict:
    """Pairwise Pearson correlation of the heads' margins; how often the heads disagree on the winner."""
    head_margins = chosen.heads.astype(np.float64) - rejected.heads.astype(np.float64)  # [n, K]
    n, k = head_margins.shape
    signs = np.sign(head_margins)  # [n, K]; 0 for a tie
    pairwise = (signs[:, :, None] != signs[:, None, :]).mean(axis=0) if n else np.zeros((k, k))  # [K, K]
    off = ~np.eye(k, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(head_margins, rowvar=False) if n > 1 and k > 1 else np.ones((k, k))
    corr = np.atleast_2d(corr)
    return {
        "margin_correlation": [[_finite(x) for x in row] for row in corr],
        "mean_margin_correlation": _finite(np.nanmean(corr[off])) if k > 1 else None,
        "winner_disagreement": float((signs != signs[:, :1]).any(axis=1).mean()) if n else 0.0,
        "pairwise_winner_disagreement": pairwise.tolist(),
        "mean_pairwise_winner_disagreement": float(pairwise[off].mean()) if k > 1 else 0.0,
    }


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def compare(reference: tuple[Scores, Scores], candidate: tuple[Scores, Scores], objective: str = "uwo",
            weights: np.ndarray | None = None) -> dict:
    """How ``candidate`` differs from ``reference`` on the same pairs: accuracy deltas (paired
    bootstrap intervals), how often both pick the same winner, and the largest score difference."""
    from ensrm.calibration.metrics import spearman

    ref_c, ref_r = reference
    cand_c, cand_r = candidate
    if ref_c.heads.shape != cand_c.heads.shape:
        raise ValueError(f"the runs differ in shape: {ref_c.heads.shape} vs {cand_c.heads.shape}")
    n, k = ref_c.heads.shape
    names = scorer_names(k)
    ref_m, cand_m = margins(ref_c, ref_r), margins(cand_c, cand_r)
    deltas = {}
    for name in names:
        a, b = stats.correctness(ref_m[name]), stats.correctness(cand_m[name])
        deltas[name] = _statistic(lambda w: stats.accuracy(b, w) - stats.accuracy(a, w), weights, n)
    both = Scores.concatenate([ref_c, ref_r], k), Scores.concatenate([cand_c, cand_r], k)
    return {
        "accuracy_delta": deltas,
        "same_winner": {name: float(np.mean(np.sign(ref_m[name]) == np.sign(cand_m[name]))) for name in AGGREGATES},
        "spearman": {name: spearman(both[0].objective(name), both[1].objective(name)) for name in AGGREGATES},
        "max_abs_diff": {name: float(np.abs(both[0].objective(name).astype(np.float64)
                                            - both[1].objective(name).astype(np.float64)).max(initial=0.0))
                         for name in names},
    }
