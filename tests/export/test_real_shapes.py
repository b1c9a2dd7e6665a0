"""Decoder reward models of real shapes: the real Qwen2-0.5B vocabulary and width in every run
(reduced depth), the full Qwen2-0.5B and Llama-3.2-1B shapes in the slow suite. Random weights
saved in bf16 as sharded safetensors, with a BPE tokenizer trained here; nothing is downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import ensrm
from ensrm.bundle import load_spec
from ensrm.export import memory

PAIRS = (["How do I bake bread?", "Hi"], ["Knead, rise, bake.", "Hello!"])


@pytest.fixture(scope="session")
def qwen2_reduced(tmp_path_factory):
    """Qwen2-0.5B's vocabulary (151,936), width (896, 14 heads, 2 KV heads) and 32k positions, one layer."""
    from tests.models import build_real_shape

    return build_real_shape("qwen2-0.5b", tmp_path_factory.mktemp("qwen2-reduced"), layers=1)


def test_reduced_qwen2_exports_in_bf16_from_shards(qwen2_reduced, tmp_path):
    from ensrm.export.exporter import export_bundle

    assert len(list(qwen2_reduced.glob("model-*-of-*.safetensors"))) > 1
    params = memory.checkpoint_parameters(qwen2_reduced)
    assert memory.check_export_memory([qwen2_reduced], "bf16")["weights_bytes"] == 2 * params

    spec = export_bundle([qwen2_reduced], tmp_path / "rm", dtype="bf16", max_length=256, progress=None)
    checks = spec.variants["fp32"].checks
    assert checks["passed"] and checks["dtype"] == "bf16" and checks["lengths"][1] == 256
    assert spec.vocab_size == 151_936 and spec.dtype == "bf16" and spec.padding_side == "left"
    # the weights stay bf16 in the file: about two bytes each (the pruned last layer drops a little)
    assert 1.6 * params < spec.files["model.onnx.data"].size <= 2 * params + 2 ** 20
    scores = ensrm.Scorer(tmp_path / "rm").score_texts(*PAIRS)
    assert scores.heads.shape == (2, 4) and np.isfinite(scores.heads).all()


@pytest.fixture(scope="module")
def real_checkpoints(tmp_path_factory):
    """``real_checkpoints(shape)``: the full-depth checkpoint of a real shape, built once per module."""
    from tests.models import build_real_shape

    cache = {}

    def get(shape: str):
        if shape not in cache:
            cache[shape] = build_real_shape(shape, tmp_path_factory.mktemp(shape))
        return cache[shape]

    return get


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS summed, the largest ``VmHWM``) over ``pid`` and its descendants (a large source is traced in a
    child of the export). ``VmHWM`` is a process's own peak since its exec, kept by the kernel between
    samples; ``ru_maxrss`` is not used: it also counts the pages of this (large) test process that the
    child held between fork and exec."""
    pids, total, hwm = [pid], 0, 0
    while pids:
        current = pids.pop()
        try:
            with open(f"/proc/{current}/task/{current}/children", encoding="ascii") as handle:
                pids += [int(child) for child in handle.read().split()]
            with open(f"/proc/{current}/status", encoding="ascii") as handle:
                fields = dict(line.split(":", 1) for line in handle if line.startswith(("VmRSS:", "VmHWM:")))
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            hwm = max(hwm, int(fields.get("VmHWM", "0 kB").split()[0]) * 1024)
        except OSError:  # exited meanwhile
            pass
    return total, hwm


def peak_rss_of(cmd: list[str]) -> tuple[int, int, str]:
    """Run ``cmd`` in a child; (its exit status, its peak RSS in bytes, its stderr). The peak is the larger of
    the RSS of the child and its own children summed and the largest single process's ``VmHWM``, sampled
    every 0.1 s."""
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, *_tree_memory(proc.pid))
            time.sleep(0.1)
        err.seek(0)
        return proc.returncode, peak, err.read()


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["qwen2-0.5b", "llama-3.2-1b"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_full_shape_exports_verifies_and_scores_within_its_memory_bound(real_checkpoints, tmp_path, shape, dtype):
    """The real shapes at full depth, exported by ``ens-export`` in a child process whose peak RSS must
    stay within the export's own up-front estimate; the export is refused cleanly (and the test
    skipped) where this machine's memory cannot hold it. Prints the peak against the weights' bytes."""
    from ensrm.errors import ExportError
    from ensrm.export.dtypes import ITEMSIZE

    source = real_checkpoints(shape)
    try:
        estimate = memory.check_export_memory([source], dtype, cpu_graph=dtype == "fp32")
    except ExportError as exc:
        pytest.skip(str(exc))
    code, peak, err = peak_rss_of([sys.executable, "-m", "ensrm.cli", "export", str(source), "-o",
                                   str(tmp_path / "rm"), "--dtype", dtype, "--max-length", "512"])
    assert code == 0, err[-3000:]
    spec = load_spec(tmp_path / "rm")
    assert spec.variants["fp32"].checks["passed"] and spec.dtype == dtype
    assert spec.variants["fp32"].checks["lengths"][1] == 512
    scores = ensrm.Scorer(tmp_path / "rm", verify="size").score_texts(*PAIRS)
    assert scores.heads.shape == (2, 4) and np.isfinite(scores.heads).all()
    weights = memory.checkpoint_parameters(source) * ITEMSIZE[dtype]
    print("real-shape:", json.dumps({"shape": shape, "dtype": dtype, "weights_bytes": weights, "peak_rss_bytes": peak,
                                     "peak_over_weights": round(peak / weights, 2), **estimate}))
    # the up-front estimate (ensrm.export.memory) must cover what the export really took
    assert peak <= estimate["estimated_peak_bytes"], f"peak RSS {memory.gib(peak)} for {memory.gib(weights)} of weights"
