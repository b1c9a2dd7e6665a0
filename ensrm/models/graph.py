"""ONNX pieces written by hand: the normalisation and aggregation tail of every bundle.

The traced encoder graph ends in ``raw_heads`` ``[batch, K]``. :func:`append_aggregation`
adds ``heads = (raw - mu) / sigma`` and the four aggregates as plain ONNX nodes whose
constants have fixed names, so calibration can later rewrite ``mu``/``sigma`` in place and
the precision converters can recognise (and keep in fp32) everything under ``ensrm/``.
"""

from __future__ import annotations

from ensrm._optional import require
from ensrm.spec import OUTPUT_NAMES

onnx = require("onnx", "export")
numpy_helper = onnx.numpy_helper
helper = onnx.helper

RAW_OUTPUT = "raw_heads"
MU = "ensrm_norm_mu"
SIGMA = "ensrm_norm_sigma"
LAMBDA = "ensrm_uwo_lambda"
AXIS = "ensrm_axis_k"
NODE_PREFIX = "ensrm/"
MIN_OPSET = 18  # Reduce* take their axes as an input from opset 18 on


def _node(op: str, inputs: list[str], outputs: list[str], **attrs):
    return helper.make_node(op, inputs, outputs, name=NODE_PREFIX + outputs[0], **attrs)


def aggregation_nodes(lam_name: str = LAMBDA):
    """Nodes computing ``heads`` and ``ens_*`` from ``raw_heads``; population variance (ddof=0)."""
    heads, mean, std, min_, uwo = OUTPUT_NAMES
    return [
        _node("Sub", [RAW_OUTPUT, MU], ["ensrm_centred_raw"]),
        _node("Div", ["ensrm_centred_raw", SIGMA], [heads]),  # [batch, K]
        _node("ReduceMean", [heads, AXIS], ["ensrm_mean_k"], keepdims=1),  # [batch, 1]
        _node("Sub", [heads, "ensrm_mean_k"], ["ensrm_dev"]),  # [batch, K]
        _node("Mul", ["ensrm_dev", "ensrm_dev"], ["ensrm_dev2"]),
        _node("ReduceMean", ["ensrm_dev2", AXIS], ["ensrm_var"], keepdims=0),  # [batch]
        _node("ReduceMean", [heads, AXIS], [mean], keepdims=0),  # [batch]
        _node("Sqrt", ["ensrm_var"], [std]),
        _node("ReduceMin", [heads, AXIS], [min_], keepdims=0),
        _node("Mul", ["ensrm_var", lam_name], ["ensrm_penalty"]),
        _node("Sub", [mean, "ensrm_penalty"], [uwo]),
    ]


def append_aggregation(model, num_heads: int, mu, sigma, uwo_lambda: float):
    """Turn a graph whose only output is ``raw_heads`` into one with the Contract's outputs."""
    import numpy as np

    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ValueError(f"the traced graph uses opset {opset}; ensrm needs at least {MIN_OPSET}")
    outputs = [o.name for o in graph.output]
    if outputs != [RAW_OUTPUT]:
        raise ValueError(f"expected the traced graph to output only {RAW_OUTPUT!r}, found {outputs}")
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray(mu, dtype=np.float32).reshape(num_heads), MU),
        numpy_helper.from_array(np.asarray(sigma, dtype=np.float32).reshape(num_heads), SIGMA),
        numpy_helper.from_array(np.asarray(uwo_lambda, dtype=np.float32), LAMBDA),
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), AXIS),
    ])
    graph.node.extend(aggregation_nodes())
    del graph.output[:]
    graph.output.extend(
        [helper.make_tensor_value_info(OUTPUT_NAMES[0], onnx.TensorProto.FLOAT, ["batch", num_heads])]
        + [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch"]) for name in OUTPUT_NAMES[1:]]
    )
    return model


def set_normalization(model, mu, sigma) -> None:
    """Rewrite the ``mu``/``sigma`` constants of an exported graph in place."""
    import numpy as np

    found = set()
    for init in model.graph.initializer:
        if init.name in (MU, SIGMA):
            values = np.asarray(mu if init.name == MU else sigma, dtype=np.float32)
            old = numpy_helper.to_array(init)
            if old.shape != values.shape:
                raise ValueError(f"{init.name} has shape {old.shape}, new values have {values.shape}")
            init.CopyFrom(numpy_helper.from_array(values.astype(old.dtype), init.name))
            found.add(init.name)
    if found != {MU, SIGMA}:
        raise ValueError(f"graph lacks the normalisation constants {sorted({MU, SIGMA} - found)}")
