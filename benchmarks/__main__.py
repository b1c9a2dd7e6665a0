"""``python -m benchmarks``: ``ensrm bench``'s suites plus the project's targets and experiment suites.

``make bench`` runs it. Writes what ``ensrm bench`` writes, with the targets table (pass/fail) in
``bench.md`` and ``targets`` in ``bench.json``; with the ``trunk`` suite also ``trunk.png``.

    python -m benchmarks -o artifacts/bench                      # every default suite, ~20-27 min here
    python -m benchmarks --suite trunk -o benchmarks/results/trunk
    python -m benchmarks --suite decoder --layers 2 -o artifacts/decoder   # Qwen2-0.5B shape, 2 of 24 layers
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from benchmarks.decoder import DecoderBench, DecoderConfig, decoder_markdown
from benchmarks.targets import evaluate_targets, targets_markdown
from benchmarks.trunk import TrunkBench, TrunkConfig, plot_trunk, trunk_markdown
from ensrm.bench import markdown, measure, write_outputs
from ensrm.errors import EnsrmError


@dataclass
class ProjectConfig(TrunkConfig, DecoderConfig):
    """:class:`ensrm.bench.BenchConfig` with every experiment suite's settings."""


class ProjectBench(TrunkBench, DecoderBench):
    """``ensrm bench``'s suites plus the project's experiment suites (``trunk``, ``decoder``)."""

    SUITES = TrunkBench.SUITES + ("decoder",)
    BUNDLE_FREE_SUITES = TrunkBench.BUNDLE_FREE_SUITES + DecoderBench.BUNDLE_FREE_SUITES


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(output: str | Path, bundle: str | Path | None = None, checkpoint: str | Path | None = None, *,
        quick: bool = False, suites: Sequence[str] | None = None, config: TrunkConfig | None = None,
        progress: Callable[[str], None] | None = _stderr, **options) -> dict[str, Path]:
    """Measure (:func:`ensrm.bench.measure` with :class:`ProjectBench`), judge the targets, write the files;
    ``options`` are :func:`~ensrm.bench.measure`'s (``cache_dir``, ``threads``, ``command``).

    Returns the paths written (``json``, ``markdown``, and ``png`` and/or ``trunk_png``).
    """
    config = config or (ProjectConfig.quick() if quick else ProjectConfig())
    suites = tuple(suites) if suites else None
    report = measure(bundle, checkpoint, suites=suites, config=config, progress=progress, bench=ProjectBench,
                     **options)
    report["targets"] = evaluate_targets(report)
    trunk, decoder = report["results"].get("trunk"), report["results"].get("decoder")
    text = markdown(report, before=targets_markdown(report), after=trunk_markdown(trunk) + decoder_markdown(decoder))
    # the experiment suites alone have nothing for bench.png to plot (it plots the compare suite)
    paths = write_outputs(report, output, text=text, png=not (trunk or decoder) or "compare" in report["results"])
    if trunk:
        paths["trunk_png"] = Path(output) / "trunk.png"
        plot_trunk(report, paths["trunk_png"])
    return paths


@click.command()
@click.option("-o", "--output", default="artifacts/bench", show_default=True, type=click.Path(file_okay=False))
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), help="As for ensrm bench.")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), help="As for ensrm bench.")
@click.option("--quick", is_flag=True, help="A smaller grid and fewer rounds.")
@click.option("--suite", "suites", multiple=True, type=click.Choice(list(ProjectBench.SUITES)),
              help="Run only these suites (repeatable; default: all but trunk and decoder). trunk: the partially "
                   "shared trunk's time and memory against member layers m = 0, 1, 2, L/2, L (K = 4, linear fit, "
                   "trunk.png; alone it needs no bundle and its checkpoint defaults to MiniLM-L6). decoder: a "
                   "random Qwen2-0.5B-shaped reward model on every accepted runtime x precision against PyTorch "
                   "eager at batch 1 and 8 x 512 tokens, and K = 1 vs K = 8 heads (builds its own models).")
@click.option("--layers", type=click.IntRange(min=1), help="decoder suite: layers of the Qwen2-0.5B shape "
              "(default: its 24; fewer for a quick run at full width and vocabulary).")
@click.option("--force-bf16", is_flag=True, help="decoder suite: build and time OpenVINO's bf16 even on a CPU "
              "without bf16 instructions (emulated there, ~20x slower than fp32).")
@click.option("--threads", type=int, help="Intra-op threads for onnxruntime and torch (default: all cores).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), help="As for ensrm bench.")
def main(output, bundle, checkpoint, quick, suites, layers, force_bf16, threads, cache_dir):
    """ensrm bench's suites plus the project's targets (pass/fail) and its experiment suites."""
    given = {"--output": output, "--bundle": bundle, "--checkpoint": checkpoint, "--layers": layers,
             "--threads": threads, "--cache": cache_dir}
    command = " ".join(["python -m benchmarks"] + (["--quick"] if quick else []) + [f"--suite {s}" for s in suites]
                       + (["--force-bf16"] if force_bf16 else [])
                       + [f"{k} {v}" for k, v in given.items() if v is not None])
    fields = {"decoder_layers": layers, "decoder_force_bf16": force_bf16}
    config = ProjectConfig.quick(**fields) if quick else ProjectConfig(**fields)
    try:
        paths = run(output, bundle, checkpoint, quick=quick, suites=suites, threads=threads, cache_dir=cache_dir,
                    command=command, config=config)
    except EnsrmError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(paths["markdown"].read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(str(paths[k]) for k in ("json", "png", "trunk_png", "markdown") if k in paths))


if __name__ == "__main__":
    main()
