"""Every kind of bad input to the scorer ends in an InputError naming the field, or a documented result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ensrm.errors import EnsrmError, InputError

KINDS = ("bert", "gpt2")  # an encoder with token_type_ids and cls pooling; a decoder


@pytest.fixture(scope="module")
def scorers(bundles):
    from ensrm import Scorer

    cache = {}

    def get(kind: str, **options):
        key = (kind, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = Scorer(bundles(kind), verify="size", **options)
        return cache[key]

    return get


def batch(scorer, rows: int = 4, seq: int = 7, seed: int = 0):
    """Random in-vocabulary ids with right padding of varied lengths (row 0 full length)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, scorer.spec.vocab_size, size=(rows, seq), dtype=np.int64)
    mask = np.ones((rows, seq), dtype=np.int64)
    for r in range(1, rows):
        mask[r, seq - r % seq:] = 0
    ids[mask == 0] = scorer.spec.pad_token_id
    return ids, mask


def close(a, b, atol=1e-5):
    for name in ("heads", "mean", "std", "min", "uwo"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, rtol=1e-5, err_msg=name)


def refused(call, field, *fragments):
    with pytest.raises(InputError) as info:
        call()
    err = info.value
    assert isinstance(err, EnsrmError) and isinstance(err, ValueError)
    assert err.field == field, (err.field, str(err))
    for fragment in fragments:
        assert fragment in str(err), (fragment, str(err))
    return err


# -- token ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make, field, fragment", [
    (lambda ids, mask: (ids.astype(np.float64), mask), "input_ids", "dtype float64"),
    (lambda ids, mask: (ids.astype(np.float32) + 0.5, mask), "input_ids", "dtype float32"),
    (lambda ids, mask: (ids.astype(object), mask), "input_ids", "dtype object"),
    (lambda ids, mask: (ids.astype(str), mask), "input_ids", "must hold integers"),
    (lambda ids, mask: (None, mask), "input_ids", "got None"),
    (lambda ids, mask: (ids[0], mask[0]), "input_ids", "got shape (7,)"),
    (lambda ids, mask: (ids[None], mask[None]), "input_ids", "got shape (1, 4, 7)"),
    (lambda ids, mask: (ids, mask.astype(np.float32)), "attention_mask", "dtype float32"),
    (lambda ids, mask: (ids, None), "attention_mask", "got None"),
    (lambda ids, mask: ([[1, 2, 3], [4, 5]], [[1, 1, 1], [1, 1]]), "input_ids", "rectangular"),
    (lambda ids, mask: (ids[:, :5], mask), "attention_mask", "shape (4, 7)"),
    (lambda ids, mask: (ids, mask[:3]), "attention_mask", "shape (3, 7)"),
])
def test_malformed_arrays_are_refused(scorers, kind, make, field, fragment):
    scorer = scorers(kind)
    ids, mask = make(*batch(scorer))
    refused(lambda: scorer.score(ids, mask), field, fragment)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [-1, -(2 ** 40), "vocab", "vocab+1000"])
def test_ids_outside_the_vocabulary_are_refused(scorers, kind, bad):
    scorer = scorers(kind)
    ids, mask = batch(scorer)
    value = {"vocab": scorer.spec.vocab_size, "vocab+1000": scorer.spec.vocab_size + 1000}.get(bad, bad)
    ids[2, 1] = value
    err = refused(lambda: scorer.score(ids, mask), "input_ids", f"input_ids[2, 1] = {value}",
                  f"[0, {scorer.spec.vocab_size})")
    assert err.actual == value


def test_uint64_beyond_int64_is_refused(scorers):
    scorer = scorers("gpt2")
    ids, mask = batch(scorer)
    ids = ids.astype(np.uint64)
    ids[0, 0] = np.uint64(2 ** 63 + 5)
    refused(lambda: scorer.score(ids, mask), "input_ids", "beyond int64")


@pytest.mark.parametrize("kind", KINDS)
def test_padding_positions_may_hold_any_id(scorers, kind):
    """Ids under mask 0 never reach attention; -100 or huge values there score like the pad id."""
    scorer = scorers(kind)
    ids, mask = batch(scorer)
    reference = scorer.score(ids, mask)
    odd = ids.copy()
    odd[mask == 0] = -100
    odd[3, -1] = 10 ** 9
    before = odd.copy()
    close(scorer.score(odd, mask), reference)
    np.testing.assert_array_equal(odd, before)  # the caller's array is not modified


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["fortran", "strided", "read-only", "list", "tuple", "int32", "uint16",
                                     "bool-mask", "int8-mask"])
