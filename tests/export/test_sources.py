"""The three source kinds, the aggregation tail, and the export's refusal to leave bad bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ensrm.errors import BundleError, ExportError  # noqa: E402
from ensrm.export.exporter import export_bundle  # noqa: E402


def _random_batch(scorer, batch, seq, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, min(scorer.spec.vocab_size, 1000), size=(batch, seq))
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return ids, mask


def test_aggregates_follow_the_contract(bundles):
    import ensrm

    scorer = ensrm.Scorer(bundles("bert", num_labels=5, uwo_lambda=0.7))
    ids, mask = _random_batch(scorer, 6, 12)
    s = scorer.score(ids, mask)
    heads = s.heads.astype(np.float64)
    np.testing.assert_allclose(s.mean, heads.mean(1), atol=1e-6)
    np.testing.assert_allclose(s.std, heads.std(1, ddof=0), atol=1e-6)
    np.testing.assert_allclose(s.min, heads.min(1), atol=1e-6)
    np.testing.assert_allclose(s.uwo, heads.mean(1) - 0.7 * heads.var(1, ddof=0), atol=1e-5)
    assert scorer.spec.uwo_lambda == pytest.approx(0.7)
    assert all(v.dtype == np.float32 for v in (s.heads, s.mean, s.std, s.min, s.uwo))


@pytest.mark.parametrize("batch,seq", [(1, 1), (1, 128), (3, 7), (64, 33)])
def test_dynamic_batch_and_sequence_sizes(bundles, batch, seq):
    import ensrm

    scorer = ensrm.Scorer(bundles("gpt2"))
    ids, mask = _random_batch(scorer, batch, seq, seed=batch + seq)
    s = scorer.score(ids, mask)
    assert s.heads.shape == (batch, 4) and s.uwo.shape == (batch,)
    # Each row scored alone gives the same heads: the batch shape changes nothing.
    alone = np.concatenate([scorer.score(ids[i:i + 1, : mask[i].sum()], mask[i:i + 1, : mask[i].sum()]).heads
                            for i in range(min(batch, 4))])
    np.testing.assert_allclose(s.heads[: len(alone)], alone, atol=1e-4)


def test_full_ensemble_concatenates_members(checkpoints, tmp_path):
    import ensrm

    members = [checkpoints("bert", num_labels=1, seed=s) for s in range(3)]
    spec = export_bundle(members, tmp_path / "full", progress=None)
    assert spec.source_kind == "full-ensemble" and spec.members == 3 and spec.num_heads == 3
    scorer = ensrm.Scorer(tmp_path / "full")
    tok = transformers.AutoTokenizer.from_pretrained(members[0])
    enc = tok(["A prompt", "Another, longer prompt here"], ["yes", "no thanks"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = torch.cat([transformers.AutoModelForSequenceClassification.from_pretrained(m).eval()(**enc).logits
                              for m in members], dim=1).numpy()
    got = scorer.score(enc["input_ids"].numpy(), enc["attention_mask"].numpy(), enc["token_type_ids"].numpy())
    np.testing.assert_allclose(got.heads, expected, atol=1e-4)


def test_full_ensemble_refuses_mixed_tokenizers(checkpoints, tmp_path):
    with pytest.raises(ExportError, match="architecture|tokenizer"):
        export_bundle([checkpoints("bert", num_labels=1), checkpoints("roberta", num_labels=1)], tmp_path / "x",
                      progress=None)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_base_model_with_heads_file(checkpoints, tmp_path, pooling):
    from safetensors.torch import save_file

    import ensrm

    base_dir = tmp_path / "base"
    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoints("bert"))
    classifier.bert.save_pretrained(base_dir)
    transformers.AutoTokenizer.from_pretrained(checkpoints("bert")).save_pretrained(base_dir)
    torch.manual_seed(3)
    weight, bias = torch.randn(6, 32), torch.randn(6)
    save_file({"weight": weight, "bias": bias}, str(tmp_path / "heads.safetensors"))
    spec = export_bundle([base_dir], tmp_path / "b", heads=tmp_path / "heads.safetensors", pooling=pooling,
                         progress=None)
    assert (spec.num_heads, spec.pooling, spec.source_kind) == (6, pooling, "encoder+heads")

    tok = transformers.AutoTokenizer.from_pretrained(base_dir)
    enc = tok(["short", "a much longer prompt than the first"], ["ok", "fine"], padding=True, return_tensors="pt")
    base = transformers.AutoModel.from_pretrained(base_dir).eval()
    with torch.inference_mode():
        hidden = base(**enc).last_hidden_state  # [batch, seq, hidden]
        mask = enc["attention_mask"].unsqueeze(-1).float()
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        else:
            pooled = hidden[torch.arange(2), enc["attention_mask"].sum(1) - 1]
        expected = (pooled @ weight.T + bias).numpy()
    got = ensrm.Scorer(tmp_path / "b").score(*(enc[k].numpy() for k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")))
    np.testing.assert_allclose(got.heads, expected, atol=1e-4)


def test_heads_file_with_wrong_shape_is_refused(checkpoints, tmp_path):
    from safetensors.torch import save_file

    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoints("bert"))
    classifier.bert.save_pretrained(tmp_path / "base")
    transformers.AutoTokenizer.from_pretrained(checkpoints("bert")).save_pretrained(tmp_path / "base")
    save_file({"weight": torch.randn(3, 31)}, str(tmp_path / "heads.safetensors"))
    with pytest.raises(ExportError, match=r"\[K, 32\]"):
        export_bundle([tmp_path / "base"], tmp_path / "b", heads=tmp_path / "heads.safetensors", progress=None)


def test_base_model_without_heads_is_explained(checkpoints, tmp_path):
    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoints("bert"))
    classifier.bert.save_pretrained(tmp_path / "base")
    with pytest.raises(ExportError, match="`heads=heads.safetensors`"):
        export_bundle([tmp_path / "base"], tmp_path / "b", progress=None)


def test_failed_verification_leaves_no_bundle(checkpoints, tmp_path):
    with pytest.raises(ExportError, match="tolerance"):
        export_bundle([checkpoints("bert")], tmp_path / "b", tolerance=-1.0, progress=None)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its staging directory


def test_existing_bundle_needs_overwrite(checkpoints, tmp_path):
    export_bundle([checkpoints("bert")], tmp_path / "b", progress=None)
    before = (tmp_path / "b" / "ensemble.json").read_bytes()
    with pytest.raises(BundleError, match="`overwrite=True`"):
        export_bundle([checkpoints("bert")], tmp_path / "b", progress=None)
    with pytest.raises(ExportError):
        export_bundle([checkpoints("bert")], tmp_path / "b", tolerance=-1.0, overwrite=True, progress=None)
    assert (tmp_path / "b" / "ensemble.json").read_bytes() == before
    export_bundle([checkpoints("bert")], tmp_path / "b", uwo_lambda=2.0, overwrite=True, progress=None)
    assert json.loads((tmp_path / "b" / "ensemble.json").read_text())["uwo_lambda"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_manifest_records_the_contract(bundles):
    from ensrm.bundle import load_spec

    bundle = bundles("bert")
    manifest = json.loads((bundle / "ensemble.json").read_text())
    assert manifest["format_version"] == 1
    assert [o["name"] for o in manifest["outputs"]] == ["heads", "ens_mean", "ens_std", "ens_min", "ens_uwo"]
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert {"model.onnx", "tokenizer.json"} <= set(manifest["files"])
    assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())
    assert manifest["source_fingerprint"] and manifest["max_length"] == 128
    assert manifest["normalization"]["records"] == 0
    spec = load_spec(bundle)
    assert spec.num_heads == 4 and spec.padding_side == "right"


def test_graph_declares_the_contract_io(bundles):
    import onnxruntime as ort

    for kind, inputs in (("roberta", ["input_ids", "attention_mask"]),
                         ("bert", ["input_ids", "attention_mask", "token_type_ids"])):
        session = ort.InferenceSession(str(bundles(kind) / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == inputs
        assert all(i.type == "tensor(int64)" for i in session.get_inputs())
        outs = session.get_outputs()
        assert [o.name for o in outs] == ["heads", "ens_mean", "ens_std", "ens_min", "ens_uwo"]
        assert all(o.type == "tensor(float)" for o in outs)
        assert outs[0].shape[1] == 4 and len(outs[1].shape) == 1
