"""Per-head normalisation: measure each head's mean and std on reference records, bake them in.

The Bradley-Terry loss leaves each head's offset (and in practice its scale) arbitrary, so
``min`` and ``var`` over raw heads compare offsets, not opinions. After calibration the graph
computes ``heads = (raw - mu) / sigma``, and on the reference records each head has mean 0
and std 1. The constants live in every variant's graph, so every precision gets them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ensrm.builder import BundleBuilder
from ensrm.bundle import sha256_file
from ensrm.calibration.data import encoder_for, load_records, score_records
from ensrm.errors import ExportError
from ensrm.progress import Progress
from ensrm.spec import EnsembleSpec, Normalization


def measure_normalization(backend, encoder, records: list[dict], current: Normalization,
                          reference_sha256: str | None = None) -> Normalization:
    """Mean and population std of each raw head on ``records``, scored by ``backend``.

    The graph outputs normalised heads, so the raw ones are recovered with the constants
    it currently holds (``current``); calibrating twice gives the same result as once.
    """
    heads = score_records(backend, encoder, records).heads.astype(np.float64)  # [n, K]
    raw = heads * np.asarray(current.sigma) + np.asarray(current.mu)  # [n, K]
    if not np.isfinite(raw).all():
        raise ExportError("the model gave non-finite rewards on the reference records; cannot normalise")
    mu, sigma = raw.mean(axis=0), raw.std(axis=0)  # [K]
    flat = [k for k in range(len(sigma)) if not sigma[k] > 1e-12 * max(1.0, abs(mu[k]))]
    if flat:
        raise ExportError(f"head(s) {flat} give the same reward for every reference record (std 0); "
                          "normalisation would divide by zero. Use more varied reference records")
    return Normalization(mu=tuple(float(x) for x in mu), sigma=tuple(float(x) for x in sigma),
                         records=len(records), reference_sha256=reference_sha256)


def rewrite_constants(model_path: str | os.PathLike, normalization: Normalization) -> None:
    """Replace ``mu``/``sigma`` in one graph file (weights stay where they are), via a temp file."""
    from ensrm._optional import require
    from ensrm.models.graph import set_normalization

    model_path = Path(model_path)
    if model_path.suffix == ".xml":  # an OpenVINO IR variant (NNCF INT8, compressed weights)
        _rewrite_ir_constants(model_path, normalization)
        return
    onnx = require("onnx", "export")
    model = onnx.load(str(model_path), load_external_data=False)
    set_normalization(model, normalization.mu, normalization.sigma)
    tmp = model_path.with_name(f".{model_path.name}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, model_path)


def _rewrite_ir_constants(model_path: Path, normalization: Normalization) -> None:
    """Replace ``mu``/``sigma`` in an OpenVINO IR: its constants keep the ONNX initializers' names."""
    import numpy as np

    from ensrm._optional import require
    from ensrm.models.graph import MU, SIGMA
    from ensrm.runtime.openvino_backend import core

    ov = require("openvino", "openvino")
    model = core().read_model(str(model_path))
    values = {MU: normalization.mu, SIGMA: normalization.sigma}
    found = set()
    for op in model.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Constant" and name in values:
            new = np.asarray(values[name], dtype=np.float32)
            if tuple(op.get_output_partial_shape(0).to_shape()) != new.shape:
                raise ValueError(f"{model_path.name}: {name} has shape {op.get_output_partial_shape(0)}, "
                                 f"new values have {new.shape}")
            replacement = ov.op.Constant(new)
            replacement.set_friendly_name(name)
            op.output(0).replace(replacement.output(0))
            found.add(name)
    if found != set(values):
        raise ValueError(f"{model_path.name} lacks the normalisation constants {sorted(set(values) - found)}")
    tmp = model_path.with_name(f".{model_path.stem}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), model_path.with_suffix(".bin"))
    os.replace(tmp, model_path)


def normalize_staged(build: BundleBuilder, references: str | os.PathLike) -> None:
    """The normalisation step: measure on ``references`` with the fp32 graph, rewrite every graph.

    Leaves the records in ``build.references`` (the variant gates fall back to them).
    """
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    records = load_records(references, "reference", minimum=2)
    spec = build.spec
    backend = OnnxRuntimeBackend(build.path(spec.variants["fp32"].file), threads=build.threads)
    norm = measure_normalization(backend, encoder_for(build.staging, spec), records, spec.normalization,
                                 sha256_file(references))
    del backend
    for name in [v.file for v in spec.variants.values() if v.file] + [g.file for g in spec.fused.values()]:
        rewrite_constants(build.path(name), norm)
    build.spec, build.references = spec.replace(normalization=norm), records
    build.step(f"normalised {spec.num_heads} heads on {len(records)} reference records: "
               + ", ".join(f"{m:+.3g}/{s:.3g}" for m, s in zip(norm.mu, norm.sigma)))


def calibrate_bundle(bundle_dir: str | os.PathLike, references: str | os.PathLike, *,
                     threads: int | None = None, progress: Progress | None = None) -> EnsembleSpec:
    """Normalise the heads of an existing bundle on reference records, atomically.

    Every graph (fp32, the fused CPU graph and each accepted variant) gets the new constants; each variant's
    accuracy gate is run again on the reference records, because normalisation changes
    what ``min`` and ``uwo`` rank by. Engines built from the old graphs are dropped.

    (Needs a bundle and reference records on disk, so not run by the doctests.)

    >>> spec = calibrate_bundle("bundles/rm", "refs.jsonl")       # doctest: +SKIP
    >>> spec.normalization.records                                # doctest: +SKIP
    400
    """
    from ensrm.calibration.variants import regate_variants

    with BundleBuilder.update(bundle_dir, threads=threads, progress=progress) as build:
        normalize_staged(build, references)
        if build.spec.fused:  # same constants in the fused graphs; check them against model.onnx again
            from ensrm.export.fused import refresh_fused

            refresh_fused(build)
        regate_variants(build, build.references)
    return build.spec
