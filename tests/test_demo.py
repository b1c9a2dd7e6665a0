"""``ensrm demo`` end to end: default model built, exported, examples scored and picked."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ensrm.cli import main

pytest.importorskip("torch")


def test_demo_builds_exports_and_scores(demo_run):
    # demo_run (tests/conftest.py) is the session's one `ensrm demo` run; the docs examples use its bundle.
    result, checkpoint, bundle = demo_run, demo_run.checkpoint, demo_run.bundle
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 8
    manifest = json.loads((bundle / "ensemble.json").read_text())
    assert manifest["num_heads"] == 8 and manifest["variants"]["fp32"]["checks"]["passed"]
    assert manifest["normalization"]["records"] == 400 and "normalisation calibrated" in result.output
    assert result.output.count("PROMPT:") == 3
    assert result.output.count("best of 4: mean → #") == 3 and "wco → #" in result.output

    # A second run reuses both and prints the same scores.
    again = CliRunner().invoke(main, ["demo", "--checkpoint", str(checkpoint), "--bundle", str(bundle)])
    assert again.exit_code == 0 and "building" not in again.output
    assert again.output.split("PROMPT:", 1)[1] == result.output.split("PROMPT:", 1)[1]
