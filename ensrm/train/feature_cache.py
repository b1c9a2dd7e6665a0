"""Pooled features of a frozen encoder, kept on disk per (prompt, response) between training runs.

An ensemble of K separately trained frozen-encoder models on the same preference file runs the
encoder over the same texts K times; with a cache the second and later runs only fit heads.
Features depend on every weight before the final layer (for RoBERTa that includes the freshly
initialised ``classifier.dense``), so the cache key is a hash of those weights plus
``max_length``; a text's row is found by the hash of its (prompt, response).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def model_fingerprint(model, head_name: str) -> str:
    """sha256 of the pooling and every parameter and buffer except the final layer ``head_name``
    (whose rows are the heads).

    (Not run by the doctests: it needs a model in torch.)

    >>> model_fingerprint(classifier, "classifier")[:12]          # doctest: +SKIP
    '3f0c9b2a71de'
    """
    digest = hashlib.sha256((type(model).__name__ + str(getattr(model, "pooling", ""))).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(head_name + "."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def text_key(prompt: str, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response]).encode("utf-8")).hexdigest()


class FeatureCache:
    """``[n, hidden]`` float32 features by (prompt, response), in ``directory/<model>-L<max_length>.npz``.

    (Needs a model to compute features with, so not run by the doctests; ``compute(missing prompts,
    responses)`` returns their ``[m, hidden]`` features.)

    >>> cache = FeatureCache("cache/", model_fingerprint(model, "classifier"), 128)   # doctest: +SKIP
    >>> x = cache.features(prompts, responses, compute)  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str, max_length: int):
        self.path = Path(directory) / f"{fingerprint[:24]}-L{max_length}.npz"
        self.hits = self.misses = 0

    def _load(self) -> tuple[list[str], np.ndarray | None]:
        if not self.path.is_file():
            return [], None
        with np.load(self.path) as data:
            return [str(k) for k in data["keys"]], data["features"]

    def features(self, prompts: list[str], responses: list[str],
                 compute: Callable[[list[str], list[str]], np.ndarray]) -> np.ndarray:
        """Rows for every pair, computing (and storing) only the pairs not in the cache yet."""
        keys, stored = self._load()
        index = {k: i for i, k in enumerate(keys)}
        wanted = [text_key(p, r) for p, r in zip(prompts, responses)]
        missing: dict[str, int] = {}  # key -> position of its first occurrence in the request
        for i, k in enumerate(wanted):
            if k not in index and k not in missing:
                missing[k] = i
        self.hits, self.misses = sum(k in index for k in wanted), len(missing)
        if missing:
            fresh = np.asarray(compute([prompts[i] for i in missing.values()],
                                       [responses[i] for i in missing.values()]), dtype=np.float32)  # [m, hidden]
            for k in missing:
                index[k] = len(keys)
                keys.append(k)
            stored = fresh if stored is None else np.concatenate([stored, fresh])
            self._save(keys, stored)
        return stored[[index[k] for k in wanted]]  # [n, hidden]

    def _save(self, keys: list[str], features: np.ndarray) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".features-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, keys=np.array(keys), features=features)
            os.replace(tmp, self.path)  # a reader never sees a half-written cache
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
