"""Checks that a loaded source and its tokenizer belong together, run before tracing.

The export verifies the ONNX graph against torch on the *same* token ids, so it cannot see a
tokenizer that does not belong to the model, a length the model has no positions for, or heads
that were never trained: the graph and torch agree on the garbage. Each check here refuses one
such source with an :class:`~ensrm.errors.ExportError` naming the two numbers that disagree
(one, :func:`coverage_warning`, only warns: its sign of a wrong tokenizer has legitimate exceptions).

The functions take what the loaders produce (the torch module, the transformers tokenizer, the
:class:`~ensrm.spec.EnsembleSpec` about to be written) and change nothing, except
:func:`align_tokenizer`, which sets the tokenizer's padding and truncation sides to the bundle's.
"""

from __future__ import annotations

from pathlib import Path

from ensrm.errors import ExportError

# Files that hold a vocabulary; a directory with none of them has no tokenizer (transformers
# would still build one from config.json alone, with a vocabulary of a few special tokens).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")
# The files transformers writes beside the vocabulary; they change how text is encoded, so the
# source fingerprint covers them too.
_TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")

# Largest fraction of the reference texts' tokens that may be the unknown token. A tokenizer
# the model was trained with maps ordinary English to known tokens (0 % for BERT's WordPiece on
# the verification texts); a wrong or empty vocabulary maps most of it to the unknown token.
MAX_UNKNOWN_FRACTION = 0.10
# A tokenizer that reaches less than this fraction of the embedding rows is probably not the
# model's own (real tokenizers cover all but a few padding rows: GPT-NeoX 50277 of 50304, Qwen2
# 151665 of 151936); the export warns.
MIN_VOCAB_COVERAGE = 0.5


def tokenizer_files(directory: Path) -> list[Path]:
    """The tokenizer files in ``directory`` (vocabulary and configuration), sorted by name."""
    vocab = [p for p in sorted(directory.iterdir()) if p.is_file()
             and (p.name in TOKENIZER_FILES or p.suffix in _TOKENIZER_SUFFIXES)]
    return vocab + [p for p in sorted(directory.iterdir()) if vocab and p.name in _TOKENIZER_CONFIGS]


def require_tokenizer_files(directory: Path, *, given: bool) -> None:
    """Refuse a directory with no vocabulary file; ``given`` says it came from ``tokenizer=``."""
    if given and not directory.is_dir():
        raise ExportError(f"`tokenizer` must be a directory holding tokenizer files, got {directory}")
    if tokenizer_files(directory):
        return
    if given:
        raise ExportError(f"tokenizer directory {directory} has no tokenizer files "
                          f"({', '.join(TOKENIZER_FILES[:3])}, *.model); point `tokenizer` at the "
                          "directory the model's tokenizer was saved in")
    raise ExportError(f"source {directory} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, *.model), "
                      "so its text encoding is unknown; pass the tokenizer the model was trained with, "
                      "e.g. its base model's directory, as `tokenizer=DIR`")


def _members(module) -> list:
    """The Hugging Face model inside each member of a traced module (one unless a full ensemble)."""
    members = list(module.members) if hasattr(module, "members") else [module]
    return [next(m for m in member.modules() if hasattr(m, "get_input_embeddings")) for member in members]


def _embedding_rows(module) -> int:
    return min(m.get_input_embeddings().num_embeddings for m in _members(module))


def _where(tokenizer) -> str:
    return f" of {tokenizer.name_or_path}" if getattr(tokenizer, "name_or_path", "") else ""


def check_members(module) -> None:
    """Refuse a full ensemble whose members embed different vocabularies or have different head counts.

    Members share the graph's ``input_ids``, so one id must mean one token in all of them; and
    aggregating a 2-label classifier with 1-head reward models mixes unrelated numbers.
    """
    models = _members(module)
    if len(models) < 2:
        return
    rows = [m.get_input_embeddings().num_embeddings for m in models]
    if len(set(rows)) > 1:
        raise ExportError("full-ensemble members embed different vocabularies ("
                          + ", ".join(f"member {i}: {n} ids" for i, n in enumerate(rows))
                          + "); members must share one tokenizer and vocabulary")
    labels = [m.config.num_labels for m in models]
    if len(set(labels)) > 1:
        raise ExportError("full-ensemble members have different numbers of heads ("
                          + ", ".join(f"member {i}: num_labels {n}" for i, n in enumerate(labels))
                          + "); export members with different head counts as separate bundles")


