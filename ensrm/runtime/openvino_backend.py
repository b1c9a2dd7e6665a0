"""OpenVINO backend: the bundle's ONNX graph compiled for the CPU (fp32, bf16, INT8).

OpenVINO reads ``model.onnx`` directly and runs oneDNN kernels: a faster GEMM than
onnxruntime's CPU provider, bf16 where the CPU has it (AVX512_BF16, AMX) and integer kernels for
quantized graphs. ``bf16`` is not a file: it is ``model.onnx`` compiled with
``INFERENCE_PRECISION_HINT=bf16``. On a CPU without bf16 instructions (AVX512_BF16, AMX) the
hint is still honoured on AVX-512 CPUs: oneDNN emulates bf16 (the scores carry bf16 rounding),
far slower than f32 (MiniLM, batch 8 x 128, 2 threads on a Xeon with AVX-512 VNNI and no
AVX512_BF16: 46 s against 2.0 s). :func:`cpu_has_bf16` says whether the CPU has them, and a bf16 scorer on a
CPU without them warns once.

A compiled model is cached in the user's cache directory (:func:`cache_dir`), so a second
process skips the compilation; :mod:`ensrm.runtime.compiled_cache` keeps one entry per graph
content (a bundle rewritten in place compiles afresh) and bounds the cache's size. Requests come
from a pool: a backend may be shared by threads, each call takes its own infer request.
(The example is not run by the doctests: it needs a bundle.)

>>> backend = OpenVINOBackend("bundles/default/model.onnx", threads=2)     # doctest: +SKIP
>>> backend.run({"input_ids": ids, "attention_mask": mask})["ens_uwo"].shape   # doctest: +SKIP
(4,)
"""

from __future__ import annotations

import os
import queue
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensrm._optional import require
from ensrm.bundle import variant_file
from ensrm.errors import BundleError
from ensrm.runtime import compiled_cache
from ensrm.spec import MANIFEST_NAME, OUTPUT_NAMES, EnsembleSpec

if TYPE_CHECKING:
    from ensrm.runtime.config import ScorerConfig

#: The extra that installs this backend's runtime.
EXTRA = "openvino"
#: OpenVINO's INFERENCE_PRECISION_HINT for each precision this backend runs (int8 / int4 files carry their own).
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "int4": "f32"}
#: Compile properties a variant's method may record (``compile``); nothing else a manifest says reaches the compiler.
VARIANT_PROPERTIES = ("DYNAMIC_QUANTIZATION_GROUP_SIZE",)
#: ScorerConfig.hint -> OpenVINO's PERFORMANCE_HINT.
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


class CompileError(BundleError):
    """OpenVINO cannot read or compile a bundle graph (the message names the file and OpenVINO's reason)."""


class BF16Warning(RuntimeWarning):
    """bf16 was asked for on a CPU without bf16 instructions: emulated (bf16 rounding, no speed gain) or f32."""


def openvino():
    """The ``openvino`` module, or :class:`MissingDependencyError` naming ``ensrm[openvino]``."""
    return require("openvino", EXTRA)


def installed() -> bool:
    """Whether OpenVINO can be imported (without importing it).

    >>> isinstance(installed(), bool)
    True
    """
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


_CORE = None


def core():
    """One shared ``openvino.Core`` per process (creating one loads the device plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = openvino().Core()
    return _CORE


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 instructions OpenVINO uses (AVX512_BF16 or AMX): bf16 is then fast here.

    (The example is not run by the doctests: it needs OpenVINO installed.)

    >>> cpu_has_bf16()                                 # doctest: +SKIP
    False
    """
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cpu_name() -> str:
    """The CPU as OpenVINO names it, e.g. ``Intel(R) Xeon(R) Processor @ 2.80GHz``."""
    return str(core().get_property("CPU", "FULL_DEVICE_NAME"))


