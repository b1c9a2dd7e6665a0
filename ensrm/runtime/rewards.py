"""Reward functions for training loops: one for TRL's GRPO trainer (text), one for custom PPO loops (token ids).

TRL calls a custom reward function as
``reward_func(prompts=..., completions=..., completion_ids=..., **reward_kwargs)`` where
``reward_kwargs`` holds every dataset column except ``prompt`` plus ``trainer_state``, and logs
it under ``reward_func.__name__``. :class:`GRPORewardFunction` accepts exactly that and ignores
every extra keyword.

How a conversation becomes the text the reward model reads (the model was trained on
(prompt, response) pairs, so it sees one prompt string and one response string):

- **prompt**: with ``prompt_messages="last_user"`` (default) the content of the last
  ``user`` message, the question the completion answers; with ``"all"`` every message's
  content (system and earlier turns included) joined by a blank line. A conversation with
  no user message raises :class:`InputError` under ``"last_user"``.
- **completion**: the contents of its ``assistant`` messages (messages without a role count
  as assistant; tool results and other roles are left out) joined by a blank line.
- A message's ``content`` may be a string or a list of parts; the ``text`` of the parts of
  type ``"text"`` is joined by a blank line (images and other parts are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ensrm.errors import InputError
from ensrm.runtime.scores import parse_objective

PROMPT_MESSAGES = ("last_user", "all")


def _content_text(message, where: str) -> str:
    if not isinstance(message, dict) or "content" not in message:
        raise InputError(f"{where} must be a message dict with a 'content' key, got {type(message).__name__}")
    content = message["content"]
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "\n\n".join(parts)
    raise InputError(f"{where}['content'] must be a string or a list of text parts, got {type(content).__name__}")


def prompt_text(prompt, index: int = 0, prompt_messages: str = "last_user") -> str:
    """The prompt string the reward model reads, from a string or a list of messages.

    >>> prompt_text([{"role": "system", "content": "Be brief."},
    ...              {"role": "user", "content": "How do I boil an egg?"}])
    'How do I boil an egg?'
    """
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        raise InputError(f"prompts[{index}] must be a string or a list of messages, got {type(prompt).__name__}")
    texts = [(m.get("role") if isinstance(m, dict) else None, _content_text(m, f"prompts[{index}][{j}]"))
             for j, m in enumerate(prompt)]
    if prompt_messages == "all":
        return "\n\n".join(text for _, text in texts)
    users = [text for role, text in texts if role == "user"]
    if not users:
        raise InputError(f"prompts[{index}] has no 'user' message; pass prompt_messages='all' to score the "
                         "whole conversation as the prompt")
    return users[-1]


def completion_text(completion, index: int = 0) -> str:
    """The response string the reward model reads, from a string or a list of messages.

    >>> completion_text([{"role": "assistant", "content": "Simmer it for 8 minutes."}])
    'Simmer it for 8 minutes.'
    """
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, list):
        raise InputError(f"completions[{index}] must be a string or a list of messages, "
                         f"got {type(completion).__name__}")
    texts = [_content_text(m, f"completions[{index}][{j}]") for j, m in enumerate(completion)
             if not isinstance(m, dict) or m.get("role", "assistant") == "assistant"]
    if not texts:
        raise InputError(f"completions[{index}] has no assistant message to score")
    return "\n\n".join(texts)


class GRPORewardFunction:
    """``f(prompts, completions, **kwargs) -> list[float]``, the reward-function form TRL's GRPO trainer calls.

    Both TRL dataset formats work: standard (lists of strings) and conversational (lists of
    ``{"role", "content"}`` messages; see the module docstring for how they become text).
    Returns one Python float per completion, the chosen objective's score.

    (Not run by the doctests: it needs a bundle, and TRL for the trainer.)

    >>> reward = scorer.as_reward_function(objective="uwo")                 # doctest: +SKIP
    >>> trainer = GRPOTrainer(model=..., reward_funcs=reward, ...)         # doctest: +SKIP
    >>> reward(prompts=["Hi"], completions=["Hello! How can I help?"])     # doctest: +SKIP
    [0.41]
    """

    def __init__(self, scorer, objective: str = "uwo", batch_size: int = 32, prompt_messages: str = "last_user",
                 name: str | None = None):
        if prompt_messages not in PROMPT_MESSAGES:
            raise ValueError(f"prompt_messages must be one of {PROMPT_MESSAGES}, got {prompt_messages!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.scorer = scorer
        self.objective = parse_objective(objective, scorer.num_heads)
        self.batch_size = batch_size
        self.prompt_messages = prompt_messages
        # TRL logs each reward function under its __name__ ("rewards/<name>/mean").
        self.__name__ = name or f"ensrm_{self.objective.replace(':', '_')}"

    def __repr__(self) -> str:
        return f"GRPORewardFunction({self.__name__}: objective={self.objective!r}, bundle={self.scorer.bundle_dir})"

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        # kwargs: completion_ids, trainer_state and dataset columns; the reward model needs none of them.
        for name, values in (("prompts", prompts), ("completions", completions)):
            if isinstance(values, str) or not isinstance(values, Sequence):
                raise InputError(f"{name} must be a list, got {type(values).__name__}")
        if len(prompts) != len(completions):
            raise InputError(f"got {len(prompts)} prompts but {len(completions)} completions; they must pair up")
        texts = [prompt_text(p, i, self.prompt_messages) for i, p in enumerate(prompts)]
        responses = [completion_text(c, i) for i, c in enumerate(completions)]
        scores = self.scorer.score_texts(texts, responses, batch_size=self.batch_size)
        return scores.objective(self.objective).tolist()


class TokenRewardFunction:
    """Token ids and mask in, one float32 reward per row out, the objective fixed once.

    For custom PPO loops that already hold the reward model's token ids: ``input_ids`` and
    ``attention_mask`` are ``[batch, seq]`` integer arrays tokenised with the *bundle's*
    tokenizer (``bundle/tokenizer.json``, not the policy's), padded on the bundle's
    ``spec.padding_side``. Rows longer than the bundle's ``max_length`` are refused.

    (Not run by the doctests: it needs a bundle.)

    >>> reward = scorer.as_token_reward_function("wco")                # doctest: +SKIP
    >>> reward(input_ids, attention_mask)                               # doctest: +SKIP
    array([ 0.12, -0.71], dtype=float32)
    """

    def __init__(self, scorer, objective: str = "uwo"):
        self.scorer = scorer
        self.objective = parse_objective(objective, scorer.num_heads)
        self.__name__ = f"ensrm_tokens_{self.objective.replace(':', '_')}"

    def __repr__(self) -> str:
        return f"TokenRewardFunction(objective={self.objective!r}, bundle={self.scorer.bundle_dir})"

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
        scores = self.scorer.score(input_ids, attention_mask, token_type_ids)
        return np.asarray(scores.objective(self.objective), dtype=np.float32)  # [batch]
