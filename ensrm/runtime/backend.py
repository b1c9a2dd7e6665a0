"""The small protocol every runtime backend implements (onnxruntime, TensorRT)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Runs one bundle graph: int64 feeds by input name in, float32 outputs by name out."""

    input_names: tuple[str, ...]
    description: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on one batch; ``feeds`` holds exactly ``input_names``."""
        ...
