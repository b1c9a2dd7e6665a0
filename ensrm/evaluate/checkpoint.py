"""Score pairs with the *source* model in torch, the way the bundle scores them, for ``ensrm eval --checkpoint``.

The texts are tokenised by the bundle's own tokenizer and batched as the runtime batches them
(length-grouped, the bundle's padding side), the source module (:func:`ensrm.export.sources.load_source`,
the one the exporter traces) gives raw per-head rewards, and the bundle's normalisation and
lambda turn them into the same aggregates as the graph. What remains between the two runs is
the export and the runtime's arithmetic: the deltas a user checks after export.

Needs the ``export`` extra (torch, transformers); imported only by ``--checkpoint``. (The example
needs a checkpoint and its bundle: not run by the doctests.)

>>> scores = score_checkpoint(["checkpoints/rm"], scorer, prompts, responses)   # doctest: +SKIP
>>> scores.heads.shape                                                          # doctest: +SKIP
(4000, 8)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from ensrm._optional import require
from ensrm.runtime.scores import Scores


def score_checkpoint(sources: Sequence[str | os.PathLike], scorer, prompts: list[str], responses: list[str],
                     batch_size: int = 32, heads: str | os.PathLike | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Scores:
    """Score ``(prompt, response)`` pairs with the torch model in ``sources`` as ``scorer``'s bundle would.

    ``sources`` and ``heads`` are what ``ens-export`` was given. Warns when their fingerprint
    differs from the bundle's source (the deltas then compare two different models).
    """
    torch = require("torch", "export")
    from ensrm.export.sources import load_source
    from ensrm.export.verify import aggregates

    spec = scorer.spec
    source = load_source(list(sources), heads=heads, max_length=None, trust_remote_code=False)
    if source.fingerprint != spec.source_fingerprint:
        warnings.warn(f"{', '.join(map(str, sources))} is not the source {scorer.bundle_dir} was exported from "
                      "(fingerprints differ); the deltas compare two different models", stacklevel=2)
    if source.num_heads != spec.num_heads:
        raise ValueError(f"the checkpoint has {source.num_heads} heads but the bundle {spec.num_heads}")
    encoder = scorer.text_encoder
    encodings = encoder.encode(prompts, responses, truncation=True)
    raw = np.empty((len(prompts), spec.num_heads), dtype=np.float64)  # [n, K]
    done = 0
    with torch.inference_mode():
        for rows, feeds in encoder.batches(encodings, batch_size):
            inputs = [torch.from_numpy(feeds[name]) for name in spec.inputs]
            raw[rows] = source.module(*inputs).double().numpy()  # [batch, K]
            done += len(rows)
            if progress is not None:
                progress(done, len(prompts))
    mu = np.asarray(spec.normalization.mu, dtype=np.float64)
    sigma = np.asarray(spec.normalization.sigma, dtype=np.float64)
    normalised = (raw - mu) / sigma  # [n, K]
    agg = aggregates(normalised, spec.uwo_lambda)
    return Scores(heads=normalised, mean=agg["ens_mean"], std=agg["ens_std"], min=agg["ens_min"],
                  uwo=agg["ens_uwo"])
