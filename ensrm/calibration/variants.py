"""Write the fp16 / bf16 / INT8 / INT4 variants of a bundle and gate each one on ranking agreement with fp32.

A variant that fails its gate is not kept: its file is deleted and the manifest records it as
``accepted: false`` with the numbers, so ``Scorer(..., precision=...)`` refuses it by name.
``bf16`` has no file of its own: it is ``model.onnx`` run by OpenVINO with its bf16 hint, judged
on this machine; its method records the runtime and whether this CPU really computed bf16.
``int4`` (and ``int8`` with ``int8_mode="openvino-weights"``) is an OpenVINO IR of NNCF-compressed
weights (:mod:`ensrm.calibration.openvino_weights`), judged on OpenVINO with the compile
properties its method records.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from ensrm.builder import BundleBuilder
from ensrm.calibration.data import encoder_for, feed_batches, load_records, score_records, split_holdout
from ensrm.calibration.gate import DEFAULT_GATES, Gate, evaluate, format_report, stress_check
from ensrm.calibration.openvino_weights import IR_FILES as WEIGHT_IR_FILES
from ensrm.calibration.openvino_weights import WeightCompression, compress_openvino
from ensrm.errors import ExportError
from ensrm.progress import Progress
from ensrm.spec import HINTED_PRECISIONS, MODEL_FILES, EnsembleSpec, Variant

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


def bf16_method(source: Path, threads: int | None = None) -> dict:
    """How a bf16 variant runs: OpenVINO's bf16 hint on ``model.onnx``, and what this CPU really computes.

    ``computed`` is the precision OpenVINO compiled (``bf16`` or ``f32``); ``native_bf16`` whether
    the CPU has bf16 instructions (AVX512_BF16/AMX). Without them an AVX-512 CPU emulates bf16:
    the gate judges real bf16 rounding, but not its speed; that is warned in one line.
    """
    from ensrm.runtime.openvino_backend import BF16Warning, OpenVINOBackend, bf16_note, cpu_has_bf16, cpu_name, version

    computed = OpenVINOBackend(source, threads, "bf16", cache=False).inference_precision
    native = cpu_has_bf16()
    if not native:
        warnings.warn(bf16_note(computed) + "; judge it again on the CPU that will run it", BF16Warning, stacklevel=2)
    return {"method": "bf16-hint", "base": MODEL_FILES["fp32"], "runtime": f"openvino {version()}",
            "hint": "INFERENCE_PRECISION_HINT=bf16", "cpu": cpu_name(), "computed": computed, "native_bf16": native}


def _write_variant(build: BundleBuilder, precision: str, int8_mode: str, calib_records, batch_size: int,
                   gate: Gate, weights: WeightCompression | None = None) -> dict:
    from ensrm.calibration.fp16 import convert_fp16
    from ensrm.calibration.int8 import quantize_int8

    if precision in HINTED_PRECISIONS:
        return bf16_method(build.path(MODEL_FILES["fp32"]), build.threads)
    source, target = build.path(MODEL_FILES["fp32"]), build.path(MODEL_FILES[precision])
    if precision == "int4" or (precision == "int8" and int8_mode == "openvino-weights"):
        batches = None
        if weights is not None and weights.smoothing is not None and calib_records:
            batches = [feeds for _, feeds in feed_batches(encoder_for(build.staging, build.spec),
                                                          calib_records[:MAX_CALIBRATION_RECORDS], batch_size)]
        return compress_openvino(source, build.path(WEIGHT_IR_FILES[precision]), precision, weights, batches)
    if precision == "int8" and int8_mode == "openvino":
        return _write_openvino_int8(build, calib_records, batch_size, gate)
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


def _write_openvino_int8(build: BundleBuilder, calib_records, batch_size: int, gate: Gate) -> dict:
    """NNCF's INT8 IR, its float scope searched on the calibration records with ``gate`` (not the held-out ones)."""
    from ensrm.calibration.openvino_int8 import IR_FILE, quantize_openvino

    if not calib_records:
        raise ExportError("OpenVINO INT8 needs calibration records: pass `calibration=CALIB.jsonl`")
    records = calib_records[:MAX_CALIBRATION_RECORDS]
    encoder = encoder_for(build.staging, build.spec)
    batches = [feeds for _, feeds in feed_batches(encoder, records, batch_size)]
    reference = _fp32_scores(build, records, batch_size)

    def judge(backend) -> dict:
        return evaluate(reference, score_records(backend, encoder, records, batch_size),
                        stress_check(backend, build.spec), gate)

    return quantize_openvino(build.path(MODEL_FILES["fp32"]), build.path(IR_FILE), batches, judge,
                             threads=build.threads, progress=build.note)


