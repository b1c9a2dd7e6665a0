"""ResponseFilter: decisions and reasons, fitted thresholds, JSON round trip, bundle identity."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import ensrm
from ensrm.errors import BundleError, InputError
from ensrm.runtime.filter import REASONS, Decision, ResponseFilter
from ensrm.runtime.scores import Scores
from tests.models import CORPUS

SENTENCES = list(dict.fromkeys(CORPUS))  # the 8 distinct sentences
PAIRS = list(itertools.product(SENTENCES, SENTENCES))  # 64 reference pairs
REF_PROMPTS = [p for p, _ in PAIRS]
REF_RESPONSES = [r for _, r in PAIRS]


@pytest.fixture(scope="module")
def scorer(bundles):
    return ensrm.Scorer(bundles("bert", num_labels=4))


def constructed(rows) -> Scores:
    """Scores with the given (min, std) per row; other aggregates are irrelevant to a wco filter."""
    mins = np.array([r[0] for r in rows], dtype=np.float32)
    stds = np.array([r[1] for r in rows], dtype=np.float32)
    heads = np.stack([mins, mins + 1, mins + 2, mins + 3], axis=1)
    return Scores(heads=heads, mean=mins + 1.5, std=stds, min=mins, uwo=mins)


def test_decisions_and_reasons(scorer):
    flt = ResponseFilter(scorer, objective="wco", min_score=0.0, max_std=1.0)
    scores = constructed([(0.5, 0.5), (-0.5, 0.5), (0.5, 1.5), (-0.5, 1.5), (0.0, 1.0), (np.nan, 0.5)])
    got = flt.decide_scores(scores)
    assert [d.reason for d in got] == ["ok", "score_too_low", "members_disagree",
                                       "score_too_low+members_disagree", "ok", "score_too_low"]
    assert [d.accept for d in got] == [True, False, False, False, True, False]
    assert set(d.reason for d in got) <= set(REASONS)
    first = got[1]
    assert first == Decision(accept=False, reason="score_too_low", score=-0.5, std=0.5, objective="wco",
                             min_score=0.0, max_std=1.0)
    assert first.to_dict()["reason"] == "score_too_low"


def test_checks_are_off_without_thresholds(scorer):
    scores = constructed([(-100.0, 100.0)])
    assert ResponseFilter(scorer).decide_scores(scores)[0].reason == "ok"
    assert ResponseFilter(scorer, max_std=1.0).decide_scores(scores)[0].reason == "members_disagree"
    assert ResponseFilter(scorer, min_score=0.0).decide_scores(scores)[0].reason == "score_too_low"


def test_the_objective_decides_which_score_is_compared(scorer):
    scores = constructed([(-1.0, 0.1)])  # min -1, mean 0.5
    assert ResponseFilter(scorer, "wco", min_score=0.0).decide_scores(scores)[0].reason == "score_too_low"
    assert ResponseFilter(scorer, "mean", min_score=0.0).decide_scores(scores)[0].reason == "ok"
    assert ResponseFilter(scorer, "head:3", min_score=1.5).decide_scores(scores)[0].score == 2.0


def test_bad_thresholds_are_refused(scorer):
    with pytest.raises(ValueError, match="max_std"):
        ResponseFilter(scorer, max_std=-1)
    with pytest.raises(ValueError, match="min_score"):
        ResponseFilter(scorer, min_score=float("nan"))
    with pytest.raises(ValueError, match="unknown objective"):
        ResponseFilter(scorer, objective="avg")
    with pytest.raises(ValueError, match="reject_low_fraction"):
        ResponseFilter.fit(scorer, REF_PROMPTS, REF_RESPONSES, reject_low_fraction=1.0)
    with pytest.raises(InputError, match="at least 2"):
        ResponseFilter.fit(scorer, REF_PROMPTS[:1], REF_RESPONSES[:1])


def test_decide_scores_text_end_to_end(scorer):
    flt = ResponseFilter(scorer, objective="uwo", min_score=0.0, max_std=2.0)
    decisions = flt.decide(REF_PROMPTS[:5], REF_RESPONSES[:5])
    scores = scorer.score_texts(REF_PROMPTS[:5], REF_RESPONSES[:5])
    assert [d.score for d in decisions] == pytest.approx(scores.uwo.tolist(), rel=1e-5, abs=1e-6)
    assert [d.accept for d in decisions] == [bool(u >= 0.0 and s <= 2.0) for u, s in zip(scores.uwo, scores.std)]


def test_fitted_thresholds_are_reference_quantiles(scorer):
    flt = ResponseFilter.fit(scorer, REF_PROMPTS, REF_RESPONSES, objective="wco",
                             reject_low_fraction=0.10, reject_disagree_fraction=0.05)
    scores = scorer.score_texts(REF_PROMPTS, REF_RESPONSES)
    assert flt.min_score == pytest.approx(float(np.quantile(scores.min.astype(np.float64), 0.10)))
    assert flt.max_std == pytest.approx(float(np.quantile(scores.std.astype(np.float64), 0.95)))
    assert flt.fitted == {"records": 64, "reject_low_fraction": 0.10, "reject_disagree_fraction": 0.05}
    decisions = flt.decide_scores(scores)
    low = sum(d.reason in ("score_too_low", "score_too_low+members_disagree") for d in decisions)
    spread = sum(d.reason in ("members_disagree", "score_too_low+members_disagree") for d in decisions)
    assert abs(low - 0.10 * 64) <= 1
    assert abs(spread - 0.05 * 64) <= 1
    off = ResponseFilter.fit(scorer, REF_PROMPTS, REF_RESPONSES, reject_disagree_fraction=None)
    assert off.max_std is None and off.min_score == flt.min_score


def test_json_round_trip(scorer, tmp_path):
    flt = ResponseFilter.fit(scorer, REF_PROMPTS, REF_RESPONSES, objective="uwo")
    path = flt.save(tmp_path / "filter.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filter.json"]  # no temp file left
    data = json.loads(path.read_text())
    assert data["format"] == "ensrm-filter" and data["objective"] == "uwo"
    assert data["bundle"]["source_fingerprint"] == scorer.spec.source_fingerprint
    back = ResponseFilter.load(path, scorer)
    assert (back.objective, back.min_score, back.max_std, back.fitted) == \
           (flt.objective, flt.min_score, flt.max_std, flt.fitted)  # bit-for-bit floats
    scores = scorer.score_texts(REF_PROMPTS, REF_RESPONSES)
    assert back.decide_scores(scores) == flt.decide_scores(scores)


def test_loading_against_another_bundle_is_refused(scorer, bundles, tmp_path):
    path = ResponseFilter(scorer, min_score=0.0).save(tmp_path / "f.json")
    other = ensrm.Scorer(bundles("bert", num_labels=4, seed=1))
    with pytest.raises(BundleError, match="source_fingerprint"):
        ResponseFilter.load(path, other)
    with pytest.warns(UserWarning, match="different bundle"):
        loose = ResponseFilter.load(path, other, strict=False)
    assert loose.min_score == 0.0


def test_precision_mismatch_only_warns(scorer, tmp_path):
    path = tmp_path / "f.json"
    data = ResponseFilter(scorer, min_score=0.0).to_dict()
    data["bundle"]["precision"] = "int8"
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="int8"):
        ResponseFilter.load(path, scorer)


@pytest.mark.parametrize("content, match", [
    ("not json", "not a filter file"),
    ('{"format": "something-else"}', "not an ensrm filter"),
    ('{"format": "ensrm-filter", "version": 9}', "version 9"),
    ('{"format": "ensrm-filter", "version": 1, "objective": "wco", "min_score": null, "max_std": null}',
     "lacks the field 'bundle'"),
])
def test_malformed_filter_files(scorer, tmp_path, content, match):
    path = tmp_path / "f.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        ResponseFilter.load(path, scorer)


def test_missing_file(scorer, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such filter file"):
        ResponseFilter.load(tmp_path / "nope.json", scorer)


def test_lazy_export():
    assert ensrm.ResponseFilter is ResponseFilter
