"""ensrm: deploy multi-head reward-model ensembles as one ONNX graph.

``import ensrm`` loads numpy and the standard library only; the runtime (onnxruntime,
tokenizers) loads on first use of :class:`Scorer`.

>>> import ensrm
>>> scorer = ensrm.Scorer("bundles/minilm")          # doctest: +SKIP
"""

from ensrm.errors import BundleError, EnsrmError, ExportError, InputError, ProviderError

__version__ = "0.1.0"

_LAZY = {
    "Scorer": ("ensrm.runtime.scorer", "Scorer"),
    "Scores": ("ensrm.runtime.scores", "Scores"),
    "best_of_n": ("ensrm.runtime.best_of_n", "best_of_n"),
    "best_of_n_batch": ("ensrm.runtime.best_of_n", "best_of_n_batch"),
    "ResponseFilter": ("ensrm.runtime.filter", "ResponseFilter"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ensrm' has no attribute {name!r}")


__all__ = ["Scorer", "Scores", "best_of_n", "best_of_n_batch", "ResponseFilter", "EnsrmError", "InputError",
           "BundleError", "ExportError", "ProviderError", "__version__"]