def test_equivalent_array_forms_give_identical_scores(scorers, kind, variant):
    scorer = scorers(kind)
    ids, mask = batch(scorer)
    reference = scorer.score(ids, mask)
    if variant == "fortran":
        args = np.asfortranarray(ids), np.asfortranarray(mask)
        assert not args[0].flags.c_contiguous
    elif variant == "strided":
        wide_ids = np.repeat(ids, 2, axis=1)
        wide_mask = np.repeat(mask, 2, axis=1)
        args = wide_ids[:, ::2], wide_mask[:, ::2]
        np.testing.assert_array_equal(args[0], ids)
        assert not args[0].flags.c_contiguous
    elif variant == "read-only":
        ids.flags.writeable = False
        mask.flags.writeable = False
        args = ids, mask
    elif variant == "list":
        args = ids.tolist(), mask.tolist()
    elif variant == "tuple":
        args = tuple(map(tuple, ids.tolist())), tuple(map(tuple, mask.tolist()))
    elif variant in ("int32", "uint16"):
        args = ids.astype(variant), mask.astype(variant)
    elif variant == "bool-mask":
        args = ids, mask.astype(bool)
    else:
        args = ids, mask.astype(np.int8)
    scores = scorer.score(*args)
    assert scores.heads.dtype == np.float32 and scores.heads.shape == (4, scorer.num_heads)
    np.testing.assert_array_equal(scores.heads, reference.heads)
    np.testing.assert_array_equal(scores.uwo, reference.uwo)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("empty", [lambda: ([], []), lambda: (np.zeros((0, 5), np.int64), np.zeros((0, 5), np.int64)),
                                   lambda: (np.zeros((0, 0), np.int32), np.zeros((0, 0), np.int32))])
def test_empty_batch_gives_empty_results(scorers, kind, empty):
    scorer = scorers(kind)
    scores = scorer.score(*empty())
    assert scores.heads.shape == (0, scorer.num_heads)
    for name in ("mean", "std", "min", "uwo"):
        assert getattr(scores, name).shape == (0,)
        assert getattr(scores, name).dtype == np.float32
    assert len(scores) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_rows_without_tokens_are_refused(scorers, kind):
    scorer = scorers(kind)
    refused(lambda: scorer.score([[]], [[]]), "input_ids", "sequence length 0")


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_one_equals_its_row_in_a_batch(scorers, kind):
    scorer = scorers(kind)
    ids, mask = batch(scorer)
    full = scorer.score(ids, mask)
    for r in range(len(ids)):
        n = int(mask[r].sum())
        alone = scorer.score(ids[r:r + 1, :n], mask[r:r + 1, :n])
        assert alone.heads.shape == (1, scorer.num_heads)
        close(alone, full.take(np.array([r])))


def test_token_type_ids_rules(scorers):
    bert, gpt2 = scorers("bert"), scorers("gpt2")
    ids, mask = batch(bert)
    types = np.zeros_like(ids)
    close(bert.score(ids, mask, types), bert.score(ids, mask))
    types[0, 3] = 2
    refused(lambda: bert.score(ids, mask, types), "token_type_ids", "0 or 1")
    refused(lambda: bert.score(ids, mask, types[:, :3]), "token_type_ids", "shape")
    ids, mask = batch(gpt2)
    close(gpt2.score(ids, mask, np.zeros_like(ids)), gpt2.score(ids, mask))
    refused(lambda: gpt2.score(ids, mask, np.ones_like(ids)), "token_type_ids", "takes no token_type_ids")


# -- masks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [2, -1, 255])
def test_mask_values_other_than_0_and_1_are_refused(scorers, kind, value):
    scorer = scorers(kind)
    ids, mask = batch(scorer)
    mask[1, 2] = value
    err = refused(lambda: scorer.score(ids, mask), "attention_mask", "only 0 and 1", f"[1, 2] = {value}")
    assert err.actual == value


@pytest.mark.parametrize("kind", KINDS)
def test_an_all_zero_mask_row_is_refused(scorers, kind):
    scorer = scorers(kind)
    ids, mask = batch(scorer)
    mask[2] = 0
    refused(lambda: scorer.score(ids, mask), "attention_mask", "row 2 is all zeros")


@pytest.mark.parametrize("kind", KINDS)
def test_a_mask_with_a_gap_is_refused(scorers, kind):
    scorer = scorers(kind)
    ids, mask = batch(scorer)
    mask[0] = [1, 1, 0, 1, 1, 1, 1]
    refused(lambda: scorer.score(ids, mask), "attention_mask", "row 0", "1101111")


