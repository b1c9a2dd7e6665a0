"""The HTTP app in-process: every endpoint, the error answers, auth, limits and the batcher."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ensrm
from ensrm.runtime.filter import ResponseFilter
from tests.serve.conftest import PROMPTS, RESPONSES, metric


def close(values, expected):
    np.testing.assert_allclose(np.asarray(values, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=0, atol=1e-6)


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- endpoints -----------------------------------------------------------------------------------


def test_score_equals_the_in_process_scorer(scorer, make_client):
    client = make_client(scorer)
    answer = client.post("/v1/score", json={"prompts": PROMPTS, "responses": RESPONSES})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = scorer.score_texts(PROMPTS, RESPONSES)
    close(body["heads"], expected.heads)
    for name in ("mean", "std", "min", "uwo"):
        close(body[name], getattr(expected, name))
    assert body["objective"] == "uwo"
    close(body["score"], expected.uwo)
    head = client.post("/v1/score", json={"prompts": PROMPTS, "responses": RESPONSES, "objective": "head:2"}).json()
    assert head["objective"] == "head:2"
    close(head["score"], expected.heads[:, 2])


def test_server_objective_is_the_default(scorer, make_client):
    body = make_client(scorer, objective="min").post("/v1/score", json={"prompts": PROMPTS[:1],
                                                                        "responses": RESPONSES[:1]}).json()
    assert body["objective"] == "wco"
    assert body["score"] == body["min"]


def test_empty_request_scores_nothing(scorer, make_client):
    body = make_client(scorer).post("/v1/score", json={"prompts": [], "responses": []}).json()
    assert body["heads"] == [] and body["score"] == []


def test_filter_answers_as_response_filter_decides(scorer, make_client):
    expected_scores = scorer.score_texts(PROMPTS, RESPONSES)
    flt = ResponseFilter(scorer, objective="wco", min_score=float(np.median(expected_scores.min)),
                         max_std=float(np.max(expected_scores.std)))
    answer = make_client(scorer, response_filter=flt).post("/v1/filter",
                                                           json={"prompts": PROMPTS, "responses": RESPONSES})
    assert answer.status_code == 200, answer.text
    got = answer.json()["decisions"]
    want = [d.to_dict() for d in flt.decide(PROMPTS, RESPONSES)]
    assert [(d["accept"], d["reason"]) for d in got] == [(d["accept"], d["reason"]) for d in want]
    assert {"accept", "reason", "score", "std", "objective", "min_score", "max_std"} == set(got[0])
    close([d["score"] for d in got], [d["score"] for d in want])
    assert {d["reason"] for d in got} >= {"ok", "score_too_low"}


def test_filter_without_a_filter_is_404(scorer, make_client):
    answer = make_client(scorer).post("/v1/filter", json={"prompts": PROMPTS, "responses": RESPONSES})
    assert answer.status_code == 404
    assert "--filter" in answer.json()["error"]["message"]


def test_best_of_n_matches_the_library(scorer, make_client):
    client = make_client(scorer)
    for objective in ("uwo", "wco", "head:1"):
        body = client.post("/v1/best_of_n", json={"prompt": PROMPTS[0], "candidates": RESPONSES,
                                                  "objective": objective}).json()
        expected = ensrm.best_of_n(scorer, PROMPTS[0], RESPONSES, objective=objective)
        assert body["index"] == expected.index
        close(body["values"], expected.values)


def test_best_of_n_ties_go_to_the_lowest_index(scorer, make_client):
    body = make_client(scorer).post("/v1/best_of_n", json={"prompt": "Q", "candidates": ["same", "other", "same"]})
    values = body.json()["values"]
    assert values[0] == values[2]
    assert body.json()["index"] == (0 if values[0] >= values[1] else 1)


def test_get_reward_takes_openrlhf_requests(scorer, make_client):
    """The payload OpenRLHF's SingleTurnAgentExecutor._fetch_rewards_via_http posts with aiohttp's
    ``json=``: {"query": prompt + response texts, "prompts": [...], "labels": [...]}; it reads "rewards"."""
    client = make_client(scorer)
    queries = [p + r for p, r in zip(PROMPTS, RESPONSES)]
    payload = {"query": queries, "prompts": PROMPTS, "labels": [""] * len(PROMPTS)}
    answer = client.post("/get_reward", content=json.dumps(payload), headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = scorer.score_texts(PROMPTS, RESPONSES)
    close(body["rewards"], expected.uwo)
    assert body["scores"] == body["rewards"]
    # flat floats only: OpenRLHF 0.8.x torch.cat's extra_logs, which fails on anything JSON carries
    assert set(body) == {"rewards", "scores"} and all(type(x) is float for x in body["rewards"])
    assert answer.headers["X-Ensrm-Bundle"] == client.get("/v1/info").json()["fingerprint"]
    # Older clients send only "query": the whole text is scored as the response to an empty prompt.
    old = client.post("/get_reward", json={"query": queries}).json()
    close(old["rewards"], scorer.score_texts([""] * len(queries), queries).uwo)
    # A prompt that is nowhere in its query is not cut out of it, and is counted.
    odd = client.post("/get_reward", json={"query": queries[:1], "prompts": ["not a prefix"]}).json()
    close(odd["rewards"], scorer.score_texts([""], queries[:1]).uwo)
    assert metric(client, "ensrm_unsplit_queries_total") == 1


def test_get_reward_finds_the_response_after_a_truncated_prompt(scorer, make_client):
    """The trainer kept the prompt's last tokens: the query starts inside the prompt (or after a BOS text)."""
    client = make_client(scorer)
    prompt = "You are a careful assistant. Context: " + "the river rises in spring. " * 6 + "Question: why?"
    response = " Snow melts in the mountains upstream."
    kept = prompt[len(prompt) // 2:]  # what survived a left truncation
    payload = {"query": [kept + response, "<s>" + prompt + response], "prompts": [prompt, prompt]}
    body = client.post("/get_reward", json=payload).json()
    close(body["rewards"], scorer.score_texts([kept, "<s>" + prompt], [response, response]).uwo)
    assert metric(client, "ensrm_unsplit_queries_total") == 0


def test_split_query_rule():
    from ensrm.serve.queries import split_query

    prompt = "System: be brief. User: " + "tell me about tides. " * 5 + "Assistant:"
    assert split_query(prompt + " Moon.", prompt) == (prompt, " Moon.")
    for cut in (1, 10, len(prompt) - 16):  # every left truncation down to MIN_SUFFIX characters
        assert split_query(prompt[cut:] + " Moon.", prompt) == (prompt[cut:], " Moon.")
    assert split_query(prompt[-5:] + " Moon.", prompt) is None  # too short to tell from chance
    assert split_query("<|begin_of_text|>" + prompt + " Moon.", prompt)[1] == " Moon."
    assert split_query("Moon.", "") is None


def test_health_ready_info_and_metrics(scorer, make_client):
    client = make_client(scorer)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/info").json()
    spec = scorer.spec
    assert info["num_heads"] == spec.num_heads and info["uwo_lambda"] == spec.uwo_lambda
    assert info["precision"] == "fp32" and info["source_fingerprint"] == spec.source_fingerprint
    assert info["normalization"]["calibrated"] is False
    client.post("/v1/score", json={"prompts": PROMPTS, "responses": RESPONSES})
    assert metric(client, "ensrm_pairs_total", path="/v1/score") == len(PROMPTS)
    assert metric(client, "ensrm_requests_total", path="/v1/score", status="200") == 1
    assert metric(client, "ensrm_request_latency_seconds_count", path="/v1/score") == 1
    assert metric(client, "ensrm_queue_depth_pairs") == 0
    assert metric(client, "ensrm_rejects_total", reason="queue_full") == 0


def test_readyz_is_503_until_the_warm_up_is_scored(held, make_client):
    from starlette.testclient import TestClient

    from ensrm.serve import create_app

    app = create_app(held)
    held.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(lambda: TestClient(app).__enter__())
        held.entered.wait(30)
        service = app.state.service
        assert service.ready is False
        held.gate.set()
        client = starting.result(timeout=30)
    assert client.get("/readyz").status_code == 200
    client.__exit__(None, None, None)


def test_access_log_has_one_line_per_request_and_no_texts(scorer, make_client, caplog):
    client = make_client(scorer)
    with caplog.at_level(logging.INFO, logger="ensrm.serve.access"):
        client.post("/v1/score", json={"prompts": ["secret prompt"], "responses": ["secret response"]})
        client.post("/v1/score", json={"prompts": "x"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ensrm.serve.access"]
    assert [(line["path"], line["status"], line["pairs"]) for line in lines] == [("/v1/score", 200, 1),
                                                                                 ("/v1/score", 422, 0)]
    assert all(line["method"] == "POST" and line["ms"] >= 0 for line in lines)
    assert "secret" not in caplog.text


# -- bad input -----------------------------------------------------------------------------------

BAD = [
    ("/v1/score", b"{not json", 400, "body"),
    ("/v1/score", b"[1, 2]", 400, "body"),
    ("/v1/score", {"responses": ["a"]}, 422, "prompts"),
    ("/v1/score", {"prompts": ["a"]}, 422, "responses"),
    ("/v1/score", {"prompts": "a", "responses": ["a"]}, 422, "prompts"),
    ("/v1/score", {"prompts": ["a", 3], "responses": ["a", "b"]}, 422, "prompts[1]"),
    ("/v1/score", {"prompts": ["a", "b"], "responses": ["a"]}, 422, "responses"),
    ("/v1/score", {"prompts": ["a"], "responses": ["a"], "objective": "best"}, 422, "objective"),
    ("/v1/score", {"prompts": ["a"], "responses": ["a"], "objective": "head:99"}, 422, "objective"),
    ("/v1/score", {"prompts": ["a"], "responses": ["half an emoji \ud83d"]}, 422, "responses[0]"),
    ("/v1/best_of_n", {"prompt": ["a"], "candidates": ["a"]}, 422, "prompt"),
    ("/v1/best_of_n", {"prompt": "a", "candidates": []}, 422, "candidates"),
    ("/v1/best_of_n", {"prompt": "a"}, 422, "candidates"),
    ("/get_reward", {"prompts": ["a"]}, 422, "query"),
    ("/get_reward", {"query": ["ab"], "prompts": ["a", "b"]}, 422, "prompts"),
    ("/get_reward", {"query": [None]}, 422, "query[0]"),
]


@pytest.mark.parametrize("path,body,status,field", BAD, ids=[f"{p}-{f}-{i}" for i, (p, _, _, f) in enumerate(BAD)])
def test_bad_input_names_the_field(scorer, make_client, path, body, status, field):
    client = make_client(scorer)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == field
    assert error["message"]
    assert metric(client, "ensrm_rejects_total", reason="bad_input") == 1
    # the server goes on serving
    assert client.post("/v1/score", json={"prompts": ["a"], "responses": ["b"]}).status_code == 200


class _PoisonEncoder:
    """The bundle's encoder, except that a batch holding the response 'poison' raises InputError,
    as a tokenizer does on a text it cannot take (the request checks catch the known cases first)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, prompts, responses, truncation=True):
        if "poison" in responses:
            i = responses.index("poison")
            raise ensrm.errors.InputError(f"responses[{i}] cannot be tokenised", field=f"responses[{i}]")
        return self.encoder.encode(prompts, responses, truncation=truncation)


def test_a_bad_request_batched_with_good_ones_fails_alone(held, make_client):
    held.text_encoder = _PoisonEncoder(held.scorer.text_encoder)
    client = make_client(held, max_wait_ms=0)
    held.gate.clear()
    held.entered.clear()
    bodies = [{"prompts": ["hold"], "responses": ["the worker"]}] + [
        {"prompts": ["q"], "responses": [text]} for text in ("fine", "poison", "also fine")]
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(client.post, "/v1/score", json=bodies[0])
        held.entered.wait(30)
        rest = [pool.submit(client.post, "/v1/score", content=json.dumps(b).encode()) for b in bodies[1:]]
        service = client.app.state.service
        wait_for(lambda: service.batcher.queued_pairs == 3)
        held.gate.set()
        answers = [first.result(30)] + [f.result(30) for f in rest]
    assert [a.status_code for a in answers] == [200, 200, 422, 200]
    assert answers[2].json()["error"]["field"] == "responses[0]"  # its own index, not the batch's
    # text that is not valid Unicode is refused before it is queued
    bad = client.post("/v1/score", content=json.dumps({"prompts": ["q"], "responses": ["bad \ud800 text"]}).encode())
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "responses[0]"


@pytest.mark.parametrize("concurrency", [1, 2])
def test_batches_run_side_by_side_up_to_the_scorers_concurrency(held, make_client, concurrency, scorer):
    held.concurrency = concurrency  # OpenVINO's streams with hint="throughput"
    client = make_client(held, max_wait_ms=0, max_batch=1)  # each request a batch of its own
    held.gate.clear()
    held.entered.clear()
    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(client.post, "/v1/score", json={"prompts": [PROMPTS[i]], "responses": [RESPONSES[i]]})
                   for i in range(3)]
        service = client.app.state.service
        # as many batches reach the model as it has streams; the rest wait in the queue
        wait_for(lambda: held.inside == concurrency and service.batcher.queued_pairs == 3 - concurrency)
        time.sleep(0.2)
        assert held.inside == concurrency and service.batcher.queued_pairs == 3 - concurrency
        held.gate.set()
        answers = [a.result(30) for a in answers]
    assert [a.status_code for a in answers] == [200] * 3
    expected = scorer.score_texts(PROMPTS[:3], RESPONSES[:3]).heads  # [3, K]
    np.testing.assert_allclose([a.json()["heads"][0] for a in answers], expected, atol=1e-5)
    assert metric(client, "ensrm_model_calls_total") == len(held.calls) - 1  # the warm-up is not a batch


# -- limits, auth, overload, model errors --------------------------------------------------------


def test_body_over_the_limit_is_413_by_header_and_by_stream(scorer, make_client):
    client = make_client(scorer, max_body_bytes=1024)
    big = json.dumps({"prompts": ["x" * 2000], "responses": ["y"]}).encode()
    answer = client.post("/v1/score", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["field"] == "body"

    def chunks():  # no Content-Length: sent chunked, so only the streamed size can tell
        for start in range(0, len(big), 256):
            yield big[start:start + 256]

    answer = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert "more than" in answer.json()["error"]["message"]
    assert metric(client, "ensrm_rejects_total", reason="body_too_large") == 2
    small = client.post("/v1/score", content=json.dumps({"prompts": ["x"], "responses": ["y"]}).encode())
    assert small.status_code == 200


def test_too_many_pairs_is_413(scorer, make_client):
    client = make_client(scorer, max_pairs_per_request=3)
    answer = client.post("/v1/score", json={"prompts": ["a"] * 4, "responses": ["b"] * 4})
    assert answer.status_code == 413
    assert answer.json()["error"]["expected"] == "at most 3 pairs"
    answer = client.post("/v1/best_of_n", json={"prompt": "a", "candidates": ["b"] * 4})
    assert answer.status_code == 413
    assert metric(client, "ensrm_rejects_total", reason="too_many_pairs") == 2


def test_api_key_guards_everything_but_healthz(scorer, make_client, caplog):
    key = "s3cret-key-123"
    client = make_client(scorer, api_key=key)
    body = {"prompts": ["a"], "responses": ["b"]}
    with caplog.at_level(logging.DEBUG):
        assert client.get("/healthz").status_code == 200
        for path in ("/readyz", "/metrics", "/v1/info"):
            assert client.get(path).status_code == 401
        assert client.post("/v1/score", json=body).status_code == 401
        wrong = client.post("/v1/score", json=body, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert client.post("/v1/score", json=body, headers={"Authorization": key}).status_code == 401
        good = client.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key}"})
        assert good.status_code == 200
    client.headers["Authorization"] = f"Bearer {key}"
    assert metric(client, "ensrm_rejects_total", reason="unauthorized") == 6
    assert key not in caplog.text


def test_full_queue_is_503_with_retry_after(held, make_client):
    client = make_client(held, max_queue=2, max_pairs_per_request=2, max_wait_ms=0)
    held.gate.clear()
    held.entered.clear()
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(client.post, "/v1/score", json={"prompts": ["a"] * 2, "responses": ["b"] * 2})
        held.entered.wait(30)  # in the model: out of the queue
        queued = pool.submit(client.post, "/v1/score", json={"prompts": ["a"] * 2, "responses": ["b"] * 2})
        service = client.app.state.service
        wait_for(lambda: service.batcher.queued_pairs == 2)
        refused = client.post("/v1/score", json={"prompts": ["a"], "responses": ["b"]})
        held.gate.set()
        assert running.result(30).status_code == 200 and queued.result(30).status_code == 200
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert metric(client, "ensrm_rejects_total", reason="queue_full") == 1
    assert client.post("/v1/score", json={"prompts": ["a"], "responses": ["b"]}).status_code == 200


def test_model_error_is_500_with_a_logged_id_and_the_server_goes_on(held, make_client, caplog):
    client = make_client(held)
    held.fail = True
    with caplog.at_level(logging.ERROR, logger="ensrm.serve"):
        answer = client.post("/v1/score", json={"prompts": ["q"], "responses": ["boom"]})
    held.fail = False
    assert answer.status_code == 500
    error_id = answer.json()["error"]["id"]
    assert len(error_id) == 12 and error_id in caplog.text
    assert "simulated onnxruntime failure" in caplog.text
    assert client.post("/v1/score", json={"prompts": ["q"], "responses": ["fine"]}).status_code == 200
    assert metric(client, "ensrm_rejects_total", reason="model_error") == 1


# -- dynamic batching ----------------------------------------------------------------------------


def test_concurrent_requests_are_gathered_into_one_batch(held, make_client):
    """While the worker is held on one request, six more queue; released, they run as one batch."""
    client = make_client(held, max_batch=64, max_wait_ms=0)
    held.gate.clear()
    held.entered.clear()
    prompts = [f"question {i}" for i in range(7)]
    responses = [f"answer number {i}" for i in range(7)]  # one length: one model call
    with ThreadPoolExecutor(7) as pool:
        first = pool.submit(client.post, "/v1/score", json={"prompts": prompts[:1], "responses": responses[:1]})
        held.entered.wait(30)
        rest = [pool.submit(client.post, "/v1/score", json={"prompts": [p], "responses": [r]})
                for p, r in zip(prompts[1:], responses[1:])]
        service = client.app.state.service
        wait_for(lambda: service.batcher.queued_pairs == 6)
        assert metric(client, "ensrm_queue_depth_pairs") == 6
        held.gate.set()
        answers = [first.result(30)] + [f.result(30) for f in rest]
    assert held.calls[-2:] == [1, 6]
    assert metric(client, "ensrm_batch_size_pairs_count") == 2
    assert metric(client, "ensrm_batch_size_pairs_sum") == 7
    assert metric(client, "ensrm_batch_size_pairs_bucket", le="4.0") == 1  # the held one
    assert metric(client, "ensrm_batch_size_pairs_bucket", le="8.0") == 2  # the gathered six
    assert metric(client, "ensrm_model_calls_total") == 2
    # each answer is its own pair's score, in its own request
    for answer, p, r in zip(answers, prompts, responses):
        close(answer.json()["score"], held.scorer.score_texts([p], [r]).uwo)


def test_batches_hold_at_most_max_batch_pairs(held, make_client):
    client = make_client(held, max_batch=4, max_wait_ms=0)
    held.gate.clear()
    held.entered.clear()
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(client.post, "/v1/score", json={"prompts": ["a"], "responses": ["b"]})
        held.entered.wait(30)
        rest = [pool.submit(client.post, "/v1/score", json={"prompts": ["a"] * 3, "responses": [f"b{i}"] * 3})
                for i in range(3)]
        service = client.app.state.service
        wait_for(lambda: service.batcher.queued_pairs == 9)
        held.gate.set()
        assert all(f.result(30).status_code == 200 for f in [first, *rest])
    # whole requests only: 3 + 3 would exceed 4, so each 3-pair request is its own batch
    assert held.calls[-4:] == [1, 3, 3, 3]
    big = client.post("/v1/score", json={"prompts": ["a"] * 10, "responses": ["b"] * 10})
    assert big.status_code == 200 and len(big.json()["score"]) == 10


def test_a_gathered_batch_of_mixed_lengths_runs_in_length_groups(held, make_client):
    client = make_client(held, max_batch=64, max_wait_ms=0)
    held.gate.clear()
    held.entered.clear()
    responses = ["ok", "fine thanks " * 30, "sure", "a much longer answer " * 25, "yes", "no"]
    with ThreadPoolExecutor(len(responses) + 1) as pool:
        first = pool.submit(client.post, "/v1/score", json={"prompts": ["q"], "responses": ["hold"]})
        held.entered.wait(30)
        rest = [pool.submit(client.post, "/v1/score", json={"prompts": ["q"], "responses": [r]}) for r in responses]
        service = client.app.state.service
        wait_for(lambda: service.batcher.queued_pairs == len(responses))
        held.gate.set()
        answers = [first.result(30)] + [f.result(30) for f in rest]
    assert metric(client, "ensrm_batch_size_pairs_bucket", le="8.0") == 2  # one gathered batch of six ...
    assert sorted(held.calls[-2:]) == [2, 4]  # ... run as the four short and the two long pairs
    for answer, r in zip(answers[1:], responses):
        close(answer.json()["heads"], held.scorer.score_texts(["q"], [r]).heads)


def test_length_groups_cover_every_pair_once_within_the_limits():
    from ensrm.serve.batcher import length_groups

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=500)
    groups = length_groups(lengths, max_batch=16)
    assert sorted(np.concatenate(groups).tolist()) == list(range(500))
    for group in groups:
        assert len(group) <= 16
        padded = len(group) * lengths[group].max()
        assert len(group) == 1 or padded <= 1.25 * lengths[group].sum()
    assert [g.tolist() for g in length_groups(np.array([7, 7, 7, 7, 7]), max_batch=2)] == [[0, 1], [2, 3], [4]]


def test_the_gathering_wait_is_skipped_for_a_lone_client(held, make_client):
    client = make_client(held, max_wait_ms=0)
    batcher = client.app.state.service.batcher
    assert batcher.waiting_for_more  # until traffic shows otherwise
    for _ in range(2):
        client.post("/v1/score", json={"prompts": ["a"], "responses": ["b"]})
        assert not batcher.waiting_for_more  # one request, nothing else arrived meanwhile
    held.gate.clear()
    held.entered.clear()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(client.post, "/v1/score", json={"prompts": ["a"], "responses": ["b"]})
        held.entered.wait(30)
        others = [pool.submit(client.post, "/v1/score", json={"prompts": ["c"], "responses": [r]}) for r in "de"]
        wait_for(lambda: batcher.queued_pairs == 2)
        held.gate.set()
        assert all(f.result(30).status_code == 200 for f in [first, *others])
    assert batcher.waiting_for_more  # requests came together: concurrency, so the next gathering waits
