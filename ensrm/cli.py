"""The command line: a thin click layer over the public functions.

``ens-export`` is the export alone; ``ensrm`` groups every command (``ensrm export`` is the
same command as ``ens-export``). Errors print one line and exit with status 1.
"""

from __future__ import annotations

import functools
import sys

import click

from ensrm.errors import EnsrmError


def _one_line_errors(func):
    """Turn the errors users cause (bad files, bad options, missing extras) into one line."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (EnsrmError, FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.command("export")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to create.")
@click.option("--heads", type=click.Path(exists=True, dir_okay=False),
              help="heads.safetensors (weight [K, hidden], bias [K]) for a base-model SOURCE.")
@click.option("--pooling", type=click.Choice(["cls", "mean", "last"]),
              help="Pooling for a base model with --heads (default: cls for encoders, last for decoders).")
@click.option("--lambda", "uwo_lambda", type=float, default=0.5, show_default=True,
              help="Variance penalty of the uncertainty-weighted objective: mean - lambda * var.")
@click.option("--max-length", type=int, help="Longest sequence the bundle accepts (default: the model's).")
@click.option("--padding-side", type=click.Choice(["right", "left"]),
              help="Padding the runtime uses (default: right for encoders, left for decoders).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest |ONNX - torch| accepted by the verification.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --output.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code shipped with the checkpoint to run.")
@click.option("--normalize-on", type=click.Path(exists=True, dir_okay=False),
              help="JSONL reference records (prompt, response): normalise each head to mean 0, std 1 on them.")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help="Comma-separated precisions to write: fp32 (always), fp16, int8. Each variant is gated "
                   "on ranking agreement with fp32 and written only if it passes.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
              help="JSONL records to calibrate INT8 on (a quarter is held out for the gate unless --eval-on).")
@click.option("--eval-on", type=click.Path(exists=True, dir_okay=False),
              help="JSONL records the precision gates compare on.")
@click.option("--int8-mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="static: explicit Q/DQ, symmetric, calibrated (TensorRT can build it); "
                   "dynamic: per-batch activation scales, onnxruntime CPU only.")
@click.option("--min-spearman", type=float, help="Override the gates' Spearman threshold (fp16 0.999, int8 0.99).")
@click.option("--min-top1", type=float, help="Override the INT8 gate's best-of-n top-1 agreement threshold (0.95).")
@click.option("--tensorrt", "tensorrt_batches", default=None,
              help="Also build TensorRT engines for the written variants, for these batch sizes "
                   "(e.g. 1,8,32); needs a GPU and the tensorrt package.")
@_one_line_errors
def export_command(sources, output, heads, pooling, uwo_lambda, max_length, padding_side, tolerance,
                   overwrite, trust_remote_code, normalize_on, precisions, calibration, eval_on, int8_mode,
                   min_spearman, min_top1, tensorrt_batches):
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
    from ensrm.export.exporter import export_bundle

    batches = _parse_batches(tensorrt_batches) if tensorrt_batches else None
    if batches:
        from ensrm.export.tensorrt_engine import check_tensorrt

        check_tensorrt()  # before the export, not after minutes of it
    spec = export_bundle(list(sources), output, heads=heads, pooling=pooling, uwo_lambda=uwo_lambda,
                         max_length=max_length, padding_side=padding_side, tolerance=tolerance,
                         overwrite=overwrite, trust_remote_code=trust_remote_code, normalize_on=normalize_on,
                         precisions=precisions, calibration=calibration, eval_on=eval_on, int8_mode=int8_mode,
                         gates=_gates(min_spearman, min_top1))
    click.echo(f"bundle {output}: {spec.num_heads} heads, {spec.model_type} {spec.architecture}, "
               f"inputs {', '.join(spec.inputs)}, precisions "
               + ", ".join(p for p, v in spec.variants.items() if v.get("accepted")))
    if batches:
        from ensrm.export.tensorrt_engine import build_engine

        for precision in ("fp16", "int8"):
            if spec.variants.get(precision, {}).get("accepted"):
                engine = build_engine(output, precision, batch_sizes=batches, progress=click.echo)
                click.echo(f"engine {engine}")


# -- calibration and precision (issue 3) --------------------------------------------------------


def _parse_batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def _gates(min_spearman, min_top1):
    if min_spearman is None and min_top1 is None:
        return None
    import dataclasses

    from ensrm.calibration.gate import DEFAULT_GATES

    gates = {}
    for precision, gate in DEFAULT_GATES.items():
        changes = {"min_spearman": min_spearman} if min_spearman is not None else {}
        if min_top1 is not None:
            changes["min_top1"] = min_top1
        gates[precision] = dataclasses.replace(gate, **changes)
    return gates


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


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
@click.option("--precision", "precisions", required=True, help="fp16, int8 or both (comma-separated).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), help="JSONL records for INT8.")
@click.option("--eval-on", type=click.Path(exists=True, dir_okay=False), help="JSONL records for the gates.")
@click.option("--int8-mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True)
@click.option("--min-spearman", type=float, help="Override the gates' Spearman threshold.")
@click.option("--min-top1", type=float, help="Override the INT8 gate's top-1 agreement threshold.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@_one_line_errors
def quantize_command(bundle, precisions, calibration, eval_on, int8_mode, min_spearman, min_top1, threads):
    """Add gated fp16 / INT8 variants to an existing BUNDLE.

    \b
    Example:
      ensrm quantize bundles/rm --precision int8 --calibration calib.jsonl
    """
    from ensrm.calibration.variants import add_variants

    spec = add_variants(bundle, precisions, calibration=calibration, eval_on=eval_on, int8_mode=int8_mode,
                        gates=_gates(min_spearman, min_top1), threads=threads, progress=_echo_err)
    for precision, variant in spec.variants.items():
        click.echo(f"{precision}: {'accepted' if variant.get('accepted') else 'rejected'}")


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


@click.group()
@click.version_option(package_name="ensrm")
def main():
    """ensrm: deploy multi-head reward-model ensembles as one ONNX graph.

    \b
    Start with:
      ensrm demo                 build the default MiniLM ensemble, export it, score examples
      ensrm export SOURCE -o B   export your own reward model
    """


main.add_command(export_command)
main.add_command(calibrate_command)
main.add_command(quantize_command)
main.add_command(build_engine_command)


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
