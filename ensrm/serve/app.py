"""The ASGI app: routes, request checking, auth, metrics and the access log, over one batcher.

Every error answer is JSON ``{"error": {"type", "message", "field", "expected", "actual"}}``
(``field`` and the rest when the problem is in one field of the body); a model error, a
non-finite score and a timeout add ``"id"``, the id logged with the cause.

The bundle is swappable while serving (:meth:`_Service.reload`, ``POST /v1/admin/reload``,
SIGHUP): the new one is loaded and warmed beside the running one, then requests go to it;
requests already queued or running finish on the old one, which is then stopped. Every
answer carries ``X-Ensrm-Bundle``, the fingerprint of the manifest of the bundle that
scored it (the current one for answers that scored nothing).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.errors import EnsrmError, InputError
from ensrm.runtime.best_of_n import choose
from ensrm.runtime.scores import Scores, parse_objective
from ensrm.runtime.texts import as_texts, check_texts
from ensrm.serve.batcher import DynamicBatcher, ModelError, QueueFull, RequestTimeout
from ensrm.serve.metrics import ServeMetrics
from ensrm.serve.queries import split_query
from ensrm.serve.settings import ServeSettings, is_loopback

require("starlette", "serve")

from starlette.applications import Starlette  # noqa: E402 - after the check naming the extra
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

log = logging.getLogger("ensrm.serve")
access_log = logging.getLogger("ensrm.serve.access")

PATHS = ("/v1/score", "/v1/filter", "/v1/best_of_n", "/get_reward", "/healthz", "/readyz", "/metrics", "/v1/info",
         "/v1/admin/reload")
OPEN_PATHS = ("/healthz",)  # answered without an API key (liveness probes carry none)
#: The response header naming the bundle (its manifest's fingerprint) an answer was scored by.
BUNDLE_HEADER = "X-Ensrm-Bundle"


class ReloadFailed(EnsrmError):
    """A new bundle did not load, verify or warm up; the old one is still serving."""


class ApiError(Exception):
    """An answer other than 200: status, the reject reason counted in metrics, and the JSON error."""

    def __init__(self, status: int, reason: str | None, message: str, *, kind: str = "invalid_request",
                 headers: dict | None = None, **details):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = {"error": {"type": kind, "message": message, **details}}

    @classmethod
    def from_input_error(cls, exc: InputError) -> ApiError:
        return cls(422, "bad_input", str(exc), kind="invalid_input", field=exc.field,
                   expected=_jsonable(exc.expected), actual=_jsonable(exc.actual))


def _jsonable(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _floats(values) -> list:
    """A float32 array as a JSON list (scores reaching here are finite: see ``_Service.score``)."""
    return values.tolist()


def manifest_fingerprint(bundle_dir) -> str:
    """The first 16 hex digits of the sha256 of the bundle's ``ensemble.json``.

    The manifest lists every file's sha256, so a bundle with any file changed has a
    different fingerprint.
    """
    from ensrm.bundle import bundle_file
    from ensrm.spec import MANIFEST_NAME

    return hashlib.sha256(bundle_file(bundle_dir, MANIFEST_NAME).read_bytes()).hexdigest()[:16]


def _load_beside(scorer):
    """How a reload builds the new scorer: the running scorer's configuration, another bundle."""
    config = getattr(scorer, "config", None)
    if config is None:
        raise EnsrmError("this server's scorer has no configuration to reload with")
    from ensrm.runtime.scorer import Scorer

    return lambda bundle: Scorer.from_config(config.replace(bundle=bundle))


class _Model:
    """One loaded bundle: its scorer, its batcher and the fingerprint its answers carry."""

    def __init__(self, scorer, settings: ServeSettings, fingerprint: str, bundle: str, on_batch, on_queue):
        self.scorer = scorer
        self.fingerprint = fingerprint
        self.bundle = bundle
        self.objective = parse_objective(settings.objective, scorer.num_heads)
        self.batcher = DynamicBatcher(scorer, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                                      on_batch=on_batch, on_queue=on_queue, timeout_s=settings.request_timeout_s)


