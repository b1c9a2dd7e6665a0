"""The OpenVINO backend: same scores as onnxruntime, `auto` selection and every fallback."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

import ensrm
from ensrm.errors import BundleError, MissingDependencyError, ProviderError
from ensrm.runtime.backend import BackendFallbackWarning, resolve_backend
from ensrm.runtime.config import ScorerConfig

ov = pytest.importorskip("openvino")

from ensrm.runtime import openvino_backend  # noqa: E402

PROMPTS = ["How do I bake bread?", "What is a tuple?", "Plan a hike.", "Why is the sky blue?", "Hi"]
RESPONSES = ["Mix flour, water and yeast, knead and bake it hot.", "An ordered, immutable sequence.",
             "Layers, a map, food and a headlamp.", "Sunlight scatters off the air.", "Hello! How can I help you?"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Compiled models go to a per-test cache, never the user's."""
    monkeypatch.setenv("ENSRM_CACHE_DIR", str(tmp_path / "cache"))


def assert_same_scores(a, b, atol=1e-4):
    for name in ("heads", "mean", "std", "min", "uwo"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, rtol=0, err_msg=name)


def padded(spec, side):
    """Ids and a mask of three rows of different lengths, padded on ``side``."""
    rng = np.random.default_rng(1)
    lengths = [11, 4, 7]
    ids = np.full((3, 11), spec.pad_token_id, dtype=np.int64)
    mask = np.zeros((3, 11), dtype=np.int64)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(11 - n, 11)
        ids[row, cols] = rng.integers(5, min(300, spec.vocab_size), size=n)
        mask[row, cols] = 1
    return ids, mask


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_openvino_matches_onnxruntime(bundles, kind):
    bundle = bundles(kind)
    vino = ensrm.Scorer(bundle, backend="openvino", threads=1)
    ort = ensrm.Scorer(bundle, backend="onnxruntime", threads=1)
    assert vino.description.startswith("OpenVINO") and "model.onnx" in vino.description
    assert_same_scores(vino.score_texts(PROMPTS, RESPONSES), ort.score_texts(PROMPTS, RESPONSES))
    sides = ["right"] if vino.spec.architecture == "encoder" else ["left", "right"]
    for side in sides:  # decoders read the last real token under either padding
        ids, mask = padded(vino.spec, side)
        assert_same_scores(vino.score(ids, mask), ort.score(ids, mask))


def test_full_ensemble_matches_onnxruntime(checkpoints, tmp_path):
    from ensrm.export.exporter import export_bundle

    export_bundle([checkpoints("bert", 1, seed) for seed in range(2)], tmp_path / "b", progress=None)
    vino = ensrm.Scorer(tmp_path / "b", backend="openvino", threads=1)
    ort = ensrm.Scorer(tmp_path / "b", backend="onnxruntime", threads=1)
    assert vino.num_heads == 2
    assert_same_scores(vino.score_texts(PROMPTS, RESPONSES), ort.score_texts(PROMPTS, RESPONSES))


def test_partial_trunk_matches_onnxruntime(checkpoints, tmp_path):
    transformers = pytest.importorskip("transformers")
    from ensrm.export.exporter import export_bundle
    from ensrm.models.trunk import save_trunk
    from tests.export.test_trunk import make_trunk

    checkpoint = checkpoints("bert", 1)
    trunk = make_trunk(checkpoint, members=3, member_layers=1, pooling="mean")
    save_trunk(trunk, transformers.AutoTokenizer.from_pretrained(str(checkpoint)), tmp_path / "ckpt")
    export_bundle([tmp_path / "ckpt"], tmp_path / "b", progress=None)
    vino = ensrm.Scorer(tmp_path / "b", backend="openvino", threads=1)
    ort = ensrm.Scorer(tmp_path / "b", backend="onnxruntime", threads=1)
    assert_same_scores(vino.score_texts(PROMPTS, RESPONSES), ort.score_texts(PROMPTS, RESPONSES))


def test_auto_runs_openvino_on_the_cpu_and_onnxruntime_with_providers(bundles):
    bundle = bundles("bert")
    assert ensrm.Scorer(bundle).description.startswith("OpenVINO")
    assert resolve_backend(ScorerConfig(bundle)) == "openvino"
    assert resolve_backend(ScorerConfig(bundle, providers=["cuda"])) == "onnxruntime"
    assert resolve_backend(ScorerConfig(bundle, providers=["cpu"])) == "openvino"
    assert resolve_backend(ScorerConfig(bundle), precision="fp16") == "onnxruntime"
    assert ensrm.Scorer(bundle, providers=["cpu"], backend="onnxruntime").description.startswith("onnxruntime")


