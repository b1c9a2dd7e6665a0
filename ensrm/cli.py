"""The command line: a thin click layer over the public functions.

``ens-export`` is the export alone; ``ensrm`` groups every command (``ensrm export`` is the
same command as ``ens-export``). Errors print one line; the exit status says whose they are:

- **1**: the work failed (bad input, a damaged bundle, a full disk, a failed Ray job): every
  :class:`~ensrm.errors.EnsrmError`, ``FileNotFoundError`` and ``ValueError`` a command raises.
- **2**: a usage error, refused before any work: click's own (an unknown option, a bad value)
  and options the library refuses up front (:func:`_usage`, e.g. ``--rejects`` without ``--skip-bad``).

The mapping is by exception type (see :func:`_one_line_errors`), never by message text.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys

import click

from ensrm.calibration.openvino_weights import GROUP_SIZE, MODES  # stdlib only until it compresses
from ensrm.errors import EnsrmError
from ensrm.spec import INT8_MODES

WEIGHT_MODES = MODES["int8"] + MODES["int4"]

# Library messages name parameters in backticks (`uwo_lambda`, `padding_side='right'`); a command
# shows them as its own options. Library names that differ from the command's parameter names:
_ALIASES = {"rejects_path": "rejects", "out_dir": "output"}
_PARAMETER = re.compile(r"`([A-Za-z_]\w*)(?:=([^`]*))?`")


def _as_flags(message: str) -> str:
    """``"`max_length` must be ..."`` -> ``"--max-length must be ..."`` for the running command."""
    context = click.get_current_context(silent=True)
    options = {} if context is None else {
        p.name: max(p.opts, key=len) for p in context.command.params if isinstance(p, click.Option)}

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        option = options.get(_ALIASES.get(name, name))
        if option is None:
            return match.group(0).strip("`")
        return option if value in (None, "", "True") else option + " " + value.strip("'\"")

    return _PARAMETER.sub(flag, message)


def _one_line_errors(func):
    """Turn the errors users cause (bad files, bad options, missing extras) into one line."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (EnsrmError, FileNotFoundError, ValueError) as exc:
            raise click.ClickException(_as_flags(str(exc))) from None

    return wrapper


@contextlib.contextmanager
def _usage():
    """Options the library refuses before any work are a usage error (exit status 2)."""
    try:
        yield
    except (EnsrmError, ValueError) as exc:
        raise click.UsageError(_as_flags(str(exc))) from None


def _scorer_config(bundle, *, backend, precision, providers, threads, batch_size, fused, hint, **fixed):
    from ensrm.runtime.config import ScorerConfig

    fixed.setdefault("hint", hint)
    return ScorerConfig(bundle, backend=backend, precision=precision, providers=providers or None, threads=threads,
                        batch_size=batch_size, fused=fused, **fixed)


def scoring_options(func):
    """The options of every command that scores, declared once; the command gets ``scoring``.

    ``scoring(bundle, **fixed)`` is the :class:`~ensrm.runtime.config.ScorerConfig` the user
    asked for (``fixed``: settings the command decides itself, e.g. ``spinning=False``).
    """
    from ensrm.runtime.config import BACKENDS, HINTS, PRECISIONS

    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                     help="Runtime: auto (OpenVINO on the CPU when installed, else onnxruntime; onnxruntime with "
                          "--provider), onnxruntime, openvino, or tensorrt (an engine from ensrm build-engine)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="Which of the bundle's accepted precisions to run (auto: the one ensrm tune chose here)."),
        click.option("--provider", "providers", multiple=True,
                     help="onnxruntime execution provider (cpu, cuda, tensorrt); repeat for a fallback order."),
        click.option("--threads", type=click.IntRange(min=1),
                     help="Intra-op threads (default: the runtime's choice, one per core)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Pairs per model call."),
        click.option("--fused/--no-fused", default=True, show_default=True,
                     help="Let onnxruntime on the CPU run the bundle's fused graph (model.cpu.onnx)."),
        click.option("--hint", type=click.Choice(HINTS), default="latency", show_default=True,
                     help="OpenVINO's performance hint: latency (one stream) or throughput (streams for "
                          "concurrent requests, e.g. a server)."),
    ]
    names = ("backend", "precision", "providers", "threads", "batch_size", "fused", "hint")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        chosen = {name: kwargs.pop(name) for name in names}
        return func(*args, scoring=functools.partial(_scorer_config, **chosen), **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@click.command("export")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to create.")
@click.option("--heads", type=click.Path(exists=True, dir_okay=False),
              help="heads.safetensors (weight [K, hidden], bias [K]) for a base-model SOURCE.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False),
              help="Directory to take the tokenizer from, for a SOURCE saved without one (e.g. its base model).")
@click.option("--pooling", type=click.Choice(["cls", "mean", "last"]),
              help="Pooling for a base model with --heads (default: cls for encoders, last for decoders).")
@click.option("--lambda", "uwo_lambda", type=float, default=0.5, show_default=True,
              help="Variance penalty of the uncertainty-weighted objective: mean - lambda * var.")
@click.option("--max-length", type=int, help="Longest sequence the bundle accepts (default: the model's).")
@click.option("--padding-side", type=click.Choice(["right", "left"]),
              help="Padding the runtime uses (default: right for encoders, left for decoders).")
@click.option("--tolerance", type=float,
              help="Largest |ONNX - torch| accepted by the verification (default: a share of the largest head, "
                   "at least 1: 1e-4 for fp32, 2% for fp16, 6% for bf16).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="What the model is loaded in and model.onnx holds: fp16 weights and products, or bf16 weights "
                   "with fp32 products; heads, normalisation and aggregates stay fp32.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --output.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code shipped with the checkpoint to run.")
@click.option("--normalize-on", type=click.Path(exists=True, dir_okay=False),
              help="JSONL reference records (prompt, response): normalise each head to mean 0, std 1 on them.")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help="Comma-separated precisions to write: fp32 (always), fp16, bf16, int8, int4 (OpenVINO IR of "
                   "int4 weights). Each variant is gated on ranking agreement with fp32 and written only if it passes.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
              help="JSONL records to calibrate INT8 on (a quarter is held out for the gate unless --eval-on).")
