"""Load what ``ens-export`` accepts into one torch module plus the facts the spec needs.

Three kinds of local source, all ending in a module ``(ids, mask[, types]) -> [batch, K]``:

- a Hugging Face ``*ForSequenceClassification`` checkpoint with ``num_labels = K``;
- a base checkpoint plus ``heads.safetensors`` (``weight [K, hidden]``, ``bias [K]``) and a pooling;
- several single- or multi-head classifiers (a full ensemble) sharing one tokenizer;
- a partially shared trunk (:mod:`ensrm.models.trunk`): K members sharing their first layers, as one
  source, or several of them as the members of a full ensemble.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from pickle import UnpicklingError  # the exception only, raised by transformers' weights_only loader

from ensrm._hf import quiet_transformers
from ensrm._optional import require
from ensrm.errors import ExportError
from ensrm.export.checks import check_loaded_weights, require_tokenizer_files, tokenizer_files
from ensrm.models import modules
from ensrm.models.trunk import is_decoder, is_trunk_checkpoint, load_trunk  # noqa: F401 - is_decoder re-exported

torch = require("torch", "export")
transformers = require("transformers", "export")

# Encoders whose position ids start after the padding index.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")


@dataclass(frozen=True)
class LoadedSource:
    """A traceable module and the facts about it that go into the spec."""

    module: object  # torch.nn.Module, eval mode
    kind: str  # "sequence-classifier" | "encoder+heads" | "full-ensemble" | "partial-trunk"
    architecture: str  # "encoder" | "decoder"
    model_type: str
    pooling: str
    uses_token_type_ids: bool
    num_heads: int
    head_names: tuple[str, ...]
    members: int
    max_length: int
    vocab_size: int
    tokenizer: object  # a transformers fast tokenizer, saved into the bundle
    tokenizer_dir: Path  # where the tokenizer was loaded from
    fingerprint: str
    member_layers: int = 0  # a partial trunk's layers per member (0: every layer shared)
    dtype: str = "fp32"  # the dtype the weights were loaded in, which the graph keeps (ensrm.export.dtypes)
    # load_source's keywords that loaded it (paths, strings and flags: JSON), so that another process
    # can load the same source again (ensrm.export.trace_child); None when built otherwise
    load_args: dict | None = field(default=None, compare=False, repr=False)


def _uses_token_type_ids(model) -> bool:
    import inspect

    accepts = "token_type_ids" in inspect.signature(model.forward).parameters
    return accepts and getattr(model.config, "type_vocab_size", 0) > 1


def _max_positions(config) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            if config.model_type in _OFFSET_POSITION_MODELS:
                value -= (config.pad_token_id or 0) + 1
            return value
    raise ExportError(f"cannot tell the maximum sequence length of {config.model_type}; pass `max_length`")


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the config, tokenizer and weight files of every source, in order."""
    digest = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                     if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        for path in files:
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise ExportError(f"source {path} is not a directory (ensrm exports local checkpoints only)")
    if not (path / "config.json").is_file():
        raise ExportError(f"source {path} has no config.json; is it a Hugging Face checkpoint directory?")


def _load_tokenizer(path: Path, trust_remote_code: bool, given: bool = False):
    require_tokenizer_files(path, given=given)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load a tokenizer from {path}: {exc}") from None
    if not tokenizer.is_fast:
        raise ExportError(f"the tokenizer in {path} has no fast (tokenizer.json) form; the runtime needs one")
    return tokenizer


