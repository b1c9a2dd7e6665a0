"""Half-precision export: the model loads in bf16/fp16, the graph keeps that dtype, and it equals
torch in the same dtype within the tolerance the manifest records."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ensrm
from ensrm.bundle import load_spec
from ensrm.errors import ExportError
from ensrm.spec import MANIFEST_NAME, EnsembleSpec

PAIRS = (["How do I bake bread?", "Hi", "Explain tuples."], ["Knead, rise, bake.", "Hello!", "They are immutable."])


def _gathered_table_types(bundle) -> set[str]:
    """Element types of the initializers that ``Gather`` nodes read rows from (the embeddings)."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    types = {init.name: onnx.TensorProto.DataType.Name(init.data_type) for init in model.graph.initializer}
    return {types[node.input[0]] for node in model.graph.node if node.op_type == "Gather" and node.input[0] in types}


def _initializer_types(bundle) -> set[str]:
    import onnx

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    return {onnx.TensorProto.DataType.Name(init.data_type) for init in model.graph.initializer}


@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_graph_equals_torch_in_its_dtype(bundles, kind, dtype):
    bundle = bundles(kind, dtype=dtype)
    spec = load_spec(bundle)
    checks = spec.variants["fp32"].checks
    assert spec.dtype == dtype and checks["dtype"] == dtype and checks["passed"]
    assert 0 < checks["max_abs_diff_heads"] <= checks["tolerance"]  # half precision is never exact
    assert checks["relative_tolerance"] > 0
    assert {"FLOAT16" if dtype == "fp16" else "BFLOAT16"} <= _initializer_types(bundle)
    if dtype == "bf16":  # embedding rows are gathered in bf16, then cast: no fp32 copy of a table
        assert _gathered_table_types(bundle) == {"BFLOAT16"}
    assert "model.cpu.onnx" not in spec.files  # onnxruntime's CPU fusions start from fp32
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    assert manifest["dtype"] == dtype
    assert [i["dtype"] for i in manifest["inputs"]] == ["int64"] * len(spec.inputs)

    half = ensrm.Scorer(bundle).score_texts(*PAIRS)
    full = ensrm.Scorer(bundles(kind)).score_texts(*PAIRS)
    assert half.heads.dtype == np.float32 and half.mean.dtype == np.float32
    # the same weights in fp32: the graph differs from them by half-precision rounding only
    np.testing.assert_allclose(half.heads, full.heads, rtol=0, atol=checks["tolerance"])
    np.testing.assert_allclose(half.mean, half.heads.mean(axis=1), rtol=0, atol=1e-5)


def test_half_precision_weights_take_half_the_bytes(bundles):
    sizes = {dtype: load_spec(bundles("llama", dtype=dtype)).files["model.onnx.data"].size
             for dtype in ("fp32", "bf16", "fp16")}
    assert sizes["bf16"] < 0.6 * sizes["fp32"] and sizes["fp16"] < 0.6 * sizes["fp32"]


def test_graph_dtype_is_read_back_and_fp32_manifests_stay_as_they_were(bundles):
    fp32 = (bundles("llama") / MANIFEST_NAME).read_text()
    assert '"dtype": "fp32"' not in fp32.replace(" ", "").replace('"dtype":"float32"', "")
    assert EnsembleSpec.from_json(fp32).dtype == "fp32" and EnsembleSpec.from_json(fp32).to_json() == fp32
    bf16 = (bundles("llama", dtype="bf16") / MANIFEST_NAME).read_text()
    spec = EnsembleSpec.from_json(bf16)
    assert spec.dtype == "bf16" and spec.to_json() == bf16
    assert "graph dtype bf16" in spec.describe()
    with pytest.raises(ValueError, match="dtype must be one of"):
        EnsembleSpec.from_dict({**json.loads(bf16), "dtype": "int4"})


def test_scorer_description_names_the_graph_dtype(bundles):
    scorer = ensrm.Scorer(bundles("llama", dtype="fp16"))
    assert "fp16" in scorer.description


def test_bad_dtype_and_variants_of_a_half_graph_are_refused_before_loading(checkpoints, tmp_path):
    from ensrm.export.exporter import export_bundle

    with pytest.raises(ExportError, match="`dtype` must be one of fp32, bf16, fp16"):
        export_bundle([checkpoints("llama")], tmp_path / "b", dtype="float8", progress=None)
    with pytest.raises(ExportError, match="made from an fp32 graph"):
        export_bundle([checkpoints("llama")], tmp_path / "b", dtype="bf16", precisions="int8", progress=None)
    assert not (tmp_path / "b").exists()


def test_cli_dtype(checkpoints, tmp_path):
    from click.testing import CliRunner

    from ensrm.cli import main

    out = tmp_path / "rm"
    result = CliRunner().invoke(main, ["export", str(checkpoints("gpt2")), "-o", str(out), "--dtype", "fp16"])
    assert result.exit_code == 0, result.output
    assert "graph dtype fp16" in result.output and load_spec(out).dtype == "fp16"


def test_tensorrt_engines_are_named_by_the_graph_dtype(bundles):
    from ensrm.export.tensorrt_engine import graph_dtype

    spec = load_spec(bundles("llama", dtype="fp16"))
    assert graph_dtype(spec, "fp32") == "fp16" and graph_dtype(spec, "int8") == "int8"
    assert graph_dtype(load_spec(bundles("llama")), "fp32") == "fp32"
