"""What an ``ensrm serve`` process is configured with: one frozen, validated dataclass."""

from __future__ import annotations

import ipaddress
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


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1`` and ``localhost`` are loopback; ``0.0.0.0`` and real addresses are not.

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: cannot know what it resolves to
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of one server.

    ``max_batch`` pairs at most are *gathered* from concurrent requests into one batch, which
    the worker then runs as model calls of at most the scorer's ``batch_size`` pairs (the one
    meaning of batch size across commands: pairs per model call, ``--batch-size``), cut by
    length so that short pairs are not padded to long ones. The batcher waits at most
    ``max_wait_ms`` after the oldest queued request for more to arrive. ``max_queue`` bounds
    the pairs waiting for the model (beyond it: 503 with ``Retry-After: retry_after_s``).
    ``max_pairs_per_request`` (``None``: ``max_queue``) caps one request; a request larger
    than ``max_batch`` is scored alone, in model calls of ``batch_size``, so the cap protects
    memory, not the model. ``objective`` is the default of ``/v1/score`` and the reward of
    ``/get_reward``. ``api_key``: when set, every endpoint but ``/healthz`` needs it, as
    ``Authorization: Bearer <key>`` or as the password of HTTP Basic credentials (any user).
    ``request_timeout_s``: the longest a request waits for its scores (queue and model); a
    model call running longer is treated as stuck (504 with an error id, ``/readyz`` unready).

    >>> ServeSettings(max_batch=32).max_wait_ms
    5.0
    >>> ServeSettings(max_queue=4096).max_pairs_per_request
    4096
    """

    objective: str = "uwo"
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 4096
    max_body_bytes: int = 8 * 1024 ** 2
    max_pairs_per_request: int | None = None
    api_key: str | None = None
    retry_after_s: int = 1
    request_timeout_s: float = 120.0

    def __post_init__(self):
        if self.max_pairs_per_request is None:
            object.__setattr__(self, "max_pairs_per_request", self.max_queue)
        if not (self.request_timeout_s > 0):
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
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
