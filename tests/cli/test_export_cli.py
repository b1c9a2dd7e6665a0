"""``ens-export`` / ``ensrm export`` through click's test runner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ensrm.cli import export_command, main

pytest.importorskip("torch")


def test_export_command_writes_a_bundle(checkpoints, tmp_path):
    result = CliRunner().invoke(export_command, [str(checkpoints("gpt2")), "-o", str(tmp_path / "b"),
                                                 "--lambda", "1.5"])
    assert result.exit_code == 0, result.output
    assert "4 heads" in result.output
    manifest = json.loads((tmp_path / "b" / "ensemble.json").read_text())
    assert manifest["uwo_lambda"] == 1.5 and manifest["padding_side"] == "left"
    assert "warning: 4 heads without calibrated normalisation" in result.output


def test_group_export_is_the_same_command(checkpoints, tmp_path):
    result = CliRunner().invoke(main, ["export", str(checkpoints("bert")), "-o", str(tmp_path / "b"),
                                       "--max-length", "64"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "ensemble.json").read_text())["max_length"] == 64


def test_errors_are_one_line_with_non_zero_exit(checkpoints, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["export", str(checkpoints("bert")), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error:") and "--overwrite" in result.output
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"

    result = CliRunner().invoke(main, ["export", str(checkpoints("bert")), "-o", str(tmp_path / "c"),
                                       "--max-length", "100000"])
    assert result.exit_code == 1 and "--max-length must be between 1" in result.output

    result = CliRunner().invoke(main, ["export", str(checkpoints("bert")), "-o", str(tmp_path / "c"),
                                       "--lambda", "-1"])
    assert result.exit_code == 1 and "Error: --lambda must be >= 0, got -1.0" in result.output


def test_help_explains_the_sources():
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    assert "ForSequenceClassification" in result.output and "--heads" in result.output
