"""The accuracy gate: a precision variant is accepted only if it ranks like fp32.

A variant is scored on held-out records next to fp32 (:func:`compare_scores`) and on a
battery of stress inputs (maximum-length sequences, single tokens, repeated tokens) that must
give finite outputs. It passes when every aggregate's and every head's Spearman correlation
and every best-of-n top-1 agreement reach the thresholds of its :class:`Gate`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ensrm.calibration.metrics import compare_scores
from ensrm.runtime.scores import Scores
from ensrm.spec import EnsembleSpec, Gate

__all__ = ["DEFAULT_GATES", "Gate", "evaluate", "format_report", "gates_with", "stress_batches", "stress_check"]

#: Default gates (issue: fp16 Spearman >= 0.999 and finite; INT8 Spearman >= 0.99, top-1 >= 0.95);
#: bf16 is held to fp16's gate, int4 (weights) to INT8's.
DEFAULT_GATES = {"fp16": Gate(min_spearman=0.999), "bf16": Gate(min_spearman=0.999),
                 "int8": Gate(min_spearman=0.99, min_top1=0.95), "int4": Gate(min_spearman=0.99, min_top1=0.95)}


def gates_with(min_spearman: float | None = None, min_top1: float | None = None,
               base: dict[str, Gate] | None = None) -> dict[str, Gate]:
    """Every gate of ``base`` (default :data:`DEFAULT_GATES`) with the thresholds that are given replaced.

    >>> gates_with(min_spearman=0.9)["int8"]
    Gate(min_spearman=0.9, min_top1=0.95, ns=(4, 16), threshold_quantile=0.5)
    """
    changes = {k: v for k, v in (("min_spearman", min_spearman), ("min_top1", min_top1)) if v is not None}
    return {precision: dataclasses.replace(gate, **changes) for precision, gate in (base or DEFAULT_GATES).items()}


def stress_batches(spec: EnsembleSpec, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs that make fp16 overflow if anything will: full-length sequences and degenerate ones.

    (Not run by the doctests: it needs a bundle's spec.)

    >>> [b["input_ids"].shape for b in stress_batches(spec)]        # doctest: +SKIP
    [(4, 128), (2, 1), (2, 128)]
    """
    rng = np.random.default_rng(seed)
    low = min(1000, spec.vocab_size // 2)  # skip the special tokens at the start of most vocabularies
    length = stress_length(spec)
    full = rng.integers(low, spec.vocab_size, size=(4, length))  # [4, length]
    single = rng.integers(low, spec.vocab_size, size=(2, 1))
    repeated = np.full((2, length), low, dtype=np.int64)
    repeated[1] = spec.vocab_size - 1
    batches = []
    for ids in (full, single, repeated):
        ids = ids.astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if spec.uses_token_type_ids:
            types = np.zeros_like(ids)
            types[:, ids.shape[1] // 2:] = 1  # a pair: second half is the response
            feeds["token_type_ids"] = types
        batches.append(feeds)
    return batches


def stress_length(spec: EnsembleSpec) -> int:
    """The stress battery's full length: the bundle's maximum, or the longest four rows of which fit
    the activation budget (a 32k-position decoder would need hundreds of GB at its maximum)."""
    from ensrm.export.memory import STRESS_SHAPE, activation_budget, fitting_length

    return fitting_length(STRESS_SHAPE, spec.max_length, activation_budget() // 4)


def stress_check(backend, spec: EnsembleSpec) -> dict:
    """Run the stress battery; report whether every output was finite."""
    bad = []
    for feeds in stress_batches(spec):
        outputs = backend.run(feeds)
        for name, value in outputs.items():
            if not np.isfinite(value).all():
                bad.append(f"{name} at shape {list(feeds['input_ids'].shape)}")
    return {"finite": not bad, "non_finite": bad, "batches": len(stress_batches(spec)),
            "max_length": stress_length(spec)}


def evaluate(reference: Scores, candidate: Scores, stress: dict, gate: Gate) -> dict:
    """Compare, apply ``gate`` and return the report with ``passed`` and the failing reasons."""
    report = compare_scores(reference, candidate, ns=gate.ns, threshold_quantile=gate.threshold_quantile)
    reasons = []
    if not report["finite"]:
        reasons.append("non-finite scores on the evaluation records")
    if not stress["finite"]:
        reasons.append("non-finite outputs on the stress battery: " + ", ".join(stress["non_finite"][:3]))
    worst_agg = min(report["spearman"], key=report["spearman"].get)
    if not report["spearman"][worst_agg] >= gate.min_spearman:
        reasons.append(f"Spearman({worst_agg}) {report['spearman'][worst_agg]:.4f} < {gate.min_spearman}")
    worst_head = int(np.argmin(report["spearman_heads"]))
    if not report["spearman_heads"][worst_head] >= gate.min_spearman:
        reasons.append(f"Spearman(head {worst_head}) {report['spearman_heads'][worst_head]:.4f} < {gate.min_spearman}")
    if gate.min_top1 is not None:
        if not report["top1"]:
            reasons.append(f"too few records ({report['records']}) for best-of-{min(gate.ns)}")
        for n, by_objective in report["top1"].items():
            worst = min(by_objective, key=by_objective.get)
            if not by_objective[worst] >= gate.min_top1:
                reasons.append(f"top-1 of {n} ({worst}) {by_objective[worst]:.3f} < {gate.min_top1}")
    report.update(stress=stress, gate=gate.to_dict(), passed=not reasons, reasons=reasons)
    return report


def format_report(precision: str, report: dict) -> str:
    """A few terminal lines: the verdict and the numbers, whichever way the gate went."""
    sp = report["spearman"]
    lines = [
        f"{precision}: {'ACCEPTED' if report['passed'] else 'REJECTED'} on {report['records']} held-out records"
        + ("" if report["passed"] else " — " + "; ".join(report["reasons"])),
        "  spearman  " + "  ".join(f"{k} {v:.4f}" for k, v in sp.items())
        + f"  heads min {min(report['spearman_heads']):.4f}",
    ]
    for n, by_objective in report["top1"].items():
        lines.append(f"  top-1@{n:<3} " + "  ".join(f"{k} {v:.3f}" for k, v in by_objective.items()))
    lines.append(f"  flip@q{report['threshold_quantile']:g} "
                 + "  ".join(f"{k} {v:.3f}" for k, v in report["flip_rate"].items())
                 + f"  stress battery {'finite' if report['stress']['finite'] else 'NON-FINITE'}")
    return "\n".join(lines)
