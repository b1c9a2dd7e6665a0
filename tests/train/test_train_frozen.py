"""Frozen-mode training on tiny BERT and GPT-2 models: it learns, and the checkpoint is ordinary."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ensrm.data import generate_preferences  # noqa: E402
from ensrm.errors import TrainingError  # noqa: E402
from ensrm.train import train_reward_model  # noqa: E402
from ensrm.train.model import init_heads  # noqa: E402

K = 3


def assert_same_logits(actual, reported):
    # The trainer batches texts by length, the reload pads them all together: float noise from
    # different padding is amplified by head weights fitted on low-variance pooled features.
    np.testing.assert_allclose(actual, reported, rtol=1e-3, atol=1e-3 * float(np.abs(reported).max()))


def reload_logits(out_dir, pairs, side):
    """Logits of the saved checkpoint, loaded the ordinary way, on ``pairs[side]``."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    batch = tokenizer([p["prompt"] for p in pairs], [p[side] for p in pairs], padding=True, truncation=True,
                      max_length=128, return_tensors="pt")
    if model.config.model_type == "gpt2":
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        return model(**batch).logits.numpy(), model


@pytest.fixture(scope="module")
def bert_run(tiny_bert_dir, easy_prefs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert-rm")
    return train_reward_model(tiny_bert_dir, easy_prefs, out, heads=K, seed=1, bootstrap=True, label_noise=0.05,
                              eval_fraction=0.25, max_length=128, progress=False)


def test_frozen_bert_beats_chance(bert_run):
    assert bert_run.n_eval == 60 and bert_run.n_train == 180
    assert min(bert_run.metrics["per_head_accuracy"]) > 0.75
    assert bert_run.metrics["accuracy"]["mean"] > 0.75


def test_frozen_bert_checkpoint_reloads_with_reported_logits(bert_run):
    logits, model = reload_logits(bert_run.out_dir, bert_run.eval_pairs, "chosen")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == K
    assert model.config.id2label == {0: "head_0", 1: "head_1", 2: "head_2"}
    assert_same_logits(logits, bert_run.eval_rewards_chosen)
    rejected, _ = reload_logits(bert_run.out_dir, bert_run.eval_pairs, "rejected")
    assert_same_logits(rejected, bert_run.eval_rewards_rejected)
    assert (bert_run.out_dir / "model.safetensors").is_file()
    assert not list(bert_run.out_dir.glob("*.bin"))


def test_frozen_bootstrap_heads_differ_and_report_is_saved(bert_run):
    weights = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(bert_run.out_dir)).classifier.weight.detach()  # [K, hidden]
    assert not torch.allclose(weights[0], weights[1])
    report = json.loads((bert_run.out_dir / "ensrm_training.json").read_text())
    assert report["mode"] == "frozen" and report["heads"] == K and report["bootstrap"] is True
    assert report["metrics"]["per_head_accuracy"] == bert_run.metrics["per_head_accuracy"]
    assert set(report["metrics"]["accuracy"]) == {"mean", "wco", "uwo"}


def test_frozen_gpt2_trains_and_reloads(tiny_gpt2_dir, tmp_path):
    prefs = generate_preferences(200, seed=5, aspects=("specificity",))
    result = train_reward_model(tiny_gpt2_dir, prefs, tmp_path / "rm", heads=2, eval_fraction=0.25,
                                max_length=128, progress=False)
    assert result.metrics["accuracy"]["mean"] > 0.6
    logits, model = reload_logits(result.out_dir, result.eval_pairs, "chosen")
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert model.config.num_labels == 2 and model.config.pad_token_id is not None
    assert_same_logits(logits, result.eval_rewards_chosen)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(result.out_dir))
    assert tokenizer.pad_token == tokenizer.eos_token  # set by the trainer, saved with the checkpoint


def test_head_k_is_seeded_with_seed_plus_k():
    linear = torch.nn.Linear(16, 3)
    init_heads(linear, seed=5, std=0.02)
    expected = torch.randn(16, generator=torch.Generator().manual_seed(6)) * 0.02
    torch.testing.assert_close(linear.weight[1].detach(), expected)
    assert not torch.allclose(linear.weight[0], linear.weight[1])
    assert torch.count_nonzero(linear.bias) == 0


def test_base_model_without_config_is_rejected(tmp_path, easy_prefs):
    with pytest.raises(TrainingError, match="config.json"):
        train_reward_model(tmp_path, easy_prefs, tmp_path / "out", progress=False)


def _tiny_config(family, vocab_size):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, bos_token_id=0, eos_token_id=0)
    if family == "llama":
        return transformers.LlamaConfig(num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(max_position_embeddings=256, **common)
    return transformers.RobertaConfig(max_position_embeddings=260, pad_token_id=0, **common)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "roberta"])
def test_frozen_other_families(family, tiny_gpt2_dir, tmp_path):
    """Decoders read the last token through ``score``; RoBERTa's head has dense+tanh before ``out_proj``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_gpt2_dir))
    torch.manual_seed(0)
    base = transformers.AutoModel.from_config(_tiny_config(family, tokenizer.vocab_size))
    base.save_pretrained(str(tmp_path / "base"))
    tokenizer.save_pretrained(str(tmp_path / "base"))
    prefs = generate_preferences(120, seed=5, aspects=("specificity",))
    result = train_reward_model(tmp_path / "base", prefs, tmp_path / "rm", heads=2, eval_fraction=0.25,
                                max_length=128, progress=False)
    assert result.metrics["accuracy"]["mean"] > 0.6
    logits, model = reload_logits(result.out_dir, result.eval_pairs, "chosen")
    assert model.config.model_type == family and model.config.num_labels == 2
    assert_same_logits(logits, result.eval_rewards_chosen)


def test_existing_sequence_classifier_as_base(bert_run, easy_prefs, tmp_path):
    result = train_reward_model(bert_run.out_dir, easy_prefs, tmp_path / "rm", heads=2, progress=False)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(result.out_dir))
    assert model.config.num_labels == 2 and model.classifier.weight.shape[0] == 2
    assert result.metrics["accuracy"]["mean"] > 0.75


def test_settings_object_or_keywords_but_not_both(tiny_bert_dir, easy_prefs, tmp_path):
    from ensrm.train import TrainSettings

    settings = TrainSettings.create(heads=2, seed=3, max_iter=5, eval_fraction=0.2, progress=False)
    by_settings = train_reward_model(tiny_bert_dir, easy_prefs, tmp_path / "a", settings)
    by_keywords = train_reward_model(tiny_bert_dir, easy_prefs, tmp_path / "b", heads=2, seed=3, max_iter=5,
                                     eval_fraction=0.2, progress=False)
    assert by_settings.heads == by_keywords.heads == 2 and by_settings.n_eval == by_keywords.n_eval
    np.testing.assert_allclose(by_settings.eval_rewards_chosen, by_keywords.eval_rewards_chosen, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="not both"):
        train_reward_model(tiny_bert_dir, easy_prefs, tmp_path / "c", settings, heads=3)
    assert not (tmp_path / "c").exists()
