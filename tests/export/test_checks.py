"""The export refuses sources whose tokenizer, lengths or weights do not fit the model.

Each of these would trace and verify (torch and ONNX agree on the same wrong token ids) and
then score garbage; each must stop with one clear line and leave no bundle or staging directory.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ensrm.errors import ExportError  # noqa: E402
from ensrm.export.exporter import export_bundle  # noqa: E402

PROMPTS = ["How do I bake bread?", "Name a prime number."]
RESPONSES = ["Knead it well and bake it hot.", "Seven."]


def bare(checkpoint, dest):
    """The checkpoint as many training scripts leave it: config and weights, no tokenizer files."""
    dest.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint / name, dest / name)
    return dest


def tokenizer_dir(checkpoint, dest, edit=None):
    """The checkpoint's tokenizer, changed by ``edit(tokenizer)``, saved alone into ``dest``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    if edit is not None:
        edit(tokenizer)
    tokenizer.save_pretrained(dest)
    return dest


def refused(tmp_path, sources, match, **options):
    """Export into tmp_path/bundle, expect an ExportError, return its message; nothing may be left."""
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=match) as err:
        export_bundle(sources, out, progress=None, **options)
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no staging directory
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_source_without_tokenizer_files_is_refused(checkpoints, tmp_path, kind):
    source = bare(checkpoints(kind), tmp_path / "ckpt")
    message = refused(tmp_path, [source], "has no tokenizer files")
    assert message.startswith(f"source {source} has no tokenizer files")
    assert "`tokenizer=DIR`" in message


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_tokenizer_from_another_directory_scores_like_the_shipped_one(checkpoints, bundles, tmp_path, kind):
    import ensrm

    source = bare(checkpoints(kind), tmp_path / "ckpt")
    notes = []
    spec = export_bundle([source], tmp_path / "b", tokenizer=checkpoints(kind), progress=notes.append)
    shipped = bundles(kind)
    got = ensrm.Scorer(tmp_path / "b").score_texts(PROMPTS, RESPONSES)
    expected = ensrm.Scorer(shipped).score_texts(PROMPTS, RESPONSES)
    np.testing.assert_allclose(got.heads, expected.heads, atol=1e-6)
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == (shipped / "tokenizer.json").read_bytes()
    # The saved tokenizer pads where the bundle does; GPT-2's tokenizer padded on the right.
    saved = transformers.AutoTokenizer.from_pretrained(tmp_path / "b")
    assert (saved.padding_side, saved.truncation_side) == (spec.padding_side, spec.truncation_side)
    if kind == "gpt2":
        assert any(n.startswith("note: the tokenizer of") and "pads on the right; the bundle pads on the left" in n
                   for n in notes), notes


def test_fingerprint_covers_the_tokenizer_directory(checkpoints, tmp_path):
    from ensrm.export.sources import load_source

    source = bare(checkpoints("bert"), tmp_path / "ckpt")
    one = tokenizer_dir(checkpoints("bert"), tmp_path / "tok1")
    two = tokenizer_dir(checkpoints("bert"), tmp_path / "tok2", lambda t: setattr(t, "model_max_length", 64))
    prints = {load_source([source], tokenizer=d).fingerprint for d in (one, two, one)}
    assert len(prints) == 2


