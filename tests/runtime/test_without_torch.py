"""The runtime imports and scores in a process where torch, transformers and onnx cannot load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "onnx", "onnxscript", "safetensors"}:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_import_ensrm_loads_only_numpy_and_stdlib():
    result = run_blocked("""
        import sys, json, ensrm
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       {"onnxruntime", "tokenizers", "click", "torch", "transformers", "onnx"})
        print(json.dumps(heavy))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_scoring_works_with_torch_unavailable(bundles):
    bundle = bundles("bert")
    result = run_blocked(f"""
        import json, numpy as np, ensrm
        scorer = ensrm.Scorer({str(bundle)!r})
        s = scorer.score_texts(["How are you?"], ["Fine, thanks."])
        ids = np.array([[101, 2129, 102]])
        t = scorer.score(ids, np.ones_like(ids))
        print(json.dumps({{"heads": s.heads.tolist(), "uwo": t.uwo.tolist()}}))
    """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["heads"][0]) == 4 and len(out["uwo"]) == 1


def test_export_without_torch_names_the_extra(tmp_path):
    result = run_blocked(f"""
        from ensrm.export.exporter import export_bundle
        export_bundle(["x"], {str(tmp_path / "b")!r})
    """)
    assert result.returncode != 0
    assert "pip install 'ensrm[export]'" in result.stderr


def test_top_level_facade_is_lazy_and_names_the_extra_when_used(tmp_path):
    result = run_blocked(f"""
        import sys, ensrm
        settings = ensrm.ExportSettings(pooling="mean")  # stdlib only: no extra needed to build settings
        assert not any(m.split(".")[0] in {{"onnxruntime", "torch"}} for m in sys.modules), sorted(sys.modules)
        ensrm.export_bundle(["x"], {str(tmp_path / "b")!r}, settings)
    """)
    assert result.returncode != 0
    assert "pip install 'ensrm[export]'" in result.stderr and "AssertionError" not in result.stderr
