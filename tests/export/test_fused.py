"""The fused CPU graph (``model.cpu.onnx``): written by the export, verified against ``model.onnx``, or dropped."""

from __future__ import annotations

import shutil

import onnx
import pytest

from ensrm.bundle import load_spec
from ensrm.export import fused as fused_module
from ensrm.export.exporter import export_bundle
from ensrm.spec import FUSED_FILES, EnsembleSpec

CPU = "CPUExecutionProvider"


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_fused_graph_is_listed_and_verifies_against_the_portable_graph(bundles, kind):
    bundle = bundles(kind)
    spec = load_spec(bundle)  # sha256 of every file, the fused graph's included
    graph = spec.fused[CPU]
    assert graph.file == FUSED_FILES[CPU] == "model.cpu.onnx" and graph.base == "fp32"
    assert {"model.cpu.onnx", "model.cpu.onnx.data"} <= set(spec.files)
    assert graph.checks["passed"] and graph.checks["max_abs_diff_heads"] <= 1e-4
    assert graph.checks["batches"] == (8 if spec.architecture == "decoder" else 4)  # left padding too
    ops = {n.op_type for n in onnx.load(str(bundle / graph.file), load_external_data=False).graph.node}
    fusions = graph.method["fusions"]
    expected = {"bert": "SkipLayerNormalization", "llama": "SkipSimplifiedLayerNormalization"}[kind]
    assert fusions[expected] >= 2 and expected in ops  # one per residual, two layers
    assert "MultiHeadAttention" not in ops  # dynamo builds the mask once: attention does not fuse (NOTES)
    # checked again here, independently of the export's own report
    report = fused_module.compare_graphs(bundle / "model.onnx", bundle / graph.file,
                                         fused_module.verification_batches(bundle, spec), 1e-4)
    assert report["passed"], report
    assert EnsembleSpec.from_json(spec.to_json()) == spec


def test_the_step_can_be_skipped(bundles):
    bundle = bundles("bert", cpu_graph=False)
    spec = load_spec(bundle)
    assert spec.fused == {} and "fused" not in spec.to_dict()
    assert not (bundle / "model.cpu.onnx").exists() and not any(name.startswith("model.cpu") for name in spec.files)
    # the portable graph is the same either way
    assert (bundle / "model.onnx").read_bytes() == (bundles("bert") / "model.onnx").read_bytes()


def _export(checkpoints, tmp_path, notes):
    return export_bundle([checkpoints("bert")], tmp_path / "rm", progress=notes.append)


def test_a_model_with_nothing_to_fuse_gets_no_file(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(fused_module, "optimize_graph", lambda portable, target: {})
    notes = []
    spec = _export(checkpoints, tmp_path, notes)
    assert spec.fused == {} and not (tmp_path / "rm" / "model.cpu.onnx").exists()
    assert any("the optimizer found nothing to fuse" in n for n in notes)


def test_a_fused_graph_that_does_not_verify_is_dropped(checkpoints, tmp_path, monkeypatch):
    from ensrm.models.graph import set_normalization

    def wrong(portable, target):  # a "fusion" that changes the scores: another sigma
        model = onnx.load(str(portable))
        set_normalization(model, [0.0] * 4, [2.0] * 4)
        onnx.save(model, str(target), save_as_external_data=True, location=target.name + ".data")
        return {"SkipLayerNormalization": 1}

    monkeypatch.setattr(fused_module, "optimize_graph", wrong)
    notes = []
    spec = _export(checkpoints, tmp_path, notes)
    assert spec.fused == {} and spec.variants["fp32"].accepted
    assert not [p for p in (tmp_path / "rm").iterdir() if p.name.startswith("model.cpu")]
    assert any("no fused CPU graph: it differs from model.onnx by" in n and "dropped" in n for n in notes)


def test_an_optimizer_failure_leaves_the_portable_bundle(checkpoints, tmp_path, monkeypatch):
    def broken(portable, target):
        raise IndexError("list index out of range")

    monkeypatch.setattr(fused_module, "optimize_graph", broken)
    notes = []
    spec = _export(checkpoints, tmp_path, notes)
    assert spec.fused == {} and any("the optimizer failed (IndexError" in n for n in notes)
    load_spec(tmp_path / "rm")


def test_calibration_checks_the_fused_graph_again_and_drops_it_if_it_fails(bundles, tmp_path):
    """A tiny random BERT's heads hardly vary (std ~1e-3): normalised, the two graphs' float
    rounding (~3e-7 raw) grows past 1e-4 on the heads, so the fused graph no longer verifies.
    (tests/calibration/test_fused_calibration.py: a model whose heads spread keeps it.)"""
    from ensrm.calibration.normalize import calibrate_bundle
    from ensrm.data import generate_references
    from ensrm.jsonl import write_records

    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert"), bundle)
    refs = tmp_path / "refs.jsonl"
    write_records(refs, generate_references(24, seed=3))
    notes = []
    spec = calibrate_bundle(bundle, refs, progress=notes.append)
    assert max(spec.normalization.sigma) < 1e-2
    assert spec.fused == {} and not (bundle / "model.cpu.onnx").exists()
    assert any("no fused CPU graph: it differs from model.onnx" in n for n in notes)
    load_spec(bundle)


def test_adding_a_fused_graph_to_an_existing_bundle(bundles, tmp_path):
    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert", cpu_graph=False), bundle)
    spec = fused_module.add_cpu_graph(bundle)
    assert spec.fused[CPU].checks["passed"] and load_spec(bundle).fused == spec.fused


def test_a_graph_above_the_size_limit_is_not_attempted(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(fused_module, "MAX_BYTES", 1000)
    notes = []
    spec = _export(checkpoints, tmp_path, notes)
    assert spec.fused == {} and any("no fused CPU graph: not attempted for a graph of" in n for n in notes)