def test_encoders_refuse_left_padding(scorers):
    scorer = scorers("bert")
    ids, mask = batch(scorer)
    left_ids, left_mask = ids.copy(), mask.copy()
    n = int(mask[3].sum())
    left_mask[3] = 0
    left_mask[3, -n:] = 1
    left_ids[3, -n:] = ids[3, :n]
    err = refused(lambda: scorer.score(left_ids, left_mask), "attention_mask", "row 3 is not right-padded",
                  "1…1 0…0")
    assert err.expected == "right padding 1…1 0…0"


@pytest.mark.parametrize("kind", ["gpt2"])
def test_decoders_take_mixed_padding_in_one_batch(bundles, kind):
    """Left-, right- and both-side-padded rows in one batch score like each row alone."""
    from ensrm import Scorer

    scorer = Scorer(bundles(kind), verify="size")
    rng = np.random.default_rng(1)
    lengths = [9, 3, 6, 1, 9]
    seq = 11
    ids = np.full((len(lengths), seq), scorer.spec.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    rows = [rng.integers(5, scorer.spec.vocab_size, size=n) for n in lengths]
    for r, (tokens, start) in enumerate(zip(rows, [0, seq - 3, 2, 5, 1])):  # right, left, both, both, both
        ids[r, start:start + len(tokens)] = tokens
        mask[r, start:start + len(tokens)] = 1
    mixed = scorer.score(ids, mask)
    for r, tokens in enumerate(rows):
        alone = scorer.score(tokens[None], np.ones((1, len(tokens)), dtype=np.int64))
        close(mixed.take(np.array([r])), alone, atol=2e-5)


# -- lengths --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_more_real_tokens_than_max_length_are_refused(scorers, kind):
    scorer = scorers(kind)
    over = scorer.spec.max_length + 3
    ids, mask = batch(scorer, rows=2, seq=over)
    err = refused(lambda: scorer.score(ids, mask), "input_ids", f"sequence length {over}",
                  f"exceeds the model's maximum {scorer.spec.max_length}", "truncat")
    assert err.expected == f"at most {scorer.spec.max_length} tokens"


@pytest.mark.parametrize("kind", KINDS)
def test_padding_columns_beyond_max_length_are_dropped(scorers, kind):
    scorer = scorers(kind)
    ids, mask = batch(scorer, rows=3, seq=10)
    wide_ids = np.full((3, scorer.spec.max_length + 20), scorer.spec.pad_token_id, dtype=np.int64)
    wide_mask = np.zeros_like(wide_ids)
    wide_ids[:, :10], wide_mask[:, :10] = ids, mask
    close(scorer.score(wide_ids, wide_mask), scorer.score(ids, mask))


def test_decoder_rows_spanning_more_than_max_length_are_refused(scorers):
    scorer = scorers("gpt2")
    seq = scorer.spec.max_length + 4
    ids = np.full((2, seq), 7, dtype=np.int64)
    mask = np.zeros_like(ids)
    mask[0, :3] = 1   # right-padded
    mask[1, -3:] = 1  # left-padded: together they span every column
    refused(lambda: scorer.score(ids, mask), "input_ids", "separate calls")


@pytest.mark.parametrize("kind", KINDS)
def test_long_texts_truncate_by_default_and_refuse_without_truncation(scorers, kind):
    scorer = scorers(kind)
    long = "the bread rises slowly overnight. " * 400
    scores = scorer.score_texts(["Hi", "How do I bake bread?"], ["Hello", long])
    assert scores.heads.shape == (2, scorer.num_heads) and np.isfinite(scores.heads).all()
    err = refused(lambda: scorer.score_texts(["Hi", "How do I bake bread?"], ["Hello", long], truncation=False),
                  "prompts[1]", "pair 1 has", f"maximum {scorer.spec.max_length}", "truncation=True")
    assert err.expected == f"at most {scorer.spec.max_length} tokens"
    huge = "x" * 200_000  # one very long string: truncated, not a crash
    assert np.isfinite(scorer.score_texts([huge], ["y"]).uwo).all()


# -- text ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prompts, responses, field, fragment", [
    (None, ["a"], "prompts", "got NoneType"),
    (["a"], None, "responses", "got NoneType"),
    ("a prompt", ["a"], "prompts", "got str"),
    (["a"], b"bytes", "responses", "got bytes"),
    ({"a": 1}, ["a"], "prompts", "got dict"),
    ((p for p in ["a"]), ["a"], "prompts", "got generator"),
    (["a", "b"], ["a"], "responses", "2 prompts but 1 responses"),
    (["a", None], ["a", "b"], "prompts[1]", "got NoneType"),
    (["a", "b"], ["a", 3], "responses[1]", "got int"),
    (["a"], [b"x"], "responses[0]", "got bytes"),
    (["a"], [["nested"]], "responses[0]", "got list"),
    (np.array([["a"]]), np.array([["b"]]), "prompts", "1-D"),
])
def test_malformed_texts_are_refused(scorers, kind, prompts, responses, field, fragment):
    scorer = scorers(kind)
    refused(lambda: scorer.score_texts(prompts, responses), field, fragment)


