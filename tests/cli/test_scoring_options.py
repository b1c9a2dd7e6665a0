"""Every command that scores declares the same scoring options, once, and builds its scorer from them."""

from __future__ import annotations

import importlib.util
import json

import click
import pytest
from click.testing import CliRunner

from ensrm.cli import main

SCORING = ("backend", "precision", "providers", "threads", "batch_size", "fused")
COMMANDS = ("score", "serve", "bench", "triton-repo")


def _options(command: click.Command) -> dict:
    return {p.name: (tuple(p.opts), p.default, getattr(p.type, "choices", None))
            for p in command.params if p.name in SCORING}


def test_scoring_commands_share_names_and_defaults():
    first = _options(main.commands[COMMANDS[0]])
    assert set(first) == set(SCORING)
    for name in COMMANDS[1:]:
        assert _options(main.commands[name]) == first, name
    assert "tensorrt" in first["backend"][2] and first["backend"][1] == "auto"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_backend_tensorrt_is_refused_in_one_line_where_absent(bundles, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(bundles("bert")), str(src), "-o", str(tmp_path / "out.jsonl"),
                                       "--backend", "tensorrt"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "ensrm[tensorrt]" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_scoring_options_reach_the_scorer(bundles, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r" * i}) + "\n" for i in range(5)),
                   encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(bundles("bert")), str(src), "-o", str(tmp_path / "a.jsonl"),
                                       "--batch-size", "2", "--threads", "1", "--no-fused", "--quiet"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["score", str(bundles("bert")), str(src), "-o", str(tmp_path / "b.jsonl"),
                                       "--precision", "int8", "--quiet"])
    assert result.exit_code == 1 and "no int8 variant" in result.output
    result = CliRunner().invoke(main, ["score", str(bundles("bert")), str(src), "-o", str(tmp_path / "c.jsonl"),
                                       "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size" in result.output
