"""An export killed with SIGKILL at any point leaves no partial bundle and no damaged old one."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ensrm.bundle import load_spec
from ensrm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def snapshot(bundle: Path) -> dict[str, str]:
    return {p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file()}


def staging_dirs(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.staging-*"))


def start_export(source: Path, target: Path, overwrite: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [sys.executable, "-m", "ensrm.cli", "export", str(source), "-o", str(target)]
    return subprocess.Popen(args + (["--overwrite"] if overwrite else []), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240.0) -> bool:
    """Poll until ``condition()`` or the process ends; True when the condition was met first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("export neither reached the kill point nor finished")


# Kill points, from early to late: the staging directory appears (tracing starts); the
# traced graph is being written; a second after that (verification against torch).
def _staging_exists(target):
    return lambda: bool(staging_dirs(target))


def _model_written(target):
    return lambda: any((s / "model.onnx").exists() for s in staging_dirs(target))


KILL_POINTS = {"staging-created": (_staging_exists, 0.0), "graph-written": (_model_written, 0.0),
               "verifying": (_model_written, 1.0)}


def test_sigkill_at_any_point_leaves_no_partial_bundle(checkpoints, bundles, tmp_path):
    source = checkpoints("bert")
    existing = bundles("bert")
    runs = {}
    for i, point in enumerate(KILL_POINTS):
        # The first run exports to a fresh path; the others replace an existing bundle.
        target = tmp_path / f"run{i}" / "rm"
        target.parent.mkdir()
        if i:
            shutil.copytree(existing, target)
        runs[point] = (target, snapshot(target) if i else None, start_export(source, target, overwrite=bool(i)))
    # The runs go in parallel to keep the test short; each is killed at its own point.
    outcomes = {}
    for point, (target, before, proc) in runs.items():
        condition, delay = KILL_POINTS[point]
        reached = wait_for(condition(target), proc)
        if reached:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        outcomes[point] = "killed" if proc.returncode == -signal.SIGKILL else f"finished rc={proc.returncode}"
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if before is None:
            if outcomes[point] == "killed":
                assert not target.exists(), f"{point}: a partial bundle appeared at the target"
            else:
                assert proc.returncode == 0, stderr
                load_spec(target)
        elif outcomes[point] == "killed":
            assert snapshot(target) == before, f"{point}: the existing bundle was changed"
            load_spec(target)  # and it still verifies
        else:  # the export won the race against the kill: a complete, verified new bundle
            assert proc.returncode == 0, stderr
            load_spec(target)
    assert outcomes["staging-created"] == "killed" and outcomes["graph-written"] == "killed", outcomes

    # A SIGKILL leaves its hidden staging directory behind; the next export removes it.
    target = runs["graph-written"][0]
    assert staging_dirs(target), "expected the killed export's staging directory"
    result = CliRunner().invoke(main, ["export", str(source), "-o", str(target)])
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.output
    assert not staging_dirs(target)
    assert snapshot(target) == runs["graph-written"][1]
    # With --overwrite an export that runs to the end replaces the bundle, leaving nothing beside it.
    result = CliRunner().invoke(main, ["export", str(source), "-o", str(target), "--overwrite", "--lambda", "0.75"])
    assert result.exit_code == 0, result.output
    assert load_spec(target).uwo_lambda == 0.75
    assert sorted(p.name for p in target.parent.iterdir()) == ["rm"]


def test_existing_bundle_is_refused_without_overwrite(checkpoints, bundles, tmp_path):
    """Refused before any slow work; replacement with --overwrite is checked after the kills above."""
    source = checkpoints("bert")
    target = tmp_path / "rm"
    shutil.copytree(bundles("bert"), target)
    before = snapshot(target)
    result = CliRunner().invoke(main, ["export", str(source), "-o", str(target)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error:") and "already exists; pass --overwrite" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


@pytest.mark.parametrize("args, code, fragment", [
    (["{missing}", "-o", "{out}"], 2, "does not exist"),
    (["{empty}", "-o", "{out}"], 1, "has no config.json"),
    (["{ckpt}", "-o", "{out}", "--max-length", "0"], 1, "--max-length must be between 1"),
    (["{ckpt}", "-o", "{out}", "--padding-side", "left"], 1, "needs right padding"),
    (["{ckpt}", "-o", "{out}", "--lambda", "-1"], 1, "--lambda must be >= 0"),
    (["{ckpt}", "-o", "{out}", "--pooling", "mean"], 1, "--pooling applies only to a base model"),
    (["{ckpt}", "-o", "{out}", "--heads", "{ckpt}/config.json"], 1, "cannot read"),
])
def test_export_cli_errors_are_one_line(checkpoints, tmp_path, args, code, fragment):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "out": tmp_path / "out",
             "ckpt": checkpoints("bert")}
    result = CliRunner().invoke(main, ["export"] + [a.format(**paths) for a in args])
    assert result.exit_code == code, result.output
    assert fragment in result.output, result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
