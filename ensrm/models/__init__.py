"""The models a bundle is made of: one home that export, calibration, train and bench import.

- :mod:`ensrm.models.modules`: what is traced into ``model.onnx`` (an encoder or decoder with its K
  stacked heads, a full ensemble of K classifiers, the plain classifier) and the pooling it uses.
- :mod:`ensrm.models.trunk`: the partially shared trunk (K members sharing their first layers),
  its checkpoint format and loader.
- :mod:`ensrm.models.graph`: the ONNX tail written by hand (normalisation and aggregates) that
  export appends to the traced graph and calibration rewrites in place.

They need the ``export`` extra (torch, transformers, onnx); importing this package itself loads nothing.
They sit above the runtime (which never imports torch) and below export, calibration and train
(``tests/test_layout.py`` holds the order).
"""
