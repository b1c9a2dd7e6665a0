"""What an export will hold in memory, checked before the slow work starts.

Two things grow with the model: the weights (held by torch, by the ONNX file being written and by
the onnxruntime session that verifies it) and the activations of one forward pass, whose
attention scores grow with the square of the sequence length. A decoder config declaring 32,768
positions would need hundreds of GB to verify at that length, so:

- the export refuses up front, naming the numbers, when the memory available cannot hold its
  estimated peak (:func:`check_export_memory`);
- verification and stress inputs are sized to an activation budget: sequences capped at the
  longest that fits (:func:`fitting_length`) and batches split into rows that fit
  (:func:`rows_per_run`).

``ENSRM_MEMORY_LIMIT`` (bytes, or with a ``K``/``M``/``G`` suffix) caps what counts as available,
to keep an export small on a shared machine or to test the refusal.

>>> parse_size("1.5G")
1610612736
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ensrm.errors import ExportError

LIMIT_ENV = "ENSRM_MEMORY_LIMIT"
#: Verification never runs a sequence longer than this, whatever memory allows: its cost grows with
#: the square of the length, and the graph's shapes are dynamic (a longer input runs the same graph).
MAX_VERIFY_LENGTH = 2048
#: The export's peak is at most about this many times the weights in the export's dtype, plus the
#: activation budget, when the source is traced in-process (below :data:`TRACE_CHILD_MIN_BYTES`;
#: measured on the full Qwen2-0.5B shape at 512 tokens before the trace moved to a child,
#: docs/guides/decoders.md: bf16 3.5x, fp32 2.5x): the Python process with torch and onnx (about
#: 0.45 GiB, which dominates a small model), torch's weights, which stay referenced by the exporter
#: after the trace, and the verifying onnxruntime session's.
PEAK_FACTOR = 3.5
#: With the fused CPU graph step (fp32 graphs up to :data:`FUSED_MAX_BYTES`), whose
#: optimizer holds several copies of the model (13.5 GiB for 1.84 GiB of fp32 weights).
FUSED_PEAK_FACTOR = 7.5
#: Above this size (graph and weights) the fused CPU graph step is not attempted: the optimizer holds
#: several copies of the model (measured: 13.5 GiB peak RSS for the 1.84 GiB fp32 graph of the
#: Qwen2-0.5B shape, docs/guides/decoders.md), far above what the rest of the export takes.
FUSED_MAX_BYTES = 2 ** 29
#: Sources with at least this many bytes of weights are traced in a child process
#: (:mod:`ensrm.export.trace_child`), so that torch's weights, which the exporter keeps alive after a
#: trace, are gone before onnxruntime verifies the graph. Smaller ones are traced in-process: a second
#: Python process costs about 0.47 GiB and seconds of imports, and the two ways tie at 0.36 GiB of
#: bf16 weights (measured, Qwen2-0.5B shape with 4 layers: 1.33 GiB peak either way), so the reduced
#: models of the test suite stay in-process. Read when an export runs, so a test can lower it.
TRACE_CHILD_MIN_BYTES = 2 ** 29
#: A source traced in a child process (:data:`TRACE_CHILD_MIN_BYTES` and above) takes about this many
#: times its weights on top of two Python processes (:data:`PROCESS_BYTES` each) and the activation
#: budget: torch's weights, the child's and onnxruntime's take turns. Measured on the Qwen2-0.5B shape
#: in bf16 at 512 tokens (docs/guides/decoders.md), the peak is the child's load and trace beside the
#: parent: 2.00 GiB = 2 x 0.47 GiB + 1.15 x 0.92 GiB of weights (1.08 x with 4 of the 24 layers; in fp32,
#: converted from bf16 shards as they load, 3.34 GiB = 2 x 0.47 GiB + 1.30 x 1.84 GiB); the parent's
#: verification alone stays below that. Also the child's own expected peak
#: (:func:`trace_child_estimate`), named when it is killed.
CHILD_PEAK_FACTOR = 1.4
#: A Python process with torch, transformers and onnx imported, before any weights (measured: 0.45-0.47 GiB).
PROCESS_BYTES = 2 ** 29
#: The verification's activation budget is at most this share of the weights' bytes (:func:`activation_budget`).
ACTIVATION_SHARE = 1.0
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def parse_size(text: str) -> int:
    """Bytes in ``"123"``, ``"512M"``, ``"1.5G"`` (binary units); ``ExportError`` naming the text otherwise."""
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise ExportError(f"{LIMIT_ENV}={text!r} is not a size (e.g. 8G, 512M or a number of bytes)") from None
    if number <= 0:
        raise ExportError(f"{LIMIT_ENV}={text!r} must be positive")
    return int(number * _UNITS[unit])


def available_bytes() -> int | None:
    """Memory this process may still use: ``MemAvailable`` (or psutil's), capped by ``ENSRM_MEMORY_LIMIT``."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is not None:
            available = int(psutil.virtual_memory().available)
    limit = os.environ.get(LIMIT_ENV)
    if limit:
        limit_bytes = parse_size(limit)
        available = limit_bytes if available is None else min(available, limit_bytes)
    return available


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def checkpoint_parameters(path: str | os.PathLike) -> int | None:
    """Number of weights in a checkpoint directory, read from its safetensors headers (every shard),
    or ``None`` when it holds no safetensors (a ``.bin`` checkpoint: its size is used instead)."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def weight_bytes(paths, itemsize: int) -> int:
    """Bytes the weights of the checkpoints ``paths`` take in a dtype of ``itemsize`` bytes."""
    total = 0
    for path in paths:
        params = checkpoint_parameters(path)
        if params is None:  # pickled tensors: assume fp32 on disk
            params = sum(p.stat().st_size for p in Path(path).glob("*.bin")) // 4
        total += params * itemsize
    return total


@dataclass(frozen=True)
class Shape:
    """What the activation estimate needs of a transformer."""

    hidden: int
    heads: int
    intermediate: int
    members: int = 1

    @classmethod
    def of(cls, module) -> Shape:
        """The shape of the first transformer config inside a torch ``module`` (any source kind)."""
        configs = [m.config for m in module.modules() if hasattr(getattr(m, "config", None), "hidden_size")]
        if not configs:
            return cls(hidden=1024, heads=16, intermediate=4096)  # unknown: a mid-size guess
        config = configs[0]
        hidden = int(config.hidden_size)
        heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1)
        intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                           or 4 * hidden)
        members = len(getattr(module, "members", ())) or 1
        return cls(hidden=hidden, heads=heads, intermediate=intermediate, members=members)


#: The shape the stress battery sizes its inputs for, knowing only the bundle (a 1.5B decoder's width).
STRESS_SHAPE = Shape(hidden=1536, heads=16, intermediate=8960)


def activation_bytes(shape: Shape, batch: int, seq: int) -> int:
    """Estimated peak activation bytes of one forward pass of ``batch`` x ``seq`` tokens.

    One layer's tensors are alive at a time (torch frees, onnxruntime's planner reuses), in fp32:
    about four ``[batch, heads, seq, seq]`` tensors in eager attention (scores, masked scores, the
    softmax, its cast), the ``[batch, 1, seq, seq]`` mask, and ``[batch, seq]`` rows of the hidden
    and MLP widths.

    >>> activation_bytes(Shape(hidden=896, heads=14, intermediate=4864), 1, 2048) // 2 ** 20
    1098
    """
    attention = 4 * batch * shape.heads * seq * seq * 4
    mask = 2 * batch * seq * seq * 4
    rows = batch * seq * (8 * shape.hidden + 3 * shape.intermediate) * 4
    return attention + mask + rows


def activation_budget(available: int | None = None, weights: int | None = None) -> int:
    """Bytes one verification or stress run may take: a quarter of what is available, 256 MiB to 2 GiB,
    and, given the ``weights`` bytes of the model run, at most :data:`ACTIVATION_SHARE` of them (never
    below 256 MiB), so that a model's activations never outweigh its weights in the export's peak.

    >>> activation_budget(available=2 ** 34) // 2 ** 20, activation_budget(2 ** 34, weights=2 ** 29) // 2 ** 20
    (2048, 512)
    """
    available = available_bytes() if available is None else available
    budget = 2 ** 30 if available is None else int(min(2 * 2 ** 30, max(2 ** 28, available // 4)))
    if weights is not None:
        budget = min(budget, max(2 ** 28, int(ACTIVATION_SHARE * weights)))
    return budget


def weight_bytes_of(module) -> int:
    """Bytes of the parameters and buffers of a torch ``module``, each storage counted once (tied weights)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def trace_child_estimate(weights: int) -> int:
    """Bytes the trace's child process is expected to peak at, for ``weights`` bytes of weights.

    >>> gib(trace_child_estimate(2 ** 30))
    '1.90 GiB'
    """
    return PROCESS_BYTES + int(CHILD_PEAK_FACTOR * weights)


