"""The decoder suite (``benchmarks/decoder.py``) end to end on a tiny Qwen2-shaped decoder at a tiny shape.

Only the result's structure is asserted, never timings: this machine is shared.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks.__main__ import ProjectConfig, run
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.decoder import parse_variant, variant_groups, variant_unavailable

HEADS = (1, 4)
BATCHES = (1, 2)


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    """A tiny random Qwen2 sequence classifier with 3 labels (neither of the suite's head counts), sharded."""
    from tests.models import build_long_decoder

    return build_long_decoder("qwen2", tmp_path_factory.mktemp("decoder") / "qwen2", max_positions=64, num_labels=3)


def tiny_config(checkpoint, **changes) -> ProjectConfig:
    return ProjectConfig(**{"threads": 1, "decoder_checkpoint": str(checkpoint), "decoder_batches": BATCHES,
                            "decoder_length": 16, "decoder_heads": HEADS, "decoder_rounds": 1, "decoder_repeats": 1,
                            "decoder_paired_rounds": 2, "decoder_eval_prompts": 4, "decoder_calibration_records": 8,
                            # dynamic INT8 is made here; the other two are unknown to any ensrm
                            "decoder_variants": ("bf16", "int8:dynamic", "int8:no-such-mode", "fp8"), **changes})


def test_decoder_suite_runs_end_to_end_on_a_tiny_decoder(tiny_decoder, tmp_path):
    paths = run(tmp_path / "out", cache_dir=tmp_path / "cache", suites=["decoder"], config=tiny_config(tiny_decoder),
                progress=None)
    assert {p.name for p in paths.values()} == {"bench.json", "bench.md"}  # no compare suite: no bench.png
    report = json.loads(paths["json"].read_text())
    decoder = report["results"]["decoder"]
    assert report["model"]["model_type"] == "qwen2" and report["model"]["num_heads"] == 4  # the decoder, not MiniLM
    assert (decoder["heads"], decoder["length"], decoder["batches"]) == (4, 16, [1, 2])
    assert decoder["num_hidden_layers"] == 2 and decoder["model_type"] == "qwen2"
    assert set(decoder["bundles"]) == {"k4/fp32", "k4/bf16", "k1/fp32"}
    rows = {row["name"]: row for row in decoder["rows"]}
    # every exported graph dtype on both runtimes, and eager in fp32 and bf16 autocast
    expected = {"onnxruntime/fp32", "openvino/fp32", "onnxruntime/fp32 (bf16 weights)", "openvino/fp32 (bf16 weights)",
                "torch/eager-fp32", "torch/eager-bf16-autocast"}
    assert expected <= set(rows)
    for row in rows.values():
        assert "error" not in row, row
        assert [(s["batch"], s["length"]) for s in row["shapes"]] == [(1, 16), (2, 16)]
        for shape in row["shapes"]:
            assert shape["p50_s"] > 0 and shape["tokens_per_s"] > 0 and shape["samples"] == 1
            assert shape["vs_eager_fp32"] > 0 and shape["vs_eager_bf16"] > 0
        assert row["rss_peak_mb"] > 0 and row["description"]
    assert rows["torch/eager-fp32"]["shapes"][0]["vs_eager_fp32"] == 1.0
    assert rows["openvino/fp32"]["description"].lower().startswith("openvino")
    assert "bf16 weights" in rows["onnxruntime/fp32 (bf16 weights)"]["description"]
    # each requested variant is a row on the runtime its gate judged, or listed with its reason
    not_run = {r["name"]: r for r in decoder["not_run"]}
    assert all(r["reason"] for r in not_run.values())
    assert not_run["fp8"]["status"] == "unavailable" and "no 'fp8' precision" in not_run["fp8"]["reason"]
    assert not_run["int8 (no-such-mode)"]["status"] == "unavailable"
    assert ("onnxruntime/int8 (dynamic)" in rows) != ("int8 (dynamic)" in not_run)
    if "int8 (dynamic)" in not_run:
        assert not_run["int8 (dynamic)"]["status"] == "rejected"
        assert not_run["int8 (dynamic)"]["reason"].startswith("rejected by its accuracy gate: ")
    assert ("openvino/bf16" in rows) != ("bf16" in not_run)  # skipped where OpenVINO only emulates bf16
    if "bf16" in not_run:
        assert not_run["bf16"]["status"] == "skipped" and "AVX512_BF16" in not_run["bf16"]["reason"]
    # K = 1 vs K = 4: two exports of the same trunk, a paired ratio per batch
    heads = decoder["k_heads"]
    assert heads["heads"] == [1, 4] and [s["batch"] for s in heads["shapes"]] == [1, 2]
    assert all(s["ratio"] > 0 and len(s["median_s"]) == 2 for s in heads["shapes"])
    target = next(t for t in report["targets"] if t["target"].startswith("decoder, K=4 heads vs K=1"))
    assert target["value"] == pytest.approx(heads["shapes"][-1]["ratio"] - 1) and target["passed"] is not None
    table = paths["markdown"].read_text()
    assert "Decoder reward model: qwen2 2 layers" in table and "| torch/eager-bf16-autocast |" in table
    assert "- fp8 (unavailable): this ensrm has no 'fp8' precision" in table and "K = 4 heads vs K = 1" in table
    # a second run builds nothing: every checkpoint and bundle comes from the cache
    messages = []
    run(tmp_path / "again", cache_dir=tmp_path / "cache", suites=["decoder"],
        config=tiny_config(tiny_decoder, decoder_batches=(1,)), progress=messages.append)
    assert not [m for m in messages if "exporting" in m or "head(s)" in m or "adding" in m], messages


def test_variant_requests_are_parsed_grouped_and_judged_available():
    assert [parse_variant(r) for r in ("int8:openvino", "INT4", "bf16:")] == \
        [("int8", "openvino"), ("int4", None), ("bf16", None)]
    assert variant_groups([("int8", "dynamic"), ("int8", "static"), ("bf16", None)]) == \
        [[("int8", "dynamic"), ("bf16", None)], [("int8", "static")]]
    assert variant_unavailable("int8", "dynamic", False, False) is None
    assert "no INT8 mode 'nope'" in variant_unavailable("int8", "nope", True, False)
    assert "not installed" in variant_unavailable("bf16", None, None, True)
    assert variant_unavailable("bf16", None, True, False) is None  # native bf16: built and judged


def test_the_cli_takes_the_decoder_options():
    result = CliRunner().invoke(benchmarks_main, ["--help"])
    assert result.exit_code == 0 and "--layers" in result.output and "--force-bf16" in result.output
    assert "decoder" in result.output
    result = CliRunner().invoke(benchmarks_main, ["--suite", "decoder", "--layers", "0"])
    assert result.exit_code == 2 and "--layers" in result.output
