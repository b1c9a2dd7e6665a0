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
#: The ONNX file of each precision (Contract).
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}

ARCHITECTURES = ("encoder", "decoder")
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
    normalization: Normalization | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)
    #: per precision: ``{"file": ..., "accepted": bool, "checks": {...}}``
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    source_fingerprint: str = ""
    tokenizer_file: str | None = "tokenizer.json"
    truncation_side: str = "right"
    producer: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
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

    # -- manifest ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outputs"] = [
            {"name": name, "dtype": "float32", "shape": ["batch", self.num_heads] if name == "heads" else ["batch"]}
            for name in OUTPUT_NAMES
        ]
        data["inputs"] = [{"name": name, "dtype": "int64", "shape": ["batch", "seq"]} for name in self.inputs]
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
