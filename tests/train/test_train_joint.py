"""Joint mode: one encoder pass per batch for all heads, and resuming from the saved state."""

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from ensrm.data import generate_preferences  # noqa: E402
from ensrm.errors import TrainingError  # noqa: E402
from ensrm.train import train_reward_model  # noqa: E402

SETTINGS = dict(heads=4, mode="joint", seed=2, bootstrap=True, batch_size=16, lr=1e-3, head_lr=1e-2,
                max_length=48, eval_fraction=0.0, progress=False)


@pytest.fixture(scope="module")
def prefs():
    return generate_preferences(40, seed=11, aspects=("politeness", "specificity"))


def test_encoder_runs_once_per_batch_for_all_heads(tiny_bert_dir, prefs, tmp_path, monkeypatch):
    calls = []
    original = transformers.BertModel.forward

    def counting_forward(self, *args, **kwargs):
        calls.append(kwargs.get("input_ids", args[0] if args else None).shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.BertModel, "forward", counting_forward)
    result = train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", epochs=2, **SETTINGS)
    steps = 2 * math.ceil(40 / 16)
    assert result.steps == steps
    assert len(calls) == steps  # not steps * K
    assert calls[:3] == [32, 32, 16]  # chosen and rejected of 16, 16, 8 pairs in one pass each


def test_resume_continues_from_saved_epoch(tiny_bert_dir, prefs, tmp_path):
    straight = train_reward_model(tiny_bert_dir, prefs, tmp_path / "straight", epochs=2, **SETTINGS)
    first = train_reward_model(tiny_bert_dir, prefs, tmp_path / "resumed", epochs=1, **SETTINGS)
    assert first.start_epoch == 0 and (tmp_path / "resumed" / ".train_state" / "state.json").is_file()
    resumed = train_reward_model(tiny_bert_dir, prefs, tmp_path / "resumed", epochs=2, resume=True, **SETTINGS)
    assert resumed.start_epoch == 1 and resumed.steps == straight.steps == 2 * math.ceil(40 / 16)
    a = safetensors_torch.load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = safetensors_torch.load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_resume_refuses_other_data(tiny_bert_dir, prefs, tmp_path):
    train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", epochs=1, **SETTINGS)
    other = generate_preferences(40, seed=12)
    with pytest.raises(TrainingError, match="data"):
        train_reward_model(tiny_bert_dir, other, tmp_path / "rm", epochs=2, resume=True, **SETTINGS)


def test_resume_without_state_is_an_error(tiny_bert_dir, prefs, tmp_path):
    with pytest.raises(TrainingError, match="no training state"):
        train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", epochs=1, resume=True, **SETTINGS)
