"""``ensrm bench``: the harness runs its suites on a tiny model and writes its files.

Timings are never asserted: this machine is shared and the numbers mean nothing here.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from ensrm.bench import run_benchmarks
from ensrm.bench.harness import summarize, time_calls
from ensrm.bench.models import matrix_flops
from ensrm.bench.suites import BenchConfig
from ensrm.cli import main
from ensrm.runtime.openvino_backend import installed as openvino_installed

TINY = dict(batches=(1, 2), lengths=(8, 16), target_batch=2, target_length=16, heads_sweep=(1, 2),
            full_ensemble_sizes=(1, 2), rounds=1, repeats=1, paired_rounds=2, latency_repeats=3, text_pairs=8,
            text_words=(3, 10),
            matmul_shapes=((32, 16, 32),), matmul_min_time=0.0, startup_runs=1, threads=1)


def test_timing_helpers_count_and_summarise():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3
    stats = summarize([3.0, 1.0, 2.0])
    assert stats["median_s"] == 2.0 and stats["min_s"] == 1.0 and stats["samples"] == 3


def test_matrix_flops_of_minilm():
    from types import SimpleNamespace

    cfg = SimpleNamespace(hidden_size=384, intermediate_size=1536, num_hidden_layers=6)
    one = matrix_flops(cfg, 128)
    # 6 layers x (4 h^2 + 2 h i) x 2 x 128 tokens, plus 2 x 2 x 128^2 x 384 attention, plus the pooler.
    assert one["ffn"] == 6 * 2 * 128 * 384 * 1536 * 2
    assert one["attention_scores_context"] == 6 * 2 * 128 * 128 * 384 * 2
    assert matrix_flops(cfg, 128, members=4)["total"] > 3.9 * one["total"]
    # the last layer's output projection and FFN for the pooled token only: 127 of 128 rows fewer
    pruned = matrix_flops(cfg, 128, pooled_token_only=True)
    assert one["ffn"] - pruned["ffn"] == 127 * 2 * 384 * 1536 * 2
    assert one["qkv_projections"] == pruned["qkv_projections"]




def test_bench_command_rejects_a_checkpoint_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["bench", "--checkpoint", str(tmp_path / "empty"), "-o", str(tmp_path / "o"),
                                       "--cache", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "has no config.json" in result.output


def _with_fp16_and_rejected_int8(bundle, target):
    """A copy of ``bundle`` with an accepted fp16 variant and an int8 variant its gate rejected."""
    import shutil

    from ensrm.bundle import read_spec, write_manifest
    from ensrm.calibration.fp16 import convert_fp16
    from ensrm.spec import Variant

    shutil.copytree(bundle, target)
    method = convert_fp16(target / "model.onnx", target / "model.fp16.onnx")
    spec = read_spec(target).with_variants(Variant("fp16", "model.fp16.onnx", accepted=True, method=method),
                                           Variant("int8", None, accepted=False))
    write_manifest(target, spec)
    return target


def test_latency_suite_reports_every_precision_and_eager_per_thread_setting(checkpoints, bundles, tmp_path):
    bundle = _with_fp16_and_rejected_int8(bundles("bert", 2), tmp_path / "bundle")
    config = BenchConfig(**{**TINY, "threads": 2, "latency_batches": (1, 2), "latency_calls": 2,
                            "latency_tokens": (6, 200), "latency_rounds": 1})
    paths = run_benchmarks(tmp_path / "out", bundle=bundle, checkpoint=checkpoints("bert", 2, 0),
                           cache_dir=tmp_path / "cache", suites=["latency"], config=config, progress=None)
    report = json.loads(paths["json"].read_text())
    latency = report["results"]["latency"]
    assert set(report["results"]) >= {"latency"} and "compare" not in report["results"]
    pairs = latency["pairs"]
    assert pairs["count"] == 4 and 6 <= pairs["length_min"] <= pairs["length_max"] <= report["model"]["max_length"]
    assert [s["threads"] for s in latency["by_threads"]] == [1, 2]
    for setting in latency["by_threads"]:
        runs = setting["runs"]
        # auto runs fp32 on OpenVINO where it is installed: onnxruntime's fp32 is then a row of its own
        beside = ["bundle/fp32@onnxruntime"] if openvino_installed() else []
        assert list(runs) == ["bundle/fp32", *beside, "bundle/fp16", "bundle/int8", "torch/eager"]
        assert runs["bundle/int8"] == {"absent": "the int8 variant was rejected by its accuracy gate"}
        for name in ("bundle/fp32", *beside, "bundle/fp16", "torch/eager"):
            assert "error" not in runs[name], runs[name]
            rows = runs[name]["rows"]
            assert [r["batch"] for r in rows] == [1, 2]
            for row in rows:
                assert 0 < row["p50_s"] <= row["p99_s"] and row["samples"] == TINY["latency_repeats"]
                assert row["mean_padded_length"] <= pairs["length_max"] and row["cpu_p50_s"] >= 0
        assert all(r["eager_p50_ratio"] > 0 for r in runs["bundle/fp16"]["rows"])
    table = paths["markdown"].read_text()
    header = " | ".join(["batch", "bundle/fp32", *beside, "bundle/fp16", "bundle/int8", "torch/eager"])
    assert "Latency per call" in table and f"| {header} |" in table
    assert "rejected by its accuracy gate" in table
    # the project's pass/fail targets are the repository's benchmarks/, not the user-facing command's
    assert "targets" not in report and "| Target |" not in table


def test_latency_calls_are_real_pairs_padded_to_their_own_longest(checkpoints, bundles, tmp_path):
    from ensrm.bench.suites import latency_calls
    from ensrm.bundle import load_spec

    spec = load_spec(bundles("bert", 2))
    calls, pairs = latency_calls(bundles("bert", 2), spec, BenchConfig(latency_batches=(1, 4), latency_calls=3,
                                                                        latency_tokens=(20, 200)))
    # every call has its batch size and is padded to its own longest pair, not to max_length
    assert [c["batch"] for c in calls] == [1, 4] and all(len(c["feeds"]) == 3 for c in calls)
    for call in calls:
        for feed in call["feeds"]:
            assert len(feed["input_ids"]) == call["batch"] and set(feed) == set(spec.inputs)
            longest = max(sum(row) for row in feed["attention_mask"])
            assert len(feed["input_ids"][0]) == longest


def test_latency_suite_without_a_tokenizer_reports_why_instead_of_failing_the_run(checkpoints, bundles, tmp_path):
    from ensrm.bench.report import latency_markdown
    from ensrm.bench.suites import Bench

    bench = Bench(bundles("bert", 2), checkpoints("bert", 2, 0), tmp_path / "cache", BenchConfig(**TINY))
    bench.spec = bench.spec.replace(tokenizer_file=None)
    latency = bench.run(("latency",))["latency"]
    assert "needs the bundle's tokenizer" in latency["error"]
    assert "Latency: error: the latency suite scores generated text pairs" in "\n".join(latency_markdown(latency))


def test_latency_calls_stop_after_their_time_budget_but_cover_every_batch():
    import time

    from ensrm.bench.worker import _time_cycle

    seen = []
    group = {"batch": 1, "feeds": [{"input_ids": [[5, 6, 7]], "attention_mask": [[1, 1, 1]]},
                                   {"input_ids": [[5, 6]], "attention_mask": [[1, 1]]}]}

    def call(feeds):
        seen.append(feeds["input_ids"].shape[1])
        time.sleep(0.02)

    out = _time_cycle(call, group, ("input_ids", "attention_mask"), repeats=10_000, max_s=0.1)
    assert 2 <= len(out["times"]) < 100 and len(out["cpu_times"]) == len(out["times"])
    assert set(seen) == {2, 3} and out["mean_padded_length"] == 2.5






def test_default_bundle_is_measured_as_a_cached_copy_with_gated_variants(bundles, tmp_path):
    from ensrm.bench.models import bundle_with_variants
    from ensrm.bundle import load_spec

    source = bundles("bert", 2)
    before = (source / "ensemble.json").read_bytes()
    copy = bundle_with_variants(source, tmp_path / "cache")
    variants = load_spec(copy).variants
    assert variants["int8"].method["method"] == "per-token" and "fp16" in variants
    # the gate judged them (a random tiny model may fail the default thresholds), the source is untouched
    assert variants["int8"].checks["records"] == 768 and (source / "ensemble.json").read_bytes() == before
    assert bundle_with_variants(source, tmp_path / "cache") == copy  # reused, not rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [copy.name]
