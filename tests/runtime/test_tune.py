"""bf16 on OpenVINO (gated like fp16) and ``ensrm tune``: it writes, reads, and ignores a foreign file."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from click.testing import CliRunner

import ensrm
from ensrm.bundle import load_spec
from ensrm.errors import BundleError, ProviderError

pytest.importorskip("openvino")

from ensrm.cli import main  # noqa: E402
from ensrm.runtime import openvino_backend  # noqa: E402
from ensrm.runtime.tune import TUNE_FILE, TuneWarning, read_tune, tune_bundle, tuned_choice  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSRM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bf16_bundle(bundles, tmp_path_factory):
    """The tiny bert bundle with a bf16 variant judged by the gate on this machine."""
    from ensrm.calibration.gate import gates_with
    from ensrm.calibration.variants import add_variants
    from ensrm.data.synthetic import generate_references
    from ensrm.jsonl import write_records

    tmp = tmp_path_factory.mktemp("bf16")
    bundle = tmp / "b"
    shutil.copytree(bundles("bert"), bundle)
    write_records(tmp / "eval.jsonl", generate_references(48, seed=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the tiny random model's scores barely vary, so bf16 rounding reorders them: a gate
        # it can pass (the real gate's verdict on the default model is in docs/guides/backends.md)
        add_variants(bundle, "bf16", eval_on=tmp / "eval.jsonl", threads=1, progress=None,
                     gates=gates_with(min_spearman=0.0))
    return bundle, [w for w in caught if issubclass(w.category, openvino_backend.BF16Warning)]


def test_bf16_variant_records_runtime_and_what_the_cpu_computed(bf16_bundle):
    bf16_bundle, caught = bf16_bundle
    spec = load_spec(bf16_bundle)  # every file still matches its sha256: bf16 wrote none
    variant = spec.variants["bf16"]
    assert variant.accepted and variant.file == "model.onnx"
    assert variant.method["runtime"].startswith("openvino ")
    assert variant.method["native_bf16"] is openvino_backend.cpu_has_bf16()
    assert variant.method["computed"] in ("bf16", "f32")
    assert variant.checks["passed"] and "spearman" in variant.checks and variant.gate.min_spearman == 0.0
    # a CPU without bf16 instructions says so in one warning when the variant is built
    assert len(caught) == (0 if openvino_backend.cpu_has_bf16() else 1)


def test_bf16_runs_on_openvino_and_onnxruntime_refuses_it(bf16_bundle):
    bf16_bundle = bf16_bundle[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = ensrm.Scorer(bf16_bundle, precision="bf16", threads=1)
    assert scorer.description.startswith("OpenVINO") and scorer.description.endswith("bf16")
    if not openvino_backend.cpu_has_bf16():
        assert [w.category for w in caught].count(openvino_backend.BF16Warning) == 1
    with pytest.raises(ProviderError, match=r"ensrm\[openvino\]"):
        ensrm.Scorer(bf16_bundle, precision="bf16", backend="onnxruntime")


def test_rejected_bf16_keeps_model_onnx(bundles, tmp_path):
    from ensrm.calibration.gate import gates_with
    from ensrm.calibration.variants import add_variants
    from ensrm.data.synthetic import generate_references
    from ensrm.jsonl import write_records

    bundle = tmp_path / "b"
    shutil.copytree(bundles("bert"), bundle)
    write_records(tmp_path / "eval.jsonl", generate_references(8, seed=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", openvino_backend.BF16Warning)
        # a threshold no scores can reach: the gate must reject, and only the verdict changes
        spec = add_variants(bundle, "bf16", eval_on=tmp_path / "eval.jsonl", threads=1, progress=None,
                            gates=gates_with(min_spearman=1.5))
    assert not spec.variants["bf16"].accepted and spec.variants["bf16"].file is None
    assert (bundle / "model.onnx").is_file()
    ensrm.Scorer(bundle, threads=1)  # model.onnx still verifies
    with pytest.raises(BundleError, match="rejected"):
        ensrm.Scorer(bundle, precision="bf16")


def test_tune_writes_a_choice_that_precision_auto_uses(bf16_bundle, tmp_path):
    bf16_bundle = bf16_bundle[0]
    bundle = tmp_path / "b"
    shutil.copytree(bf16_bundle, bundle)
    record = tune_bundle(bundle, threads=1, batches=(1, 4), seq=8, repeats=2, budget_s=0.2)
    assert (bundle / TUNE_FILE).is_file()
    load_spec(bundle)  # the tune file is beside the manifest, not in it: verification unchanged
    timed = {(r["backend"], r["precision"]) for r in record["results"]}
    # bf16 without bf16 instructions is emulated (many times slower than fp32): not timed
    bf16 = {("openvino", "bf16")} if openvino_backend.cpu_has_bf16() else set()
    assert timed == {("onnxruntime", "fp32"), ("openvino", "fp32")} | bf16
    assert bool(record["skipped"]) is not openvino_backend.cpu_has_bf16()
    chosen = record["choice"]["4"]
    scorer = ensrm.Scorer(bundle, precision="auto", batch_size=4, threads=1)
    assert (scorer.precision, scorer.description.split()[0].lower()) == (chosen["precision"], chosen["backend"])


def test_tune_never_chooses_a_precision_that_is_not_accepted(bf16_bundle, tmp_path):
    bf16_bundle = bf16_bundle[0]
    bundle = tmp_path / "b"
    shutil.copytree(bf16_bundle, bundle)
    record = tune_bundle(bundle, threads=1, batches=(2,), seq=8, repeats=1, budget_s=0.1)
    # an int8 row faster than everything, but the bundle has no accepted int8 variant
    record["results"].append({"backend": "openvino", "precision": "int8", "batch": 2, "seconds": 1e-9})
    (bundle / TUNE_FILE).write_text(json.dumps(record), encoding="utf-8")
    choice = tuned_choice(bundle, load_spec(bundle), 2)
    assert choice is not None and choice.precision in ("fp32", "bf16")


def test_a_foreign_tune_file_is_ignored_with_a_warning(bf16_bundle, tmp_path):
    bf16_bundle = bf16_bundle[0]
    bundle = tmp_path / "b"
    shutil.copytree(bf16_bundle, bundle)
    record = tune_bundle(bundle, threads=1, batches=(2,), seq=8, repeats=1, budget_s=0.1)
    record["machine"]["cpu"] = "Some Other CPU @ 1.00GHz"
    record["results"] = [dict(r, precision="bf16", backend="openvino") for r in record["results"]]
    (bundle / TUNE_FILE).write_text(json.dumps(record), encoding="utf-8")
    with pytest.warns(TuneWarning, match="Some Other CPU"):
        assert read_tune(bundle) is None
    with pytest.warns(TuneWarning):
        scorer = ensrm.Scorer(bundle, precision="auto", batch_size=2, threads=1)
    assert scorer.precision == "fp32"


def test_tune_cli_and_backend_flags(bf16_bundle, tmp_path):
    bf16_bundle = bf16_bundle[0]
    bundle = tmp_path / "b"
    shutil.copytree(bf16_bundle, bundle)
    runner = CliRunner()
    shown = runner.invoke(main, ["tune", str(bundle), "--show"])
    assert shown.exit_code == 1 and "no tune record" in shown.output
    result = runner.invoke(main, ["tune", str(bundle), "--threads", "1", "--batches", "1,2", "--seq", "8"])
    assert result.exit_code == 0, result.output
    assert "openvino" in result.output and "*" in result.output
    assert runner.invoke(main, ["tune", str(bundle), "--show"]).output.count("\n") >= 4
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"prompt": "Hi", "response": "Hello there!"}) + "\n", encoding="utf-8")
    for backend in ("openvino", "onnxruntime"):
        out = tmp_path / f"{backend}.jsonl"
        result = runner.invoke(main, ["score", str(bundle), str(records), "-o", str(out), "--backend", backend,
                                      "--threads", "1", "--hint", "throughput"])
        assert result.exit_code == 0, result.output
    scores = [json.loads((tmp_path / f"{b}.jsonl").read_text())["ensrm"]["uwo"] for b in ("openvino", "onnxruntime")]
    assert abs(scores[0] - scores[1]) <= 1e-4


def test_openvino_int8_is_a_listed_gated_ir(bundles, tmp_path):
    pytest.importorskip("nncf")
    from ensrm.calibration.gate import gates_with
    from ensrm.calibration.variants import add_variants
    from ensrm.data.synthetic import generate_references
    from ensrm.jsonl import write_records

    bundle = tmp_path / "b"
    shutil.copytree(bundles("bert"), bundle)
    write_records(tmp_path / "calib.jsonl", generate_references(48, seed=4))
    # a gate the tiny random model can pass as quantized (its scores barely vary): the file is kept
    spec = add_variants(bundle, "int8", calibration=tmp_path / "calib.jsonl", int8_mode="openvino", threads=1,
                        gates=gates_with(min_spearman=-1.0, min_top1=0.0), progress=None)
    variant = spec.variants["int8"]
    assert variant.accepted and variant.file == "model.int8.xml" and variant.method["method"] == "nncf"
    assert {"model.int8.xml", "model.int8.bin"} <= set(spec.files)  # both verified by sha256
    assert variant.method["runtime"].startswith("openvino ") and "top1" in variant.checks
    assert ensrm.Scorer(bundle, precision="int8", threads=1).description.startswith("OpenVINO")  # auto
    with pytest.raises(ProviderError, match="OpenVINO file"):
        ensrm.Scorer(bundle, precision="int8", backend="onnxruntime")
    raw = bytearray((bundle / "model.int8.bin").read_bytes())
    raw[-1] ^= 0xFF
    (bundle / "model.int8.bin").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="model.int8.bin does not match its sha256"):
        ensrm.Scorer(bundle, precision="int8")


@pytest.fixture(scope="module")
def int4_bundle(bundles, tmp_path_factory):
    """The tiny llama bundle with an accepted INT4-weight variant (an OpenVINO IR)."""
    pytest.importorskip("nncf")
    from ensrm.calibration.gate import gates_with
    from ensrm.calibration.variants import add_variants
    from ensrm.data.synthetic import generate_references
    from ensrm.jsonl import write_records

    tmp = tmp_path_factory.mktemp("int4")
    write_records(tmp / "eval.jsonl", generate_references(24, seed=3))
    bundle = tmp / "b"
    shutil.copytree(bundles("llama"), bundle)
    add_variants(bundle, "int4", eval_on=tmp / "eval.jsonl", threads=1, progress=None,
                 gates=gates_with(min_spearman=-1.0, min_top1=0.0))
    return bundle, tmp / "eval.jsonl"


def test_tune_times_an_accepted_int4_on_openvino_only_and_can_choose_it(int4_bundle, tmp_path):
    from ensrm.runtime.backend import resolve_backend
    from ensrm.runtime.config import ScorerConfig

    bundle = tmp_path / "b"
    shutil.copytree(int4_bundle[0], bundle)
    spec = load_spec(bundle)
    assert resolve_backend(ScorerConfig(bundle), spec, "int4") == "openvino"
    record = tune_bundle(bundle, threads=1, batches=(2,), seq=8, repeats=1, budget_s=0.1)
    timed = {(r["backend"], r["precision"]) for r in record["results"]}
    assert ("openvino", "int4") in timed and ("onnxruntime", "int4") not in timed
    # int4 made the fastest here: precision="auto" runs it, on OpenVINO
    for row in record["results"]:
        row["seconds"] = 1e-9 if row["precision"] == "int4" else 1.0
    (bundle / TUNE_FILE).write_text(json.dumps(record), encoding="utf-8")
    scorer = ensrm.Scorer(bundle, precision="auto", batch_size=2, threads=1)
    assert scorer.precision == "int4" and scorer.description.startswith("OpenVINO")


def test_tune_never_times_or_chooses_a_rejected_int4(int4_bundle, tmp_path):
    from ensrm.calibration.gate import Gate
    from ensrm.calibration.variants import add_variants

    bundle = tmp_path / "b"
    shutil.copytree(int4_bundle[0], bundle)
    spec = add_variants(bundle, "int4", eval_on=int4_bundle[1], threads=1, progress=None,
                        gates={"int4": Gate(min_spearman=1.01)})  # no scores reach it
    assert not spec.variants["int4"].accepted and not (bundle / "model.int4.xml").exists()
    record = tune_bundle(bundle, threads=1, batches=(2,), seq=8, repeats=1, budget_s=0.1)
    assert all(r["precision"] != "int4" for r in record["results"])
    record["results"].append({"backend": "openvino", "precision": "int4", "batch": 2, "seconds": 1e-9})
    (bundle / TUNE_FILE).write_text(json.dumps(record), encoding="utf-8")
    choice = tuned_choice(bundle, load_spec(bundle), 2)
    assert choice is not None and choice.precision == "fp32"
