"""A full disk while a bundle or a Triton repository is written: one error naming the target, nothing left behind."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from click.testing import CliRunner

from ensrm.builder import BundleBuilder
from ensrm.bundle import staged_bundle
from ensrm.cli import main
from ensrm.errors import OutputError


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_staged_bundle_names_the_target_and_removes_staging(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(OutputError, match=r"cannot write .*bundle: No space left on device") as err:
        with staged_bundle(target) as staging:
            (staging / "a.txt").write_text("half")
            _full()
    assert err.value.errno == errno.ENOSPC and err.value.path == str(target)
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging directory


def test_updating_a_bundle_on_a_full_disk_leaves_it_as_it_was(bundles, tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    shutil.copytree(bundles("bert", num_labels=4), bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    monkeypatch.setattr("ensrm.builder.shutil.copy2", _full)  # the first file copied into staging
    with pytest.raises(OutputError, match="No space left on device"):
        with BundleBuilder.update(bundle):
            pass
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_triton_repo_on_a_full_disk_is_one_line_and_leaves_nothing(bundles, tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    calls, real = [], shutil.copyfile

    def copy_then_fill(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) > 1:  # the disk fills up after the first file
            _full()
        return real(src, dst)

    monkeypatch.setattr("ensrm.integrations.triton.shutil.copyfile", copy_then_fill)
    result = CliRunner().invoke(main, ["triton-repo", str(bundles("bert", num_labels=4)), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (f"Error: cannot write {tmp_path / 'repo'}: No space left on "
                                                       "device; nothing was written under that name")
    assert list(tmp_path.iterdir()) == []