def _field(data: dict, name: str):
    if name not in data:
        raise InputError(f"the body lacks the field {name!r}", field=name, expected="present", actual="missing")
    return data[name]


class _Service:
    """State of one app: the scorer's batcher, the filter, settings and metrics."""

    def __init__(self, scorer, settings: ServeSettings, response_filter=None, loader=None):
        self.settings = settings
        self.filter = response_filter
        self.metrics = ServeMetrics()
        self.loader = loader or _load_beside(scorer)
        self.models: list[_Model] = []  # the current one last; older ones still finishing their queue
        self.model = self._model(scorer)
        self.ready = False
        self._reloading = asyncio.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def _model(self, scorer) -> _Model:
        return _Model(scorer, self.settings, manifest_fingerprint(scorer.bundle_dir), str(scorer.bundle_dir),
                      self.metrics.observe_batch, self._queue_changed)

    def _queue_changed(self, _pairs: int) -> None:
        self.metrics.queue_depth.set(sum(m.batcher.queued_pairs for m in self.models) if self.models else _pairs)

    # the current model's parts, for callers (and tests) that predate reloading
    @property
    def scorer(self):
        return self.model.scorer

    @property
    def batcher(self) -> DynamicBatcher:
        return self.model.batcher

    @property
    def objective(self) -> str:
        return self.model.objective

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.models = [self.model]
        await self.model.batcher.start()
        await self.model.batcher.warm_up()
        self.metrics.bundle.labels(self.model.fingerprint, self.model.bundle).set(1)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for model in list(self.models):
            await model.batcher.stop()

    def is_ready(self) -> bool:
        return self.ready and not self.model.batcher.stuck

    async def reload(self, bundle: str | None = None) -> _Model:
        """Load ``bundle`` (default: the current bundle's path, rewritten) beside the running one,
        warm it, then switch; requests already queued finish on the old one.

        Raises :class:`EnsrmError` (the old bundle keeps serving) when the new one fails to
        load or verify, or cannot serve this server's objective or filter.
        """
        if self._reloading.locked():
            raise ApiError(409, None, "a reload is already running; try again when it is done", kind="busy")
        async with self._reloading:
            path = bundle if bundle is not None else self.model.bundle
            started = time.perf_counter()
            try:
                before = await asyncio.to_thread(manifest_fingerprint, path)
                scorer = await asyncio.to_thread(self.loader, path)
                model = self._model(scorer)
            except Exception as exc:  # noqa: BLE001 - whatever the loader raised, the old bundle keeps serving
                self.metrics.reloads.labels("failed").inc()
                log.error("reload of %s failed, still serving %s: %s", path, self.model.fingerprint, exc)
                raise ReloadFailed(f"the bundle at {path} did not load: {exc}") from None
            problem = None
            if model.fingerprint != before:
                problem = "its manifest changed while it was loading; reload again when it is written"
            elif self.filter is not None:
                try:
                    parse_objective(self.filter.objective, scorer.num_heads)
                except ValueError as exc:
                    problem = f"the server's filter cannot use it: {exc}"
            if problem is None:
                await model.batcher.start()
                try:
                    await model.batcher.warm_up()
                except Exception as exc:  # noqa: BLE001 - whatever the new runtime raised, the old one serves
                    problem = f"its warm-up batch failed: {type(exc).__name__}: {exc}"
                if problem is not None:
                    await model.batcher.stop()
            if problem is not None:
                self.metrics.reloads.labels("failed").inc()
                log.error("reload of %s failed, still serving %s: %s", path, self.model.fingerprint, problem)
                raise ReloadFailed(f"the bundle at {path} was not switched to: {problem}")
            old, self.model = self.model, model
            self.models.append(model)
            self.metrics.bundle.labels(model.fingerprint, model.bundle).set(1)
            self.metrics.reloads.labels("ok").inc()
            log.info("serving bundle %s (%s) after %.1f s loading; %s (%s) finishes its queue", model.fingerprint,
                     model.bundle, time.perf_counter() - started, old.fingerprint, old.bundle)
            await old.batcher.stop()  # every request it holds is answered first
            self.models.remove(old)
            if old.fingerprint != model.fingerprint or old.bundle != model.bundle:
                self.metrics.bundle.labels(old.fingerprint, old.bundle).set(0)
            return model

    # -- reading requests ------------------------------------------------------------------

    async def body(self, request: Request) -> dict:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_input", f"Content-Length must be a number of bytes, got {declared!r}",
                               field="Content-Length")
            if int(declared) > limit:
                raise self._too_large(int(declared))
        raw = bytearray()
        async for chunk in request.stream():  # a chunked body declares no length: count what arrives
            raw += chunk
            if len(raw) > limit:
                raise self._too_large(len(raw), at_least=True)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_input", f"the body is not JSON: {exc}", kind="invalid_json", field="body",
                           expected="a JSON object", actual="not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_input", f"the body must be a JSON object, got {type(data).__name__}",
                           field="body", expected="a JSON object", actual=type(data).__name__)
        return data

    def _too_large(self, size: int, at_least: bool = False) -> ApiError:
        limit = self.settings.max_body_bytes
        return ApiError(413, "body_too_large", f"the body has {'more than ' if at_least else ''}{size} bytes, "
                        f"above the limit of {limit} (--max-body-bytes)", kind="too_large", field="body",
                        expected=f"at most {limit} bytes", actual=f"{size} bytes")

    def pairs(self, data: dict) -> tuple[list[str], list[str]]:
        prompts = as_texts(_field(data, "prompts"), "prompts")
        responses = as_texts(_field(data, "responses"), "responses")
        return check_texts(prompts, responses)

    def objective_of(self, data: dict) -> str:
        value = data.get("objective")
        if value is None:
            return self.objective
        try:
            return parse_objective(value, self.model.scorer.num_heads)
        except ValueError as exc:
            raise InputError(str(exc), field="objective", expected="mean, wco, uwo or head:K",
                             actual=_jsonable(value)) from None

    async def score(self, request: Request, prompts: list[str], responses: list[str]):
        """Scores of the pairs from the current bundle (named in the answer's header); every one finite."""
        limit = self.settings.max_pairs_per_request
        if len(prompts) > limit:
            raise ApiError(413, "too_many_pairs", f"the request has {len(prompts)} pairs, above the limit of {limit} "
                           "(--max-pairs-per-request); split it", kind="too_large", field="prompts",
                           expected=f"at most {limit} pairs", actual=f"{len(prompts)} pairs")
        request.scope["ensrm.pairs"] = len(prompts)
        # No await between choosing the model and queueing on it: a reload cannot slip in between.
        model = self.model
        request.scope["ensrm.bundle"] = model.fingerprint
        if not prompts:
            return Scores.empty(model.scorer.num_heads)
        try:
            scores = await model.batcher.submit(prompts, responses)
        except QueueFull as exc:
            raise ApiError(503, "queue_full", str(exc), kind="overloaded",
                           headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        bad = ~(np.isfinite(scores.heads).all(axis=1) & np.isfinite(scores.mean) & np.isfinite(scores.std)
                & np.isfinite(scores.min) & np.isfinite(scores.uwo))  # [pairs]
        if bad.any():
            error_id = uuid.uuid4().hex[:12]
            rows = np.flatnonzero(bad)
            log.error("non-finite score %s: pairs %s of %d (bundle %s) scored NaN or inf; answering 500",
                      error_id, rows[:10].tolist(), len(prompts), model.fingerprint)
            raise ApiError(500, "non_finite", f"the model gave a non-finite score (NaN or inf) for {len(rows)} of "
                           f"{len(prompts)} pairs, first pair {int(rows[0])} (error id {error_id}); no rewards are "
                           "sent rather than a wrong one", kind="non_finite_score", id=error_id)
        self.metrics.pairs.labels(request.url.path).inc(len(prompts))
        return scores

    # -- endpoints -------------------------------------------------------------------------

    async def v1_score(self, request: Request):
        data = await self.body(request)
        prompts, responses = self.pairs(data)
        objective = self.objective_of(data)
        scores = await self.score(request, prompts, responses)
        return {"objective": objective, "heads": [_floats(row) for row in scores.heads],
                "mean": _floats(scores.mean), "std": _floats(scores.std), "min": _floats(scores.min),
                "uwo": _floats(scores.uwo), "score": _floats(scores.objective(objective))}

    async def v1_filter(self, request: Request):
        if self.filter is None:
            raise ApiError(404, "no_filter", "this server has no filter; start it with --filter FILTER.json",
                           kind="not_configured")
        data = await self.body(request)
        prompts, responses = self.pairs(data)
        scores = await self.score(request, prompts, responses)
        return {"decisions": [d.to_dict() for d in self.filter.decide_scores(scores)]}

    async def v1_best_of_n(self, request: Request):
        data = await self.body(request)
        prompt = _field(data, "prompt")
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}", field="prompt",
                             expected="str", actual=type(prompt).__name__)
        candidates = as_texts(_field(data, "candidates"), "candidates")
        if not candidates:
            raise InputError("candidates is empty; best-of-n needs at least one", field="candidates",
                             expected="at least 1 item", actual="0 items")
        objective = self.objective_of(data)
        scores = await self.score(request, [prompt] * len(candidates), candidates)
        try:
            best = choose(scores, objective)
        except InputError as exc:  # every candidate scored NaN
            raise InputError(str(exc), field="candidates", expected="a candidate with a finite score",
                             actual="all NaN") from None
        return {"objective": best.objective, "index": best.index, "values": _floats(best.values)}

    async def get_reward(self, request: Request):
        """OpenRLHF's remote reward model: ``{"query": [...], "prompts": [...]}`` -> ``{"rewards": [...]}``.

        ``query[i]`` is the prompt and response in one text; ``prompts[i]`` (optional) finds
        where the response starts, also when the trainer truncated the prompt (the rule is
        :mod:`ensrm.serve.queries`). A query the prompt is not found in is scored whole, as the
        response to an empty prompt, and counted in ``ensrm_unsplit_queries_total``.
        ``labels`` and other fields are ignored.

        The answer is ``{"rewards": [...], "scores": [...]}``, flat lists of floats, which both
        OpenRLHF client generations read. No ``extra_logs``: OpenRLHF 0.8.x merges them with
        ``torch.cat``, which fails on anything JSON can carry, and 0.11.x wraps each value in
        ``torch.tensor([value])``; the other aggregates are at ``/v1/score``.
        """
        data = await self.body(request)
        queries = as_texts(_field(data, "query"), "query")
        given = data.get("prompts")
        if given is None:
            given = [""] * len(queries)
        given = as_texts(given, "prompts")
        if len(given) != len(queries):
            raise InputError(f"got {len(queries)} queries but {len(given)} prompts; they must pair up",
                             field="prompts", expected=f"{len(queries)} items", actual=f"{len(given)} items")
        prompts, responses = [], []
        unsplit = 0
        for query, prompt in zip(queries, given):
            split = split_query(query, prompt)
            if split is None:
                unsplit += bool(prompt)
                split = ("", query)
            prompts.append(split[0])
            responses.append(split[1])
        if unsplit:
            self.metrics.unsplit.inc(unsplit)
        model = self.model
        scores = await self.score(request, prompts, responses)
        rewards = _floats(scores.objective(model.objective))
        return {"rewards": rewards, "scores": rewards}

    async def healthz(self, request: Request):
        return {"status": "ok"}

    async def readyz(self, request: Request):
        if not self.ready:
            raise ApiError(503, None, "warming up: the bundle is loading or its warm-up batch is not scored yet",
                           kind="not_ready")
        if self.model.batcher.stuck:
            raise ApiError(503, None, "a model call has run past --request-timeout: the model worker is stuck",
                           kind="not_ready")
        return {"status": "ready"}

    async def admin_reload(self, request: Request):
        """``POST /v1/admin/reload`` with ``{"bundle": PATH}`` (optional: the current path, rewritten).

        Needs the API key when the server has one; without one, only loopback clients may reload.
        """
        if self.settings.api_key is None:
            client = request.client.host if request.client else ""
            if not is_loopback(client):
                raise ApiError(403, "unauthorized", "reloading needs an API key (--api-key-file) when the client is "
                               "not on this machine", kind="forbidden")
        raw = await request.body()
        data = {}
        if raw.strip():
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                data = None
            if not isinstance(data, dict):
                raise ApiError(400, "bad_input", "the body must be empty or a JSON object {\"bundle\": PATH}",
                               field="body", expected="a JSON object", actual="other")
        bundle = data.get("bundle")
        if bundle is not None and (not isinstance(bundle, str) or not bundle):
            raise InputError("bundle must be a path (a non-empty string)", field="bundle", expected="str",
                             actual=_jsonable(bundle))
        if bundle is not None and not Path(bundle).is_dir():
            raise InputError(f"{bundle} is not a directory on the server", field="bundle",
                             expected="a bundle directory", actual=bundle)
        old = self.model
        model = await self.reload(bundle)
        request.scope["ensrm.bundle"] = model.fingerprint
        return {"bundle": model.bundle, "fingerprint": model.fingerprint, "previous": old.fingerprint,
                "description": getattr(model.scorer, "description", None)}

    async def metrics_text(self, request: Request):
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def info(self, request: Request):
        model = self.model
        spec = model.scorer.spec
        norm = spec.normalization
        return {"bundle": model.bundle, "fingerprint": model.fingerprint,
                "runtime": getattr(model.scorer, "description", None),
                "num_heads": spec.num_heads, "head_names": list(spec.head_names), "uwo_lambda": spec.uwo_lambda,
                "precision": model.scorer.precision, "objective": model.objective,
                "model_type": spec.model_type, "architecture": spec.architecture, "pooling": spec.pooling,
                "max_length": spec.max_length, "members": spec.members,
                "normalization": None if norm is None else
                {"calibrated": norm.calibrated, "records": norm.records, "mu": list(norm.mu),
                 "sigma": list(norm.sigma)},
                "source_fingerprint": spec.source_fingerprint,
                "variants": {p: v.usable for p, v in spec.variants.items()},
                "filter": None if self.filter is None else
                {"objective": self.filter.objective, "min_score": self.filter.min_score,
                 "max_std": self.filter.max_std},
                "limits": {"max_batch": self.settings.max_batch, "max_wait_ms": self.settings.max_wait_ms,
                           "batch_size": model.batcher.call_size, "max_queue": self.settings.max_queue,
                           "request_timeout_s": self.settings.request_timeout_s,
                           "max_pairs_per_request": self.settings.max_pairs_per_request,
                           "max_body_bytes": self.settings.max_body_bytes}}


