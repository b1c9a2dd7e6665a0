"""Damaged bundles are refused by name; nothing outside the bundle is read; nothing is unpickled."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ensrm.bundle import bundle_file, clean_stale, load_spec, read_spec, staged_bundle
from ensrm.errors import BundleError, ExportError
from ensrm.spec import FORMAT_VERSION, MANIFEST_NAME

PACKAGE = Path(__file__).resolve().parents[2] / "ensrm"


@pytest.fixture
def bundle(bundles, tmp_path) -> Path:
    """A private copy of the tiny GPT-2 bundle, free to damage."""
    out = tmp_path / "rm"
    shutil.copytree(bundles("gpt2"), out)
    return out


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_NAME).read_text())


def write_manifest_dict(bundle: Path, data: dict) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def refused(bundle, fragment, file=None, verify="sha256"):
    with pytest.raises(BundleError) as info:
        load_spec(bundle, verify=verify)
    assert fragment in str(info.value), str(info.value)
    if file is not None:
        assert info.value.file == file
    return info.value


# -- files ----------------------------------------------------------------------------------------

def test_a_good_bundle_loads_in_every_mode(bundle):
    for mode in ("sha256", "size", "none"):
        spec = load_spec(bundle, verify=mode)
        assert {"model.onnx", "model.onnx.data", "tokenizer.json"} <= set(spec.files)
    with pytest.raises(ValueError, match="verify must be one of"):
        load_spec(bundle, verify="fast")


@pytest.mark.parametrize("mode", ["sha256", "size"])
@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data", "tokenizer.json"])
def test_missing_file_is_named(bundle, mode, name):
    (bundle / name).unlink()
    refused(bundle, f"bundle file {name} is missing", file=name, verify=mode)


@pytest.mark.parametrize("mode", ["sha256", "size"])
@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data", "tokenizer.json"])
def test_truncated_file_is_named(bundle, mode, name):
    path = bundle / name
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    refused(bundle, f"bundle file {name} has {size // 2} bytes, the manifest says {size}", file=name, verify=mode)


@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data", "tokenizer.json"])
def test_altered_file_is_named_by_sha256_but_not_by_size(bundle, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(bundle, f"bundle file {name} does not match its sha256", file=name)
    load_spec(bundle, verify="size")  # documented: the fast mode sees sizes only


def test_scorer_verifies_by_default(bundle):
    from ensrm import Scorer

    path = bundle / "model.onnx.data"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx.data does not match its sha256"):
        Scorer(bundle)


def test_unloadable_graph_is_a_bundle_error_even_unverified(bundle):
    from ensrm import Scorer

    (bundle / "model.onnx").write_bytes(b"not a protobuf" * 10)
    with pytest.raises(BundleError, match="onnxruntime cannot load model.onnx") as info:
        Scorer(bundle, verify="none", fused=False)  # the portable graph; the fused one: test_fused_scorer.py
    assert info.value.file == "model.onnx"


def test_external_data_escaping_the_bundle_is_refused_by_onnxruntime(bundle, tmp_path):
    """Even with verification off, weights outside the bundle directory are not read."""
    import onnx

    from ensrm import Scorer

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    shutil.move(bundle / "model.onnx.data", tmp_path / "outside.data")
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save(model, str(bundle / "model.onnx"))
    with pytest.raises(BundleError, match="onnxruntime cannot load model.onnx"):
        Scorer(bundle, verify="none", fused=False)


# -- the manifest ---------------------------------------------------------------------------------

def test_newer_format_version_is_refused(bundle):
    data = manifest(bundle)
    data["format_version"] = FORMAT_VERSION + 1
    write_manifest_dict(bundle, data)
    refused(bundle, f"format_version {FORMAT_VERSION + 1} is newer than this ensrm supports ({FORMAT_VERSION}); "
                    "upgrade ensrm", file=MANIFEST_NAME)


@pytest.mark.parametrize("text, fragment", [
    ('{"format_version": 1, ', "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "must be a JSON object, found list"),
    ('{"num_heads": 4}', "no integer 'format_version'"),
    ('{"format_version": "1"}', "no integer 'format_version'"),
    ('{"format_version": 1}', "lacks required field(s): num_heads"),
])
def test_malformed_manifest_is_refused(bundle, text, fragment):
    (bundle / MANIFEST_NAME).write_text(text)
    refused(bundle, fragment, file=MANIFEST_NAME)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(num_heads=0), "num_heads must be >= 1"),
    (lambda d: d.update(pooling="max"), "pooling must be one of"),
    (lambda d: d.update(files=[1, 2]), str(MANIFEST_NAME)),
    (lambda d: d["files"]["model.onnx"].pop("sha256"), "missing field 'sha256'"),
    (lambda d: d.update(normalization={"mu": [0.0] * 4, "sigma": [1.0, 1.0, 0.0, 1.0]}), "finite and positive"),
    (lambda d: d.update(normalization={"mu": [0.0], "sigma": [1.0]}), "normalisation covers 1 heads, not 4"),
])
def test_inconsistent_manifest_is_refused(bundle, change, fragment):
    data = manifest(bundle)
    change(data)
    write_manifest_dict(bundle, data)
    refused(bundle, fragment, file=MANIFEST_NAME)


def test_manifest_that_is_not_utf8_is_refused(bundle):
    (bundle / MANIFEST_NAME).write_bytes(b'{"format_version": 1, "x": "\xff\xfe"}')
    refused(bundle, "not UTF-8", file=MANIFEST_NAME)


def test_missing_directory_and_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_spec(tmp_path / "nothing")
    with pytest.raises(BundleError, match="is not a bundle: ensemble.json is missing"):
        load_spec(tmp_path)


# -- names that leave the bundle ------------------------------------------------------------------

@pytest.mark.parametrize("name, fragment", [
    ("../model.onnx", "escapes the bundle directory"),
    ("sub/../../x", "escapes the bundle directory"),
    ("/etc/passwd", "is absolute or empty"),
    ("", "is absolute or empty"),
    (".", "escapes the bundle directory"),
])
def test_file_names_escaping_the_bundle_are_refused(bundle, name, fragment):
    data = manifest(bundle)
    data["files"][name] = {"size": 1, "sha256": "0" * 64}
    write_manifest_dict(bundle, data)
    err = refused(bundle, fragment)
    assert err.file == name
    with pytest.raises(BundleError, match=re.escape(fragment)):
        bundle_file(bundle, name)


@pytest.mark.parametrize("mode", ["sha256", "size"])
def test_variant_file_outside_the_bundle_is_refused(bundle, mode):
    from ensrm import Scorer

    data = manifest(bundle)
    data["variants"]["fp32"]["file"] = "../model.onnx"
    write_manifest_dict(bundle, data)
    refused(bundle, "'../model.onnx' is used by the manifest but not listed", verify=mode)
    with pytest.raises(BundleError, match="escapes the bundle directory"):
        Scorer(bundle, verify="none")


def test_symlink_pointing_outside_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.copy(bundle / "tokenizer.json", outside)  # same bytes: only the location is wrong
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(outside)
    err = refused(bundle, "'tokenizer.json' escapes the bundle directory", file="tokenizer.json")
    assert "symlink" in str(err)


def test_manifest_symlinked_from_outside_is_refused(bundle, tmp_path):
    outside = tmp_path / "manifest.json"
    shutil.move(bundle / MANIFEST_NAME, outside)
    (bundle / MANIFEST_NAME).symlink_to(outside)
    with pytest.raises(BundleError, match="escapes the bundle directory"):
        read_spec(bundle)


def test_symlink_inside_the_bundle_is_fine(bundle):
    shutil.move(bundle / "tokenizer.json", bundle / "tokenizer.real.json")
    (bundle / "tokenizer.json").symlink_to("tokenizer.real.json")
    data = manifest(bundle)
    data["files"]["tokenizer.real.json"] = data["files"]["tokenizer.json"]
    write_manifest_dict(bundle, data)
    load_spec(bundle)


# -- nothing executed -----------------------------------------------------------------------------

def _source_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_package_source_unpickles_nothing():
    """No pickle-family module, no torch.load without weights_only=True, no allow_pickle, no eval/exec."""
    forbidden = [
        (re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|marshal|shelve)\b"
                    r"(?!\s+import\s+UnpicklingError\b)", re.M),
         "imports a pickle-family module"),
        (re.compile(r"\bpickle\.loads?\("), "calls pickle.load"),
        (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
        (re.compile(r"(?<![\w.])(eval|exec)\("), "calls eval/exec"),
        (re.compile(r"trust_remote_code\s*=\s*True"), "turns trust_remote_code on"),
    ]
    problems = []
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        for pattern, what in forbidden:
            for match in pattern.finditer(text):
                line = text.count(chr(10), 0, match.start()) + 1
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start():text.find(")", match.start()) + 1]
            if "weights_only=True" not in call:
                problems.append(f"{path.relative_to(PACKAGE.parent)}: torch.load without weights_only=True")
    assert not problems, "\n".join(problems)
    assert len(_source_files()) > 10  # the scan saw the package


def test_trust_remote_code_defaults_off(tmp_path):
    import inspect

    from ensrm.cli import export_command
    from ensrm.export.settings import ExportSettings
    from ensrm.export.sources import load_source

    # export_bundle takes its options as ExportSettings (or keywords that build one): the default is there
    for func in (ExportSettings, load_source):
        assert inspect.signature(func).parameters["trust_remote_code"].default is False
    ctx = export_command.make_context("export", [str(tmp_path), "-o", str(tmp_path / "out")])
    assert ctx.params["trust_remote_code"] is False
    ctx = export_command.make_context("export", [str(tmp_path), "-o", str(tmp_path / "out"), "--trust-remote-code"])
    assert ctx.params["trust_remote_code"] is True


def test_remote_code_in_a_checkpoint_is_not_run(checkpoints, tmp_path):
    from ensrm.export.sources import load_source

    ckpt = tmp_path / "remote"
    shutil.copytree(checkpoints("bert"), ckpt)
    sentinel = tmp_path / "remote-code-ran"
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(config))
    code = f"open({str(sentinel)!r}, 'w').write('ran')\n"
    (ckpt / "configuration_evil.py").write_text(code + "from transformers import BertConfig as EvilConfig\n")
    (ckpt / "modeling_evil.py").write_text(code)
    source = load_source([ckpt])
    assert type(source.module.model).__module__.startswith("transformers.models.bert")
    assert not sentinel.exists()


def test_pickle_checkpoint_with_code_is_refused_without_running_it(checkpoints, tmp_path):
    import torch

    from ensrm.export.sources import load_source

    ckpt = tmp_path / "evil"
    shutil.copytree(checkpoints("bert"), ckpt)
    (ckpt / "model.safetensors").unlink()
    sentinel = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, ckpt / "pytorch_model.bin")
    with pytest.raises(ExportError, match="cannot load the weights of .*tensors only"):
        load_source([ckpt])
    assert not sentinel.exists()


# -- staging leftovers ----------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_export_are_cleaned(tmp_path):
    target = tmp_path / "rm"
    dead = _dead_pid()
    stale = tmp_path / f".rm.staging-{dead}-abc123"
    (stale / "sub").mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    live = tmp_path / f".rm.staging-{os.getppid()}-def456"  # a live process's: left alone
    live.mkdir()
    other = tmp_path / f".other.staging-{dead}-x"  # another bundle's: left alone
    other.mkdir()
    # Killed between the two renames of a replacement: the previous bundle sits in .old.
    old = tmp_path / f".rm.old-{dead}-ghi789"
    (old / "rm").mkdir(parents=True)
    (old / "rm" / MANIFEST_NAME).write_text("{}")
    done = clean_stale(target)
    assert not stale.exists() and not old.exists()
    assert live.exists() and other.exists()
    assert (target / MANIFEST_NAME).read_text() == "{}"
    assert set(done) == {stale, old, target}


def test_staged_bundle_replaces_only_with_overwrite(tmp_path):
    target = tmp_path / "rm"
    with staged_bundle(target) as stage:
        (stage / "a").write_text("first")
    with pytest.raises(BundleError, match="already exists; pass `overwrite=True`"):
        with staged_bundle(target) as stage:
            (stage / "a").write_text("second")
    assert (target / "a").read_text() == "first"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_bundle(target, overwrite=True) as stage:
            (stage / "a").write_text("half")
            raise RuntimeError("boom")
    assert (target / "a").read_text() == "first"
    with staged_bundle(target, overwrite=True) as stage:
        (stage / "a").write_text("second")
    assert (target / "a").read_text() == "second"
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]  # no staging or old dirs left


def test_weights_are_external_data_listed_in_the_manifest(bundle):
    """The path models over 2 GB need (protobuf's limit) is the one every export takes."""
    import onnx

    spec = load_spec(bundle)
    entry = spec.files["model.onnx.data"]
    assert entry.size > 0 and re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    big = [t for t in model.graph.initializer if np.prod(t.dims) * 4 > 1024]
    assert big, "expected weight tensors"
    inline = [t.name for t in big if t.data_location != onnx.TensorProto.EXTERNAL]
    assert not inline, f"weights stored inside model.onnx: {inline[:5]}"
    locations = {e.value for t in big for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}  # relative, beside the graph


def test_scoring_a_bundle_moved_elsewhere(bundle, tmp_path):
    """model.onnx finds model.onnx.data by a relative location: a moved, renamed bundle still scores."""
    from ensrm import Scorer

    before = Scorer(bundle).score_texts(["Hi"], ["Hello there"])
    moved = tmp_path / "deeper" / "renamed bundle"
    moved.parent.mkdir()
    shutil.move(bundle, moved)
    after = Scorer(moved).score_texts(["Hi"], ["Hello there"])
    np.testing.assert_array_equal(before.heads, after.heads)
