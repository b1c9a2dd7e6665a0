"""``ens-export --tokenizer DIR`` and the one-line refusal of a source saved without a tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from ensrm.cli import export_command, main

pytest.importorskip("torch")


@pytest.fixture
def bare_gpt2(checkpoints, tmp_path):
    """The tiny GPT-2 classifier saved with model.save_pretrained only: config and weights."""
    source = tmp_path / "ckpt"
    source.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoints("gpt2") / name, source / name)
    return source


def test_source_without_tokenizer_is_one_line_error(bare_gpt2, tmp_path):
    result = CliRunner().invoke(export_command, [str(bare_gpt2), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: source {bare_gpt2} has no tokenizer files")
    assert "e.g. its base model's directory, as --tokenizer DIR" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no bundle, no staging directory


def test_tokenizer_option_takes_the_tokenizer_from_another_directory(checkpoints, bare_gpt2, tmp_path):
    result = CliRunner().invoke(main, ["export", str(bare_gpt2), "--tokenizer", str(checkpoints("gpt2")),
                                       "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "ensemble.json").read_text())
    assert "tokenizer.json" in manifest["files"] and manifest["padding_side"] == "left"
    from transformers import AutoTokenizer

    text = "How do I bake bread at home?"
    assert AutoTokenizer.from_pretrained(tmp_path / "b")(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(checkpoints("gpt2"))(text)["input_ids"]


def test_tokenizer_option_is_in_the_help():
    result = CliRunner().invoke(export_command, ["--help"])
    assert result.exit_code == 0 and "--tokenizer" in result.output
