"""Check an exported graph against the torch module it came from.

Each sequence is scored alone and unpadded in torch; the ONNX graph scores the same
sequences padded in mixed batches, on every padding side the bundle can be fed with. The
largest absolute difference of the heads must stay within the tolerance, and the aggregates
must equal what numpy computes from the heads.
"""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass

import numpy as np

from ensrm._optional import require
from ensrm.export.memory import Shape
from ensrm.spec import EnsembleSpec

torch = require("torch", "export")

# Short and long texts so a batch mixes lengths from a few tokens to the maximum.
_PROMPTS = [
    "Hi",
    "How do I bake bread at home without a stand mixer?",
    "Explain the difference between a list and a tuple in Python, with an example of each.",
    "What should I pack for a three-day hiking trip in the mountains in late autumn?",
]
_RESPONSES = [
    "Sure.",
    "Mix flour, water, salt and yeast, knead by hand for ten minutes, let it rise, then bake at 230 C.",
    "A list is mutable and a tuple is not: [1, 2].append(3) works, (1, 2).append(3) raises.",
    "Layers, a rain shell, a warm hat, a map, a headlamp, water filter and food for four days. " * 40,
]
# What the export's tokenizer checks encode (ensrm.export.checks.check_encoding).
REFERENCE_TEXTS = tuple(_PROMPTS + _RESPONSES)


def reference_inputs(tokenizer, spec: EnsembleSpec, length: int | None = None) -> list[dict[str, np.ndarray]]:
    """Tokenised (prompt, response) pairs of mixed length, the longest at ``length`` tokens
    (default: the bundle's maximum): the long response is truncated to it, and with the last prompt
    repeated as often as reaching it takes (one sequence that long: its cost grows with its square)."""
    length = spec.max_length if length is None else min(length, spec.max_length)
    long_response = _RESPONSES[-1]
    unit = max(1, len(tokenizer(long_response, add_special_tokens=False)["input_ids"]))
    if unit < length:  # a response that reaches `length` (truncated to it below)
        long_response = long_response * (length // unit + 1)
    encoded = []
    for i, prompt in enumerate(_PROMPTS):
        for j, response in enumerate(_RESPONSES):
            if (i + j) % 2 and j != len(_RESPONSES) - 1:
                continue
            if j == len(_RESPONSES) - 1 and i == len(_PROMPTS) - 1:
                response = long_response
            enc = tokenizer(prompt, response, truncation=True, max_length=length)
            encoded.append({name: np.asarray(enc[name], dtype=np.int64) for name in spec.inputs
                            if name != "attention_mask"})
    return encoded


def pad_batch(items: list[dict[str, np.ndarray]], spec: EnsembleSpec, side: str) -> dict[str, np.ndarray]:
    seq = max(len(item["input_ids"]) for item in items)
    batch = {name: np.zeros((len(items), seq), dtype=np.int64) for name in spec.inputs}
    batch["input_ids"][:] = spec.pad_token_id
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        cols = slice(0, n) if side == "right" else slice(seq - n, seq)
        batch["attention_mask"][row, cols] = 1
        for name, values in item.items():
            batch[name][row, cols] = values
    return batch


def aggregates(heads: np.ndarray, uwo_lambda: float) -> dict[str, np.ndarray]:
    """The Contract's aggregates of ``heads`` ``[batch, K]`` in float64 numpy."""
    heads = heads.astype(np.float64)
    var = heads.var(axis=1)  # population variance, ddof=0
    return {"ens_mean": heads.mean(axis=1), "ens_std": np.sqrt(var), "ens_min": heads.min(axis=1),
            "ens_uwo": heads.mean(axis=1) - uwo_lambda * var}


@dataclass
class TorchReference:
    """What torch gave on the verification inputs, kept so the graph can be checked after the
    torch weights are gone (:func:`release_weights`): the inputs, torch's heads and the sizes
    the activation budget allowed."""

    items: list[dict[str, np.ndarray]]
    heads: np.ndarray  # [n, K] torch's heads (before normalisation)
    shape: Shape
    budget: int
    length: int


def score_with_torch(module, tokenizer, spec: EnsembleSpec, budget: int | None = None) -> TorchReference:
    """Score the verification inputs in torch, each sequence alone and unpadded, within ``budget``
    activation bytes (default :func:`~ensrm.export.memory.activation_budget`)."""
    from ensrm.export.memory import activation_budget, fitting_length

    # Sizes that fit in memory whatever max_length the config declares (ensrm.export.memory).
    shape = Shape.of(module)
    budget = activation_budget() if budget is None else budget
    length = fitting_length(shape, spec.max_length, budget)
    items = reference_inputs(tokenizer, spec, length)
    with torch.inference_mode():
        heads = np.stack([
            module(*[torch.from_numpy(pad_batch([item], spec, "right")[name]) for name in spec.inputs])[0].numpy()
            for item in items
        ])  # [n, K]
    return TorchReference(items=items, heads=heads, shape=shape, budget=budget, length=length)


def release_weights(module) -> None:
    """Free the weights of a torch ``module`` that is not run again: its parameters and buffers move
    to the meta device (shapes only), whoever still refers to the module, and the freed heap goes
    back to the system. Storage that something else still references stays: after a dynamo trace,
    the exporter's views of the weights (measured on the Qwen2-0.5B shape, 0.16 of 1.84 GiB freed),
    which is why a large source is traced in a child process after this release
    (:mod:`ensrm.export.trace_child`): untraced, the weights go."""
    module.to("meta")
    release_memory()


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's ``malloc_trim``, where
    there is one): RSS then shows what the export still holds, and the next step can use it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        pass


