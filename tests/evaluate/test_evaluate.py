"""``ensrm.evaluate`` on a real bundle: the report equals a direct computation from ``Scorer.score_texts``."""

from __future__ import annotations

import numpy as np
import pytest

from ensrm.errors import InputError, InputFileError
from ensrm.evaluate import stats
from ensrm.evaluate.analysis import REWARDBENCH_WEIGHTS, analyse
from ensrm.evaluate.pairs import PreferencePairs, read_pairs
from ensrm.evaluate.run import evaluate_pairs, resolve_precisions
from ensrm.runtime.config import ScorerConfig
from ensrm.runtime.filter import ResponseFilter
from ensrm.runtime.scores import Scores

AGGREGATES = {"mean": "mean", "wco": "min", "uwo": "uwo"}


#: onnxruntime's CPU kernels give a text the same score in any batch, so a direct computation and a
#: second scoring pass (the written filter) agree exactly; OpenVINO's round by batch shape (~1e-7).
RUNTIME = {"threads": 1, "backend": "onnxruntime"}


def direct_scores(scorer, pairs):
    """Chosen and rejected scores straight from Scorer.score_texts (one call over every text)."""
    n = len(pairs)
    scores = scorer.score_texts(pairs.prompts + pairs.prompts, pairs.chosen + pairs.rejected)
    return scores.take(np.arange(n)), scores.take(np.arange(n, 2 * n))


def plain_accuracy(margin):
    return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margin.tolist()) / len(margin)


def plain_auroc(u, margin):
    wrong = [x for x, m in zip(u.tolist(), margin.tolist()) if m < 0]
    right = [x for x, m in zip(u.tolist(), margin.tolist()) if m > 0]
    return sum((w > r) + 0.5 * (w == r) for w in wrong for r in right) / (len(wrong) * len(right))


@pytest.fixture(scope="module")
def evaluated(eval_bundle, synthetic_pairs):
    report, _ = evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), synthetic_pairs, resamples=200)
    return report


def test_accuracy_and_auroc_equal_a_direct_computation(evaluated, eval_scorer, synthetic_pairs):
    chosen, rejected = direct_scores(eval_scorer, synthetic_pairs)
    result = evaluated["runs"][0]["analysis"]
    overall = result["accuracy"]["overall"]
    for k in range(chosen.heads.shape[1]):
        margin = chosen.heads[:, k].astype(np.float64) - rejected.heads[:, k]
        assert abs(overall[f"head:{k}"]["value"] - plain_accuracy(margin)) <= 1e-9
    for name, attribute in AGGREGATES.items():
        margin = getattr(chosen, attribute).astype(np.float64) - getattr(rejected, attribute)
        assert abs(overall[name]["value"] - plain_accuracy(margin)) <= 1e-9
        low, high = overall[name]["interval"]
        assert low <= overall[name]["value"] <= high
        response_std = np.maximum(chosen.std, rejected.std).astype(np.float64)
        auroc = result["uncertainty"]["auroc"]["response_std"][name]["value"]
        assert abs(auroc - plain_auroc(response_std, margin)) <= 1e-9
        margin_std = (chosen.heads.astype(np.float64) - rejected.heads).std(axis=1)
        assert abs(result["uncertainty"]["auroc"]["margin_std"][name]["value"]
                   - plain_auroc(margin_std, margin)) <= 1e-9
    # the tiny random model is wrong often enough for the uncertainty figures to mean something
    assert 20 < result["uncertainty"]["wrong"] < len(synthetic_pairs) - 20


def test_ties_count_half_and_are_reported(evaluated, synthetic_pairs):
    result = evaluated["runs"][0]["analysis"]
    assert result["ties"]["uwo"] == 3 and result["uncertainty"]["ties"] == 3  # the pairs with chosen == rejected
    tie = result["accuracy"]["subsets"]["tie"]
    assert tie["pairs"] == 3
    assert all(tie[name]["value"] == 0.5 for name in ("head:0", "mean", "wco", "uwo"))
    assert tie["uwo"]["interval"] == [0.5, 0.5]


