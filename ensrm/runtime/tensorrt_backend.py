"""TensorRT backend: a serialized engine in, numpy in and numpy out (cuda-python, no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.errors import BundleError, InputError
from ensrm.runtime.cuda import check, cudart
from ensrm.spec import OUTPUT_NAMES

ENGINE_DIR = "engines"


def check_tensorrt():
    """Import tensorrt and check a CUDA GPU is visible; raise one error naming what is missing.

    (Not run by the doctests: it needs a CUDA GPU with TensorRT.)

    >>> trt = check_tensorrt()                        # doctest: +SKIP
    """
    from ensrm.runtime.cuda import device_count

    trt = require("tensorrt", "tensorrt")
    device_count()  # raises naming cuda-python or the missing GPU
    return trt


def engine_name(precision: str, compute_capability: tuple[int, int], trt_version: str) -> str:
    """File name recording what an engine is bound to.

    >>> engine_name("int8", (9, 0), "10.13.0.35")
    'model.int8.sm90.trt10.13.0.engine'
    """
    version = ".".join(trt_version.split(".")[:3])
    return f"model.{precision}.sm{compute_capability[0]}{compute_capability[1]}.trt{version}.engine"


def engine_path(bundle_dir: str | os.PathLike, precision: str) -> Path:
    """Where the engine of ``precision`` for this machine's GPU and TensorRT lives in a bundle."""
    from ensrm.runtime.cuda import compute_capability

    trt = check_tensorrt()
    return Path(bundle_dir) / ENGINE_DIR / engine_name(precision, compute_capability(), trt.__version__)


class TensorRTBackend:
    """Runs a bundle's engine on the GPU; picks the optimization profile that covers each batch.

    (Needs a GPU and a built engine, so not run by the doctests.)

    >>> backend = TensorRTBackend("bundles/rm/engines/model.fp16.sm90.trt10.13.0.engine")   # doctest: +SKIP
    >>> backend.run({"input_ids": ids, "attention_mask": mask})["ens_uwo"]                  # doctest: +SKIP
    """

    def __init__(self, engine_path: str | os.PathLike):
        trt = require("tensorrt", "tensorrt")
        self._rt = cudart()
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise BundleError(f"TensorRT engine not found: {engine_path}; build it with ensrm build-engine")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{engine_path.name} is not an engine for this GPU and TensorRT {trt.__version__}; "
                              "rebuild it with ensrm build-engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        first = self.input_names[0]
        # [(max batch of the profile, profile index)], to choose the smallest profile that fits
        self._profiles = sorted((self.engine.get_tensor_profile_shape(first, k)[2][0], k)
                                for k in range(self.engine.num_optimization_profiles))
        self._profile = None
        self._stream = check(self._rt.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.model_path = engine_path
        self.description = f"TensorRT {trt.__version__} ({engine_path.name})"
        self.concurrency = 1  # one execution context and stream

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                check(self._rt.cudaFree(pointer))
            pointer = check(self._rt.cudaMalloc(nbytes))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = feeds["input_ids"].shape[0]
        fitting = [k for high, k in self._profiles if high >= batch]
        if not fitting:
            raise InputError(f"batch {batch} exceeds the engine's largest profile ({self._profiles[-1][0]}); "
                             "split it (Scorer max_batch_size) or rebuild with larger --batch-sizes")
        if fitting[0] != self._profile:
            self.context.set_optimization_profile_async(fitting[0], self._stream)
            self._profile = fitting[0]
        h2d, d2h = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=np.int64)  # [batch, seq]
            pointer = self._buffer(name, array.nbytes)
            check(self._rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self._stream))
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, pointer)
        outputs = {}
        for name in OUTPUT_NAMES:
            outputs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32)
            self.context.set_tensor_address(name, self._buffer(name, max(outputs[name].nbytes, 4)))
        if not self.context.execute_async_v3(self._stream):
            raise BundleError("TensorRT execution failed (see the TensorRT log)")
        for name, array in outputs.items():
            check(self._rt.cudaMemcpyAsync(array.ctypes.data, self._buffers[name][0], array.nbytes, d2h,
                                           self._stream))
        check(self._rt.cudaStreamSynchronize(self._stream))
        return outputs

    def __del__(self):
        for pointer, _ in getattr(self, "_buffers", {}).values():
            self._rt.cudaFree(pointer)


def load_backend(config, spec, precision: str) -> TensorRTBackend:
    """The bundle's TensorRT engine for ``precision``, built for this GPU and TensorRT by ``ensrm build-engine``."""
    from ensrm.bundle import variant_file

    variant_file(config.bundle_dir, spec, precision)  # an engine is only ever built from an accepted variant
    # a half-precision model.onnx (ens-export --dtype) is built into an engine named by its dtype
    dtype = spec.dtype if precision == "fp32" else precision
    return TensorRTBackend(engine_path(config.bundle_dir, dtype))