def check_vocabulary(module, tokenizer, spec) -> None:
    """Every id the tokenizer can produce, and the pad id, must index a row of the embedding."""
    rows = _embedding_rows(module)
    vocab = tokenizer.get_vocab()  # includes special and added tokens
    needed = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    if not 0 <= spec.pad_token_id < rows:  # checked first: an added pad token is the usual cause
        name = tokenizer.pad_token if tokenizer.pad_token is not None else tokenizer.eos_token
        raise ExportError(f"the pad id {spec.pad_token_id} ({name!r}) of the tokenizer{_where(tokenizer)} "
                          f"is outside the {spec.model_type} model's {rows} embedding rows [0, {rows}); after "
                          "adding a pad token resize the model's embeddings "
                          "(model.resize_token_embeddings(len(tokenizer))) before saving it, or pad with a token "
                          "the model embeds, such as its eos token")
    if needed > rows:
        raise ExportError(f"the tokenizer{_where(tokenizer)} has {needed} tokens (special and added tokens "
                          f"included) but the {spec.model_type} model embeds only {rows}: ids {rows} and above "
                          "would index past its embedding; use the tokenizer the model was trained with "
                          "(tokenizer=DIR), or resize the model's token embeddings to the tokenizer before saving it")


def coverage_warning(module, tokenizer, spec) -> str | None:
    """A warning when the tokenizer reaches less than :data:`MIN_VOCAB_COVERAGE` of the embedding rows.

    Not an error: every id it produces is valid, and a model may embed far more rows than any
    tokenizer uses (the 520 000-row test model of ``make test-slow`` with MiniLM's 30 522 tokens).
    """
    rows = _embedding_rows(module)
    if len(tokenizer) >= MIN_VOCAB_COVERAGE * rows:
        return None
    return (f"warning: the tokenizer{_where(tokenizer)} has {len(tokenizer)} tokens but the {spec.model_type} model "
            f"embeds {rows}, less than {MIN_VOCAB_COVERAGE:.0%}: unless the model was trained with this tokenizer, "
            "its scores are meaningless; pass the model's own as `tokenizer=DIR`")


def unknown_fraction(tokenizer, texts) -> tuple[int, int]:
    """(unknown tokens, all tokens) over ``texts`` encoded without special tokens."""
    unk = tokenizer.unk_token_id
    total = unknown = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        total += len(ids)
        unknown += sum(1 for i in ids if i == unk) if unk is not None else 0
    return unknown, total


def check_encoding(tokenizer, texts) -> None:
    """The reference texts must encode to tokens, at most :data:`MAX_UNKNOWN_FRACTION` of them unknown.

    A byte-level BPE (GPT-2 style) has no unknown token and can spell any text from bytes, so
    for it only the "encodes to no tokens" half of this check can fail.
    """
    unknown, total = unknown_fraction(tokenizer, texts)
    if total == 0:
        raise ExportError(f"the tokenizer{_where(tokenizer)} encodes the {len(texts)} reference texts "
                          f"({sum(map(len, texts))} characters) to 0 tokens: its vocabulary knows none of their "
                          "characters and it has no unknown token; pass the tokenizer the model was trained with "
                          "as `tokenizer=DIR`")
    if unknown > MAX_UNKNOWN_FRACTION * total:
        raise ExportError(f"the tokenizer{_where(tokenizer)} maps {unknown / total:.0%} of the reference texts' "
                          f"tokens ({unknown} of {total}) to its unknown token {tokenizer.unk_token!r}, above "
                          f"the limit of {MAX_UNKNOWN_FRACTION:.0%}: it is not the tokenizer the model was "
                          "trained with; pass that one as `tokenizer=DIR`")


