"""``ExportSettings``: export_bundle takes one settings object, or its fields as keywords, alike."""

import json

import pytest

pytest.importorskip("torch")

from ensrm.errors import ExportError  # noqa: E402
from ensrm.export.exporter import export_bundle  # noqa: E402
from ensrm.export.settings import ExportSettings  # noqa: E402


def test_settings_are_frozen_keyword_only_and_checked():
    settings = ExportSettings(pooling="mean", tensorrt_batches=[1, 8])
    assert settings.tensorrt_batches == (1, 8) and settings.replace(pooling="cls").pooling == "cls"
    with pytest.raises(AttributeError):
        settings.pooling = "cls"  # frozen
    with pytest.raises(TypeError):
        ExportSettings("mean")  # keyword-only: a field added later cannot shift a positional argument
    with pytest.raises(TypeError, match="poolng"):
        settings.replace(poolng="cls")
    with pytest.raises(ExportError, match="`uwo_lambda` must be >= 0"):
        ExportSettings(uwo_lambda=-0.5)


def test_unknown_keyword_is_refused_before_any_work(checkpoints, tmp_path):
    with pytest.raises(TypeError, match="tolerence"):
        export_bundle([checkpoints("bert")], tmp_path / "b", tolerence=1e-3, progress=None)
    assert list(tmp_path.iterdir()) == []


def test_settings_and_keywords_export_the_same_bundle_keywords_win(checkpoints, tmp_path):
    settings = ExportSettings(uwo_lambda=2.0, cpu_graph=False)
    export_bundle([checkpoints("bert")], tmp_path / "a", settings, progress=None)
    export_bundle([checkpoints("bert")], tmp_path / "b", uwo_lambda=2.0, cpu_graph=False, progress=None)
    export_bundle([checkpoints("bert")], tmp_path / "c", settings, uwo_lambda=3.0, progress=None)
    manifests = [json.loads((tmp_path / n / "ensemble.json").read_text()) for n in "abc"]
    assert manifests[0]["uwo_lambda"] == manifests[1]["uwo_lambda"] == 2.0 and manifests[2]["uwo_lambda"] == 3.0
    assert manifests[0]["files"].keys() == manifests[1]["files"].keys()
    assert not (tmp_path / "a" / "model.cpu.onnx").exists() and not (tmp_path / "c" / "model.cpu.onnx").exists()
