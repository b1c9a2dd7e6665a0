"""A real ``ensrm serve`` process driven by OpenRLHF's own client code, and swapped under load.

OpenRLHF 0.11.x's client is ``openrlhf/utils/agent.py`` (``SingleTurnAgentExecutor``), imported
unmodified; only the vLLM engine and the tokenizer are faked (a character tokenizer, so a
truncated prompt is easy to predict). Importing ``openrlhf.utils`` runs its ``__init__``, which
pulls in transformers, torch and sympy for functions the client does not use, so the module
file is imported with that ``__init__`` skipped. The 0.8.x client (``remote_rm_utils.py``,
``requests.post(url, json=...)``, the whole rollout batch in one POST) is not on the package
index any more; its request is sent with ``requests`` exactly as it builds it, and the answer is
consumed as its ``update_samples_with_rewards`` does.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import signal
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import ensrm
from tests.serve.conftest import PROMPTS, RESPONSES
from tests.serve.test_process import start_server

httpx = pytest.importorskip("httpx")
KEY = "client-key-9"


@pytest.fixture(scope="module")
def agent_module():
    """``openrlhf.utils.agent`` as installed, without running ``openrlhf/utils/__init__.py``."""
    pytest.importorskip("aiohttp", reason="OpenRLHF's client posts with aiohttp (pip install 'ensrm[test]')")
    spec = importlib.util.find_spec("openrlhf")
    if spec is None:
        pytest.skip("openrlhf is not installed (pip install 'ensrm[test]'; it is installed with --no-deps)")
    utils_dir = Path(spec.submodule_search_locations[0]) / "utils"
    if not (utils_dir / "agent.py").exists():
        pytest.skip(f"this openrlhf has no utils/agent.py (the 0.11.x client); found {sorted(utils_dir.iterdir())}")
    added = [name for name in ("openrlhf", "openrlhf.utils", "openrlhf.utils.logging_utils", "openrlhf.utils.agent")
             if name not in sys.modules]
    importlib.import_module("openrlhf")  # an empty __init__
    if "openrlhf.utils" not in sys.modules:
        package = types.ModuleType("openrlhf.utils")
        package.__path__ = [str(utils_dir)]
        sys.modules["openrlhf.utils"] = package
    yield importlib.import_module("openrlhf.utils.agent")
    for name in added:
        sys.modules.pop(name, None)


class CharTokenizer:
    """One token per character: what the client needs of a Hugging Face tokenizer."""

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        return {"input_ids": np.array([[ord(c) for c in text]], dtype=np.int64)}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


class FakeEngine:
    """vLLM's ``generate`` for the client: answers each prompt with its response from ``replies``."""

    def __init__(self, replies: dict[str, str]):
        self.replies = replies

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        prompt = "".join(map(chr, prompt_token_ids))
        reply = next(r for p, r in self.replies.items() if p.endswith(prompt))
        await asyncio.sleep(0)
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=[ord(c) for c in reply], text=reply,
                                                        finish_reason="stop", logprobs=None)])


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-clients")
    key_file = tmp / "key.txt"
    key_file.write_text(KEY)
    proc, url, stderr = start_server(bundles("bert", num_labels=4), tmp, "--api-key-file", str(key_file),
                                     headers={"Authorization": f"Bearer {KEY}"})
    yield url, stderr
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def with_credentials(url: str, key: str = KEY) -> str:
    return url.replace("http://", f"http://ensrm:{key}@") + "/get_reward"


@pytest.mark.parametrize("samples", [1, 64])
def test_openrlhf_011_client_gets_the_in_process_rewards_with_auth_in_the_url(agent_module, server, scorer,
                                                                              samples):
    url, stderr = server
    prompts = [f"{PROMPTS[i % 4]} (sample {i})" for i in range(samples)]
    replies = {p: f" {RESPONSES[i % 4]} [{i}]" for i, p in enumerate(prompts)}
    if samples > 1:  # one prompt the trainer truncates to its last 40 characters
        prompts[-1] = "Long context. " * 10 + prompts[-1]
        replies = {p: f" {RESPONSES[i % 4]} [{i}]" for i, p in enumerate(prompts)}
    executor = agent_module.SingleTurnAgentExecutor(with_credentials(url))
    params = SimpleNamespace(max_tokens=64, logprobs=None)
    max_length = 64 + 96  # prompts longer than 96 characters keep their last 96

    async def run():
        return await asyncio.gather(*(executor.execute(p, "", params, max_length, CharTokenizer(),
                                                       FakeEngine(replies)) for p in prompts))

    outputs = asyncio.run(run())
    kept = [p[-96:] for p in prompts]
    expected = scorer.score_texts(kept, [replies[p] for p in prompts]).uwo
    rewards = [out["reward"] for out in outputs]
    assert all(isinstance(r, list) and len(r) == 1 for r in rewards), rewards  # None = the call failed
    np.testing.assert_allclose([r[0] for r in rewards], expected, rtol=0, atol=1e-5)
    assert [out["scores"] for out in outputs] == rewards and all(out["extra_logs"] == {} for out in outputs)
    # A wrong key in the URL is refused (the client would retry five times, then leave the reward None).
    answer = httpx.post(with_credentials(url, "wrong"), json={"query": ["a"], "prompts": [""]}, timeout=30)
    assert answer.status_code == 401
    stderr.seek(0)
    assert KEY not in stderr.read()


