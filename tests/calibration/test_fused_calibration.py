"""Calibrating a bundle rewrites the constants of its fused CPU graph too, and checks it again."""

from __future__ import annotations

import shutil

import numpy as np
import onnx

from ensrm.bundle import load_spec
from ensrm.calibration.normalize import calibrate_bundle

CPU = "CPUExecutionProvider"


def test_calibration_rewrites_the_fused_graph_and_checks_it_again(spread_bundle, record_files, tmp_path):
    bundle = tmp_path / "rm"
    shutil.copytree(spread_bundle, bundle)
    before = load_spec(bundle).fused[CPU]
    spec = calibrate_bundle(bundle, record_files["refs"])
    graph = spec.fused[CPU]
    assert spec.normalization.calibrated and graph.checks["passed"] and graph.checks["max_abs_diff_heads"] <= 1e-4
    assert graph.method == before.method and load_spec(bundle).fused == spec.fused
    model = onnx.load(str(bundle / graph.file), load_external_data=False)
    for name, values in (("ensrm_norm_mu", spec.normalization.mu), ("ensrm_norm_sigma", spec.normalization.sigma)):
        init = next(i for i in model.graph.initializer if i.name == name)
        np.testing.assert_allclose(onnx.numpy_helper.to_array(init), values, rtol=1e-6)
