"""The small protocol every runtime backend implements, and the one place a backend is chosen.

Each backend lives in its own module (``onnxruntime_backend``, ``tensorrt_backend``, ...) with
a ``load_backend(config, spec, precision)`` function; adding a runtime is one module and one
line in :data:`BACKEND_MODULES`.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ensrm.runtime.config import ScorerConfig
    from ensrm.spec import EnsembleSpec

#: The module implementing each runtime; each has ``load_backend(config, spec, precision) -> Backend``.
BACKEND_MODULES = {
    "onnxruntime": "ensrm.runtime.onnxruntime_backend",
    "openvino": "ensrm.runtime.openvino_backend",
    "tensorrt": "ensrm.runtime.tensorrt_backend",
}


class BackendFallbackWarning(RuntimeWarning):
    """``backend="auto"`` chose OpenVINO but it could not compile the graph; onnxruntime runs instead."""


class Backend(Protocol):
    """Runs one bundle graph: int64 feeds by input name in, float32 outputs by name out.

    ``description`` says what runs (runtime, device, file); ``model_path`` is the file loaded;
    ``threads`` the CPU threads it runs on, where it has a say (0: the runtime's default);
    ``concurrency`` how many calls from different threads run side by side to good effect
    (OpenVINO's streams; 1 where concurrent calls would only share the same threads).
    """

    input_names: tuple[str, ...]
    description: str
    model_path: Path
    concurrency: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on one batch; ``feeds`` holds exactly ``input_names``."""
        ...


def resolve_backend(config: ScorerConfig, spec: EnsembleSpec | None = None, precision: str | None = None) -> str:
    """The runtime to run ``precision`` of the bundle on: the one ``config.backend`` names, or for ``auto``:

    - onnxruntime when execution providers are given (CUDA, TensorRT EP: OpenVINO here is CPU only),
      for ``fp16`` (a GPU variant; OpenVINO's CPU plugin would compute it in f32) and for an
      ``int8`` file made for onnxruntime (its ``method`` names no other runtime);
    - OpenVINO when it is installed (faster CPU kernels than onnxruntime's CPU provider, and the only
      runtime with ``bf16`` and ``int4``, and with an OpenVINO INT8 IR), else onnxruntime (which
      refuses those by naming ``ensrm[openvino]``).

    >>> from ensrm.runtime.config import ScorerConfig
    >>> resolve_backend(ScorerConfig("b", providers=["cuda"]))
    'onnxruntime'
    >>> resolve_backend(ScorerConfig("b", backend="tensorrt"))
    'tensorrt'
    """
    if config.backend != "auto":
        return config.backend
    if config.providers and any(str(p[0] if isinstance(p, tuple) else p).lower() not in ("cpu", "cpuexecutionprovider")
                                for p in config.providers):
        return "onnxruntime"
    if precision == "fp16":
        return "onnxruntime"
    if precision == "int8" and spec is not None:  # int4 is OpenVINO's alone: no check needed
        variant = spec.variants.get("int8")
        if variant is None or (variant.method or {}).get("runtime", "onnxruntime").split()[0].lower() != "openvino":
            return "onnxruntime"
    from ensrm.runtime.openvino_backend import installed

    return "openvino" if installed() else "onnxruntime"


def load_backend(config: ScorerConfig, spec: EnsembleSpec, precision: str) -> Backend:
    """Open the bundle's ``precision`` graph on the runtime ``config`` asks for (:func:`resolve_backend`).

    With ``backend="auto"``, a graph OpenVINO cannot compile runs on onnxruntime after one
    :class:`BackendFallbackWarning` naming the file and OpenVINO's message; asked for by name,
    the compile error is raised.
    """
    name = resolve_backend(config, spec, precision)
    if name not in BACKEND_MODULES:
        raise ValueError(f"backend {name!r} is not available in this version of ensrm; "
                         f"available: {', '.join(BACKEND_MODULES)}")
    module = importlib.import_module(BACKEND_MODULES[name])
    if config.backend != "auto" or name != "openvino":
        return module.load_backend(config, spec, precision)
    try:
        return module.load_backend(config, spec, precision)
    except module.CompileError as exc:
        if precision not in ("fp32", "int8") or (precision == "int8" and not _onnxruntime_reads(spec)):
            raise
        warnings.warn(f"{exc}; backend auto runs onnxruntime instead", BackendFallbackWarning, stacklevel=4)
        return importlib.import_module(BACKEND_MODULES["onnxruntime"]).load_backend(config, spec, precision)


def _onnxruntime_reads(spec: EnsembleSpec) -> bool:
    variant = spec.variants.get("int8")
    return variant is not None and (variant.file or "").endswith(".onnx")
