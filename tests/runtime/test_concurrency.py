"""One Scorer shared by 8 threads x 50 calls gives exactly the serial results."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ensrm
from tests.models import CORPUS

SENTENCES = list(dict.fromkeys(CORPUS))
THREADS, CALLS = 8, 50


def call_inputs(i: int):
    """Call i scores a different, varied-length slice of pairs (1 to 6 pairs)."""
    pairs = list(itertools.product(SENTENCES, SENTENCES))
    n = 1 + i % 6
    chosen = [pairs[(7 * i + 5 * j) % len(pairs)] for j in range(n)]
    return [p for p, _ in chosen], [r for _, r in chosen]


@pytest.fixture(scope="module", params=[None, 1], ids=["default-threads", "threads=1"])
def scorer(bundles, request):
    return ensrm.Scorer(bundles("bert", num_labels=4), threads=request.param)


@pytest.mark.parametrize("api", ["score_texts", "score", "reward_function"])
def test_eight_threads_match_serial(scorer, api):
    encoder = scorer.text_encoder
    reward = scorer.as_reward_function("uwo")

    def one(i):
        prompts, responses = call_inputs(i)
        if api == "score_texts":
            s = scorer.score_texts(prompts, responses, batch_size=4)
            return np.concatenate([s.heads, s.mean[:, None], s.std[:, None], s.min[:, None], s.uwo[:, None]], 1)
        if api == "score":
            (_, feeds), = list(encoder.batches(encoder.encode(prompts, responses), batch_size=8))
            return scorer.score(**feeds).heads
        return np.array(reward(prompts=prompts, completions=responses, trainer_state=None), dtype=np.float32)

    total = THREADS * CALLS
    serial = [one(i) for i in range(total)]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        threaded = list(pool.map(one, range(total)))
    for i, (a, b) in enumerate(zip(serial, threaded)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i} differs between serial and 8 threads")
