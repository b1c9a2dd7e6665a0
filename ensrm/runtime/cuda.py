"""The little of CUDA the TensorRT backend needs, through cuda-python (no torch, no pycuda)."""

from __future__ import annotations

from ensrm._optional import require
from ensrm.errors import ProviderError


def cudart():
    """cuda-python's runtime module under its current or its older import path."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
        return runtime
    except ImportError:
        return require("cuda.cudart", "tensorrt")


def check(result):
    """Unwrap a cuda-python ``(error, *values)`` tuple, raising on any error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ProviderError(f"CUDA call failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """Number of visible CUDA GPUs; raises :class:`ProviderError` when there is none."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise ProviderError(f"no CUDA GPU is visible ({err}); TensorRT needs an NVIDIA GPU")
    return count


def compute_capability(device: int = 0) -> tuple[int, int]:
    """``(major, minor)`` of a GPU, e.g. ``(9, 0)`` for an H100."""
    props = check(cudart().cudaGetDeviceProperties(device))
    return int(props.major), int(props.minor)