@click.option("--eval-on", type=click.Path(exists=True, dir_okay=False),
              help="JSONL records the precision gates compare on.")
@click.option("--int8-mode", type=click.Choice(INT8_MODES), default="static", show_default=True,
              help="static: explicit Q/DQ, symmetric, calibrated (TensorRT can build it); "
                   "per-token: one activation scale per token computed in the graph, FFN-out and the last "
                   "layer in float, calibrated (onnxruntime CPU only; passes the gate where static does not); "
                   "dynamic: per-batch activation scales, onnxruntime CPU only; "
                   "openvino: NNCF's quantizer, an OpenVINO IR; openvino-weights: NNCF's int8 weight "
                   "compression (data-free), an OpenVINO IR.")
@click.option("--min-spearman", type=float, help="Override the gates' Spearman threshold (fp16 0.999, int8 0.99).")
@click.option("--min-top1", type=float, help="Override the INT8 gate's best-of-n top-1 agreement threshold (0.95).")
@click.option("--tensorrt", "tensorrt_batches", default=None,
              help="Also build TensorRT engines for the written variants, for these batch sizes "
                   "(e.g. 1,8,32); needs a GPU and the tensorrt package.")
@click.option("--cpu-graph/--no-cpu-graph", default=True, show_default=True,
              help="Also write model.cpu.onnx, onnxruntime's fused CPU form of the graph (verified against "
                   "model.onnx; the Scorer runs it on the CPU provider).")
@_one_line_errors
def export_command(sources, output, overwrite, min_spearman, min_top1, tensorrt_batches, **settings):
    """Export a reward model into a bundle: one ONNX graph with the ensemble aggregates.

    SOURCE is a local Hugging Face *ForSequenceClassification checkpoint with K labels
    (K heads), or a base model with --heads, or several single-head classifiers that make
    a full ensemble (one graph running every member). Nothing is downloaded.

    \b
    Examples:
      ens-export checkpoints/rm -o bundles/rm
      ens-export checkpoints/minilm --heads heads.safetensors --pooling mean -o bundles/rm
      ens-export members/rm0 members/rm1 members/rm2 members/rm3 -o bundles/full4
      ens-export checkpoints/rm -o bundles/rm --normalize-on refs.jsonl \\
          --precision fp16,int8 --calibration calib.jsonl

    The graph is checked against the torch model before the bundle appears; if it differs
    by more than --tolerance nothing is written.
    """
    from ensrm.calibration.gate import gates_with
    from ensrm.export.exporter import export_bundle
    from ensrm.export.settings import ExportSettings

    # the options not named above are ExportSettings fields, by the same names
    export = ExportSettings(**settings, gates=gates_with(min_spearman, min_top1),
                            tensorrt_batches=_parse_batches(tensorrt_batches) if tensorrt_batches else None)
    spec = export_bundle(list(sources), output, export, overwrite=overwrite, progress=_echo_err)
    click.echo(f"bundle {output}: {spec.describe()}")


# -- calibration and precision (issue 3) --------------------------------------------------------


def _parse_batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def _echo_err(message: str) -> None:
    click.echo(_as_flags(message), err=True)


@click.command("calibrate")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("references", type=click.Path(exists=True, dir_okay=False))
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@_one_line_errors
def calibrate_command(bundle, references, threads):
    """Normalise each head of BUNDLE to mean 0, std 1 on REFERENCES (JSONL prompt/response).

    Rewrites the constants in every graph of the bundle, re-runs the precision gates on the
    references, and replaces the bundle atomically.

    \b
    Example:
      ensrm calibrate bundles/rm refs.jsonl
    """
    from ensrm.calibration.normalize import calibrate_bundle

    spec = calibrate_bundle(bundle, references, threads=threads, progress=_echo_err)
    norm = spec.normalization
    click.echo(f"bundle {bundle}: {spec.num_heads} heads normalised on {norm.records} records")


