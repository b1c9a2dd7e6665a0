"""The small protocol every runtime backend implements, and the one place a backend is chosen.

Each backend lives in its own module (``onnxruntime_backend``, ``tensorrt_backend``, ...) with
a ``load_backend(config, spec, precision)`` function; adding a runtime is one module and one
line in :data:`BACKEND_MODULES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ensrm.runtime.config import ScorerConfig
    from ensrm.spec import EnsembleSpec

#: The module implementing each runtime; each has ``load_backend(config, spec, precision) -> Backend``.
BACKEND_MODULES = {
    "onnxruntime": "ensrm.runtime.onnxruntime_backend",
    "tensorrt": "ensrm.runtime.tensorrt_backend",
}


class Backend(Protocol):
    """Runs one bundle graph: int64 feeds by input name in, float32 outputs by name out.

    ``description`` says what runs (runtime, device, file); ``model_path`` is the file loaded.
    """

    input_names: tuple[str, ...]
    description: str
    model_path: Path

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on one batch; ``feeds`` holds exactly ``input_names``."""
        ...


def resolve_backend(config: ScorerConfig) -> str:
    """The runtime ``config.backend`` names; ``auto`` is onnxruntime (the runtime every install has).

    >>> from ensrm.runtime.config import ScorerConfig
    >>> resolve_backend(ScorerConfig("b"))
    'onnxruntime'
    """
    return "onnxruntime" if config.backend == "auto" else config.backend


def load_backend(config: ScorerConfig, spec: EnsembleSpec, precision: str) -> Backend:
    """Open the bundle's ``precision`` graph on the runtime ``config`` asks for."""
    name = resolve_backend(config)
    if name not in BACKEND_MODULES:
        raise ValueError(f"backend {name!r} is not available in this version of ensrm; "
                         f"available: {', '.join(BACKEND_MODULES)}")
    return importlib.import_module(BACKEND_MODULES[name]).load_backend(config, spec, precision)
