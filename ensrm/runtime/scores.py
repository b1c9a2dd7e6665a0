"""The result of scoring: per-head rewards and the ensemble aggregates, as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECTIVES = ("mean", "wco", "uwo")
_ALIASES = {"min": "wco", "worst": "wco"}


def parse_objective(objective: str, num_heads: int) -> str:
    """Canonical objective name: ``mean``, ``wco`` (min), ``uwo`` or ``head:K``.

    >>> parse_objective("min", 8), parse_objective("head:3", 8)
    ('wco', 'head:3')
    """
    if not isinstance(objective, str):
        raise ValueError(f"objective must be a string, got {type(objective).__name__}")
    name = _ALIASES.get(objective.strip().lower(), objective.strip().lower())
    if name in OBJECTIVES:
        return name
    if name.startswith("head:"):
        index = name[5:]
        if index.isdigit() and int(index) < num_heads:
            return f"head:{int(index)}"
        raise ValueError(f"objective {objective!r}: head index must be 0..{num_heads - 1}")
    raise ValueError(f"unknown objective {objective!r}; choose mean, wco (min), uwo or head:K")


@dataclass(frozen=True)
class Scores:
    """Scores of a batch: ``heads`` ``[batch, K]``; ``mean``, ``std``, ``min``, ``uwo`` ``[batch]``.

    >>> s = Scores.empty(2)
    >>> s.heads.shape, len(s)
    ((0, 2), 0)
    """

    heads: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    uwo: np.ndarray

    def __len__(self) -> int:
        return len(self.mean)

    def objective(self, objective: str) -> np.ndarray:
        """The ``[batch]`` score a given objective ranks by."""
        name = parse_objective(objective, self.heads.shape[1])
        if name == "mean":
            return self.mean
        if name == "wco":
            return self.min
        if name == "uwo":
            return self.uwo
        return self.heads[:, int(name[5:])]

    @classmethod
    def empty(cls, num_heads: int) -> Scores:
        none = np.zeros((0,), dtype=np.float32)
        return cls(np.zeros((0, num_heads), dtype=np.float32), none, none.copy(), none.copy(), none.copy())

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> Scores:
        return cls(heads=outputs["heads"], mean=outputs["ens_mean"], std=outputs["ens_std"],
                   min=outputs["ens_min"], uwo=outputs["ens_uwo"])

    @classmethod
    def concatenate(cls, parts: list[Scores], num_heads: int) -> Scores:
        if not parts:
            return cls.empty(num_heads)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("heads", "mean", "std", "min", "uwo")))

    def take(self, index: np.ndarray) -> Scores:
        """Rows in the order of ``index``."""
        return Scores(self.heads[index], self.mean[index], self.std[index], self.min[index], self.uwo[index])

    def row(self, i: int) -> dict:
        """One row as plain Python numbers (for JSON output)."""
        return {"heads": [float(x) for x in self.heads[i]], "mean": float(self.mean[i]),
                "std": float(self.std[i]), "min": float(self.min[i]), "uwo": float(self.uwo[i])}