@click.command("quantize")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", "precisions", required=True,
              help="fp16, bf16 (OpenVINO's bf16 hint, judged on this CPU), int8, int4 (OpenVINO IR of int4 "
                   "weights), comma-separated.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), help="JSONL records for INT8.")
@click.option("--eval-on", type=click.Path(exists=True, dir_okay=False), help="JSONL records for the gates.")
@click.option("--int8-mode", type=click.Choice(INT8_MODES), default="static", show_default=True,
              help="static (TensorRT can build it), per-token or dynamic (onnxruntime CPU), openvino or "
                   "openvino-weights (OpenVINO IR); see ens-export --help.")
@click.option("--weights-mode", type=click.Choice(WEIGHT_MODES),
              help="NNCF weight compression mode of the precision it makes (default int8_asym for int8, "
                   "int4_sym for int4).")
@click.option("--group-size", type=click.IntRange(min=1), default=GROUP_SIZE, show_default=True,
              help="int4: input channels sharing one scale (smaller for layers it does not divide).")
@click.option("--ratio", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="int4: share of the compressible weights in int4; NNCF keeps the rest in int8.")
@click.option("--keep-float", default="",
              help="Weight compression: also keep these products float, comma-separated: down (FFN-out), "
                   "last (the last layer). The heads and the ensemble's tail always are.")
@click.option("--dynamic-group-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Weight compression: OpenVINO quantizes the activations of compressed products at run "
                   "time in groups of this many channels (0: off); judged and run with it.")
@click.option("--smoothing", type=click.FloatRange(0, 1),
              help="Weight compression: SmoothQuant strength applied to the products it compresses (needs "
                   "--calibration); with --dynamic-group-size, activation outliers move into the weights.")
@click.option("--min-spearman", type=float, help="Override the gates' Spearman threshold.")
@click.option("--min-top1", type=float, help="Override the INT8 / INT4 gates' top-1 agreement threshold.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@_one_line_errors
def quantize_command(bundle, precisions, calibration, eval_on, int8_mode, weights_mode, group_size, ratio, keep_float,
                     dynamic_group_size, smoothing, min_spearman, min_top1, threads):
    """Add gated fp16 / bf16 / INT8 / INT4 variants to an existing BUNDLE.

    \b
    Examples:
      ensrm quantize bundles/rm --precision int8 --calibration calib.jsonl
      ensrm quantize bundles/rm --precision bf16
      ensrm quantize bundles/rm --precision int8,int4 --int8-mode openvino-weights --eval-on eval.jsonl
    """
    from ensrm.calibration.gate import gates_with
    from ensrm.calibration.openvino_weights import WeightCompression
    from ensrm.calibration.variants import add_variants

    try:
        weights = WeightCompression(mode=weights_mode, group_size=group_size, ratio=ratio,
                                    float_products=tuple(p.strip() for p in keep_float.split(",") if p.strip()),
                                    dynamic_group_size=dynamic_group_size, smoothing=smoothing)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    spec = add_variants(bundle, precisions, calibration=calibration, eval_on=eval_on, int8_mode=int8_mode,
                        gates=gates_with(min_spearman, min_top1), threads=threads, progress=_echo_err,
                        weights=weights)
    for precision, variant in spec.variants.items():
        click.echo(f"{precision}: {'accepted' if variant.accepted else 'rejected'}")


@click.command("build-engine")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True)
@click.option("--batch-sizes", default="1,8,32", show_default=True,
              help="Batch sizes the engine's optimization profile covers (min, ..., max).")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="Persistent timing cache (default: BUNDLE/engines/timing.cache).")
@_one_line_errors
def build_engine_command(bundle, precision, batch_sizes, timing_cache):
    """Build a strongly typed TensorRT engine from BUNDLE's ONNX variant (needs a GPU).

    \b
    Example:
      ensrm build-engine bundles/rm --precision int8 --batch-sizes 1,16,64
    """
    from ensrm.export.tensorrt_engine import build_engine

    engine = build_engine(bundle, precision, batch_sizes=_parse_batches(batch_sizes),
                          timing_cache=timing_cache, progress=_echo_err)
    click.echo(f"engine {engine}")


@click.command("bench")
@click.option("-o", "--output", default="artifacts/bench", show_default=True, type=click.Path(file_okay=False),
              help="Directory for bench.json, bench.md (the results table) and bench.png.")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False),
              help="Bundle to measure, with its fp16/int8 variants when present (default: export the checkpoint).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False),
              help="Classifier checkpoint for PyTorch eager and the comparison models (default: the embedded "
                   "default model).")
