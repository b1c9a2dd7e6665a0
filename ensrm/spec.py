"""The one description of a bundle: what the graph takes, what it returns, how it was made.

:class:`EnsembleSpec` is written to ``ensemble.json`` by the exporter and read back by the
runtime, the calibration and the TensorRT builder, so names of inputs, outputs, files and
precisions live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "ensemble.json"

#: Graph outputs, in order (Contract). ``heads`` is ``[batch, K]``, the rest ``[batch]``.
OUTPUT_NAMES = ("heads", "ens_mean", "ens_std", "ens_min", "ens_uwo")
#: Possible graph inputs, in order; a bundle declares the subset its encoder uses.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: The model file of each precision (Contract): ONNX, except ``int4``, which only OpenVINO runs (an
#: IR of NNCF-compressed weights, :mod:`ensrm.calibration.openvino_weights`). A variant's manifest
#: entry names its actual file (an OpenVINO INT8 variant is ``model.int8.xml``).
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "bf16": "model.onnx", "int8": "model.int8.onnx",
               "int4": "model.int4.xml"}
#: Precisions that are a runtime setting on another precision's file, not a file of their own:
#: ``bf16`` is ``model.onnx`` compiled by OpenVINO with its bf16 inference hint. Their variant
#: records the gate's verdict; rejecting one deletes nothing.
HINTED_PRECISIONS = {"bf16": "fp32"}
#: Optional provider-specific forms of the fp32 graph, by the onnxruntime execution provider that
#: has their kernels (:class:`FusedGraph`); ``model.onnx`` stays the source of truth.
FUSED_FILES = {"CPUExecutionProvider": "model.cpu.onnx"}
#: How an INT8 variant is made: static Q/DQ (TensorRT), per-token scales in the graph or
#: onnxruntime's per-batch dynamic quantizer (both onnxruntime CPU only), or NNCF's quantizer
#: writing an OpenVINO IR (``model.int8.xml``; OpenVINO CPU only), or NNCF's data-free weight
#: compression (``openvino-weights``: int8 weights; the same IR name).
INT8_MODES = ("static", "per-token", "dynamic", "openvino", "openvino-weights")

ARCHITECTURES = ("encoder", "decoder")
#: What ``model.onnx``'s weights are stored in (``ens-export --dtype``); inputs and outputs are int64 and
#: float32 whatever it is. ``fp16``: fp16 weights and matrix products; ``bf16``: bf16 weights, fp32
#: arithmetic (:mod:`ensrm.export.dtypes`).
GRAPH_DTYPES = ("fp32", "bf16", "fp16")
POOLINGS = ("cls", "mean", "last")
PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class Normalization:
    """Per-head affine normalisation ``(r_k - mu_k) / sigma_k`` applied inside the graph.

    ``records == 0`` means nothing was calibrated and the normalisation is the identity.
    """

    mu: tuple[float, ...]
    sigma: tuple[float, ...]
    records: int = 0
    reference_sha256: str | None = None

    @classmethod
    def identity(cls, num_heads: int) -> Normalization:
        return cls(mu=(0.0,) * num_heads, sigma=(1.0,) * num_heads)

    @property
    def calibrated(self) -> bool:
        return self.records > 0

    def __post_init__(self):
        if len(self.mu) != len(self.sigma):
            raise ValueError(f"normalisation has {len(self.mu)} means but {len(self.sigma)} stds")
        bad = [s for s in self.sigma if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ValueError(f"normalisation stds must be finite and positive, found {bad[:3]}")


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle with its size and sha256, checked when the bundle is loaded."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Gate:
    """Thresholds a precision variant must reach to be accepted; ``min_top1 = None`` skips best-of-n.

    >>> Gate(min_spearman=0.99, min_top1=0.95).ns
    (4, 16)
    """

    min_spearman: float
    min_top1: float | None = None
    ns: tuple[int, ...] = (4, 16)
    threshold_quantile: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gate:
        return cls(min_spearman=data["min_spearman"], min_top1=data.get("min_top1"),
                   ns=tuple(data.get("ns", (4, 16))), threshold_quantile=data.get("threshold_quantile", 0.5))


@dataclass(frozen=True)
class Variant:
    """One precision of the graph: its file, whether it was accepted, and the evidence.

    ``checks`` is the verification against torch (fp32) or the accuracy gate's report
    (fp16/int8) without its thresholds, which are ``gate``; ``method`` says how the file was
    made. A rejected variant has no file (``file is None``). In the manifest a variant is
    ``{"file", "accepted", "checks" (with "gate"), "method"}``, keyed by its precision.

    >>> Variant("fp32", "model.onnx", accepted=True).usable
    True
    """

    precision: str
    file: str | None
    accepted: bool
    checks: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] | None = None
    gate: Gate | None = None

    def __post_init__(self):
        if self.precision not in MODEL_FILES:
            raise ValueError(f"variant precision must be one of {', '.join(MODEL_FILES)}, got {self.precision!r}")

    @property
    def usable(self) -> bool:
        """Accepted and with a file: what ``Scorer(..., precision=...)`` may run."""
        return self.accepted and self.file is not None

    @classmethod
    def judged(cls, precision: str, report: dict[str, Any], gate: Gate, method: dict[str, Any] | None = None,
               file: str | None = None) -> Variant:
        """The variant a gate report decides: kept with ``file`` (default: its contract name) if it passed."""
        passed = bool(report["passed"])
        checks = {k: v for k, v in report.items() if k != "gate"}
        return cls(precision, (file or MODEL_FILES[precision]) if passed else None, passed, checks, method, gate)

    def to_dict(self) -> dict[str, Any]:
        checks = dict(self.checks)
        if self.gate is not None:
            checks["gate"] = self.gate.to_dict()
        data = {"file": self.file, "accepted": self.accepted, "checks": checks}
        if self.method is not None:
            data["method"] = self.method
        return data

    @classmethod
    def from_dict(cls, precision: str, data: dict[str, Any]) -> Variant:
        checks = dict(data.get("checks") or {})
        gate = checks.pop("gate", None)
        return cls(precision=precision, file=data.get("file"), accepted=data.get("accepted", False) is True,
                   checks=checks, method=data.get("method"), gate=None if gate is None else Gate.from_dict(gate))


@dataclass(frozen=True)
class FusedGraph:
    """A faster form of ``model.onnx`` for one execution provider, verified against it at export.

    ``provider`` is the onnxruntime execution provider whose (contrib) kernels the graph needs;
    ``checks`` compares it with the portable graph on the export's verification inputs
    (``max_abs_diff_heads``, ``max_abs_diff_aggregates``, ``tolerance``, ``passed``); ``method``
    says how it was made (tool, options, the fusions that fired). In the manifest it is
    ``"fused": {provider: {"provider", "file", "base", "checks", "method"}}``; bundles written
    before it existed have no ``fused`` key and load as before.

    >>> FusedGraph("CPUExecutionProvider", "model.cpu.onnx").base
    'fp32'
    """

    provider: str
    file: str
    base: str = "fp32"
    checks: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, provider: str, data: dict[str, Any]) -> FusedGraph:
        return cls(provider=provider, file=str(data["file"]), base=str(data.get("base", "fp32")),
                   checks=dict(data.get("checks") or {}), method=dict(data.get("method") or {}))


@dataclass(frozen=True)
class EnsembleSpec:
    """Everything the runtime and tools need to know about an exported ensemble.

    >>> spec = EnsembleSpec(num_heads=2, architecture="encoder", model_type="bert",
    ...                     pooling="cls", inputs=("input_ids", "attention_mask"),
    ...                     max_length=128, vocab_size=1000, pad_token_id=0)
    >>> spec.outputs
    ('heads', 'ens_mean', 'ens_std', 'ens_min', 'ens_uwo')
    """

    num_heads: int
    architecture: str
    model_type: str
    pooling: str
    inputs: tuple[str, ...]
    max_length: int
    vocab_size: int
    pad_token_id: int
    padding_side: str = "right"
    uwo_lambda: float = 0.5
    head_names: tuple[str, ...] = ()
    source_kind: str = "sequence-classifier"
    members: int = 1
    #: a partial trunk's transformer layers owned by each member (0: all shared, or not a trunk)
    member_layers: int = 0
    normalization: Normalization | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)
    #: per precision (``fp32``, ``fp16``, ``bf16``, ``int8``, ``int4``): the model file and its verdict
    variants: dict[str, Variant] = field(default_factory=dict)
    #: per execution provider: a verified faster form of the fp32 graph (``model.cpu.onnx``)
    fused: dict[str, FusedGraph] = field(default_factory=dict)
    source_fingerprint: str = ""
    tokenizer_file: str | None = "tokenizer.json"
    truncation_side: str = "right"
    producer: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: the dtype of ``model.onnx``'s weights (:data:`GRAPH_DTYPES`); manifests without it are fp32
    dtype: str = "fp32"

    def __post_init__(self):
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dtype not in GRAPH_DTYPES:
            raise ValueError(f"dtype must be one of {GRAPH_DTYPES}, got {self.dtype!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        if tuple(self.inputs[:2]) != INPUT_NAMES[:2] or not set(self.inputs) <= set(INPUT_NAMES):
            raise ValueError(f"inputs must start with input_ids, attention_mask; got {self.inputs}")
        if not self.head_names:
            object.__setattr__(self, "head_names", tuple(f"head_{k}" for k in range(self.num_heads)))
        if len(self.head_names) != self.num_heads:
            raise ValueError(f"{len(self.head_names)} head names for {self.num_heads} heads")
        if self.normalization is None:
            object.__setattr__(self, "normalization", Normalization.identity(self.num_heads))
        if len(self.normalization.mu) != self.num_heads:
            raise ValueError(f"normalisation covers {len(self.normalization.mu)} heads, not {self.num_heads}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return OUTPUT_NAMES

    @property
    def uses_token_type_ids(self) -> bool:
        return "token_type_ids" in self.inputs

    def replace(self, **changes) -> EnsembleSpec:
        return dataclasses.replace(self, **changes)

    def with_variants(self, *variants: Variant) -> EnsembleSpec:
        """This spec with ``variants`` added or replacing those of the same precision."""
        return self.replace(variants={**self.variants, **{v.precision: v for v in variants}})

    def describe(self) -> str:
        """One line for a terminal: heads, model, inputs and the precisions that can be run."""
        graph = "" if self.dtype == "fp32" else f", graph dtype {self.dtype}"
        return (f"{self.num_heads} heads, {self.model_type} {self.architecture}, inputs {', '.join(self.inputs)}, "
                f"precisions {', '.join(self.usable_precisions)}{graph}")

    @property
    def usable_precisions(self) -> tuple[str, ...]:
        """Precisions with an accepted model file, in manifest order."""
        return tuple(p for p, v in self.variants.items() if v.usable)

    # -- manifest ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.member_layers:
            del data["member_layers"]  # only partial trunks carry it: older manifests write back unchanged
        data["outputs"] = [
            {"name": name, "dtype": "float32", "shape": ["batch", self.num_heads] if name == "heads" else ["batch"]}
            for name in OUTPUT_NAMES
        ]
        data["inputs"] = [{"name": name, "dtype": "int64", "shape": ["batch", "seq"]} for name in self.inputs]
        data["variants"] = {precision: variant.to_dict() for precision, variant in self.variants.items()}
        if not self.fused:  # a bundle without one writes the manifest it always did
            del data["fused"]
        if self.dtype == "fp32":  # likewise an fp32 graph: manifests before --dtype write back unchanged
            del data["dtype"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleSpec:
        """Build a spec from a manifest dict; raises ``ValueError`` naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"manifest must be a JSON object, found {type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise ValueError("manifest has no integer 'format_version'")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"manifest format_version {version} is newer than this ensrm supports ({FORMAT_VERSION}); "
                "upgrade ensrm to load this bundle"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in kwargs]
        if missing:
            raise ValueError(f"manifest lacks required field(s): {', '.join(missing)}")
        inputs = kwargs["inputs"]
        kwargs["inputs"] = tuple(i["name"] if isinstance(i, dict) else i for i in inputs)
        kwargs["head_names"] = tuple(kwargs.get("head_names", ()))
        norm = kwargs.get("normalization")
        if norm is not None:
            kwargs["normalization"] = Normalization(
                mu=tuple(float(x) for x in norm["mu"]),
                sigma=tuple(float(x) for x in norm["sigma"]),
                records=int(norm.get("records", 0)),
                reference_sha256=norm.get("reference_sha256"),
            )
        kwargs["variants"] = {precision: Variant.from_dict(precision, v)
                              for precision, v in kwargs.get("variants", {}).items()}
        kwargs["fused"] = {provider: FusedGraph.from_dict(provider, g)
                           for provider, g in (kwargs.get("fused") or {}).items()}
        kwargs["files"] = {name: FileEntry(size=int(e["size"]), sha256=str(e["sha256"]))
                           for name, e in kwargs.get("files", {}).items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"manifest field has the wrong type: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> EnsembleSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)
