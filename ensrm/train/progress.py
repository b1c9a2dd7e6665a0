"""A one-line progress display on stderr (no dependency on tqdm)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Rewrites one stderr line with ``done/total``, rate and optional values; silent if disabled.

    >>> bar = Progress(10, "train", enabled=False)
    >>> bar.update(loss=0.5); bar.close()
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "step", stream=None):
        self.total, self.desc, self.enabled, self.unit = total, desc, enabled, unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self._last = time.perf_counter()
        self.values: dict[str, float | int] = {}

    def update(self, n: int = 1, **values: float) -> None:
        self.done += n
        self.values.update(values)
        now = time.perf_counter()
        if self.enabled and (now - self._last >= 0.5 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        extra = "".join(f" {k}={v:.4f}" if isinstance(v, float) else f" {k}={v}" for k, v in self.values.items())
        self.stream.write(f"\r{self.desc}: {self.done}/{self.total} {self.unit}s "
                          f"[{elapsed:.1f}s, {self.done / elapsed:.2f} {self.unit}s/s]{extra}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
