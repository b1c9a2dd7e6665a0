"""``ensrm eval`` through click's CliRunner: report files, progress, the filter, usage errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ensrm.cli import main
from ensrm.runtime.filter import ResponseFilter


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture()
def pairs_file(write_jsonl, synthetic_records):
    return write_jsonl(synthetic_records)


def test_eval_writes_the_report_and_the_filter(runner, eval_bundle, eval_scorer, pairs_file, tmp_path):
    out, flt = tmp_path / "report", tmp_path / "filter.json"
    # onnxruntime: a text scores the same in any batch, so `ensrm score --filter` reproduces the keep rate exactly
    result = runner.invoke(main, ["eval", str(eval_bundle), str(pairs_file), "-o", str(out), "--threads", "1",
                                  "--backend", "onnxruntime", "--batch-size", "16", "--resamples", "100",
                                  "--write-filter", str(flt), "--keep", "0.8", "--objective", "wco"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "accuracy.png", "selective.png",
                                               "deciles.png", "diversity.png"}
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in ("accuracy.png", "selective.png"))
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"] == 163 and report["settings"]["objective"] == "wco"
    assert report["settings"]["batch_size"] == 16 and report["files"]["markdown"] == str(out / "report.md")
    # progress on stderr, not in the summary; 163 pairs hold 317 distinct texts (each scored once)
    assert "scoring fp32: 317/317 texts" in result.stderr
    assert "fp32: accuracy mean" in result.stdout and "scoring fp32" not in result.stdout
    markdown = (out / "report.md").read_text()
    for heading in ("## Accuracy", "### By subset", "## Does disagreement predict errors?", "## Head diversity",
                    "## Filter", "![selective.png](selective.png)"):
        assert heading in markdown
    loaded = ResponseFilter.load(flt, eval_scorer)
    assert loaded.objective == "wco" and loaded.max_std == report["filter"]["max_std"]
    # the keep rate `ensrm score --filter` gives on the chosen and rejected responses is the reported one
    records = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    side = {}
    for name in ("chosen", "rejected"):
        inp = tmp_path / f"{name}.jsonl"
        inp.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r[name]}) + "\n" for r in records))
        scored = tmp_path / f"{name}.scored.jsonl"
        run = runner.invoke(main, ["score", str(eval_bundle), str(inp), "-o", str(scored), "--filter", str(flt),
                                   "--quiet", "--threads", "1", "--backend", "onnxruntime"])
        assert run.exit_code == 0, run.output
        side[name] = np.array([json.loads(line)["ensrm"]["filter"]["accept"]
                               for line in scored.read_text().splitlines()])
    assert (side["chosen"] & side["rejected"]).mean() == report["filter"]["expected"]["pair_keep"]["value"] >= 0.8


def test_a_bad_line_stops_eval_naming_it(runner, eval_bundle, write_jsonl, tmp_path):
    path = write_jsonl([{"prompt": "Hi", "chosen": "Hello", "rejected": "No"}, '{"prompt": "Hi", "chosen": "x"}'])
    result = runner.invoke(main, ["eval", str(eval_bundle), str(path), "-o", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 1
    assert f"{path}:2: missing field 'rejected'" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["--write-filter", "f.json"], "--write-filter needs exactly one of --target-accuracy and --keep"),
    (["--write-filter", "f.json", "--keep", "0.5", "--target-accuracy", "0.9"], "exactly one of"),
    (["--keep", "0.5"], "choose the filter of --write-filter"),
    (["--keep", "1.5", "--write-filter", "f.json"], "must be in (0, 1]"),
    (["--precisions", "int8"], "--precisions int8: not an accepted precision"),
    (["--checkpoint-heads", "pyproject.toml"], "--checkpoint-heads goes with --checkpoint"),
])
def test_usage_errors(runner, eval_bundle, pairs_file, tmp_path, args, message):
    result = runner.invoke(main, ["eval", str(eval_bundle), str(pairs_file), "-o", str(tmp_path / "r"), *args])
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert not (tmp_path / "r").exists()


def test_eval_takes_the_shared_scoring_options(runner):
    result = runner.invoke(main, ["eval", "--help"])
    assert result.exit_code == 0
    for option in ("--backend", "--precision", "--provider", "--threads", "--batch-size", "--fused", "--precisions",
                   "--checkpoint", "--write-filter", "--target-accuracy", "--keep"):
        assert option in result.output