def _endpoint(service: _Service, handler):
    """Wrap a handler: dict -> JSON 200; ApiError / InputError / ModelError -> their JSON answer."""

    async def endpoint(request: Request):
        try:
            result = await handler(request)
        except InputError as exc:
            error = ApiError.from_input_error(exc)
        except ApiError as exc:
            error = exc
        except ModelError as exc:
            error = ApiError(500, "model_error", str(exc), kind="model_error", id=exc.error_id)
        except RequestTimeout as exc:
            error = ApiError(504, "timeout", str(exc), kind="timeout", id=exc.error_id)
        except ReloadFailed as exc:
            error = ApiError(422, "reload_failed", str(exc), kind="reload_failed", field="bundle")
        else:
            return result if isinstance(result, Response) else JSONResponse(result)
        if error.reason is not None:
            service.metrics.rejects.labels(error.reason).inc()
        return JSONResponse(error.body, status_code=error.status, headers=error.headers)

    return endpoint


class _Observe:
    """ASGI middleware: API key check, the bundle header, request count and latency, one access-log
    line per request (never the key, the credentials or the texts)."""

    def __init__(self, app, service: _Service):
        self.app = app
        self.service = service
        key = service.settings.api_key
        self.bearer = f"Bearer {key}".encode() if key else None
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"] if scope["path"] in PATHS else "other"
        status = 500

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                bundle = scope.get("ensrm.bundle") or self.service.model.fingerprint
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (BUNDLE_HEADER.lower().encode(), bundle.encode())]}
            await send(message)

        try:
            if self.key is not None and scope["path"] not in OPEN_PATHS and not self._authorised(scope):
                self.service.metrics.rejects.labels("unauthorized").inc()
                response = JSONResponse({"error": {"type": "unauthorized", "message":
                                                   "missing or wrong API key: send Authorization: Bearer <key>, or "
                                                   "the key as the password of HTTP Basic credentials "
                                                   "(http://ensrm:KEY@host:port/...)"}},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, observed_send)
            else:
                await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - start
            metrics = self.service.metrics
            metrics.requests.labels(path, str(status)).inc()
            metrics.latency.labels(path).observe(seconds)
            access_log.info(json.dumps({"method": scope["method"], "path": path, "status": status,
                                        "pairs": scope.get("ensrm.pairs", 0), "ms": round(seconds * 1000, 3),
                                        "bundle": scope.get("ensrm.bundle")}))

    def _authorised(self, scope) -> bool:
        """``Bearer KEY``, or ``Basic base64(USER:KEY)`` with any user name; compared in constant time."""
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        if given[:6].lower() == b"basic ":
            try:
                credentials = base64.b64decode(given[6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            _user, colon, password = credentials.partition(b":")
            return bool(colon) and hmac.compare_digest(password, self.key)
        return hmac.compare_digest(given, self.bearer)


def create_app(scorer, settings: ServeSettings | None = None, response_filter=None, loader=None):
    """The ASGI app serving ``scorer`` (a :class:`~ensrm.Scorer`); run it with uvicorn or test it in-process.

    Starting the app (its lifespan) starts the batcher and scores a warm-up pair; ``/readyz``
    answers 200 from then on. Stopping it scores every queued request first. ``loader(path)``
    builds the scorer of a reloaded bundle (default: the running scorer's
    :class:`~ensrm.runtime.config.ScorerConfig` with ``bundle=path``).

    >>> from starlette.testclient import TestClient                               # doctest: +SKIP
    >>> app = create_app(ensrm.Scorer("bundles/default"), ServeSettings(max_batch=32))
    >>> with TestClient(app) as client:
    ...     client.post("/v1/score", json={"prompts": ["Hi"], "responses": ["Hello!"]}).json()["score"]
    [0.42]
    """
    settings = settings or ServeSettings()
    service = _Service(scorer, settings, response_filter, loader)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            await service.start()
            yield
        finally:
            await service.stop()

    handlers = {"/v1/score": ("POST", service.v1_score), "/v1/filter": ("POST", service.v1_filter),
                "/v1/best_of_n": ("POST", service.v1_best_of_n), "/get_reward": ("POST", service.get_reward),
                "/healthz": ("GET", service.healthz), "/readyz": ("GET", service.readyz),
                "/metrics": ("GET", service.metrics_text), "/v1/info": ("GET", service.info),
                "/v1/admin/reload": ("POST", service.admin_reload)}
    routes = [Route(path, _endpoint(service, handler), methods=[method])
              for path, (method, handler) in handlers.items()]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_Observe, service=service)
    return app
