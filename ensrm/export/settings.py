"""``ExportSettings``: how a bundle is exported, as one frozen object (stdlib only, cheap to import).

:func:`~ensrm.export.exporter.export_bundle` and ``ens-export`` take the same settings; a script
builds them once and reuses them for several sources, or changes one field with :meth:`replace`.

>>> settings = ExportSettings(pooling="mean", precisions="fp16,int8", calibration="calib.jsonl")
>>> settings.replace(uwo_lambda=1.0).uwo_lambda, settings.dtype
(1.0, 'fp32')
>>> ExportSettings(uwo_lambda=-1)
Traceback (most recent call last):
...
ensrm.errors.ExportError: `uwo_lambda` must be >= 0, got -1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ensrm.errors import ExportError

PathLike = str | Path


@dataclass(frozen=True, kw_only=True)
class ExportSettings:
    """Everything an export is told besides its sources, its output and how it reports progress.

    Fields are keyword-only, so new ones (a ``dtype``, say) can be added anywhere without breaking
    a caller. Grouped by the step they steer:

    - **the source**: ``heads`` (a ``heads.safetensors`` for a base model), ``tokenizer`` (a
      directory to take the tokenizer from when the source has none), ``pooling``, ``max_length``,
      ``padding_side``, ``attn_implementation``, ``trust_remote_code``;
    - **the graph**: ``dtype`` (``fp32``, ``bf16`` or ``fp16``: what the model is loaded in and
      ``model.onnx`` holds, :mod:`ensrm.export.dtypes`), ``uwo_lambda`` (the UWO penalty baked into
      ``ens_uwo``), ``tolerance`` (largest head difference from torch that verification accepts;
      ``None``: a share of the largest head torch gives, at least 1 — 1e-4 for fp32, 2% for fp16, 6%
      for bf16 — recorded in the manifest),
      ``cpu_graph`` (also write ``model.cpu.onnx``, onnxruntime's fused CPU form), ``threads``
      (onnxruntime threads while checking);
    - **calibration**: ``normalize_on`` (JSONL records for the per-head normalisation);
    - **precision variants**: ``precisions`` (``"fp16,int8"`` or a sequence), ``calibration`` and
      ``eval_on`` (JSONL records), ``int8_mode``, ``gates`` (accuracy-gate thresholds);
    - **TensorRT**: ``tensorrt_batches`` (batch sizes of the engines built after the export).
    """

    heads: PathLike | None = None
    tokenizer: PathLike | None = None
    pooling: str | None = None
    max_length: int | None = None
    padding_side: str | None = None
    attn_implementation: str = "eager"
    trust_remote_code: bool = False
    uwo_lambda: float = 0.5
    tolerance: float | None = None
    dtype: str = "fp32"
    cpu_graph: bool = True
    threads: int | None = None
    normalize_on: PathLike | None = None
    precisions: str | Sequence[str] = ()
    calibration: PathLike | None = None
    eval_on: PathLike | None = None
    int8_mode: str = "static"
    gates: dict | None = None
    tensorrt_batches: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.uwo_lambda < 0:
            raise ExportError(f"`uwo_lambda` must be >= 0, got {self.uwo_lambda}")
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ExportError(f"`dtype` must be one of fp32, bf16, fp16, got {self.dtype!r}")
        if self.tensorrt_batches is not None:  # a tuple, so the settings compare and print as given
            object.__setattr__(self, "tensorrt_batches", tuple(self.tensorrt_batches))

    def replace(self, **changes) -> ExportSettings:
        """A copy with ``changes``; an unknown name raises ``TypeError`` as a misspelt keyword would."""
        return dataclasses.replace(self, **changes)
