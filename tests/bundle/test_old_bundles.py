"""A bundle written by an earlier ensrm (commit ba588d6, before the typed variants) still loads and scores.

``data/v1-gpt2`` is a tiny GPT-2 reward model with 3 heads, normalised, with an accepted INT8 variant
and a rejected fp16 one (``file: null``), exported by that commit; ``v1-gpt2.scores.json`` holds the
scores that commit's runtime gave for a dozen pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ensrm
from ensrm.bundle import load_spec
from ensrm.errors import BundleError
from ensrm.spec import MANIFEST_NAME, EnsembleSpec

DATA = Path(__file__).parent / "data"
BUNDLE = DATA / "v1-gpt2"


def test_old_manifest_reads_and_writes_back_byte_for_byte():
    text = (BUNDLE / MANIFEST_NAME).read_text(encoding="utf-8")
    spec = EnsembleSpec.from_json(text)
    assert spec.to_json() == text
    assert spec.format_version == 1 and spec.num_heads == 3 and spec.normalization.calibrated


def test_old_variants_keep_their_verdicts():
    spec = load_spec(BUNDLE)
    assert {p: (v.accepted, v.file) for p, v in spec.variants.items()} == {
        "fp32": (True, "model.onnx"), "fp16": (False, None), "int8": (True, "model.int8.onnx")}
    with pytest.raises(BundleError, match="failed its accuracy gate"):
        ensrm.Scorer(BUNDLE, precision="fp16")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_old_bundle_scores_as_it_did(precision):
    expected = json.loads((DATA / "v1-gpt2.scores.json").read_text(encoding="utf-8"))
    # recorded with onnxruntime: the same runtime reproduces them; the default runtime (auto:
    # OpenVINO on the CPU where installed) to within the export's 1e-4
    for backend, atol in (("onnxruntime", 1e-6), ("auto", 1e-4)):
        scores = ensrm.Scorer(BUNDLE, precision=precision, threads=1, backend=backend).score_texts(
            expected["prompts"], expected["responses"], batch_size=4)
        for name, values in expected[precision].items():
            # Identical on the machine that recorded them; another CPU's kernels may round differently.
            np.testing.assert_allclose(getattr(scores, name), np.asarray(values, dtype=np.float32), rtol=0,
                                       atol=atol, err_msg=f"{backend}: {name}")
