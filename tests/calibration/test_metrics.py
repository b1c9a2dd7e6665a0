import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ensrm.calibration.gate import Gate, evaluate, stress_check
from ensrm.calibration.metrics import compare_scores, flip_rate, rankdata, spearman, top1_agreement
from ensrm.runtime.scores import Scores
from ensrm.spec import EnsembleSpec


def scores_from_heads(heads: np.ndarray, lam: float = 0.5) -> Scores:
    heads = heads.astype(np.float32)
    var = heads.var(axis=1)
    return Scores(heads=heads, mean=heads.mean(1), std=np.sqrt(var), min=heads.min(1), uwo=heads.mean(1) - lam * var)


def test_rankdata_averages_ties():
    assert rankdata(np.array([10.0, 30.0, 20.0, 30.0])).tolist() == [1.0, 3.5, 2.0, 3.5]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-10**6, 10**6), min_size=3, max_size=40, unique=True))
def test_spearman_is_one_under_monotone_maps_and_minus_one_reversed(values):
    x = np.array(values)
    x = np.array(values, dtype=np.float64)
    assert spearman(x, np.exp(x / 1e6) * 5 + 2) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_spearman_matches_pearson_of_ranks_with_ties():
    a = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    b = np.array([2.0, 1.0, 3.0, 3.0, 6.0, 5.0])
    expected = np.corrcoef(rankdata(a), rankdata(b))[0, 1]
    assert spearman(a, b) == pytest.approx(expected)


def test_top1_agreement_identical_reversed_and_noisy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    assert top1_agreement(x, x, 16) == 1.0
    assert top1_agreement(x, -x, 4) == 0.0  # the best becomes the worst
    noisy = top1_agreement(x, x + rng.normal(scale=0.5, size=200), 16)
    assert 0.0 < noisy < 1.0
    with pytest.raises(ValueError, match="at least 16"):
        top1_agreement(x[:5], x[:5], 16)


def test_flip_rate_counts_records_crossing_the_fp32_threshold():
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    assert flip_rate(ref, ref) == 0.0
    assert flip_rate(ref, np.array([0.0, 2.0, 1.4, 3.0])) == 0.5  # records 1 and 2 cross the median 1.5


def test_compare_scores_and_gate_accept_identical_and_reject_noise():
    rng = np.random.default_rng(1)
    heads = rng.normal(size=(120, 4))
    ref = scores_from_heads(heads)
    stress = {"finite": True, "non_finite": []}
    same = evaluate(ref, scores_from_heads(heads), stress, Gate(0.99, 0.95))
    assert same["passed"] and same["spearman"]["min"] == pytest.approx(1.0) and same["top1"]["16"]["uwo"] == 1.0
    noisy = evaluate(ref, scores_from_heads(heads + rng.normal(scale=0.3, size=heads.shape)), stress,
                     Gate(0.99, 0.95))
    assert not noisy["passed"]
    assert any("Spearman" in r for r in noisy["reasons"]) and any("top-1" in r for r in noisy["reasons"])
    report = compare_scores(ref, ref)
    assert set(report["spearman"]) == {"mean", "std", "min", "uwo"} and len(report["spearman_heads"]) == 4


def test_gate_rejects_non_finite_scores_even_when_ranks_agree():
    heads = np.random.default_rng(2).normal(size=(40, 3))
    bad = heads.copy()
    bad[0, 0] = np.nan
    report = evaluate(scores_from_heads(heads), scores_from_heads(bad), {"finite": True, "non_finite": []},
                      Gate(0.0))
    assert not report["passed"] and "non-finite scores" in report["reasons"][0]


class _NaNAtFullLength:
    """A backend whose outputs overflow at the maximum length, as a broken fp16 graph would."""

    def run(self, feeds):
        batch, seq = feeds["input_ids"].shape
        value = np.full(batch, np.inf if seq == 16 else 0.0, dtype=np.float32)
        return {"heads": np.zeros((batch, 2), np.float32), "ens_mean": value, "ens_std": value,
                "ens_min": value, "ens_uwo": value}


def test_stress_battery_reaches_the_maximum_length_and_catches_overflow():
    spec = EnsembleSpec(num_heads=2, architecture="encoder", model_type="bert", pooling="cls",
                        inputs=("input_ids", "attention_mask", "token_type_ids"), max_length=16,
                        vocab_size=5000, pad_token_id=0)
    report = stress_check(_NaNAtFullLength(), spec)
    assert not report["finite"] and report["non_finite"][0].startswith("ens_mean at shape [4, 16]")
