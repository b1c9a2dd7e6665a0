"""The project's benchmarks (``benchmarks/``, outside the wheel): targets with pass/fail on top of
``ensrm bench``'s suites, and the trunk experiment suite, end to end on tiny models.

Timings are never asserted: this machine is shared and the numbers mean nothing here.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from benchmarks.__main__ import main as benchmarks_main
from benchmarks.__main__ import run
from benchmarks.trunk import TrunkConfig, linear_fit, trunk_member_layers
from ensrm.runtime.openvino_backend import installed as openvino_installed
from tests.bench.test_bench import TINY


def test_bench_runs_end_to_end_on_a_tiny_model(checkpoints, bundles, tmp_path):
    paths = run(tmp_path / "out", bundle=bundles("bert", 2), checkpoint=checkpoints("bert", 2, 0),
                           cache_dir=tmp_path / "cache",
                           config=TrunkConfig(**TINY), progress=None)
    assert {p.name for p in paths.values()} == {"bench.json", "bench.md", "bench.png"}
    report = json.loads(paths["json"].read_text())
    assert set(report) >= {"command", "machine", "config", "model", "results", "targets"}
    results = report["results"]
    assert set(results) >= {"compare", "grid", "ceiling", "overhead", "texts", "startup", "bundle_size_mb"}
    assert report["model"]["last_layer_pooled_token_only"]  # a BERT bundle: first-token pooling, narrowed
    compare = results["compare"]
    with_openvino = openvino_installed()  # make test installs it: the OpenVINO rows then run beside the others
    peers = ("plain/k2@openvino", "bundle/fp32@onnxruntime") if with_openvino else ()
    for name in ("bundle/fp32", "torch/eager", "plain/k2", "multihead/k1", "multihead/k2", "full_sessions/k1",
                 "full_sessions/k2", "full_graph/k2", *peers):
        assert "error" not in compare[name], compare[name]
        assert compare[name]["seq_per_s"] > 0 and compare[name]["rss_peak_mb"] > 0
    assert compare["bundle/fp32"]["runtime"].startswith("OpenVINO" if with_openvino else "onnxruntime")
    assert compare["plain/k2"]["runtime"].startswith("onnxruntime")
    sweep = results["heads_sweep"]
    assert sweep["heads"] == [1, 2] and sweep["paired_ratio"][0] == 1.0 and sweep["paired_ratio"][1] > 0
    assert "K sweep in one process" in paths["markdown"].read_text()
    assert {(r["batch"], r["length"]) for r in results["grid"]["bundle/fp32"]["shapes"]} == \
        {(1, 8), (2, 8), (1, 16), (2, 16)}
    gemms = ("fp32", "int8", "torch_fp32") + (("openvino_fp32",) if with_openvino else ())
    assert all(results["ceiling"][p]["gflops"] > 0 for p in gemms)
    assert "torch_fp32 32x16x32" in paths["markdown"].read_text()
    assert set(results["texts"]["cases"]) == {"score_texts", "pretokenised_grouped", "pretokenised_arrival"}
    targets = {t["target"] for t in report["targets"]}
    assert any("vs PyTorch eager" in t for t in targets) and any("fastest GEMM" in t for t in targets)
    peer = next(t for t in report["targets"] if "plain logits export on OpenVINO" in t["target"])
    assert (peer["value"] is not None) == with_openvino
    int8 = next(t for t in report["targets"] if t["target"].startswith("int8"))
    assert int8["passed"] is None and int8["value"] is None  # the tiny bundle has no int8 variant
    table = paths["markdown"].read_text()
    assert "| Target | Threshold | Measured | Result |" in table and "bundle/fp32" in table
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trunk_suite_runs_end_to_end_on_a_tiny_model(checkpoints, tmp_path):
    """The trunk suite alone: no bundle, K members for each m, the fits, the stacked-matmul rows, trunk.png."""
    config = TrunkConfig(**{**TINY, "trunk_members": 3, "paired_rounds": 2, "stacked_matmul_min_time": 0.0})
    result = CliRunner().invoke(benchmarks_main, ["--help"])
    assert result.exit_code == 0 and "trunk" in result.output
    paths = run(tmp_path / "out", checkpoint=checkpoints("bert", 2, 0), cache_dir=tmp_path / "cache",
                           suites=["trunk"], config=config, progress=None)
    assert {p.name for p in paths.values()} == {"bench.json", "bench.md", "trunk.png"}
    assert paths["trunk_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["json"].read_text())
    assert report["model"]["bundle"] is None and set(report["results"]) >= {"trunk"}
    assert "compare" not in report["results"]
    trunk = report["results"]["trunk"]
    assert (trunk["members"], trunk["layers"], trunk["member_layer_values"]) == (3, 2, [0, 1, 2])  # 0, 1, L/2, L
    rows = trunk["rows"]
    assert [r["member_layers"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert "error" not in row, row
        assert row["spec_member_layers"] == row["member_layers"] and row["num_heads"] == 3
        assert row["layers_run"] == 2 + 2 * row["member_layers"]
        assert row["s_per_1000_seq"] > 0 and abs(row["s_per_1000_seq"] * row["seq_per_s"] - 1000) < 1e-6
        assert row["onnx_mb"] > 0 and row["rss_peak_mb"] > 0 and row["paired_ratio"] > 0
        assert (row["batch"], row["length"]) == (TINY["target_batch"], TINY["target_length"])
    assert rows[0]["paired_ratio"] == 1.0
    # each member layer adds K - 1 copies of a layer: the weights grow with m, whatever the timings
    assert rows[0]["onnx_mb"] < rows[1]["onnx_mb"] < rows[2]["onnx_mb"]
    for key, fit in trunk["fit"].items():
        if key == "cpu_onnx_mb" and fit["slope"] is None:
            continue
        expected = linear_fit([r["member_layers"] for r in rows], [r[key] for r in rows])
        assert fit["points"] == 3 and fit["slope"] == expected["slope"] and fit["r2"] <= 1.0 + 1e-12
    assert trunk["fit"]["onnx_mb"]["slope"] > 0 and trunk["fit"]["onnx_mb"]["r2"] > 0.99
    assert "random heads" in trunk["note"]
    stacked = trunk["stacked_matmul"]
    assert "error" not in stacked, stacked
    assert stacked["members"] == 3 and stacked["tokens"] == TINY["target_batch"] * TINY["target_length"]
    assert [(r["k"], r["n"]) for r in stacked["shapes"]] == [(32, 32), (32, 64), (64, 32)]  # tiny BERT: 32, 64
    for row in stacked["shapes"]:
        assert set(row["cases"]) == {"torch_bmm", "torch_mm_copies", "ort_batched_matmul", "ort_matmul_copies"}
        assert row["torch_copies_over_bmm"] > 0 and row["ort_copies_over_batched"] > 0
    targets = [t["target"] for t in report["targets"]]
    assert len(targets) == len(set(targets)) and any("linear in member layers" in t for t in targets)
    table = paths["markdown"].read_text()
    assert "Partially shared trunk, K = 3" in table and "Linear fit against m" in table
    assert "copies / bmm" in table and "fp32 bundle vs" not in table  # unmeasured targets are left out


def test_trunk_fit_and_member_layer_values():
    assert trunk_member_layers(6) == [0, 1, 2, 3, 6] and trunk_member_layers(12, (0, 12)) == [0, 12]
    fit = linear_fit([0, 1, 2, 3], [1.0, 2.0, 2.5, 4.5])
    assert 0 < fit["r2"] < 1 and fit["points"] == 4
    assert linear_fit([1], [2.0])["slope"] is None
    import pytest

    from ensrm.errors import EnsrmError

    with pytest.raises(EnsrmError, match="outside 0..2"):
        trunk_member_layers(2, (0, 3))
