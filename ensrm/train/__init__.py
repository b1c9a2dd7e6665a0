"""Train multi-head reward models (K Bradley–Terry heads on one encoder).

Names are loaded lazily so that ``import ensrm.train`` stays cheap until torch is needed.

(Not run by the doctests: importing the trainer loads torch (seconds).)

>>> from ensrm.train import train_reward_model            # doctest: +SKIP
"""

from importlib import import_module

_EXPORTS = {
    "train_reward_model": "ensrm.train.trainer",
    "TrainResult": "ensrm.train.trainer",
    "TrainSettings": "ensrm.train.trainer",
    "train_with_settings": "ensrm.train.trainer",
    "build_default_model": "ensrm.train.default",
    "bradley_terry_loss": "ensrm.train.losses",
    "pairwise_metrics": "ensrm.train.metrics",
    "load_preferences": "ensrm.train.pairs",
    "expected_best_of_n": "ensrm.train.bon",
    "best_of_n_kl": "ensrm.train.bon",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ensrm.train' has no attribute {name!r}")
