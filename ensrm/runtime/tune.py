"""``ensrm tune``: time every installed runtime × accepted precision here; remember the fastest.

The result is ``BUNDLE/tune.json`` beside the manifest (not one of its files: the bundle's
sha256 verification is unchanged, and retuning never touches a verified file). It is keyed by
the machine: the CPU model, its instruction-set flags that change kernels (AVX-512, VNNI, BF16,
AMX), the runtime versions and the manifest's sha256. ``Scorer(bundle, precision="auto")`` and
``backend="auto"`` read it; a file written on another machine, by other runtime versions or for
another manifest is ignored with one :class:`TuneWarning`. Only precisions the bundle lists as
accepted are ever timed or chosen. (The example is not run by the doctests: it times a bundle.)

>>> record = tune_bundle("bundles/default", threads=2, batches=(1, 32))     # doctest: +SKIP
>>> record["choice"]["32"]                                                  # doctest: +SKIP
{'backend': 'openvino', 'precision': 'fp32', 'seconds': 0.31}
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ensrm.bundle import sha256_file
from ensrm.spec import MANIFEST_NAME, EnsembleSpec

TUNE_FILE = "tune.json"
TUNE_FORMAT = 1
#: CPU flags that change which kernels a runtime runs (so a tune result from a CPU without them is foreign).
KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                "amx_bf16", "amx_int8", "amx_tile")
DEFAULT_BATCHES = (1, 8, 32)


class TuneWarning(UserWarning):
    """A tune file is present but was not written for this machine, runtime versions or bundle."""


def cpu_key() -> dict:
    """The CPU's model name and its kernel-relevant flags (Linux ``/proc/cpuinfo``; elsewhere the platform's name)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return {"cpu": model, "flags": sorted(f for f in KERNEL_FLAGS if f in flags)}


def runtime_versions() -> dict[str, str]:
    """The installed CPU runtimes and their versions (``tensorrt`` is a GPU engine, tuned by its builder)."""
    import importlib.metadata as metadata

    versions = {}
    for name, dist in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if name == "onnxruntime":  # the GPU wheel has another distribution name
                try:
                    versions[name] = metadata.version("onnxruntime-gpu")
                except metadata.PackageNotFoundError:
                    pass
    return versions


def machine_key(bundle_dir: str | os.PathLike) -> dict:
    """What a tune result is valid for: this CPU, these runtimes, this manifest."""
    return {**cpu_key(), "runtimes": runtime_versions(),
            "manifest_sha256": sha256_file(Path(bundle_dir) / MANIFEST_NAME)}


def combinations(spec: EnsembleSpec, backends: Sequence[str], native_bf16: bool = True) -> list[tuple[str, str]]:
    """``(backend, precision)`` pairs worth timing on the CPU: accepted precisions each runtime can run.

    Without bf16 instructions (``native_bf16=False``) bf16 is emulated, many times slower than
    fp32, so it is not timed (nor chosen).

    >>> from ensrm.spec import Variant
    >>> spec = EnsembleSpec(2, "encoder", "bert", "cls", ("input_ids", "attention_mask"), 16, 100, 0,
    ...                     variants={"fp32": Variant("fp32", "model.onnx", True),
    ...                               "bf16": Variant("bf16", "model.onnx", True)})
    >>> combinations(spec, ["onnxruntime", "openvino"])
    [('onnxruntime', 'fp32'), ('openvino', 'fp32'), ('openvino', 'bf16')]
    """
    pairs = []
    for backend in backends:
        for precision in spec.usable_precisions:
            variant = spec.variants[precision]
            runtime = str((variant.method or {}).get("runtime", "onnxruntime")).split()[0].lower()
            if backend == "onnxruntime" and (precision == "bf16" or not variant.file.endswith(".onnx")):
                continue
            if precision == "bf16" and not native_bf16:
                continue
            if backend == "openvino" and precision == "fp16":
                continue  # a GPU variant: OpenVINO's CPU plugin computes it in f32 after converting
            if backend == "openvino" and precision == "int8" and runtime != "openvino":
                continue  # made for onnxruntime's kernels (per-token / dynamic ops)
            pairs.append((backend, precision))
    return pairs