@click.option("--quick", is_flag=True, help="A smaller grid and fewer rounds (a first look, a few minutes).")
@click.option("--suite", "suites", multiple=True,
              type=click.Choice(["compare", "grid", "ceiling", "runtime", "latency"]),
              help="Run only these suites (repeatable; default: all). latency: batch 1-8 of real-length "
                   "pairs, p50/p99 per call, 1 thread and all cores.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Where the comparison models are built and kept (default: ~/.cache/ensrm/bench).")
@scoring_options
@_one_line_errors
def bench_command(output, bundle, checkpoint, quick, suites, cache_dir, scoring):
    """Measure the bundle against PyTorch eager, full ensembles, a plain export and the CPU's MatMul rate.

    Every configuration runs in a fresh process, interleaved over rounds; results are
    medians. Writes bench.json, bench.png and bench.md (the results tables). The project's own
    targets (pass/fail) and experiment suites are in the repository: python -m benchmarks.

    \b
    Examples:
      ensrm bench --quick
      ensrm bench --bundle bundles/default -o artifacts/bench
    """
    from ensrm.bench import run_benchmarks

    config = scoring(bundle or ".")  # the bundle rows' scoring options (the bundle may be exported first)
    if (config.precision, config.providers, config.batch_size, config.fused) != ("fp32", None, 32, True):
        raise click.UsageError("ensrm bench measures every accepted precision on the CPU at its own batch sizes; "
                               "of the scoring options it takes --backend and --threads")
    threads = config.threads
    given = {"--output": output, "--bundle": bundle, "--checkpoint": checkpoint, "--threads": threads,
             "--backend": None if config.backend == "auto" else config.backend, "--cache": cache_dir}
    command = " ".join(["ensrm bench"] + (["--quick"] if quick else []) + [f"--suite {s}" for s in suites]
                       + [f"{k} {v}" for k, v in given.items() if v is not None])
    paths = run_benchmarks(output, bundle=bundle, checkpoint=checkpoint, quick=quick, suites=suites or None,
                           threads=threads, cache_dir=cache_dir, command=command, backend=config.backend)
    click.echo(paths["markdown"].read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(str(paths[k]) for k in ("json", "png", "trunk_png", "markdown") if k in paths))


# -- ensrm score -------------------------------------------------------------------------------


