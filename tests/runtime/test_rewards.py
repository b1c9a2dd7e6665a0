"""Reward functions for training loops: the TRL GRPO call convention and the token-id entry."""

from __future__ import annotations

import numpy as np
import pytest

import ensrm
from ensrm.errors import InputError
from ensrm.runtime.rewards import GRPORewardFunction, TokenRewardFunction, completion_text, prompt_text

PROMPTS = ["How do I bake bread at home without a stand mixer?",
           "Explain the difference between a list and a tuple in Python."]
COMPLETIONS = ["Mix flour, water, salt and yeast, knead by hand, let it rise and bake it hot.",
               "A list is mutable and a tuple is not; both keep their order."]


@pytest.fixture(scope="module")
def scorer(bundles):
    return ensrm.Scorer(bundles("bert", num_labels=4))


class FakeTrainerState:
    """Stands in for transformers.TrainerState, which TRL passes as ``trainer_state``."""

    global_step = 7


def trl_call(reward_func, prompts, completions, completion_ids, **columns):
    """Call ``reward_func`` exactly the way TRL's GRPOTrainer does.

    TRL's documentation (docs/source/grpo_trainer.md, "Using a custom reward function") says the
    function receives ``prompts``, ``completions``, the completion token ids, ``trainer_state``
    and every dataset column but ``prompt`` as keyword arguments; the trainer
    (trl/trainer/grpo_trainer.py, ``_calculate_rewards``) does:

        reward_kwargs = {key: [example[key] for example in inputs] for key in keys}
        reward_kwargs["trainer_state"] = self.state
        output_reward_func = reward_func(
            prompts=prompts, completions=completions, completion_ids=completion_ids_list, **reward_kwargs
        )

    and logs it under ``reward_func.__name__``. (The documentation's examples spell the ids
    keyword ``completions_ids``; the trainer passes ``completion_ids``. Both land in ``**kwargs``.)
    """
    reward_kwargs = dict(columns)
    reward_kwargs["trainer_state"] = FakeTrainerState()
    name = reward_func.__name__  # TRL reads this for its reward logging keys
    assert isinstance(name, str) and name
    return reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)


def test_standard_format_trl_call(scorer):
    reward = scorer.as_reward_function(objective="uwo")
    out = trl_call(reward, PROMPTS, COMPLETIONS, completion_ids=[[101, 7], [101, 8, 9]],
                   ground_truth=["a", "b"], difficulty=[1, 2])
    assert isinstance(out, list) and all(type(x) is float for x in out)
    expected = scorer.score_texts(PROMPTS, COMPLETIONS).uwo
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert reward.__name__ == "ensrm_uwo"


def test_conversational_format_trl_call(scorer):
    reward = scorer.as_reward_function(objective="wco")
    prompts = [[{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": PROMPTS[0]}],
               [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! Ask away."},
                {"role": "user", "content": PROMPTS[1]}]]
    completions = [[{"role": "assistant", "content": COMPLETIONS[0]}],
                   [{"role": "assistant", "content": COMPLETIONS[1]}]]
    out = trl_call(reward, prompts, completions, completion_ids=[[1], [2]], solution=["x", "y"])
    standard = trl_call(reward, PROMPTS, COMPLETIONS, completion_ids=[[1], [2]])
    assert out == standard  # the last user message is the prompt the reward model sees
    assert reward.__name__ == "ensrm_wco"


def test_prompt_messages_all_joins_the_conversation(scorer):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}]
    reward = scorer.as_reward_function(objective="mean", prompt_messages="all")
    out = reward(prompts=[conversation], completions=[[{"role": "assistant", "content": COMPLETIONS[0]}]])
    direct = scorer.score_texts(["Be brief.\n\n" + PROMPTS[0]], [COMPLETIONS[0]]).mean
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)


def test_flattening_rules():
    assert prompt_text("plain") == "plain"
    assert prompt_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"}]) == "c"
    assert prompt_text([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "look"}]}]) == "look"
    assert completion_text([{"content": "no role counts as assistant"}]) == "no role counts as assistant"
    assert completion_text([{"role": "assistant", "content": "x"}, {"role": "tool", "content": "42"},
                            {"role": "assistant", "content": "y"}]) == "x\n\ny"
    with pytest.raises(InputError, match=r"prompts\[3\] has no 'user' message"):
        prompt_text([{"role": "system", "content": "s"}], 3)
    with pytest.raises(InputError, match=r"completions\[0\] has no assistant message"):
        completion_text([{"role": "tool", "content": "42"}])
    with pytest.raises(InputError, match=r"completions\[1\]\[0\]\['content'\]"):
        completion_text([{"role": "assistant", "content": 5}], 1)
    with pytest.raises(InputError, match="message dict"):
        prompt_text(["not a message"])


def test_reward_function_input_errors(scorer):
    reward = scorer.as_reward_function()
    with pytest.raises(InputError, match="pair up"):
        reward(prompts=PROMPTS, completions=COMPLETIONS[:1])
    with pytest.raises(InputError, match="must be a list"):
        reward(prompts="p", completions="c")
    with pytest.raises(ValueError, match="prompt_messages"):
        scorer.as_reward_function(prompt_messages="first")
    with pytest.raises(ValueError, match="unknown objective"):
        scorer.as_reward_function(objective="median")
    assert reward(prompts=[], completions=[]) == []


def test_head_objective_name():
    class Stub:
        num_heads = 4
    assert GRPORewardFunction(Stub(), "head:2").__name__ == "ensrm_head_2"
    assert GRPORewardFunction(Stub(), "uwo", name="rm").__name__ == "rm"


def test_token_reward_function(scorer):
    encoder = scorer.text_encoder
    encodings = encoder.encode(PROMPTS, COMPLETIONS)
    (rows, feeds), = list(encoder.batches(encodings, batch_size=8))
    reward = scorer.as_token_reward_function("wco")
    assert isinstance(reward, TokenRewardFunction)
    out = reward(feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids"))
    assert out.dtype == np.float32 and out.shape == (2,)
    expected = scorer.score_texts(PROMPTS, COMPLETIONS).min[rows]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="2-D"):
        reward(feeds["input_ids"][0], feeds["attention_mask"][0])
