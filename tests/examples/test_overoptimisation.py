"""The overoptimisation experiment's pipeline end to end on a tiny random BERT and a tiny pool."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "overoptimisation" / "run.py"
REPORT = SCRIPT.with_name("report.py")
TINY = dict(prompts=3, pool=16, pairs=24, heads=2, member_layers="1", noise_seeds=2, references=12, test_pairs=6,
            cost_slice=4, max_length=48, batch_size=8, table_ns="4,16",
            export_tolerance=5e-2)  # frozen heads on a random encoder are huge: see test_train_cli


def load_script(path=SCRIPT):
    spec = importlib.util.spec_from_file_location(f"overopt_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # nine tiny exports and five probe processes: about a minute on a quiet 2-core machine
def test_pipeline_writes_consistent_results_and_reuses_its_work(checkpoints, tmp_path):
    run = load_script()
    base = checkpoints("bert", 1, 0)
    results = run.run(tmp_path / "out", tmp_path / "work", str(base), cpu_graph=False, **TINY)
    saved = json.loads((tmp_path / "out" / "overoptimisation.json").read_text())
    assert (tmp_path / "out" / "overoptimisation.png").stat().st_size > 10_000
    cfg = saved["config"]
    assert cfg["ns"] == [1, 2, 4, 8, 16] and cfg["table_ns"] == [4, 16]
    assert cfg["forms"] == ["frozen", "multi", "trunk1", "full"]
    names = set(run.curve_names(cfg))
    assert set(saved["curves"]) == names | {"gold_oracle"}
    assert set(saved["paired_difference_vs_single"]) == names - {"single"}

    # n = 1 is a random candidate whatever the proxy: every curve starts at the pool's mean gold
    starts = {name: c["mean"][0] for name, c in saved["curves"].items()}
    assert max(starts.values()) - min(starts.values()) < 1e-9
    assert saved["curves"]["gold_oracle"]["mean"] == sorted(saved["curves"]["gold_oracle"]["mean"])

    # paired differences are differences of the curves, per seed and overall; the table reads the same numbers
    curves = np.load(tmp_path / "work" / "curves.npz")
    assert curves["single"].shape == (2, 3, 5)  # [seeds, prompts, ns]
    for name, paired in saved["paired_difference_vs_single"].items():
        diff = np.array(saved["curves"][name]["mean"]) - np.array(saved["curves"]["single"]["mean"])
        assert np.allclose(paired["mean"], diff, atol=1e-12)
        assert np.allclose(paired["per_seed"], (curves[name] - curves["single"]).mean(axis=1), atol=1e-12)
        d = curves[name] - curves["single"]  # the s.e. as the docstring says it is formed
        within = np.sqrt((d.var(axis=1, ddof=1) / 3).sum(axis=0)) / 2
        assert np.allclose(paired["stderr"], within, atol=1e-12)
        assert np.allclose(paired["stderr_between_seeds"], d.mean(axis=1).std(axis=0, ddof=1) / np.sqrt(2))
        assert saved["table"][name]["16"]["diff"] == pytest.approx(paired["mean"][-1])
        assert saved["table"][name]["4"]["gold"] == pytest.approx(saved["curves"][name]["mean"][2])
    assert abs(paired["stderr"][0]) < 1e-12  # n = 1: identical for every proxy

    # the compute table has every form; the single model and frozen model alone score as their columns
    assert set(saved["costs"]) == {"single", "frozen", "multi", "trunk1", "full"}
    assert saved["costs"]["full"]["encoder_equivalents"] == 2 and saved["costs"]["trunk1"]["encoder_equivalents"] == 1.5
    for cost in saved["costs"].values():
        assert cost["training_seconds"] > 0 and cost["seconds_per_1000"] > 0 and cost["weights_mb"] > 0
    assert saved["costs"]["full"]["scoring_candidates_per_second_in_run"] > 0
    for form in ("single", "frozen"):
        assert saved["equivalence_max_rel_diff"][form] < 1e-3
    assert set(saved["label_flips"]) == {"seed0", "seed1"} and saved["label_flips"]["seed0"] > 0
    assert np.allclose(saved["kl"][:2], [0.0, np.log(2) - 0.5])
    assert saved["seconds"]["total"] > 0
    assert results["reused_checkpoints"] == {"seed0": [], "seed1": []}

    # the README's tables, rendered from the file: one row per objective, the numbers of the table
    tables = load_script(REPORT).markdown(saved)
    for label in ("single proxy", "frozen multi-head WCO", "multi-head (m = 0) UWO", "partial trunk (m = 1) MEAN",
                  "full ensemble WCO", "best-of-n by gold itself"):
        assert f"| {label} |" in tables
    single16, trunk16 = saved["table"]["single"]["16"], saved["table"]["trunk1_wco"]["16"]
    assert f"{single16['gold']:.3f} ± {single16['gold_stderr']:.3f}" in tables
    assert f"{trunk16['diff']:+.3f} ± {trunk16['diff_stderr']:.3f}" in tables
    assert f"| full ensemble | 2 | 2 | {saved['costs']['full']['training_seconds']:.0f} (" in tables

    # a rerun reuses everything (checkpoints, bundles, scores) and gives the same results
    again = run.run(tmp_path / "out", tmp_path / "work", str(base), cpu_graph=False, **{**TINY, "cost_slice": 0})
    assert again["reused_checkpoints"]["seed1"] == sorted(again["training"]["seed1"])
    assert all(seconds is None for seconds in again["export_seconds"]["1"].values())  # bundles reused
    assert again["costs"]["full"]["scoring_candidates_per_second_in_run"] is None  # scores reused
    assert again["curves"] == saved["curves"] and again["table"] == saved["table"]