class _RateLine:
    """A one-line progress display on stderr: records done and records per second."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.shown = False

    def __call__(self, done: int, rejected: int, seconds: float) -> None:
        if not self.enabled:
            return
        rate = done / seconds if seconds > 0 else 0.0
        extra = f", {rejected:,} rejected" if rejected else ""
        click.echo(f"\r  {done:,} records{extra}, {rate:,.0f} records/s", err=True, nl=False)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            click.echo("", err=True)


@click.command("score")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("input_file", metavar="INPUT.jsonl", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="JSONL file to write (appears only when the whole input is scored); a directory with --ray.")
@click.option("--objective", default="uwo", show_default=True,
              help="Score to report and rank by: mean, wco (min), uwo or head:K.")
@click.option("--best-of-n", is_flag=True,
              help="Mark the best response of each run of consecutive records sharing a prompt.")
@click.option("--filter", "filter_file", type=click.Path(exists=True, dir_okay=False),
              help="A filter JSON (ResponseFilter.save) to add accept/reject decisions with.")
@click.option("--skip-bad", is_flag=True, help="Write malformed records to a rejects file instead of stopping.")
@click.option("--rejects", type=click.Path(dir_okay=False),
              help="Rejects file for --skip-bad (default: OUTPUT with .rejects.jsonl).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Non-blank lines read and scored at a time (one Ray batch with --ray); bounds memory.")
@click.option("--resume", is_flag=True,
              help="Keep a journal beside OUTPUT after every chunk; run the same command again after an "
                   "interruption and it continues from the last completed chunk.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Score on Ray Data (needs ensrm[ray]): a .jsonl INPUT gives the same OUTPUT (and rejects) "
                   "as without --ray; a .parquet INPUT (or a directory of them) a new directory of files.")
@click.option("--ray-address", help="[--ray] Cluster to join: auto, ray://HOST:10001 (default: a local Ray).")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="[--ray] Scoring actors: 1 CPU and 1 intra-op thread each (unless --threads); "
                   "each loads the bundle once.")
@scoring_options
@_one_line_errors
def score_command(bundle, input_file, output, objective, best_of_n, filter_file, skip_bad, rejects, chunk_size,
                  resume, quiet, use_ray, ray_address, concurrency, scoring):
    """Score a JSONL file of {"prompt", "response"} records into OUTPUT.jsonl.

    Every input field is kept; an "ensrm" field is added with the per-head scores, the
    aggregates and the objective's score (plus "best_of_n" and "filter" when asked).
    A malformed line stops the run naming its line number, unless --skip-bad.

    \b
    Examples:
      ensrm score bundles/default candidates.jsonl -o scored.jsonl --best-of-n --objective wco
      ensrm score bundles/default replies.jsonl -o decided.jsonl --filter bundles/default-filter.json --skip-bad
    """
    from ensrm.runtime.batch import check_rejects_option, score_file
    from ensrm.runtime.scorer import Scorer

    with _usage():
        check_rejects_option(skip_bad, rejects)
    config = scoring(bundle)
    job = {"objective": objective, "best_of_n": best_of_n, "response_filter": filter_file,
           "on_bad_row": "skip" if skip_bad else "fail", "rejects_path": rejects, "chunk_size": chunk_size}
    if use_ray:
        if resume:
            raise click.UsageError("--resume goes without --ray (on Ray, a failed actor's batch is retried instead)")
        _score_on_ray(config, input_file, output, job, ray_address, concurrency, quiet)
        return
    if ray_address is not None or concurrency != 1:
        raise click.UsageError("--ray-address and --concurrency go with --ray")
    scorer = Scorer.from_config(config)
    progress = _RateLine(enabled=not quiet)
    try:
        summary = score_file(scorer, input_file, output, batch_size=config.batch_size, progress=progress,
                             resume=resume, **job)
    finally:
        progress.close()
    click.echo(summary.describe())


def _score_on_ray(config, input_file, output, job, ray_address, concurrency, quiet):
    from ensrm.integrations.ray_data import score_files

    progress = _RateLine(enabled=not quiet)
    try:
        summary = score_files(config, input_file, output, address=ray_address, concurrency=concurrency,
                              progress=progress, **job)
    finally:
        progress.close()
    click.echo(summary.describe())


# -- ensrm eval --------------------------------------------------------------------------------


class _StageLine:
    """Progress of ``ensrm eval`` on stderr: the stage, texts done of total, texts per second."""

    def __init__(self, enabled: bool):
        import time

        self.enabled = enabled
        self.clock = time.perf_counter
        self.stage, self.started, self.open = None, 0.0, False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.started = stage, self.clock()
        if not total:
            click.echo(f"{stage} …", err=True)
            return
        seconds = self.clock() - self.started
        rate = f", {done / seconds:,.0f} texts/s" if seconds > 0 and done else ""
        click.echo(f"\r{stage}: {done:,}/{total:,} texts ({100 * done // total}%){rate}", err=True, nl=False)
        self.open = True

    def close(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = False


def _unit_interval(ctx, param, value):
    if value is not None and not 0.0 < value <= 1.0:
        raise click.BadParameter(f"must be in (0, 1], got {value:g}")
    return value


@click.command("eval")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("pairs", metavar="PAIRS.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", default="artifacts/eval", show_default=True, type=click.Path(file_okay=False),
              help="Report directory: report.json, report.md and the PNG plots.")
@click.option("--precisions", help="Also evaluate these accepted precisions (comma-separated, e.g. fp32,int8, or "
                                   "all) beside --precision; deltas are reported against fp32.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="The source model (what ens-export was given; repeat for a full ensemble): also scored in torch, "
                   "with the bundle's tokenizer and normalisation, for the export's deltas (needs ensrm[export]).")
@click.option("--checkpoint-heads", type=click.Path(exists=True, dir_okay=False),
              help="heads.safetensors, for a base-model --checkpoint exported with --heads.")
@click.option("--objective", default="uwo", show_default=True,
              help="Aggregate whose errors the uncertainty figures and the filter are about: mean, wco (min), uwo.")
@click.option("--write-filter", type=click.Path(dir_okay=False),
              help="Save a ResponseFilter (for ensrm serve/score --filter) with max_std chosen by --target-accuracy "
                   "or --keep.")
@click.option("--target-accuracy", type=float, callback=_unit_interval,
              help="Choose the largest disagreement threshold whose kept pairs reach this accuracy (e.g. 0.95).")
@click.option("--keep", type=float, callback=_unit_interval,
              help="Choose the smallest disagreement threshold that keeps this share of the pairs (e.g. 0.8).")
@click.option("--min-score", type=float,
              help="Also reject responses whose --objective score is below this (a fixed score threshold).")
@click.option("--resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the 95% intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots (needs matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@scoring_options
@_one_line_errors
def eval_command(bundle, pairs, output, precisions, checkpoints, checkpoint_heads, objective, write_filter,
                 target_accuracy, keep, min_score, resamples, seed, plots, quiet, scoring):
    """Evaluate BUNDLE on preference pairs: accuracy, whether disagreement predicts errors, a filter threshold.

    PAIRS.jsonl holds {"prompt", "chosen", "rejected"} records (RewardBench's fields; optional
    "subset"); chosen/rejected may be TRL conversational message lists. Accuracy counts ties
    as half, with 95% bootstrap intervals, for every head and aggregate, per subset and per
    RewardBench section where the subset names match.

    \b
    Examples:
      ensrm eval bundles/default pairs.jsonl -o artifacts/eval
      ensrm eval bundles/default pairs.jsonl --precisions all --checkpoint checkpoints/default
      ensrm eval bundles/default pairs.jsonl --write-filter filter.json --target-accuracy 0.95
    """
    from ensrm.evaluate.run import evaluate_file

    with _usage():
        if (target_accuracy is not None or keep is not None or min_score is not None) and write_filter is None:
            raise ValueError("--target-accuracy, --keep and --min-score choose the filter of --write-filter")
        if write_filter is not None and (target_accuracy is None) == (keep is None):
            raise ValueError("--write-filter needs exactly one of --target-accuracy and --keep")
        if checkpoint_heads is not None and not checkpoints:
            raise ValueError("--checkpoint-heads goes with --checkpoint")
    progress = _StageLine(enabled=not quiet)
    try:
        report = evaluate_file(scoring(bundle), pairs, output, write_filter=write_filter, plots=plots,
                               progress=progress, precisions=precisions, checkpoint=checkpoints,
                               checkpoint_heads=checkpoint_heads, objective=objective, resamples=resamples,
                               seed=seed, target_accuracy=target_accuracy, keep=keep, min_score=min_score)
    finally:
        progress.close()
    click.echo(_eval_summary(report))


def _eval_summary(report: dict) -> str:
    """A few lines for the terminal; report.md has the rest."""
    objective = report["settings"]["objective"]
    lines = []
    for run in report["runs"]:
        result = run["analysis"]
        overall = result["accuracy"]["overall"]
        accuracy = ", ".join(f"{a} {100 * overall[a]['value']:.1f}%" for a in ("mean", "wco", "uwo"))
        auroc = result["uncertainty"]["auroc"]["response_std"][objective]["value"]
        lines.append(f"{run['name']}: accuracy {accuracy}; AUROC of response std for {objective} errors "
                     + ("n/a" if auroc is None else f"{auroc:.3f}") + f" ({run['seconds']:.1f} s scoring)")
    choice = report.get("filter")
    if choice:
        expected = choice["expected"]
        lines.append(f"filter: max_std {choice['max_std']}, min_score {choice['min_score']}: expected accuracy "
                     f"{100 * expected['accuracy']['value']:.1f}%, "
                     f"pairs kept {100 * expected['pair_keep']['value']:.1f}%"
                     + (f", saved to {choice['file']}" if choice.get("file") else ""))
    files = report["files"]
    lines.append(f"{report['pairs']} pairs in {report['timing']['total_seconds']:.1f} s; wrote {files['markdown']}, "
                 f"{files['json']}" + (" and plots" if len(files) > 2 else ""))
    return "\n".join(lines)


@click.command("train")
@click.argument("base_model", type=click.Path(exists=True, file_okay=False))
@click.argument("prefs", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Checkpoint directory to write (a *ForSequenceClassification with K labels).")
@click.option("--heads", type=click.IntRange(min=1), default=8, show_default=True, help="Number of reward heads K.")
@click.option("--mode", type=click.Choice(["frozen", "joint"]), default="frozen", show_default=True,
              help="frozen: encoder fixed, heads fitted on its features (seconds after one encoder pass); "
                   "joint: encoder and heads fine-tuned together.")
@click.option("--seed", type=int, default=0, show_default=True, help="Head k starts from seed SEED + k.")
@click.option("--bootstrap", is_flag=True, help="Give each head its own bootstrap resample of the pairs.")
@click.option("--label-noise", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Swap chosen/rejected in each training pair with this probability (experiments).")
@click.option("--eval-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Share of pairs held out for the accuracy report.")
@click.option("--max-length", type=click.IntRange(min=8), default=256, show_default=True,
              help="Longest (prompt, response) in tokens; longer pairs are truncated.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lambda", "uwo_lambda", type=click.FloatRange(min=0.0), default=0.5, show_default=True,
              help="Variance penalty of the UWO objective in the held-out report.")
@click.option("--epochs", type=click.IntRange(min=1), help="[joint] Passes over the data (default 1).")
@click.option("--lr", type=float, help="[joint] Encoder learning rate (default 2e-5).")
@click.option("--head-lr", type=float, help="[joint] Head learning rate (default 1e-3).")
@click.option("--resume", is_flag=True, help="[joint] Continue from the state saved in OUTPUT/.train_state/.")
@click.option("--member-layers", type=click.IntRange(min=0),
              help="[joint] Train a partially shared trunk: K members share the embeddings and first L-m layers "
                   "and each owns a copy of the last m layers and one head (0: K heads on one encoder).")
@click.option("--trunk-lr", type=click.FloatRange(min=0.0),
              help="[joint, --member-layers] Learning rate of the shared layers (default --lr; 0 keeps them fixed).")
@click.option("--l2", type=float, help="[frozen] L2 penalty on standardised features (default 1e-3).")
@click.option("--max-iter", type=click.IntRange(min=1), help="[frozen] L-BFGS iterations (default 200).")
@click.option("--feature-cache", type=click.Path(file_okay=False),
              help="[frozen] Directory keeping encoder features between runs on the same texts.")
@click.option("--pooling", type=click.Choice(["cls", "mean", "last"]),
              help="[frozen] Fit the heads on this pooling of the base model's hidden states (writes the base "
                   "checkpoint + heads.safetensors) instead of the classifier's own pooled feature. "
                   "[joint, --member-layers] The members' pooling (default mean; last for decoders).")
@click.option("--quiet", is_flag=True, help="No progress bar and no report on stderr.")
@_one_line_errors
def train_command(base_model, prefs, output, quiet, **options):
    """Train K Bradley-Terry reward heads on BASE_MODEL from PREFS (JSONL) into a checkpoint.

    BASE_MODEL is a local Hugging Face checkpoint (a bare encoder/decoder or a sequence
    classifier). PREFS has one JSON object per line with string fields "prompt", "chosen"
    (the preferred response) and "rejected"; other fields are ignored. The checkpoint is an
    ordinary *ForSequenceClassification with K labels that ens-export takes as it is (with
    --pooling: the base checkpoint plus heads.safetensors, for ens-export --heads; with
    --member-layers: a partial-trunk checkpoint that ens-export takes as it is); held-out
    accuracy per head and per objective is printed and saved in OUTPUT/ensrm_training.json.

    \b
    Examples:
      ensrm train minilm/ prefs.jsonl -o checkpoints/rm --heads 8 --bootstrap
      ensrm train minilm/ prefs.jsonl -o checkpoints/rm --heads 8 --mode joint --epochs 2
      ens-export checkpoints/rm -o bundles/rm
      ensrm train minilm/ prefs.jsonl -o checkpoints/trunk --heads 4 --mode joint --member-layers 2 --bootstrap
      ensrm train minilm/ prefs.jsonl -o checkpoints/mean-rm --pooling mean --l2 0.1
      ens-export checkpoints/mean-rm --heads checkpoints/mean-rm/heads.safetensors --pooling mean -o bundles/mean-rm
    """
    from ensrm.train.trainer import TrainSettings, train_reward_model

    with _usage():  # the options not named above are TrainSettings.create's keywords, by the same names
        settings = TrainSettings.create(**options, progress=not quiet)
    click.echo(train_reward_model(base_model, prefs, output, settings).headline())


@click.command("triton-repo")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model repository to write.")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="max_batch_size of every model: the most pairs in one request and in one model batch.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long the dynamic batcher waits for a batch to fill.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Copies of the onnx and tokenize models (per GPU with --kind gpu).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Where the onnx model's instances run (KIND_CPU or KIND_GPU).")
@click.option("--pad-to-multiple", type=click.IntRange(min=1), default=32, show_default=True,
              help="Pad each request's sequence axis to a multiple of this, so requests can share a batch.")
@click.option("--name", help="Model name prefix (default: the bundle directory's name).")
@click.option("--overwrite", is_flag=True, help="Replace an existing repository at --output.")
@scoring_options
@_one_line_errors
def triton_repo_command(bundle, output, max_batch, max_wait_ms, instances, kind, pad_to_multiple, name, overwrite,
                        scoring):
    """Write a Triton Inference Server model repository that serves BUNDLE to text clients.

    \b
    Example:
      ensrm triton-repo bundles/default -o triton-models --precision fp16 --kind gpu
      tritonserver --model-repository "$PWD/triton-models"
    """
    from ensrm.integrations.triton import write_triton_repository

    repo = write_triton_repository(scoring(bundle), output, max_batch=max_batch, instances=instances,
                                   kind=kind, max_queue_delay_us=round(max_wait_ms * 1000),
                                   pad_to_multiple=pad_to_multiple, name=name, overwrite=overwrite)
    click.echo(f"{repo.path}: models {repo.ensemble} (text in, scores out) = {repo.tokenize} -> {repo.onnx} "
               f"({repo.precision}); serve with: tritonserver --model-repository {repo.path.resolve()}")


# -- ensrm serve (issue 12) ----------------------------------------------------------------------


@click.command("serve")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port; the chosen one is printed).")
@click.option("--objective", default="uwo", show_default=True,
              help="Default score of /v1/score and the reward of /get_reward: mean, wco, uwo or head:K.")
@click.option("--filter", "filter_file", type=click.Path(exists=True, dir_okay=False),
              help="A filter JSON (ResponseFilter.save) that /v1/filter applies.")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Pairs gathered from concurrent requests into one batch; the batch runs as model calls of "
                   "--batch-size pairs, grouped by length.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Longest wait for more requests to fill a batch.")
@click.option("--max-queue", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Pairs waiting at most; beyond it requests get 503 with Retry-After.")
@click.option("--max-body-bytes", default="8MiB", show_default=True, help="Largest request body (413 above).")
@click.option("--max-pairs-per-request", type=click.IntRange(min=1),
              help="Most pairs in one request (413 above) [default: --max-queue].")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="Seconds a request waits for its scores at most (504 after); a model call running longer is "
                   "treated as stuck and /readyz turns unready.")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the API key every endpoint but /healthz requires, as 'Authorization: Bearer KEY' "
                   "or as the password of HTTP Basic credentials (http://ensrm:KEY@host:port/get_reward).")
@scoring_options
@_one_line_errors
def serve_command(bundle, host, port, objective, filter_file, max_batch, max_wait_ms, max_queue, max_body_bytes,
                  max_pairs_per_request, request_timeout, api_key_file, scoring):
    """Serve BUNDLE over HTTP with dynamic batching until SIGTERM (see docs/guides/deploying.md).

    SIGHUP (or POST /v1/admin/reload) loads BUNDLE again (or another bundle) beside the running
    one and switches to it without dropping a request.

    \b
    Examples:
      ensrm serve bundles/default
      ensrm serve bundles/default --host 0.0.0.0 --api-key-file key.txt --filter bundles/default-filter.json
    """
    from pathlib import Path

    from ensrm.runtime.filter import ResponseFilter
    from ensrm.runtime.scorer import Scorer
    from ensrm.serve.server import run_server
    from ensrm.serve.settings import ServeSettings, parse_size

    api_key = Path(api_key_file).read_text(encoding="utf-8").strip() if api_key_file else None
    if api_key_file and not api_key:
        raise click.UsageError(f"--api-key-file {api_key_file} is empty")
    settings = ServeSettings(objective=objective, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             max_body_bytes=parse_size(max_body_bytes), max_pairs_per_request=max_pairs_per_request,
                             api_key=api_key, request_timeout_s=request_timeout)
    # No spinning: between model calls the event loop needs the cores that idle onnxruntime threads would spin on.
    scorer = Scorer.from_config(scoring(bundle, spinning=False))
    response_filter = ResponseFilter.load(filter_file, scorer) if filter_file else None
    try:
        run_server(scorer, settings, response_filter, host=host, port=port, echo=click.echo)
    except OSError as exc:  # the port is taken or the address is not ours
        raise click.ClickException(str(exc)) from None


@click.command("tune")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--threads", type=click.IntRange(min=1), help="Threads to time with (default: the runtime's choice).")
@click.option("--batches", default="1,8,32", show_default=True, help="Batch regimes to time (comma-separated).")
@click.option("--seq", type=click.IntRange(min=1), default=128, show_default=True, help="Tokens per sequence.")
@click.option("--show", is_flag=True, help="Print this machine's saved table without timing anything.")
@_one_line_errors
def tune_command(bundle, threads, batches, seq, show):
    """Time every installed runtime x accepted precision here; save the fastest per batch to BUNDLE/tune.json.

    precision=auto (Scorer, ensrm score/serve --precision auto) then runs that choice on this
    machine. A tune file from another CPU, other runtime versions or another manifest is ignored
    with a warning. Only precisions the bundle's gate accepted are timed.

    \b
    Examples:
      ensrm tune bundles/default --threads 2
      ensrm tune bundles/default --show
    """
    from ensrm.runtime.tune import format_tune, read_tune, tune_bundle

    if show:
        record = read_tune(bundle)
        if record is None:
            raise click.ClickException(f"no tune record for this machine in {bundle}; run: ensrm tune {bundle}")
    else:
        record = tune_bundle(bundle, threads=threads, batches=_parse_batches(batches), seq=seq, progress=_echo_err)
    click.echo(format_tune(record))


@click.group()
@click.version_option(package_name="ensrm")
def main():
    """ensrm: deploy multi-head reward-model ensembles as one ONNX graph.

    \b
    Start with:
      ensrm demo                 build the default MiniLM ensemble, export it, score examples
      ensrm export SOURCE -o B   export your own reward model
      ensrm train BASE P.jsonl -o CKPT --heads 8   train K reward heads on preference pairs
    """


main.add_command(export_command)
main.add_command(score_command)
main.add_command(calibrate_command)
main.add_command(quantize_command)
main.add_command(build_engine_command)
main.add_command(bench_command)
main.add_command(train_command)
main.add_command(triton_repo_command)
main.add_command(serve_command)
main.add_command(tune_command)
main.add_command(eval_command)


@main.command("demo")
@click.option("--checkpoint", type=click.Path(file_okay=False), default="checkpoints/default", show_default=True,
              help="Where the default reward model is built (reused if present).")
@click.option("--bundle", type=click.Path(file_okay=False), default="bundles/default", show_default=True,
              help="Where its bundle is exported (reused if present).")
@_one_line_errors
def demo_command(checkpoint, bundle):
    """Build the default MiniLM ensemble (8 heads), export it and score example responses."""
    from ensrm.demo import run_demo

    run_demo(checkpoint, bundle, echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
