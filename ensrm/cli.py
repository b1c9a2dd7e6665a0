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
@_one_line_errors
def export_command(sources, output, heads, pooling, uwo_lambda, max_length, padding_side, tolerance,
                   overwrite, trust_remote_code):
    """Export a reward model into a bundle: one ONNX graph with the ensemble aggregates.

    SOURCE is a local Hugging Face *ForSequenceClassification checkpoint with K labels
    (K heads), or a base model with --heads, or several single-head classifiers that make
    a full ensemble (one graph running every member). Nothing is downloaded.

    \b
    Examples:
      ens-export checkpoints/rm -o bundles/rm
      ens-export checkpoints/minilm --heads heads.safetensors --pooling mean -o bundles/rm
      ens-export members/rm0 members/rm1 members/rm2 members/rm3 -o bundles/full4

    The graph is checked against the torch model before the bundle appears; if it differs
    by more than --tolerance nothing is written.
    """
    from ensrm.export.exporter import export_bundle

    spec = export_bundle(list(sources), output, heads=heads, pooling=pooling, uwo_lambda=uwo_lambda,
                         max_length=max_length, padding_side=padding_side, tolerance=tolerance,
                         overwrite=overwrite, trust_remote_code=trust_remote_code)
    click.echo(f"bundle {output}: {spec.num_heads} heads, {spec.model_type} {spec.architecture}, "
               f"inputs {', '.join(spec.inputs)}")


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
