"""The frozen-mode feature cache: only unseen texts reach the encoder, and fits do not change."""

import numpy as np
import pytest

from ensrm.train.feature_cache import FeatureCache


def test_cache_computes_each_text_once(tmp_path):
    calls = []

    def compute(prompts, responses):
        calls.append(list(responses))
        return np.array([[len(p), len(r)] for p, r in zip(prompts, responses)], dtype=np.float32)

    cache = FeatureCache(tmp_path, "f" * 64, 128)
    first = cache.features(["a", "a", "b"], ["x", "x", "yy"], compute)
    assert calls == [["x", "yy"]] and (cache.hits, cache.misses) == (0, 2)
    np.testing.assert_array_equal(first, [[1, 1], [1, 1], [1, 2]])
    again = FeatureCache(tmp_path, "f" * 64, 128).features(["b", "c"], ["yy", "zzz"], compute)
    assert calls[-1] == ["zzz"]
    np.testing.assert_array_equal(again, [[1, 2], [1, 3]])
    other_length = FeatureCache(tmp_path, "f" * 64, 64)  # truncation changes features: a separate file
    other_length.features(["b"], ["yy"], compute)
    assert calls[-1] == ["yy"] and len(list(tmp_path.glob("*.npz"))) == 2
    assert not list(tmp_path.glob(".features-*"))  # no temp files left behind


def test_frozen_fits_from_cache_equal_fresh_fits(tiny_bert_dir, easy_prefs, tmp_path):
    pytest.importorskip("torch")
    from ensrm.train import train_reward_model

    settings = dict(heads=2, seed=4, bootstrap=True, max_length=64, eval_fraction=0.2, progress=False)
    plain = train_reward_model(tiny_bert_dir, easy_prefs[:80], tmp_path / "plain", **settings)
    cache = tmp_path / "cache"
    warm = train_reward_model(tiny_bert_dir, easy_prefs[:80], tmp_path / "a", feature_cache=cache, **settings)
    # another seed: another split and resample of the same texts, all served from the cache
    other = train_reward_model(tiny_bert_dir, easy_prefs[:80], tmp_path / "b", feature_cache=cache,
                               **{**settings, "seed": 5})
    cached = train_reward_model(tiny_bert_dir, easy_prefs[:80], tmp_path / "c", feature_cache=cache, **settings)
    scale = float(np.abs(plain.eval_rewards_chosen).max())
    for run in (warm, cached):
        # other batch groupings change float rounding, which the large frozen weights amplify
        np.testing.assert_allclose(run.eval_rewards_chosen, plain.eval_rewards_chosen, rtol=1e-3, atol=1e-3 * scale)
    assert other.n_train == plain.n_train and len(list(cache.glob("*.npz"))) == 1


def test_each_pooling_has_its_own_cache_file(tiny_bert_dir, easy_prefs, tmp_path):
    pytest.importorskip("torch")
    from ensrm.train import train_reward_model

    settings = dict(heads=2, max_length=64, eval_fraction=0.2, progress=False, feature_cache=tmp_path / "cache")
    for name, pooling in (("classifier", None), ("mean", "mean"), ("cls", "cls"), ("mean-again", "mean")):
        train_reward_model(tiny_bert_dir, easy_prefs[:40], tmp_path / name, pooling=pooling, **settings)
    # the classifier's pooler output, the mean and the first token state are different features
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
