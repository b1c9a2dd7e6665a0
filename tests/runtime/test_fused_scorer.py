"""Scorer on the CPU provider runs the fused graph; elsewhere, or when it is damaged, model.onnx with a warning."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import ensrm
from ensrm.runtime.scorer import FusedGraphWarning

OLD_BUNDLE = Path(__file__).parents[1] / "bundle" / "data" / "v1-gpt2"
PROMPTS = ["Hi", "How do I bake bread at home?", "Name a colour", "What is two plus two?"]
RESPONSES = ["Hello!", "Knead, let it rise, bake at 230 C. " * 6, "Blue.", "Four."]


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_cpu_scorer_runs_the_fused_graph_with_the_portable_scores(bundles, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedGraphWarning)
        fused = ensrm.Scorer(bundles(kind), threads=1, backend="onnxruntime")
        portable = ensrm.Scorer(bundles(kind), threads=1, fused=False, backend="onnxruntime")
    assert fused.model_path.name == "model.cpu.onnx" and "model.cpu.onnx" in fused.backend.description
    assert portable.model_path.name == "model.onnx" and "(model.onnx)" in portable.backend.description
    a, b = fused.score_texts(PROMPTS, RESPONSES, batch_size=3), portable.score_texts(PROMPTS, RESPONSES, batch_size=3)
    for name in ("heads", "mean", "std", "min", "uwo"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-4)


def _copy(bundles, tmp_path) -> Path:
    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert"), bundle)
    return bundle


def test_a_damaged_fused_graph_falls_back_with_one_warning(bundles, tmp_path):
    bundle = _copy(bundles, tmp_path)
    data = bundle / "model.cpu.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.warns(FusedGraphWarning) as caught:
        scorer = ensrm.Scorer(bundle, backend="onnxruntime")
    assert len(caught) == 1 and "model.cpu.onnx.data does not match its sha256" in str(caught[0].message)
    assert "running model.onnx" in str(caught[0].message) and caught[0].filename == __file__
    assert scorer.model_path.name == "model.onnx"
    expected = ensrm.Scorer(bundles("bert"), fused=False, backend="onnxruntime").score_texts(PROMPTS, RESPONSES)
    np.testing.assert_array_equal(scorer.score_texts(PROMPTS, RESPONSES).heads, expected.heads)


def test_a_fused_graph_onnxruntime_cannot_load_falls_back(bundles, tmp_path):
    bundle = _copy(bundles, tmp_path)
    (bundle / "model.cpu.onnx").write_bytes(b"not a graph")
    with pytest.warns(FusedGraphWarning, match=r"onnxruntime cannot load model.cpu.onnx .*running model.onnx"):
        scorer = ensrm.Scorer(bundle, verify="none", backend="onnxruntime")
    assert scorer.model_path.name == "model.onnx"


def test_a_missing_fused_graph_falls_back(bundles, tmp_path):
    bundle = _copy(bundles, tmp_path)
    (bundle / "model.cpu.onnx").unlink()
    with pytest.warns(FusedGraphWarning, match="model.cpu.onnx is missing"):
        scorer = ensrm.Scorer(bundle, backend="onnxruntime")
    assert scorer.model_path.name == "model.onnx"


def test_another_provider_runs_the_portable_graph_with_a_warning(bundles, monkeypatch):
    from ensrm.runtime import onnxruntime_backend

    # A provider other than the CPU one, without a GPU: pretend the build has CUDA, then let the
    # session run on the CPU provider anyway (onnxruntime's own fallback for a missing provider).
    monkeypatch.setattr(onnxruntime_backend, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = onnxruntime_backend.create_session
    monkeypatch.setattr(onnxruntime_backend, "create_session",
                        lambda path, providers=None, threads=None, spinning=None: real(path, None, threads, spinning))
    with pytest.warns(FusedGraphWarning, match="needs the CPUExecutionProvider's kernels; running model.onnx on "
                                               "CUDAExecutionProvider"):
        scorer = ensrm.Scorer(bundles("bert"), providers=["cuda", "cpu"])
    assert scorer.model_path.name == "model.onnx"


def test_old_bundle_without_a_fused_graph_loads_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedGraphWarning)
        fp32, int8 = ensrm.Scorer(OLD_BUNDLE, backend="onnxruntime"), ensrm.Scorer(OLD_BUNDLE, precision="int8")
    assert fp32.spec.fused == {} and fp32.model_path.name == "model.onnx"
    assert int8.model_path.name == "model.int8.onnx"
