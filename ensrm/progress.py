"""The progress callables ensrm reports to, defined once for every module that reports.

- :data:`Progress` — one human-readable line per step (export, calibration, variants, builds):
  ``progress("[2/5] exported model.onnx (3.1s)")``.
- :data:`JobProgress` — a scoring job's counts (``ensrm score``, local or on Ray):
  ``progress(records_scored, records_rejected, seconds_elapsed)``, called after every chunk.
- :data:`CountProgress` — pairs scored so far of a known total (``Scorer.score_texts``):
  ``progress(done, total)``.
- :data:`StageProgress` — a named stage and its count (``ensrm eval``): ``progress(stage, done, total)``,
  ``total`` 0 when there is no count.

>>> messages = []
>>> report: Progress = messages.append
>>> report("done"); messages
['done']
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]
JobProgress = Callable[[int, int, float], None]
CountProgress = Callable[[int, int], None]
StageProgress = Callable[[str, int, int], None]
