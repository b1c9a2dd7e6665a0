"""Torch modules that map token ids to raw per-member rewards ``[batch, K]``.

The exporter traces one of these; the normalisation and the aggregates are appended to the
ONNX graph afterwards (:mod:`ensrm.models.graph`), so they are written once for every source.
"""

from __future__ import annotations

from ensrm._optional import require

torch = require("torch", "export")
nn = torch.nn


def positions_from_mask(attention_mask):
    """Position ids that count only real tokens, so left padding does not shift positions."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [batch, seq]


def last_token_index(attention_mask):
    """Index of the last non-padding token; right for left, right and no padding."""
    seq = attention_mask.shape[-1]
    positions = torch.arange(seq, device=attention_mask.device)  # [seq]
    return (positions * attention_mask).argmax(-1)  # [batch]


def pool(hidden, attention_mask, pooling: str):
    """Reduce hidden states ``[batch, seq, hidden]`` to ``[batch, hidden]``."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask)]
    raise ValueError(f"unknown pooling {pooling!r}")


def base_kwargs(decoder: bool, uses_token_type_ids: bool, attention_mask, token_type_ids) -> dict:
    """The base model's keywords besides ids and mask: mask-derived positions for decoders, segments for BERT."""
    extra = {}
    if decoder:
        extra["position_ids"] = positions_from_mask(attention_mask)
    if uses_token_type_ids:
        extra["token_type_ids"] = token_type_ids
    return extra


class Float32Head(nn.Module):
    """A classifier head run in fp32 on the (upcast) output of a half-precision model.

    Heads stay fp32 whatever the export's dtype: rewards of nearly equal heads are compared
    (min, variance), which half precision would round together.
    """

    def __init__(self, head):
        super().__init__()
        self.head = head.float()

    def forward(self, features, *args, **kwargs):
        return self.head(features.float(), *args, **kwargs)


def float32_heads(model):
    """Run ``model``'s own classifier (``score`` or ``classifier``) in fp32; return ``model``.

    A no-op for an fp32 model, so its traced graph is the one it always was.
    """
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and not isinstance(head, Float32Head) and model.dtype != torch.float32:
            setattr(model, name, Float32Head(head))
    return model


class EncoderClassifier(nn.Module):
    """A BERT-family ``*ForSequenceClassification``: its own first-token pooling and classifier."""

    def __init__(self, model, uses_token_type_ids: bool):
        super().__init__()
        self.model = model
        self.uses_token_type_ids = uses_token_type_ids

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.uses_token_type_ids else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # [batch, K]


class DecoderClassifier(nn.Module):
    """A decoder ``*ForSequenceClassification``: score the last non-padding token.

    Transformers finds that token by comparing ids with the pad id, which breaks when the
    pad token also occurs in the text (pad = eos); the mask is exact.
    """

    def __init__(self, model):
        super().__init__()
        self.base = model.base_model
        self.score = model.score

    def forward(self, input_ids, attention_mask):
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=positions_from_mask(attention_mask)).last_hidden_state
        return self.score(pool(hidden, attention_mask, "last"))  # [batch, K]


class EncoderWithHeads(nn.Module):
    """A base encoder or decoder, a pooling, and a stacked ``Linear(hidden, K)``."""

    def __init__(self, base, weight, bias, pooling: str, decoder: bool, uses_token_type_ids: bool):
        super().__init__()
        self.base = base
        self.pooling = pooling
        self.decoder = decoder
        self.uses_token_type_ids = uses_token_type_ids
        self.heads = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.heads.weight.copy_(weight)  # [K, hidden]
            self.heads.bias.copy_(bias)  # [K]

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = base_kwargs(self.decoder, self.uses_token_type_ids, attention_mask, token_type_ids)
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.pooling == "mean":  # sum over tokens in fp32 (a no-op for an fp32 model)
            hidden = hidden.float()
        return self.heads(pool(hidden, attention_mask, self.pooling).float())  # [batch, K], fp32 heads


class FullEnsemble(nn.Module):
    """K separately trained models run side by side; their rewards concatenate to ``[batch, K]``."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        args = (input_ids, attention_mask) if token_type_ids is None else (input_ids, attention_mask, token_type_ids)
        return torch.cat([member(*args) for member in self.members], dim=-1)  # [batch, K]
