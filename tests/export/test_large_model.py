"""A model over 2 GB (protobuf's limit for one ONNX file) exports, verifies and scores."""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest

# BERT with a 520k-token vocabulary: ~558M fp32 parameters, ~2.2 GB, mostly the embedding.
LARGE = dict(vocab_size=520_000, hidden_size=1024, num_hidden_layers=2, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=128)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # ru_maxrss is in KiB on Linux


@pytest.mark.slow
def test_export_and_score_a_model_over_2gb(tmp_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ensrm import Scorer
    from ensrm.bundle import load_spec
    from ensrm.export.exporter import export_bundle
    from tests.models import minilm_path

    timings = {}
    start = time.perf_counter()
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=4, **LARGE)).eval()
    params = sum(p.numel() for p in model.parameters())
    assert params * 4 > 2 * 2 ** 30, "the model must exceed 2 GiB in fp32"
    ckpt = tmp_path / "large-rm"
    model.save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(ckpt)  # ids < 30522 fit any vocab above it
    del model
    timings["build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    out = tmp_path / "bundle"
    spec = export_bundle([ckpt], out, max_length=64)
    timings["export_s"] = time.perf_counter() - start
    assert spec.variants["fp32"].checks["passed"]

    data = out / "model.onnx.data"
    sizes = {name: (out / name).stat().st_size for name in ("model.onnx", "model.onnx.data")}
    assert sizes["model.onnx.data"] > 2 * 2 ** 30 and sizes["model.onnx"] < 100 * 2 ** 20
    assert spec.files["model.onnx.data"].size == data.stat().st_size

    start = time.perf_counter()
    load_spec(out)  # sha256 over 2.2 GB
    timings["verify_sha256_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scorer = Scorer(out, verify="size")
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = scorer.score_texts(["How do I bake bread?", "Hi"], ["Knead, rise, bake.", "Hello!"])
    timings["score_2_pairs_s"] = time.perf_counter() - start
    assert scores.heads.shape == (2, 4) and np.isfinite(scores.heads).all()
    record = {"params": params, "file_bytes": sizes, "peak_rss_gb": round(peak_rss_gb(), 2),
              "max_abs_diff_heads": spec.variants["fp32"].checks["max_abs_diff_heads"],
              **{k: round(v, 1) for k, v in timings.items()}}
    print("large-model:", json.dumps(record))
