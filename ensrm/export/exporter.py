"""``export_bundle``: source checkpoint(s) in, verified bundle directory out.

The export is the bundle builder's steps in order (:mod:`ensrm.builder`): load the source,
check it, trace and verify it, normalise, add the precision variants, write the manifest;
then, when asked, build TensorRT engines beside the finished bundle.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ensrm.builder import BundleBuilder
from ensrm.bundle import check_target
from ensrm.errors import ExportError
from ensrm.spec import EnsembleSpec

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_bundle(
    sources: Sequence[str | Path],
    output: str | Path,
    *,
    heads: str | Path | None = None,
    tokenizer: str | Path | None = None,
    pooling: str | None = None,
    uwo_lambda: float = 0.5,
    max_length: int | None = None,
    padding_side: str | None = None,
    tolerance: float | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    attn_implementation: str = "eager",
    trust_remote_code: bool = False,
    threads: int | None = None,
    normalize_on: str | Path | None = None,
    precisions=(),
    calibration: str | Path | None = None,
    eval_on: str | Path | None = None,
    int8_mode: str = "static",
    gates: dict | None = None,
    tensorrt_batches: Sequence[int] | None = None,
    cpu_graph: bool = True,
    progress: Progress | None = _stderr,
) -> EnsembleSpec:
    """Export a reward model (or a full ensemble) into a verified bundle directory.

    The bundle appears at ``output`` only once it is complete and verified; on any error
    nothing is left behind and an existing bundle is untouched. ``tokenizer`` is a directory to
    take the tokenizer from when the source has none (e.g. its base model); it must fit the model.
    ``normalize_on`` (JSONL prompt/response records) calibrates the per-head normalisation;
    ``precisions`` (``"fp16,int8"``) adds variants, each kept only if it passes its accuracy gate
    on held-out records (``eval_on``, else a quarter of ``calibration``). ``tensorrt_batches``
    (``(1, 8, 32)``) then builds a TensorRT engine of each accepted fp16/int8 variant (needs a GPU
    and ``ensrm[tensorrt]``; checked before the export starts). ``cpu_graph`` (default) adds
    ``model.cpu.onnx``, onnxruntime's fused CPU form of the graph, verified against ``model.onnx``
    (:mod:`ensrm.export.fused`); ``False`` skips the step.

    ``dtype`` (``fp32``, ``bf16``, ``fp16``) is what the model is loaded in and ``model.onnx`` holds
    (:mod:`ensrm.export.dtypes`); the graph is verified against torch in that dtype within
    ``tolerance`` (default: 1e-4 for fp32; for bf16/fp16 a share of the largest head, recorded in
    the manifest). A half-precision graph gets no ``model.cpu.onnx`` and no further precision variants.

    >>> export_bundle(["checkpoints/rm"], "bundles/rm").num_heads     # doctest: +SKIP
    8
    """
    precisions = _check_options(output, overwrite, uwo_lambda, precisions, int8_mode, tensorrt_batches, dtype)
    from ensrm.export.memory import check_export_memory

    # before the staging directory and the weights: refuse what cannot fit, naming the numbers
    check_export_memory([Path(s) for s in sources if Path(s).is_dir()], dtype)
    if dtype != "fp32":
        # onnxruntime's CPU fusions and the fp16/int8 converters start from an fp32 graph
        cpu_graph = False
    elif tolerance is None:
        tolerance = 1e-4
    steps = 4 + (normalize_on is not None) + bool(precisions) + bool(cpu_graph)
    with BundleBuilder.new(output, overwrite=overwrite, threads=threads, progress=progress, steps=steps) as build:
        _export_steps(build, sources, heads=heads, tokenizer=tokenizer, pooling=pooling, max_length=max_length,
                      attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                      uwo_lambda=uwo_lambda, padding_side=padding_side, tolerance=tolerance, dtype=dtype)
        _graph_steps(build, normalize_on=normalize_on, cpu_graph=cpu_graph, tolerance=tolerance,
                     precisions=precisions, calibration=calibration, eval_on=eval_on, int8_mode=int8_mode, gates=gates)
        build.step(f"wrote bundle {Path(output)}")
    _warn_uncalibrated(build.spec, progress)
    if tensorrt_batches:
        from ensrm.export.tensorrt_engine import build_engines

        build_engines(output, batch_sizes=tensorrt_batches, progress=progress)
    return build.spec


def _check_options(output, overwrite: bool, uwo_lambda: float, precisions, int8_mode: str,
                   tensorrt_batches, dtype: str = "fp32") -> tuple[str, ...]:
    """Everything that can be refused before the slow work; returns the parsed precisions."""
    from ensrm.calibration.variants import parse_precisions
    from ensrm.export.dtypes import check_dtype

    if uwo_lambda < 0:
        raise ExportError(f"`uwo_lambda` must be >= 0, got {uwo_lambda}")
    check_dtype(dtype)
    check_target(output, overwrite)
    precisions = parse_precisions(precisions)
    if precisions and dtype != "fp32":
        raise ExportError(f"precision variants ({', '.join(precisions)}) are made from an fp32 graph; "
                          f"`dtype={dtype!r}` writes a {dtype} graph already: export with one or the other")
    if tensorrt_batches:
        from ensrm.export.tensorrt_engine import check_int8_mode, check_tensorrt, profile_ranges

        profile_ranges(tensorrt_batches)
        if "int8" in precisions:
            check_int8_mode(int8_mode)
        check_tensorrt()  # before the export, not after minutes of it
    return precisions


def _warn_uncalibrated(spec: EnsembleSpec, progress: Progress | None) -> None:
    if spec.num_heads > 1 and not spec.normalization.calibrated and progress:
        progress(f"warning: {spec.num_heads} heads without calibrated normalisation: ens_min and ens_uwo "
                 "compare raw head offsets; calibrate with `normalize_on=REFS.jsonl`")


def _graph_steps(build: BundleBuilder, *, normalize_on, cpu_graph: bool, tolerance: float, precisions, calibration,
                 eval_on, int8_mode: str, gates) -> None:
    """Normalise, add the fused CPU graph (after: it takes the constants), add the precision variants."""
    if normalize_on is not None:
        from ensrm.calibration.normalize import normalize_staged

        normalize_staged(build, normalize_on)
    if cpu_graph:
        from ensrm.export.fused import fuse_cpu_graph

        fuse_cpu_graph(build, tolerance=tolerance)
    if precisions:
        from ensrm.calibration.variants import build_variants

        build_variants(build, precisions, calibration=calibration, eval_on=eval_on, int8_mode=int8_mode, gates=gates)


def _export_steps(build: BundleBuilder, sources, *, heads, tokenizer, pooling, max_length, attn_implementation,
                  trust_remote_code, uwo_lambda, padding_side, tolerance, dtype) -> None:
    """Load the source, check it, trace and verify it: the steps only a new bundle has."""
    from ensrm.export.checks import check_source
    from ensrm.export.sources import load_source
    from ensrm.export.trace import padding_side_for, spec_for, trace_and_verify

    source = load_source(sources, heads=heads, tokenizer=tokenizer, pooling=pooling, max_length=max_length,
                         attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, dtype=dtype)
    spec = spec_for(source, uwo_lambda=uwo_lambda, padding_side=padding_side_for(source, padding_side))
    for note in check_source(source.module, source.tokenizer, spec):  # torch and ONNX would agree on garbage too
        build.note(note)
    build.step(f"loaded {source.kind} {source.model_type}: {source.num_heads} heads, {source.architecture}, "
               f"pooling {source.pooling}, max length {source.max_length}, {dtype}")
    trace_and_verify(build, source, spec, tolerance=tolerance)
