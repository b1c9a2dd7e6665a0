"""Session fixtures: tiny seeded checkpoints and their exported bundles, built once per run."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def private_compiled_cache(tmp_path_factory):
    """Compiled graphs go to the run's own cache (servers and workers inherit it), never the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("ENSRM_CACHE_DIR", str(tmp_path_factory.mktemp("ensrm-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """``checkpoints(kind, num_labels=4, seed=0)`` -> path of a tiny saved classifier (cached)."""
    from tests.models import build_classifier

    cache = {}

    def get(kind: str, num_labels: int = 4, seed: int = 0):
        key = (kind, num_labels, seed)
        if key not in cache:
            cache[key] = build_classifier(kind, tmp_path_factory.mktemp(f"{kind}-{num_labels}-{seed}"),
                                          num_labels, seed)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory):
    """``bundles(kind, num_labels=4, seed=0, **export_options)`` -> path of an exported bundle (cached)."""
    from ensrm.export.exporter import export_bundle

    cache = {}

    def get(kind: str, num_labels: int = 4, seed: int = 0, **options):
        key = (kind, num_labels, seed, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("bundle") / kind
            export_bundle([checkpoints(kind, num_labels, seed)], out, progress=None, **options)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def minilm_checkpoint(tmp_path_factory):
    """The real all-MiniLM-L6-v2 encoder with 8 seeded random heads, as a sequence classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.models import minilm_path

    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("minilm-rm")
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=8)
    model.save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(ckpt)
    return ckpt


@pytest.fixture(scope="session")
def minilm_bundle(minilm_checkpoint, tmp_path_factory):
    """``minilm_checkpoint`` exported with max_length 128."""
    from ensrm.export.exporter import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "minilm"
    export_bundle([minilm_checkpoint], out, max_length=128, progress=None)
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``ensrm demo`` run once per session: ``.output``, ``.checkpoint``, ``.bundle`` (``bundles/default``).

    The docs examples (tests/docs) run against this bundle. ``ENSRM_TEST_DEMO_DIR=DIR`` runs the demo
    in DIR instead of a fresh directory, reusing a default model and bundle built there before
    (the demo builds each only if absent; a first build takes minutes).
    """
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from ensrm.cli import main

    root = Path(os.environ.get("ENSRM_TEST_DEMO_DIR") or tmp_path_factory.mktemp("demo"))
    checkpoint, bundle = root / "checkpoints" / "default", root / "bundles" / "default"
    result = CliRunner().invoke(main, ["demo", "--checkpoint", str(checkpoint), "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(output=result.output, checkpoint=checkpoint, bundle=bundle)
