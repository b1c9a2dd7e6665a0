"""Weight-compressed variants on OpenVINO: NNCF's ``compress_weights``, INT8 or INT4 weights.

A decoder reward model at the batch sizes a filter sees is memory-bound on a CPU: its time goes
into reading the weights. ``nncf.compress_weights`` stores the linear layers' (and the token
embedding's) weights in int8 or int4 with per-channel or per-group scales, and OpenVINO's CPU
plugin decompresses them inside its matrix kernels; the activations stay float unless the
compiled model quantizes them on the fly (``DYNAMIC_QUANTIZATION_GROUP_SIZE``). Nothing is
calibrated: it is data-free, so it needs no records beyond the gate's.

- **INT8 weights** (``--int8-mode openvino-weights``): ``int8_asym`` per output channel
  (``int8_sym`` on request), written as ``model.int8.xml`` + ``.bin``: the ``int8`` variant.
- **INT4 weights** (``--precision int4``): ``int4_sym`` in groups of :data:`GROUP_SIZE` input
  channels (a layer whose width the group does not divide gets a smaller group, at least
  :data:`MIN_GROUP_SIZE`; the sizes used are recorded), ``ratio`` of the compressible weights
  in int4 and the rest, with the embedding and NNCF's "last layer", in int8 (NNCF's backup mode),
  written as ``model.int4.xml`` + ``.bin``. It runs on OpenVINO only.

The ensemble's tail stays float in both: the stacked heads (:func:`~ensrm.calibration.graphs.float_tail_nodes`),
the normalisation and the aggregates, and optionally the ``down`` / ``last`` products of
:data:`ensrm.calibration.int8.FLOAT_PRODUCTS`. The method records NNCF's version and every
setting, the layers compressed by kind, and the compile properties the runtime must use to run
the file as it was judged (``DYNAMIC_QUANTIZATION_GROUP_SIZE``, set explicitly so a new
OpenVINO default cannot change what the gate accepted). (Not run by the doctests: it needs a
bundle.)

>>> method = compress_openvino("b/model.onnx", "b/model.int4.xml", "int4")      # doctest: +SKIP
>>> method["mode"], method["group_sizes"], method["compile"]                      # doctest: +SKIP
('int4_sym', [128], {'DYNAMIC_QUANTIZATION_GROUP_SIZE': 0})
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from ensrm._optional import require
from ensrm.calibration.openvino_int8 import IR_FILE as INT8_IR_FILE
from ensrm.errors import ExportError
from ensrm.spec import MODEL_FILES

#: The IR each weight-compressed precision is written to (weights in the ``.bin`` beside it).
IR_FILES = {"int8": INT8_IR_FILE, "int4": MODEL_FILES["int4"]}
#: NNCF modes per precision; the first is the default.
MODES = {"int8": ("int8_asym", "int8_sym"), "int4": ("int4_sym", "int4_asym")}
#: INT4's group of input channels sharing one scale (NNCF's usual choice for LLMs).
GROUP_SIZE = 128
#: The smallest group a layer whose width ``GROUP_SIZE`` does not divide may get (tiny models: 32 or 16).
MIN_GROUP_SIZE = 16
#: OpenVINO CPU property: activations of weight-compressed products quantized per group of this
#: many channels at run time (0: off, the activations stay float).
DYNAMIC_QUANTIZATION = "DYNAMIC_QUANTIZATION_GROUP_SIZE"


@dataclasses.dataclass(frozen=True)
class WeightCompression:
    """How ``compress_weights`` runs: NNCF mode, INT4 group size and ratio, products kept float, the
    run-time dynamic activation quantization group (0: off), and SmoothQuant's ``smoothing`` strength
    applied to the float graph first (``None``: off; needs calibration records).

    >>> WeightCompression(float_products=("down", "last")).for_precision("int8").mode
    'int8_asym'
    >>> WeightCompression(ratio=1.5)
    Traceback (most recent call last):
    ...
    ValueError: ratio must be in (0, 1], got 1.5
    """

    mode: str | None = None
    group_size: int = GROUP_SIZE
    ratio: float = 1.0
    float_products: tuple[str, ...] = ()
    dynamic_group_size: int = 0
    smoothing: float | None = None

    def __post_init__(self):
        from ensrm.calibration.int8 import FLOAT_PRODUCTS

        object.__setattr__(self, "float_products", tuple(self.float_products))
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.dynamic_group_size < 0:
            raise ValueError(f"dynamic_group_size must be >= 0 (0: off), got {self.dynamic_group_size}")
        if self.smoothing is not None and not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be between 0 and 1, got {self.smoothing}")
        unknown = [p for p in self.float_products if p not in FLOAT_PRODUCTS]
        if unknown:
            raise ValueError(f"float_products must be among {', '.join(FLOAT_PRODUCTS)}, got {unknown[0]!r}")
        modes = MODES["int8"] + MODES["int4"]
        if self.mode is not None and self.mode not in modes:
            raise ValueError(f"weight compression mode must be one of {', '.join(modes)}, got {self.mode!r}")

    def for_precision(self, precision: str) -> WeightCompression:
        """These settings for ``precision``: the given mode if it makes ``precision`` weights, else its default
        (``mode="int4_asym"`` with ``int8,int4`` sets INT4's mode only).

        >>> WeightCompression(mode="int4_asym").for_precision("int8").mode
        'int8_asym'
        """
        if precision not in MODES:
            raise ValueError(f"weights compress to {' or '.join(MODES)}, not {precision!r}")
        if self.mode in MODES[precision]:
            return self
        return dataclasses.replace(self, mode=MODES[precision][0])


def float_scope(source: str | os.PathLike, model, float_products=()) -> list[str]:
    """OpenVINO names of what stays float: the heads and the ensemble's tail, and ``float_products``."""
    onnx = require("onnx", "export")
    from ensrm.calibration.graphs import float_tail_nodes
    from ensrm.calibration.openvino_int8 import openvino_names, scope_names

    graph = onnx.load(str(source), load_external_data=False).graph
    products = scope_names(source, tuple(float_products))[0] if float_products else []
    return openvino_names(model, list(float_tail_nodes(graph)) + products)


def compressed_layers(model) -> tuple[Counter, list[int]]:
    """``(weights by element type, INT4 group sizes)`` of a compressed OpenVINO model.

    A compressed weight is an integer constant converted to float and then shifted by its zero
    point or scaled (the first input of that ``Subtract`` / ``Multiply``; a zero point is the
    second). A grouped one has three axes, and its scale is 1 long on the group's axis.
    """
    kinds: Counter = Counter()
    groups: set[int] = set()
    for op in model.get_ops():
        kind = str(op.get_element_type().get_type_name()) if op.get_type_name() == "Constant" else ""
        if kind not in ("u8", "i8", "u4", "i4"):
            continue
        users = [t for c in op.output(0).get_target_inputs() if c.get_node().get_type_name() == "Convert"
                 for t in c.get_node().output(0).get_target_inputs()]
        if not any(t.get_index() == 0 for t in users):
            continue  # a zero point
        kinds[kind] += 1
        shape = list(op.get_output_partial_shape(0).to_shape())
        if len(shape) == 3:
            groups.add(_group_size(users[0].get_node(), shape))
    return kinds, sorted(groups)


def _group_size(node, shape: list[int]) -> int:
    """The group of a 3-axis weight: its length on the axis where the scale (``node``'s ``Multiply``) is 1."""
    while node.get_type_name() != "Multiply":  # past the zero point's Subtract
        node = next(iter(node.output(0).get_target_inputs())).get_node()
    scale = list(node.input_value(1).get_partial_shape().to_shape())
    return next(w for w, s in zip(shape, scale) if s == 1 and w > 1)


def compress_openvino(source: str | os.PathLike, target: str | os.PathLike, precision: str,
                      settings: WeightCompression | None = None, batches: list | None = None) -> dict:
    """Compress the weights of ``source`` (``model.onnx``) to ``precision``, write the IR ``target``; return its method.

    ``precision`` is ``int8`` or ``int4``; the file is the variant the gate then judges. With
    ``settings.smoothing``, the products to compress are smoothed first
    (:func:`~ensrm.calibration.int8.smooth_graph`, ranges from the calibration ``batches``).
    """
    settings = (settings or WeightCompression()).for_precision(precision)
    if settings.smoothing is None:
        return _compress(source, target, precision, settings)
    if not batches:
        raise ExportError("smoothing the weights before compressing them needs calibration records: "
                          "pass `calibration=CALIB.jsonl` (--calibration)")
    from ensrm.calibration.int8 import smooth_graph

    with tempfile.TemporaryDirectory(dir=Path(target).parent, prefix=".smoothed-") as tmp:
        smoothed = Path(tmp) / Path(source).name
        products = smooth_graph(source, smoothed, batches, settings.smoothing, settings.float_products)
        method = _compress(smoothed, target, precision, settings)
    return {**method, "data_free": False, "smoothing": settings.smoothing, "smoothed_products": products,
            "calibration_batches": len(batches)}


def _compress(source: Path, target, precision: str, settings: WeightCompression) -> dict:
    ov = require("openvino", "quantize")
    nncf = require("nncf", "quantize")
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from ensrm.runtime.openvino_backend import core, version

    started = time.perf_counter()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = core().read_model(str(source))
    ignored = float_scope(source, model, settings.float_products)
    options = {"mode": nncf.CompressWeightsMode(settings.mode),
               "ignored_scope": nncf.IgnoredScope(names=ignored, validate=False)}
    if precision == "int4":
        options.update(group_size=settings.group_size, ratio=settings.ratio,
                       advanced_parameters=AdvancedCompressionParameters(
                           group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                           min_adjusted_group_size=MIN_GROUP_SIZE))
    compressed = nncf.compress_weights(model, **options)
    kinds, groups = compressed_layers(compressed)
    if not kinds:
        raise ExportError(f"NNCF compressed no weight of {Path(source).name}: nothing to make a {precision} variant of")
    ov.save_model(compressed, str(target), compress_to_fp16=False)
    method = {"method": "nncf-weights", "runtime": f"openvino {version()}", "nncf": nncf.__version__,
              "file": Path(target).name, "mode": settings.mode, "data_free": True,
              "ignored_scope": ignored, "float_products": list(settings.float_products),
              "compressed": {"int8": kinds["u8"] + kinds["i8"], "int4": kinds["u4"] + kinds["i4"]},
              "compile": {DYNAMIC_QUANTIZATION: settings.dynamic_group_size},
              "seconds": round(time.perf_counter() - started, 1)}
    if precision == "int4":
        method.update(group_size=settings.group_size, group_sizes=groups, ratio=settings.ratio,
                      backup_mode="int8_asym", all_layers=False)
    return method
