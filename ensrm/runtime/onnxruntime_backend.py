"""onnxruntime backend: session creation, execution providers, thread settings."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensrm._optional import require
from ensrm.bundle import bundle_file, variant_file, verify_files
from ensrm.errors import BundleError, EnsrmError, ProviderError
from ensrm.spec import HINTED_PRECISIONS, MODEL_FILES, OUTPUT_NAMES, EnsembleSpec, FusedGraph

if TYPE_CHECKING:
    from ensrm.runtime.config import ScorerConfig

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


class FusedGraphWarning(RuntimeWarning):
    """The bundle's fused CPU graph is there but cannot be used here; the portable graph runs instead."""


class OnnxRuntimeBackend:
    """Runs a bundle graph in onnxruntime, feeding only the inputs the graph declares."""

    def __init__(self, path: str | Path, providers=None, threads: int | None = None,
                 spinning: bool | None = None):
        self.session = create_session(path, providers, threads, spinning)
        self.model_path = Path(path)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.providers = tuple(self.session.get_providers())
        #: intra-op threads (0: onnxruntime's default, one per core)
        self.threads = self.session.get_session_options().intra_op_num_threads
        self.description = f"onnxruntime {self.providers[0]} ({self.model_path.name})"
        self.concurrency = 1  # one session's intra-op pool: concurrent runs share its threads

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(list(OUTPUT_NAMES), {name: feeds[name] for name in self.input_names})
        return dict(zip(OUTPUT_NAMES, values))


def load_backend(config: ScorerConfig, spec: EnsembleSpec, precision: str) -> OnnxRuntimeBackend:
    """onnxruntime on the bundle's ``precision`` graph, or on its fused CPU form where that fits.

    On the CPU provider an fp32 scorer runs ``model.cpu.onnx`` (verified against ``model.onnx``
    at export) when the bundle has one and ``config.fused`` is true; another provider, or a
    damaged, missing or unloadable file, runs ``model.onnx`` with one :class:`FusedGraphWarning`.
    """
    bundle_dir = config.bundle_dir
    if precision in HINTED_PRECISIONS:
        raise ProviderError(f"onnxruntime has no {precision} CPU kernels; {precision} runs on OpenVINO: "
                            f"pip install 'ensrm[openvino]' and use backend='openvino' (or 'auto')")
    model_path = variant_file(bundle_dir, spec, precision)
    if not model_path.name.endswith(".onnx"):
        raise ProviderError(f"the {precision} variant of {bundle_dir} ({model_path.name}) is an OpenVINO file; "
                            "run it with backend='openvino' (pip install 'ensrm[openvino]')")
    providers = with_tensorrt_cache(config.providers and list(config.providers),
                                    bundle_dir / "engines" / f"ort-{precision}")
    fused = _fused_graph(bundle_dir, spec, precision, providers, config.verify) if config.fused else None
    if fused is not None:
        try:
            return OnnxRuntimeBackend(fused, providers, config.threads, config.spinning)
        except Exception as exc:  # noqa: BLE001 - any failure to load it leaves the portable graph
            _warn(f"onnxruntime cannot load {fused.name} of {bundle_dir} ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); running {model_path.name}", depth=1)
    try:
        return OnnxRuntimeBackend(model_path, providers, config.threads, config.spinning)
    except EnsrmError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class but Exception
        raise BundleError(f"onnxruntime cannot load {model_path.name} of {bundle_dir}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          file=model_path.name) from None


def _fused_graph(bundle_dir: Path, spec: EnsembleSpec, precision: str, providers, verify: str) -> Path | None:
    """The fused graph to run instead of ``precision``'s file, if the bundle has one that fits."""
    graph: FusedGraph | None = spec.fused.get("CPUExecutionProvider")
    if graph is None or graph.base != precision:
        return None
    first = resolve_providers(providers)[0]
    first = first[0] if isinstance(first, tuple) else first
    if first != graph.provider:
        _warn(f"{graph.file} of {bundle_dir} needs the {graph.provider}'s kernels; running "
              f"{MODEL_FILES[precision]} on {first}")
        return None
    try:
        verify_files(bundle_dir, spec, verify, only={graph.file, graph.file + ".data"})
        return bundle_file(bundle_dir, graph.file)
    except BundleError as exc:
        _warn(f"{exc}; running {MODEL_FILES[precision]}")
        return None


def _warn(message: str, depth: int = 2) -> None:
    """Warn at the line that built the scorer: ``depth`` frames below the ``load_backend`` call."""
    # _warn, [_fused_graph], load_backend, runtime.backend.load_backend, Scorer._open, Scorer.__init__
    warnings.warn(message, FusedGraphWarning, stacklevel=5 + depth)
