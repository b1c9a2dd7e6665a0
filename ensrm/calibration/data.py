"""Reference, calibration and evaluation records: read, split, tokenise and score them.

All three are JSONL files with one ``{"prompt": ..., "response": ...}`` object a line (the
records ``ensrm score`` reads); a malformed line is reported with its line number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ensrm.errors import InputError
from ensrm.jsonl import read_records
from ensrm.runtime.scores import Scores
from ensrm.runtime.texts import TextEncoder
from ensrm.spec import EnsembleSpec


def load_records(path: str | os.PathLike, what: str, minimum: int = 1) -> list[dict]:
    """All (prompt, response) records of a JSONL file; at least ``minimum`` of them.

    (Not run by the doctests: it needs records on disk.)

    >>> refs = load_records("refs.jsonl", "reference")          # doctest: +SKIP
    """
    records = [{"prompt": r["prompt"], "response": r["response"]} for r in read_records(path)]
    if len(records) < minimum:
        raise InputError(f"the {what} file {path} has {len(records)} records; at least {minimum} are needed")
    return records


def split_holdout(records: list[dict], every: int = 4) -> tuple[list[dict], list[dict]]:
    """Split into (calibration, held-out): every ``every``-th record is held out.

    Deterministic and spread over the file, so an ordered file still gives a fair split.

    >>> calib, held = split_holdout([{"i": i} for i in range(8)])
    >>> [r["i"] for r in held]
    [3, 7]
    """
    held = [r for i, r in enumerate(records) if i % every == every - 1]
    calib = [r for i, r in enumerate(records) if i % every != every - 1]
    return calib, held


def encoder_for(bundle_dir: str | os.PathLike, spec: EnsembleSpec) -> TextEncoder:
    return TextEncoder(Path(bundle_dir), spec)


def feed_batches(encoder: TextEncoder, records: list[dict], batch_size: int = 32):
    """``(rows, feeds)`` batches of similar length (see :meth:`TextEncoder.batches`)."""
    encodings = encoder.encode([r["prompt"] for r in records], [r["response"] for r in records])
    return list(encoder.batches(encodings, batch_size))


def score_records(backend, encoder: TextEncoder, records: list[dict], batch_size: int = 32) -> Scores:
    """Score records with any runtime backend; rows come back in input order."""
    k = encoder.spec.num_heads
    heads = np.empty((len(records), k), dtype=np.float32)
    aggregates = {name: np.empty(len(records), dtype=np.float32) for name in ("mean", "std", "min", "uwo")}
    for rows, feeds in feed_batches(encoder, records, batch_size):
        scores = Scores.from_outputs(backend.run(feeds))
        heads[rows] = scores.heads
        for name, values in aggregates.items():
            values[rows] = getattr(scores, name)
    return Scores(heads=heads, **aggregates)
