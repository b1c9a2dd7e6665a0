"""Calibration and precision: per-head normalisation, fp16 and INT8 variants, accuracy gates.

- :mod:`~ensrm.calibration.normalize` measures each head's mean and std on reference records
  and bakes ``(r_k - mu_k) / sigma_k`` into a bundle's graphs;
- :mod:`~ensrm.calibration.fp16` and :mod:`~ensrm.calibration.int8` write the precision
  variants from the fp32 graph;
- :mod:`~ensrm.calibration.metrics` and :mod:`~ensrm.calibration.gate` judge a variant by how
  well its rankings agree with fp32 (Spearman, best-of-n top-1, flip rate), not by mean error;
- :mod:`~ensrm.calibration.variants` ties them together for ``ens-export`` and ``ensrm quantize``.

Everything here runs at export time and may import onnx; the runtime never imports it.
"""
