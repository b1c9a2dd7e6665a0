"""``ScorerConfig``: how to score — one frozen object that every entry point builds its scorer from.

``ensrm score``, ``serve``, ``bench``, ``triton-repo``, Ray's actors and Python callers all read
the same fields, so a new backend or option is one change here (and one in the CLI's shared
option decorator), never one per command.

>>> config = ScorerConfig("bundles/default", threads=2)
>>> config.backend, config.precision, config.batch_size
('auto', 'fp32', 32)
>>> config.replace(precision="int8").precision
'int8'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ensrm.bundle import VERIFY_MODES

#: Runtimes a scorer can run on; ``auto`` picks the fastest installed one for the device.
BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
#: Precisions a scorer can ask for; ``auto`` takes ``ensrm tune``'s choice for this machine, else fp32.
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8", "int4")
#: OpenVINO's performance hint: one stream for a caller at a time, or several for concurrent callers.
HINTS = ("latency", "throughput")


@dataclass(frozen=True)
class ScorerConfig:
    """Which bundle to score with, and how: runtime, precision, device, threads, batching.

    ``providers`` are onnxruntime execution providers (``"cpu"``, ``"cuda"``, ``"tensorrt"``);
    ``None`` is the CPU. ``threads=None`` leaves the runtime's choice (one per core).
    ``batch_size`` is **pairs per model call** everywhere (``score_texts``, ``ensrm score``,
    Ray, the server's default); ``max_batch_size`` caps what one call may hold when callers
    pass bigger arrays to :meth:`Scorer.score`. ``fused`` lets onnxruntime on the CPU run the
    bundle's fused graph. ``spinning=False`` keeps idle runtime threads from busy-waiting
    (right for servers and several processes per machine). ``hint`` is OpenVINO's performance
    hint: ``"latency"`` (one stream; small batches, one caller at a time) or ``"throughput"``
    (several streams, for a server whose requests arrive concurrently).

    >>> ScorerConfig("b", backend="cuda")
    Traceback (most recent call last):
    ...
    ValueError: backend must be one of auto, onnxruntime, openvino, tensorrt, got 'cuda'
    """

    bundle: str | os.PathLike
    backend: str = "auto"
    precision: str = "fp32"
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    batch_size: int = 32
    max_batch_size: int = 256
    fused: bool = True
    verify: str = "sha256"
    spinning: bool | None = None
    hint: str = "latency"

    def __post_init__(self):
        if isinstance(self.providers, str):
            object.__setattr__(self, "providers", (self.providers,))
        elif self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers) or None)
        _choice("backend", self.backend, BACKENDS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("verify", self.verify, VERIFY_MODES)
        _choice("hint", self.hint, HINTS)
        for name in ("batch_size", "max_batch_size") + (("threads",) if self.threads is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    @classmethod
    def of(cls, bundle: str | os.PathLike | ScorerConfig, **overrides) -> ScorerConfig:
        """``bundle`` as a configuration: a path becomes a default one, a configuration is kept;
        ``overrides`` that are not ``None`` replace its fields.

        >>> ScorerConfig.of("b", threads=None, precision="int8").precision
        'int8'
        >>> ScorerConfig.of(ScorerConfig("b", threads=2), threads=None).threads
        2
        """
        config = bundle if isinstance(bundle, ScorerConfig) else cls(bundle)
        given = {name: value for name, value in overrides.items() if value is not None}
        return config.replace(**given) if given else config

    @property
    def bundle_dir(self) -> Path:
        return Path(self.bundle)

    def replace(self, **changes) -> ScorerConfig:
        """A copy with ``changes`` applied (and checked again)."""
        return dataclasses.replace(self, **changes)


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
