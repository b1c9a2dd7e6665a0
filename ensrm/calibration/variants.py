"""Write the fp16 / INT8 variants of a bundle and gate each one on ranking agreement with fp32.

A variant that fails its gate is not kept: its file is deleted and the manifest records it as
``accepted: false`` with the numbers, so ``Scorer(..., precision=...)`` refuses it by name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ensrm.builder import BundleBuilder
from ensrm.calibration.data import encoder_for, feed_batches, load_records, score_records, split_holdout
from ensrm.calibration.gate import DEFAULT_GATES, Gate, evaluate, format_report, stress_check
from ensrm.errors import ExportError
from ensrm.progress import Progress
from ensrm.spec import MODEL_FILES, EnsembleSpec, Variant

PRECISIONS = tuple(p for p in MODEL_FILES if p != "fp32")
#: Calibration batches fed to the INT8 calibrator (MinMax needs no more to settle).
MAX_CALIBRATION_RECORDS = 512


def parse_precisions(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"fp16,int8"`` -> ``("fp16", "int8")``; ``fp32`` is always written and may be named.

    >>> parse_precisions("fp32,int8")
    ('int8',)
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [item.strip().lower() for item in items if item.strip()]
    bad = [n for n in names if n not in MODEL_FILES]
    if bad:
        raise ValueError(f"unknown precision {bad[0]!r}; choose from {', '.join(MODEL_FILES)}")
    return tuple(dict.fromkeys(n for n in names if n != "fp32"))


def _write_variant(build: BundleBuilder, precision: str, int8_mode: str, calib_records, batch_size: int) -> dict:
    from ensrm.calibration.fp16 import convert_fp16
    from ensrm.calibration.int8 import quantize_int8

    source, target = build.path(MODEL_FILES["fp32"]), build.path(MODEL_FILES[precision])
    if precision == "fp16":
        return convert_fp16(source, target)
    batches = None
    if int8_mode != "dynamic":
        if not calib_records:
            raise ExportError(f"{int8_mode} INT8 needs calibration records: pass `calibration=CALIB.jsonl` "
                              "(or `int8_mode='dynamic'` for a CPU-only variant without calibration)")
        batches = [feeds for _, feeds in feed_batches(encoder_for(build.staging, build.spec),
                                                      calib_records[:MAX_CALIBRATION_RECORDS], batch_size)]
    return quantize_int8(source, target, int8_mode, batches)


def _remove(staging: Path, name: str) -> None:
    for path in (staging / name, staging / (name + ".data")):
        if path.exists():
            path.unlink()


def gate_variant(staging: Path, spec: EnsembleSpec, model: Path, eval_records: list[dict], reference,
                 gate: Gate, threads: int | None = None) -> dict:
    """Score ``eval_records`` and the stress battery with the graph ``model``; apply ``gate``.

    ``staging`` is the bundle whose tokenizer encodes the records; ``reference`` its fp32 scores.
    """
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model, threads=threads)
    candidate = score_records(backend, encoder_for(staging, spec), eval_records)
    return evaluate(reference, candidate, stress_check(backend, spec), gate)


def _fp32_scores(build: BundleBuilder, records: list[dict], batch_size: int = 32):
    """The reference every gate compares with: the fp32 graph's scores of ``records``."""
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(build.path(MODEL_FILES["fp32"]), threads=build.threads)
    return score_records(backend, encoder_for(build.staging, build.spec), records, batch_size)


def _judge(build: BundleBuilder, precision: str, records: list[dict], reference, gate: Gate,
           method: dict | None) -> Variant:
    """Gate the variant file written for ``precision``; delete it if rejected."""
    name = MODEL_FILES[precision]
    report = gate_variant(build.staging, build.spec, build.path(name), records, reference, gate, build.threads)
    if not report["passed"]:
        _remove(build.staging, name)
    build.note(format_report(precision, report))
    return Variant.judged(precision, report, gate, method)


def _evaluation_records(build: BundleBuilder, precisions, calibration, eval_on):
    """``(calibration records, evaluation records)``: held-out records come from ``eval_on``, else a
    quarter of ``calibration``, else the normalisation's references."""
    calib_records = eval_records = None
    if calibration is not None:
        calib_records = load_records(calibration, "calibration", minimum=2)
        if eval_on is None:
            calib_records, eval_records = split_holdout(calib_records)
    if eval_on is not None:
        eval_records = load_records(eval_on, "evaluation", minimum=2)
    if eval_records is None:
        eval_records = build.references
    if not eval_records:
        options = "`calibration=CALIB.jsonl`" + (", `eval_on=EVAL.jsonl` or `normalize_on=REFS.jsonl`"
                                                 if build.is_new else " or `eval_on=EVAL.jsonl`")
        raise ExportError(f"the {', '.join(precisions)} variant(s) need records to be judged on: pass {options}")
    return calib_records, eval_records


def build_variants(build: BundleBuilder, precisions, *, calibration=None, eval_on=None, int8_mode: str = "static",
                   gates: dict[str, Gate] | None = None, batch_size: int = 32) -> None:
    """The variants step: write, gate and record each precision variant in the bundle being written.

    A variant that fails its gate is recorded as rejected and its file deleted.
    """
    precisions = parse_precisions(precisions)
    if not precisions:
        return
    gates = {**DEFAULT_GATES, **(gates or {})}
    calib_records, eval_records = _evaluation_records(build, precisions, calibration, eval_on)
    reference = _fp32_scores(build, eval_records, batch_size)
    variants = []
    for precision in precisions:
        method = _write_variant(build, precision, int8_mode, calib_records, batch_size)
        variants.append(_judge(build, precision, eval_records, reference, gates[precision], method))
    build.spec = build.spec.with_variants(*variants)
    kept = [v.precision for v in variants if v.accepted]
    rejected = [v.precision for v in variants if not v.accepted]
    build.step(f"precision variants: {', '.join(kept) or 'none'} accepted"
               + (f", {', '.join(rejected)} rejected (not written)" if rejected else ""))


def regate_variants(build: BundleBuilder, records: list[dict]) -> None:
    """Run the gate of every kept variant again on ``records`` (after its graph changed), with its own thresholds."""
    kept = [v for p, v in build.spec.variants.items() if p != "fp32" and v.usable]
    if not kept:
        return
    reference = _fp32_scores(build, records)
    judged = [_judge(build, v.precision, records, reference, v.gate or DEFAULT_GATES[v.precision], v.method)
              for v in kept]
    build.spec = build.spec.with_variants(*judged)


def add_variants(bundle_dir: str | os.PathLike, precisions: str | Sequence[str], *,
                 calibration: str | os.PathLike | None = None, eval_on: str | os.PathLike | None = None,
                 int8_mode: str = "static", gates: dict[str, Gate] | None = None, threads: int | None = None,
                 progress: Progress | None = None) -> EnsembleSpec:
    """Add (or redo) precision variants of an existing bundle, atomically.

    (Needs a bundle and calibration records on disk, so not run by the doctests.)

    >>> spec = add_variants("bundles/rm", "int8", calibration="calib.jsonl")   # doctest: +SKIP
    >>> spec.variants["int8"].accepted                                         # doctest: +SKIP
    True
    """
    precisions = parse_precisions(precisions)
    redo = [MODEL_FILES[p] for p in precisions]
    with BundleBuilder.update(bundle_dir, drop=redo, threads=threads, progress=progress) as build:
        build_variants(build, precisions, calibration=calibration, eval_on=eval_on, int8_mode=int8_mode, gates=gates)
    return build.spec
