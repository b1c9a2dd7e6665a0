"""Write the fp16 / INT8 variants of a bundle and gate each one on ranking agreement with fp32.

A variant that fails its gate is not kept: its file is deleted and the manifest records it as
``accepted: false`` with the numbers, so ``Scorer(..., precision=...)`` refuses it by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ensrm.bundle import bundle_file, load_spec, staged_bundle, write_manifest
from ensrm.calibration.data import encoder_for, feed_batches, load_records, score_records, split_holdout
from ensrm.calibration.gate import DEFAULT_GATES, Gate, evaluate, format_report, stress_check
from ensrm.errors import ExportError
from ensrm.spec import MODEL_FILES, EnsembleSpec

Progress = Callable[[str], None]
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


def _write_variant(staging: Path, spec: EnsembleSpec, precision: str, int8_mode: str, calib_records,
                   batch_size: int) -> dict:
    from ensrm.calibration.fp16 import convert_fp16
    from ensrm.calibration.int8 import quantize_int8

    source, target = staging / MODEL_FILES["fp32"], staging / MODEL_FILES[precision]
    if precision == "fp16":
        return convert_fp16(source, target)
    batches = None
    if int8_mode == "static":
        if not calib_records:
            raise ExportError("static INT8 needs calibration records: pass --calibration CALIB.jsonl "
                              "(or --int8-mode dynamic for a CPU-only variant without calibration)")
        batches = [feeds for _, feeds in feed_batches(encoder_for(staging, spec),
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


def build_variants(staging: Path, spec: EnsembleSpec, precisions, *, calibration=None, eval_on=None,
                   references: list[dict] | None = None, int8_mode: str = "static",
                   gates: dict[str, Gate] | None = None, threads: int | None = None, batch_size: int = 32,
                   progress: Progress | None = None) -> EnsembleSpec:
    """Write, gate and record each precision variant in a bundle directory being written.

    Evaluation records come from ``eval_on``, else a held-out quarter of ``calibration``,
    else the ``references`` used for normalisation.
    """
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    precisions = parse_precisions(precisions)
    gates = {**DEFAULT_GATES, **(gates or {})}
    calib_records = eval_records = None
    if calibration is not None:
        calib_records = load_records(calibration, "calibration", minimum=2)
        if eval_on is None:
            calib_records, eval_records = split_holdout(calib_records)
    if eval_on is not None:
        eval_records = load_records(eval_on, "evaluation", minimum=2)
    if eval_records is None:
        eval_records = references
    if precisions and not eval_records:
        raise ExportError(f"the {', '.join(precisions)} variant(s) need records to be judged on: pass "
                          "--calibration CALIB.jsonl, --eval-on EVAL.jsonl or --normalize-on REFS.jsonl")
    encoder = encoder_for(staging, spec)
    reference = score_records(OnnxRuntimeBackend(staging / MODEL_FILES["fp32"], threads=threads), encoder,
                              eval_records, batch_size) if precisions else None
    variants = dict(spec.variants)
    for precision in precisions:
        method = _write_variant(staging, spec, precision, int8_mode, calib_records, batch_size)
        report = gate_variant(staging, spec, staging / MODEL_FILES[precision], eval_records, reference,
                              gates[precision], threads)
        if not report["passed"]:
            _remove(staging, MODEL_FILES[precision])
        variants[precision] = {"file": MODEL_FILES[precision] if report["passed"] else None,
                               "accepted": report["passed"], "method": method, "checks": report}
        if progress:
            progress(format_report(precision, report))
    return spec.replace(variants=variants)


def regate_variants(staging: Path, spec: EnsembleSpec, records: list[dict], *, threads: int | None = None,
                    progress: Progress | None = None) -> EnsembleSpec:
    """Run the gate of every kept variant again (after its graph changed) on ``records``."""
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    kept = [p for p, v in spec.variants.items() if p != "fp32" and v.get("accepted") and v.get("file")]
    if not kept:
        return spec
    reference = score_records(OnnxRuntimeBackend(staging / MODEL_FILES["fp32"], threads=threads),
                              encoder_for(staging, spec), records)
    variants = dict(spec.variants)
    for precision in kept:
        old = variants[precision]
        gate = Gate(**{**old["checks"]["gate"], "ns": tuple(old["checks"]["gate"]["ns"])})
        report = gate_variant(staging, spec, staging / old["file"], records, reference, gate, threads)
        if not report["passed"]:
            _remove(staging, old["file"])
        variants[precision] = {**old, "file": old["file"] if report["passed"] else None,
                               "accepted": report["passed"], "checks": report}
        if progress:
            progress(format_report(precision, report))
    return spec.replace(variants=variants)


def add_variants(bundle_dir: str | os.PathLike, precisions, *, calibration=None, eval_on=None,
                 int8_mode: str = "static", gates: dict[str, Gate] | None = None, threads: int | None = None,
                 progress: Progress | None = None) -> EnsembleSpec:
    """Add (or redo) precision variants of an existing bundle, atomically.

    >>> spec = add_variants("bundles/rm", "int8", calibration="calib.jsonl")   # doctest: +SKIP
    >>> spec.variants["int8"]["accepted"]
    True
    """
    from ensrm.calibration.normalize import ENGINE_DIR, _link_or_copy

    bundle_dir = Path(bundle_dir)
    spec = load_spec(bundle_dir, verify="sha256")
    redo = {MODEL_FILES[p] for p in parse_precisions(precisions)}
    with staged_bundle(bundle_dir, overwrite=True) as staging:
        for name in spec.files:
            if name.split("/")[0] == ENGINE_DIR or name in redo or name.removesuffix(".data") in redo:
                continue
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(bundle_file(bundle_dir, name), staging / name)
        spec = build_variants(staging, spec, precisions, calibration=calibration, eval_on=eval_on,
                              int8_mode=int8_mode, gates=gates, threads=threads, progress=progress)
        spec = write_manifest(staging, spec)
    return spec
