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
@click.option("--l2", type=float, help="[frozen] L2 penalty on standardised features (default 1e-3).")
@click.option("--max-iter", type=click.IntRange(min=1), help="[frozen] L-BFGS iterations (default 200).")
@click.option("--feature-cache", type=click.Path(file_okay=False),
              help="[frozen] Directory keeping encoder features between runs on the same texts.")
@click.option("--quiet", is_flag=True, help="No progress bar and no report on stderr.")
@_one_line_errors
def train_command(base_model, prefs, output, heads, mode, seed, bootstrap, label_noise, eval_fraction, max_length,
                  batch_size, uwo_lambda, epochs, lr, head_lr, resume, l2, max_iter, feature_cache, quiet):
    """Train K Bradley-Terry reward heads on BASE_MODEL from PREFS (JSONL) into a checkpoint.

    BASE_MODEL is a local Hugging Face checkpoint (a bare encoder/decoder or a sequence
    classifier). PREFS has one JSON object per line with string fields "prompt", "chosen"
    (the preferred response) and "rejected"; other fields are ignored. The checkpoint is an
    ordinary *ForSequenceClassification with K labels that ens-export takes as it is; held-out
    accuracy per head and per objective is printed and saved in OUTPUT/ensrm_training.json.

    \b
    Examples:
      ensrm train minilm/ prefs.jsonl -o checkpoints/rm --heads 8 --bootstrap
      ensrm train minilm/ prefs.jsonl -o checkpoints/rm --heads 8 --mode joint --epochs 2
      ens-export checkpoints/rm -o bundles/rm
    """
    joint_only = {"--epochs": epochs, "--lr": lr, "--head-lr": head_lr, "--resume": resume or None}
    frozen_only = {"--l2": l2, "--max-iter": max_iter, "--feature-cache": feature_cache}
    wrong = [name for name, value in (joint_only if mode == "frozen" else frozen_only).items() if value is not None]
    if wrong:
        other = "joint" if mode == "frozen" else "frozen"
        raise click.UsageError(f"{', '.join(wrong)} only applies to --mode {other} (this run is --mode {mode})")
    from ensrm.train.trainer import train_reward_model

    settings = {"epochs": epochs, "lr": lr, "head_lr": head_lr, "l2": l2, "max_iter": max_iter}
    result = train_reward_model(base_model, prefs, output, heads=heads, mode=mode, seed=seed, bootstrap=bootstrap,
                                label_noise=label_noise, eval_fraction=eval_fraction, max_length=max_length,
                                batch_size=batch_size, uwo_lambda=uwo_lambda, resume=resume,
                                feature_cache=feature_cache, progress=not quiet,
                                **{k: v for k, v in settings.items() if v is not None})
    accuracy = "" if result.metrics is None else \
        " (held-out accuracy: mean {mean:.3f}, wco {wco:.3f}, uwo {uwo:.3f})".format(**result.metrics["accuracy"])
    click.echo(f"checkpoint {output}: {heads} heads, {mode}{accuracy}; export with: ens-export {output} -o BUNDLE")


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
main.add_command(train_command)


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
