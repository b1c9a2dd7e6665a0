"""Numpy in, scores out: the runtime needs numpy, onnxruntime and tokenizers only."""

from ensrm.runtime.scorer import Scorer
from ensrm.runtime.scores import Scores

__all__ = ["Scorer", "Scores"]