@pytest.mark.parametrize("kind", KINDS)
def test_lone_surrogates_from_json_are_refused_by_name(scorers, kind):
    scorer = scorers(kind)
    response = json.loads('"half an emoji: \\ud83d and more"')  # valid JSON, invalid Unicode
    err = refused(lambda: scorer.score_texts(["fine", "fine"], ["fine", response]), "responses[1]",
                  "lone surrogate", "position 15")
    assert "\\ud83d" in str(err)
    # A correctly escaped pair is one emoji, and scores.
    emoji = json.loads('"\\ud83d\\ude00"')
    assert emoji == "\U0001F600"
    assert np.isfinite(scorer.score_texts(["fine"], [emoji]).uwo).all()


UNUSUAL = [
    "e\u0301\u0301\u0301 cafe\u0301 n\u0303",            # combining marks
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",  # right-to-left (Arabic, Hebrew)
    "\u202eright-to-left override\u202c",                # bidi controls
    "zero\u200bwidth\u200c\u200djoiners\ufeff",          # zero-width characters and a BOM
    "\u200b\u200b\u200b",                                # only zero-width characters
    "\U0001F600\U0001F44D\U0001F3FD family: \U0001F468\u200d\U0001F469\u200d\U0001F467",
    "nul\x00 and control \x07\x1b[31m characters",
    "\ufffd replacement and \U0010ffff last code point",
    "\u4f60\u597d\uff0c\u4e16\u754c \ud55c\uad6d\uc5b4 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
]


@pytest.mark.parametrize("kind", KINDS)
def test_unusual_unicode_scores_like_any_text(scorers, kind):
    """Documented result: finite scores in input order, the same as scoring each pair alone."""
    scorer = scorers(kind)
    prompts = ["Say something."] * len(UNUSUAL)
    together = scorer.score_texts(prompts, UNUSUAL)
    assert together.heads.shape == (len(UNUSUAL), scorer.num_heads)
    assert np.isfinite(together.heads).all()
    for i, text in enumerate(UNUSUAL):
        close(together.take(np.array([i])), scorer.score_texts([prompts[i]], [text]))


def test_empty_strings(scorers):
    """An encoder always has its special tokens; a decoder pair of two empty strings has no token at all."""
    bert, gpt2 = scorers("bert"), scorers("gpt2")
    scores = bert.score_texts(["", "q"], ["", ""])
    assert scores.heads.shape == (2, bert.num_heads) and np.isfinite(scores.heads).all()
    assert np.isfinite(gpt2.score_texts([""], ["a response"]).uwo).all()
    refused(lambda: gpt2.score_texts(["x", ""], ["y", ""]), "prompts[1]", "pair 1 encodes to no tokens")


@pytest.mark.parametrize("kind", KINDS)
def test_text_containers(scorers, kind):
    scorer = scorers(kind)
    prompts, responses = ["Hi", "How are you?"], ["Hello", "Fine, thanks."]
    reference = scorer.score_texts(prompts, responses)
    close(scorer.score_texts(tuple(prompts), tuple(responses)), reference)
    close(scorer.score_texts(np.array(prompts), np.array(responses)), reference)
    empty = scorer.score_texts([], [])
    assert empty.heads.shape == (0, scorer.num_heads) and empty.uwo.shape == (0,)
    refused(lambda: scorer.score_texts(prompts, responses, batch_size=0), None, "batch_size")


# -- batch splitting -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_large_batches_split_with_identical_results(scorers, kind):
    whole = scorers(kind)
    split = scorers(kind, max_batch_size=3)
    ids, mask = batch(whole, rows=11, seq=9, seed=4)
    close(split.score(ids, mask), whole.score(ids, mask))
    prompts = [f"Question {i}?" * (1 + i % 4) for i in range(11)]
    responses = [f"Answer {i}." * (1 + i % 5) for i in range(11)]
    close(split.score_texts(prompts, responses), whole.score_texts(prompts, responses, batch_size=64))


def test_max_batch_size_must_be_positive(bundles):
    from ensrm import Scorer

    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        Scorer(bundles("gpt2"), verify="none", max_batch_size=0)