def _feeds(spec: EnsembleSpec, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    low = min(1000, spec.vocab_size // 2)
    ids = rng.integers(low, spec.vocab_size, size=(batch, seq)).astype(np.int64)  # [batch, seq]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if spec.uses_token_type_ids:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def time_backend(backend, feeds: dict, repeats: int = 5, budget_s: float = 3.0) -> float:
    """Median seconds of one call after a warm-up, over up to ``repeats`` calls within ``budget_s``."""
    backend.run(feeds)
    times, start = [], time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        backend.run(feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def tune_bundle(bundle_dir: str | os.PathLike, threads: int | None = None, batches: Sequence[int] = DEFAULT_BATCHES,
                seq: int = 128, repeats: int = 5, budget_s: float = 3.0,
                progress: Callable[[str], None] | None = None) -> dict:
    """Time every installed backend × accepted precision at each batch; write and return ``tune.json``.

    The choice per batch is the fastest combination; every one timed is accepted by the
    bundle's gates (rejected precisions have no usable variant and are never timed).
    """
    from ensrm.bundle import load_spec
    from ensrm.runtime.backend import load_backend
    from ensrm.runtime.config import ScorerConfig
    from ensrm.runtime.openvino_backend import cpu_has_bf16, installed

    bundle_dir = Path(bundle_dir)
    spec = load_spec(bundle_dir)  # every file checked once here
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise ValueError(f"batches must be positive integers, got {list(batches)}")
    seq = max(1, min(seq, spec.max_length))
    backends = ["onnxruntime"] + (["openvino"] if installed() else [])
    results = []
    native_bf16 = "openvino" in backends and cpu_has_bf16()
    for backend_name, precision in combinations(spec, backends, native_bf16):
        config = ScorerConfig(bundle_dir, backend=backend_name, precision=precision, threads=threads, verify="none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. bf16 computed as f32 here: still timed, recorded below
            backend = load_backend(config, spec, precision)
        for batch in batches:
            seconds = time_backend(backend, _feeds(spec, batch, seq), repeats, budget_s)
            results.append({"backend": backend_name, "precision": precision, "batch": batch, "seconds": seconds,
                            "description": backend.description})
            if progress:
                progress(f"  {backend_name:<12} {precision:<5} batch {batch:>4} x {seq}: {seconds * 1e3:9.2f} ms")
        del backend
    choice = {}
    for batch in batches:
        best = min((r for r in results if r["batch"] == batch), key=lambda r: r["seconds"])
        choice[str(batch)] = {"backend": best["backend"], "precision": best["precision"], "seconds": best["seconds"]}
    skipped = ["bf16: no bf16 instructions here (emulated, far slower than fp32)"] \
        if "bf16" in spec.usable_precisions and "openvino" in backends and not native_bf16 else []
    record = {"format": TUNE_FORMAT, "machine": machine_key(bundle_dir), "threads": threads, "seq": seq,
              "skipped": skipped,
              "batches": batches, "results": results, "choice": choice,
              "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = bundle_dir / TUNE_FILE
    temporary = path.with_name(f".{TUNE_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)  # readers see the old file or the new one, never half of one
    return record


def read_tune(bundle_dir: str | os.PathLike, warn: bool = True) -> dict | None:
    """This machine's tune record of the bundle, or ``None`` (absent, unreadable, or foreign: warned)."""
    path = Path(bundle_dir) / TUNE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        saved = record["machine"]
        record["choice"]  # noqa: B018 - a record without choices is damaged
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if warn:
            warnings.warn(f"{path} is unreadable ({exc}); ignored — run ensrm tune {bundle_dir} again",
                          TuneWarning, stacklevel=3)
        return None
    here = machine_key(bundle_dir)
    different = [k for k in ("cpu", "flags", "runtimes", "manifest_sha256") if saved.get(k) != here[k]]
    if different:
        if warn:
            what = {"cpu": f"CPU {saved.get('cpu')!r}", "flags": f"CPU flags {saved.get('flags')}",
                    "runtimes": f"runtimes {saved.get('runtimes')}", "manifest_sha256": "another manifest"}
            warnings.warn(f"{path} was written for {', '.join(what[k] for k in different)}, not this machine "
                          f"and bundle; ignored — run ensrm tune {bundle_dir} here", TuneWarning, stacklevel=3)
        return None
    return record


@dataclasses.dataclass(frozen=True)
class Choice:
    """What ``ensrm tune`` found fastest for a batch regime on this machine."""

    backend: str
    precision: str
    batch: int
    seconds: float


def tuned_choice(bundle_dir: str | os.PathLike, spec: EnsembleSpec, batch_size: int, backend: str = "auto",
                 installed_backends: Sequence[str] | None = None) -> Choice | None:
    """The fastest accepted (backend, precision) tuned here for ``batch_size``, or ``None``.

    The regime is the smallest tuned batch ≥ ``batch_size`` (else the largest). With a named
    ``backend`` only its rows count. A choice whose precision is no longer accepted is skipped.
    """
    record = read_tune(bundle_dir)
    if record is None:
        return None
    batches = sorted(int(b) for b in record.get("batches", []))
    if not batches:
        return None
    regime = next((b for b in batches if b >= batch_size), batches[-1])
    rows = [r for r in record.get("results", []) if int(r.get("batch", -1)) == regime
            and (backend == "auto" or r.get("backend") == backend)
            and r.get("precision") in spec.usable_precisions
            and (installed_backends is None or r.get("backend") in installed_backends)]
    if not rows:
        return None
    best = min(rows, key=lambda r: float(r["seconds"]))
    return Choice(best["backend"], best["precision"], regime, float(best["seconds"]))


def format_tune(record: dict) -> str:
    """The tune table for a terminal: every timing, the choice per batch marked ``*``."""
    machine = record["machine"]
    lines = [f"{machine['cpu']} ({' '.join(machine['flags']) or 'no AVX-512/AMX flags'}), "
             f"{', '.join(f'{k} {v}' for k, v in machine['runtimes'].items())}, "
             f"threads {record.get('threads') or 'all'}, seq {record['seq']}",
             f"{'backend':<12} {'precision':<9} " + " ".join(f"{'batch ' + str(b):>12}" for b in record["batches"])]
    combos = dict.fromkeys((r["backend"], r["precision"]) for r in record["results"])
    for backend, precision in combos:
        cells = []
        for batch in record["batches"]:
            row = next((r for r in record["results"] if (r["backend"], r["precision"], r["batch"])
                        == (backend, precision, batch)), None)
            chosen = record["choice"].get(str(batch), {})
            mark = "*" if (chosen.get("backend"), chosen.get("precision")) == (backend, precision) else " "
            cells.append(f"{row['seconds'] * 1e3:10.2f}{mark}" if row else f"{'-':>11}")
        lines.append(f"{backend:<12} {precision:<9} " + " ".join(f"{c:>12}" for c in cells))
    lines += [f"not timed: {reason}" for reason in record.get("skipped", [])]
    lines.append("milliseconds per call; * the fastest accepted (used by precision='auto')")
    return "\n".join(lines)
