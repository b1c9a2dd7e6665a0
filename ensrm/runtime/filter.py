"""Production response filtering: accept or reject each (prompt, response) with the reason and the numbers.

Two checks, each enabled by its threshold:

- ``min_score``: reject when the objective's score is **below** it (a score equal to the
  threshold passes). Reason ``"score_too_low"``.
- ``max_std``: reject when the ensemble's std over heads is **above** it (the members
  disagree; the response lies where the reward model is unsure). Reason ``"members_disagree"``.

Both failing gives ``"score_too_low+members_disagree"``; passing every enabled check gives
``"ok"``. A NaN score or std fails its check. Thresholds are in the bundle's (normalised) head
units, so a filter is tied to the bundle it was fitted on: :meth:`ResponseFilter.save` records
the bundle's identity and :meth:`ResponseFilter.load` refuses a bundle whose scores differ.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ensrm.errors import BundleError, InputError
from ensrm.jsonl import write_atomically
from ensrm.runtime.scores import Scores, parse_objective

OK = "ok"
SCORE_TOO_LOW = "score_too_low"
MEMBERS_DISAGREE = "members_disagree"
BOTH = f"{SCORE_TOO_LOW}+{MEMBERS_DISAGREE}"
REASONS = (OK, SCORE_TOO_LOW, MEMBERS_DISAGREE, BOTH)

FILTER_FORMAT = "ensrm-filter"
FILTER_VERSION = 1


@dataclass(frozen=True)
class Decision:
    """One filter decision: ``accept``, ``reason`` (one of :data:`REASONS`) and the numbers behind it.

    ``score`` is the objective's value, ``std`` the ensemble's std over heads; ``min_score``
    and ``max_std`` are the thresholds applied (``None``: that check is off).
    """

    accept: bool
    reason: str
    score: float
    std: float
    objective: str
    min_score: float | None
    max_std: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _finite_or_none(name: str, value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value}")
    return value


def bundle_identity(spec) -> dict:
    """What makes two bundles give the same scores: the source weights, head count, lambda, normalisation."""
    norm = spec.normalization
    return {"source_fingerprint": spec.source_fingerprint, "num_heads": spec.num_heads,
            "uwo_lambda": float(spec.uwo_lambda),
            "normalization": {"mu": [float(x) for x in norm.mu], "sigma": [float(x) for x in norm.sigma]}}


class ResponseFilter:
    """Accept or reject responses by conservative score and ensemble disagreement.

    (Needs a bundle on disk, so not run by the doctests.)

    >>> scorer = ensrm.Scorer("bundles/default")                                  # doctest: +SKIP
    >>> flt = ensrm.ResponseFilter(scorer, objective="wco", min_score=-1.0, max_std=0.8)  # doctest: +SKIP
    >>> [d.reason for d in flt.decide(["How do I boil an egg?"] * 2,
    ...                               ["Simmer it for 8 minutes.", "lol no"])]    # doctest: +SKIP
    ['ok', 'score_too_low']
    """

    def __init__(self, scorer, objective: str = "wco", min_score: float | None = None,
                 max_std: float | None = None, fitted: dict | None = None):
        self.scorer = scorer
        self.objective = parse_objective(objective, scorer.num_heads)
        self.min_score = _finite_or_none("min_score", min_score)
        self.max_std = _finite_or_none("max_std", max_std)
        if self.max_std is not None and self.max_std < 0:
            raise ValueError(f"max_std must be >= 0, got {self.max_std}")
        #: how the thresholds were fitted (records, fractions), or None when given directly
        self.fitted = fitted

    def __repr__(self) -> str:
        return (f"ResponseFilter(objective={self.objective!r}, min_score={self.min_score}, "
                f"max_std={self.max_std})")

    # -- deciding --------------------------------------------------------------------------

    def decide(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[Decision]:
        """Score the pairs and decide each; results come back in input order."""
        return self.decide_scores(self.scorer.score_texts(prompts, responses, batch_size=batch_size))

    def decide_scores(self, scores: Scores) -> list[Decision]:
        """Decide from scores already computed by this filter's bundle."""
        values = scores.objective(self.objective)  # [batch]
        stds = scores.std  # [batch]
        decisions = []
        for score, std in zip(values.tolist(), stds.tolist()):
            # `not (x >= t)` rather than `x < t` so that NaN fails the check
            low = self.min_score is not None and not (score >= self.min_score)
            spread = self.max_std is not None and not (std <= self.max_std)
            reason = BOTH if low and spread else SCORE_TOO_LOW if low else MEMBERS_DISAGREE if spread else OK
            decisions.append(Decision(accept=reason == OK, reason=reason, score=score, std=std,
                                      objective=self.objective, min_score=self.min_score, max_std=self.max_std))
        return decisions

    # -- fitting ---------------------------------------------------------------------------

    @classmethod
    def fit(cls, scorer, prompts: Sequence[str], responses: Sequence[str], objective: str = "wco",
            reject_low_fraction: float | None = 0.10, reject_disagree_fraction: float | None = 0.05,
            batch_size: int = 32) -> ResponseFilter:
        """Thresholds from a reference distribution (responses you would normally accept).

        ``min_score`` is the ``reject_low_fraction`` quantile of the reference scores and
        ``max_std`` the ``1 - reject_disagree_fraction`` quantile of their std, so on the
        reference data about those fractions are rejected by each check (linear
        interpolation between order statistics; use hundreds of records or more).
        ``None`` or ``0`` turns a check off.

        (Not run by the doctests: it needs a bundle and reference texts.)

        >>> flt = ResponseFilter.fit(scorer, ref_prompts, ref_responses)      # doctest: +SKIP
        >>> flt.save("bundles/default-filter.json")                           # doctest: +SKIP
        """
        for name, value in (("reject_low_fraction", reject_low_fraction),
                            ("reject_disagree_fraction", reject_disagree_fraction)):
            if value is not None and not (0.0 <= value < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        name = parse_objective(objective, scorer.num_heads)
        scores = scorer.score_texts(prompts, responses, batch_size=batch_size)
        if len(scores) < 2:
            raise InputError(f"fitting thresholds needs at least 2 reference records, got {len(scores)}")
        values = scores.objective(name).astype(np.float64)  # [n]
        stds = scores.std.astype(np.float64)  # [n]
        if not (np.isfinite(values).all() and np.isfinite(stds).all()):
            raise InputError("some reference records score NaN or inf; cannot fit thresholds on them")
        min_score = float(np.quantile(values, reject_low_fraction)) if reject_low_fraction else None
        max_std = float(np.quantile(stds, 1.0 - reject_disagree_fraction)) if reject_disagree_fraction else None
        fitted = {"records": len(scores), "reject_low_fraction": reject_low_fraction,
                  "reject_disagree_fraction": reject_disagree_fraction}
        return cls(scorer, objective=name, min_score=min_score, max_std=max_std, fitted=fitted)

    # -- saving ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": FILTER_FORMAT, "version": FILTER_VERSION, "objective": self.objective,
                "min_score": self.min_score, "max_std": self.max_std, "fitted": self.fitted,
                "bundle": {**bundle_identity(self.scorer.spec), "precision": self.scorer.precision}}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the filter as a small JSON file (via a temporary file, so never half-written).

        Floats are written with ``repr`` precision, so thresholds load back bit-for-bit.
        """
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike, scorer, strict: bool = True) -> ResponseFilter:
        """Read a filter saved by :meth:`save` and attach it to ``scorer``.

        The thresholds only mean something for the scores they were fitted on, so the file's
        bundle identity (source fingerprint, number of heads, lambda, normalisation) must match
        the scorer's bundle: a mismatch raises :class:`BundleError`, or with ``strict=False``
        warns and loads anyway. A different precision (e.g. fitted on fp32, used with int8)
        only warns: accepted variants are gated on ranking agreement with fp32.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no such filter file: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not a filter file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FILTER_FORMAT:
            raise InputError(f"{path} is not an ensrm filter file (expected \"format\": \"{FILTER_FORMAT}\")")
        if data.get("version") != FILTER_VERSION:
            raise InputError(f"{path} has filter format version {data.get('version')!r}; "
                             f"this ensrm reads version {FILTER_VERSION}")
        for key in ("objective", "min_score", "max_std", "bundle"):
            if key not in data:
                raise InputError(f"{path} lacks the field {key!r}")
        saved = data["bundle"] if isinstance(data["bundle"], dict) else {}
        current = bundle_identity(scorer.spec)
        differs = [key for key in current if saved.get(key) != current[key]]
        if differs:
            message = (f"filter {path} was fitted on a different bundle than {scorer.bundle_dir} "
                       f"({', '.join(differs)} differ); its thresholds do not apply to these scores")
            if strict:
                raise BundleError(message + "; refit it, or pass strict=False to use it anyway")
            warnings.warn(message, stacklevel=2)
        if saved.get("precision") not in (None, scorer.precision):
            warnings.warn(f"filter {path} was fitted with {saved['precision']} scores and is used with "
                          f"{scorer.precision}; decisions near the thresholds may flip", stacklevel=2)
        try:
            return cls(scorer, objective=data["objective"], min_score=data["min_score"],
                       max_std=data["max_std"], fitted=data.get("fitted"))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: {exc}") from None