def test_tokenizer_directory_without_tokenizer_files_is_refused(checkpoints, tmp_path):
    source = bare(checkpoints("bert"), tmp_path / "ckpt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    message = refused(tmp_path, [source], "tokenizer directory", tokenizer=empty)
    assert message.startswith(f"tokenizer directory {empty} has no tokenizer files")


def test_encoder_tokenizer_padding_left_is_set_right_with_a_note(checkpoints, tmp_path):
    source = bare(checkpoints("bert"), tmp_path / "ckpt")
    def pad_left(tokenizer):  # what save_pretrained writes: the attribute in some classes, init_kwargs in others
        tokenizer.padding_side = "left"
        tokenizer.init_kwargs["padding_side"] = "left"

    left = tokenizer_dir(checkpoints("bert"), tmp_path / "tok", pad_left)
    assert transformers.AutoTokenizer.from_pretrained(left).padding_side == "left"
    notes = []
    export_bundle([source], tmp_path / "b", tokenizer=left, progress=notes.append)
    assert any("pads on the left; the bundle pads on the right (encoders" in n for n in notes), notes
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "b").padding_side == "right"


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_tokenizer_with_more_tokens_than_embedding_rows_is_refused(checkpoints, tmp_path, kind):
    rows = transformers.AutoConfig.from_pretrained(checkpoints(kind)).vocab_size
    tok = tokenizer_dir(checkpoints(kind), tmp_path / "tok", lambda t: t.add_tokens(["<extra_1>", "<extra_2>"]))
    needed = len(transformers.AutoTokenizer.from_pretrained(tok))
    assert needed > rows
    message = refused(tmp_path, [checkpoints(kind)], "embeds only", tokenizer=tok)
    assert f"has {needed} tokens (special and added tokens included) but the {kind} model embeds only {rows}" \
        in message


def test_pad_token_added_without_resizing_is_refused(checkpoints, tmp_path):
    # The common decoder mistake: add_special_tokens({"pad_token": ...}) and no resize_token_embeddings.
    rows = transformers.AutoConfig.from_pretrained(checkpoints("gpt2")).vocab_size
    tok = tokenizer_dir(checkpoints("gpt2"), tmp_path / "tok", lambda t: t.add_special_tokens({"pad_token": "[PAD]"}))
    message = refused(tmp_path, [checkpoints("gpt2")], "pad id", tokenizer=tok)
    assert f"the pad id {rows} ('[PAD]')" in message and f"{rows} embedding rows [0, {rows})" in message


def test_tokenizer_covering_little_of_the_vocabulary_is_warned_about(checkpoints, tmp_path):
    # A 139-token WordPiece for a BERT that embeds 30522 ids: every id is in range and the texts encode,
    # but it is probably not the model's tokenizer (a model may embed more rows than it uses, so no error).
    from tokenizers.implementations import BertWordPieceTokenizer

    from ensrm.export.verify import REFERENCE_TEXTS

    small = BertWordPieceTokenizer(lowercase=True)
    small.train_from_iterator(list(REFERENCE_TEXTS), vocab_size=400, show_progress=False)
    small.save_model(str(tmp_path))
    tok = tmp_path / "tok"
    transformers.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tok)
    size = len(transformers.AutoTokenizer.from_pretrained(tok))
    notes = []
    export_bundle([bare(checkpoints("bert"), tmp_path / "ckpt")], tmp_path / "b", tokenizer=tok,
                  progress=notes.append)
    assert any(n.startswith(f"warning: the tokenizer of {tok} has {size} tokens but the bert model embeds 30522, "
                            "less than 50%") for n in notes), notes


def test_tokenizer_without_token_types_for_a_bert_is_refused(checkpoints, tmp_path):
    # RoBERTa's tokenizer returns no token_type_ids; BERT embeds the response as segment 1.
    message = refused(tmp_path, [bare(checkpoints("bert"), tmp_path / "ckpt")], "token_type_ids",
                      tokenizer=checkpoints("roberta"))
    assert "the bert model takes token_type_ids but the tokenizer of" in message
    assert "produces only input_ids, attention_mask" in message


def test_tokenizer_that_maps_text_to_unknown_is_refused(checkpoints, tmp_path):
    # A WordPiece vocabulary of the model's size that knows no English: every word becomes [UNK].
    rows = transformers.AutoConfig.from_pretrained(checkpoints("bert")).vocab_size
    vocab = tmp_path / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab.write_text("\n".join(specials + [f"\u0436{i}" for i in range(rows - len(specials))]) + "\n")
    tok = tmp_path / "tok"
    transformers.BertTokenizerFast(str(vocab)).save_pretrained(tok)  # vocab_file in 4.x, vocab in 5.x
    message = refused(tmp_path, [bare(checkpoints("bert"), tmp_path / "ckpt")], "unknown token", tokenizer=tok)
    assert "maps 100% of the reference texts' tokens" in message and "'[UNK]', above the limit of 10%" in message


