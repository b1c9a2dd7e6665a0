"""A partially shared trunk: K reward models that share the embeddings and the first L − m layers.

Member k owns a copy of the last ``m`` transformer layers (and of the final norm, in families
that have one: GPT-2's ``ln_f``, Llama's ``norm``) and one linear head on a pooling of its last
hidden states. ``m = 0`` is the multi-head model (one encoder, K heads); ``m = L`` is a full
ensemble that shares only its embeddings.

Member 0's layers are the base model's own: one forward of the base computes the shared layers
once and member 0 whole, while a forward pre-hook on layer L − m records that layer's input and
arguments (the attention mask the model built, Llama's rotary embeddings). Members 1..K−1 then
run their own copies of the last m layers from that input with the same arguments, so nothing
family-specific is re-implemented and the cost is L + (K − 1)·m layers per batch.

The checkpoint (``ensrm train --mode joint --member-layers m``) is readable without ensrm::

    CKPT/config.json, model.safetensors   the base model holding member 0's layers: an ordinary
                                          Hugging Face checkpoint (member 0 on its own)
    CKPT/tokenizer files
    CKPT/members.safetensors              towers.{k-1}.layers.{j}.*  member k's copy of layer L − m + j
                                          towers.{k-1}.norm.*        member k's final norm (if any)
                                          heads.weight [K, hidden], heads.bias [K]
    CKPT/ensrm_trunk.json                 {"format": "ensrm-partial-trunk", "version": 1, "members": K,
                                           "member_layers": m, "pooling": ..., "head_names": [...],
                                           "layers": "encoder.layer", "final_norm": null | "ln_f", ...}
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

from ensrm._optional import require
from ensrm.errors import ExportError
from ensrm.models.modules import EncoderWithHeads, base_kwargs, pool

torch = require("torch", "export")
nn = torch.nn

TRUNK_FILE = "ensrm_trunk.json"
MEMBERS_FILE = "members.safetensors"
FORMAT = "ensrm-partial-trunk"
VERSION = 1
# Final norms applied after the layer stack, by attribute path on the base model.
_FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "decoder.final_layer_norm")


def is_decoder(config) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        raise ExportError(f"encoder-decoder models ({config.model_type}) are not supported; "
                          "export an encoder-only or decoder-only reward model")
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and \
        config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def is_trunk_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a partially-shared-trunk checkpoint (it holds :data:`TRUNK_FILE`)."""
    return (Path(path) / TRUNK_FILE).is_file()


def layer_stack(base) -> tuple[str, nn.ModuleList]:
    """``(path, ModuleList)`` of the base model's transformer layers (``encoder.layer``, ``h``, ``layers``)."""
    count = base.config.num_hidden_layers
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise ExportError(f"{type(base).__name__}: found no list of {count} transformer layers; "
                      "this architecture cannot have member layers")


def final_norm(base) -> str | None:
    """The attribute path of the norm applied after the last layer, or ``None`` (BERT-family)."""
    for name in _FINAL_NORMS:
        try:
            module = base.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Module) and not isinstance(module, nn.ModuleList):
            return name
    return None