def verification_session(path, threads: int | None = None):
    """An onnxruntime CPU session that checks ``path`` with the least memory.

    Constant folding is off, so a bf16 graph's weights stay bf16 (read through their ``Cast`` at
    each run) instead of being folded into an fp32 copy of every weight, and the arena is off, so
    what one run allocates is returned after it. The arithmetic is the graph's own either way;
    the optimisations left on are the runtime's (:func:`~ensrm.runtime.onnxruntime_backend.session_options`).
    Measured on the Qwen2-0.5B shape in bf16 at 512 tokens: 1.07 GiB peak instead of 2.2 GiB.
    """
    ort = require("onnxruntime", "core")
    from ensrm.runtime.onnxruntime_backend import session_options

    options = session_options(threads)
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["ConstantFolding"])


def verify_graph(session, reference: TorchReference, spec: EnsembleSpec, tolerance: float | None = 1e-4) -> dict:
    """Run the graph on ``reference``'s inputs, padded in mixed batches on every padding side the
    bundle is fed with; return a report with ``passed`` and the differences from torch.

    ``tolerance=None`` takes the default of the graph's dtype relative to the largest head torch
    gives (at least 1); the report records the absolute tolerance applied (and the dtype, for a
    half-precision graph).
    """
    from ensrm.export.dtypes import RELATIVE_TOLERANCE
    from ensrm.export.memory import rows_per_run

    items, shape, budget, length = reference.items, reference.shape, reference.budget, reference.length
    mu = np.asarray(spec.normalization.mu, dtype=np.float64)
    sigma = np.asarray(spec.normalization.sigma, dtype=np.float64)
    expected = (reference.heads - mu) / sigma
    relative = None
    if tolerance is None:
        relative = RELATIVE_TOLERANCE[spec.dtype]
        tolerance = relative * max(1.0, float(np.abs(expected).max()))
    sides = ["right", "left"] if spec.architecture == "decoder" else ["right"]
    # Batches that mix lengths: every item, and the items in reverse order split in two.
    orders = [list(range(len(items))), list(reversed(range(len(items))))]
    head_diff = agg_diff = 0.0
    for side in sides:
        for order in orders:
            for chunk in (order, order[: len(order) // 2], order[len(order) // 2:]):
                seq = max(len(items[i]["input_ids"]) for i in chunk)
                rows = rows_per_run(shape, seq, budget)
                for start in range(0, len(chunk), rows):  # a batch too large for the budget runs in parts
                    part = chunk[start:start + rows]
                    batch = pad_batch([items[i] for i in part], spec, side)
                    outs = dict(zip(spec.outputs, session.run(list(spec.outputs), batch)))
                    head_diff = max(head_diff, float(np.abs(outs["heads"] - expected[part]).max()))
                    for name, value in aggregates(outs["heads"], spec.uwo_lambda).items():
                        agg_diff = max(agg_diff, float(np.abs(outs[name] - value).max()))
    lengths = [len(item["input_ids"]) for item in items]
    dtype = {} if spec.dtype == "fp32" else {"dtype": spec.dtype}  # fp32 reports read as they always did
    if relative is not None:
        dtype["relative_tolerance"] = relative
    if length < spec.max_length:  # verified shorter than the bundle accepts: say so, and how it ran
        dtype["length_cap"] = length
        dtype["rows_per_run"] = rows_per_run(shape, length, budget)
    return {
        **dtype,
        "passed": bool(head_diff <= tolerance and agg_diff <= tolerance),
        "max_abs_diff_heads": head_diff,
        "max_abs_diff_aggregates": agg_diff,
        "tolerance": tolerance,
        "sequences": len(items),
        "lengths": [min(lengths), max(lengths)],
        "padding_sides": sides,
    }
