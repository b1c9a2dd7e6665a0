"""Check token arrays before they reach the graph, so bad input never becomes an onnxruntime error."""

from __future__ import annotations

import numpy as np

from ensrm.errors import InputError
from ensrm.spec import EnsembleSpec


def _as_int64(name: str, value) -> np.ndarray:
    if value is None:
        raise InputError(f"{name} is required, got None")
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        if array.size == 0 and array.dtype == np.float64:
            array = array.astype(np.int64)  # np.asarray([]) is float64; an empty list is fine
        else:
            raise InputError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D [batch, seq], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


def check_inputs(spec: EnsembleSpec, input_ids, attention_mask, token_type_ids=None) -> dict[str, np.ndarray]:
    """Validate and convert to contiguous int64 feeds; raise :class:`InputError` naming the problem."""
    ids = _as_int64("input_ids", input_ids)
    mask = _as_int64("attention_mask", attention_mask)
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask has shape {mask.shape}, input_ids has {ids.shape}; they must match")
    feeds = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids is not None:
        types = _as_int64("token_type_ids", token_type_ids)
        if types.shape != ids.shape:
            raise InputError(f"token_type_ids has shape {types.shape}, input_ids has {ids.shape}; they must match")
        if spec.uses_token_type_ids:
            if types.size and (types.min() < 0 or types.max() > 1):
                raise InputError(f"token_type_ids must be 0 or 1, found {int(types.min())}..{int(types.max())}")
            feeds["token_type_ids"] = types
        elif types.any():
            raise InputError(f"this bundle's {spec.model_type} model takes no token_type_ids, "
                             "but non-zero ones were given")
    elif spec.uses_token_type_ids:
        feeds["token_type_ids"] = np.zeros_like(ids)  # one segment
    batch, seq = ids.shape
    if batch == 0:
        return feeds
    if seq == 0:
        raise InputError("input_ids has no tokens (sequence length 0)")
    if seq > spec.max_length:
        raise InputError(f"sequence length {seq} exceeds the model's maximum {spec.max_length}; "
                         "truncate the input or use score_texts(..., truncation=True)")
    if mask.min() < 0 or mask.max() > 1:
        raise InputError(f"attention_mask must hold only 0 and 1, found values {int(mask.min())}..{int(mask.max())}")
    lengths = mask.sum(axis=1)  # [batch]
    if (lengths == 0).any():
        raise InputError(f"attention_mask row {int(np.argmin(lengths))} is all zeros: "
                         "every sequence needs at least one token")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= spec.vocab_size:
        row, col = np.argwhere((ids < 0) | (ids >= spec.vocab_size))[0]
        raise InputError(f"input_ids[{row}, {col}] = {int(ids[row, col])} is outside the vocabulary "
                         f"[0, {spec.vocab_size})")
    if spec.pooling == "cls":
        # First-token pooling reads column 0, so masks must be right-padded: 1…1 0…0.
        steps = np.diff(mask, axis=1)
        bad = (mask[:, 0] == 0) | (steps > 0).any(axis=1)
        if bad.any():
            raise InputError(f"attention_mask row {int(np.argmax(bad))} is not right-padded; this bundle "
                             "pools the first token and needs masks of the form 1…1 0…0")
    return feeds
