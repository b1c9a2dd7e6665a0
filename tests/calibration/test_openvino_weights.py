"""Weight-compressed variants (NNCF ``compress_weights``) on tiny decoder and encoder bundles.

INT8 weights (``int8_mode="openvino-weights"``) and INT4 weights (``precision="int4"``) are OpenVINO
IRs listed with sha256, judged by the gate on OpenVINO, run by OpenVINO only, with the ensemble's
heads kept float. The gates here are opened wide (a tiny random model's gate numbers say little);
the mechanics of acceptance and rejection are what is tested.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ensrm import Scorer
from ensrm.bundle import load_spec, read_spec, sha256_file
from ensrm.calibration.data import load_records
from ensrm.calibration.gate import Gate, gates_with
from ensrm.errors import BundleError, ExportError, ProviderError

pytest.importorskip("onnx")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

from ensrm.calibration.openvino_weights import (  # noqa: E402
    DYNAMIC_QUANTIZATION,
    WeightCompression,
    compressed_layers,
)
from ensrm.calibration.variants import add_variants  # noqa: E402
from ensrm.cli import main  # noqa: E402
from ensrm.runtime.openvino_backend import core, variant_properties  # noqa: E402

#: Gates every variant of a tiny random model passes, and one none can (Spearman is at most 1).
OPEN = gates_with(min_spearman=-1.0, min_top1=0.0)
IMPOSSIBLE = {"int8": Gate(min_spearman=1.01), "int4": Gate(min_spearman=1.01)}


def _texts(record_files):
    records = load_records(record_files["eval"], "eval")
    return [r["prompt"] for r in records], [r["response"] for r in records]


def _compressed(bundles, record_files, tmp_path_factory, kind: str, **weights) -> tuple:
    bundle = tmp_path_factory.mktemp(f"weights-{kind}") / "b"
    shutil.copytree(bundles(kind), bundle)
    spec = add_variants(bundle, "int8,int4", int8_mode="openvino-weights", eval_on=record_files["eval"], gates=OPEN,
                        threads=1, weights=WeightCompression(**weights), progress=None)
    return bundle, spec


@pytest.fixture(scope="module")
def llama_weights(bundles, record_files, tmp_path_factory):
    """A tiny Llama bundle with accepted INT8- and INT4-weight variants: (bundle, spec)."""
    return _compressed(bundles, record_files, tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def bert_weights(bundles, record_files, tmp_path_factory):
    """A tiny BERT bundle, INT8 weights with OpenVINO's dynamic activation quantization: (bundle, spec)."""
    return _compressed(bundles, record_files, tmp_path_factory, "bert", dynamic_group_size=32,
                       float_products=("down", "last"))


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_decoder_variant_is_a_listed_gated_ir(llama_weights, precision):
    bundle, spec = llama_weights
    variant = spec.variants[precision]
    xml, bin_ = f"model.{precision}.xml", f"model.{precision}.bin"
    assert variant.accepted and variant.file == xml and "top1" in variant.checks
    for name in (xml, bin_):  # both files listed with their real sha256
        assert spec.files[name].sha256 == sha256_file(bundle / name)
    method = variant.method
    assert method["method"] == "nncf-weights" and method["runtime"].startswith("openvino ")
    assert method["nncf"] and method["data_free"] and method["compile"] == {DYNAMIC_QUANTIZATION: 0}
    assert method["mode"] == {"int8": "int8_asym", "int4": "int4_sym"}[precision]
    if precision == "int4":
        # hidden 32 and FFN 64 are not multiples of 128: smaller groups, recorded as used
        assert method["group_size"] == 128 and method["ratio"] == 1.0
        assert method["group_sizes"] and max(method["group_sizes"]) <= 64
        assert method["compressed"]["int4"] >= 14  # 2 layers x 7 products
    else:
        assert method["compressed"] == {"int8": 15, "int4": 0}  # 14 products + the token embedding
    manifest = json.loads((bundle / "ensemble.json").read_text())
    assert manifest["variants"][precision]["method"] == method


