"""Loading preference data, the held-out split, label noise and bootstrap counts."""

import json

import numpy as np
import pytest

from ensrm.errors import InputError, InputFileError
from ensrm.train.pairs import add_label_noise, bootstrap_counts, load_preferences, split_pairs

PAIR = {"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "Go away."}


def test_malformed_jsonl_reports_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    bad = '{"prompt": "x", "chosen": 3, "rejected": "y"}\n'
    path.write_text(json.dumps(PAIR) + "\n\n" + json.dumps(PAIR) + "\n" + bad)
    with pytest.raises(InputFileError) as info:
        load_preferences(path)
    assert info.value.line == 4 and "'chosen'" in str(info.value)


def test_trainer_rejects_malformed_jsonl_before_loading_a_model(tmp_path):
    pytest.importorskip("torch")
    from ensrm.train import train_reward_model

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + "{not json\n")
    with pytest.raises(InputFileError, match=r"prefs.jsonl:2: not valid JSON"):
        train_reward_model(tmp_path / "no-model", path, tmp_path / "out", progress=False)


def test_list_input_is_validated():
    with pytest.raises(InputError, match="preference 1: field 'rejected'"):
        load_preferences([PAIR, {"prompt": "a", "chosen": "b"}])
    with pytest.raises(InputError, match="no preference pairs"):
        load_preferences([])


def test_split_is_seeded_and_disjoint():
    records = [{**PAIR, "prompt": str(i)} for i in range(50)]
    a, b = split_pairs(records, 0.2, seed=0), split_pairs(records, 0.2, seed=0)
    assert a == b and len(a.eval) == 10 and len(a.train) == 40
    assert {r["prompt"] for r in a.train}.isdisjoint(r["prompt"] for r in a.eval)
    assert split_pairs(records, 0.0, seed=0).eval == []


def test_label_noise_swaps_about_p():
    records = [{**PAIR, "prompt": str(i)} for i in range(4000)]
    noisy = add_label_noise(records, 0.25, seed=3)
    swapped = np.mean([r["chosen"] == PAIR["rejected"] for r in noisy])
    assert abs(swapped - 0.25) < 0.03
    assert records[0]["chosen"] == PAIR["chosen"]  # inputs untouched


def test_bootstrap_counts_differ_per_head_and_sum_to_n():
    counts = bootstrap_counts(500, 3, seed=0, bootstrap=True)  # [n, K]
    assert counts.shape == (500, 3) and np.all(counts.sum(axis=0) == 500)
    assert not np.array_equal(counts[:, 0], counts[:, 1])
    assert np.all(bootstrap_counts(5, 2, seed=0, bootstrap=False) == 1)
