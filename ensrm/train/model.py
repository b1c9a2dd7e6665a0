"""Turn a base checkpoint into a K-head sequence classifier, encode pairs, and read its pooled features.

The trained reward model is always a stock ``AutoModelForSequenceClassification`` with
``num_labels = K``: the K heads are the rows of its final ``Linear(hidden, K)``. Everything the
classifier computes before that layer (BERT's pooler, RoBERTa's dense+tanh, a decoder's
last-token state) is the "pooled feature" that frozen training fits heads on.
"""

from __future__ import annotations

from pathlib import Path

from ensrm._hf import quiet_transformers
from ensrm._optional import require
from ensrm.errors import TrainingError

torch = require("torch", "export")
transformers = require("transformers", "export")

#: The heads of a pooled-heads checkpoint (``weight [K, hidden]``, ``bias [K]``), as ens-export's --heads reads.
HEADS_FILE = "heads.safetensors"
# Where each family keeps the final projection to K logits, most specific first.
HEAD_NAMES = ("score", "classifier.out_proj", "classifier", "logits_proj", "heads")


def check_checkpoint(base_model: str | Path) -> Path:
    """Refuse a directory that is not a Hugging Face checkpoint before anything loads from it."""
    path = Path(base_model)
    if not (path / "config.json").is_file():
        raise TrainingError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    return path


def load_tokenizer(base_model: str | Path):
    """The base model's tokenizer; decoders without a pad token pad with their eos token."""
    check_checkpoint(base_model)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(base_model))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"could not load a tokenizer from {base_model}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainingError(
                f"the tokenizer in {base_model} has neither a pad nor an eos token; "
                "set pad_token in its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(base_model: str | Path, heads: int, tokenizer, seed: int):
    """Load ``base_model`` as ``AutoModelForSequenceClassification`` with ``heads`` outputs (fp32).

    Works for a bare encoder/decoder checkpoint (the classifier layers are created) and for an
    existing sequence classifier (its final layer is replaced when its size differs).
    """
    path = check_checkpoint(base_model)
    labels = {i: f"head_{i}" for i in range(heads)}
    config = transformers.AutoConfig.from_pretrained(str(path))
    extra = {}
    if getattr(config, "pad_token_id", None) is None:
        extra["pad_token_id"] = tokenizer.pad_token_id  # decoder classifiers find the last token by it
    torch.manual_seed(seed)  # any layer created here (e.g. RoBERTa's dense) is reproducible
    try:
        with quiet_transformers():
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=heads, id2label=labels, label2id={v: k for k, v in labels.items()},
                ignore_mismatched_sizes=True, **extra,
            )
    except ValueError as exc:
        raise TrainingError(
            f"{path} ({config.model_type}) has no AutoModelForSequenceClassification class in "
            f"transformers {transformers.__version__}: {exc}"
        ) from exc
    return model.float()


def load_pooled_heads(base_model: str | Path, heads: int, pooling: str):
    """The base encoder/decoder of ``base_model`` with ``heads`` linear heads on ``pooling`` of its states.

    The module is the exporter's own ``EncoderWithHeads``, so training reads the features that
    the exported graph computes; its ``heads`` layer holds the K rows.
    """
    from ensrm.models.modules import EncoderWithHeads
    from ensrm.models.trunk import is_decoder

    path = check_checkpoint(base_model)
    with quiet_transformers():
        base = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32)
    decoder = is_decoder(base.config)
    hidden = base.config.hidden_size
    return EncoderWithHeads(base, torch.zeros(heads, hidden), torch.zeros(heads), pooling, decoder,
                            uses_token_type_ids(base) and not decoder).eval()


def load_trunk_model(base_model: str | Path, members: int, member_layers: int, pooling: str | None):
    """A partially shared trunk (:class:`ensrm.models.trunk.PartialTrunk`) of ``members`` members on ``base_model``,
    each member's last ``member_layers`` layers starting as copies of the base's; pooling defaults to
    mean for encoders (what sentence encoders are trained for) and last for decoders."""
    from ensrm.errors import ExportError
    from ensrm.models.trunk import PartialTrunk, is_decoder

    path = check_checkpoint(base_model)
    with quiet_transformers():
        base = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32)
    pooling = pooling or ("last" if is_decoder(base.config) else "mean")
    try:
        return PartialTrunk.from_base(base, members=members, member_layers=member_layers, pooling=pooling).eval()
    except ExportError as exc:
        raise TrainingError(str(exc)) from None


