"""The dtype of the exported graph: ``fp32`` (default), ``fp16`` or ``bf16``.

The source model is loaded in the chosen dtype (no fp32 copy of its weights is ever made),
traced, and verified against torch in that same dtype. Whatever the dtype, the graph takes
int64 and returns float32 (Contract), and the heads, the pooling average, the normalisation
and the aggregates run in fp32: the heads' inputs are cast up, and the ONNX tail
(:mod:`ensrm.models.graph`) is appended in fp32.

What ``model.onnx`` holds:

- ``fp16``: the traced fp16 graph — fp16 weights and matrix products, with the upcasts the model
  code makes itself (RMSNorm variance, softmax). onnxruntime's CPU provider runs it, TensorRT
  builds it strongly typed.
- ``bf16``: bf16 *weights* with fp32 arithmetic — each bf16 weight is followed by a ``Cast`` to
  fp32 and every bf16 cast of the trace becomes fp32 (:func:`upcast_compute`). onnxruntime
  1.32's CPU provider has no bf16 kernels for ``Where``/``MatMul`` (measured: the traced bf16
  graph fails to load), so a bf16-arithmetic graph could be neither verified nor run here; the
  file is half the size of fp32, and a runtime that folds the casts holds fp32 weights in memory.
"""

from __future__ import annotations

from ensrm._optional import require
from ensrm.errors import ExportError

DTYPES = ("fp32", "bf16", "fp16")
#: Bytes per weight of each dtype.
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
#: Default verification tolerance of each dtype, relative to the largest |head| torch gives (at least 1,
#: so heads within ±1 get it as an absolute tolerance): fp32 is the reference check (a random Qwen2-0.5B
#: shape with heads near ±50 differs by 1.2e-4 at 2,048 tokens, rounding only); fp16 carries 11
#: significant bits, bf16 weights 8 and torch's bf16 arithmetic rounds every product to 8 bits.
RELATIVE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one the export writes, else an :class:`ExportError` naming the choices."""
    if dtype not in DTYPES:
        raise ExportError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def torch_dtype(dtype: str):
    """The torch dtype to load a source in: ``torch_dtype("bf16") -> torch.bfloat16``."""
    torch = require("torch", "export")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[check_dtype(dtype)]


def upcast_compute(model) -> int:
    """Rewrite a traced bf16 ONNX ``model`` in place to fp32 arithmetic on its bf16 weights.

    Each bf16 initializer ``w`` becomes ``w.bf16`` read through a ``Cast(to=FLOAT)`` named ``w``,
    except a table only read by ``Gather`` (an embedding): its gathered rows are cast instead, so
    no session holds an fp32 copy of the table (the Qwen2-0.5B shape's is 0.51 GiB in fp32);
    ``Cast(to=BFLOAT16)`` nodes cast to fp32; bf16 constants and declared bf16 types become fp32.
    Returns the number of weights kept in bf16. (Not run by the doctests: it needs a traced graph.)

    >>> upcast_compute(onnx.load("model.onnx"))          # doctest: +SKIP
    22
    """
    onnx = require("onnx", "export")
    numpy_helper = onnx.numpy_helper
    BF16, FLOAT = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    graph = model.graph
    if any(node.op_type in ("If", "Loop", "Scan") for node in graph.node) or len(model.functions):
        raise ExportError("the bf16 graph has subgraphs or local functions; export it with `dtype='fp16'` or 'fp32'")

    def to_float(tensor):
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name)

    uses: dict[str, list[tuple[object, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, index))
    outputs = {value.name for value in graph.output}
    casts, after = [], {}  # after: a Gather's (renamed) output -> the Cast of its rows
    for init in graph.initializer:
        if init.data_type != BF16:
            continue
        read = uses.get(init.name, [])
        if read and init.name not in outputs and all(n.op_type == "Gather" and i == 0 for n, i in read):
            # an embedding table: gather its bf16 rows, then cast the rows (no fp32 copy of the table)
            for node, _ in read:
                rows = node.output[0]
                node.output[0] = f"{rows}.bf16"
                after[node.output[0]] = onnx.helper.make_node("Cast", [node.output[0]], [rows], to=FLOAT,
                                                        name=f"upcast/{rows}")
            continue
        stored = f"{init.name}.bf16"
        casts.append(onnx.helper.make_node("Cast", [stored], [init.name], to=FLOAT, name=f"upcast/{init.name}"))
        init.name = stored
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == BF16:
                attr.i = FLOAT
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == BF16:
                attr.t.CopyFrom(to_float(attr.t))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == BF16:
            value.type.tensor_type.elem_type = FLOAT
    nodes = list(casts)
    for node in graph.node:
        nodes.append(node)
        if node.output and node.output[0] in after:
            nodes.append(after[node.output[0]])
    del graph.node[:]
    graph.node.extend(nodes)
    return sum(init.data_type == BF16 for init in graph.initializer)


def graph_dtypes(model) -> dict[str, int]:
    """Count the initializers of ``model`` by element type name (``{"FLOAT16": 22, "FLOAT": 3, ...}``)."""
    onnx = require("onnx", "export")
    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type)
        counts[name] = counts.get(name, 0) + 1
    return counts
