"""Preference pairs for the eval tests: synthetic pairs (gold-labelled) on the tiny BERT bundle."""

from __future__ import annotations

import json

import pytest

from ensrm.data.synthetic import generate_preferences
from ensrm.evaluate.pairs import PreferencePairs


@pytest.fixture(scope="session")
def eval_bundle(bundles):
    """The tiny seeded BERT bundle (4 heads, random weights: accuracy near chance, many errors)."""
    return bundles("bert", num_labels=4)


@pytest.fixture(scope="session")
def eval_scorer(eval_bundle):
    import ensrm

    return ensrm.Scorer(eval_bundle, threads=1, backend="onnxruntime")  # see test_evaluate.RUNTIME


@pytest.fixture(scope="session")
def synthetic_records():
    """160 held-out synthetic pairs, their aspect as the subset, plus 3 pairs whose two responses are equal (ties)."""
    records = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "subset": r["aspect"]}
               for r in generate_preferences(160, seed=11)]
    for r in records[:3]:
        records.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"], "subset": "tie"})
    return records


@pytest.fixture(scope="session")
def synthetic_pairs(synthetic_records):
    return PreferencePairs.from_records(synthetic_records)


@pytest.fixture()
def write_jsonl(tmp_path):
    """``write_jsonl(records, name="pairs.jsonl")`` -> path; a str record is written as the raw line."""

    def write(records, name="pairs.jsonl"):
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records),
                        encoding="utf-8")
        return path

    return write
