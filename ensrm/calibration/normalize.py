"""Per-head normalisation: measure each head's mean and std on reference records, bake them in.

The Bradley-Terry loss leaves each head's offset (and in practice its scale) arbitrary, so
``min`` and ``var`` over raw heads compare offsets, not opinions. After calibration the graph
computes ``heads = (raw - mu) / sigma``, and on the reference records each head has mean 0
and std 1. The constants live in every variant's graph, so every precision gets them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensrm.bundle import bundle_file, load_spec, sha256_file, staged_bundle, write_manifest
from ensrm.calibration.data import encoder_for, load_records, score_records
from ensrm.errors import ExportError
from ensrm.runtime.tensorrt_backend import ENGINE_DIR  # engines are stale once the graphs change
from ensrm.spec import MANIFEST_NAME, EnsembleSpec, Normalization

Progress = Callable[[str], None]


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
    from ensrm.export.graph import set_normalization

    onnx = require("onnx", "export")
    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    set_normalization(model, normalization.mu, normalization.sigma)
    tmp = model_path.with_name(f".{model_path.name}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, model_path)


def normalize_staged(staging: Path, spec: EnsembleSpec, references: str | os.PathLike,
                     threads: int | None = None) -> tuple[EnsembleSpec, list[dict]]:
    """Calibrate the fp32 graph of a bundle being written; return the new spec and the records."""
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    records = load_records(references, "reference", minimum=2)
    backend = OnnxRuntimeBackend(staging / spec.variants["fp32"]["file"], threads=threads)
    norm = measure_normalization(backend, encoder_for(staging, spec), records, spec.normalization,
                                 sha256_file(references))
    del backend
    for variant in spec.variants.values():
        if variant.get("file"):
            rewrite_constants(staging / variant["file"], norm)
    return spec.replace(normalization=norm), records


def calibrate_bundle(bundle_dir: str | os.PathLike, references: str | os.PathLike, *,
                     threads: int | None = None, progress: Progress | None = None) -> EnsembleSpec:
    """Normalise the heads of an existing bundle on reference records, atomically.

    Every graph (fp32 and each accepted variant) gets the new constants; each variant's
    accuracy gate is run again on the reference records, because normalisation changes
    what ``min`` and ``uwo`` rank by. Engines built from the old graphs are dropped.

    >>> spec = calibrate_bundle("bundles/rm", "refs.jsonl")       # doctest: +SKIP
    >>> spec.normalization.records
    400
    """
    from ensrm.calibration.variants import regate_variants

    bundle_dir = Path(bundle_dir)
    spec = load_spec(bundle_dir, verify="sha256")
    with staged_bundle(bundle_dir, overwrite=True) as staging:
        for name in spec.files:
            if name.split("/")[0] == ENGINE_DIR:
                continue
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(bundle_file(bundle_dir, name), target)
        spec, records = normalize_staged(staging, spec, references, threads)
        if progress:
            progress(f"normalised {spec.num_heads} heads on {len(records)} reference records: "
                     + ", ".join(f"{m:+.3g}/{s:.3g}" for m, s in zip(spec.normalization.mu, spec.normalization.sigma)))
        spec = regate_variants(staging, spec, records, threads=threads, progress=progress)
        spec = write_manifest(staging, spec)
    return spec


def _link_or_copy(source: Path, target: Path) -> None:
    """Copy an unchanged file into the staging directory.

    Not a hard link, though nothing is written in place: onnx refuses external weight files
    with several links (its guard against hard-link attacks).
    """
    if source.name != MANIFEST_NAME:
        shutil.copy2(source, target)