def test_scorer_shared_by_threads_gives_the_serial_scores(bundles):
    from concurrent.futures import ThreadPoolExecutor

    scorer = ensrm.Scorer(bundles("bert"), backend="openvino", threads=1, hint="throughput")
    expected = scorer.score_texts(PROMPTS, RESPONSES)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: scorer.score_texts(PROMPTS, RESPONSES), range(8)))
    for got in results:
        assert_same_scores(got, expected, atol=0)
    assert "throughput" in scorer.description


def test_compile_failure_names_the_file_and_auto_falls_back_once(bundles, tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    shutil.copytree(bundles("bert"), bundle)

    real = openvino_backend.core()

    class Refusing:
        def get_property(self, *args):
            return real.get_property(*args)

        def compile_model(self, *args, **kwargs):
            raise RuntimeError("Exception from src/inference: unsupported operation FancyOp\nmore detail")

    monkeypatch.setattr(openvino_backend, "core", Refusing)
    with pytest.raises(BundleError, match=r"cannot compile model\.onnx .*unsupported operation FancyOp"):
        ensrm.Scorer(bundle, backend="openvino")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = ensrm.Scorer(bundle)
    fallbacks = [w for w in caught if issubclass(w.category, BackendFallbackWarning)]
    assert len(fallbacks) == 1 and "FancyOp" in str(fallbacks[0].message)
    assert scorer.description.startswith("onnxruntime")


def test_missing_openvino_names_the_extra(bundles, monkeypatch):
    monkeypatch.setattr(openvino_backend, "installed", lambda: False)
    assert resolve_backend(ScorerConfig(bundles("bert"))) == "onnxruntime"
    real = openvino_backend.require

    def missing(module, extra):
        if module == "openvino":
            raise MissingDependencyError(f"install it with: pip install 'ensrm[{extra}]'")
        return real(module, extra)

    monkeypatch.setattr(openvino_backend, "require", missing)
    with pytest.raises(MissingDependencyError, match=r"ensrm\[openvino\]"):
        ensrm.Scorer(bundles("bert"), backend="openvino")


def test_onnxruntime_refuses_bf16_naming_the_extra(bundles):
    with pytest.raises(ProviderError, match=r"ensrm\[openvino\]"):
        ensrm.Scorer(bundles("bert"), backend="onnxruntime", precision="bf16")


def entries(tmp_path):
    return sorted(p for p in (tmp_path / "cache" / "openvino").iterdir())


def test_a_second_scorer_reads_the_compiled_cache(bundles, tmp_path):
    ensrm.Scorer(bundles("bert"), backend="openvino")
    ensrm.Scorer(bundles("bert"), backend="openvino")
    [entry] = entries(tmp_path)
    assert [p.suffix for p in entry.iterdir()] == [".blob"]


def test_a_bundle_replaced_in_place_scores_its_new_weights(checkpoints, tmp_path):
    """Replaced as an archive with normalised timestamps unpacks it: same names, sizes and times."""
    from ensrm.export.exporter import export_bundle

    for seed, name in ((0, "b"), (1, "new")):
        export_bundle([checkpoints("bert", 2, seed)], tmp_path / name, progress=None)
        for path in (tmp_path / name).iterdir():
            os.utime(path, (1e9, 1e9))
    before = ensrm.Scorer(tmp_path / "b", backend="openvino").score_texts(PROMPTS, RESPONSES)
    for path in (tmp_path / "new").iterdir():
        shutil.copy2(path, tmp_path / "b" / path.name)
    after = ensrm.Scorer(tmp_path / "b", backend="openvino").score_texts(PROMPTS, RESPONSES)
    # OpenVINO alone reuses a blob while the graph file's path, size and time match: the old weights would answer
    assert_same_scores(after, ensrm.Scorer(tmp_path / "b", backend="onnxruntime").score_texts(PROMPTS, RESPONSES))
    assert not np.allclose(after.heads, before.heads, atol=1e-3)


def test_the_cache_drops_its_least_recently_used_graphs_beyond_its_limit(bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("ENSRM_OPENVINO_CACHE_GB", str(1 / 2**30))  # one byte: only the graph in use stays
    ensrm.Scorer(bundles("bert"), backend="openvino")
    [first] = entries(tmp_path)
    ensrm.Scorer(bundles("gpt2"), backend="openvino")
    [second] = entries(tmp_path)
    assert second != first and list(second.iterdir())
    monkeypatch.setenv("ENSRM_OPENVINO_CACHE_GB", "0")  # off: nothing is written
    shutil.rmtree(second)
    ensrm.Scorer(bundles("bert"), backend="openvino")
    assert entries(tmp_path) == []