def test_openrlhf_08_rollout_batch_of_1024_queries_in_one_post(server, scorer):
    """0.8.x: ``requests.post(url, json={"query", "prompts", "labels"})`` with the whole batch; it reads
    ``rewards`` and ``scores`` with ``torch.as_tensor`` and ``torch.cat``s every ``extra_logs`` value."""
    requests = pytest.importorskip("requests")
    torch = pytest.importorskip("torch")
    url, _ = server
    prompts = [f"{PROMPTS[i % 4]} #{i}" for i in range(1024)]
    responses = [f" {RESPONSES[i % 4]}" for i in range(1024)]
    data = {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts, "labels": [""] * 1024}
    response = requests.post(url=with_credentials(url), json=data, headers={"Content-Type": "application/json"},
                             timeout=180)
    response.raise_for_status()
    info = response.json()
    rewards = torch.cat([torch.as_tensor(info["rewards"])], dim=0)
    scores = torch.cat([torch.as_tensor(info["scores"])], dim=0)
    assert "extra_logs" not in info  # torch.cat([list]) would raise in update_samples_with_rewards
    assert rewards.dtype == torch.float32 and rewards.shape == (1024,) and torch.equal(rewards, scores)
    np.testing.assert_allclose(rewards.numpy(), scorer.score_texts(prompts, responses).uwo, rtol=0, atol=1e-5)


def test_bundle_swaps_under_load_drop_nothing_and_each_answer_matches_its_bundle(bundles, tmp_path):
    """16 loopback clients for ~12 s while the bundle is swapped to another one and back (twice by
    POST /v1/admin/reload, once by SIGHUP): every request answered 200, by the bundle its header names."""
    first, second = bundles("bert", num_labels=4), bundles("bert", num_labels=4, seed=1)
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    proc, url, stderr = start_server(first, tmp_path, "--api-key-file", str(key_file), headers=auth)
    pool = [(PROMPTS[i % 4], f"{RESPONSES[i % 4]} ({i})") for i in range(16)]
    reference = {}
    for bundle in (first, second):
        local = ensrm.Scorer(bundle, threads=1)
        fingerprint = httpx.get(f"{url}/v1/info", headers=auth, timeout=30).json()["fingerprint"] \
            if bundle == first else None
        reference[bundle] = (fingerprint, np.array([local.score_texts([p], [r]).uwo[0] for p, r in pool]))
    stop = threading.Event()
    results: list[tuple[int, str | None, int, float | None]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=60) as session:
            i = c
            while not stop.is_set():
                p, r = pool[i % len(pool)]
                try:
                    answer = session.post("/v1/score", json={"prompts": [p], "responses": [r]})
                    row = (answer.status_code, answer.headers.get("X-Ensrm-Bundle"), i % len(pool),
                           answer.json()["score"][0] if answer.status_code == 200 else None)
                except httpx.TransportError as exc:
                    row = (-1, type(exc).__name__, i % len(pool), None)
                with lock:
                    results.append(row)
                i += 16

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(16)]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
        swapped = httpx.post(f"{url}/v1/admin/reload", json={"bundle": str(second)}, headers=auth, timeout=120)
        assert swapped.status_code == 200, swapped.text
        reference[second] = (swapped.json()["fingerprint"], reference[second][1])
        time.sleep(3)
        back = httpx.post(f"{url}/v1/admin/reload", json={"bundle": str(first)}, headers=auth, timeout=120)
        assert back.status_code == 200 and back.json()["fingerprint"] == reference[first][0]
        time.sleep(2)
        proc.send_signal(signal.SIGHUP)  # the same path again
        deadline = time.monotonic() + 60
        while "serving bundle" not in (stderr.seek(0) or stderr.read()).split("SIGHUP", 1)[-1]:
            assert time.monotonic() < deadline, "the SIGHUP reload never finished"
            time.sleep(0.2)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(60)
    assert exit_code == 0
    assert results and all(status == 200 for status, *_ in results), \
        {str(s): sum(1 for r in results if r[0] == s) for s in {r[0] for r in results}}
    by_fingerprint = {fp: values for fp, values in reference.values()}
    seen = {fp for _, fp, _, _ in results}
    assert seen == set(by_fingerprint), (seen, set(by_fingerprint))  # both bundles answered
    got = np.array([score for *_, score in results])
    want = np.array([by_fingerprint[fp][row] for _, fp, row, _ in results])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not np.allclose(reference[first][1], reference[second][1], atol=1e-3)  # the swap is visible
