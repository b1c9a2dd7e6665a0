"""``ensrm serve``: an HTTP reward server over one :class:`~ensrm.Scorer`, with dynamic batching.

Needs the ``serve`` extra (Starlette, uvicorn, prometheus_client); nothing here is imported
by ``import ensrm``.

>>> from ensrm.serve import create_app, ServeSettings                       # doctest: +SKIP
>>> app = create_app(ensrm.Scorer("bundles/default"), ServeSettings(max_batch=32))
"""

_LAZY = {
    "create_app": ("ensrm.serve.app", "create_app"),
    "run_server": ("ensrm.serve.server", "run_server"),
    "ServeSettings": ("ensrm.serve.settings", "ServeSettings"),
    "DynamicBatcher": ("ensrm.serve.batcher", "DynamicBatcher"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ensrm.serve' has no attribute {name!r}")


__all__ = list(_LAZY)
