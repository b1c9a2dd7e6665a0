"""The INT8 variant: the encoder's linear layers in int8, everything else in float.

``static`` (default) writes explicit QuantizeLinear/DequantizeLinear pairs: symmetric int8
activations calibrated on records (zero point 0, as TensorRT requires) and symmetric
per-output-channel int8 weights. Only the inputs of the weight MatMuls are quantized; their
outputs stay float, because a transformer's residual stream carries outliers (a few channels
two orders of magnitude above the rest) that one per-tensor scale cannot hold.
Embeddings, LayerNorm, attention's activation-by-activation products, the heads, the
normalisation and the aggregation stay float.

``dynamic`` quantizes the same weights and computes activation scales per batch at run
time: no calibration data, onnxruntime CPU only (TensorRT cannot build it).
"""

from __future__ import annotations

import os

import numpy as np

from ensrm._optional import require
from ensrm.calibration.graphs import _INLINE_LIMIT, float_tail_nodes, weight_matmuls

onnx = require("onnx", "export")

MODES = ("static", "dynamic")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = batches
        self._iter = iter(batches)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self._batches)


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike, mode: str = "static",
                  calibration: list[dict[str, np.ndarray]] | None = None) -> dict:
    """Write the INT8 variant of the fp32 graph ``source`` to ``target``.

    ``calibration`` is a list of feeds (``input_ids``, ``attention_mask``, ...) for ``static``.

    >>> quantize_int8("b/model.onnx", "b/model.int8.onnx", "static", batches)   # doctest: +SKIP
    {'method': 'static-qdq', 'quantized_matmuls': 36, ...}
    """
    quantization = require("onnxruntime.quantization", "export")
    if mode not in MODES:
        raise ValueError(f"INT8 mode must be one of {', '.join(MODES)}, got {mode!r}")
    model = onnx.load(str(source), load_external_data=False)
    tail = set(float_tail_nodes(model.graph))
    matmuls = [name for name in weight_matmuls(model.graph) if name not in tail]
    excluded = sorted(tail | {n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in matmuls})
    large = sum(os.path.getsize(p) for p in _weight_files(source)) > _INLINE_LIMIT
    common = dict(per_channel=True, weight_type=quantization.QuantType.QInt8, op_types_to_quantize=["MatMul"],
                  nodes_to_exclude=excluded, use_external_data_format=large)
    if mode == "dynamic":
        quantization.quantize_dynamic(str(source), str(target), **common)
        return {"method": "dynamic", "quantized_matmuls": len(matmuls)}
    if not calibration:
        raise ValueError("static INT8 quantization needs calibration batches")
    quantization.quantize_static(
        str(source), str(target), _Reader(calibration), quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": True, "WeightSymmetric": True,
            # MatMul weights are [in, out]: one scale per output column
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            "OpTypesToExcludeOutputQuantization": ["MatMul"],
        },
        **common,
    )
    return {"method": "static-qdq", "quantized_matmuls": len(matmuls), "activations": "int8 symmetric per-tensor",
            "weights": "int8 symmetric per-channel", "calibration_batches": len(calibration)}


def _weight_files(source) -> list[str]:
    source = os.fspath(source)
    return [p for p in (source, source + ".data") if os.path.exists(p)]
