"""The overoptimisation experiment's pipeline end to end on a tiny random BERT and a tiny pool."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "overoptimisation" / "run.py"


@pytest.mark.slow  # five exports: about a minute on a quiet 2-core machine, several under load
def test_pipeline_writes_results_and_figure(checkpoints, tmp_path):
    spec = importlib.util.spec_from_file_location("overopt_run", SCRIPT)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    base = checkpoints("bert", 1, 0)
    results = run.run(tmp_path / "out", tmp_path / "work", str(base), prompts=2, pool=16, pairs=60, heads=2,
                      references=20, test_pairs=10, cost_slice=8, max_length=64,
                      export_tolerance=5e-2)  # frozen heads on a random encoder are huge: see test_train_cli
    saved = json.loads((tmp_path / "out" / "overoptimisation.json").read_text())
    assert (tmp_path / "out" / "overoptimisation.png").stat().st_size > 10_000
    assert saved["config"]["ns"] == [1, 2, 4, 8, 16]
    assert set(saved["curves"]) == set(run.CURVES) | {"gold_oracle"}
    # n = 1 is a random candidate whatever the proxy: every curve starts at the pool's mean gold
    starts = {name: c["mean"][0] for name, c in saved["curves"].items()}
    assert max(starts.values()) - min(starts.values()) < 1e-9
    assert saved["curves"]["gold_oracle"]["mean"] == sorted(saved["curves"]["gold_oracle"]["mean"])
    for label in ("single", "multi", "full"):
        assert saved["equivalence_max_rel_diff"][label] < 1e-3  # deployment bundles = the stacked scoring bundle
    assert saved["costs"]["full"]["encoders"] == 2 and saved["costs"]["multi"]["heads"] == 2
    assert np.allclose(saved["kl"][:2], [0.0, np.log(2) - 0.5])
    assert results["normalisation"]["heads"] == ["single", "multi_0", "multi_1", "full_0", "full_1"]
