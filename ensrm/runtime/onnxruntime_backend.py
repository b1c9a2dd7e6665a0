"""onnxruntime backend: session creation, execution providers, thread settings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.errors import ProviderError
from ensrm.spec import OUTPUT_NAMES

# Short names users type, mapped to onnxruntime's provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, in its order of preference."""
    return list(require("onnxruntime", "core").get_available_providers())


def resolve_providers(providers: Sequence[str | tuple[str, dict]] | None) -> list:
    """Expand aliases and refuse providers this build lacks (never fall back silently).

    >>> resolve_providers(["cpu"])
    ['CPUExecutionProvider']
    """
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = available_providers()
    resolved = []
    for entry in providers:
        name, options = (entry if isinstance(entry, tuple) else (entry, None))
        name = PROVIDER_ALIASES.get(name.lower(), name)
        if name not in available:
            raise ProviderError(
                f"execution provider {name} is not available in this onnxruntime build; "
                f"available: {', '.join(available)}"
                + ("; install onnxruntime-gpu (pip install 'ensrm[gpu]')" if name != "CPUExecutionProvider" else "")
            )
        resolved.append((name, options) if options else name)
    return resolved


def with_tensorrt_cache(providers, cache_dir: str | os.PathLike):
    """Give a bare TensorRT execution provider an engine and timing cache in ``cache_dir``.

    Without a cache the provider rebuilds its engines (minutes) in every new process.

    >>> with_tensorrt_cache(["tensorrt", "cuda"], "/tmp/c")[0][1]["trt_engine_cache_enable"]
    'True'
    """
    if providers is None or isinstance(providers, str):
        providers = [providers] if providers else providers
    if not providers:
        return providers
    out = []
    for entry in providers:
        if isinstance(entry, str) and PROVIDER_ALIASES.get(entry.lower(), entry) == "TensorrtExecutionProvider":
            path = str(cache_dir)
            entry = (entry, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": path,
                             "trt_timing_cache_enable": "True", "trt_timing_cache_path": path})
        out.append(entry)
    return out


def session_options(threads: int | None = None, spinning: bool | None = None):
    """Session options: full graph optimisation, ``threads`` intra-op threads, optional spinning.

    Spinning keeps idle worker threads busy-waiting for the next op: faster for a single
    scorer, wasteful when several processes share the cores (turn it off there).
    """
    ort = require("onnxruntime", "core")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    # The memory pattern pre-plans one block per input shape: on MiniLM at batch 32 x 128 it
    # lifts peak RSS from +260 to +430 MB with no measurable speed gain (benchmarks/NOTES.md).
    options.enable_mem_pattern = False
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def create_session(path: str | os.PathLike, providers=None, threads: int | None = None,
                   spinning: bool | None = None):
    """An ``InferenceSession`` on ``path`` with ensrm's defaults (CPU unless told otherwise)."""
    ort = require("onnxruntime", "core")
    return ort.InferenceSession(str(path), sess_options=session_options(threads, spinning),
                                providers=resolve_providers(providers))


class OnnxRuntimeBackend:
    """Runs a bundle graph in onnxruntime, feeding only the inputs the graph declares."""

    def __init__(self, path: str | Path, providers=None, threads: int | None = None,
                 spinning: bool | None = None):
        self.session = create_session(path, providers, threads, spinning)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.providers = tuple(self.session.get_providers())
        self.description = f"onnxruntime {self.providers[0]} ({Path(path).name})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(list(OUTPUT_NAMES), {name: feeds[name] for name in self.input_names})
        return dict(zip(OUTPUT_NAMES, values))
