"""The fp16 variant: fp16 weights and matrix products, fp32 inputs, outputs and sensitive ops.

LayerNorm, softmax, reductions, the heads, the normalisation and the aggregation stay fp32:
LayerNorm's variance and the variance over nearly equal heads overflow or cancel in fp16
(the NaN reports against fp16 transformer graphs in onnxruntime and TensorRT come from
there). A Cast is inserted at every boundary, so a TensorRT strongly typed build reads the
precision of each layer from the file.
"""

from __future__ import annotations

import os

from ensrm._optional import require
from ensrm.calibration.graphs import _INLINE_LIMIT, float_tail_nodes, save_model

onnx = require("onnx", "export")

#: Op types kept fp32 in the fp16 variant (normalisations, softmax, reductions, powers).
FP32_OPS = (
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization",
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMin", "ReduceMax",
    "ReduceL2", "Pow", "Sqrt", "Reciprocal", "CumSum", "Range",
)


def convert_fp16(source: str | os.PathLike, target: str | os.PathLike) -> dict:
    """Write the fp16 variant of the fp32 graph ``source`` to ``target``; return what was kept fp32.

    (Not run by the doctests: it needs a bundle on disk.)

    >>> convert_fp16("bundle/model.onnx", "bundle/model.fp16.onnx")     # doctest: +SKIP
    {'method': 'fp16', 'fp32_ops': [...], 'fp32_nodes': 13}
    """
    float16 = require("onnxruntime.transformers.float16", "export")
    model = onnx.load(str(source))  # with its external weights
    tail = float_tail_nodes(model.graph)
    block = sorted(set(FP32_OPS) | set(float16.DEFAULT_OP_BLOCK_LIST))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=block, node_block_list=tail,
        # onnx shape inference refuses protobufs over 2 GiB; the converter then works without it
        disable_shape_infer=model.ByteSize() > _INLINE_LIMIT,
    )
    removed = remove_round_trips(converted.graph)
    save_model(converted, target)
    return {"method": "fp16", "fp32_ops": list(FP32_OPS), "fp32_nodes": len(tail), "round_trips_removed": removed}


def remove_round_trips(graph) -> int:
    """Drop ``Cast(fp16)`` → ``Cast(fp32)`` pairs, so fp32 nodes feed each other in fp32.

    The converter casts every tensor between two kept-fp32 nodes down to fp16 and back,
    which rounds the tail (normalisation, variance, aggregates) to fp16 after all.
    """
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producers = {out: node for node in graph.node for out in node.output}
    removed = 0
    for node in graph.node:
        first = producers.get(node.input[0]) if cast_to(node) == FLOAT else None
        if first is not None and cast_to(first) == FLOAT16:
            # the second cast reads what the first one read: an fp32 tensor (a no-op cast), or an
            # integer one such as the attention mask that mean pooling casts (then it is the cast
            # the fp32 graph had)
            node.input[0] = first.input[0]
            removed += 1
    outputs = {o.name for o in graph.output}
    # drop nodes whose outputs nobody reads any more (the casts of the round trips)
    while True:
        used = {i for node in graph.node for i in node.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    return removed