def test_tokenizer_that_encodes_text_to_nothing_is_refused(checkpoints, tmp_path):
    # A decoder tokenizer with no unknown token and no byte fallback drops every character it does
    # not know; the GPT-2 case of the issue (every text encodes to nothing), with a full-size vocabulary.
    from tokenizers import Tokenizer, models, pre_tokenizers

    rows = transformers.AutoConfig.from_pretrained(checkpoints("gpt2")).vocab_size
    vocab = {"<|endoftext|>": 0, **{f"\u0436{i}": i + 1 for i in range(rows - 1)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = tmp_path / "tok"
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                         pad_token="<|endoftext|>").save_pretrained(tok)
    message = refused(tmp_path, [bare(checkpoints("gpt2"), tmp_path / "ckpt")], "to 0 tokens", tokenizer=tok)
    assert "reference texts" in message and "knows none of their characters" in message


def test_max_length_above_the_position_embeddings_is_refused(checkpoints, tmp_path):
    message = refused(tmp_path, [checkpoints("gpt2")], "`max_length` must be between 1", max_length=200)
    assert "the model's limit 128, got 200" in message


def test_max_length_counts_the_padding_offset_of_roberta_style_positions(tmp_path):
    # RoBERTa-PreLayerNorm numbers positions from padding_idx + 1 like RoBERTa; with 129 position rows it
    # holds 127 tokens, while the tokenizer allows 128.
    from tests.models import TINY, bpe_tokenizer

    tokenizer = bpe_tokenizer("roberta")
    config = transformers.RobertaPreLayerNormConfig(vocab_size=len(tokenizer), max_position_embeddings=129,
                                                    pad_token_id=tokenizer.pad_token_id, type_vocab_size=1,
                                                    num_labels=2, **TINY)
    ckpt = tmp_path / "ckpt"
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    message = refused(tmp_path, [ckpt], "positions")
    assert "max_length 128 is above the 127 positions the roberta-prelayernorm model embeds " \
           "(129 rows minus the padding offset 2); pass `max_length=127` or less" in message
    spec = export_bundle([ckpt], tmp_path / "b", max_length=127, progress=None)
    assert spec.max_length == 127


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_checkpoint_with_untrained_heads_is_refused(checkpoints, tmp_path, kind):
    # A head saved under another name (a training wrapper's "v_head") loads as random weights.
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints(kind), ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    head = "classifier" if kind == "bert" else "score"
    renamed = {k.replace(head, "v_head", 1) if k.startswith(head) else k: v for k, v in tensors.items()}
    save_file(renamed, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    missing = sorted(k for k in tensors if k.startswith(head))
    message = refused(tmp_path, [ckpt], "not in the checkpoint")
    assert f"{len(missing)} weights the model needs are not in the checkpoint ({', '.join(missing)})" in message


def test_full_ensemble_members_with_different_head_counts_are_refused(checkpoints, tmp_path):
    members = [checkpoints("bert", num_labels=1), checkpoints("bert", num_labels=2, seed=1)]
    message = refused(tmp_path, members, "different numbers of heads")
    assert "member 0: num_labels 1, member 1: num_labels 2" in message


def test_full_ensemble_members_with_different_vocabularies_are_refused(checkpoints, tmp_path):
    # Same tokenizer files, but one member's embedding was padded to more rows: an id valid for the
    # bundle's vocabulary could index past the other member's table.
    from tests.models import TINY, minilm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size + 64, max_position_embeddings=128,
                                     num_labels=1, **TINY)
    wide = tmp_path / "wide"
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    message = refused(tmp_path, [checkpoints("bert", num_labels=1), wide], "different vocabularies")
    assert f"member 0: {tokenizer.vocab_size} ids, member 1: {tokenizer.vocab_size + 64} ids" in message
