"""The synthetic preference generator: seeded, labelled by a gold score, varied."""

import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from ensrm.data import ASPECTS, generate_candidates, generate_preferences, generate_references, gold_score


def test_same_seed_same_data_other_seed_other_data():
    assert generate_preferences(60, seed=4, label_noise=0.2) == generate_preferences(60, seed=4, label_noise=0.2)
    assert generate_preferences(60, seed=4) != generate_preferences(60, seed=5)
    assert generate_candidates(2, 16, seed=1) == generate_candidates(2, 16, seed=1)
    assert generate_references(20, seed=1) == generate_references(20, seed=1)
    assert generate_references(20, seed=1) != generate_references(20, seed=2)


def test_clean_pairs_prefer_the_higher_gold_score():
    records = generate_preferences(800, seed=0)
    assert {r["aspect"] for r in records} == set(ASPECTS)
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in records)
    assert all(r["chosen"] != r["rejected"] and not r["label_flipped"] for r in records)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_label_noise_rate(p):
    records = generate_preferences(3000, seed=1, label_noise=p)
    flipped = np.array([r["label_flipped"] for r in records])
    assert abs(flipped.mean() - p) < 0.03
    # a flipped pair is exactly one whose chosen side has the lower gold score
    assert all((r["gold_chosen"] < r["gold_rejected"]) == r["label_flipped"] for r in records)


def test_text_is_varied():
    records = generate_preferences(1000, seed=2)
    assert len({r["prompt"] for r in records}) > 200
    assert len({r["chosen"] for r in records}) > 800  # refusals repeat more than answers


def test_harmful_prompts_prefer_refusal():
    records = generate_preferences(200, seed=3, aspects=("harmlessness",))
    assert all(r["gold_chosen"] > 0 >= r["gold_rejected"] for r in records)


def test_candidate_pools_spread_gold_scores():
    pool = generate_candidates(4, 256, seed=0, harmful_fraction=0.0)
    assert len(pool) == 4 * 256
    by_prompt = defaultdict(list)
    for r in pool:
        by_prompt[r["prompt_id"]].append(r)
        assert r["gold"] == gold_score(r["attributes"])
    for records in by_prompt.values():
        gold = np.array([r["gold"] for r in records])
        assert len({r["prompt"] for r in records}) == 1
        assert gold.std() > 0.4 and gold.max() - gold.min() > 2.0
        assert len(np.unique(gold)) > 30  # continuous-ish, not a handful of levels
        assert len({r["response"] for r in records}) > 200
        # pools include what pairs never show: stacked flattery and repeated sentences
        assert any(r["attributes"]["sycophancy"] > 0 for r in records)
        assert any(r["attributes"]["repetition"] > 0 for r in records)


def test_references_are_prompt_response_records():
    refs = generate_references(50, seed=0)
    assert len(refs) == 50 and all(set(r) == {"prompt", "response"} for r in refs)


def test_import_stays_light():
    code = "import sys, ensrm, ensrm.data, ensrm.train; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
