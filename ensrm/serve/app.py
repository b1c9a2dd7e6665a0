"""The ASGI app: routes, request checking, auth, metrics and the access log, over one batcher.

Every error answer is JSON ``{"error": {"type", "message", "field", "expected", "actual"}}``
(``field`` and the rest when the problem is in one field of the body); a model error adds
``"id"``, the id logged with its traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import time

from ensrm._optional import require
from ensrm.errors import InputError
from ensrm.runtime.best_of_n import choose
from ensrm.runtime.scores import Scores, parse_objective
from ensrm.runtime.texts import check_texts
from ensrm.serve.batcher import DynamicBatcher, ModelError, QueueFull
from ensrm.serve.metrics import ServeMetrics
from ensrm.serve.settings import ServeSettings

require("starlette", "serve")

from starlette.applications import Starlette  # noqa: E402 - after the check naming the extra
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

log = logging.getLogger("ensrm.serve")
access_log = logging.getLogger("ensrm.serve.access")

PATHS = ("/v1/score", "/v1/filter", "/v1/best_of_n", "/get_reward", "/healthz", "/readyz", "/metrics", "/v1/info")
OPEN_PATHS = ("/healthz",)  # answered without an API key (liveness probes carry none)


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
    """A float32 array as a JSON list; NaN and inf (not JSON) become null."""
    return [x if math.isfinite(x) else None for x in values.tolist()]


def _field(data: dict, name: str):
    if name not in data:
        raise InputError(f"the body lacks the field {name!r}", field=name, expected="present", actual="missing")
    return data[name]


def _strings(value, name: str) -> list[str]:
    if not isinstance(value, list):
        raise InputError(f"{name} must be a list of strings, got {type(value).__name__}",
                         field=name, expected="list of str", actual=type(value).__name__)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InputError(f"{name}[{i}] must be a string, got {type(item).__name__}",
                             field=f"{name}[{i}]", expected="str", actual=type(item).__name__)
    return value


class _Service:
    """State of one app: the scorer's batcher, the filter, settings and metrics."""

    def __init__(self, scorer, settings: ServeSettings, response_filter=None):
        self.scorer = scorer
        self.settings = settings
        self.filter = response_filter
        self.objective = parse_objective(settings.objective, scorer.num_heads)
        self.metrics = ServeMetrics()
        self.batcher = DynamicBatcher(scorer, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                                      on_batch=self.metrics.observe_batch, on_queue=self.metrics.queue_depth.set)
        self.ready = False

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
        prompts = _strings(_field(data, "prompts"), "prompts")
        responses = _strings(_field(data, "responses"), "responses")
        return check_texts(prompts, responses)

    def objective_of(self, data: dict) -> str:
        value = data.get("objective")
        if value is None:
            return self.objective
        try:
            return parse_objective(value, self.scorer.num_heads)
        except ValueError as exc:
            raise InputError(str(exc), field="objective", expected="mean, wco, uwo or head:K",
                             actual=_jsonable(value)) from None

    async def score(self, request: Request, prompts: list[str], responses: list[str]):
        limit = self.settings.max_pairs_per_request
        if len(prompts) > limit:
            raise ApiError(413, "too_many_pairs", f"the request has {len(prompts)} pairs, above the limit of {limit} "
                           "(--max-pairs-per-request); split it", kind="too_large", field="prompts",
                           expected=f"at most {limit} pairs", actual=f"{len(prompts)} pairs")
        request.scope["ensrm.pairs"] = len(prompts)
        if not prompts:
            return Scores.empty(self.scorer.num_heads)
        try:
            scores = await self.batcher.submit(prompts, responses)
        except QueueFull as exc:
            raise ApiError(503, "queue_full", str(exc), kind="overloaded",
                           headers={"Retry-After": str(self.settings.retry_after_s)}) from None
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
        decisions = [d.to_dict() for d in self.filter.decide_scores(scores)]
        for d in decisions:
            d["score"], d["std"] = (x if math.isfinite(x) else None for x in (d["score"], d["std"]))
        return {"decisions": decisions}

    async def v1_best_of_n(self, request: Request):
        data = await self.body(request)
        prompt = _field(data, "prompt")
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}", field="prompt",
                             expected="str", actual=type(prompt).__name__)
        candidates = _strings(_field(data, "candidates"), "candidates")
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

        ``query[i]`` is the prompt and response in one text. When ``prompts[i]`` is given and
        ``query[i]`` starts with it, the rest is the response; otherwise the whole query is
        scored as the response to an empty prompt. ``labels`` and other fields are ignored.
        """
        data = await self.body(request)
        queries = _strings(_field(data, "query"), "query")
        given = data.get("prompts")
        if given is None:
            given = [""] * len(queries)
        given = _strings(given, "prompts")
        if len(given) != len(queries):
            raise InputError(f"got {len(queries)} queries but {len(given)} prompts; they must pair up",
                             field="prompts", expected=f"{len(queries)} items", actual=f"{len(given)} items")
        prompts, responses = [], []
        for query, prompt in zip(queries, given):
            split = bool(prompt) and query.startswith(prompt)
            prompts.append(prompt if split else "")
            responses.append(query[len(prompt):] if split else query)
        scores = await self.score(request, prompts, responses)
        rewards = _floats(scores.objective(self.objective))
        return {"rewards": rewards, "scores": rewards,
                "extra_logs": {"ens_mean": _floats(scores.mean), "ens_std": _floats(scores.std)}}

    async def healthz(self, request: Request):
        return {"status": "ok"}

    async def readyz(self, request: Request):
        if not self.ready:
            raise ApiError(503, None, "warming up: the bundle is loading or its warm-up batch is not scored yet",
                           kind="not_ready")
        return {"status": "ready"}

    async def metrics_text(self, request: Request):
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def info(self, request: Request):
        spec = self.scorer.spec
        norm = spec.normalization
        return {"num_heads": spec.num_heads, "head_names": list(spec.head_names), "uwo_lambda": spec.uwo_lambda,
                "precision": self.scorer.precision, "objective": self.objective,
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
                           "max_queue": self.settings.max_queue,
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
        else:
            return result if isinstance(result, Response) else JSONResponse(result)
        if error.reason is not None:
            service.metrics.rejects.labels(error.reason).inc()
        return JSONResponse(error.body, status_code=error.status, headers=error.headers)

    return endpoint


class _Observe:
    """ASGI middleware: API key check, request count and latency, one access-log line per request."""

    def __init__(self, app, service: _Service):
        self.app = app
        self.service = service
        key = service.settings.api_key
        self.expected = f"Bearer {key}".encode() if key else None

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
            await send(message)

        try:
            if self.expected is not None and scope["path"] not in OPEN_PATHS and not self._authorised(scope):
                self.service.metrics.rejects.labels("unauthorized").inc()
                response = JSONResponse({"error": {"type": "unauthorized", "message":
                                                   "missing or wrong API key: send Authorization: Bearer <key>"}},
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
                                        "pairs": scope.get("ensrm.pairs", 0), "ms": round(seconds * 1000, 3)}))

    def _authorised(self, scope) -> bool:
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        return hmac.compare_digest(given, self.expected)


def create_app(scorer, settings: ServeSettings | None = None, response_filter=None):
    """The ASGI app serving ``scorer`` (a :class:`~ensrm.Scorer`); run it with uvicorn or test it in-process.

    Starting the app (its lifespan) starts the batcher and scores a warm-up pair; ``/readyz``
    answers 200 from then on. Stopping it scores every queued request first.

    >>> from starlette.testclient import TestClient                               # doctest: +SKIP
    >>> app = create_app(ensrm.Scorer("bundles/default"), ServeSettings(max_batch=32))
    >>> with TestClient(app) as client:
    ...     client.post("/v1/score", json={"prompts": ["Hi"], "responses": ["Hello!"]}).json()["score"]
    [0.42]
    """
    settings = settings or ServeSettings()
    service = _Service(scorer, settings, response_filter)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.batcher.start()
        try:
            await service.batcher.warm_up()
            service.ready = True
            yield
        finally:
            service.ready = False
            await service.batcher.stop()

    handlers = {"/v1/score": ("POST", service.v1_score), "/v1/filter": ("POST", service.v1_filter),
                "/v1/best_of_n": ("POST", service.v1_best_of_n), "/get_reward": ("POST", service.get_reward),
                "/healthz": ("GET", service.healthz), "/readyz": ("GET", service.readyz),
                "/metrics": ("GET", service.metrics_text), "/v1/info": ("GET", service.info)}
    routes = [Route(path, _endpoint(service, handler), methods=[method])
              for path, (method, handler) in handlers.items()]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_Observe, service=service)
    return app
