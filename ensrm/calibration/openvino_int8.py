"""The OpenVINO INT8 variant: NNCF's post-training quantizer, with a float scope the gate's metrics choose.

``nncf.quantize`` (transformer preset, SmoothQuant) quantizes every linear layer and attention
product of ``model.onnx`` read by OpenVINO; the result is an OpenVINO IR (``model.int8.xml`` +
``model.int8.bin``) that OpenVINO's CPU plugin runs with integer kernels. On the default model
an all-int8 graph fails the unchanged INT8 gate (issue 25: top-1@16 of ``min`` 0.873), and so
does one with the per-token work's float scope (FFN-out and the last layer: 0.928). So the
scope grows by a **sensitivity ranking driven by the gate's own metric**, computed once:

1. quantize with the starting scope (``down`` + ``last`` products float, :data:`START_SCOPE`);
2. for each product still int8, bypass its activation quantizer alone (its input stays float)
   and score the search records: the gain in the gate's worst number (top-1 agreement of the
   worst objective at the largest n, then Spearman) ranks the products;
3. add products in that order, re-scoring the cumulative scope, until the search records pass
   the gate or :data:`MAX_EXTRA` products are float;
4. run ``nncf.quantize`` again with the final ignored scope; the bundle's gate then judges
   that file on the held-out records (never seen by the search).

The search runs on calibration records, the gate on held-out ones, so the scope is not fitted
to the records that judge it. (The example is not run by the doctests: it needs a bundle and minutes.)

>>> method = quantize_openvino("b/model.onnx", "b/model.int8.xml", batches, judge)   # doctest: +SKIP
>>> method["ignored_scope"][:2]                                                      # doctest: +SKIP
['/encoder/layer.0/output/dense/MatMul', '/encoder/layer.1/output/dense/MatMul']
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensrm._optional import require

#: The IR files of the OpenVINO INT8 variant (weights in the ``.bin``).
IR_FILE = "model.int8.xml"
IR_FILES = (IR_FILE, "model.int8.bin")
#: The products kept float before the search (:data:`ensrm.calibration.int8.FLOAT_PRODUCTS`).
START_SCOPE = ("down", "last")
#: SmoothQuant strength on MatMuls (the per-token work's best on the default model).
SMOOTHING = 0.8
#: At most this many products are added to the float scope by the search.
MAX_EXTRA = 12

Scorer = Callable[[object], object]  # compiled-model backend -> Scores


def scope_names(source: str | os.PathLike, kinds=START_SCOPE) -> tuple[list[str], list[str]]:
    """``(float, int8)``: the encoder's linear-layer MatMul names kept float by ``kinds`` (and the heads'
    products, a MatMul or a Gemm), and the rest; ONNX names (:func:`nncf_quantize` finds OpenVINO's)."""
    onnx = require("onnx", "export")
    from ensrm.calibration.graphs import float_tail_nodes
    from ensrm.calibration.int8 import _split_float_products, linear_layer_inputs

    graph = onnx.load(str(source), load_external_data=False).graph
    groups = linear_layer_inputs(graph)
    quantized, _ = _split_float_products(graph, groups, kinds)
    every = [m.name for ms in groups.values() for m in ms]
    int8 = {m.name for ms in quantized.values() for m in ms}
    products = {node.name for node in graph.node if node.op_type in ("MatMul", "Gemm", "Einsum")}
    tail = [n for n in float_tail_nodes(graph) if n in products]
    return sorted(set(every) - int8) + sorted(tail), [n for n in every if n in int8]


def openvino_names(model, names) -> list[str]:
    """The operations of the OpenVINO ``model`` made from the ONNX nodes ``names``.

    OpenVINO keeps an ONNX node's name, and names the parts of a decomposed one ``NAME/...``
    (a ``Gemm`` becomes ``NAME/WithoutBiases``, a MatMul, and an ``Add``), so an ignored scope
    of ONNX names must be translated before NNCF sees it.
    """
    wanted = set(names)
    found = set()
    for op in model.get_ops():
        name = op.get_friendly_name()
        parts = name.split("/")
        if any("/".join(parts[:i]) in wanted for i in range(1, len(parts) + 1)):
            found.add(name)
    return sorted(found)


def nncf_quantize(source: str | os.PathLike, batches: list[dict[str, np.ndarray]], ignored: list[str],
                  smoothing: float = SMOOTHING):
    """``model.onnx`` read by OpenVINO and quantized by NNCF, the products of the ONNX nodes ``ignored`` left float."""
    nncf = require("nncf", "quantize")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    from ensrm.runtime.openvino_backend import core

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = core().read_model(str(source))
    ignored = openvino_names(model, ignored)  # a Gemm head is NAME/WithoutBiases in OpenVINO
    names = [port.get_any_name() for port in model.inputs]
    dataset = nncf.Dataset([{name: feeds[name] for name in names} for feeds in batches])
    return nncf.quantize(
        model, dataset, model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(batches), ignored_scope=nncf.IgnoredScope(names=list(ignored), validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smoothing)))