def test_subsets_group_the_pairs(evaluated, eval_scorer, synthetic_pairs):
    chosen, rejected = direct_scores(eval_scorer, synthetic_pairs)
    margin = chosen.uwo.astype(np.float64) - rejected.uwo
    subsets = evaluated["runs"][0]["analysis"]["accuracy"]["subsets"]
    labels = np.array(synthetic_pairs.subsets)
    assert set(subsets) == set(labels)
    assert evaluated["subsets"] == {s: int((labels == s).sum()) for s in sorted(set(labels))}
    for name, row in subsets.items():
        assert row["pairs"] == int((labels == name).sum())
        assert abs(row["uwo"]["value"] - plain_accuracy(margin[labels == name])) <= 1e-9
    assert "rewardbench" not in evaluated["runs"][0]["analysis"]["accuracy"]  # no RewardBench names here


def constant_scores(values):
    """Scores of 2 heads whose every head equals ``values``."""
    values = np.asarray(values, dtype=np.float32)
    heads = np.stack([values, values], axis=1)
    zero = np.zeros_like(values)
    return Scores(heads=heads, mean=values, std=zero, min=values, uwo=values)


def test_rewardbench_sections_weight_subsets_by_its_counts():
    subsets = ["alpacaeval-easy"] * 4 + ["mt-bench-hard"] * 2 + ["math-prm"] * 4 + ["hep-python"] * 2 + ["mine"] * 2
    margin = np.array([1, 1, 1, -1] + [1, -1] + [1, -1, -1, -1] + [1, 1] + [1, 1], dtype=np.float64)
    result = analyse(constant_scores(margin), constant_scores(np.zeros(len(margin))), subsets, objective="mean",
                     weights=stats.bootstrap_weights(np.unique(subsets, return_inverse=True)[1], 50))
    sections = result["accuracy"]["rewardbench"]
    assert sections["subsets"] == {"Chat": ["alpacaeval-easy"], "Chat Hard": ["mt-bench-hard"],
                                   "Reasoning": ["math-prm", "hep-python"]}
    assert "Safety" in sections["missing"] and "hep-cpp" in sections["missing"]["Reasoning"]
    scores = sections["scores"]
    w_prm, w_hep = REWARDBENCH_WEIGHTS["math-prm"], REWARDBENCH_WEIGHTS["hep-python"]
    assert scores["Chat"]["mean"]["value"] == 0.75
    assert scores["Chat Hard"]["mean"]["value"] == 0.5
    assert scores["Reasoning"]["mean"]["value"] == pytest.approx((w_prm * 0.25 + w_hep * 1.0) / (w_prm + w_hep))
    assert scores["score"]["mean"]["value"] == pytest.approx(
        (0.75 + 0.5 + scores["Reasoning"]["mean"]["value"]) / 3)
    assert result["accuracy"]["subsets"]["mine"]["pairs"] == 2


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I boil an egg?"}]


def test_conversational_records_read_like_text_records(write_jsonl, eval_scorer):
    parts = [{"type": "text", "text": "Simmer it"}, {"type": "text", "text": "8 min."}]
    good = [{"role": "assistant", "content": parts}]
    bad = [{"role": "assistant", "content": "No."}]
    path = write_jsonl([
        {"prompt": "How do I boil an egg?", "chosen": "Simmer it\n\n8 min.", "rejected": "No."},
        {"prompt": CONVERSATION, "chosen": good, "rejected": bad, "subset": "conv"},
        {"chosen": CONVERSATION + good, "rejected": CONVERSATION + bad},  # TRL's implicit prompt
    ])
    pairs = read_pairs(path)
    assert pairs.prompts == ["How do I boil an egg?"] * 3
    assert pairs.chosen == ["Simmer it\n\n8 min."] * 3 and pairs.rejected == ["No."] * 3
    assert pairs.subsets == [None, "conv", None] and pairs.lines == [1, 2, 3]
    chosen, rejected = direct_scores(eval_scorer, pairs)
    assert np.array_equal(chosen.heads[0], chosen.heads[1]) and np.array_equal(chosen.heads[0], chosen.heads[2])


