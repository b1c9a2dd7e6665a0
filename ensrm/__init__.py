"""ensrm: deploy multi-head reward-model ensembles as one ONNX graph.

``import ensrm`` loads numpy and the standard library only; the runtime (onnxruntime,
tokenizers) loads on first use of :class:`Scorer`.

The functions that make bundles and train models are here too, loaded on first use (they need
the ``export`` extra: torch, transformers, onnx), so a script needs no deep module paths:
:func:`export_bundle` with :class:`ExportSettings`, :func:`add_variants`, :func:`calibrate_bundle`,
:func:`train_reward_model` with :class:`TrainSettings`.

>>> import ensrm
>>> sorted(name for name in ensrm.__all__ if name.endswith("Settings"))
['ExportSettings', 'TrainSettings']
>>> ensrm.ExportSettings(pooling="mean").pooling
'mean'

(Not run by the doctests: the lines below need a bundle or a checkpoint on disk.)

>>> scorer = ensrm.Scorer("bundles/minilm")                                      # doctest: +SKIP
>>> ensrm.export_bundle(["checkpoints/rm"], "bundles/rm", normalize_on="refs.jsonl")   # doctest: +SKIP
"""

from ensrm.errors import BundleError, EnsrmError, ExportError, InputError, ProviderError

__version__ = "0.1.0"

_LAZY = {
    "Scorer": ("ensrm.runtime.scorer", "Scorer"),
    "ScorerConfig": ("ensrm.runtime.config", "ScorerConfig"),
    "Scores": ("ensrm.runtime.scores", "Scores"),
    "best_of_n": ("ensrm.runtime.best_of_n", "best_of_n"),
    "best_of_n_batch": ("ensrm.runtime.best_of_n", "best_of_n_batch"),
    "ResponseFilter": ("ensrm.runtime.filter", "ResponseFilter"),
    # making bundles and training (the export extra)
    "export_bundle": ("ensrm.export.exporter", "export_bundle"),
    "ExportSettings": ("ensrm.export.settings", "ExportSettings"),
    "add_variants": ("ensrm.calibration.variants", "add_variants"),
    "calibrate_bundle": ("ensrm.calibration.normalize", "calibrate_bundle"),
    "train_reward_model": ("ensrm.train.trainer", "train_reward_model"),
    "TrainSettings": ("ensrm.train.trainer", "TrainSettings"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ensrm' has no attribute {name!r}")


__all__ = ["Scorer", "ScorerConfig", "Scores", "best_of_n", "best_of_n_batch", "ResponseFilter", "EnsrmError",
           "InputError", "BundleError", "ExportError", "ProviderError", "__version__",
           "export_bundle", "ExportSettings", "add_variants", "calibrate_bundle", "train_reward_model",
           "TrainSettings"]
