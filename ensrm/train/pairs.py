"""Preference pairs for training: loading, the held-out split, label noise and bootstrap counts."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from ensrm.errors import InputError
from ensrm.jsonl import read_records

FIELDS = ("prompt", "chosen", "rejected")


def load_preferences(prefs: str | os.PathLike | Iterable[dict]) -> list[dict]:
    """Preference records from a JSONL path or an iterable of dicts, each with string fields
    ``prompt``, ``chosen`` and ``rejected`` (other keys are kept but ignored).

    A malformed file line raises :class:`ensrm.errors.InputFileError` with its line number.

    >>> load_preferences([{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])[0]["chosen"]
    'Hello!'
    """
    if isinstance(prefs, (str, os.PathLike)):
        records = list(read_records(prefs, fields=FIELDS))
        source = str(prefs)
    else:
        records = list(prefs)
        source = "the preference list"
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise InputError(f"preference {i} must be a dict with {FIELDS}, found {type(record).__name__}")
            for name in FIELDS:
                if not isinstance(record.get(name), str):
                    found = type(record[name]).__name__ if name in record else "nothing"
                    raise InputError(f"preference {i}: field {name!r} must be a string, found {found}")
    if not records:
        raise InputError(f"{source} has no preference pairs")
    return records


class Split(NamedTuple):
    train: list[dict]
    eval: list[dict]


def split_pairs(records: list[dict], eval_fraction: float, seed: int) -> Split:
    """Shuffle with ``seed`` and hold out ``eval_fraction`` of the pairs (at least one if > 0)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if eval_fraction > 0 and len(records) < 2:
        raise ValueError(f"holding out pairs needs at least 2, got {len(records)}; use eval_fraction=0")
    order = np.random.default_rng([seed, 0]).permutation(len(records))
    n_eval = 0 if eval_fraction == 0 else max(1, int(round(len(records) * eval_fraction)))
    n_eval = min(n_eval, len(records) - 1)
    return Split([records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]])


def add_label_noise(records: list[dict], p: float, seed: int) -> list[dict]:
    """Swap chosen and rejected in each pair with probability ``p`` (a fresh list; inputs untouched)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_noise must be a probability in [0, 1], got {p}")
    flips = np.random.default_rng([seed, 1]).random(len(records)) < p
    return [
        {**r, "chosen": r["rejected"], "rejected": r["chosen"]} if flip else r
        for r, flip in zip(records, flips)
    ]


def bootstrap_counts(n: int, heads: int, seed: int, bootstrap: bool) -> np.ndarray:
    """``[n, heads]`` float32 sample weights: how often head k sees pair i in its resample.

    Each head draws its own resample with seed ``(seed, k)``; without bootstrap every weight is 1.
    """
    if not bootstrap:
        return np.ones((n, heads), dtype=np.float32)
    counts = np.empty((n, heads), dtype=np.float32)
    for k in range(heads):
        draws = np.random.default_rng([seed, 2, k]).integers(0, n, size=n)
        counts[:, k] = np.bincount(draws, minlength=n)
    return counts


def fingerprint(records: list[dict]) -> str:
    """sha256 of the pairs' texts, to tell whether a resume state belongs to the same data."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r["prompt"], r["chosen"], r["rejected"]]).encode("utf-8"))
    return digest.hexdigest()