def _from_pretrained(auto_class, path: Path, attn: str, trust_remote_code: bool, dtype: str = "fp32"):
    """Load weights in ``dtype`` (straight from the file's dtype, never through an fp32 copy);
    sharded safetensors (``model-0000x-of-0000y.safetensors`` + index) load like one file.
    A pickle (``.bin``) checkpoint goes through transformers' ``weights_only`` loader,
    which refuses anything but tensors, so a malicious checkpoint fails here instead of running code."""
    from ensrm.export.dtypes import torch_dtype
    from ensrm.models.modules import float32_heads

    try:
        model, info = auto_class.from_pretrained(path, dtype=torch_dtype(dtype), attn_implementation=attn,
                                                 trust_remote_code=trust_remote_code, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, UnpicklingError) as exc:
        raise ExportError(f"cannot load the weights of {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                          "ensrm reads safetensors, or .bin files holding tensors only") from None
    check_loaded_weights(path, info)
    return float32_heads(model).eval()


def _classifier(path: Path, attn: str, trust_remote_code: bool, dtype: str = "fp32"):
    """``(module, config, architecture, uses_token_type_ids, heads)`` of a classifier or partial-trunk member."""
    _check_dir(path)
    if is_trunk_checkpoint(path):
        _fp32_only(path, dtype)
        trunk = _trunk(path, attn, trust_remote_code)
        return trunk, trunk.base.config, "decoder" if trunk.decoder else "encoder", trunk.uses_token_type_ids, \
            trunk.num_members
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ExportError(
            f"{path} holds {', '.join(archs) or config.model_type}, not a *ForSequenceClassification model; "
            "for a base model pass `heads=heads.safetensors` and `pooling=cls|mean|last`"
        )
    model = _from_pretrained(transformers.AutoModelForSequenceClassification, path, attn, trust_remote_code, dtype)
    heads = int(config.num_labels)
    if is_decoder(config):
        return modules.DecoderClassifier(model).eval(), config, "decoder", False, heads
    uses_types = _uses_token_type_ids(model)
    return modules.EncoderClassifier(model, uses_types).eval(), config, "encoder", uses_types, heads


def _fp32_only(path: Path, dtype: str) -> None:
    if dtype != "fp32":
        raise ExportError(f"{path} is a partial trunk, which exports in fp32 only (asked for `dtype={dtype!r}`)")


def _trunk(path: Path, attn: str, trust_remote_code: bool):
    try:
        return load_trunk(path, attn, trust_remote_code)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ExportError(f"cannot load the partial trunk in {path}: {exc}") from None


def _head_names(config, k: int, prefix: str = "head") -> tuple[str, ...]:
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels.get(i, labels.get(str(i), ""))) for i in range(k)]
    if len(set(names)) == k and not any(n.startswith("LABEL_") or not n for n in names):
        return tuple(names)
    return tuple(f"{prefix}_{i}" for i in range(k))


def _load_heads(path: Path, hidden: int):
    safetensors_torch = require("safetensors.torch", "export")
    if not path.is_file():
        raise ExportError(f"heads file not found: {path}")
    safetensors = require("safetensors", "export")
    try:
        tensors = safetensors_torch.load_file(str(path))
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as exc:
        raise ExportError(f"cannot read {path} as safetensors: {exc}") from None
    if "weight" not in tensors:
        raise ExportError(f"{path} must hold 'weight' [K, hidden] (and optionally 'bias' [K]); found {sorted(tensors)}")
    weight = tensors["weight"].float()
    if weight.ndim != 2 or weight.shape[1] != hidden:
        raise ExportError(f"{path}: 'weight' must be [K, {hidden}] for this encoder, found {list(weight.shape)}")
    bias = tensors.get("bias", torch.zeros(weight.shape[0])).float()
    if bias.shape != (weight.shape[0],):
        raise ExportError(f"{path}: 'bias' must be [{weight.shape[0]}], found {list(bias.shape)}")
    return weight, bias


