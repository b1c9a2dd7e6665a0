import json
import shutil

import numpy as np
import pytest

from ensrm import Scorer
from ensrm.bundle import load_spec, sha256_file
from ensrm.calibration.data import load_records
from ensrm.calibration.normalize import calibrate_bundle
from ensrm.errors import InputFileError


def _score(bundle, path):
    # the portable graph on onnxruntime: calibration may drop the fused CPU graph of a tiny model (its heads
    # barely vary, so 1/sigma scales float rounding past the tolerance), and before/after must run alike;
    # OpenVINO folds the normalisation into its kernels once it is in the graph (3e-4 after that scaling)
    records = load_records(path, "test")
    scorer = Scorer(bundle, fused=False, backend="onnxruntime")
    return scorer.score_texts([r["prompt"] for r in records], [r["response"] for r in records])


def test_export_normalizes_heads_to_zero_mean_unit_std_on_the_references(variant_bundle, record_files):
    out = variant_bundle[0]
    norm = load_spec(out).normalization
    assert norm.calibrated and norm.records == 60 and norm.reference_sha256 == sha256_file(record_files["refs"])
    heads = _score(out, record_files["refs"]).heads.astype(np.float64)  # [60, 4]
    np.testing.assert_allclose(heads.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(heads.std(0), 1.0, atol=1e-4)
    manifest = json.loads((out / "ensemble.json").read_text())
    assert manifest["normalization"]["records"] == 60 and len(manifest["normalization"]["mu"]) == 4


def test_calibrate_existing_bundle_matches_raw_statistics_and_is_idempotent(bundles, record_files, tmp_path):
    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert", 4), bundle)
    raw = _score(bundle, record_files["refs"]).heads.astype(np.float64)  # identity normalisation
    spec = calibrate_bundle(bundle, record_files["refs"])
    np.testing.assert_allclose(spec.normalization.mu, raw.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(spec.normalization.sigma, raw.std(0), rtol=1e-4)
    after = _score(bundle, record_files["refs"]).heads
    np.testing.assert_allclose(after, (raw - raw.mean(0)) / raw.std(0), atol=1e-4)
    again = calibrate_bundle(bundle, record_files["refs"])  # the graph now outputs normalised heads
    np.testing.assert_allclose(again.normalization.mu, spec.normalization.mu, rtol=1e-4, atol=1e-5)
    load_spec(bundle, verify="sha256")  # manifest hashes match the rewritten files


def test_calibrate_does_not_touch_the_source_bundle_files(bundles, record_files, tmp_path):
    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert", 4), bundle)
    calibrate_bundle(bundle, record_files["refs"])
    # the weights are linked or copied, never rewritten; only the small graph file changes
    assert load_spec(bundle).files["model.onnx"].sha256 != load_spec(bundles("bert", 4)).files["model.onnx"].sha256
    assert load_spec(bundle).files["model.onnx.data"].sha256 == load_spec(bundles("bert", 4)).files[
        "model.onnx.data"].sha256


def test_export_warns_without_normalisation_for_several_heads(spread_export, variant_bundle):
    assert any(m.startswith("warning: 4 heads without calibrated normalisation") for m in spread_export[1])
    assert not any(m.startswith("warning") for m in variant_bundle[1])


def test_malformed_reference_line_is_reported_with_its_number(bundles, record_files, tmp_path):
    bad = tmp_path / "refs.jsonl"
    lines = record_files["refs"].read_text().splitlines()
    lines[6] = '{"prompt": "no response here"}'
    bad.write_text("\n".join(lines) + "\n")
    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert", 4), bundle)
    manifest = (bundle / "ensemble.json").read_text()
    with pytest.raises(InputFileError, match=r"refs.jsonl:7: missing field 'response'"):
        calibrate_bundle(bundle, bad)
    assert (bundle / "ensemble.json").read_text() == manifest  # nothing half-written


def test_calibrate_command_prints_one_summary_line(bundles, record_files, tmp_path):
    from click.testing import CliRunner

    from ensrm.cli import main

    bundle = tmp_path / "rm"
    shutil.copytree(bundles("bert", 4), bundle)
    result = CliRunner().invoke(main, ["calibrate", str(bundle), str(record_files["refs"])])
    assert result.exit_code == 0, result.output
    assert f"bundle {bundle}: 4 heads normalised on 60 records" in result.output
    missing = CliRunner().invoke(main, ["calibrate", str(bundle), str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