@pytest.mark.parametrize("line, problem", [
    ('{"prompt": "Hi", "chosen": "Hello"}', "missing field 'rejected'"),
    ('{"prompt": "Hi", "chosen": "Hello", "rejected": 3}', "field 'rejected' must be a string or a list"),
    ('{"prompt": "Hi", "chosen": "Hello", "rejected": "No", "subset": 1}', "field 'subset' must be a string"),
    ('{"prompt": "Hi", "chosen": "Hello", "rejected": "No"', "not valid JSON"),
    ('["Hi", "Hello", "No"]', "expected a JSON object"),
    ('{"chosen": "Hello", "rejected": "No"}', "missing field 'prompt'"),
    ('{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}',
     "share no leading messages"),
    ('{"prompt": "Hi", "chosen": [{"role": "user", "content": "Hello"}], "rejected": "No"}',
     "chosen has no assistant message"),
    ('{"prompt": [{"role": "system", "content": "x"}], "chosen": "a", "rejected": "b"}',
     "prompt has no 'user' message"),
])
def test_a_bad_record_is_reported_by_its_line(write_jsonl, line, problem):
    good = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    path = write_jsonl([good, "", good, line, good])
    with pytest.raises(InputFileError) as info:
        read_pairs(path)
    assert info.value.line == 4 and problem in info.value.problem
    assert str(info.value).startswith(f"{path}:4: ")


def test_an_untokenizable_text_is_reported_by_its_line(write_jsonl, eval_bundle):
    good = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    path = write_jsonl([good, good, '{"prompt": "Hi", "chosen": "Hello", "rejected": "bad \\ud800 text"}'])
    with pytest.raises(InputFileError) as info:
        evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), path, resamples=0)
    assert info.value.line == 3 and info.value.problem.startswith("rejected: ")
    assert "lone surrogate" in info.value.problem
    with pytest.raises(InputError, match="record 2: rejected"):
        evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), read_pairs(path), resamples=0)


def test_a_checkpoint_scoring_error_is_reported_by_its_line(write_jsonl, eval_bundle, monkeypatch):
    """The torch run scores the 2n chosen+rejected texts in order: an error about text j names its record's line."""
    import ensrm.evaluate.checkpoint

    def fail(sources, scorer, prompts, responses, **options):
        assert len(responses) == 6
        raise InputError("responses[4] has a lone surrogate", field="responses[4]")  # the rejected of pair 1

    monkeypatch.setattr(ensrm.evaluate.checkpoint, "score_checkpoint", fail)
    good = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    path = write_jsonl([good, "", dict(good, rejected="No"), good])
    with pytest.raises(InputFileError) as info:
        evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), path, resamples=0, checkpoint=["source"])
    assert info.value.line == 3
    assert info.value.problem == "rejected: the (prompt, rejected) pair has a lone surrogate"


@pytest.mark.parametrize("options, problem", [
    ({"resamples": -1}, "`resamples` must be >= 0"),
    ({"keep": 0.5, "target_accuracy": 0.9}, "exactly one of `target_accuracy` and `keep`"),
    ({"keep": 1.5}, r"`keep` must be in \(0, 1\]"),
    ({"keep": 0.5, "min_score": float("nan")}, "`min_score` must be a finite number"),
])
def test_bad_options_are_refused_before_any_scoring(synthetic_pairs, tmp_path, options, problem):
    with pytest.raises(ValueError, match=problem):  # the bundle is never opened
        evaluate_pairs(ScorerConfig(tmp_path / "no-bundle"), synthetic_pairs, **options)


def test_an_empty_file_is_refused(write_jsonl, eval_bundle):
    with pytest.raises(InputFileError, match="no preference records"):
        read_pairs(write_jsonl(["", "  "]))
    with pytest.raises(InputError, match="no preference pairs"):
        evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), PreferencePairs.from_records([]))


@pytest.mark.parametrize("option", [{"keep": 0.7}, {"target_accuracy": 0.6}])
def test_the_filter_reproduces_the_reported_keep_rate_exactly(option, eval_bundle, eval_scorer, synthetic_pairs,
                                                              tmp_path):
    report, response_filter = evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), synthetic_pairs, resamples=100,
                                             **option)
    path = response_filter.save(tmp_path / "filter.json")
    loaded = ResponseFilter.load(path, eval_scorer)
    assert loaded.max_std == report["filter"]["max_std"] is not None
    # decided the way a user would: each side scored on its own, in other batches
    accept_c = np.array([d.accept for d in loaded.decide(synthetic_pairs.prompts, synthetic_pairs.chosen)])
    accept_r = np.array([d.accept for d in loaded.decide(synthetic_pairs.prompts, synthetic_pairs.rejected,
                                                         batch_size=7)])
    expected = report["filter"]["expected"]
    kept = accept_c & accept_r
    assert kept.mean() == expected["pair_keep"]["value"]
    assert kept.sum() == report["filter"]["kept_pairs"]
    assert np.concatenate([accept_c, accept_r]).mean() == expected["response_keep"]["value"]
    chosen, rejected = direct_scores(eval_scorer, synthetic_pairs)
    margin = chosen.uwo.astype(np.float64) - rejected.uwo
    assert abs(expected["accuracy"]["value"] - plain_accuracy(margin[kept])) <= 1e-9
    if "keep" in option:
        assert kept.mean() >= 0.7
    else:
        assert expected["accuracy"]["value"] >= 0.6
    assert loaded.fitted["method"] == "ensrm eval"


