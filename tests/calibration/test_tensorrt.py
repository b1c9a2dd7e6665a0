"""TensorRT paths: pure helpers everywhere, real engines only where a GPU and tensorrt exist."""

import importlib.util
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ensrm.cli import main
from ensrm.errors import MissingDependencyError, ProviderError
from ensrm.export.tensorrt_engine import profile_ranges
from ensrm.runtime.onnxruntime_backend import with_tensorrt_cache
from ensrm.runtime.tensorrt_backend import check_tensorrt, engine_name


def _tensorrt_missing() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install 'ensrm[tensorrt]' on a GPU machine)"
    try:
        check_tensorrt()
    except (MissingDependencyError, ProviderError) as exc:
        return str(exc)
    return None


MISSING = _tensorrt_missing()


def test_engine_name_records_gpu_tensorrt_and_precision():
    assert engine_name("fp16", (8, 6), "10.13.2.6") == "model.fp16.sm86.trt10.13.2.engine"


def test_profiles_cover_every_batch_up_to_the_largest():
    assert profile_ranges([8]) == [(1, 8)]
    assert profile_ranges([1, 16, 64, 16]) == [(1, 1), (2, 16), (17, 64)]
    with pytest.raises(ValueError):
        profile_ranges([0, 4])


def test_bare_tensorrt_provider_gets_an_engine_cache(tmp_path):
    providers = with_tensorrt_cache(["trt", "cuda", "cpu"], tmp_path)
    name, options = providers[0]
    assert name == "trt" and options["trt_engine_cache_path"] == str(tmp_path)
    assert providers[1:] == ["cuda", "cpu"]
    explicit = ("tensorrt", {"trt_fp16_enable": "True"})
    assert with_tensorrt_cache([explicit], tmp_path) == [explicit]  # given options are kept
    assert with_tensorrt_cache(None, tmp_path) is None


@pytest.mark.skipif(MISSING is None, reason="tensorrt and a GPU are present")
def test_without_tensorrt_or_gpu_the_error_is_one_line_naming_what_is_missing(bundles, checkpoints, tmp_path):
    with pytest.raises((MissingDependencyError, ProviderError)) as info:
        check_tensorrt()
    assert "\n" not in str(info.value)
    assert "tensorrt" in str(info.value) or "GPU" in str(info.value) or "cuda" in str(info.value)
    result = CliRunner().invoke(main, ["build-engine", str(bundles("bert", 4)), "--precision", "fp32"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    out = tmp_path / "rm"
    result = CliRunner().invoke(main, ["export", str(checkpoints("bert", 4)), "-o", str(out), "--tensorrt", "1,8"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert not out.exists()  # refused before any export work


def test_export_refuses_tensorrt_with_an_int8_mode_it_cannot_build_before_any_work(checkpoints, record_files,
                                                                                   tmp_path):
    out = tmp_path / "rm"
    result = CliRunner().invoke(main, ["export", str(checkpoints("bert", 4)), "-o", str(out), "--precision", "int8",
                                       "--int8-mode", "per-token", "--calibration", str(record_files["calib"]),
                                       "--tensorrt", "1,8"])
    assert result.exit_code == 1, result.output
    assert "TensorRT builds only static INT8" in result.output and "--int8-mode static" in result.output
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_scores_like_onnxruntime(bundles, record_files, precision, tmp_path):
    from ensrm import Scorer
    from ensrm.calibration.variants import add_variants
    from ensrm.export.tensorrt_engine import build_engine

    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert", 4), bundle)
    if precision != "fp32":
        add_variants(bundle, precision, eval_on=record_files["eval"])
    engine = build_engine(bundle, precision, batch_sizes=(1, 8))
    assert engine.is_file() and (bundle / "engines" / "timing.cache").is_file()
    prompts, responses = ["How do I bake bread?"] * 9, [f"Knead it {i} times." for i in range(9)]
    onnx_scores = Scorer(bundle, precision=precision).score_texts(prompts, responses)
    trt_scores = Scorer(bundle, precision=precision, backend="tensorrt", max_batch_size=8).score_texts(
        prompts, responses, batch_size=8)
    np.testing.assert_allclose(trt_scores.heads, onnx_scores.heads, atol=1e-2 if precision == "fp16" else 1e-3)
