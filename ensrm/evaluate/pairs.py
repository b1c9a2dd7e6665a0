"""Preference pairs in, the texts the reward model reads out: ``{"prompt", "chosen", "rejected"}`` records.

The field names are RewardBench's (and TRL's preference format's); ``subset`` is optional and
groups the report. Two record forms are accepted:

- **standard**: ``prompt``, ``chosen`` and ``rejected`` are strings;
- **conversational** (TRL): ``chosen`` and ``rejected`` are lists of ``{"role", "content"}``
  messages, with the prompt either given as its own ``prompt`` (a string or a message list)
  or left implicit as the messages ``chosen`` and ``rejected`` share at their start (TRL's
  implicit-prompt form). The messages become text by the rule the reward functions use
  (:mod:`ensrm.runtime.rewards`): the prompt is the last ``user`` message, a completion its
  ``assistant`` messages joined by a blank line.

Every record must be usable: a malformed one raises :class:`~ensrm.errors.InputFileError`
naming its line, and nothing is dropped silently.

>>> pair = pair_from_record({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "subset": "chat"})
>>> pair
('Hi', 'Hello!', 'Go away.', 'chat')
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from ensrm.errors import InputError, InputFileError
from ensrm.jsonl import iter_lines, parse_record
from ensrm.runtime.rewards import completion_text, prompt_text

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePairs:
    """Pairs as parallel lists of text: ``prompts``, ``chosen``, ``rejected``, ``subsets`` (``None``: no subset).

    ``lines`` holds each pair's 1-based line in its file (``None`` for pairs given in Python).

    >>> pairs = PreferencePairs.from_records([{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])
    >>> len(pairs), pairs.has_subsets
    (1, False)
    """

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    subsets: list[str | None]
    lines: list[int | None]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def has_subsets(self) -> bool:
        return any(s is not None for s in self.subsets)

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> PreferencePairs:
        """Pairs from record dicts (as in a JSONL file); a bad record raises :class:`InputError` naming its index."""
        rows = []
        for i, record in enumerate(records):
            try:
                rows.append(pair_from_record(record))
            except InputError as exc:
                raise InputError(f"record {i}: {exc}") from None
        return cls._of(rows, [None] * len(rows))

    @classmethod
    def _of(cls, rows: list[tuple], lines: list[int | None]) -> PreferencePairs:
        if not rows:
            return cls([], [], [], [], [])
        prompts, chosen, rejected, subsets = (list(column) for column in zip(*rows))
        return cls(prompts, chosen, rejected, subsets, lines)


def _messages(value) -> bool:
    return isinstance(value, list)


def pair_from_record(record) -> tuple[str, str, str, str | None]:
    """``(prompt, chosen, rejected, subset)`` texts of one record; :class:`InputError` says what is wrong.

    >>> pair_from_record({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    ...                   "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No."}]})
    ('Hi', 'Hello!', 'No.', None)
    """
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, found {type(record).__name__}")
    for field in ("chosen", "rejected"):
        if field not in record:
            raise InputError(f"missing field {field!r} (has: {', '.join(sorted(record)) or 'nothing'})")
        if not isinstance(record[field], (str, list)):
            raise InputError(f"field {field!r} must be a string or a list of messages, "
                             f"found {type(record[field]).__name__}")
    chosen, rejected = record["chosen"], record["rejected"]
    subset = record.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise InputError(f"field 'subset' must be a string, found {type(subset).__name__}")
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, (str, list)):
            raise InputError(f"field 'prompt' must be a string or a list of messages, found {type(prompt).__name__}")
    elif _messages(chosen) and _messages(rejected):
        # TRL's implicit prompt: the messages both conversations start with.
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise InputError("no 'prompt' field, and 'chosen' and 'rejected' share no leading messages "
                             "to take the prompt from")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    else:
        raise InputError(f"missing field 'prompt' (has: {', '.join(sorted(record))}); only conversational "
                         "records (message lists) may leave it implicit")
    return (_text(prompt_text, prompt, "prompt"), _text(completion_text, chosen, "chosen"),
            _text(completion_text, rejected, "rejected"), subset)


def _text(convert, value, field: str) -> str:
    try:
        return convert(value)
    except InputError as exc:
        # The reward functions name list positions ("prompts[0]"); here it is the record's field.
        message = str(exc).replace("prompts[0]", field).replace("completions[0]", field)
        raise InputError(message) from None


def read_pairs(path: str | os.PathLike) -> PreferencePairs:
    """Read a JSONL file of preference records (see the module docstring).

    A malformed line raises :class:`~ensrm.errors.InputFileError` with its line number; an
    empty file raises one for line 1. The example needs a pairs file: not run by the doctests.

    >>> pairs = read_pairs("pairs.jsonl")                    # doctest: +SKIP
    >>> pairs.prompts[0], pairs.subsets[0]                   # doctest: +SKIP
    ('How do I boil an egg?', 'alpacaeval-easy')
    """
    rows, lines = [], []
    for lineno, line in iter_lines(path):
        record = parse_record(line, (), path, lineno)
        try:
            rows.append(pair_from_record(record))
        except InputError as exc:
            raise InputFileError(path, lineno, str(exc)) from None
        lines.append(lineno)
    if not rows:
        raise InputFileError(path, 1, "no preference records (expected JSONL objects with prompt, chosen, rejected)")
    return PreferencePairs._of(rows, lines)
