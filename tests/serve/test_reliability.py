"""The app in-process under faults and operations: Basic auth, non-finite scores, big requests,
a model call that never returns, and swapping the bundle while serving."""

from __future__ import annotations

import base64
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ensrm
from tests.serve.conftest import PROMPTS, RESPONSES, HeldScorer, metric
from tests.serve.test_app import close, wait_for


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_key_is_accepted_as_the_password_of_basic_credentials(scorer, make_client, caplog):
    key = "basic-key-77"
    client = make_client(scorer, api_key=key)
    body = {"query": ["Hi there. Hello!"], "prompts": ["Hi there. "]}
    with caplog.at_level(logging.DEBUG):
        assert client.post("/get_reward", json=body, headers=basic("ensrm", key)).status_code == 200
        assert client.post("/get_reward", json=body, headers=basic("anyone", key)).status_code == 200
        assert client.post("/get_reward", json=body, headers=basic("ensrm", "wrong")).status_code == 401
        assert client.post("/get_reward", json=body, headers=basic(key, "")).status_code == 401  # key as the user
        assert client.post("/get_reward", json=body, headers={"Authorization": "Basic !!notbase64"}).status_code == 401
        no_colon = {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}
        assert client.post("/get_reward", json=body, headers=no_colon).status_code == 401
    client.headers.update(basic("ensrm", key))
    assert metric(client, "ensrm_rejects_total", reason="unauthorized") == 4
    assert key not in caplog.text and base64.b64encode(f"ensrm:{key}".encode()).decode() not in caplog.text


class NaNScorer(HeldScorer):
    """Scores like the real scorer, but the pair whose response is 'NaN please' gets a NaN head."""

    def score(self, input_ids, attention_mask, token_type_ids=None):
        scores = self.scorer.score(input_ids, attention_mask, token_type_ids)
        marker = self.scorer.text_encoder.tokenizer.encode("q", "NaN please").ids
        for row, ids in enumerate(np.asarray(input_ids)):
            if list(ids[:len(marker)]) == marker:
                scores.heads[row, 1] = np.nan
                scores.uwo[row] = scores.mean[row] = scores.std[row] = np.nan
        return scores


def test_a_non_finite_score_is_a_500_with_a_logged_id_never_a_null(scorer, make_client, caplog):
    client = make_client(NaNScorer(scorer))
    with caplog.at_level(logging.ERROR, logger="ensrm.serve"):
        for path, body in (("/get_reward", {"query": ["q fine", "qNaN please"], "prompts": ["q", "q"]}),
                           ("/v1/score", {"prompts": ["q", "q"], "responses": ["fine", "NaN please"]})):
            answer = client.post(path, json=body)
            assert answer.status_code == 500, answer.text
            error = answer.json()["error"]
            assert error["type"] == "non_finite_score" and "1 of 2 pairs" in error["message"]
            assert error["id"] in caplog.text
    assert "NaN please" not in caplog.text  # no texts in the log
    assert metric(client, "ensrm_rejects_total", reason="non_finite") == 2
    fine = client.post("/get_reward", json={"query": ["q fine"], "prompts": ["q"]})
    assert fine.status_code == 200 and np.isfinite(fine.json()["rewards"]).all()


def test_a_1024_query_rollout_batch_is_scored_with_the_defaults(scorer, make_client):
    """OpenRLHF 0.8.x posts the whole rollout batch at once; the defaults must take it."""
    client = make_client(scorer, max_wait_ms=0)
    prompts = [PROMPTS[i % 4] for i in range(1024)]
    responses = [f"{RESPONSES[i % 4]} ({i})" for i in range(1024)]
    payload = {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts, "labels": [""] * 1024}
    answer = client.post("/get_reward", json=payload)
    assert answer.status_code == 200, answer.text
    rewards = answer.json()["rewards"]
    assert len(rewards) == 1024
    close(rewards, scorer.score_texts(prompts, responses).uwo)
    info = client.get("/v1/info").json()["limits"]
    assert info["max_pairs_per_request"] == info["max_queue"] >= 1024
    # model calls hold at most the scorer's batch_size pairs: one meaning of batch size everywhere
    calls = metric(client, "ensrm_model_calls_total")
    assert calls >= 1024 / scorer.batch_size


class HangingScorer(HeldScorer):
    """The first model call after ``hang`` is set never returns (until ``release``); others run."""

    def __init__(self, scorer):
        super().__init__(scorer)
        self.hang = threading.Event()
        self.release = threading.Event()

    def score(self, input_ids, attention_mask, token_type_ids=None):
        if self.hang.is_set():
            self.hang.clear()
            self.entered.set()
            self.release.wait(60)
        return self.scorer.score(input_ids, attention_mask, token_type_ids)


