"""Text to padded token batches with the bundle's own tokenizer (the ``tokenizers`` library only)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.bundle import bundle_file
from ensrm.errors import BundleError, InputError
from ensrm.spec import EnsembleSpec


def _type_name(value) -> str:
    return type(value).__name__


def as_text(value, field: str, where: str | None = None, *, decode: bool = False) -> str:
    """The one check every entry point makes on a prompt or response: a ``str`` that is valid
    Unicode (with ``decode``, also UTF-8 ``bytes``, as Arrow and Triton carry text); anything
    else raises :class:`InputError` naming ``field`` (``where``, when given, is how the message
    names it, e.g. ``"field 'prompt'"``).

    >>> as_text(b"Hi", "prompts[0]", decode=True)
    'Hi'
    >>> as_text(5, "response", "field 'response'")
    Traceback (most recent call last):
    ...
    ensrm.errors.InputError: field 'response' must be a string, got int
    """
    where = where or field
    if decode and isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})", field=field,
                             expected="UTF-8 text", actual="invalid bytes") from None
    if not isinstance(value, str):
        raise InputError(f"{where} must be a string, got {_type_name(value)}", field=field, expected="str",
                         actual=_type_name(value))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        raise InputError(
            f"{where} is not valid Unicode: lone surrogate {char!r} at position {exc.start} "
            "(often a JSON \\ud800-style escape of half an emoji); repair or drop the text, e.g. "
            "text.encode('utf-8', 'replace').decode()", field=field,
            expected="valid Unicode text", actual=f"lone surrogate {char!r} at {exc.start}") from None
    return value


def as_texts(values, name: str, *, decode: bool = False) -> list[str]:
    """A list (tuple, 1-D array) of texts, each checked by :func:`as_text` as ``name[i]``.

    >>> as_texts(("Hi", b"there"), "prompts", decode=True)
    ['Hi', 'there']
    """
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise InputError(f"{name} must be a 1-D list of strings, got an array of shape {values.shape}",
                         field=name, expected="1-D list of str", actual=f"shape {values.shape}")
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise InputError(f"{name} must be a list of strings, got {_type_name(values)}",
                         field=name, expected="list of str", actual=_type_name(values))
    return [as_text(value, f"{name}[{i}]", decode=decode) for i, value in enumerate(values)]


def check_texts(prompts, responses) -> tuple[list[str], list[str]]:
    """Both sides must be lists (tuples, 1-D arrays) of strings of equal length.

    >>> check_texts(["Hi"], ["Hello"])
    (['Hi'], ['Hello'])
    """
    prompts, responses = as_texts(prompts, "prompts"), as_texts(responses, "responses")
    if len(prompts) != len(responses):
        raise InputError(f"got {len(prompts)} prompts but {len(responses)} responses; they must pair up",
                         field="responses", expected=f"{len(prompts)} items", actual=f"{len(responses)} items")
    return prompts, responses


def _unencodable(prompts: list[str], responses: list[str]) -> InputError | None:
    """Find the text that the tokenizer cannot take (lone surrogates are not valid Unicode)."""
    for name, values in (("prompts", prompts), ("responses", responses)):
        for i, value in enumerate(values):
            try:
                as_text(value, f"{name}[{i}]")
            except InputError as exc:
                return exc
    return None


class TextEncoder:
    """Tokenises (prompt, response) pairs the way the bundle's model was trained to read them."""

    def __init__(self, bundle_dir: str | Path, spec: EnsembleSpec):
        tokenizers = require("tokenizers", "core")
        if not spec.tokenizer_file:
            raise BundleError("this bundle has no tokenizer; score token ids with Scorer.score instead")
        self.spec = spec
        path = str(bundle_file(bundle_dir, spec.tokenizer_file))
        # One tokenizer per truncation mode, configured here and never again: changing a
        # tokenizer's settings while another thread encodes with it fails ("Already borrowed"),
        # so a Scorer shared by threads must not reconfigure per call.
        self.tokenizer = tokenizers.Tokenizer.from_file(path)  # truncates to max_length
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(spec.max_length, strategy="longest_first", direction=spec.truncation_side)
        self.untruncated = tokenizers.Tokenizer.from_file(path)
        self.untruncated.no_padding()
        self.untruncated.no_truncation()

    def encode(self, prompts: list[str], responses: list[str], truncation: bool = True) -> list:
        """Encodings of each pair; with ``truncation`` the longer side is cut to fit ``max_length``."""
        tokenizer = self.tokenizer if truncation else self.untruncated
        try:
            encodings = tokenizer.encode_batch(list(zip(prompts, responses)))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
            raise (_unencodable(prompts, responses) or
                   InputError(f"the tokenizer could not encode the texts: {exc}", field="texts")) from None
        for i, enc in enumerate(encodings):
            if not enc.ids:
                raise InputError(f"pair {i} encodes to no tokens; give a non-empty prompt or response",
                                 field=f"prompts[{i}]", expected="at least one token", actual="no tokens")
            if len(enc.ids) > self.spec.max_length:
                raise InputError(f"pair {i} has {len(enc.ids)} tokens, above the model's maximum "
                                 f"{self.spec.max_length}; pass truncation=True to cut it", field=f"prompts[{i}]",
                                 expected=f"at most {self.spec.max_length} tokens", actual=f"{len(enc.ids)} tokens")
        return encodings

    def batches(self, encodings: list, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(row_indices, feeds)`` for batches of similar length, padded to their longest.

        Sorting by length before batching cuts the padding a mixed workload pays for;
        the caller scatters results back by ``row_indices``.
        """
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        spec = self.spec
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            seq = max(int(lengths[rows].max()), 1)
            ids = np.full((len(rows), seq), spec.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(rows), seq), dtype=np.int64)
            types = np.zeros((len(rows), seq), dtype=np.int64) if spec.uses_token_type_ids else None
            for r, i in enumerate(rows):
                enc = encodings[i]
                n = len(enc.ids)
                cols = slice(0, n) if spec.padding_side == "right" else slice(seq - n, seq)
                ids[r, cols] = enc.ids
                mask[r, cols] = 1
                if types is not None:
                    types[r, cols] = enc.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask}
            if types is not None:
                feeds["token_type_ids"] = types
            yield rows, feeds
