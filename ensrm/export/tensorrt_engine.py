"""Build a strongly typed TensorRT engine from one of a bundle's ONNX variants (needs a GPU).

TensorRT 11 builds only strongly typed networks: each layer's precision comes from the ONNX
file (fp16 casts, INT8 Q/DQ pairs), not from builder flags, which is why the variants are
made and gated on the CPU first. An engine is specific to a GPU architecture and a TensorRT
version, so its file name records both:
``BUNDLE/engines/model.<precision>.sm<major><minor>.trt<version>.engine``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ensrm.bundle import bundle_file, load_spec
from ensrm.errors import BundleError, ExportError
from ensrm.runtime.tensorrt_backend import ENGINE_DIR, check_tensorrt, engine_name

TIMING_CACHE = "timing.cache"


def profile_ranges(batch_sizes: Sequence[int]) -> list[tuple[int, int]]:
    """One optimization profile per asked batch size, covering the batches up to it.

    >>> profile_ranges([32, 1, 8])
    [(1, 1), (2, 8), (9, 32)]
    """
    sizes = sorted(set(int(b) for b in batch_sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    lows = [1] + [s + 1 for s in sizes[:-1]]
    return list(zip(lows, sizes))


def check_int8_mode(mode: str, where: str = "") -> None:
    """Refuse an INT8 mode TensorRT cannot build: only ``static`` writes its explicit Q/DQ pairs.

    ``mode`` is an ``--int8-mode`` or a variant's recorded method (``static-qdq``, ``per-token``,
    ``dynamic``); the others use onnxruntime's own integer ops.

    >>> check_int8_mode("per-token")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ensrm.errors.ExportError: TensorRT builds only static INT8 (explicit Q/DQ pairs); ...
    """
    if mode not in ("static", "static-qdq"):
        raise ExportError(f"{where}TensorRT builds only static INT8 (explicit Q/DQ pairs); the {mode} graph uses "
                          "onnxruntime's own integer ops. Quantize with --int8-mode static for TensorRT")


def build_engine(bundle_dir: str | os.PathLike, precision: str = "fp16", *, batch_sizes: Sequence[int] = (1, 8, 32),
                 timing_cache: str | os.PathLike | None = None, workspace_gib: float = 4.0,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Build and save the engine of one ONNX variant; return its path.

    Sequence lengths 1 to the bundle's maximum are covered by every profile; each profile is
    tuned for its largest batch at the maximum length. The timing cache persists between
    builds (and bundles), so a rebuild skips most of the kernel timing.

    (Not run by the doctests: it needs a GPU with TensorRT and a bundle.)

    >>> build_engine("bundles/rm", "int8", batch_sizes=(1, 16, 64))     # doctest: +SKIP
    PosixPath('bundles/rm/engines/model.int8.sm90.trt10.13.0.engine')
    """
    from ensrm.runtime.cuda import compute_capability

    spec = load_spec(bundle_dir, verify="sha256")
    variant = spec.variants.get(precision)
    if variant is None or not variant.usable:
        raise BundleError(f"bundle {bundle_dir} has no accepted {precision} variant to build an engine from")
    if precision == "int8":
        check_int8_mode((variant.method or {}).get("method", "static-qdq"), f"bundle {bundle_dir}: ")
    trt = check_tensorrt()
    onnx_path = bundle_file(bundle_dir, variant.file)
    out_dir = Path(bundle_dir) / ENGINE_DIR
    out_dir.mkdir(exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache else out_dir / TIMING_CACHE

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for low, high in profile_ranges(batch_sizes):
        profile = builder.create_optimization_profile()
        for name in spec.inputs:
            profile.set_shape(name, (low, 1), (high, spec.max_length), (high, spec.max_length))
        config.add_optimization_profile(profile)
    dtype = graph_dtype(spec, precision)
    if progress:
        progress(f"building the {dtype} TensorRT {trt.__version__} engine for batches "
                 f"{', '.join(map(str, sorted(set(batch_sizes))))} x lengths 1..{spec.max_length}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    target = out_dir / engine_name(dtype, compute_capability(), trt.__version__)
    _write_atomic(target, bytes(serialized))
    _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return target


def build_engines(bundle_dir: str | os.PathLike, precisions: Sequence[str] = ("fp16", "int8"), *,
                  batch_sizes: Sequence[int] = (1, 8, 32), progress: Callable[[str], None] | None = None) -> list[Path]:
    """Build an engine for each of ``precisions`` that the bundle has accepted; return their paths.

    The last step of an export with ``tensorrt_batches``; a precision the bundle lacks or
    rejected is skipped (its gate has already said why).

    (Not run by the doctests: it needs a GPU with TensorRT and a bundle.)

    >>> build_engines("bundles/rm", batch_sizes=(1, 8, 32))     # doctest: +SKIP
    [PosixPath('bundles/rm/engines/model.fp16.sm90.trt10.13.0.engine')]
    """
    spec = load_spec(bundle_dir, verify="size")
    usable = spec.usable_precisions
    if spec.dtype != "fp32":  # model.onnx is a half-precision graph already: the engine TensorRT users want
        precisions = ("fp32", *precisions)
    engines = []
    for precision in (p for p in precisions if p in usable):
        engines.append(build_engine(bundle_dir, precision, batch_sizes=batch_sizes, progress=progress))
        if progress:
            progress(f"engine {engines[-1]}")
    return engines


def graph_dtype(spec, precision: str) -> str:
    """The dtype of the graph the engine of ``precision`` is built from (what engines are named by):
    a half-precision ``model.onnx`` (``ens-export --dtype``) names its dtype, a variant its precision."""
    return spec.dtype if precision == "fp32" else precision


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
