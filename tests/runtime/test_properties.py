"""Properties of the aggregates and of batching, over random inputs (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensrm.errors import InputError

KINDS = ("bert", "gpt2")
FAST = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scorers(bundles):
    from ensrm import Scorer

    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = Scorer(bundles(kind), verify="size")
        return cache[kind]

    return get


def sequences(max_count: int = 6, max_len: int = 12):
    """Lists of token sequences as lists of unit floats, mapped into a vocabulary later."""
    seq = st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=max_len)
    return st.lists(seq, min_size=1, max_size=max_count)


def to_ids(spec, seqs) -> list[np.ndarray]:
    # Skip the lowest ids (special tokens) so every id is ordinary text.
    low = 5
    return [np.asarray([low + int(u * (spec.vocab_size - low)) for u in s], dtype=np.int64) for s in seqs]


def pad(spec, rows: list[np.ndarray], sides: list[str]) -> tuple[np.ndarray, np.ndarray]:
    seq = max(len(r) for r in rows)
    ids = np.full((len(rows), seq), spec.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, (row, side) in enumerate(zip(rows, sides)):
        cols = slice(0, len(row)) if side == "right" else slice(seq - len(row), seq)
        ids[i, cols], mask[i, cols] = row, 1
    return ids, mask


def assert_aggregate_laws(scores, lam: float):
    heads = scores.heads.astype(np.float64)  # [batch, K]
    assert np.isfinite(heads).all()
    assert (scores.std >= 0).all()
    assert (scores.min <= scores.mean + 1e-5).all()
    np.testing.assert_allclose(scores.mean, heads.mean(axis=1), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(scores.min, heads.min(axis=1), atol=1e-6)
    np.testing.assert_allclose(scores.std, heads.std(axis=1), atol=1e-5, rtol=1e-5)  # population std
    np.testing.assert_allclose(scores.uwo, scores.mean.astype(np.float64) - lam * scores.std.astype(np.float64) ** 2,
                               atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(seqs=sequences())
def test_aggregate_laws_hold_for_random_sequences(scorers, kind, seqs):
    scorer = scorers(kind)
    rows = to_ids(scorer.spec, seqs)
    scores = scorer.score(*pad(scorer.spec, rows, ["right"] * len(rows)))
    assert scores.heads.shape == (len(rows), scorer.num_heads)
    assert_aggregate_laws(scores, scorer.spec.uwo_lambda)


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(seqs=sequences(), data=st.data())
def test_scores_do_not_depend_on_batch_composition_or_order(scorers, kind, seqs, data):
    """Score a set of sequences in a random order and random groups: each equals scoring it alone."""
    scorer = scorers(kind)
    spec = scorer.spec
    rows = to_ids(spec, seqs)
    alone = [scorer.score(r[None], np.ones((1, len(r)), dtype=np.int64)) for r in rows]
    order = data.draw(st.permutations(range(len(rows))), label="order")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(rows) - 1, 1)), max_size=3), label="cuts"))
    sides_choice = ["right"] if spec.architecture == "encoder" else ["right", "left"]
    for group in np.split(np.asarray(order), [c for c in cuts if c < len(rows)]):
        if not len(group):
            continue
        sides = [data.draw(st.sampled_from(sides_choice), label="side") for _ in group]
        scores = scorer.score(*pad(spec, [rows[i] for i in group], sides))
        for j, i in enumerate(group):
            for name in ("heads", "mean", "std", "min", "uwo"):
                np.testing.assert_allclose(getattr(scores, name)[j], getattr(alone[i], name)[0],
                                           atol=1e-5, rtol=1e-5, err_msg=f"{name} of sequence {i}")


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(pairs=st.lists(st.tuples(st.text(max_size=40), st.text(max_size=40)), min_size=1, max_size=5))
def test_score_texts_gives_input_order_and_laws(scorers, kind, pairs):
    """Any printable or not Unicode text: scores in input order, or a named InputError (empty decoder pair)."""
    scorer = scorers(kind)
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    try:
        together = scorer.score_texts(prompts, responses, batch_size=2)
    except InputError as err:
        assert "encodes to no tokens" in str(err)
        return
    assert_aggregate_laws(together, scorer.spec.uwo_lambda)
    for i in range(len(pairs)):
        alone = scorer.score_texts([prompts[i]], [responses[i]])
        np.testing.assert_allclose(together.heads[i], alone.heads[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(text=st.text(alphabet=st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=20))
def test_any_python_string_scores_or_raises_input_error(scorers, kind, text):
    """Any str, lone surrogates included (st.characters() never draws them): scores or a named InputError."""
    scorer = scorers(kind)
    valid = not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    try:
        scores = scorer.score_texts(["prompt"], [text])
    except InputError as err:
        assert not valid and err.field == "responses[0]" and "lone surrogate" in str(err)
        return
    assert valid and np.isfinite(scores.heads).all()