def variant_name(precision: str, method: dict | None) -> str:
    """The file a variant was written to: its method's ``file`` (the OpenVINO IR), else the contract name."""
    return (method or {}).get("file") or MODEL_FILES[precision]


def _weights_file(name: str) -> str:
    """Where an OpenVINO IR keeps its weights: ``model.int4.xml`` -> ``model.int4.bin``."""
    return name.removesuffix(".xml") + ".bin"


def _remove(staging: Path, name: str) -> None:
    for path in (staging / name, staging / (name + ".data"), staging / _weights_file(name)):
        if path.exists():
            path.unlink()


def variant_runtime(precision: str, method: dict | None) -> str:
    """The runtime a variant is judged (and meant to run) on: its method's ``runtime``, else onnxruntime.

    >>> variant_runtime("bf16", {"runtime": "openvino 2026.4.1"})
    'openvino'
    """
    return str((method or {}).get("runtime", "onnxruntime")).split()[0].lower()


def gate_variant(staging: Path, spec: EnsembleSpec, model: Path, eval_records: list[dict], reference,
                 gate: Gate, threads: int | None = None, runtime: str = "onnxruntime", precision: str = "fp32",
                 properties: dict | None = None) -> dict:
    """Score ``eval_records`` and the stress battery with the graph ``model``; apply ``gate``.

    ``staging`` is the bundle whose tokenizer encodes the records; ``reference`` its fp32 scores.
    ``runtime`` (``onnxruntime`` or ``openvino``) runs it, with ``precision``'s hint on OpenVINO
    and the variant's own compile ``properties`` (those the runtime will use).
    """
    if runtime == "openvino":
        from ensrm.runtime.openvino_backend import OpenVINOBackend

        backend = OpenVINOBackend(model, threads=threads, precision=precision, cache=False, properties=properties)
    else:
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
    name = variant_name(precision, method)
    report = gate_variant(build.staging, build.spec, build.path(name), records, reference, gate, build.threads,
                          variant_runtime(precision, method), precision, (method or {}).get("compile"))
    if not report["passed"] and precision not in HINTED_PRECISIONS:  # bf16's file is model.onnx: kept
        _remove(build.staging, name)
    build.note(format_report(precision, report))
    return Variant.judged(precision, report, gate, method, file=name)


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
                   gates: dict[str, Gate] | None = None, batch_size: int = 32,
                   weights: WeightCompression | None = None) -> None:
    """The variants step: write, gate and record each precision variant in the bundle being written.

    A variant that fails its gate is recorded as rejected and its file deleted. ``weights`` sets
    NNCF's weight compression (``int4``, and ``int8`` with ``int8_mode="openvino-weights"``).
    """
    precisions = parse_precisions(precisions)
    if not precisions:
        return
    gates = {**DEFAULT_GATES, **(gates or {})}
    calib_records, eval_records = _evaluation_records(build, precisions, calibration, eval_on)
    reference = _fp32_scores(build, eval_records, batch_size)
    variants = []
    for precision in precisions:
        method = _write_variant(build, precision, int8_mode, calib_records, batch_size, gates[precision], weights)
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
                 progress: Progress | None = None, weights: WeightCompression | None = None) -> EnsembleSpec:
    """Add (or redo) precision variants of an existing bundle, atomically.

    (Needs a bundle and calibration records on disk, so not run by the doctests.)

    >>> spec = add_variants("bundles/rm", "int8", calibration="calib.jsonl")   # doctest: +SKIP
    >>> spec.variants["int8"].accepted                                         # doctest: +SKIP
    True
    >>> add_variants("bundles/rm", "int4", weights=WeightCompression(ratio=0.8)).variants["int4"].file  # doctest: +SKIP
    'model.int4.xml'
    """
    precisions = parse_precisions(precisions)
    from ensrm.calibration.openvino_int8 import IR_FILES

    redo = [MODEL_FILES[p] for p in precisions if p not in HINTED_PRECISIONS]
    redo += list(IR_FILES) if "int8" in precisions else []  # any INT8 form replaces the others
    redo += [_weights_file(MODEL_FILES["int4"])] if "int4" in precisions else []
    with BundleBuilder.update(bundle_dir, drop=redo, threads=threads, progress=progress) as build:
        build_variants(build, precisions, calibration=calibration, eval_on=eval_on, int8_mode=int8_mode, gates=gates,
                       weights=weights)
    return build.spec