def test_a_model_call_that_never_returns_is_a_504_and_others_are_served(scorer, make_client, caplog):
    hanging = HangingScorer(scorer)
    client = make_client(hanging, request_timeout_s=1.0, max_wait_ms=0)
    try:
        hanging.hang.set()
        with caplog.at_level(logging.ERROR, logger="ensrm.serve"), ThreadPoolExecutor(2) as pool:
            stuck = pool.submit(client.post, "/v1/score", json={"prompts": ["q"], "responses": ["hangs"]})
            assert hanging.entered.wait(30)
            answer = stuck.result(30)
            assert answer.status_code == 504, answer.text
            assert answer.json()["error"]["type"] == "timeout"
            assert answer.json()["error"]["id"] in caplog.text
            # the worker is stuck: not ready, so a load balancer stops sending; but it serves those that come
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200
            fine = client.post("/v1/score", json={"prompts": PROMPTS, "responses": RESPONSES})
            assert fine.status_code == 200
            close(fine.json()["score"], scorer.score_texts(PROMPTS, RESPONSES).uwo)
        assert metric(client, "ensrm_rejects_total", reason="timeout") == 1
    finally:
        hanging.release.set()
    wait_for(lambda: client.get("/readyz").status_code == 200)  # the stuck call came back


@pytest.fixture(scope="module")
def two_bundles(bundles, tmp_path_factory):
    """Two different bundles (heads seeded differently) in their own directories."""
    return bundles("bert", num_labels=4), bundles("bert", num_labels=4, seed=1)


def test_reload_switches_bundles_and_every_answer_names_its_bundle(two_bundles, make_client, tmp_path):
    first, second = two_bundles
    key = {"Authorization": "Bearer reload-key"}
    client = make_client(ensrm.Scorer(first, threads=1), api_key="reload-key")
    client.headers.update(key)
    body = {"prompts": PROMPTS, "responses": RESPONSES}
    before = client.post("/v1/score", json=body)
    info = client.get("/v1/info").json()
    assert before.headers["X-Ensrm-Bundle"] == info["fingerprint"] and info["bundle"] == str(first)
    assert client.post("/v1/admin/reload", json={"bundle": str(second)},
                       headers={"Authorization": "Bearer nope"}).status_code == 401
    answer = client.post("/v1/admin/reload", json={"bundle": str(second)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["previous"] == info["fingerprint"] != answer.json()["fingerprint"]
    after = client.post("/v1/score", json=body)
    assert after.headers["X-Ensrm-Bundle"] == answer.json()["fingerprint"]
    close(after.json()["score"], ensrm.Scorer(second, threads=1).score_texts(PROMPTS, RESPONSES).uwo)
    assert client.get("/v1/info").json()["fingerprint"] == answer.json()["fingerprint"]
    # A bundle that does not load leaves the old one serving, and says why.
    broken = tmp_path / "broken"
    shutil.copytree(first, broken)
    (broken / "ensemble.json").write_text("{not json")
    for target in (broken, tmp_path / "missing"):
        failed = client.post("/v1/admin/reload", json={"bundle": str(target)})
        assert failed.status_code == 422, failed.text
        assert str(target) in failed.json()["error"]["message"]
    still = client.post("/v1/score", json=body)
    assert still.status_code == 200 and still.headers["X-Ensrm-Bundle"] == answer.json()["fingerprint"]
    assert metric(client, "ensrm_reloads_total", result="ok") == 1
    assert metric(client, "ensrm_reloads_total", result="failed") == 1  # the missing path is refused before loading


def test_requests_in_flight_during_a_reload_finish_on_the_old_bundle(two_bundles, make_client):
    first, second = two_bundles
    held = HeldScorer(ensrm.Scorer(first, threads=1))
    client = make_client(held, max_wait_ms=0)  # no key: a loopback-only reload (TestClient is not loopback)
    assert client.post("/v1/admin/reload", json={}).status_code == 403
    service = client.app.state.service
    service.loader = lambda path: ensrm.Scorer(path, threads=1)
    old_fp = service.model.fingerprint
    held.gate.clear()
    held.entered.clear()
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(client.post, "/v1/score", json={"prompts": PROMPTS[:1], "responses": RESPONSES[:1]})
        assert held.entered.wait(30)
        queued = pool.submit(client.post, "/v1/score", json={"prompts": PROMPTS[1:], "responses": RESPONSES[1:]})
        wait_for(lambda: service.batcher.queued_pairs == 3)
        # the reload runs on the app's own event loop, as POST /v1/admin/reload or SIGHUP would run it
        reloading = pool.submit(client.portal.call, service.reload, str(second))
        wait_for(lambda: service.model.fingerprint != old_fp)  # switched while the old one still holds requests
        new = client.post("/v1/score", json={"prompts": PROMPTS, "responses": RESPONSES})
        held.gate.set()
        answers = [running.result(30), queued.result(30)]
        reloading.result(30)
    assert [a.headers["X-Ensrm-Bundle"] for a in answers] == [old_fp, old_fp]
    close(answers[0].json()["score"] + answers[1].json()["score"],
          held.scorer.score_texts(PROMPTS, RESPONSES).uwo)
    assert new.headers["X-Ensrm-Bundle"] == service.model.fingerprint != old_fp
    close(new.json()["score"], ensrm.Scorer(second, threads=1).score_texts(PROMPTS, RESPONSES).uwo)
