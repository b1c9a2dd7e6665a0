"""The INT8 variant: the encoder's linear layers in int8, everything else in float.

``static`` (default) writes explicit QuantizeLinear/DequantizeLinear pairs that a TensorRT
build can consume: symmetric int8 activations (zero point 0) with one scale per tensor,
calibrated on records, and symmetric per-output-channel int8 weights. Four choices decide
how well it ranks and how fast it runs, each measured on the default model (Spearman of
``ens_mean`` against fp32 on 768 held-out candidates; onnxruntime CPU, batch 32 x 128):

* **Smoothing.** A transformer's linear-layer inputs carry a few channels far above the rest,
  and one per-tensor scale sized for them leaves the others a handful of levels. Each input
  is divided per channel by ``s = max|x|^a / max|w|^(1-a)`` (an explicit ``Mul``) and the
  weight rows multiplied by ``s``, which is exact in float; the weights, quantized per output
  channel, absorb the range. Without it: 0.931; a = 0: 0.502; 0.5: 0.832; 0.7: 0.973;
  0.9: 0.990; **1.0: 0.993** (the default; ``scripts/bench_precision.py --smoothing-sweep``,
  on the graph before the exporter narrowed its last layer, which reads 0.994).
* **A Q/DQ pair per matrix product.** Only the MatMul reads the dequantized tensor: the
  residual stream that shares the LayerNorm output stays float (onnxruntime's own static
  quantizer routes it through the int8 copy: 0.886), and products that share an input get
  their own scale initializers so onnxruntime does not merge their pairs, which would stop
  it from running them as integer kernels (12 of 36 fused, slower than fp32; 36 of 36 here).
* **GPTQ weight rounding.** Rounding each weight to its nearest int8 level treats every
  input row alone; GPTQ (:func:`gptq_round`) rounds one row at a time and moves its error
  onto the rows not yet rounded, in the directions the calibration inputs make cheapest
  (their ``X^T X``, gathered in the same calibration pass). It is chosen once, at export:
  the int8 values are the same kind, so the graph and its speed do not change. Measured as
  the std of (int8 - fp32) over the std of fp32 on ``ens_mean``: 0.070 -> 0.050 on MiniLM
  heads fitted on mean-pooled states, 0.100 -> 0.095 on the default model's pooler heads.
* **GELU in onnxruntime's form.** The exported ``x * (0.5 * (1 + erf(x / sqrt 2)))`` is
  reordered to ``(x * (1 + erf(x / sqrt 2))) * 0.5`` (bit-identical: halving is exact), which
  onnxruntime fuses with the bias into one BiasGelu kernel: about 10% of the INT8 run time.

Calibration takes each channel's maximum over real tokens only (the attention mask's ones):
padding positions carry values no real token produces.

``per-token`` keeps the smoothing and GPTQ weights but computes one activation scale per
token inside the graph (``ReduceMax(|x|)`` over the channels, a blocked ``QuantizeLinear``,
onnxruntime's ``MatMulIntegerToFloat``, then the row scale): a sequence's scores depend on
it alone, and no calibrated range clips a token or wastes levels on it. It is onnxruntime
CPU only (a contrib op, opset 21). On the default model (pooler heads, whose large weights
amplify any error) no all-int8 graph passes the gate: top-1@16 (worst objective) is 0.892
static and 0.919 per token (smoothing 0.8; 0.5 / 0.9 / 1.0 give 0.862 / 0.908 / 0.893).
Keeping the down products (FFN-out, 1536 -> 384) and the last layer in float, as
``per-token`` does by default, gives 0.954 and passes; the last layer alone 0.930, the
down products alone 0.945 (``benchmarks/NOTES.md``). Its speed: 1.55x fp32 at batch 32 x 128,
one thread, against 2.16x for the (rejected) all-int8 static graph.

``dynamic`` quantizes the same weights with onnxruntime's dynamic quantizer and computes
activation scales per batch at run time: no calibration data, onnxruntime CPU only (TensorRT
cannot build it), and a sequence's scores then depend on the rest of its batch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.calibration.graphs import _INLINE_LIMIT, float_tail_nodes, save_model, weight_matmuls
from ensrm.spec import INT8_MODES

onnx = require("onnx", "export")
from onnx import helper, numpy_helper  # noqa: E402

MODES = INT8_MODES
ROUNDINGS = ("gptq", "nearest")
#: Weight rounding: "gptq" compensates each rounding error with the weights not yet rounded.
DEFAULT_ROUNDING = "gptq"
#: SmoothQuant migration strength per mode: 1.0 moves every input channel's range into the weights.
DEFAULT_SMOOTHING = {"static": 1.0, "per-token": 0.8}
#: Products left in float: ``down`` (a layer's narrowing product, FFN-out) and ``last`` (the last layer's).
FLOAT_PRODUCTS = ("down", "last")
DEFAULT_FLOAT_PRODUCTS = {"static": (), "per-token": ("down", "last")}
_QMAX = 127.0
_DEFAULT = object()


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike, mode: str = "static",
                  calibration: list[dict[str, np.ndarray]] | None = None,
                  smoothing: float | None = _DEFAULT, rounding: str = DEFAULT_ROUNDING,
                  float_products=_DEFAULT) -> dict:
    """Write the INT8 variant of the fp32 graph ``source`` to ``target``.

    ``calibration`` is a list of feeds (``input_ids``, ``attention_mask``, ...) for ``static``
    and ``per-token``; ``smoothing`` is the migration strength ``a`` in [0, 1] (module
    docstring), or None for none (no ``Mul`` in the graph; default per mode,
    :data:`DEFAULT_SMOOTHING`); ``rounding`` is ``"gptq"`` or ``"nearest"``;
    ``float_products`` names the encoder products kept in float (:data:`FLOAT_PRODUCTS`).

    (Not run by the doctests: it needs a bundle and calibration batches.)

    >>> quantize_int8("b/model.onnx", "b/model.int8.onnx", "static", batches)   # doctest: +SKIP
    {'method': 'static-qdq', 'quantized_matmuls': 36, 'smoothing': 1.0, 'rounding': 'gptq', ...}
    >>> quantize_int8("b/model.onnx", "b/model.int8.onnx", "per-token", batches)["quantized_matmuls"]  # doctest: +SKIP
    25
    """
    if mode not in MODES:
        raise ValueError(f"INT8 mode must be one of {', '.join(MODES)}, got {mode!r}")
    smoothing = DEFAULT_SMOOTHING.get(mode) if smoothing is _DEFAULT else smoothing
    float_products = tuple(DEFAULT_FLOAT_PRODUCTS.get(mode, ()) if float_products is _DEFAULT else float_products)
    if smoothing is not None and not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be between 0 and 1, got {smoothing}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    unknown = [p for p in float_products if p not in FLOAT_PRODUCTS]
    if unknown:
        raise ValueError(f"float_products must be among {', '.join(FLOAT_PRODUCTS)}, got {unknown[0]!r}")
    if mode == "dynamic":
        return _quantize_dynamic(source, target)
    if not calibration:
        raise ValueError(f"{mode} INT8 quantization needs calibration batches")
    return _quantize_calibrated(source, target, mode, calibration, smoothing, rounding, float_products)


def _quantize_calibrated(source, target, mode: str, calibration, smoothing: float | None, rounding: str,
                         float_products: tuple[str, ...]) -> dict:
    """The ``static`` and ``per-token`` writers: smooth, round and rewire each group of products."""
    model = onnx.load(str(source))
    groups = linear_layer_inputs(model.graph)
    if not groups:
        raise ValueError(f"{source} has no MatMul with a weight initializer before its heads: nothing to "
                         "quantize (linear layers exported as Gemm, such as GPT-2's, are not quantized)")
    groups, kept = _split_float_products(model.graph, groups, float_products)
    fuse_ready_gelu(model.graph)
    ranges, grams = calibration_statistics(model, list(groups), calibration, gram=rounding == "gptq")
    inits = {i.name: i for i in model.graph.initializer}
    inserted, replaced = {}, set()
    for tensor, matmuls in groups.items():
        weights = [numpy_helper.to_array(inits[m.input[1]]).astype(np.float64) for m in matmuls]  # [in, out] each
        smooth = _smoothing(ranges[tensor], weights, smoothing)  # [in]
        # the MatMuls read x / s, whose Gram matrix is X^T X / (s s^T)
        gram = grams[tensor] / np.outer(smooth, smooth) if tensor in grams else None
        if mode == "per-token":
            inserted[matmuls[0].name] = _quantize_group_per_token(model.graph, tensor, matmuls, weights, smooth, gram,
                                                                  smoothing is not None)
            replaced.update(m.name for m in matmuls)
            continue
        x_max = float((ranges[tensor] / smooth).max()) or 1.0
        inserted[matmuls[0].name] = _quantize_group(model.graph, tensor, matmuls, weights, smooth, x_max, gram,
                                                    smoothing is not None)
    nodes = list(model.graph.node)
    model.graph.ClearField("node")
    # each group's new nodes go before its first MatMul, where its input already exists
    model.graph.node.extend(new for node in nodes for new in inserted.get(node.name, []) + [node]
                            if new.name not in replaced)
    _drop_unused_initializers(model.graph)
    if mode == "per-token":
        _raise_opset(model, 21)
    save_model(model, target)
    activations = "int8 per token (row max, computed in the graph), after smoothing" if mode == "per-token" \
        else "int8 symmetric per-tensor, max over real tokens after smoothing"
    return {"method": "per-token" if mode == "per-token" else "static-qdq",
            "quantized_matmuls": sum(len(m) for m in groups.values()), "float_matmuls": kept,
            "float_products": list(float_products), "smoothing": smoothing, "rounding": rounding,
            "activations": activations, "weights": "int8 symmetric per-output-channel",
            "calibration_batches": len(calibration)}


def smooth_graph(source, target, batches: list[dict[str, np.ndarray]], alpha: float,
                 float_products: tuple[str, ...] = ()) -> int:
    """Write ``source`` to ``target`` (external data beside it) with SmoothQuant's migration on the
    products that are not ``float_products``: each such input divided per channel by
    ``s = max|x|^alpha / max|w|^(1-alpha)`` (an explicit ``Mul``, ranges over real tokens of
    ``batches``) and the weight rows multiplied by ``s``. Exact in float; the outlier channels of
    the activations move into weights that are quantized per channel. Returns the products smoothed.
    """
    model = onnx.load(str(source))
    groups, _ = _split_float_products(model.graph, linear_layer_inputs(model.graph), float_products)
    ranges, _ = calibration_statistics(model, list(groups), batches)
    inits = {i.name: i for i in model.graph.initializer}
    inserted = {}
    for tensor, matmuls in groups.items():
        weights = [numpy_helper.to_array(inits[m.input[1]]).astype(np.float64) for m in matmuls]  # [in, out] each
        smooth = _smoothing(ranges[tensor], weights, alpha)  # [in]
        source_name, new_inits, inserted[matmuls[0].name] = _smoothed(tensor, smooth, True)
        model.graph.initializer.extend(new_inits)
        for matmul, weight in zip(matmuls, weights):
            inits[matmul.input[1]].CopyFrom(numpy_helper.from_array((weight * smooth[:, None]).astype(np.float32),
                                                                    matmul.input[1]))
            matmul.input[0] = source_name
    nodes = list(model.graph.node)
    model.graph.ClearField("node")
    model.graph.node.extend(new for node in nodes for new in inserted.get(node.name, []) + [node])
    save_model(model, target)
    return sum(map(len, groups.values()))


def linear_layer_inputs(graph) -> dict[str, list]:
    """``{input tensor: [MatMul nodes reading it]}`` for the encoder's linear layers, in graph order.

    The heads and everything after them stay float (:func:`float_tail_nodes`).
    """
    tail = set(float_tail_nodes(graph))
    names = set(weight_matmuls(graph)) - tail
    groups: dict[str, list] = defaultdict(list)
    for node in graph.node:
        if node.name in names:
            groups[node.input[0]].append(node)
    return dict(groups)


def _split_float_products(graph, groups: dict[str, list], kinds) -> tuple[dict[str, list], int]:
    """``(groups to quantize, number of MatMuls kept float)`` for the ``kinds`` of :data:`FLOAT_PRODUCTS`.

    A ``down`` product is the only reader of its input and narrows it (``[in, out]``, in >
    out: FFN-out, MLP down projections; not a grouped-query K or V, which shares its input with Q).
    Every layer ends with one, so a product is in a ``last`` layer when no down product but its
    own layer's comes after it. Each member of a full ensemble or partial trunk has its own
    last layer, and a trunk's members read the shared layers' output together, so one input's
    products can be split between float and int8.
    """
    if not kinds:
        return groups, 0
    dims = {i.name: tuple(i.dims) for i in graph.initializer}
    down = {tensor for tensor, matmuls in groups.items()
            if len(matmuls) == 1 and len(dims[matmuls[0].input[1]]) == 2
            and dims[matmuls[0].input[1]][0] > dims[matmuls[0].input[1]][1]}
    after = _down_products_after(graph, down) if "last" in kinds else None
    quantized = {}
    for tensor, matmuls in groups.items():
        if "down" in kinds and tensor in down:
            continue
        # in a last layer, a down product reaches no down product after it; any other, only its layer's
        last_reach = 0 if tensor in down else 1
        rest = [m for m in matmuls if after is None or len(after[m.output[0]]) > last_reach]
        if rest:
            quantized[tensor] = rest
    return quantized, sum(map(len, groups.values())) - sum(map(len, quantized.values()))


def _down_products_after(graph, down: set[str]) -> dict[str, set[str]]:
    """``{tensor: the down products' inputs at or after it}`` for every node output of ``graph``."""
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    reach: dict[str, set[str]] = {}
    for node in reversed(graph.node):  # topological order: a tensor's readers come later
        for out in node.output:
            reach[out] = set().union(*(reach[o] for reader in readers[out] for o in reader.output))
            if out in down:
                reach[out].add(out)
    return reach


def channel_ranges(model, tensors: list[str], batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each tensor's per-channel max |value| over the real tokens of ``batches``: ``{name: [channels]}``.

    ``model`` is an ONNX ``ModelProto`` or a path to one.
    """
    return calibration_statistics(model, tensors, batches)[0]


def calibration_statistics(model, tensors: list[str], batches: list[dict[str, np.ndarray]], gram: bool = False):
    """``(ranges, grams)``: per-channel max |value| (``[channels]``) and, with ``gram``, ``X^T X``
    (``[channels, channels]``, float64) of each tensor over the real tokens of ``batches``."""
    ranges: dict[str, np.ndarray] = {}
    grams: dict[str, np.ndarray] = {}
    for name, rows in _real_token_rows(model, tensors, batches):  # [tokens, channels]
        peak = np.abs(rows).max(axis=0)  # [channels]
        ranges[name] = peak if name not in ranges else np.maximum(ranges[name], peak)
        if gram:
            grams[name] = grams.get(name, 0.0) + rows.T @ rows
    return ranges, grams


def _real_token_rows(model, tensors: list[str], batches):
    """``(tensor, [tokens, channels] float64)`` for each batch and tensor, padding positions left out."""
    ort = require("onnxruntime", "export")
    model = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in declared)
    with tempfile.TemporaryDirectory() as tmp:  # a file, not bytes: a large model needs its weights beside it
        save_model(probe, Path(tmp) / "probe.onnx")
        session = ort.InferenceSession(str(Path(tmp) / "probe.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    for feeds in batches:
        real = feeds["attention_mask"].astype(bool)  # [batch, seq]
        for name, value in zip(tensors, session.run(tensors, {k: v for k, v in feeds.items() if k in inputs})):
            rows = value[real] if value.shape[:2] == real.shape else value.reshape(-1, value.shape[-1])
            yield name, rows.astype(np.float64)


def fuse_ready_gelu(graph) -> int:
    """Reorder exact-GELU subgraphs into the form onnxruntime fuses; returns how many changed.

    ``Mul(0.5, 1 + erf) -> Mul(x, .)`` becomes ``Mul(x, 1 + erf) -> Mul(., 0.5)``.
    """
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    changed = 0
    for erf in (n for n in graph.node if n.op_type == "Erf"):
        add = _only_consumer(consumers, erf.output[0], "Add")
        half = add and _only_consumer(consumers, add.output[0], "Mul")
        outer = half and _only_consumer(consumers, half.output[0], "Mul")
        if not outer:
            continue
        other = [name for name in half.input if name != add.output[0]]
        if len(other) != 1 or other[0] not in constants or constants[other[0]].size != 1 \
                or float(constants[other[0]]) != 0.5:
            continue
        x = next(name for name in outer.input if name != half.output[0])
        half.input[:] = [x, add.output[0]]
        outer.input[:] = [half.output[0], other[0]]
        changed += 1
    return changed


def _only_consumer(consumers, tensor: str, op_type: str):
    users = consumers.get(tensor, [])
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _smoothing(peak: np.ndarray, weights: list[np.ndarray], alpha: float | None) -> np.ndarray:
    """``s`` ``[in]``: the input is divided by it and the weight rows ``[in, out]`` multiplied by it."""
    if alpha is None:
        return np.ones_like(peak, dtype=np.float64)
    w_peak = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # [in]
    # all-zero channels (never active, or zero weight rows) keep scale 1
    return np.where((peak > 0) & (w_peak > 0), np.power(np.maximum(peak, 1e-12), alpha)
                    / np.power(np.maximum(w_peak, 1e-12), 1 - alpha), 1.0)


def _quantize_group(graph, tensor: str, matmuls: list, weights: list[np.ndarray], smooth: np.ndarray, x_max: float,
                    gram: np.ndarray | None, smoothed: bool) -> list:
    """Smooth ``tensor`` once, then give each MatMul reading it its own Q/DQ pair and int8 weights.

    ``weights`` are the MatMuls' float weights; ``gram`` (``[in, in]``) selects GPTQ rounding, else
    round to nearest. Rewires the MatMuls and adds the initializers; returns the new nodes for the
    caller to place.
    """
    source, new_inits, new_nodes = _smoothed(tensor, smooth, smoothed)
    for matmul, weight in zip(matmuls, weights):
        name = matmul.name
        # per MatMul, even with equal values: shared Q/DQ chains are merged by onnxruntime and then not fused
        x_scale = numpy_helper.from_array(np.array(x_max / _QMAX, dtype=np.float32), f"{name}/x_scale")
        x_zero = numpy_helper.from_array(np.array(0, dtype=np.int8), f"{name}/x_zero_point")
        w_int, w_scale = _int8_weight(weight, smooth, gram)
        new_inits += [x_scale, x_zero,
                      numpy_helper.from_array(w_int, f"{name}/weight_quantized"),
                      numpy_helper.from_array(w_scale.astype(np.float32), f"{name}/weight_scale"),
                      numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), f"{name}/weight_zero_point")]
        new_nodes += [
            helper.make_node("QuantizeLinear", [source, x_scale.name, x_zero.name], [f"{name}/x_q"],
                             name=f"{name}/quantize_input"),
            helper.make_node("DequantizeLinear", [f"{name}/x_q", x_scale.name, x_zero.name], [f"{name}/x_dq"],
                             name=f"{name}/dequantize_input"),
            helper.make_node("DequantizeLinear", [f"{name}/weight_quantized", f"{name}/weight_scale",
                                                  f"{name}/weight_zero_point"], [f"{name}/w_dq"],
                             name=f"{name}/dequantize_weight", axis=1),
        ]
        matmul.input[:] = [f"{name}/x_dq", f"{name}/w_dq"]
    graph.initializer.extend(new_inits)
    return new_nodes


def _smoothed(tensor: str, smooth: np.ndarray, smoothed: bool) -> tuple[str, list, list]:
    """``(tensor the products read, initializers, nodes)``: ``tensor`` divided by ``smooth`` if ``smoothed``."""
    if not smoothed:
        return tensor, [], []
    source, inverse = f"{tensor}/int8/smoothed", f"{tensor}/int8/inv_smooth"
    return (source, [numpy_helper.from_array((1.0 / smooth).astype(np.float32), inverse)],
            [helper.make_node("Mul", [tensor, inverse], [source], name=f"{tensor}/int8/smooth")])


def _int8_weight(weight: np.ndarray, smooth: np.ndarray, gram: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 [in, out], scale [out])`` of ``weight`` with rows times ``smooth``; GPTQ with ``gram``, else nearest."""
    scaled = weight * smooth[:, None]  # [in, out]
    scale = np.maximum(np.abs(scaled).max(axis=0), 1e-30) / _QMAX  # [out]
    if gram is None:
        return np.clip(np.round(scaled / scale), -_QMAX, _QMAX).astype(np.int8), scale
    return gptq_round(scaled, gram, scale), scale


def _quantize_group_per_token(graph, tensor: str, matmuls: list, weights: list[np.ndarray], smooth: np.ndarray,
                              gram: np.ndarray | None, smoothed: bool) -> list:
    """Quantize ``tensor`` once per token (one scale per row, computed in the graph) for all its MatMuls.

    Each MatMul becomes onnxruntime's ``MatMulIntegerToFloat`` with the weight's column scales,
    followed by the row scales; the returned nodes write the MatMul's own output, so the caller
    drops the MatMul. Needs opset 21 (blocked ``QuantizeLinear``: one scale per row).
    """
    prefix = f"{tensor}/int8"
    source, new_inits, new_nodes = _smoothed(tensor, smooth, smoothed)
    new_inits += [numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/last_axis"),
                  numpy_helper.from_array(np.array(1e-30 / _QMAX, np.float32), f"{prefix}/tiny"),
                  numpy_helper.from_array(np.array(1.0 / _QMAX, np.float32), f"{prefix}/inv_qmax"),
                  numpy_helper.from_array(np.array(128, np.uint8), f"{prefix}/zero_point")]
    row_scale = f"{prefix}/row_scale"  # [..., 1]: max |x| of the token over 127
    new_nodes += [
        helper.make_node("Abs", [source], [f"{prefix}/abs"], name=f"{prefix}/abs"),
        helper.make_node("ReduceMax", [f"{prefix}/abs", f"{prefix}/last_axis"], [f"{prefix}/row_max"],
                         name=f"{prefix}/row_max", keepdims=1),
        helper.make_node("Mul", [f"{prefix}/row_max", f"{prefix}/inv_qmax"], [f"{prefix}/row_scale_raw"],
                         name=f"{prefix}/row_scale_raw"),
        # an all-zero row would divide by zero; its int8 values are 0 whatever the scale
        helper.make_node("Max", [f"{prefix}/row_scale_raw", f"{prefix}/tiny"], [row_scale], name=row_scale),
        # uint8 around 128: onnxruntime's integer kernels are fast for uint8 x int8, not int8 x int8;
        # a blocked QuantizeLinear wants one zero point per scale
        helper.make_node("Shape", [row_scale], [f"{prefix}/row_shape"], name=f"{prefix}/row_shape"),
        helper.make_node("ConstantOfShape", [f"{prefix}/row_shape"], [f"{prefix}/row_zero_point"],
                         name=f"{prefix}/row_zero_point", value=numpy_helper.from_array(np.array([128], np.uint8))),
        helper.make_node("QuantizeLinear", [source, row_scale, f"{prefix}/row_zero_point"], [f"{prefix}/x_q"],
                         name=f"{prefix}/quantize", axis=-1, block_size=len(smooth)),
    ]
    for matmul, weight in zip(matmuls, weights):
        name = matmul.name
        w_int, w_scale = _int8_weight(weight, smooth, gram)
        new_inits += [numpy_helper.from_array(w_int, f"{name}/weight_quantized"),
                      numpy_helper.from_array(w_scale.astype(np.float32), f"{name}/weight_scale"),
                      numpy_helper.from_array(np.array(1.0, np.float32), f"{name}/unit_scale")]
        new_nodes += [
            # [..., out] = int32 products x column scales; the row scale is one more pass
            helper.make_node("MatMulIntegerToFloat", [f"{prefix}/x_q", f"{name}/weight_quantized",
                                                      f"{name}/unit_scale", f"{name}/weight_scale",
                                                      f"{prefix}/zero_point"],
                             [f"{name}/column_scaled"], name=f"{name}/int8_matmul", domain="com.microsoft"),
            helper.make_node("Mul", [f"{name}/column_scaled", row_scale], [matmul.output[0]],
                             name=f"{name}/row_scaled"),
        ]
    graph.initializer.extend(new_inits)
    return new_nodes


def gptq_round(weight: np.ndarray, gram: np.ndarray, scale: np.ndarray, damping: float = 0.01) -> np.ndarray:
    """Round ``weight`` ``[in, out]`` to int8 levels of ``scale`` ``[out]``, minimising ``|X W - X Q|``.

    GPTQ (Frantar et al., 2023): input rows are rounded one at a time, largest ``X^T X``
    diagonal first, and each row's rounding error is spread over the rows not yet rounded in
    the direction the calibration inputs ``X`` (through ``gram = X^T X``, ``[in, in]``) make
    cheapest. Rounding to nearest treats every row alone.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(512, 16)) @ rng.normal(size=(16, 16))  # correlated inputs
    >>> w = rng.normal(size=(16, 4)); scale = np.abs(w).max(axis=0) / 127
    >>> error = lambda q: np.abs(x @ (q * scale - w)).mean()
    >>> float(round(error(gptq_round(w, x.T @ x, scale)) / error(np.round(w / scale)), 2))
    0.75
    """
    h = np.array(gram, dtype=np.float64)  # [in, in]
    w = np.array(weight, dtype=np.float64)  # [in, out]
    dead = np.diag(h) == 0  # inputs never active in calibration: nothing to compensate through them
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damping * np.mean(np.diag(h))  # keeps the inverse well conditioned
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[order], h[np.ix_(order, order)]
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # [in, in], inv(h) = upper^T upper
    q = np.empty_like(w)
    for i in range(w.shape[0]):
        q[i] = np.clip(np.round(w[i] / scale), -_QMAX, _QMAX)  # [out]
        error = (w[i] - q[i] * scale) / upper[i, i]  # [out]
        w[i + 1:] -= np.outer(upper[i, i + 1:], error)  # [in - i - 1, out]
    rounded = np.empty_like(q)
    rounded[order] = q
    return rounded.astype(np.int8)


def _raise_opset(model, version: int) -> None:
    """Declare ``version`` of the default domain (from 18, only new types and attributes) and com.microsoft."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, version)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = max(model.ir_version, 10)  # opset 21 needs IR 10


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def _quantize_dynamic(source, target) -> dict:
    quantization = require("onnxruntime.quantization", "export")
    model = onnx.load(str(source), load_external_data=False)
    tail = set(float_tail_nodes(model.graph))
    matmuls = [name for name in weight_matmuls(model.graph) if name not in tail]
    excluded = sorted(tail | {n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in matmuls})
    large = sum(os.path.getsize(p) for p in _weight_files(source)) > _INLINE_LIMIT
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises "pre-processing" on the root logger, for every model
    try:
        quantization.quantize_dynamic(str(source), str(target), per_channel=True,
                                      weight_type=quantization.QuantType.QInt8, op_types_to_quantize=["MatMul"],
                                      nodes_to_exclude=excluded, use_external_data_format=large)
    finally:
        root.setLevel(level)
    return {"method": "dynamic", "quantized_matmuls": len(matmuls)}


def _weight_files(source) -> list[str]:
    source = os.fspath(source)
    return [p for p in (source, source + ".data") if os.path.exists(p)]