def test_heads_stay_float_in_the_compressed_ir(llama_weights):
    bundle, spec = llama_weights
    for precision in ("int8", "int4"):
        model = core().read_model(str(bundle / spec.variants[precision].file))
        heads = [op for op in model.get_ops() if op.get_type_name() == "MatMul"
                 and op.get_friendly_name() in spec.variants[precision].method["ignored_scope"]]
        assert heads, "the stacked heads' product is in the ignored scope"
        for op in heads:  # its weight is a float constant, not an integer one decompressed
            weight = op.input_value(1).get_node()
            assert weight.get_type_name() == "Constant" and weight.get_element_type().is_real()
        assert sum(compressed_layers(model)[0].values()) > 0


def test_compressed_variants_run_on_openvino_close_to_fp32(llama_weights, record_files):
    bundle, _ = llama_weights
    prompts, responses = _texts(record_files)
    fp32 = Scorer(bundle, backend="onnxruntime", threads=1).score_texts(prompts, responses)
    spread = float(np.std(fp32.heads))
    for precision, tolerance in (("int8", 0.05), ("int4", 0.5)):
        scorer = Scorer(bundle, precision=precision, threads=1)  # auto: the file is OpenVINO's
        assert scorer.description.startswith("OpenVINO") and scorer.model_path.name == f"model.{precision}.xml"
        heads = scorer.score_texts(prompts, responses).heads
        assert np.isfinite(heads).all() and not np.array_equal(heads, fp32.heads)
        assert np.abs(heads - fp32.heads).max() <= tolerance * spread, precision
        assert np.corrcoef(heads.ravel(), fp32.heads.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_onnxruntime_refuses_the_ir_naming_the_extra(llama_weights, precision):
    bundle, _ = llama_weights
    with pytest.raises(ProviderError, match=r"ensrm\[openvino\]"):
        Scorer(bundle, precision=precision, backend="onnxruntime")


def test_a_damaged_ir_is_refused_by_sha256(llama_weights, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(llama_weights[0], bundle)
    raw = bytearray((bundle / "model.int4.bin").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bundle / "model.int4.bin").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="model.int4.bin does not match its sha256"):
        Scorer(bundle, precision="int4")


def test_a_rejected_variant_is_recorded_and_its_files_deleted(llama_weights, record_files, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(llama_weights[0], bundle)
    spec = add_variants(bundle, "int8,int4", int8_mode="openvino-weights", eval_on=record_files["eval"],
                        gates=IMPOSSIBLE, threads=1, progress=None)
    for precision in ("int8", "int4"):
        variant = spec.variants[precision]
        assert not variant.accepted and variant.file is None and variant.checks["reasons"]
        assert variant.method["file"] == f"model.{precision}.xml"  # how it was made stays on record
        assert not (bundle / f"model.{precision}.xml").exists() and not (bundle / f"model.{precision}.bin").exists()
        assert f"model.{precision}.bin" not in spec.files
        with pytest.raises(BundleError, match="failed its accuracy gate"):
            Scorer(bundle, precision=precision)
    assert load_spec(bundle).usable_precisions == ("fp32",)


def test_encoder_variant_records_and_runs_with_dynamic_quantization(bert_weights, record_files):
    bundle, spec = bert_weights
    prompts, responses = _texts(record_files)
    fp32 = Scorer(bundle, backend="onnxruntime", threads=1).score_texts(prompts, responses)
    for precision in ("int8", "int4"):
        method = spec.variants[precision].method
        assert spec.variants[precision].accepted and method["compile"] == {DYNAMIC_QUANTIZATION: 32}
        assert method["float_products"] == ["down", "last"]
        scorer = Scorer(bundle, precision=precision, threads=1)
        assert int(scorer.backend.compiled.get_property(DYNAMIC_QUANTIZATION)) == 32  # as it was judged
        heads = scorer.score_texts(prompts, responses).heads
        assert np.corrcoef(heads.ravel(), fp32.heads.ravel())[0, 1] > 0.9
    # down + last float on a 2-layer encoder: fewer products compressed than the 12 linear ones
    assert spec.variants["int8"].method["compressed"]["int8"] < 12 + 3


def test_smoothing_is_exact_in_float_and_recorded_with_the_variant(bundles, record_files, tmp_path):
    import onnxruntime as ort

    from ensrm.calibration.data import encoder_for, feed_batches
    from ensrm.calibration.int8 import smooth_graph

    bundle = tmp_path / "b"
    shutil.copytree(bundles("bert"), bundle)
    spec = read_spec(bundle)
    records = load_records(record_files["calib"], "calib")
    batches = [feeds for _, feeds in feed_batches(encoder_for(bundle, spec), records)]
    smoothed = tmp_path / "smoothed.onnx"
    assert smooth_graph(bundle / "model.onnx", smoothed, batches, 0.9, ("down",)) > 0
    runs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["heads"], batches[0])[0]
            for path in (bundle / "model.onnx", smoothed)]  # [batch, K] each
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-4, atol=1e-4 * float(np.abs(runs[0]).max()))

    weights = WeightCompression(float_products=("down", "last"), dynamic_group_size=32, smoothing=0.9)
    spec = add_variants(bundle, "int8", int8_mode="openvino-weights", calibration=record_files["calib"],
                        eval_on=record_files["eval"], gates=OPEN, threads=1, weights=weights, progress=None)
    method = spec.variants["int8"].method
    assert spec.variants["int8"].accepted and method["smoothing"] == 0.9 and method["smoothed_products"] > 0
    assert method["data_free"] is False and method["compile"] == {DYNAMIC_QUANTIZATION: 32}
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]  # the smoothed graph was temporary
    assert Scorer(bundle, precision="int8", threads=1).score_texts(*_texts(record_files)).heads.shape[1] == \
        spec.num_heads


