"""Tracing in a child process (large sources): the same bundle as in-process, and every failure of the
child reaches the parent as one ExportError, with no bundle left behind."""

from __future__ import annotations

import re
import shutil
import sys

import numpy as np
import pytest

import ensrm
from ensrm.errors import ExportError
from ensrm.export import memory, trace_child
from ensrm.spec import EnsembleSpec

PAIRS = (["How do I bake bread?", "Hi", "Explain tuples."], ["Knead, rise, bake.", "Hello!", "They are immutable."])


@pytest.fixture
def in_child(monkeypatch):
    """Every source, however small, is traced in a child process (the parent reads the threshold)."""
    monkeypatch.setattr(memory, "TRACE_CHILD_MIN_BYTES", 0)


def test_the_child_traces_the_same_graph(checkpoints, bundles, tmp_path, in_child):
    from ensrm.export.exporter import export_bundle

    lines = []
    spec = export_bundle([checkpoints("llama")], tmp_path / "rm", cpu_graph=False, progress=lines.append)
    assert any("traced the ensemble graph in a child process" in line for line in lines), lines
    assert spec.variants["fp32"].checks["passed"]
    child = ensrm.Scorer(tmp_path / "rm").score_texts(*PAIRS)
    here = ensrm.Scorer(bundles("llama")).score_texts(*PAIRS)  # traced in-process
    np.testing.assert_allclose(child.heads, here.heads, rtol=0, atol=1e-6)
    np.testing.assert_allclose(child.uwo, here.uwo, rtol=0, atol=1e-6)


def test_the_childs_error_arrives_with_its_message_and_no_bundle(checkpoints, tmp_path, monkeypatch, in_child):
    """A source changed after the parent loaded it: the child refuses to trace it, and says so."""
    from ensrm.export import verify
    from ensrm.export.exporter import export_bundle

    source = tmp_path / "src"
    shutil.copytree(checkpoints("gpt2"), source)
    score = verify.score_with_torch

    def score_then_change_the_source(*args, **kwargs):
        reference = score(*args, **kwargs)
        with open(source / "config.json", "a", encoding="utf-8") as handle:
            handle.write("\n")  # still a valid config, no longer the checked files
        return reference

    monkeypatch.setattr(verify, "score_with_torch", score_then_change_the_source)
    changed = rf"^the source {re.escape(str(source))} changed during the export .*no bundle was written"
    with pytest.raises(ExportError, match=changed):
        export_bundle([source], tmp_path / "rm", progress=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no bundle, no staging directory


def test_a_killed_child_names_the_signal_and_the_estimate(checkpoints, tmp_path, monkeypatch, in_child):
    from ensrm.export.exporter import export_bundle

    kill = "import os, signal, sys; sys.stdin.buffer.read(); os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(trace_child, "child_command", lambda: [sys.executable, "-c", kill])
    with pytest.raises(ExportError, match=r"child process was killed by SIGKILL \(the kernel's out-of-memory "
                                          r"killer sends SIGKILL\): it loads 0\.00 GiB of weights again and was "
                                          r"expected to peak near 0\.50 GiB; .* is available now; no bundle"):
        export_bundle([checkpoints("gpt2")], tmp_path / "rm", progress=None)
    assert list(tmp_path.iterdir()) == []


def test_a_child_that_dies_without_an_answer_gives_its_last_line(tmp_path, monkeypatch):
    crash = "import sys; sys.stdin.buffer.read(); print('noise'); sys.exit('RuntimeError: out of file handles')"
    monkeypatch.setattr(trace_child, "child_command", lambda: [sys.executable, "-c", crash])
    with pytest.raises(ExportError, match=r"^the trace's child process failed \(exit status 1\): "
                                          r"RuntimeError: out of file handles; no bundle was written$"):
        spec = EnsembleSpec(2, "decoder", "llama", "last", ("input_ids", "attention_mask"), 16, 100, 0)
        trace_child.trace_in_child({}, spec, tmp_path / "model.onnx", weights=2 ** 30)
    assert memory.trace_child_estimate(2 ** 30) == memory.PROCESS_BYTES + int(memory.CHILD_PEAK_FACTOR * 2 ** 30)
