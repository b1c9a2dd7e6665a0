"""ScorerConfig: one frozen description of how to score, read by every entry point."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from ensrm.errors import MissingDependencyError
from ensrm.runtime.backend import resolve_backend
from ensrm.runtime.config import ScorerConfig
from ensrm.runtime.scorer import Scorer


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles("bert")


def test_config_is_frozen_and_checked():
    config = ScorerConfig("b", providers=["cpu"])
    assert config.providers == ("cpu",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threads = 2
    for bad, message in [({"backend": "cuda"}, "backend must be one of"), ({"precision": "fp8"}, "precision must be"),
                         ({"verify": "md5"}, "verify must be"), ({"threads": 0}, "threads must be >= 1"),
                         ({"batch_size": 0}, "batch_size must be >= 1"), ({"max_batch_size": True}, "integer")]:
        with pytest.raises(ValueError, match=message):
            ScorerConfig("b", **bad)


def test_of_keeps_a_config_and_applies_given_overrides():
    base = ScorerConfig("b", threads=2, batch_size=8)
    assert ScorerConfig.of(base) is base
    assert ScorerConfig.of(base, threads=None, precision="int8") == base.replace(precision="int8")
    assert ScorerConfig.of("b", batch_size=4) == ScorerConfig("b", batch_size=4)


def test_from_config_equals_keywords(bundle):
    config = ScorerConfig(bundle, threads=1, batch_size=3, backend="onnxruntime")
    by_config, by_keywords = Scorer.from_config(config), Scorer(bundle, threads=1, batch_size=3, backend="onnxruntime")
    assert by_config.config == by_keywords.config == config
    prompts, responses = ["a question", "b"], ["an answer", "another answer, longer than the first"]
    a, b = by_config.score_texts(prompts, responses), by_keywords.score_texts(prompts, responses)
    np.testing.assert_array_equal(a.heads, b.heads)
    assert by_config.batch_size == 3
    assert "onnxruntime" in by_config.description and by_config.description.endswith("fp32")


def test_score_texts_batches_by_the_configured_batch_size(bundle):
    scorer = Scorer(bundle, batch_size=2, threads=1)
    calls = []
    run = scorer.backend.run
    scorer.backend.run = lambda feeds: calls.append(feeds["input_ids"].shape[0]) or run(feeds)
    scorer.score_texts(["p"] * 5, ["r"] * 5)
    assert calls == [2, 2, 1]


def test_auto_resolves_to_an_installed_runtime():
    assert resolve_backend(ScorerConfig("b", backend="onnxruntime")) == "onnxruntime"
    assert resolve_backend(ScorerConfig("b")) in ("onnxruntime", "openvino")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_without_tensorrt_names_the_extra(bundle):
    with pytest.raises(MissingDependencyError, match=r"ensrm\[tensorrt\]"):
        Scorer(bundle, backend="tensorrt")