def load_source(sources: list[str | Path], heads: str | Path | None = None, pooling: str | None = None,
                max_length: int | None = None, attn_implementation: str = "eager",
                trust_remote_code: bool = False, tokenizer: str | Path | None = None,
                dtype: str = "fp32") -> LoadedSource:
    """Load one of the three source kinds (see the module docstring), its weights in ``dtype``.

    One directory is a sequence classifier, or a base model when ``heads`` is given; several
    directories are a full ensemble. ``max_length`` caps the model's own limit. The tokenizer
    comes from the (first) source directory, or from the directory ``tokenizer`` when given.

    (Needs a checkpoint on disk, so not run by the doctests.)

    >>> src = load_source(["checkpoints/rm"])            # doctest: +SKIP
    >>> src.num_heads, src.architecture                  # doctest: +SKIP
    (8, 'encoder')
    """
    paths = [Path(s) for s in sources]
    if not paths:
        raise ExportError("no source given")
    if heads is not None and len(paths) > 1:
        raise ExportError("a heads file (`heads`) goes with a single base model, not a full ensemble")
    if pooling is not None and heads is None:
        raise ExportError("`pooling` applies only to a base model with `heads`; a sequence classifier "
                          "keeps its own pooling")
    given = Path(tokenizer) if tokenizer is not None else None
    with quiet_transformers():
        if heads is not None:
            source = load_base_with_heads(paths[0], Path(heads), pooling, attn_implementation, trust_remote_code,
                                          tokenizer=given, dtype=dtype)
        elif len(paths) == 1 and is_trunk_checkpoint(paths[0]):
            _fp32_only(paths[0], dtype)
            source = load_partial_trunk(paths[0], attn_implementation, trust_remote_code, tokenizer=given)
        elif len(paths) == 1:
            source = load_sequence_classifier(paths[0], attn_implementation, trust_remote_code, tokenizer=given,
                                              dtype=dtype)
        else:
            source = load_full_ensemble(paths, attn_implementation, trust_remote_code, tokenizer=given, dtype=dtype)
    load_args = {"sources": [str(p) for p in paths], "heads": None if heads is None else str(heads),
                 "pooling": pooling, "max_length": max_length, "attn_implementation": attn_implementation,
                 "trust_remote_code": trust_remote_code, "tokenizer": None if given is None else str(given),
                 "dtype": dtype}
    source = dataclasses.replace(source, dtype=dtype, load_args=load_args)
    if max_length is not None:
        if max_length < 1 or max_length > source.max_length:
            raise ExportError(f"`max_length` must be between 1 and the model's limit {source.max_length}, "
                              f"got {max_length}")
        source = dataclasses.replace(source, max_length=max_length)
    return source


def load_sequence_classifier(path: Path, attn_implementation: str = "eager", trust_remote_code: bool = False,
                             tokenizer: Path | None = None, dtype: str = "fp32") -> LoadedSource:
    """A ``*ForSequenceClassification`` checkpoint with ``num_labels = K``: K heads, its own pooling."""
    module, config, architecture, uses_types, _ = _classifier(path, attn_implementation, trust_remote_code, dtype)
    loaded, tokenizer_dir = _tokenizer_of(path, tokenizer, trust_remote_code)
    return LoadedSource(
        module=module, kind="sequence-classifier", architecture=architecture, model_type=config.model_type,
        pooling="last" if architecture == "decoder" else "cls", uses_token_type_ids=uses_types,
        num_heads=int(config.num_labels), head_names=_head_names(config, config.num_labels), members=1,
        max_length=_limit([config], loaded), vocab_size=int(config.vocab_size), tokenizer=loaded,
        tokenizer_dir=tokenizer_dir, fingerprint=fingerprint([path, *_given_files(tokenizer)]),
    )


def load_base_with_heads(path: Path, heads: Path, pooling: str | None = None, attn_implementation: str = "eager",
                         trust_remote_code: bool = False, tokenizer: Path | None = None,
                         dtype: str = "fp32") -> LoadedSource:
    """A base encoder/decoder plus ``heads.safetensors`` (``weight [K, hidden]``, ``bias [K]``) and a pooling."""
    _check_dir(path)
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    decoder = is_decoder(config)
    pooling = pooling or ("last" if decoder else "cls")
    base = _from_pretrained(transformers.AutoModel, path, attn_implementation, trust_remote_code, dtype)
    weight, bias = _load_heads(heads, base.config.hidden_size)
    uses_types = _uses_token_type_ids(base) and not decoder
    k = int(weight.shape[0])
    loaded, tokenizer_dir = _tokenizer_of(path, tokenizer, trust_remote_code)
    return LoadedSource(
        module=modules.EncoderWithHeads(base, weight, bias, pooling, decoder, uses_types).eval(),
        kind="encoder+heads", architecture="decoder" if decoder else "encoder", model_type=config.model_type,
        pooling=pooling, uses_token_type_ids=uses_types, num_heads=k, head_names=tuple(f"head_{i}" for i in range(k)),
        members=1, max_length=_limit([config], loaded), vocab_size=int(config.vocab_size), tokenizer=loaded,
        tokenizer_dir=tokenizer_dir, fingerprint=fingerprint([path, heads, *_given_files(tokenizer)]),
    )


