"""Decoder reward models of real shapes: the real Qwen2-0.5B vocabulary and width in every run
(reduced depth), the full Qwen2-0.5B and Llama-3.2-1B shapes in the slow suite. Random weights
saved in bf16 as sharded safetensors, with a BPE tokenizer trained here; nothing is downloaded."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest

import ensrm
from ensrm.bundle import load_spec
from ensrm.export import memory

PAIRS = (["How do I bake bread?", "Hi"], ["Knead, rise, bake.", "Hello!"])


@pytest.fixture(scope="session")
def qwen2_reduced(tmp_path_factory):
    """Qwen2-0.5B's vocabulary (151,936), width (896, 14 heads, 2 KV heads) and 32k positions, one layer."""
    from tests.models import build_real_shape

    return build_real_shape("qwen2-0.5b", tmp_path_factory.mktemp("qwen2-reduced"), layers=1)


def test_reduced_qwen2_exports_in_bf16_from_shards(qwen2_reduced, tmp_path):
    from ensrm.export.exporter import export_bundle

    assert len(list(qwen2_reduced.glob("model-*-of-*.safetensors"))) > 1
    params = memory.checkpoint_parameters(qwen2_reduced)
    assert memory.check_export_memory([qwen2_reduced], "bf16")["weights_bytes"] == 2 * params

    spec = export_bundle([qwen2_reduced], tmp_path / "rm", dtype="bf16", max_length=256, progress=None)
    checks = spec.variants["fp32"].checks
    assert checks["passed"] and checks["dtype"] == "bf16" and checks["lengths"][1] == 256
    assert spec.vocab_size == 151_936 and spec.dtype == "bf16" and spec.padding_side == "left"
    # the weights stay bf16 in the file: about two bytes each (the pruned last layer drops a little)
    assert 1.6 * params < spec.files["model.onnx.data"].size <= 2 * params + 2 ** 20
    scores = ensrm.Scorer(tmp_path / "rm").score_texts(*PAIRS)
    assert scores.heads.shape == (2, 4) and np.isfinite(scores.heads).all()


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["qwen2-0.5b", "llama-3.2-1b"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_full_shape_exports_verifies_and_scores(tmp_path, shape, dtype):
    """The real shapes at full depth; the export is refused cleanly (and the test skipped) where this
    machine's memory cannot hold it. Prints the peak RSS against the weights' bytes."""
    from ensrm.errors import ExportError
    from ensrm.export.dtypes import ITEMSIZE
    from ensrm.export.exporter import export_bundle
    from tests.models import build_real_shape

    source = build_real_shape(shape, tmp_path / "ckpt")
    try:
        estimate = memory.check_export_memory([source], dtype)
    except ExportError as exc:
        pytest.skip(str(exc))
    spec = export_bundle([source], tmp_path / "rm", dtype=dtype, max_length=512)
    assert spec.variants["fp32"].checks["passed"] and load_spec(tmp_path / "rm").dtype == dtype
    scores = ensrm.Scorer(tmp_path / "rm", verify="size").score_texts(*PAIRS)
    assert np.isfinite(scores.heads).all()
    weights = memory.checkpoint_parameters(source) * ITEMSIZE[dtype]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("real-shape:", json.dumps({"shape": shape, "dtype": dtype, "weights_bytes": weights, "peak_rss_bytes": peak,
                                     "peak_over_weights": round(peak / weights, 2), **estimate}))
