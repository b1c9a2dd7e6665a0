"""Prometheus collectors of one server, in a registry of its own (so several apps can coexist)."""

from __future__ import annotations

from ensrm._optional import require

#: Why a request was refused before (or instead of) scoring; the label of ``ensrm_rejects_total``.
REJECT_REASONS = ("bad_input", "unauthorized", "body_too_large", "too_many_pairs", "queue_full", "no_filter",
                  "model_error", "non_finite", "timeout", "reload_failed")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """Requests, pairs, model batch sizes, queue depth, latency and rejects.

    >>> metrics = ServeMetrics()
    >>> metrics.batch_size.observe(8)
    >>> b"ensrm_batch_size_pairs_bucket" in metrics.render()[0]
    True
    """

    def __init__(self):
        prom = require("prometheus_client", "serve")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        kw = {"registry": self.registry}
        self.requests = prom.Counter("ensrm_requests", "HTTP requests answered", ["path", "status"], **kw)
        self.pairs = prom.Counter("ensrm_pairs", "(prompt, response) pairs scored", ["path"], **kw)
        self.batch_size = prom.Histogram("ensrm_batch_size_pairs", "Pairs per gathered batch", buckets=BATCH_BUCKETS,
                                         **kw)
        self.model_calls = prom.Counter("ensrm_model_calls", "Model calls (a batch runs as one per length group)",
                                        **kw)
        self.batch_seconds = prom.Histogram("ensrm_batch_seconds", "Time the model took per gathered batch",
                                            buckets=LATENCY_BUCKETS, **kw)
        self.queue_depth = prom.Gauge("ensrm_queue_depth_pairs", "Pairs waiting for the model", **kw)
        self.latency = prom.Histogram("ensrm_request_latency_seconds", "Time from request to response",
                                      ["path"], buckets=LATENCY_BUCKETS, **kw)
        self.rejects = prom.Counter("ensrm_rejects", "Requests refused, by reason", ["reason"], **kw)
        for reason in REJECT_REASONS:
            self.rejects.labels(reason)  # present at 0 from the start, so rates are defined
        self.bundle = prom.Gauge("ensrm_bundle", "1 for the bundle now serving, 0 for bundles served before",
                                 ["fingerprint", "path"], **kw)
        self.reloads = prom.Counter("ensrm_reloads", "Bundle reloads, by result", ["result"], **kw)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self.unsplit = prom.Counter("ensrm_unsplit_queries", "/get_reward queries whose prompt was not found in "
                                    "them (scored whole, as the response to an empty prompt)", **kw)

    def observe_batch(self, pairs: int, model_calls: int, seconds: float) -> None:
        self.batch_size.observe(pairs)
        self.model_calls.inc(model_calls)
        self.batch_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
