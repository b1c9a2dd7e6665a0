"""Per-token INT8: one activation scale per token, computed in the graph."""

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ensrm import Scorer
from ensrm.bundle import load_spec
from ensrm.calibration.data import encoder_for, feed_batches, load_records
from ensrm.calibration.int8 import quantize_int8
from ensrm.cli import main
from ensrm.errors import ExportError
from ensrm.export.tensorrt_engine import build_engine

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tests.calibration.conftest import GATES  # noqa: E402


def _batches(bundle, path, size=16):
    encoder = encoder_for(bundle, load_spec(bundle))
    return [feeds for _, feeds in feed_batches(encoder, load_records(path, "records"), size)]


def _heads(model, feeds):
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    declared = {i.name for i in session.get_inputs()}
    return session.run(["heads"], {k: v for k, v in feeds.items() if k in declared})[0]  # [batch, K]


@pytest.fixture(scope="module", params=["bert", "llama"])
def per_token_graphs(request, bundles, record_files, tmp_path_factory):
    """(bundle, {"all": every encoder product in int8, "default": down products and last layer in float})."""
    bundle = bundles(request.param)
    batches = _batches(bundle, record_files["calib"])
    out = tmp_path_factory.mktemp(f"per-token-{request.param}")
    graphs = {name: (out / f"{name}.onnx", quantize_int8(bundle / "model.onnx", out / f"{name}.onnx", "per-token",
                                                          batches, **options))
              for name, options in (("all", {"float_products": ()}), ("default", {}))}
    return bundle, graphs


def test_per_token_int8_tracks_the_portable_graph(per_token_graphs, record_files):
    bundle, graphs = per_token_graphs
    feeds = _batches(bundle, record_files["eval"], 40)[0]  # mixed lengths, padded
    fp32 = _heads(bundle / "model.onnx", feeds)
    error = {name: float(np.abs(_heads(model, feeds) - fp32).max()) for name, (model, _) in graphs.items()}
    # bert 1.7e-4 of 1.2, llama 0.036 of 12.9 with every product in int8
    assert 0 < error["all"] < 0.01 * np.abs(fp32).max(), error
    assert error["default"] < error["all"], error  # the float products are the ones kept exact


def test_a_sequence_scores_the_same_alone_and_in_any_batch(per_token_graphs, record_files):
    bundle, graphs = per_token_graphs
    feeds = _batches(bundle, record_files["eval"], 40)[0]
    model = graphs["all"][0]
    batch = _heads(model, feeds)  # [40, K]
    for row in range(0, 40, 7):
        real = int(feeds["attention_mask"][row].sum())
        alone = {k: v[row:row + 1] for k, v in feeds.items()}
        if load_spec(bundle).padding_side == "right":  # the same tokens without the batch's padding
            alone = {k: v[:, :real] for k, v in alone.items()}
        np.testing.assert_allclose(_heads(model, alone)[0], batch[row], rtol=0, atol=1e-5)


def test_every_quantized_product_runs_as_an_integer_kernel_and_the_rest_stay_float(per_token_graphs, tmp_path):
    bundle, graphs = per_token_graphs
    (model, report), (_, everything) = graphs["default"], graphs["all"]
    assert report["method"] == "per-token" and report["float_products"] == ["down", "last"]
    assert report["float_matmuls"] > 0 and report["quantized_matmuls"] + report["float_matmuls"] \
        == everything["quantized_matmuls"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
    assert ops.count("MatMulIntegerToFloat") == report["quantized_matmuls"]
    from ensrm.calibration.int8 import linear_layer_inputs

    weights = {i.name: tuple(i.dims) for i in onnx.load(str(bundle / "model.onnx")).graph.initializer}
    down = {m[0].name for m in linear_layer_inputs(onnx.load(str(bundle / "model.onnx")).graph).values()
            if len(m) == 1 and weights[m[0].input[1]][0] > weights[m[0].input[1]][1]}
    float_products = {n.name for n in onnx.load(str(model)).graph.node if n.op_type == "MatMul"}
    assert len(down) == 2 and down <= float_products  # each layer's FFN-out stays float


def test_quantize_command_writes_a_gated_per_token_variant(spread_bundle, record_files, tmp_path):
    bundle = tmp_path / "rm"
    shutil.copytree(spread_bundle, bundle)
    result = CliRunner().invoke(main, ["quantize", str(bundle), "--precision", "int8", "--int8-mode", "per-token",
                                       "--calibration", str(record_files["calib"]), "--eval-on",
                                       str(record_files["eval"]), "--min-spearman", str(GATES["int8"].min_spearman),
                                       "--min-top1", str(GATES["int8"].min_top1)])
    assert result.exit_code == 0, result.output
    assert "int8: ACCEPTED on 40 held-out records" in result.output
    variant = load_spec(bundle).variants["int8"]
    assert variant.accepted and variant.method["method"] == "per-token"
    scores = Scorer(bundle, precision="int8").score_texts(["How do I bake bread?"] * 2, ["Knead it.", "Sure."])
    assert scores.heads.shape == (2, 4) and np.isfinite(scores.heads).all()
    with pytest.raises(ExportError, match="TensorRT builds only static INT8"):  # before looking for TensorRT
        build_engine(bundle, "int8")


def test_bad_per_token_options_are_refused_before_anything_is_written(bundles, record_files, tmp_path):
    bundle = bundles("bert")
    batches = _batches(bundle, record_files["calib"])
    with pytest.raises(ValueError, match="float_products must be among down, last, got 'attention'"):
        quantize_int8(bundle / "model.onnx", tmp_path / "x.onnx", "per-token", batches, float_products=("attention",))
    with pytest.raises(ValueError, match="per-token INT8 quantization needs calibration batches"):
        quantize_int8(bundle / "model.onnx", tmp_path / "x.onnx", "per-token")
    gpt2 = bundles("gpt2")
    with pytest.raises(ValueError, match="nothing to quantize .linear layers exported as Gemm"):
        quantize_int8(gpt2 / "model.onnx", tmp_path / "x.onnx", "per-token", _batches(gpt2, record_files["calib"]))
    assert not (tmp_path / "x.onnx").exists()
