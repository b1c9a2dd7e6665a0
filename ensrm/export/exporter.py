"""``export_bundle``: source checkpoint(s) in, verified bundle directory out.

The export is the bundle builder's steps in order (:mod:`ensrm.builder`): load the source,
check it, trace and verify it, normalise, add the precision variants, write the manifest;
then, when asked, build TensorRT engines beside the finished bundle.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ensrm.builder import BundleBuilder
from ensrm.bundle import check_target
from ensrm.errors import ExportError
from ensrm.export.settings import ExportSettings
from ensrm.progress import Progress
from ensrm.spec import EnsembleSpec


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_bundle(sources: Sequence[str | Path], output: str | Path, settings: ExportSettings | None = None, *,
                  overwrite: bool = False, progress: Progress | None = _stderr, **options) -> EnsembleSpec:
    """Export a reward model (or a full ensemble) into a verified bundle directory.

    ``settings`` (:class:`~ensrm.export.settings.ExportSettings`) says how; ``options`` are its
    fields given as keywords (``export_bundle(src, out, pooling="mean")``), applied over
    ``settings`` when both are given. The bundle appears at ``output`` only once it is complete
    and verified; on any error nothing is left behind and an existing bundle is untouched (it is
    replaced only with ``overwrite``). ``normalize_on`` (JSONL prompt/response records) calibrates
    the per-head normalisation; ``precisions`` (``"fp16,int8"``) adds variants, each kept only if
    it passes its accuracy gate on held-out records (``eval_on``, else a quarter of
    ``calibration``). ``tensorrt_batches`` (``(1, 8, 32)``) then builds a TensorRT engine of each
    accepted fp16/int8 variant (needs a GPU and ``ensrm[tensorrt]``; checked before the export
    starts). ``cpu_graph`` (default) adds ``model.cpu.onnx``, onnxruntime's fused CPU form of the
    graph, verified against ``model.onnx`` (:mod:`ensrm.export.fused`); ``False`` skips the step.
    ``dtype`` (``bf16``, ``fp16``) loads the model in that dtype and keeps it in ``model.onnx``
    (:mod:`ensrm.export.dtypes`), verified against torch in the same dtype; such a graph gets no
    ``model.cpu.onnx`` and no precision variants. Before anything is written, the export is refused
    when its estimated peak memory exceeds what is available (:mod:`ensrm.export.memory`).

    (Not run by the doctests: it needs a checkpoint on disk and takes seconds to minutes.)

    >>> export_bundle(["checkpoints/rm"], "bundles/rm").num_heads     # doctest: +SKIP
    8
    >>> export_bundle(["checkpoints/rm"], "bundles/rm", ExportSettings(pooling="mean"))  # doctest: +SKIP
    """
    settings = (settings or ExportSettings()).replace(**options)
    if settings.dtype != "fp32":  # onnxruntime's CPU fusions start from an fp32 graph
        settings = settings.replace(cpu_graph=False)
    precisions = _check_options(output, overwrite, settings)
    from ensrm.export.memory import check_export_memory

    # before the staging directory and the weights: refuse what cannot fit, naming the numbers
    check_export_memory([Path(s) for s in sources if Path(s).is_dir()], settings.dtype, cpu_graph=settings.cpu_graph)
    steps = 5 + (settings.normalize_on is not None) + bool(precisions) + bool(settings.cpu_graph)
    with BundleBuilder.new(output, overwrite=overwrite, threads=settings.threads, progress=progress,
                           steps=steps) as build:
        _export_steps(build, sources, settings)
        _graph_steps(build, settings, precisions)
        build.step(f"wrote bundle {Path(output)}")
    _warn_uncalibrated(build.spec, progress)
    if settings.tensorrt_batches:
        from ensrm.export.tensorrt_engine import build_engines

        build_engines(output, batch_sizes=settings.tensorrt_batches, progress=progress)
    return build.spec


def _check_options(output, overwrite: bool, settings: ExportSettings) -> tuple[str, ...]:
    """Everything that can be refused before the slow work; returns the parsed precisions."""
    from ensrm.calibration.variants import parse_precisions

    check_target(output, overwrite)
    precisions = parse_precisions(settings.precisions)
    if precisions and settings.dtype != "fp32":
        raise ExportError(f"precision variants ({', '.join(precisions)}) are made from an fp32 graph; "
                          f"`dtype={settings.dtype!r}` writes a {settings.dtype} graph already: "
                          "export with one or the other")
    if settings.tensorrt_batches:
        from ensrm.export.tensorrt_engine import check_int8_mode, check_tensorrt, profile_ranges

        profile_ranges(settings.tensorrt_batches)
        if "int8" in precisions:
            check_int8_mode(settings.int8_mode)
        check_tensorrt()  # before the export, not after minutes of it
    return precisions


def _warn_uncalibrated(spec: EnsembleSpec, progress: Progress | None) -> None:
    if spec.num_heads > 1 and not spec.normalization.calibrated and progress:
        progress(f"warning: {spec.num_heads} heads without calibrated normalisation: ens_min and ens_uwo "
                 "compare raw head offsets; calibrate with `normalize_on=REFS.jsonl`")


def _graph_steps(build: BundleBuilder, settings: ExportSettings, precisions: tuple[str, ...]) -> None:
    """Normalise, add the fused CPU graph (after: it takes the constants), add the precision variants."""
    if settings.normalize_on is not None:
        from ensrm.calibration.normalize import normalize_staged

        normalize_staged(build, settings.normalize_on)
    if settings.cpu_graph:
        from ensrm.export.fused import fuse_cpu_graph

        # the fused graph is held to the tolerance the verification applied
        tolerance = settings.tolerance if settings.tolerance is not None else \
            build.spec.variants["fp32"].checks["tolerance"]
        fuse_cpu_graph(build, tolerance=tolerance)
    if precisions:
        from ensrm.calibration.variants import build_variants

        build_variants(build, precisions, calibration=settings.calibration, eval_on=settings.eval_on,
                       int8_mode=settings.int8_mode, gates=settings.gates)


def _export_steps(build: BundleBuilder, sources, settings: ExportSettings) -> None:
    """Load the source, check it, trace and verify it: the steps only a new bundle has."""
    from ensrm.export.checks import check_source
    from ensrm.export.sources import load_source
    from ensrm.export.trace import padding_side_for, spec_for, trace_and_verify

    source = load_source(sources, heads=settings.heads, tokenizer=settings.tokenizer, pooling=settings.pooling,
                         max_length=settings.max_length, attn_implementation=settings.attn_implementation,
                         trust_remote_code=settings.trust_remote_code, dtype=settings.dtype)
    spec = spec_for(source, uwo_lambda=settings.uwo_lambda,
                    padding_side=padding_side_for(source, settings.padding_side))
    for note in check_source(source.module, source.tokenizer, spec):  # torch and ONNX would agree on garbage too
        build.note(note)
    build.step(f"loaded {source.kind} {source.model_type}: {source.num_heads} heads, {source.architecture}, "
               f"pooling {source.pooling}, max length {source.max_length}, {source.dtype}")
    trace_and_verify(build, source, spec, tolerance=settings.tolerance)