def _activation_quantizers(model) -> dict[str, list]:
    """``{MatMul name: [its input ports fed by a FakeQuantize of an activation]}``."""
    found: dict[str, list] = {}
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        for port in node.inputs():
            source = port.get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize" and \
                    source.input_value(0).get_node().get_type_name() != "Constant":
                found.setdefault(node.get_friendly_name(), []).append(port)
    return found


def _bypassed(model, names: set[str]):
    """A copy of ``model`` whose MatMuls ``names`` read their activations unquantized."""
    copy = model.clone()
    for name, ports in _activation_quantizers(copy).items():
        if name in names:
            for port in ports:
                port.replace_source_output(port.get_source_output().get_node().input_value(0))
    copy.validate_nodes_and_infer_types()
    return copy


def _worst(report: dict) -> tuple[float, float]:
    """The gate's two worst numbers: top-1 agreement at the largest n (worst objective), Spearman (worst)."""
    top1 = report["top1"][max(report["top1"], key=int)] if report["top1"] else {"-": 1.0}
    return min(top1.values()), min(min(report["spearman"].values()), min(report["spearman_heads"]))


def quantize_openvino(source: str | os.PathLike, target: str | os.PathLike, batches: list[dict[str, np.ndarray]],
                      judge: Callable[[object], dict], threads: int | None = None, max_extra: int = MAX_EXTRA,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Write the NNCF INT8 IR of ``source`` to ``target`` (``.xml``); return its method record.

    ``judge(compiled_backend) -> gate report`` scores the search records with a backend and
    applies the INT8 gate (the caller's records, not the held-out ones).
    """
    ov = require("openvino", "quantize")
    from ensrm.runtime.openvino_backend import OpenVINOBackend

    say = progress or (lambda message: None)
    started = time.perf_counter()
    start_float, candidates = scope_names(source)
    base = nncf_quantize(source, batches, start_float)

    def evaluate(model) -> tuple[dict, tuple[float, float]]:
        report = judge(OpenVINOBackend.from_model(model, threads=threads))
        return report, _worst(report)

    report, worst = evaluate(base)
    say(f"int8 (OpenVINO/NNCF): start scope {len(start_float)} float: top-1 {worst[0]:.3f}, spearman {worst[1]:.4f}")
    history = [{"float_extra": [], "top1": worst[0], "spearman": worst[1], "passed": report["passed"]}]
    extra: list[str] = []
    ranking: list[dict] = []
    if not report["passed"]:
        quantized = set(_activation_quantizers(base))
        for name in [c for c in candidates if c in quantized]:
            _, gain = evaluate(_bypassed(base, {name}))
            ranking.append({"name": name, "top1": gain[0], "spearman": gain[1]})
            say(f"  ranking {len(ranking)}/{len(quantized & set(candidates))}: {name} alone float: "
                f"top-1 {gain[0]:.3f}, spearman {gain[1]:.4f}")
        ranking.sort(key=lambda r: (r["top1"], r["spearman"]), reverse=True)
        for entry in ranking[:max_extra]:
            extra.append(entry["name"])
            report, worst = evaluate(_bypassed(base, set(extra)))
            history.append({"float_extra": list(extra), "top1": worst[0], "spearman": worst[1],
                            "passed": report["passed"]})
            say(f"  + {entry['name']}: top-1 {worst[0]:.3f}, spearman {worst[1]:.4f}")
            if report["passed"]:
                break
    final = nncf_quantize(source, batches, start_float + extra) if extra else base
    ov.save_model(final, str(target), compress_to_fp16=False)
    return {"method": "nncf", "runtime": f"openvino {_version(ov)}", "nncf": require("nncf", "quantize").__version__,
            "file": Path(target).name, "start_scope": list(START_SCOPE), "smoothing": SMOOTHING,
            "preset": "mixed", "model_type": "transformer", "ignored_scope": start_float + extra,
            "float_matmuls": len(start_float) + len(extra), "int8_candidates": len(candidates) - len(extra),
            "sensitivity": ranking, "search": history, "calibration_batches": len(batches),
            "search_seconds": round(time.perf_counter() - started, 1)}


def _version(ov) -> str:
    return ov.__version__.split("-")[0]