def final_linear(model, heads: int):
    """``(name, Linear)`` of the classifier's last layer, the one with ``heads`` outputs."""
    for name in HEAD_NAMES:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.Linear) and module.out_features == heads:
            return name, module
    raise TrainingError(
        f"{type(model).__name__}: found no final Linear layer with {heads} outputs "
        f"(looked for {', '.join(HEAD_NAMES)}); this architecture is not supported yet"
    )


def init_heads(linear, seed: int, std: float) -> None:
    """Head k gets weights drawn with seed ``seed + k`` (N(0, std)), and a zero bias."""
    with torch.no_grad():
        for k in range(linear.out_features):
            generator = torch.Generator().manual_seed(seed + k)
            linear.weight[k] = torch.randn(linear.in_features, generator=generator) * std
        if linear.bias is not None:
            linear.bias.zero_()


def uses_token_type_ids(model) -> bool:
    """Whether the encoder has segment embeddings (BERT-family); decoders must not get them."""
    return any(name.endswith("token_type_embeddings") for name, _ in model.named_modules())


def encode_pairs(tokenizer, prompts: list[str], responses: list[str], max_length: int, token_types: bool) -> dict:
    """Tensors for ``tokenizer(prompt, response)``, padded to the longest pair and truncated."""
    batch = tokenizer(prompts, responses, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    keep = ("input_ids", "attention_mask") + (("token_type_ids",) if token_types else ())
    return {key: batch[key] for key in keep if key in batch}


def last_token_index(input_ids, pad_token_id: int):
    """The position a decoder classifier reads: the last non-pad token (same rule as transformers)."""
    non_pad = (input_ids != pad_token_id).to(torch.int64)  # [batch, seq]
    positions = torch.arange(input_ids.shape[-1], dtype=torch.int64)  # [seq]
    return (positions * non_pad).argmax(-1)  # [batch]


def pooled_features(model, head, tokenizer, prompts, responses, *, max_length, batch_size, progress=None):
    """``[n, hidden]`` inputs of the final layer ``head`` for each (prompt, response), in eval mode.

    Read with a hook so that each family's own pooling is used unchanged; every batch checks that
    ``head(features)`` reproduces the model's logits, so a family whose pooling differs from
    what is assumed here fails loudly instead of training on the wrong features.
    """
    token_types = uses_token_type_ids(model)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)  # decoder classifiers only
    lengths = [len(ids) for ids in tokenizer(list(prompts), list(responses), truncation=True,
                                              max_length=max_length)["input_ids"]]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # similar lengths share a batch: less padding
    captured = {}
    hook = head.register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0]))
    features = [None] * len(order)
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = encode_pairs(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx],
                                     max_length, token_types)
                logits = model(**batch)
                logits = getattr(logits, "logits", logits)  # [b, K]
                x = captured.pop("x")  # [b, hidden], or [b, seq, hidden] for decoders
                if x.dim() == 3:
                    x = x[torch.arange(x.shape[0]), last_token_index(batch["input_ids"], pad_id)]  # [b, hidden]
                if not torch.allclose(head(x), logits, atol=1e-4, rtol=1e-4):
                    raise TrainingError(
                        f"{type(model).__name__}: features read before '{type(head).__name__}' do not "
                        "reproduce the model's logits; this architecture's pooling is not supported"
                    )
                for row, i in enumerate(idx):
                    features[i] = x[row].clone()
                if progress is not None:
                    progress.update(len(idx))
    finally:
        hook.remove()
    return torch.stack(features)  # [n, hidden]


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    """Write an ordinary sequence-classification checkpoint (safetensors, config, tokenizer files);
    a pooled-heads module is written as its base checkpoint plus :data:`HEADS_FILE`, a partial trunk
    as :func:`ensrm.models.trunk.save_trunk` describes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "member_layers"):
        from ensrm.models.trunk import save_trunk

        save_trunk(model, tokenizer, out_dir)
        return
    if hasattr(model, "pooling"):
        safetensors_torch = require("safetensors.torch", "export")
        model.base.save_pretrained(str(out_dir), safe_serialization=True)
        safetensors_torch.save_file({"weight": model.heads.weight.detach().contiguous(),
                                     "bias": model.heads.bias.detach().contiguous()}, str(out_dir / HEADS_FILE))
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