def test_a_score_threshold_joins_the_disagreement_threshold(eval_bundle, eval_scorer, synthetic_pairs):
    chosen, rejected = direct_scores(eval_scorer, synthetic_pairs)
    floor = float(np.quantile(np.r_[chosen.uwo, rejected.uwo], 0.1))
    report, response_filter = evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), synthetic_pairs, resamples=0,
                                             keep=0.5, min_score=floor)
    assert response_filter.min_score == floor
    accept = lambda s: (s.uwo >= floor) & (s.std <= response_filter.max_std)  # noqa: E731
    kept = accept(chosen) & accept(rejected)
    assert kept.mean() == report["filter"]["expected"]["pair_keep"]["value"] >= 0.5


def test_an_unreachable_target_is_refused(eval_bundle, synthetic_pairs):
    with pytest.raises(ValueError, match="no disagreement threshold reaches accuracy 1"):
        evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), synthetic_pairs, resamples=0, target_accuracy=1.0)


def test_every_run_scores_all_texts_in_one_call(eval_bundle, synthetic_pairs, monkeypatch):
    from ensrm.runtime.scorer import Scorer

    calls = []
    original = Scorer.score_texts

    def spy(self, prompts, responses, **kwargs):
        calls.append(len(prompts))
        return original(self, prompts, responses, **kwargs)

    monkeypatch.setattr(Scorer, "score_texts", spy)
    evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), synthetic_pairs, resamples=0)
    distinct = set(zip(synthetic_pairs.prompts * 2, synthetic_pairs.chosen + synthetic_pairs.rejected))
    assert calls == [len(distinct)] and len(distinct) < 2 * len(synthetic_pairs)  # repeated texts scored once


def test_precisions_must_be_accepted_ones(eval_bundle):
    assert resolve_precisions(eval_bundle, "fp32", "all") == ["fp32"]
    assert resolve_precisions(eval_bundle, "fp32", None) == ["fp32"]
    with pytest.raises(ValueError, match="int8: not an accepted precision"):
        resolve_precisions(eval_bundle, "fp32", "fp32,int8")


def test_the_checkpoint_in_torch_agrees_with_its_export(checkpoints, eval_bundle, synthetic_pairs):
    pairs = PreferencePairs(*(column[:40] for column in (synthetic_pairs.prompts, synthetic_pairs.chosen,
                                                          synthetic_pairs.rejected, synthetic_pairs.subsets,
                                                          synthetic_pairs.lines)))
    report, _ = evaluate_pairs(ScorerConfig(eval_bundle, **RUNTIME), pairs, resamples=50,
                               checkpoint=[checkpoints("bert", 4)])
    assert [run["name"] for run in report["runs"]] == ["fp32", "checkpoint (torch)"]
    comparison = report["comparisons"]["checkpoint (torch)"]
    assert max(comparison["max_abs_diff"].values()) < 1e-4
    assert comparison["same_winner"]["uwo"] == 1.0
    assert comparison["accuracy_delta"]["uwo"]["value"] == 0.0


def test_eval_needs_no_torch(eval_bundle, synthetic_records, write_jsonl, tmp_path):
    """Everything but --checkpoint runs where torch, transformers and onnx cannot be imported."""
    import json
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    path = write_jsonl(synthetic_records[:30])
    code = textwrap.dedent(f"""
        import importlib.abc, json, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "transformers", "onnx", "onnxscript", "safetensors"}}:
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Block())
        from ensrm.evaluate import evaluate_file
        from ensrm.runtime.config import ScorerConfig
        config = ScorerConfig({str(eval_bundle)!r}, threads=1, backend='onnxruntime')
        report = evaluate_file(config, {str(path)!r}, {str(tmp_path / "r")!r},
                               write_filter={str(tmp_path / "f.json")!r}, keep=0.5, resamples=20)
        print(json.dumps([report["pairs"], sorted(report["files"])]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [30, ["accuracy_png", "deciles_png", "diversity_png", "json", "markdown",
                                              "selective_png"]]