class _Tower(nn.Module):
    """One member's own copies of the last m layers and of the final norm."""

    def __init__(self, layers, norm):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, hidden, args, kwargs):
        for layer in self.layers:
            out = layer(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out  # [batch, seq, hidden]
        return hidden if self.norm is None else self.norm(hidden)


class PartialTrunk(EncoderWithHeads):
    """K members sharing embeddings and the first L − m layers; ``forward`` gives rewards ``[batch, K]``.

    (Not run by the doctests: it needs a base model loaded in torch.)

    >>> trunk = PartialTrunk.from_base(base, members=4, member_layers=2, pooling="mean")  # doctest: +SKIP
    >>> trunk(input_ids, attention_mask).shape                                           # doctest: +SKIP
    torch.Size([8, 4])
    """

    def __init__(self, base, towers, weight, bias, *, member_layers: int, pooling: str, decoder: bool,
                 uses_token_type_ids: bool, head_names: tuple[str, ...] | None = None):
        super().__init__(base, weight, bias, pooling, decoder, uses_token_type_ids)
        self.towers = nn.ModuleList(towers)
        self.member_layers = member_layers
        self.head_names = tuple(head_names or (f"head_{k}" for k in range(weight.shape[0])))
        self._layers_path, layers = layer_stack(base)
        self._final_norm = final_norm(base)
        self._split_index = len(layers) - member_layers  # the first member layer
        self._use_cache = "use_cache" in inspect.signature(base.forward).parameters

    @classmethod
    def from_base(cls, base, *, members: int, member_layers: int, pooling: str, weight=None, bias=None,
                  head_names: tuple[str, ...] | None = None):
        """K members from one base model: each member's layers start as copies of the base's own."""
        _, layers = layer_stack(base)
        if not 0 <= member_layers <= len(layers):
            raise ExportError(f"`member_layers` must be between 0 and the model's {len(layers)} layers, "
                              f"got {member_layers}")
        if members < 1:
            raise ExportError(f"`members` must be at least 1, got {members}")
        norm_path = final_norm(base)
        norm = base.get_submodule(norm_path) if norm_path and member_layers else None
        tail = list(layers)[len(layers) - member_layers:] if member_layers else []
        towers = [_Tower(copy.deepcopy(tail), copy.deepcopy(norm)) for _ in range(members - 1)] if tail else []
        hidden = base.config.hidden_size
        decoder = is_decoder(base.config)
        return cls(base, towers, torch.zeros(members, hidden) if weight is None else weight,
                   torch.zeros(members) if bias is None else bias, member_layers=member_layers, pooling=pooling,
                   decoder=decoder, uses_token_type_ids=not decoder and any(
                       n.endswith("token_type_embeddings") for n, _ in base.named_modules()),
                   head_names=head_names)

    @property
    def num_members(self) -> int:
        return self.heads.out_features

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if not self.towers:  # m = 0 (or one member): the multi-head model
            return super().forward(input_ids, attention_mask, token_type_ids)  # [batch, K]
        extra = base_kwargs(self.decoder, self.uses_token_type_ids, attention_mask, token_type_ids)
        if self._use_cache:
            extra["use_cache"] = False  # members re-run layers: a cache would take their keys too
        recorded = {}

        def record(module, args, kwargs):
            recorded["call"] = (args[0], args[1:], kwargs) if args else (kwargs["hidden_states"], (), {
                k: v for k, v in kwargs.items() if k != "hidden_states"})

        split = self.base.get_submodule(self._layers_path)[self._split_index]
        handle = split.register_forward_pre_hook(record, with_kwargs=True)
        try:
            hidden = self.base(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        finally:
            handle.remove()
        shared, args, kwargs = recorded["call"]  # [batch, seq, hidden]: the input of layer L − m
        states = [hidden] + [tower(shared, args, kwargs) for tower in self.towers]
        pooled = torch.stack([pool(s, attention_mask, self.pooling) for s in states])  # [K, batch, hidden]
        return torch.einsum("kbh,kh->bk", pooled, self.heads.weight) + self.heads.bias  # [batch, K]

    def parameter_groups(self) -> dict[str, list]:
        """Parameters by role: ``trunk`` (embeddings, shared layers), ``members`` (every member's own
        layers and final norm, member 0's included) and ``heads``; each parameter in exactly one."""
        layers = self.base.get_submodule(self._layers_path)
        own = [layers[i] for i in range(len(layers) - self.member_layers, len(layers))]
        if self.member_layers and self._final_norm:
            own.append(self.base.get_submodule(self._final_norm))
        own_ids = {id(p) for module in own for p in module.parameters()}
        member_params = [p for p in self.base.parameters() if id(p) in own_ids] + list(self.towers.parameters())
        return {"trunk": [p for p in self.base.parameters() if id(p) not in own_ids],
                "members": member_params, "heads": list(self.heads.parameters())}

    def member(self, k: int) -> PartialTrunk:
        """Member ``k`` alone: a one-member trunk (``m = 0``) with member k's layers and head."""
        base = copy.deepcopy(self.base)
        if k and self.towers:
            tower = self.towers[k - 1]
            layers = base.get_submodule(self._layers_path)
            for j, layer in enumerate(tower.layers):
                layers[len(layers) - self.member_layers + j] = copy.deepcopy(layer)
            if tower.norm is not None:
                base.set_submodule(self._final_norm, copy.deepcopy(tower.norm))
        weight, bias = self.heads.weight.detach()[k:k + 1], self.heads.bias.detach()[k:k + 1]
        return PartialTrunk(base, [], weight.clone(), bias.clone(), member_layers=0, pooling=self.pooling,
                            decoder=self.decoder, uses_token_type_ids=self.uses_token_type_ids,
                            head_names=(self.head_names[k],))

    def describe(self) -> dict:
        """The JSON config of the checkpoint (:data:`TRUNK_FILE`)."""
        return {"format": FORMAT, "version": VERSION, "members": self.num_members,
                "member_layers": self.member_layers, "layers": self._layers_path,
                "num_layers": len(self.base.get_submodule(self._layers_path)), "final_norm": self._final_norm,
                "pooling": self.pooling, "architecture": "decoder" if self.decoder else "encoder",
                "head_names": list(self.head_names)}


def save_trunk(model: PartialTrunk, tokenizer, out_dir: str | Path) -> None:
    """Write ``model`` as the checkpoint format of the module docstring.

    (Not run by the doctests: it needs a trunk model in torch.)

    >>> save_trunk(trunk, tokenizer, "checkpoints/trunk-m2")     # doctest: +SKIP
    """
    safetensors_torch = require("safetensors.torch", "export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.base.save_pretrained(str(out), safe_serialization=True)
    tensors = {name: value.detach().contiguous() for name, value in model.state_dict().items()
               if name.startswith(("towers.", "heads."))}
    safetensors_torch.save_file(tensors, str(out / MEMBERS_FILE), metadata={"format": FORMAT})
    (out / TRUNK_FILE).write_text(json.dumps(model.describe(), indent=1) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


def read_trunk_config(path: str | Path) -> dict:
    """The checked contents of ``path/ensrm_trunk.json``."""
    file = Path(path) / TRUNK_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {file}: {exc}") from None
    if config.get("format") != FORMAT or not isinstance(config.get("version"), int):
        raise ExportError(f"{file} is not an {FORMAT} config (format {config.get('format')!r})")
    if config["version"] > VERSION:
        raise ExportError(f"{file} has version {config['version']}, newer than this ensrm reads ({VERSION}); "
                          "upgrade ensrm")
    missing = [k for k in ("members", "member_layers", "pooling") if k not in config]
    if missing:
        raise ExportError(f"{file} lacks {', '.join(missing)}")
    return config


def load_trunk(path: str | Path, attn_implementation: str = "eager", trust_remote_code: bool = False) -> PartialTrunk:
    """Load a checkpoint written by :func:`save_trunk` (fp32, eval mode).

    (Not run by the doctests: it needs a trunk checkpoint on disk.)

    >>> trunk = load_trunk("checkpoints/trunk-m2")    # doctest: +SKIP
    >>> trunk.num_members, trunk.member_layers        # doctest: +SKIP
    (4, 2)
    """
    transformers = require("transformers", "export")
    safetensors_torch = require("safetensors.torch", "export")
    from ensrm._hf import quiet_transformers

    path = Path(path)
    config = read_trunk_config(path)
    with quiet_transformers():
        base = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32,
                                                      attn_implementation=attn_implementation,
                                                      trust_remote_code=trust_remote_code)
    model = PartialTrunk.from_base(base, members=int(config["members"]), member_layers=int(config["member_layers"]),
                                   pooling=str(config["pooling"]), head_names=config.get("head_names"))
    file = path / MEMBERS_FILE
    if not file.is_file():
        raise ExportError(f"{path} has {TRUNK_FILE} but no {MEMBERS_FILE}")
    tensors = safetensors_torch.load_file(str(file))
    expected = {name for name in model.state_dict() if name.startswith(("towers.", "heads."))}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ExportError(f"{file} does not match {TRUNK_FILE} ({config['members']} members, "
                          f"{config['member_layers']} member layers): missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(tensors, strict=False)
    return model.eval()
