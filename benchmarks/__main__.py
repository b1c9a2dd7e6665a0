"""``python -m benchmarks``: ``ensrm bench``'s suites plus the project's targets and experiment suites.

``make bench`` runs it. Writes what ``ensrm bench`` writes, with the targets table (pass/fail) in
``bench.md`` and ``targets`` in ``bench.json``; with the ``trunk`` suite also ``trunk.png``.

    python -m benchmarks -o artifacts/bench                      # every default suite, ~20-27 min here
    python -m benchmarks --suite trunk -o benchmarks/results/trunk
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from benchmarks.targets import evaluate_targets, targets_markdown
from benchmarks.trunk import TrunkBench, TrunkConfig, plot_trunk, trunk_markdown
from ensrm.bench import markdown, measure, write_outputs
from ensrm.errors import EnsrmError


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(output: str | Path, bundle: str | Path | None = None, checkpoint: str | Path | None = None, *,
        quick: bool = False, suites: Sequence[str] | None = None, config: TrunkConfig | None = None,
        progress: Callable[[str], None] | None = _stderr, **options) -> dict[str, Path]:
    """Measure (:func:`ensrm.bench.measure` with :class:`~benchmarks.trunk.TrunkBench`), judge the targets,
    write the files; ``options`` are :func:`~ensrm.bench.measure`'s (``cache_dir``, ``threads``, ``command``).

    Returns the paths written (``json``, ``markdown``, and ``png`` and/or ``trunk_png``).
    """
    config = config or (TrunkConfig.quick() if quick else TrunkConfig())
    suites = tuple(suites) if suites else None
    report = measure(bundle, checkpoint, suites=suites, config=config, progress=progress, bench=TrunkBench,
                     **options)
    report["targets"] = evaluate_targets(report)
    trunk = report["results"].get("trunk")
    text = markdown(report, before=targets_markdown(report), after=trunk_markdown(trunk))
    # the trunk suite alone has nothing for bench.png to plot (it plots the compare suite)
    paths = write_outputs(report, output, text=text, png=not trunk or "compare" in report["results"])
    if trunk:
        paths["trunk_png"] = Path(output) / "trunk.png"
        plot_trunk(report, paths["trunk_png"])
    return paths


@click.command()
@click.option("-o", "--output", default="artifacts/bench", show_default=True, type=click.Path(file_okay=False))
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), help="As for ensrm bench.")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), help="As for ensrm bench.")
@click.option("--quick", is_flag=True, help="A smaller grid and fewer rounds.")
@click.option("--suite", "suites", multiple=True, type=click.Choice(list(TrunkBench.SUITES)),
              help="Run only these suites (repeatable; default: all but trunk). trunk: the partially shared "
                   "trunk's time and memory against member layers m = 0, 1, 2, L/2, L (K = 4, linear fit, "
                   "trunk.png; alone it needs no bundle and its checkpoint defaults to MiniLM-L6).")
@click.option("--threads", type=int, help="Intra-op threads for onnxruntime and torch (default: all cores).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), help="As for ensrm bench.")
def main(output, bundle, checkpoint, quick, suites, threads, cache_dir):
    """ensrm bench's suites plus the project's targets (pass/fail) and its trunk experiment."""
    given = {"--output": output, "--bundle": bundle, "--checkpoint": checkpoint, "--threads": threads,
             "--cache": cache_dir}
    command = " ".join(["python -m benchmarks"] + (["--quick"] if quick else []) + [f"--suite {s}" for s in suites]
                       + [f"{k} {v}" for k, v in given.items() if v is not None])
    try:
        paths = run(output, bundle, checkpoint, quick=quick, suites=suites, threads=threads, cache_dir=cache_dir,
                    command=command)
    except EnsrmError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(paths["markdown"].read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(str(paths[k]) for k in ("json", "png", "trunk_png", "markdown") if k in paths))


if __name__ == "__main__":
    main()
