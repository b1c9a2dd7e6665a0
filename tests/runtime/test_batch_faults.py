"""Faults in a local scoring job: SIGKILL then ``--resume``, a journal from other arguments, a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import ensrm
from ensrm.cli import main
from ensrm.errors import InputError, JobError, OutputError
from ensrm.runtime import batch
from ensrm.runtime.batch import journal_path, partial_path, score_file

ANSWERS = ["Mix flour, water, salt and yeast, knead by hand, let it rise and bake it hot.",
           "A list is mutable and a tuple is not; both keep their order.",
           "Layers, a rain shell, a warm hat, a map, a headlamp and enough food.",
           "I cannot help with that request because it could hurt someone."]


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles("bert", num_labels=4)


@pytest.fixture(scope="module")
def scorer(bundle):
    return ensrm.Scorer(bundle)


def write_input(path, n):
    """Best-of-n groups of 7 (so groups straddle chunks), a bad line every 50."""
    lines = []
    for i in range(n):
        if i % 50 == 49:
            lines.append('{"prompt": "q", "response": 7}')
        else:
            lines.append(json.dumps({"id": i, "prompt": f"question {i // 7}", "response": ANSWERS[i % 4] + f" {i}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


OPTIONS = ["--best-of-n", "--skip-bad", "--chunk-size", "10", "--batch-size", "4", "--quiet", "--resume"]


def test_resume_after_sigkill_writes_the_uninterrupted_bytes(bundle, scorer, tmp_path):
    src = write_input(tmp_path / "in.jsonl", 3000)
    score_file(scorer, src, tmp_path / "whole.jsonl", best_of_n=True, skip_bad=True, chunk_size=10, batch_size=4)
    out = tmp_path / "out.jsonl"
    journal = journal_path(out)
    proc = subprocess.Popen([sys.executable, "-m", "ensrm.cli", "score", str(bundle), str(src), "-o", str(out),
                             *OPTIONS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and json.loads(journal.read_text())["done"]["line"] > 500:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = json.loads(journal.read_text())["done"]
    assert not out.exists() and partial_path(out).exists() and done["line"] < 3000

    result = CliRunner().invoke(main, ["score", str(bundle), str(src), "-o", str(out), *OPTIONS])
    assert result.exit_code == 0, result.output
    assert f"resumed at line {done['line']:,}" in result.output or "resumed at line" in result.output
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert (tmp_path / "out.rejects.jsonl").read_bytes() == (tmp_path / "whole.rejects.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "out.rejects.jsonl",
                                                           "whole.jsonl", "whole.rejects.jsonl"]


def test_a_journal_from_other_arguments_is_refused(bundle, scorer, tmp_path, monkeypatch):
    src = write_input(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"

    def interrupt(done, rejected, seconds):
        if done >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_file(scorer, src, out, chunk_size=10, resume=True, progress=interrupt)
    assert journal_path(out).exists() and partial_path(out).exists() and not out.exists()
    with pytest.raises(InputError, match="different options"):
        score_file(scorer, src, out, chunk_size=10, resume=True, objective="wco")
    src.write_text(src.read_text() + "\n", encoding="utf-8")  # the input changed
    with pytest.raises(InputError, match="different input"):
        score_file(scorer, src, out, chunk_size=10, resume=True)
    # without --resume the run is all-or-nothing as before, and leaves the journal alone
    score_file(scorer, src, out, chunk_size=10, skip_bad=True)
    assert out.exists() and journal_path(out).exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_full_disk_names_the_file_and_leaves_nothing(scorer, tmp_path, monkeypatch, resume):
    src = write_input(tmp_path / "in.jsonl", 120)
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier result\n")
    written = []
    original = batch.AtomicFile.write

    def write(self, line):
        written.append(line)
        if len(written) > 30 and not isinstance(self.handle, Full):
            self.handle = Full(self.handle)  # the disk fills up partway through
        original(self, line)

    monkeypatch.setattr(batch.AtomicFile, "write", write)
    with pytest.raises(OutputError, match=r"cannot write .*out\.(rejects\.)?jsonl: No space left on device") as err:
        score_file(scorer, src, out, chunk_size=10, skip_bad=True, resume=resume)
    assert err.value.errno == errno.ENOSPC
    assert out.read_text() == "an earlier result\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary, partial, journal


class Full:
    """A file handle on a full disk: every write fails with ENOSPC."""

    def __init__(self, handle):
        self.real = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_score_cli_reports_a_full_disk_in_one_line(bundle, tmp_path, monkeypatch):
    src = write_input(tmp_path / "in.jsonl", 20)
    monkeypatch.setattr(batch.AtomicFile, "commit", lambda self: self._fail(OSError(errno.ENOSPC, "No space left "
                                                                                               "on device")))
    result = CliRunner().invoke(main, ["score", str(bundle), str(src), "-o", str(tmp_path / "o.jsonl"), "--quiet",
                                       "--skip-bad"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].endswith(
        "o.rejects.jsonl: No space left on device; nothing was written under that name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_the_writer_refuses_a_line_twice_or_out_of_order(tmp_path):
    """What guards "every row exactly once" on Ray: a retried batch delivered twice is refused, not written."""
    output = batch.AtomicFile(tmp_path / "out.jsonl")
    writer = batch.JobWriter(tmp_path / "in.jsonl", output, None)
    row = batch.ScoredLine(3, "{}", '{"prompt": "p", "ensrm": {"score": 1.0}}', "p", 1.0, None, None)
    writer.add(row)
    with pytest.raises(JobError, match="line 3 of .*in.jsonl arrived again or out of order"):
        writer.add(row)
    with pytest.raises(JobError, match=r"line 2 .* \(after line 3\)"):
        writer.add(row._replace(line=2))
    output.discard()
    assert list(tmp_path.iterdir()) == []
