"""Export memory: estimated and refused up front, verification sized to fit, sharded checkpoints,
long RoPE inputs with left padding."""

from __future__ import annotations

import numpy as np
import pytest

from ensrm.errors import ExportError
from ensrm.export import memory


@pytest.fixture(scope="session")
def long_decoders(tmp_path_factory):
    """``long_decoders(kind)``: a tiny sharded RoPE decoder declaring 32,768 positions (cached)."""
    from tests.models import build_long_decoder

    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = build_long_decoder(kind, tmp_path_factory.mktemp(f"long-{kind}"))
        return cache[kind]

    return get


def test_sizes_parse_and_the_estimate_grows_with_the_square_of_the_length():
    assert memory.parse_size("512M") == 512 * 2 ** 20 and memory.parse_size("2g") == 2 * 2 ** 30
    assert memory.parse_size("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ExportError, match="ENSRM_MEMORY_LIMIT"):
            memory.parse_size(bad)
    shape = memory.Shape(hidden=896, heads=14, intermediate=4864)
    one, two = memory.activation_bytes(shape, 1, 1024), memory.activation_bytes(shape, 1, 2048)
    assert 3 * one < two < 4 * one
    assert memory.activation_bytes(shape, 8, 512) == 8 * memory.activation_bytes(shape, 1, 512)
    # a 32k config is verified at a length that fits, never above the fixed ceiling
    length = memory.fitting_length(shape, 32_768, 2 ** 30)
    assert memory.activation_bytes(shape, 1, length) <= 2 ** 30 < memory.activation_bytes(shape, 1, length + 1)
    assert memory.fitting_length(shape, 32_768, 2 ** 40) == memory.MAX_VERIFY_LENGTH
    assert memory.fitting_length(shape, 100, 2 ** 40) == 100
    assert memory.rows_per_run(shape, length, 2 ** 30) == 1
    assert memory.rows_per_run(shape, 128, 2 ** 30) > 10


def test_limit_env_caps_what_is_available(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, "300M")
    assert memory.available_bytes() == 300 * 2 ** 20
    assert memory.activation_budget() == 2 ** 28  # never below 256 MiB


def test_the_activation_budget_follows_the_weights():
    assert memory.activation_budget(available=2 ** 36) == 2 * 2 ** 30  # the ceiling
    assert memory.activation_budget(available=2 ** 36, weights=2 ** 29) == int(memory.ACTIVATION_SHARE * 2 ** 29)
    assert memory.activation_budget(available=2 ** 36, weights=2 ** 20) == 2 ** 28  # never below 256 MiB
    assert memory.activation_budget(available=2 ** 30, weights=2 ** 34) == 2 ** 28  # a quarter of what is free


def test_torch_scores_then_its_weights_are_released(checkpoints):
    """The verification scores torch first and frees its weights before onnxruntime loads the graph."""
    from ensrm.export.sources import load_source
    from ensrm.export.trace import padding_side_for, spec_for
    from ensrm.export.verify import release_weights, score_with_torch

    source = load_source([checkpoints("llama")])
    spec = spec_for(source, uwo_lambda=0.5, padding_side=padding_side_for(source, None))
    params = sum(p.numel() for p in source.module.parameters())  # a tied weight is listed once
    assert 4 * params <= memory.weight_bytes_of(source.module) < 4 * params + 1024  # fp32, and small buffers
    reference = score_with_torch(source.module, source.tokenizer, spec, budget=2 ** 28)
    assert reference.heads.shape == (len(reference.items), 4) and np.isfinite(reference.heads).all()
    release_weights(source.module)
    assert all(t.is_meta for t in [*source.module.parameters(), *source.module.buffers()])


def test_sharded_checkpoint_parameters_are_counted(long_decoders):
    import torch
    from transformers import AutoModelForSequenceClassification

    path = long_decoders("qwen2")
    shards = sorted(p.name for p in path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (path / "model.safetensors.index.json").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    assert memory.checkpoint_parameters(path) == sum(p.numel() for p in model.parameters())
    assert memory.weight_bytes([path], 2) == 2 * memory.checkpoint_parameters(path)


def test_export_refuses_up_front_when_memory_is_short(long_decoders, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ensrm.cli import main
    from ensrm.export.exporter import export_bundle

    monkeypatch.setenv(memory.LIMIT_ENV, "1M")
    with pytest.raises(ExportError, match=r"in bf16 needs about \d+\.\d+ GiB \(3\.5 x 0\.00 GiB of weights \+ "
                                          r"0\.25 GiB for activations\), but only 0\.00 GiB is available "
                                          r"\(ENSRM_MEMORY_LIMIT\)"):
        export_bundle([long_decoders("qwen2")], tmp_path / "rm", dtype="bf16", progress=None)
    result = CliRunner().invoke(main, ["export", str(long_decoders("qwen2")), "-o", str(tmp_path / "rm")])
    assert result.exit_code == 1 and "only 0.00 GiB is available" in result.output
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging directory


def test_the_estimate_of_a_source_traced_in_a_child_uses_its_factor(long_decoders, monkeypatch):
    path = long_decoders("qwen2")
    weights = memory.weight_bytes([path], 2)
    assert weights < memory.TRACE_CHILD_MIN_BYTES  # a tiny model is traced in-process
    estimate = memory.check_export_memory([path], "bf16", available=2 ** 40)
    assert estimate["estimated_peak_bytes"] == int(memory.PEAK_FACTOR * weights) + 2 ** 28
    monkeypatch.setattr(memory, "TRACE_CHILD_MIN_BYTES", weights)  # as if it were large
    estimate = memory.check_export_memory([path], "bf16", available=2 ** 40)
    two = 2 * memory.PROCESS_BYTES  # the parent and the child, each with torch imported
    assert estimate["estimated_peak_bytes"] == two + int(memory.CHILD_PEAK_FACTOR * weights) + 2 ** 28
    with pytest.raises(ExportError, match=rf"needs about 1\.25 GiB \(2 processes x 0\.50 GiB \+ "
                                          rf"{memory.CHILD_PEAK_FACTOR:g} x 0\.00 GiB of weights \+ 0\.25 GiB"):
        memory.check_export_memory([path], "bf16", available=2 ** 20)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_a_32k_config_verifies_2048_tokens_left_padded(long_decoders, tmp_path, kind):
    """The bundle accepts the config's 32,768 tokens; verification runs at the 2,048 that fit, on both
    padding sides; a batch mixing 2,048 tokens with a short row left-padded by 2,000 equals torch."""
    import torch
    from transformers import AutoModelForSequenceClassification

    import ensrm
    from ensrm.export.exporter import export_bundle
    from ensrm.models.modules import DecoderClassifier

    spec = export_bundle([long_decoders(kind)], tmp_path / "rm", cpu_graph=False, progress=None)
    checks = spec.variants["fp32"].checks
    assert spec.max_length == 32_768 and checks["passed"]
    assert checks["length_cap"] == memory.MAX_VERIFY_LENGTH == 2048 == checks["lengths"][1]
    assert spec.padding_side == "left" and checks["padding_sides"] == ["right", "left"]

    rng = np.random.default_rng(0)
    long, short = rng.integers(5, spec.vocab_size, 2048), rng.integers(5, spec.vocab_size, 48)
    ids = np.full((2, 2048), spec.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    ids[0], mask[0] = long, 1
    ids[1, -48:], mask[1, -48:] = short, 1  # left padding
    got = ensrm.Scorer(tmp_path / "rm").score(ids, mask).heads
    model = DecoderClassifier(AutoModelForSequenceClassification.from_pretrained(long_decoders(kind))).eval()
    with torch.inference_mode():
        want = np.concatenate([model(torch.from_numpy(row[None]), torch.ones(1, len(row), dtype=torch.long)).numpy()
                               for row in (long, short)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
