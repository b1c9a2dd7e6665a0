"""Best-of-n: objective semantics, the tie rule, NaN handling, batching and the end-to-end path."""

from __future__ import annotations

import numpy as np
import pytest

import ensrm
from ensrm.errors import InputError
from ensrm.runtime.best_of_n import argmax_or_none, best_of_n, best_of_n_batch, choose
from ensrm.runtime.scores import Scores

PROMPT = "What should I pack for a hiking trip in the mountains in autumn?"
CANDIDATES = [
    "Layers, a rain shell, a warm hat, a map, a headlamp and enough food.",
    "Thank you so much, that was really helpful and kind of you!",
    "I cannot help with that request because it could hurt someone.",
    "A list is mutable and a tuple is not; both keep their order.",
    "Mix flour, water, salt and yeast, knead by hand, let it rise and bake it hot.",
    "Bring sandals.",
    "Pack water, snacks and a jacket.",
    "Mountains are tall.",
]


def scores_from_heads(heads, lam=0.5) -> Scores:
    """Aggregates exactly as the graph defines them (population variance)."""
    heads = np.asarray(heads, dtype=np.float32)
    mean = heads.mean(axis=1)
    var = heads.var(axis=1)
    return Scores(heads=heads, mean=mean, std=np.sqrt(var), min=heads.min(axis=1), uwo=mean - lam * var)


def test_mean_and_wco_pick_different_candidates():
    # Candidate 0: one head loves it, one hates it (high mean, terrible worst case).
    # Candidate 1: every head mildly likes it (lower mean, best worst case).
    s = scores_from_heads([[3.0, 2.0, -1.0], [0.5, 0.4, 0.45], [0.0, 0.1, -0.2]])
    assert choose(s, "mean").index == 0
    assert choose(s, "wco").index == 1
    assert choose(s, "min").index == 1          # alias
    assert choose(s, "uwo").index == 1          # variance penalty 0.5 * 2.89 sinks candidate 0
    assert choose(s, "head:0").index == 0
    assert choose(s, "head:2").index == 1
    result = choose(s, "wco")
    assert result.objective == "wco"
    assert result.best_value == pytest.approx(0.4)
    np.testing.assert_array_equal(result.values, s.min)


def test_uwo_trades_mean_against_variance():
    # Same mean (1.0); the spread one loses under uwo but ties under mean -> lowest index.
    s = scores_from_heads([[2.0, 0.0], [1.0, 1.0]])
    assert choose(s, "mean").index == 0
    assert choose(s, "uwo").index == 1


def test_ties_go_to_the_lowest_index():
    s = scores_from_heads([[0.1, 0.1], [0.7, 0.7], [0.3, 0.3], [0.7, 0.7]])
    assert choose(s, "mean").index == 1
    assert argmax_or_none(np.array([2.0, 5.0, 5.0, 5.0], dtype=np.float32)) == 1


def test_nan_never_wins_and_all_nan_raises():
    values = np.array([np.nan, 0.2, np.nan, 0.2], dtype=np.float32)
    assert argmax_or_none(values) == 1
    assert argmax_or_none(np.array([np.nan, np.nan], dtype=np.float32)) is None
    s = scores_from_heads([[np.nan, 1.0], [0.0, 0.0]])
    assert choose(s, "mean").index == 1
    with pytest.raises(InputError, match="NaN"):
        choose(scores_from_heads([[np.nan, 1.0]]), "mean")


def test_bad_objective_and_empty_candidates_are_refused():
    s = scores_from_heads([[0.0, 1.0]])
    with pytest.raises(ValueError, match="head index"):
        choose(s, "head:2")
    with pytest.raises(ValueError, match="unknown objective"):
        choose(s, "median")
    with pytest.raises(InputError, match="at least one candidate"):
        choose(Scores.empty(2), "mean")


@pytest.fixture(scope="module")
def scorer(bundles):
    return ensrm.Scorer(bundles("bert", num_labels=4))


@pytest.mark.parametrize("objective", ["mean", "wco", "uwo", "head:3"])
def test_end_to_end_choice_is_the_argmax_of_the_objective(scorer, objective):
    result = best_of_n(scorer, PROMPT, CANDIDATES, objective=objective)
    direct = scorer.score_texts([PROMPT] * len(CANDIDATES), CANDIDATES)
    np.testing.assert_array_equal(result.scores.heads, direct.heads)
    expected = {"mean": direct.heads.mean(1), "wco": direct.heads.min(1),
                "uwo": direct.heads.mean(1) - scorer.spec.uwo_lambda * direct.heads.var(1),
                "head:3": direct.heads[:, 3]}[objective]
    assert result.index == int(np.argmax(expected))
    assert len(result) == len(CANDIDATES)


def test_end_to_end_mean_and_wco_disagree_on_this_pool(scorer):
    # Four random heads disagree; on this fixed pool the mean's favourite is not the
    # worst-case favourite (seeded model, so this is deterministic).
    assert best_of_n(scorer, PROMPT, CANDIDATES, "mean").index != best_of_n(scorer, PROMPT, CANDIDATES, "wco").index


def test_batch_matches_one_by_one_and_uses_few_model_calls(scorer):
    prompts = ["How do I bake bread at home without a stand mixer?", PROMPT,
               "Explain the difference between a list and a tuple in Python."]
    pools = [CANDIDATES[:3], CANDIDATES, CANDIDATES[3:5]]
    calls = []
    run = scorer.backend.run
    scorer.backend.run = lambda feeds: calls.append(feeds["input_ids"].shape[0]) or run(feeds)
    try:
        batched = best_of_n_batch(scorer, prompts, pools, objective="wco", batch_size=8)
    finally:
        del scorer.backend.run
    assert calls == [8, 5]  # 13 pairs in ceil(13 / 8) model calls
    for prompt, pool, got in zip(prompts, pools, batched):
        alone = best_of_n(scorer, prompt, pool, objective="wco")
        assert got.index == alone.index
        np.testing.assert_allclose(got.values, alone.values, rtol=1e-5, atol=1e-6)


def test_batch_input_errors(scorer):
    with pytest.raises(InputError, match="pair up"):
        best_of_n_batch(scorer, ["a", "b"], [["x"]])
    with pytest.raises(InputError, match=r"candidates_per_prompt\[1\] is empty"):
        best_of_n_batch(scorer, ["a", "b"], [["x"], []])
    with pytest.raises(InputError, match="list of response strings"):
        best_of_n(scorer, "a", "just one string")
    with pytest.raises(ValueError, match="unknown objective"):
        best_of_n(scorer, "a", ["x"], objective="best")


def test_lazy_export():
    assert ensrm.best_of_n is best_of_n
    assert ensrm.best_of_n_batch is best_of_n_batch
