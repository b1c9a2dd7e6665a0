"""A tiny BERT bundle's scorer, a scorer wrapper that holds the model on demand, and an app client."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("starlette")

PROMPTS = ["How do I bake bread at home without a stand mixer?", "Explain lists and tuples in Python.",
           "What should I pack for a hiking trip?", "Thank you!"]
RESPONSES = ["Mix flour, water, salt and yeast, knead by hand, let it rise and bake it hot.",
             "A list is mutable and a tuple is not.", "Layers, a rain shell, a warm hat and a map.",
             "You are welcome; glad it helped."]


@pytest.fixture(scope="session")
def scorer(bundles):
    import ensrm

    return ensrm.Scorer(bundles("bert", num_labels=4), threads=1)


class HeldScorer:
    """Passes every call to ``scorer``; while ``gate`` is clear a model call blocks inside the worker.

    ``entered`` is set when a model call begins; ``calls`` lists the rows of every model call.
    With ``fail`` set, model calls raise, as a crashing onnxruntime session would.
    """

    def __init__(self, scorer):
        self.scorer = scorer
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.fail = False
        self.inside = 0  # model calls blocked at the gate right now
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.scorer, name)

    def score(self, input_ids, attention_mask, token_type_ids=None):
        with self._lock:
            self.inside += 1
        self.entered.set()
        try:
            assert self.gate.wait(60), "the test never released the model"
        finally:
            with self._lock:
                self.inside -= 1
        self.calls.append(len(input_ids))
        if self.fail:
            raise RuntimeError("simulated onnxruntime failure")
        return self.scorer.score(input_ids, attention_mask, token_type_ids)


@pytest.fixture
def held(scorer):
    return HeldScorer(scorer)


@pytest.fixture
def make_client():
    """``make_client(scorer, **settings)`` -> a started TestClient (closed at the end of the test)."""
    from starlette.testclient import TestClient

    from ensrm.serve import ServeSettings, create_app

    clients = []

    def make(scorer, response_filter=None, **settings):
        client = TestClient(create_app(scorer, ServeSettings(**settings), response_filter))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def metric(client, name: str, **labels) -> float:
    """One sample of the /metrics text, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = client.headers
    text = client.get("/metrics", headers=headers).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(f"{name} {labels} not in /metrics")
