"""Torch → ONNX export of reward ensembles (needs ``pip install 'ensrm[export]'``)."""