def check_token_types(tokenizer, spec) -> None:
    """A model that embeds token types (BERT: prompt 0, response 1) needs a tokenizer that makes them."""
    if "token_type_ids" in spec.inputs and "token_type_ids" not in tokenizer.model_input_names:
        raise ExportError(f"the {spec.model_type} model takes token_type_ids but the tokenizer{_where(tokenizer)} "
                          f"produces only {', '.join(tokenizer.model_input_names)}: it is not the tokenizer the "
                          "model was trained with; pass that one as `tokenizer=DIR`")


def check_positions(module, spec) -> None:
    """``max_length`` must fit every learned position embedding, less RoBERTa's padding offset.

    RoBERTa-style embeddings number positions from ``padding_idx + 1``, so a table of 514 rows
    holds 512 tokens. Rotary and other computed positions have no table and no limit here.
    """
    for member in _members(module):
        for name, emb in member.named_modules():
            if not (name.endswith("position_embeddings") or name.endswith("wpe")) \
                    or not hasattr(emb, "num_embeddings"):
                continue
            offset = emb.padding_idx + 1 if emb.padding_idx is not None else 0
            usable = emb.num_embeddings - offset
            if spec.max_length > usable:
                detail = f" ({emb.num_embeddings} rows minus the padding offset {offset})" if offset else ""
                raise ExportError(f"max_length {spec.max_length} is above the {usable} positions the "
                                  f"{spec.model_type} model embeds{detail}; pass `max_length={usable}` or less")


def check_loaded_weights(path, info: dict) -> None:
    """Refuse a checkpoint whose weights did not all load: transformers fills the missing ones with
    random values (a classifier head saved under another name, a base model's keys renamed by a
    training wrapper), and such a model exports, verifies and scores noise. ``info`` is what
    ``from_pretrained(..., output_loading_info=True)`` returns; weights of the wrong shape already
    fail to load there."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:4]) + (f", … ({len(missing)} in all)" if len(missing) > 4 else "")
        raise ExportError(f"{path}: {len(missing)} weights the model needs are not in the checkpoint "
                          f"({shown}); transformers would fill them with random values. Save the trained model "
                          "with save_pretrained, or rename its keys to the model's")


def align_tokenizer(tokenizer, spec) -> str | None:
    """Set the tokenizer's padding and truncation sides to the bundle's; describe a change.

    The runtime pads and truncates by the manifest; the saved tokenizer should agree, so that
    anyone tokenising with it (a PPO loop, ``AutoTokenizer.from_pretrained(bundle)``) feeds what
    the bundle records. Decoder last-token pooling reads the mask and scores either padding
    side the same; encoders need right padding, which the manifest already holds.
    """
    before = getattr(tokenizer, "padding_side", spec.padding_side)
    tokenizer.padding_side = spec.padding_side
    tokenizer.truncation_side = spec.truncation_side
    # save_pretrained writes tokenizer_config.json from init_kwargs, not from the attributes
    tokenizer.init_kwargs.update(padding_side=spec.padding_side, truncation_side=spec.truncation_side)
    if before == spec.padding_side:
        return None
    why = ("last-token pooling reads the attention mask, so scores do not depend on the side"
           if spec.architecture == "decoder" else "encoders number positions by column and need right padding")
    return (f"note: the tokenizer{_where(tokenizer)} pads on the {before}; the bundle pads on the "
            f"{spec.padding_side} ({why}), and its saved tokenizer is set to {spec.padding_side}")


def check_source(module, tokenizer, spec, texts=None) -> list[str]:
    """Every check above, in order; returns the warnings and notes to show (the tokenizer's
    coverage of the vocabulary, :func:`align_tokenizer`'s change of padding side).

    ``texts`` default to the texts the verification encodes.

    (Not run by the doctests: it needs a loaded checkpoint.)

    >>> notes = check_source(source.module, source.tokenizer, spec)  # doctest: +SKIP
    """
    if texts is None:
        from ensrm.export.verify import REFERENCE_TEXTS as texts
    check_members(module)
    check_vocabulary(module, tokenizer, spec)
    check_token_types(tokenizer, spec)
    check_encoding(tokenizer, texts)
    check_positions(module, spec)
    return [n for n in (coverage_warning(module, tokenizer, spec), align_tokenizer(tokenizer, spec)) if n]
