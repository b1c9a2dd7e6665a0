"""Check token arrays before they reach the graph, so bad input never becomes an onnxruntime error.

What :func:`check_inputs` accepts (anything else raises :class:`InputError` naming the field,
what was expected and what was found):

- ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the bundle uses them):
  integer (or, for masks, boolean) arrays ``[batch, seq]`` of one shape. Lists and tuples go
  through ``np.asarray``; non-contiguous and read-only arrays are copied to contiguous int64.
  Float, object and ragged inputs are refused, never rounded.
- An empty batch (``batch == 0``, or ``[]``) is valid and scores to empty results.
- ``attention_mask`` holds only 0 and 1, each row has at least one 1, and its 1s are one
  contiguous run. Encoders need that run to start at column 0 (right padding): their position
  embeddings count from the first column. Decoders take left, right or mixed padding: their
  positions come from the mask.
- ``input_ids`` lie in ``[0, vocab_size)`` wherever the mask is 1; padding positions may hold
  anything (they are replaced by the pad id before the graph sees them).
- Sequence length: a batch wider than ``max_length`` is accepted only when the extra columns
  are padding in every row (they are dropped); more than ``max_length`` real tokens is refused.

All checks are vectorised numpy over the batch; a valid batch costs a few passes over its ids.
"""

from __future__ import annotations

import numpy as np

from ensrm.errors import InputError
from ensrm.spec import EnsembleSpec


def _as_int64(name: str, value, allow_bool: bool = False) -> np.ndarray:
    if value is None:
        raise InputError(f"{name} is required, got None", field=name, expected="an integer array", actual=None)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # ragged nested lists
        raise InputError(f"{name} must be a rectangular integer array [batch, seq], got rows of different "
                         "lengths (pad them to one length)", field=name, expected="rectangular [batch, seq]",
                         actual="ragged") from None
    if array.size == 0 and array.ndim <= 2 and array.dtype in (np.float64, np.object_):
        array = np.zeros((0, 0) if array.ndim < 2 else array.shape, dtype=np.int64)  # [] or [[]]: empty batch
    ok = np.issubdtype(array.dtype, np.integer) or (allow_bool and array.dtype == np.bool_)
    if not ok:
        want = "integers or booleans" if allow_bool else "integers"
        raise InputError(f"{name} must hold {want}, got dtype {array.dtype}",
                         field=name, expected=want, actual=f"dtype {array.dtype}")
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D [batch, seq], got shape {array.shape}",
                         field=name, expected="2-D [batch, seq]", actual=f"shape {array.shape}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{name} holds {int(array.max())}, beyond int64",
                         field=name, expected="values that fit int64", actual=int(array.max()))
    return np.ascontiguousarray(array, dtype=np.int64)