def fitting_length(shape: Shape, max_length: int, budget: int) -> int:
    """The longest sequence (at most ``max_length`` and :data:`MAX_VERIFY_LENGTH`) one row of which fits ``budget``."""
    low, high = 1, min(max_length, MAX_VERIFY_LENGTH)
    while low < high:  # activation_bytes grows with seq: bisect for the last length that fits
        mid = (low + high + 1) // 2
        if activation_bytes(shape, 1, mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def rows_per_run(shape: Shape, seq: int, budget: int) -> int:
    """How many rows of ``seq`` tokens one run may take within ``budget`` (at least 1)."""
    return max(1, budget // max(1, activation_bytes(shape, 1, seq)))


def check_export_memory(paths, dtype: str, *, cpu_graph: bool = False, available: int | None = None) -> dict:
    """Refuse an export whose estimated peak exceeds the memory available; return the estimate.

    The estimate is :data:`PEAK_FACTOR` (:data:`FUSED_PEAK_FACTOR` when an fp32 graph small enough
    also gets its fused CPU form, ``cpu_graph``) times the weights in ``dtype`` plus the activation
    budget (:func:`activation_budget` of those weights); for weights traced in a child process
    (:data:`TRACE_CHILD_MIN_BYTES` and above), two Python processes (:data:`PROCESS_BYTES` each) plus
    :data:`CHILD_PEAK_FACTOR` times the weights plus the budget.
    (Not run by the doctests: it needs a checkpoint on disk.)

    >>> check_export_memory(["checkpoints/qwen2-rm"], "bf16", available=2 ** 30)   # doctest: +SKIP
    Traceback (most recent call last):
    ensrm.errors.ExportError: the export of checkpoints/qwen2-rm in bf16 needs about 2.54 GiB ...
    """
    from ensrm.export.dtypes import ITEMSIZE

    available = available_bytes() if available is None else available
    weights = weight_bytes(paths, ITEMSIZE[dtype])
    budget = activation_budget(available, weights=weights)
    processes = 0
    if cpu_graph and dtype == "fp32" and weights <= FUSED_MAX_BYTES:
        factor = FUSED_PEAK_FACTOR
    elif weights >= TRACE_CHILD_MIN_BYTES:  # the threshold the trace step reads (ensrm.export.trace)
        factor, processes = CHILD_PEAK_FACTOR, 2 * PROCESS_BYTES
    else:
        factor = PEAK_FACTOR
    needed = processes + int(factor * weights) + budget
    estimate = {"weights_bytes": weights, "estimated_peak_bytes": needed, "available_bytes": available}
    if available is not None and needed > available:
        where = ", ".join(str(p) for p in paths)
        smaller = " or `dtype='bf16'`" if dtype == "fp32" else ""
        raise ExportError(
            f"the export of {where} in {dtype} needs about {gib(needed)} ("
            f"{f'2 processes x {gib(PROCESS_BYTES)} + ' if processes else ''}{factor:g} x {gib(weights)} of "
            f"weights + {gib(budget)} for activations), but only {gib(available)} is available"
            f"{f' ({LIMIT_ENV})' if os.environ.get(LIMIT_ENV) else ''}; free memory, export on a larger machine"
            f"{smaller}")
    return estimate
