"""The project's own benchmarks: pass/fail targets and experiment suites, outside the wheel.

``ensrm bench`` (in the package) measures a user's bundle on their machine. This package builds on
its public API (``ensrm.bench.__all__``, ``ensrm``'s top level, :mod:`ensrm.models`) only and adds:

- :mod:`benchmarks.targets`: the project's targets (throughput against PyTorch eager, the K sweep,
  full ensembles, ...) with pass/fail, as a table in ``bench.md``;
- :mod:`benchmarks.trunk`: the ``trunk`` experiment suite (the partially shared trunk's cost against
  its member layers m, stacked weights against K copies), with :mod:`benchmarks.worker` for its job;
- :mod:`benchmarks.decoder`: the ``decoder`` experiment suite (a random Qwen2-0.5B-shaped reward model on
  every accepted runtime x precision against PyTorch eager, K = 1 vs K = 8 heads on the same trunk;
  it builds its fixture with ``tests/models.py``, so it runs from a clone of the repository);
- ``python -m benchmarks`` (``make bench``): ``ensrm bench``'s suites plus these, one report.

Run from the repository root (``benchmarks`` is not installed): ``python -m benchmarks --help``.
``NOTES.md`` records what was measured and ``results/`` the files of past runs.
"""
