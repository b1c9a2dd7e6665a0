"""What an ``ensrm serve`` process is configured with: one frozen, validated dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
          "k": 1024, "kib": 1024, "m": 1024 ** 2, "mib": 1024 ** 2, "g": 1024 ** 3, "gib": 1024 ** 3}


def parse_size(text: str | int) -> int:
    """Bytes from ``"8MiB"``, ``"512k"``, ``"1000000"`` (binary units for K/M/G, decimal for KB/MB/GB).

    >>> parse_size("8MiB"), parse_size("512k"), parse_size(100)
    (8388608, 524288, 100)
    """
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"size must be a number of bytes with an optional unit (KiB, MiB, GiB, KB, MB), got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of one server.

    ``max_batch`` pairs at most go into one model call; the batcher waits at most
    ``max_wait_ms`` after the oldest queued request for more to arrive. ``max_queue`` bounds
    the pairs waiting for the model (beyond it: 503 with ``Retry-After: retry_after_s``).
    ``objective`` is the default of ``/v1/score`` and the reward of ``/get_reward``.
    ``api_key``: when set, every endpoint but ``/healthz`` needs ``Authorization: Bearer <key>``.

    >>> ServeSettings(max_batch=32).max_wait_ms
    5.0
    """

    objective: str = "uwo"
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_body_bytes: int = 8 * 1024 ** 2
    max_pairs_per_request: int = 256
    api_key: str | None = None
    retry_after_s: int = 1

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_pairs_per_request", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (self.max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_pairs_per_request > self.max_queue:
            raise ValueError(f"max_pairs_per_request ({self.max_pairs_per_request}) cannot exceed max_queue "
                             f"({self.max_queue}): such a request could never be queued")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")

    def __repr__(self) -> str:  # never show the key
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "api_key"}
        key = "set" if self.api_key else None
        return f"ServeSettings({', '.join(f'{k}={v!r}' for k, v in fields.items())}, api_key={key})"