def load_full_ensemble(paths: list[Path], attn_implementation: str = "eager", trust_remote_code: bool = False,
                       tokenizer: Path | None = None, dtype: str = "fp32") -> LoadedSource:
    """Several classifiers of one architecture sharing one tokenizer: one graph running every member.

    With ``tokenizer`` every member is fed that tokenizer and the members' own files are not compared.
    """
    loaded = [_classifier(p, attn_implementation, trust_remote_code, dtype) for p in paths]
    configs = [config for _, config, _, _, _ in loaded]
    counts = [heads for *_, heads in loaded]
    poolings = {getattr(module, "pooling", None) for module, *_ in loaded}
    archs = {architecture for _, _, architecture, _, _ in loaded}
    if len(archs) > 1 or len({c.model_type for c in configs}) > 1:
        raise ExportError("full-ensemble members must share one architecture; found "
                          + ", ".join(f"{p}: {c.model_type}" for p, c in zip(paths, configs)))
    if len(poolings) > 1:
        raise ExportError("full-ensemble members must pool alike; found "
                          + ", ".join(f"{p}: {getattr(m, 'pooling', 'own classifier')}" for p, (m, *_) in
                                      zip(paths, loaded)))
    architecture = archs.pop()
    pooling = poolings.pop() or ("last" if architecture == "decoder" else "cls")
    if tokenizer is None:
        shared, tokenizer_dir = _shared_tokenizer(paths, trust_remote_code), paths[0]
    else:
        shared, tokenizer_dir = _tokenizer_of(paths[0], tokenizer, trust_remote_code)
    return LoadedSource(
        module=modules.FullEnsemble([module for module, *_ in loaded]).eval(), kind="full-ensemble",
        architecture=architecture, model_type=configs[0].model_type, pooling=pooling,
        uses_token_type_ids=loaded[0][3], num_heads=sum(counts),
        head_names=tuple(f"member_{i}" if k == 1 else f"member_{i}_head_{j}"
                         for i, k in enumerate(counts) for j in range(k)),
        members=len(paths), max_length=_limit(configs, shared), vocab_size=int(configs[0].vocab_size),
        tokenizer=shared, tokenizer_dir=tokenizer_dir, fingerprint=fingerprint([*paths, *_given_files(tokenizer)]),
    )


def load_partial_trunk(path: Path, attn_implementation: str = "eager", trust_remote_code: bool = False,
                       tokenizer: Path | None = None) -> LoadedSource:
    """A partially shared trunk (:mod:`ensrm.models.trunk`): K members, one graph computing the shared layers once."""
    trunk = _trunk(path, attn_implementation, trust_remote_code)
    config = trunk.base.config
    loaded, tokenizer_dir = _tokenizer_of(path, tokenizer, trust_remote_code)
    return LoadedSource(
        module=trunk, kind="partial-trunk", architecture="decoder" if trunk.decoder else "encoder",
        model_type=config.model_type, pooling=trunk.pooling, uses_token_type_ids=trunk.uses_token_type_ids,
        num_heads=trunk.num_members, head_names=trunk.head_names, members=trunk.num_members,
        max_length=_limit([config], loaded), vocab_size=int(config.vocab_size), tokenizer=loaded,
        tokenizer_dir=tokenizer_dir, fingerprint=fingerprint([path, *_given_files(tokenizer)]),
        member_layers=trunk.member_layers,
    )


def _tokenizer_of(path: Path, given: Path | None, trust_remote_code: bool):
    """The tokenizer of the directory ``given`` (``tokenizer=DIR``), else of the source ``path``; and where from."""
    directory = given if given is not None else path
    return _load_tokenizer(directory, trust_remote_code, given=given is not None), directory


def _given_files(given: Path | None) -> list[Path]:
    # A tokenizer taken from elsewhere is part of what the bundle computes: the fingerprint covers it.
    return tokenizer_files(given) if given is not None else []


def _shared_tokenizer(paths: list[Path], trust_remote_code: bool):
    """The first member's tokenizer, after checking every member has the same one."""
    tokenizer = _load_tokenizer(paths[0], trust_remote_code)
    first = json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()), sort_keys=True)
    for p in paths[1:]:
        other = _load_tokenizer(p, trust_remote_code).backend_tokenizer.to_str()
        if json.dumps(json.loads(other), sort_keys=True) != first:
            raise ExportError(f"full-ensemble member {p} uses a different tokenizer from {paths[0]}; "
                              "members must share one tokenizer to share the graph's inputs")
    return tokenizer


def _limit(configs, tokenizer) -> int:
    """The longest sequence every model and the tokenizer accept."""
    limit = min(_max_positions(c) for c in configs)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return int(limit)
