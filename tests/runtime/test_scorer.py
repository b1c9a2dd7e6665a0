"""Scorer: text scoring, providers, precision variants and the input checks users hit first."""

from __future__ import annotations

import numpy as np
import pytest

import ensrm
from ensrm.errors import BundleError, InputError, ProviderError


@pytest.fixture(scope="module")
def bert(bundles):
    return ensrm.Scorer(bundles("bert"))


def test_score_texts_returns_input_order_despite_length_grouping(bert):
    prompts = ["a " * n for n in (30, 1, 12, 5, 40, 2)]
    responses = ["reply"] * len(prompts)
    together = bert.score_texts(prompts, responses, batch_size=2)
    alone = [bert.score_texts([p], [r]).heads[0] for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(together.heads, np.stack(alone), atol=1e-5)


def test_score_texts_matches_pre_tokenised_scoring(bert, checkpoints):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(checkpoints("bert"))
    prompts, responses = ["What is two plus two?", "Name a colour"], ["Four.", "Blue, like the sky."]
    enc = tok(prompts, responses, padding=True, return_tensors="np")
    expected = bert.score(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    np.testing.assert_allclose(bert.score_texts(prompts, responses).heads, expected.heads, atol=1e-5)


def test_truncation_policy(bert):
    long = "word " * 500
    cut = bert.score_texts(["q"], [long])
    assert cut.heads.shape == (1, 4)
    with pytest.raises(InputError, match="above the model's maximum 128"):
        bert.score_texts(["q"], [long], truncation=False)
    ids = np.ones((1, 129), dtype=np.int64)
    with pytest.raises(InputError, match="exceeds the model's maximum 128"):
        bert.score(ids, np.ones_like(ids))


def test_large_batches_are_split(bundles):
    small = ensrm.Scorer(bundles("bert"), max_batch_size=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 900, size=(10, 9))
    mask = np.ones_like(ids)
    np.testing.assert_allclose(small.score(ids, mask).heads, ensrm.Scorer(bundles("bert")).score(ids, mask).heads,
                               atol=1e-5)


@pytest.mark.parametrize("ids,mask,message", [
    (np.ones((2, 3), dtype=np.float32), np.ones((2, 3), dtype=np.int64), "input_ids must hold integers"),
    (np.ones((3,), dtype=np.int64), np.ones((3,), dtype=np.int64), "must be 2-D"),
    (np.ones((2, 3), dtype=np.int64), np.ones((2, 4), dtype=np.int64), "attention_mask has shape"),
    (np.full((1, 3), 10**6, dtype=np.int64), np.ones((1, 3), dtype=np.int64), "outside the vocabulary"),
    (np.full((1, 3), -1, dtype=np.int64), np.ones((1, 3), dtype=np.int64), "outside the vocabulary"),
    (np.ones((2, 3), dtype=np.int64), np.array([[1, 1, 1], [0, 0, 0]]), "row 1 is all zeros"),
    (np.ones((1, 3), dtype=np.int64), np.array([[1, 2, 1]]), "only 0 and 1"),
    (np.ones((1, 3), dtype=np.int64), np.array([[0, 1, 1]]), "not right-padded"),
])
def test_bad_arrays_raise_input_error(bert, ids, mask, message):
    with pytest.raises(InputError, match=message):
        bert.score(ids, mask)


@pytest.mark.parametrize("prompts,responses,message", [
    (["a", "b"], ["x"], "2 prompts but 1 responses"),
    ("a prompt", ["x"], "must be a list of strings"),
    (["a", None], ["x", "y"], r"prompts\[1\] must be a string"),
    (["a"], [3], r"responses\[0\] must be a string"),
])
def test_bad_texts_raise_input_error(bert, prompts, responses, message):
    with pytest.raises(InputError, match=message):
        bert.score_texts(prompts, responses)


def test_empty_batch_gives_empty_scores(bert):
    empty = bert.score(np.zeros((0, 5), dtype=np.int64), np.zeros((0, 5), dtype=np.int64))
    assert empty.heads.shape == (0, 4) and empty.uwo.shape == (0,)
    assert len(bert.score_texts([], [])) == 0


def test_missing_provider_is_an_error_listing_available(bundles):
    with pytest.raises(ProviderError, match="CPUExecutionProvider"):
        ensrm.Scorer(bundles("bert"), providers=["cuda"])


def test_missing_precision_variant_is_named(bundles):
    with pytest.raises(BundleError, match="no int8 variant"):
        ensrm.Scorer(bundles("bert"), precision="int8")


def test_token_type_ids_default_to_one_segment(bert):
    ids = np.array([[101, 2023, 2003, 102]])
    mask = np.ones_like(ids)
    np.testing.assert_allclose(bert.score(ids, mask).heads, bert.score(ids, mask, np.zeros_like(ids)).heads)


def test_non_zero_token_types_refused_where_unused(bundles):
    scorer = ensrm.Scorer(bundles("roberta"))
    ids = np.array([[0, 50, 60, 2]])
    with pytest.raises(InputError, match="takes no token_type_ids"):
        scorer.score(ids, np.ones_like(ids), np.ones_like(ids))
