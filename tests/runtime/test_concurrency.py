"""Threads and processes sharing a bundle give serial results; repeated scoring does not grow memory."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import ensrm
from tests.models import CORPUS

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [f"Question {i}: how do I {'bake bread ' * (i % 5)}at home?" for i in range(24)]
RESPONSES = [f"Answer {i}: {'knead, rise and bake. ' * (1 + i % 7)}" for i in range(24)]
# Soak: resident memory may grow by at most this much between the end of warm-up and the end.
RSS_GROWTH_BOUND_MB = 64
SOAK_ROUNDS = 150  # rounds of 8 tasks: 1200 scoring calls across 4 threads


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def token_batches(scorer, count: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        rows, seq = int(rng.integers(1, 9)), int(rng.integers(1, 40))
        ids = rng.integers(5, scorer.spec.vocab_size, size=(rows, seq))
        mask = np.ones_like(ids)
        for r in range(rows):
            mask[r, int(rng.integers(1, seq + 1)):] = 0
        out.append((ids, mask))
    return out


def same(a, b):
    for name in ("heads", "mean", "std", "min", "uwo"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-6, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_shared_scorer_under_8_threads_matches_serial(bundles, kind):
    from ensrm import Scorer

    scorer = Scorer(bundles(kind), verify="size", threads=1)
    batches = token_batches(scorer)
    tasks = [("ids", i) for i in range(len(batches))] + [("text", t) for t in (True, False)] * 4

    def run(task):
        what, arg = task
        if what == "ids":
            return scorer.score(*batches[arg])
        # With and without truncation at once: the encoder must not share truncation state.
        return scorer.score_texts(PROMPTS, RESPONSES, batch_size=5, truncation=arg)

    serial = [run(task) for task in tasks]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            for result, expected in zip(pool.map(run, tasks), serial):
                same(result, expected)


WORKER = """
import json, sys
import numpy as np
from ensrm import Scorer
bundle, out = sys.argv[1], sys.argv[2]
scorer = Scorer(bundle, threads=1)
data = json.load(open(sys.argv[3]))
s = scorer.score_texts(data["prompts"], data["responses"], batch_size=7)
np.savez(out, heads=s.heads, mean=s.mean, std=s.std, min=s.min, uwo=s.uwo)
"""


def test_processes_scoring_one_bundle_match_serial(bundles, tmp_path):
    from ensrm import Scorer

    bundle = bundles("gpt2")
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"prompts": PROMPTS, "responses": RESPONSES}))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(bundle), str(tmp_path / f"out{i}.npz"), str(inputs)],
                              env=env, stderr=subprocess.PIPE) for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    expected = Scorer(bundle, threads=1).score_texts(PROMPTS, RESPONSES, batch_size=7)
    for i in range(3):
        got = np.load(tmp_path / f"out{i}.npz")
        for name in ("heads", "mean", "std", "min", "uwo"):
            np.testing.assert_array_equal(got[name], getattr(expected, name), err_msg=f"process {i}: {name}")


def test_soak_memory_stays_bounded(bundles):
    """1200 scoring calls from 4 threads; RSS may not grow more than RSS_GROWTH_BOUND_MB after warm-up."""
    from ensrm import Scorer

    scorer = Scorer(bundles("gpt2"), verify="size", threads=1)
    batches = token_batches(scorer, count=6, seed=3)
    expected = [scorer.score(ids, mask) for ids, mask in batches]
    expected_text = scorer.score_texts(PROMPTS, RESPONSES)

    def task(i):
        if i % 4 == 3:
            same(scorer.score_texts(PROMPTS, RESPONSES), expected_text)
        else:
            j = i % len(batches)
            same(scorer.score(*batches[j]), expected[j])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(task, range(8 * 10)))  # warm-up: arenas, session caches, thread stacks
        start = rss_mb()
        for _ in range(SOAK_ROUNDS):
            list(pool.map(task, range(8)))
        growth = rss_mb() - start
    print(f"soak: {SOAK_ROUNDS * 8} calls, RSS {start:.0f} MB -> {start + growth:.0f} MB ({growth:+.1f} MB)")
    assert growth < RSS_GROWTH_BOUND_MB, f"RSS grew by {growth:.1f} MB over {SOAK_ROUNDS * 8} calls"

SENTENCES = list(dict.fromkeys(CORPUS))
THREADS, CALLS = 8, 50


def call_inputs(i: int):
    """Call i scores a different, varied-length slice of pairs (1 to 6 pairs)."""
    pairs = list(itertools.product(SENTENCES, SENTENCES))
    n = 1 + i % 6
    chosen = [pairs[(7 * i + 5 * j) % len(pairs)] for j in range(n)]
    return [p for p, _ in chosen], [r for _, r in chosen]


@pytest.fixture(scope="module", params=[None, 1], ids=["default-threads", "threads=1"])
def shared_scorer(bundles, request):
    return ensrm.Scorer(bundles("bert", num_labels=4), threads=request.param)


@pytest.mark.parametrize("api", ["score_texts", "score", "reward_function"])
def test_eight_threads_match_serial(shared_scorer, api):
    scorer = shared_scorer
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
