"""Best-of-n selection: score every candidate response, keep the one the objective ranks first.

Tie rule (deterministic, independent of batch size and thread count): among the candidates
whose objective value equals the maximum exactly (float32 equality), the one with the
**lowest index** wins. A NaN score never wins; if every candidate scores NaN,
:func:`best_of_n` raises :class:`~ensrm.errors.InputError` rather than pick arbitrarily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ensrm.errors import InputError
from ensrm.runtime.scores import Scores, parse_objective


@dataclass(frozen=True)
class BestOfN:
    """The outcome of one best-of-n choice.

    ``index`` is the chosen candidate, ``objective`` the canonical objective name,
    ``values`` the ``[n]`` float32 objective value of every candidate and ``scores`` every
    candidate's full :class:`Scores` (heads and all aggregates), in candidate order.
    """

    index: int
    objective: str
    values: np.ndarray
    scores: Scores

    @property
    def best_value(self) -> float:
        return float(self.values[self.index])

    def __len__(self) -> int:
        return len(self.values)


def argmax_or_none(values: np.ndarray) -> int | None:
    """Lowest index of the largest non-NaN value; ``None`` when there is none.

    >>> argmax_or_none(np.array([1.0, 3.0, np.nan, 3.0], dtype=np.float32))
    1
    """
    values = np.asarray(values, dtype=np.float32)  # [n]
    finite = ~np.isnan(values)
    if not finite.any():
        return None
    best = values[finite].max()
    return int(np.flatnonzero(finite & (values == best))[0])


def choose(scores: Scores, objective: str = "uwo") -> BestOfN:
    """Pick the best of already-computed candidate scores (all candidates of one prompt).

    >>> s = Scores(heads=np.array([[1.0, -1.0], [0.5, 0.4]], dtype=np.float32),
    ...            mean=np.array([0.0, 0.45], dtype=np.float32), std=np.array([1.0, 0.05], dtype=np.float32),
    ...            min=np.array([-1.0, 0.4], dtype=np.float32), uwo=np.array([-0.5, 0.449], dtype=np.float32))
    >>> choose(s, "head:0").index, choose(s, "wco").index
    (0, 1)
    """
    if len(scores) == 0:
        raise InputError("best-of-n needs at least one candidate, got none")
    name = parse_objective(objective, scores.heads.shape[1])
    values = np.asarray(scores.objective(name), dtype=np.float32)  # [n]
    index = argmax_or_none(values)
    if index is None:
        raise InputError(f"all {len(values)} candidates score NaN under objective {name}; nothing to choose")
    return BestOfN(index=index, objective=name, values=values, scores=scores)


def _check_candidates(candidates, where: str) -> list[str]:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise InputError(f"{where} must be a list of response strings, got {type(candidates).__name__}")
    if not candidates:
        raise InputError(f"{where} is empty; best-of-n needs at least one candidate")
    return list(candidates)


def best_of_n(scorer, prompt: str, candidates: Sequence[str], objective: str = "uwo",
              batch_size: int = 32) -> BestOfN:
    """Score ``candidates`` as responses to ``prompt`` and return the best under ``objective``.

    Objectives: ``mean``, ``wco`` (worst case: the minimum over heads), ``uwo``
    (mean - lambda * variance) and ``head:K`` (one member alone, for comparison).

    (Needs a bundle on disk, so not run by the doctests.)

    >>> scorer = ensrm.Scorer("bundles/default")                          # doctest: +SKIP
    >>> result = ensrm.best_of_n(scorer, "How do I boil an egg?",
    ...                          ["Simmer it for 8 minutes.", "Eggs are oval."], objective="wco")  # doctest: +SKIP
    >>> result.index, result.values                                       # doctest: +SKIP
    (0, array([ 0.61, -0.83], dtype=float32))
    """
    return best_of_n_batch(scorer, [prompt], [candidates], objective=objective, batch_size=batch_size)[0]


def best_of_n_batch(scorer, prompts: Sequence[str], candidates_per_prompt: Sequence[Sequence[str]],
                    objective: str = "uwo", batch_size: int = 32) -> list[BestOfN]:
    """Best-of-n for many prompts at once: every (prompt, candidate) pair is flattened into one
    :meth:`Scorer.score_texts` call, so the model runs ``ceil(total_pairs / batch_size)`` times
    (pairs of similar length share a batch), and results are split back per prompt.

    (Not run by the doctests: it needs a bundle on disk.)

    >>> results = best_of_n_batch(scorer, ["Q1", "Q2"], [["a", "b"], ["c", "d", "e"]])  # doctest: +SKIP
    >>> [r.index for r in results]                                                      # doctest: +SKIP
    [1, 0]
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InputError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if isinstance(candidates_per_prompt, str) or not isinstance(candidates_per_prompt, Sequence):
        raise InputError("candidates_per_prompt must be a list with one list of candidates per prompt, "
                         f"got {type(candidates_per_prompt).__name__}")
    if len(prompts) != len(candidates_per_prompt):
        raise InputError(f"got {len(prompts)} prompts but {len(candidates_per_prompt)} candidate lists; "
                         "they must pair up")
    name = parse_objective(objective, scorer.num_heads)  # fail before any scoring
    flat_prompts: list[str] = []
    flat_responses: list[str] = []
    bounds = [0]
    for i, (prompt, candidates) in enumerate(zip(prompts, candidates_per_prompt)):
        candidates = _check_candidates(candidates, f"candidates_per_prompt[{i}]")
        flat_prompts.extend([prompt] * len(candidates))
        flat_responses.extend(candidates)
        bounds.append(len(flat_responses))
    scores = scorer.score_texts(flat_prompts, flat_responses, batch_size=batch_size)  # [total]
    return [choose(scores.take(np.arange(start, stop)), name) for start, stop in zip(bounds[:-1], bounds[1:])]