def _check_mask(spec: EnsembleSpec, mask: np.ndarray) -> np.ndarray:
    """Validate the mask; return the ``[batch]`` number of real tokens per row."""
    low, high = int(mask.min()), int(mask.max())
    if low < 0 or high > 1:
        row, col = np.argwhere((mask < 0) | (mask > 1))[0]
        raise InputError(f"attention_mask must hold only 0 and 1, found attention_mask[{row}, {col}] = "
                         f"{int(mask[row, col])}", field="attention_mask", expected="0 or 1",
                         actual=int(mask[row, col]))
    lengths = mask.sum(axis=1)  # [batch]
    if (lengths == 0).any():
        row = int(np.argmin(lengths))
        raise InputError(f"attention_mask row {row} is all zeros: every sequence needs at least one token",
                         field="attention_mask", expected="at least one 1 per row", actual=f"row {row} all zeros")
    # One contiguous run of 1s per row: count the 0 -> 1 rises, plus a 1 in column 0.
    rises = (np.diff(mask, axis=1) > 0).sum(axis=1) + (mask[:, 0] == 1)  # [batch]
    if spec.architecture == "encoder":
        # Absolute position embeddings count from column 0, so encoders read only 1…1 0…0.
        bad = (mask[:, 0] == 0) | (rises > 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(
                f"attention_mask row {row} is not right-padded: this {spec.model_type} encoder needs masks of "
                f"the form 1…1 0…0 (got {_show_row(mask[row])})", field="attention_mask",
                expected="right padding 1…1 0…0", actual=_show_row(mask[row]))
    elif (rises > 1).any():
        row = int(np.argmax(rises > 1))
        raise InputError(
            f"attention_mask row {row} has gaps: masks must be one contiguous run of 1s, padded left or right "
            f"(got {_show_row(mask[row])})", field="attention_mask",
            expected="one contiguous run of 1s", actual=_show_row(mask[row]))
    return lengths


def _show_row(row: np.ndarray, limit: int = 24) -> str:
    text = "".join(str(int(v)) for v in row[:limit])
    return text + ("…" if len(row) > limit else "")


def _drop_padding_columns(feeds: dict[str, np.ndarray], mask: np.ndarray, max_length: int) -> dict[str, np.ndarray]:
    """Cut columns that are padding in every row from both ends; refuse if still too long."""
    used = mask.any(axis=0)  # [seq]
    first = int(np.argmax(used))
    last = len(used) - int(np.argmax(used[::-1]))
    if last - first > max_length:
        longest = int(mask.sum(axis=1).max())
        if longest > max_length:
            row = int(np.argmax(mask.sum(axis=1)))
            message = (f"sequence length {longest} (attention_mask row {row}) exceeds the model's maximum "
                       f"{max_length}; truncate the input or use score_texts(..., truncation=True)")
        else:
            message = (f"the batch's tokens span {last - first} columns, which exceeds the model's maximum "
                       f"{max_length}; "
                       "score left- and right-padded rows of this length in separate calls")
        raise InputError(message, field="input_ids", expected=f"at most {max_length} tokens",
                         actual=f"{max(longest, last - first)} tokens")
    return {name: np.ascontiguousarray(value[:, first:last]) for name, value in feeds.items()}


def check_inputs(spec: EnsembleSpec, input_ids, attention_mask, token_type_ids=None) -> dict[str, np.ndarray]:
    """Validate and convert to contiguous int64 feeds; raise :class:`InputError` naming the problem.

    (Needs a bundle's spec, so not run by the doctests.)

    >>> feeds = check_inputs(spec, [[101, 2023, 102]], [[1, 1, 1]])      # doctest: +SKIP
    >>> feeds["input_ids"].dtype                                         # doctest: +SKIP
    dtype('int64')
    """
    ids = _as_int64("input_ids", input_ids)
    mask = _as_int64("attention_mask", attention_mask, allow_bool=True)
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask has shape {mask.shape}, input_ids has {ids.shape}; they must match",
                         field="attention_mask", expected=f"shape {ids.shape}", actual=f"shape {mask.shape}")
    feeds = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids is not None:
        types = _as_int64("token_type_ids", token_type_ids)
        if types.shape != ids.shape:
            raise InputError(f"token_type_ids has shape {types.shape}, input_ids has {ids.shape}; they must match",
                             field="token_type_ids", expected=f"shape {ids.shape}", actual=f"shape {types.shape}")
        if spec.uses_token_type_ids:
            if types.size and (types.min() < 0 or types.max() > 1):
                raise InputError(f"token_type_ids must be 0 or 1, found {int(types.min())}..{int(types.max())}",
                                 field="token_type_ids", expected="0 or 1",
                                 actual=f"{int(types.min())}..{int(types.max())}")
            feeds["token_type_ids"] = types
        elif types.any():
            raise InputError(f"this bundle's {spec.model_type} model takes no token_type_ids, "
                             "but non-zero ones were given", field="token_type_ids", expected="None or zeros",
                             actual="non-zero values")
    elif spec.uses_token_type_ids:
        feeds["token_type_ids"] = np.zeros_like(ids)  # one segment
    batch, seq = ids.shape
    if batch == 0:
        return feeds
    if seq == 0:
        raise InputError("input_ids has no tokens (sequence length 0)", field="input_ids",
                         expected="seq >= 1", actual=f"shape {ids.shape}")
    _check_mask(spec, mask)
    if seq > spec.max_length:
        feeds = _drop_padding_columns(feeds, mask, spec.max_length)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
    if int(ids.min()) < 0 or int(ids.max()) >= spec.vocab_size:  # the common case stops here
        outside = (ids < 0) | (ids >= spec.vocab_size)  # [batch, seq]
        bad = outside & (mask == 1)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise InputError(f"input_ids[{row}, {col}] = {int(ids[row, col])} is outside the vocabulary "
                             f"[0, {spec.vocab_size})", field="input_ids", expected=f"0 <= id < {spec.vocab_size}",
                             actual=int(ids[row, col]))
        # Only padding positions are out of range: they never reach attention, but would still
        # crash the embedding gather in onnxruntime, so the graph gets the pad id there.
        ids = ids.copy()  # may be the caller's (or a read-only) array
        ids[outside] = spec.pad_token_id
        feeds["input_ids"] = ids
    return feeds
