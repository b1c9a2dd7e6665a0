"""The exported graph against each architecture's own torch logits, under every padding it allows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models import ARCHITECTURES, DECODERS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4


def _own_logits(checkpoint, sequences):
    """The source model's logits for each sequence scored alone, unpadded (its own pooling)."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        return np.stack([model(input_ids=torch.tensor([s])).logits[0].numpy() for s in sequences])


def _sequences(tokenizer, vocab_size, rng, lengths):
    """Random token sequences that avoid special ids (HF's decoder pooling mistakes pad ids for padding)."""
    specials = set(tokenizer.all_special_ids)
    allowed = np.array([i for i in range(min(vocab_size, 2000)) if i not in specials])
    return [list(rng.choice(allowed, size=n)) for n in lengths]


def _padded(sequences, side, pad_id):
    seq = max(map(len, sequences))
    ids = np.full((len(sequences), seq), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, s in enumerate(sequences):
        cols = slice(0, len(s)) if side == "right" else slice(seq - len(s), seq)
        ids[row, cols], mask[row, cols] = s, 1
    return ids, mask


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_graph_matches_torch_in_mixed_padded_batches(kind, checkpoints, bundles):
    import ensrm

    scorer = ensrm.Scorer(bundles(kind))
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints(kind))
    rng = np.random.default_rng(1)
    sequences = _sequences(tokenizer, scorer.spec.vocab_size, rng, [1, 5, 17, 3, 40, 9, 128])
    expected = _own_logits(checkpoints(kind), sequences)  # [n, K]
    sides = ["right", "left"] if kind in DECODERS else ["right"]
    for side in sides:
        ids, mask = _padded(sequences, side, scorer.spec.pad_token_id)
        heads = scorer.score(ids, mask).heads
        np.testing.assert_allclose(heads, expected, atol=TOLERANCE, rtol=0, err_msg=f"{kind} {side}-padded")
    assert scorer.spec.variants["fp32"].checks["passed"]
    assert scorer.spec.variants["fp32"].checks["max_abs_diff_heads"] <= TOLERANCE


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_encoders_run_the_last_layer_for_the_pooled_token_only(kind, bundles):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(bundles(kind) / "model.onnx"), load_external_data=False).graph
    cuts = [n for n in graph.node if n.op_type == "Slice" and n.name.endswith("/pooled_row")]
    if kind in DECODERS:
        assert not cuts  # the last real token's position comes from the mask: nothing to narrow
        return
    # the last layer's attention output and its residual input, cut to the first token;
    # the matching against torch above runs on this narrowed graph
    assert len(cuts) == 2
    readers = {name for n in graph.node for name in n.input}
    assert all(n.output[0] in readers for n in cuts)


@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_mixes_left_and_right_padding_in_one_batch(kind, checkpoints, bundles):
    import ensrm

    scorer = ensrm.Scorer(bundles(kind))
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints(kind))
    sequences = _sequences(tokenizer, scorer.spec.vocab_size, np.random.default_rng(2), [4, 11])
    right_ids, right_mask = _padded(sequences, "right", scorer.spec.pad_token_id)
    left_ids, left_mask = _padded(sequences, "left", scorer.spec.pad_token_id)
    mixed = scorer.score(np.stack([right_ids[0], left_ids[1]]), np.stack([right_mask[0], left_mask[1]])).heads
    np.testing.assert_allclose(mixed, _own_logits(checkpoints(kind), sequences), atol=TOLERANCE, rtol=0)


def test_real_minilm_matches_torch(minilm_checkpoint, minilm_bundle):
    import ensrm

    scorer = ensrm.Scorer(minilm_bundle)
    pairs = [("How do I boil an egg?", "Simmer it for eight minutes, then cool it in cold water."),
             ("Hi", "Hello!"), ("Tell me a joke about cats " * 10, "No. " * 60)]
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_checkpoint)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_checkpoint).eval()
    with torch.inference_mode():
        expected = np.concatenate([
            model(**tokenizer(p, r, truncation=True, max_length=128, return_tensors="pt")).logits.numpy()
            for p, r in pairs])  # each pair alone, unpadded
    got = scorer.score_texts([p for p, _ in pairs], [r for _, r in pairs])
    assert got.heads.shape == (3, 8)
    np.testing.assert_allclose(got.heads, expected, atol=TOLERANCE, rtol=0)