def test_smoothing_without_calibration_records_is_refused(bundles, record_files, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(bundles("bert"), bundle)
    with pytest.raises(ExportError, match="needs calibration records"):
        add_variants(bundle, "int8", int8_mode="openvino-weights", eval_on=record_files["eval"], gates=OPEN,
                     threads=1, weights=WeightCompression(smoothing=0.5), progress=None)
    assert read_spec(bundle).variants.keys() == {"fp32"}


def test_a_manifest_cannot_pass_other_compile_properties(llama_weights):
    spec = llama_weights[1]
    variant = spec.variants["int4"]
    damaged = spec.with_variants(variant.__class__(variant.precision, variant.file, True, variant.checks,
                                                   {**variant.method, "compile": {"CACHE_DIR": "/tmp/x"}}))
    with pytest.raises(BundleError, match="CACHE_DIR"):
        variant_properties(damaged, "int4")
    assert variant_properties(spec, "int4") == {DYNAMIC_QUANTIZATION: 0}


def test_bundles_without_int4_keep_their_manifest_byte_for_byte(bundles):
    path = bundles("bert") / "ensemble.json"
    assert read_spec(bundles("bert")).to_json() == path.read_text()


@pytest.mark.parametrize("bad, message", [(dict(ratio=0.0), "ratio"), (dict(group_size=0), "group_size"),
                                          (dict(float_products=("up",)), "float_products"),
                                          (dict(dynamic_group_size=-1), "dynamic_group_size"),
                                          (dict(smoothing=1.5), "smoothing"),
                                          (dict(mode="nf4"), "mode")])
def test_weight_settings_are_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        WeightCompression(**bad)


def test_quantize_cli_makes_an_int4_variant(bundles, record_files, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(bundles("llama"), bundle)
    runner = CliRunner()
    result = runner.invoke(main, ["quantize", str(bundle), "--precision", "int4", "--ratio", "0.5",
                                  "--eval-on", str(record_files["eval"]), "--weights-mode", "int4_asym",
                                  "--min-spearman", "-1", "--min-top1", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "int4: accepted" in result.output
    method = load_spec(bundle).variants["int4"].method
    assert method["mode"] == "int4_asym" and method["ratio"] == 0.5
    assert method["compressed"]["int8"] > 1  # half the weights in NNCF's int8 backup
    bad = runner.invoke(main, ["quantize", str(bundle), "--precision", "int4", "--keep-float", "up"])
    assert bad.exit_code == 2 and "float_products" in bad.output


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_the_heads_product_is_in_both_openvino_float_scopes(bundles, kind):
    # the heads are an ONNX Gemm that OpenVINO splits into NAME/WithoutBiases (a MatMul) + NAME (an Add):
    # NNCF's INT8 search and the weight compression must both see the MatMul's name
    onnx = pytest.importorskip("onnx")
    from ensrm.calibration.graphs import float_tail_nodes
    from ensrm.calibration.openvino_int8 import openvino_names, scope_names
    from ensrm.calibration.openvino_weights import float_scope

    source = bundles(kind) / "model.onnx"
    graph = onnx.load(str(source), load_external_data=False).graph
    head = next(n for n in graph.node if n.name in float_tail_nodes(graph) and n.op_type in ("MatMul", "Gemm"))
    model = core().read_model(str(source))
    matmul = next(op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
                  and op.get_friendly_name() in (head.name, f"{head.name}/WithoutBiases"))
    assert head.name in scope_names(source)[0]
    assert matmul in openvino_names(model, scope_names(source)[0])
    assert matmul in float_scope(source, model)


def test_a_bf16_decoder_graph_gets_compressed_variants(bundles, record_files, tmp_path):
    # a large decoder is exported in bf16 (no fp32 copy): its weights compress from there
    bundle = tmp_path / "b"
    shutil.copytree(bundles("llama", dtype="bf16"), bundle)
    spec = add_variants(bundle, "int4", eval_on=record_files["eval"], gates=OPEN, threads=1, progress=None)
    assert spec.dtype == "bf16" and spec.variants["int4"].accepted
    assert spec.variants["int4"].method["compressed"]["int4"] >= 14
    prompts, responses = _texts(record_files)
    graph = Scorer(bundle, backend="onnxruntime", threads=1).score_texts(prompts, responses).heads
    heads = Scorer(bundle, precision="int4", threads=1).score_texts(prompts, responses).heads
    assert np.corrcoef(heads.ravel(), graph.ravel())[0, 1] > 0.9


def test_calibrate_rewrites_the_normalisation_inside_the_irs(llama_weights, record_files, tmp_path):
    from ensrm.calibration.normalize import calibrate_bundle

    bundle = tmp_path / "b"
    shutil.copytree(llama_weights[0], bundle)
    spec = calibrate_bundle(bundle, record_files["refs"], threads=1)
    assert spec.normalization.calibrated and set(spec.usable_precisions) == {"fp32", "int8", "int4"}
    load_spec(bundle)  # the rewritten .xml / .bin are listed with their new sha256
    prompts, responses = _texts(record_files)
    fp32 = Scorer(bundle, backend="onnxruntime", threads=1).score_texts(prompts, responses).heads
    for precision in ("int8", "int4"):
        heads = Scorer(bundle, precision=precision, threads=1).score_texts(prompts, responses).heads
        # normalised like fp32: the raw heads' spread (std ~3) is gone from both
        np.testing.assert_allclose(heads.std(axis=0), fp32.std(axis=0), rtol=0.3)
        np.testing.assert_allclose(heads.mean(axis=0), fp32.mean(axis=0), atol=0.3)


def test_export_writes_int8_weight_and_int4_variants(checkpoints, record_files, tmp_path):
    out = tmp_path / "rm"
    result = CliRunner().invoke(main, ["export", str(checkpoints("gpt2")), "-o", str(out), "--no-cpu-graph",
                                       "--precision", "int8,int4", "--int8-mode", "openvino-weights",
                                       "--eval-on", str(record_files["eval"]), "--min-spearman", "-1",
                                       "--min-top1", "0"])
    assert result.exit_code == 0, result.output
    spec = load_spec(out)
    assert {"fp32", "int8", "int4"} <= set(spec.usable_precisions)
    assert {spec.variants["int8"].file, spec.variants["int4"].file} == {"model.int8.xml", "model.int4.xml"}
    assert spec.variants["int8"].method["method"] == spec.variants["int4"].method["method"] == "nncf-weights"
