#!/usr/bin/env bash
# Run the GPU tests (TensorRT engine build + TensorRT backend vs onnxruntime) on a machine
# with an NVIDIA GPU. Needs: pip install -e '.[export,tensorrt,dev]' (tensorrt, cuda-python).
# Prints what is missing instead of failing obscurely; exit status is pytest's.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
echo "== GPU"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi not found: no NVIDIA driver on this machine"
echo "== packages"
"$PY" - <<'PY'
import importlib
for name in ("tensorrt", "cuda.bindings.runtime", "cuda.cudart", "onnxruntime", "torch"):
    try:
        module = importlib.import_module(name)
        print(f"{name:<22} {getattr(module, '__version__', 'ok')}")
    except ImportError as exc:
        print(f"{name:<22} MISSING ({exc.__class__.__name__})")
try:
    import onnxruntime
    print("onnxruntime providers  ", ", ".join(onnxruntime.get_available_providers()))
except ImportError:
    pass
PY
echo "== tests (-m gpu)"
HF_HUB_OFFLINE=1 "$PY" -m pytest -m gpu -rs -q tests/calibration/test_tensorrt.py "$@"
