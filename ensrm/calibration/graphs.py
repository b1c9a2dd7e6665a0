"""ONNX graph helpers shared by the precision converters and the normalisation.

The part of a bundle graph that must stay fp32 in every variant is the tail: the stacked
heads (the last matrix product before ``raw_heads``), the normalisation and the aggregates
(nodes named ``ensrm/...``). :func:`float_tail_nodes` finds it by walking back from
``raw_heads``, so it works for any source the exporter traced.
"""

from __future__ import annotations

import os
from pathlib import Path

from ensrm._optional import require
from ensrm.models.graph import NODE_PREFIX, RAW_OUTPUT

onnx = require("onnx", "export")

# Above this an ONNX protobuf cannot hold the weights inline (2 GiB limit, with headroom).
_INLINE_LIMIT = 1_800_000_000
_HEAD_PRODUCTS = ("MatMul", "Gemm", "Einsum")


def float_tail_nodes(graph) -> list[str]:
    """Names of the head nodes and every ``ensrm/`` node: what precision conversion must skip.

    Walks back from ``raw_heads`` through bias adds, reshapes and concatenations (a full
    ensemble concatenates its members' heads) and stops at each branch's first matrix product:
    MatMul/Gemm, or the Einsum of a partial trunk's per-member heads (``kbh,kh->bk``).
    """
    producers = {out: node for node in graph.node for out in node.output}
    names = [node.name for node in graph.node if node.name.startswith(NODE_PREFIX)]
    stack, seen = [RAW_OUTPUT], set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.append(node.name)
        if node.op_type not in _HEAD_PRODUCTS:
            stack.extend(i for i in node.input if i)
        if len(seen) > 64:
            raise ValueError(f"no matrix product found within 64 nodes of {RAW_OUTPUT}; "
                             "cannot tell where the heads begin")
    unnamed = [n for n in names if not n]
    if unnamed:
        raise ValueError("the graph has unnamed nodes in its tail; precision conversion needs node names")
    return names


def weight_matmuls(graph) -> list[str]:
    """MatMul nodes whose second input is a weight (initializer), i.e. the linear layers."""
    weights = {init.name for init in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def save_model(model, path: str | os.PathLike) -> None:
    """Save inline when it fits in one protobuf, else with weights in ``<name>.data`` beside it."""
    path = Path(path)
    if model.ByteSize() < _INLINE_LIMIT:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")
