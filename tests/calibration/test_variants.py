import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import ensrm.calibration.variants as variants_module
from ensrm import Scorer
from ensrm.bundle import load_spec
from ensrm.calibration.data import load_records
from ensrm.calibration.int8 import quantize_int8
from ensrm.cli import main
from ensrm.errors import BundleError, ExportError

onnx = pytest.importorskip("onnx")

from tests.calibration.conftest import GATES  # noqa: E402


def test_manifest_records_each_variant_with_its_gate_numbers(variant_bundle):
    bundle, messages = variant_bundle
    manifest = json.loads((bundle / "ensemble.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "fp16", "int8"}
    for precision in ("fp16", "int8"):
        variant = manifest["variants"][precision]
        checks = variant["checks"]
        assert variant["accepted"] and variant["file"] == f"model.{precision}.onnx", checks["reasons"]
        assert checks["records"] == 12  # every 4th of 48 calibration records is held out
        assert set(checks["spearman"]) == {"mean", "std", "min", "uwo"} and len(checks["spearman_heads"]) == 4
        assert set(checks["top1"]) == {"4"}  # 12 records are too few for best-of-16
        assert checks["stress"]["finite"] and checks["stress"]["max_length"] == manifest["max_length"]
    assert manifest["variants"]["int8"]["method"]["method"] == "static-qdq"
    assert any(m.startswith("int8: ACCEPTED") for m in messages)
    assert any("top-1@4" in m for m in messages)


def test_runtime_loads_each_variant_and_ranks_like_fp32(variant_bundle, record_files):
    bundle, _ = variant_bundle
    records = load_records(record_files["eval"], "eval")
    prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
    fp32 = Scorer(bundle).score_texts(prompts, responses)
    fp16 = Scorer(bundle, precision="fp16").score_texts(prompts, responses)
    int8 = Scorer(bundle, precision="int8").score_texts(prompts, responses)
    assert np.isfinite(int8.heads).all() and np.isfinite(fp16.heads).all()
    np.testing.assert_allclose(fp16.heads, fp32.heads, atol=0.05)
    assert not np.array_equal(int8.heads, fp32.heads)  # it really is another graph


def test_fp16_graph_keeps_normalisations_heads_and_tail_in_fp32(variant_bundle):
    bundle, _ = variant_bundle
    model = onnx.load(str(bundle / "model.fp16.onnx"))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    matmul_weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert matmul_weights and all(inits[w] == f16 for w in matmul_weights)
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax") or node.name.startswith("ensrm/"):
            assert all(inits.get(i, f32) in (f32, onnx.TensorProto.INT64) for i in node.input[1:]), node.name
    assert inits["ensrm_norm_sigma"] == f32
    assert [i.type.tensor_type.elem_type for i in model.graph.output] == [f32] * 5
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.INT64] * 3


def test_mean_pooled_bundle_gets_an_fp16_variant(spread_checkpoint, record_files, tmp_path):
    # mean pooling casts the int64 mask to float: the fp16 converter's round-trip casts around it
    # must fold back into that cast, not into an Identity of the int64 mask (a graph that fails to load)
    import torch
    from safetensors.torch import save_file

    from ensrm.export.exporter import export_bundle

    hidden = json.loads((spread_checkpoint / "config.json").read_text())["hidden_size"]
    save_file({"weight": torch.randn(3, hidden, generator=torch.Generator().manual_seed(0)), "bias": torch.zeros(3)},
              str(tmp_path / "heads.safetensors"))
    export_bundle([spread_checkpoint], tmp_path / "rm", heads=tmp_path / "heads.safetensors", pooling="mean",
                  precisions="fp16", eval_on=record_files["eval"], gates=GATES, progress=None)
    assert load_spec(tmp_path / "rm").variants["fp16"].accepted
    records = load_records(record_files["eval"], "eval")
    prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
    np.testing.assert_allclose(Scorer(tmp_path / "rm", precision="fp16").score_texts(prompts, responses).heads,
                               Scorer(tmp_path / "rm").score_texts(prompts, responses).heads, atol=0.05)


def test_int8_graph_is_symmetric_qdq_with_a_float_tail(variant_bundle):
    bundle, _ = variant_bundle
    model = onnx.load(str(bundle / "model.int8.onnx"))
    numpy_helper = onnx.numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequant = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quant and dequant
    for node in quant + dequant:
        zero = numpy_helper.to_array(inits[node.input[2]])
        assert zero.dtype == np.int8 and not zero.any(), node.name  # symmetric: zero point 0
    per_channel = [n for n in dequant if numpy_helper.to_array(inits[n.input[1]]).ndim == 1]
    assert per_channel and all(a.i == 1 for n in per_channel for a in n.attribute if a.name == "axis")
    produced_by_dq = {n.output[0] for n in dequant}
    readers = {}
    for node in model.graph.node:
        for name in set(node.input) & produced_by_dq:
            readers.setdefault(name, []).append(node)
    # each dequantized tensor feeds one matrix product and nothing else: the residual stream,
    # embeddings, pooler, heads and aggregates never see an int8 round trip
    assert set(readers) == produced_by_dq
    assert all(len(nodes) == 1 and nodes[0].op_type == "MatMul" for nodes in readers.values())
    assert not any(n.name.startswith("ensrm/") for nodes in readers.values() for n in nodes)


def test_onnxruntime_runs_every_quantized_product_as_an_integer_kernel(variant_bundle, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    bundle, _ = variant_bundle
    quantized = load_spec(bundle).variants["int8"].method["quantized_matmuls"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(bundle / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
    # a Q/DQ pair onnxruntime cannot fuse runs as a float MatMul on dequantized values: slower than fp32
    assert quantized > 0 and ops.count("MatMulIntegerToFloat") == quantized
    assert "DequantizeLinear" not in ops


def test_calibration_ranges_ignore_padding(spread_bundle, tmp_path):
    from ensrm.calibration.int8 import channel_ranges, linear_layer_inputs

    model = onnx.load(str(spread_bundle / "model.onnx"), load_external_data=False)
    first = next(iter(linear_layer_inputs(model.graph)))
    ids = np.random.default_rng(0).integers(1000, 2000, size=(2, 12))  # [batch, seq]
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    padded = channel_ranges(spread_bundle / "model.onnx", [first], [feeds])[first]
    other_padding = dict(feeds, input_ids=np.where(mask == 1, ids, 999))
    np.testing.assert_array_equal(channel_ranges(spread_bundle / "model.onnx", [first], [other_padding])[first],
                                  padded)  # what sits under the padding does not matter
    assert list(tmp_path.iterdir()) == [] and not list(spread_bundle.glob("tmp*"))


def test_gelu_reordering_is_bit_identical(spread_bundle, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from ensrm.calibration.int8 import fuse_ready_gelu

    model = onnx.load(str(spread_bundle / "model.onnx"))
    assert fuse_ready_gelu(model.graph) == 2  # one GELU per layer of the tiny BERT
    assert fuse_ready_gelu(model.graph) == 0  # already in the fused form
    onnx.save(model, str(tmp_path / "gelu.onnx"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the math, unfused
    ids = np.random.default_rng(1).integers(1000, 2000, size=(3, 9))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    before, after = (ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(["heads"], feeds)[0]
                     for p in (spread_bundle / "model.onnx", tmp_path / "gelu.onnx"))
    np.testing.assert_array_equal(before, after)


def test_gptq_rounding_tracks_fp32_closer_than_rounding_to_nearest(spread_bundle, record_files, tmp_path):
    from ensrm.bundle import load_spec
    from ensrm.calibration.data import encoder_for, feed_batches, score_records
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    spec = load_spec(spread_bundle)
    encoder = encoder_for(spread_bundle, spec)
    batches = [feeds for _, feeds in feed_batches(encoder, load_records(record_files["calib"], "calib"), 16)]
    records = load_records(record_files["eval"], "eval")
    fp32 = score_records(OnnxRuntimeBackend(spread_bundle / "model.onnx"), encoder, records).heads  # [40, 4]
    errors = {}
    for rounding in ("nearest", "gptq"):
        target = tmp_path / f"{rounding}.onnx"
        assert quantize_int8(spread_bundle / "model.onnx", target, "static", batches, rounding=rounding)["rounding"] \
            == rounding
        int8 = score_records(OnnxRuntimeBackend(target), encoder, records).heads
        errors[rounding] = float(np.sqrt(np.mean((int8 - fp32) ** 2)))
    assert errors["gptq"] < errors["nearest"], errors  # 0.033 vs 0.038 on this random model
    with pytest.raises(ValueError, match="rounding must be one of gptq, nearest"):
        quantize_int8(spread_bundle / "model.onnx", tmp_path / "x.onnx", "static", batches, rounding="stochastic")
    assert not (tmp_path / "x.onnx").exists()


def test_gptq_lowers_every_linear_layers_output_error_on_its_calibration_inputs(spread_bundle, record_files):
    from ensrm.bundle import load_spec
    from ensrm.calibration.data import encoder_for, feed_batches
    from ensrm.calibration.int8 import calibration_statistics, gptq_round, linear_layer_inputs

    batches = [feeds for _, feeds in feed_batches(encoder_for(spread_bundle, load_spec(spread_bundle)),
                                                  load_records(record_files["calib"], "calib"), 16)]
    model = onnx.load(str(spread_bundle / "model.onnx"))
    groups = linear_layer_inputs(model.graph)
    _, grams = calibration_statistics(model, list(groups), batches, gram=True)
    weights = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    for tensor, matmuls in groups.items():
        gram = grams[tensor]  # [in, in]
        for matmul in matmuls:
            w = weights[matmul.input[1]]  # [in, out]
            scale = np.abs(w).max(axis=0) / 127  # [out]

            def output_error(q):  # |X (scale q - W)|^2 = tr(D^T X^T X D)
                d = q * scale - w
                return float(np.trace(d.T @ gram @ d))
            assert output_error(gptq_round(w, gram, scale)) < output_error(np.round(w / scale)), matmul.name


def _damaging_quantizer(source, target, mode="static", calibration=None, **options):
    """Quantize, then scramble the int8 weights: a variant that loads and runs but ranks badly."""
    report = quantize_int8(source, target, mode, calibration, **options)
    model = onnx.load(str(target))
    for init in model.graph.initializer:
        if init.name.endswith("_quantized") and init.data_type == onnx.TensorProto.INT8:
            values = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(np.random.default_rng(0).permutation(values.ravel())
                                                       .reshape(values.shape), init.name))
    onnx.save(model, str(target))
    return report


def test_gate_rejects_a_damaged_int8_variant(variant_bundle, record_files, tmp_path, monkeypatch):
    bundle = tmp_path / "rm"
    shutil.copytree(variant_bundle[0], bundle)
    args = ["quantize", str(bundle), "--precision", "int8", "--calibration", str(record_files["calib"]),
            "--eval-on", str(record_files["eval"]), "--min-spearman", "0.9", "--min-top1", "0.6"]
    undamaged = CliRunner().invoke(main, args)
    assert undamaged.exit_code == 0 and "int8: ACCEPTED on 40 held-out records" in undamaged.output
    monkeypatch.setattr("ensrm.calibration.int8.quantize_int8", _damaging_quantizer)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "int8: REJECTED on 40 held-out records" in result.output
    assert "int8: rejected" in result.output
    spec = load_spec(bundle)
    assert spec.variants["int8"].accepted is False and spec.variants["int8"].file is None
    assert spec.variants["int8"].gate.min_spearman == 0.9
    assert not (bundle / "model.int8.onnx").exists()
    assert spec.variants["int8"].checks["spearman"]["mean"] < 0.9
    assert spec.variants["fp16"].accepted  # untouched
    with pytest.raises(BundleError, match="failed its accuracy gate"):
        Scorer(bundle, precision="int8")


def test_dynamic_int8_needs_no_calibration(spread_bundle, record_files, tmp_path):
    bundle = tmp_path / "rm"
    shutil.copytree(spread_bundle, bundle)
    spec = variants_module.add_variants(bundle, "int8", int8_mode="dynamic", eval_on=record_files["eval"],
                                        gates=GATES)
    assert spec.variants["int8"].method["method"] == "dynamic"
    assert Scorer(bundle, precision="int8").score_texts(["Hi"], ["Hello"]).heads.shape == (1, 4)


def test_static_int8_without_calibration_is_an_error_naming_the_option(spread_bundle, record_files, tmp_path):
    bundle = tmp_path / "rm"
    shutil.copytree(spread_bundle, bundle)
    with pytest.raises(ExportError, match="`calibration=CALIB.jsonl`"):
        variants_module.add_variants(bundle, "int8", eval_on=record_files["eval"])
    # the command names its own options instead of the parameters
    result = CliRunner().invoke(main, ["quantize", str(bundle), "--precision", "int8", "--eval-on",
                                       str(record_files["eval"])])
    assert result.exit_code == 1 and "pass --calibration CALIB.jsonl (or --int8-mode dynamic " in result.output
    with pytest.raises(ExportError, match="need records to be judged on"):
        variants_module.add_variants(bundle, "fp16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):  # bf16 is known: OpenVINO's hint
        variants_module.parse_precisions("fp16,fp8")
    assert variants_module.parse_precisions("fp16,bf16") == ("fp16", "bf16")


def test_calibrating_a_bundle_with_variants_updates_and_regates_them(variant_bundle, record_files, tmp_path):
    from ensrm.calibration.normalize import calibrate_bundle

    bundle = tmp_path / "rm"
    shutil.copytree(variant_bundle[0], bundle)
    spec = calibrate_bundle(bundle, record_files["eval"])
    assert spec.normalization.records == 40
    assert spec.variants["fp16"].checks["records"] == 40
    fp16 = onnx.load(str(bundle / "model.fp16.onnx"))
    sigma = next(i for i in fp16.graph.initializer if i.name == "ensrm_norm_sigma")
    np.testing.assert_allclose(onnx.numpy_helper.to_array(sigma), spec.normalization.sigma, rtol=1e-6)