def version() -> str:
    """OpenVINO's release, e.g. ``2026.4.1``."""
    return openvino().__version__.split("-")[0]


def cache_dir() -> Path | None:
    """Where compiled models are cached: ``$ENSRM_CACHE_DIR/openvino`` or ``~/.cache/ensrm/openvino``.

    ``None`` (no cache) when the directory cannot be created.
    """
    base = os.environ.get("ENSRM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ensrm")
    path = Path(base) / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def compile_options(threads: int | None = None, precision: str = "fp32", hint: str = "latency",
                    properties: dict | None = None) -> dict:
    """The CPU plugin's properties for ensrm's settings, and a variant's own ``properties``.

    >>> compile_options(2, "bf16")
    {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': 'bf16', 'INFERENCE_NUM_THREADS': 2}
    >>> compile_options(precision="int4", properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': 'f32', 'DYNAMIC_QUANTIZATION_GROUP_SIZE': 0}
    """
    if hint not in PERFORMANCE_HINTS:
        raise ValueError(f"hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {hint!r}")
    options = {"PERFORMANCE_HINT": PERFORMANCE_HINTS[hint], "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options["INFERENCE_NUM_THREADS"] = int(threads)
    options.update(properties or {})
    return options


class OpenVINOBackend:
    """Runs a bundle graph compiled by OpenVINO for the CPU, feeding only the graph's declared inputs.

    ``precision`` picks the inference precision hint (``fp32`` → f32, ``bf16`` → bf16; an INT8
    or INT4 file carries its own quantization). ``hint`` is ``"latency"`` (one stream: small batches,
    one caller) or ``"throughput"`` (several streams: a server with concurrent callers).
    ``properties`` are the variant's own compile properties (its method's ``compile``, e.g.
    ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` for compressed weights), applied as the gate applied them.
    ``digests`` (file name → sha256, the bundle manifest's) tell the compiled-model cache what the
    files hold; ``cache=False`` compiles without it.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str = "fp32",
                 hint: str = "latency", cache: bool = True, properties: dict | None = None,
                 digests: dict[str, str] | None = None):
        openvino()
        self.model_path = Path(path)
        self.precision = precision
        options = compile_options(threads, precision, hint, properties)
        root = cache_dir() if cache else None
        entry = compiled_cache.cache_entry(root, self.model_path, digests) if root else None
        if entry is not None:
            options["CACHE_DIR"] = str(entry)
        try:
            # compiling from the path lets a cache hit skip reading the model at all
            self.compiled = core().compile_model(str(self.model_path), "CPU", options)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's errors share no base class but Exception
            message = str(exc).strip().splitlines()
            raise CompileError(f"OpenVINO {version()} cannot compile {self.model_path.name} of "
                              f"{self.model_path.parent}: {message[0][:300] if message else type(exc).__name__}",
                              file=self.model_path.name) from None
        if entry is not None:
            compiled_cache.prune(root, keep=entry)
        self._setup(hint)

    @classmethod
    def from_model(cls, model, threads: int | None = None, precision: str = "fp32",
                   hint: str = "latency", properties: dict | None = None) -> OpenVINOBackend:
        """A backend on an in-memory ``openvino.Model`` (e.g. one being quantized); nothing is cached."""
        backend = cls.__new__(cls)
        backend.model_path, backend.precision = Path(f"<{model.get_friendly_name()}>"), precision
        backend.compiled = core().compile_model(model, "CPU", compile_options(threads, precision, hint, properties))
        backend._setup(hint)
        return backend

    def _setup(self, hint: str) -> None:
        self.input_names = tuple(port.get_any_name() for port in self.compiled.inputs)
        names = {name for port in self.compiled.outputs for name in port.get_names()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise BundleError(f"{self.model_path.name} lacks the output(s) {', '.join(missing)}",
                              file=self.model_path.name)
        self._outputs = [(name, self.compiled.output(name)) for name in OUTPUT_NAMES]
        #: the threads OpenVINO runs on (ensrm's ``threads``, or all cores)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        #: what the compiled model computes in (``f32``, ``bf16``), as OpenVINO reports it
        self.inference_precision = _short(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        streams = self.compiled.get_property("NUM_STREAMS")
        #: infer requests worth running at once: one per stream (``hint="throughput"``), else 1
        self.concurrency = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.description = (f"OpenVINO {version()} CPU {self.inference_precision} {hint} "
                            f"{streams} stream{'s' if int(streams) != 1 else ''} ({self.model_path.name})")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:  # one more concurrent caller than ever before: one more request
            request = self.compiled.create_infer_request()
        try:
            results = request.infer({name: np.ascontiguousarray(feeds[name], dtype=np.int64)
                                     for name in self.input_names})
            # copies: the request's output buffers are reused by its next call
            return {name: np.array(results[port], dtype=np.float32, copy=True) for name, port in self._outputs}
        finally:
            self._requests.put(request)


def _short(precision) -> str:
    """OpenVINO's element type (``<Type: 'float32'>``, ``f32``, ``bf16``) as ``f32`` / ``bf16`` / ..."""
    text = str(precision).lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(
        next((k for k in ("bfloat16", "float32", "float16") if k in text), text), text)


def load_backend(config: ScorerConfig, spec: EnsembleSpec, precision: str) -> OpenVINOBackend:
    """OpenVINO on the bundle's ``precision`` file (bf16: ``model.onnx`` with the bf16 hint), compiled
    with the compile properties the variant was judged with (its method's ``compile``).

    A graph OpenVINO cannot compile raises :class:`CompileError` naming the file and OpenVINO's
    message; on a CPU without bf16 instructions a bf16 scorer warns once (:class:`BF16Warning`).
    """
    openvino()  # MissingDependencyError naming ensrm[openvino] before anything else
    path = variant_file(config.bundle_dir, spec, precision)
    digests = {name: entry.sha256 for name, entry in spec.files.items()}
    backend = OpenVINOBackend(path, config.threads, precision, config.hint,
                              properties=variant_properties(spec, precision), digests=digests)
    if precision == "bf16" and not cpu_has_bf16():
        warnings.warn(bf16_note(backend.inference_precision), BF16Warning, stacklevel=4)
    return backend


def variant_properties(spec: EnsembleSpec, precision: str) -> dict:
    """The compile properties the ``precision`` variant was judged with: its method's ``compile``.

    >>> from ensrm.spec import Variant
    >>> spec = EnsembleSpec(2, "decoder", "llama", "last", ("input_ids", "attention_mask"), 16, 100, 0,
    ...     variants={"int4": Variant("int4", "model.int4.xml", True,
    ...                               method={"compile": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}})})
    >>> variant_properties(spec, "int4")
    {'DYNAMIC_QUANTIZATION_GROUP_SIZE': 32}
    """
    variant = spec.variants.get(precision)
    recorded = ((variant.method if variant else None) or {}).get("compile") or {}
    for key, value in recorded.items() if isinstance(recorded, dict) else [("compile", recorded)]:
        if key not in VARIANT_PROPERTIES or isinstance(value, bool) or not isinstance(value, int):
            raise BundleError(f"the {precision} variant's method records the compile property {key}={value!r}; "
                              f"a variant may set only integer {', '.join(VARIANT_PROPERTIES)} (manifest damaged?)",
                              file=MANIFEST_NAME)
    return dict(recorded)


def bf16_note(computed: str) -> str:
    """The one line said where bf16 runs on a CPU without bf16 instructions."""
    how = ("emulates bf16: the scores carry bf16 rounding and it runs far slower than fp32" if computed == "bf16"
           else f"computes {computed}: the scores are the fp32 ones")
    return f"this CPU ({cpu_name()}) has no bf16 instructions (AVX512_BF16/AMX); OpenVINO {how}"


