"""The compiled-graph cache: one entry per graph content, least recently used entries dropped first."""

from __future__ import annotations

import os

import pytest

from ensrm.runtime import compiled_cache


def graph(directory, text="graph", weights=b"w" * 10):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_text(text)
    (directory / "model.onnx.data").write_bytes(weights)
    return directory / "model.onnx"


def test_an_entry_follows_the_graphs_and_its_weights_content(tmp_path):
    path = graph(tmp_path / "b")
    entry = compiled_cache.cache_entry(tmp_path / "cache", path)
    assert compiled_cache.cache_entry(tmp_path / "cache", path) == entry
    graph(tmp_path / "b", weights=b"v" * 11)  # new weights under an unchanged graph file
    assert compiled_cache.cache_entry(tmp_path / "cache", path) != entry
    assert compiled_cache.cache_entry(tmp_path / "cache", graph(tmp_path / "copy", weights=b"v" * 11)) != entry


def test_an_entry_follows_the_manifests_digests_when_times_and_sizes_repeat(tmp_path):
    path = graph(tmp_path / "b")
    first = compiled_cache.cache_entry(tmp_path / "cache", path, {"model.onnx.data": "aa"})
    assert compiled_cache.cache_entry(tmp_path / "cache", path, {"model.onnx.data": "bb"}) != first


def test_ir_weights_count_too(tmp_path):
    xml = tmp_path / "model.int8.xml"
    xml.write_text("ir")
    (tmp_path / "model.int8.bin").write_bytes(b"1234")
    assert compiled_cache.weight_files(xml) == [xml, tmp_path / "model.int8.bin"]


def fill(root, name, size, age):
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "x.blob").write_bytes(b"0" * size)
    os.utime(entry, (age, age))
    return entry


def test_prune_drops_the_least_recently_used_entries_and_old_loose_blobs(tmp_path):
    old, middle, new = (fill(tmp_path, name, 100, age) for name, age in (("a", 1e9), ("b", 2e9), ("c", 3e9)))
    (tmp_path / "123.blob").write_bytes(b"0" * 10)  # the flat layout of older versions
    removed = compiled_cache.prune(tmp_path, keep=old, limit=250)
    assert sorted(removed) == [tmp_path / "123.blob", middle]
    assert sorted(tmp_path.iterdir()) == [old, new]
    assert compiled_cache.prune(tmp_path, keep=new, limit=0) == [old]
    assert list(tmp_path.iterdir()) == [new]  # the entry in use stays, whatever the limit


@pytest.mark.parametrize("raw", ["-1", "lots", "nan"])
def test_a_bad_limit_is_refused_naming_the_variable(raw, monkeypatch):
    monkeypatch.setenv(compiled_cache.LIMIT_VARIABLE, raw)
    with pytest.raises(ValueError, match="ENSRM_OPENVINO_CACHE_GB"):
        compiled_cache.limit_bytes()


def test_a_zero_limit_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv(compiled_cache.LIMIT_VARIABLE, "0")
    assert compiled_cache.cache_entry(tmp_path / "cache", graph(tmp_path / "b")) is None
    assert not (tmp_path / "cache").exists()


def test_the_limit_defaults_and_reads_gib(monkeypatch):
    monkeypatch.delenv(compiled_cache.LIMIT_VARIABLE, raising=False)
    assert compiled_cache.limit_bytes() == compiled_cache.LIMIT_GB * 2**30
    monkeypatch.setenv(compiled_cache.LIMIT_VARIABLE, "0.5")
    assert compiled_cache.limit_bytes() == 2**29
