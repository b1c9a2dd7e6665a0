"""Evaluate a bundle on preference pairs: accuracy, uncertainty quality, head diversity, a filter threshold.

``ensrm eval BUNDLE PAIRS.jsonl`` is :func:`~ensrm.evaluate.run.evaluate_file`. The parts:

- :mod:`~ensrm.evaluate.pairs` reads ``{"prompt", "chosen", "rejected"[, "subset"]}`` records
  (strings or TRL conversational message lists);
- :mod:`~ensrm.evaluate.stats` defines every statistic (ties, bootstrap intervals, AUROC,
  the selective-prediction curve and its area);
- :mod:`~ensrm.evaluate.analysis` computes one run's numbers and the deltas between runs;
- :mod:`~ensrm.evaluate.threshold` chooses a :class:`~ensrm.runtime.filter.ResponseFilter`'s
  ``max_std`` from the selective curve;
- :mod:`~ensrm.evaluate.report` writes JSON, Markdown and PNG plots (matplotlib: ``ensrm[eval]``);
- :mod:`~ensrm.evaluate.checkpoint` scores the source model in torch (``ensrm[export]``).

Nothing here imports torch unless a checkpoint is scored. (The example needs a bundle and a pairs
file: not run by the doctests.)

>>> from ensrm.evaluate import evaluate_file                                       # doctest: +SKIP
>>> from ensrm.runtime.config import ScorerConfig                                 # doctest: +SKIP
>>> report = evaluate_file(ScorerConfig("bundles/default"), "pairs.jsonl", "artifacts/eval")  # doctest: +SKIP
"""

from ensrm.evaluate.pairs import PreferencePairs, read_pairs
from ensrm.evaluate.run import evaluate_file, evaluate_pairs

__all__ = ["PreferencePairs", "read_pairs", "evaluate_file", "evaluate_pairs"]
