"""Dynamic batching: concurrent requests are gathered into model batches, scored off the event loop.

Requests wait in a FIFO queue bounded in pairs. One gathering task on the event loop takes
whole requests from the head of the queue until ``max_batch`` pairs are reached or
``max_wait_ms`` have passed since the oldest of them arrived, and hands the batch to a
worker thread, so the loop keeps accepting while the model runs. There are as many workers as
the scorer's ``concurrency`` (OpenVINO's streams with ``hint="throughput"``; 1 elsewhere): each
stream runs its own batch on its own threads, and a batch is gathered only when a worker is free,
so requests that arrive while every stream is busy join the next batch.
The wait is skipped while traffic shows no concurrency: when the previous batch held one
request and nothing arrived while it ran, a lone client is not made to wait for company
that never comes. Requests that pile up while the model runs are gathered either way.
The worker tokenises all pairs of the batch at once, sorts them by length and runs them as
one or more model calls (:func:`length_groups`): pairs of very different lengths go into
separate calls rather than padding every short pair to the longest, which on a CPU costs as
much as real tokens. Results are split back to each request in order. A request larger than
``max_batch`` is gathered alone and scored in model calls of ``batch_size``.

If the batch raises :class:`InputError` (a text the tokenizer cannot take), its requests are
scored one by one so that only the faulty one fails. Any other error fails every request of
the batch with one :class:`ModelError` carrying an id that is logged with the traceback.

Batch size has one meaning across ensrm: **pairs per model call**, the scorer's
``batch_size`` (``--batch-size``). ``max_batch`` is how many pairs the batcher *gathers*
from concurrent requests before handing them to the worker, which runs them as length
groups of at most ``batch_size`` pairs; gathering more than one call's worth lets the
length grouping pick similar pairs out of a larger pool.

A model call that never returns (a hung runtime) must not hold every client forever: with
``timeout_s`` set, a request that waited that long for its scores fails with
:class:`RequestTimeout`, and a model call running that long is abandoned, its requests
answered the same way, and later batches run on a fresh worker thread (at most
``MAX_ABANDONED`` stuck threads are left behind; beyond that new batches wait behind the
stuck one and time out). :attr:`DynamicBatcher.stuck` says whether a call is stuck, so that
``/readyz`` can turn a load balancer away.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ensrm.errors import EnsrmError, InputError
from ensrm.runtime.scores import Scores

log = logging.getLogger("ensrm.serve")

#: A model call may hold at most this share of padding over real tokens before a new call starts.
PADDING_SLACK = 0.25
#: Worker threads stuck in a model call that are left behind before the batcher stops replacing them.
MAX_ABANDONED = 2


def length_groups(lengths: np.ndarray, max_batch: int, slack: float = PADDING_SLACK) -> list[np.ndarray]:
    """Split pair indices, sorted by token length, into model calls of at most ``max_batch``
    pairs whose padded size stays within ``(1 + slack)`` of their real tokens.

    >>> [g.tolist() for g in length_groups(np.array([10, 200, 12, 11, 190]), max_batch=64)]
    [[0, 3, 2], [4, 1]]
    """
    order = np.argsort(lengths, kind="stable")
    groups: list[list[int]] = []
    real = 0
    for i in order.tolist():
        n = int(lengths[i])
        group = groups[-1] if groups else None
        # sorted ascending, so the newcomer is the group's longest: every row pads to n
        if group is None or len(group) >= max_batch or (len(group) + 1) * n > (1 + slack) * (real + n):
            groups.append([i])
            real = n
        else:
            group.append(i)
            real += n
    return [np.asarray(g, dtype=np.int64) for g in groups]


class QueueFull(EnsrmError):
    """The queue holds ``max_queue`` pairs already; the client should retry later."""


class ModelError(EnsrmError):
    """Scoring failed inside the model; ``error_id`` is the id logged with the traceback."""

    def __init__(self, error_id: str):
        super().__init__(f"the model failed on this batch (error id {error_id})")
        self.error_id = error_id


class RequestTimeout(EnsrmError):
    """No scores within the request timeout; ``error_id`` is the id logged with the cause."""

    def __init__(self, error_id: str, message: str):
        super().__init__(f"{message} (error id {error_id})")
        self.error_id = error_id


def _error_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class _Request:
    prompts: list[str]
    responses: list[str]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)

    def __len__(self) -> int:
        return len(self.prompts)


class DynamicBatcher:
    """Queue of pending requests and the task that turns them into model batches.

    ``on_batch(pairs, model_calls, seconds)`` is called on the event loop after each gathered
    batch (metrics); ``on_queue(pairs)`` whenever the queue's size changes.

    >>> batcher = DynamicBatcher(scorer, max_batch=64, max_wait_ms=5, max_queue=1024)  # doctest: +SKIP
    >>> await batcher.start()                                                         # doctest: +SKIP
    >>> scores = await batcher.submit(["Hi"], ["Hello!"])                            # doctest: +SKIP
    """

    def __init__(self, scorer, max_batch: int, max_wait_ms: float, max_queue: int, on_batch=None,
                 on_queue=None, timeout_s: float | None = None):
        self.scorer = scorer
        self.max_batch = max_batch
        #: pairs per model call: the scorer's batch_size (see the module docstring)
        self.call_size = int(getattr(scorer, "batch_size", None) or max_batch)
        self.timeout = timeout_s
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_queue = on_queue
        self._queue: collections.deque[_Request] = collections.deque()
        self.queued_pairs = 0
        self.model_calls = 0  # written by the event loop only
        self._local = threading.local()  # each worker's model calls in its current batch
        #: whether the next gathering waits up to max_wait for more requests (see the module docstring)
        self.waiting_for_more = True
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        #: model calls run at once (the scorer's streams); a batch is gathered when one is free
        self.concurrency = max(1, int(getattr(scorer, "concurrency", 1)))
        self._free: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._busy = 0  # batches handed to workers and not yet answered (event loop only)
        self._call_started: dict[int, float] = {}  # when each running model call began (event loop only)
        self.abandoned = 0  # model calls given up as stuck that have not returned yet

    @property
    def stuck(self) -> bool:
        """Whether a model call has run past the timeout (abandoned, or still running)."""
        if self.abandoned:
            return True
        oldest = min(self._call_started.values(), default=None)
        return self.timeout is not None and oldest is not None and time.perf_counter() - oldest > self.timeout

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._free = asyncio.Semaphore(self.concurrency)
        self._executor = self._new_executor()
        self._task = asyncio.create_task(self._run(), name="ensrm-batcher")

    async def warm_up(self) -> None:
        """Score one pair in the worker thread, the way requests are (loads the tokenizer, touches every weight)."""
        request = _Request(["warm-up"], ["warm-up"], asyncio.get_running_loop().create_future())
        await asyncio.get_running_loop().run_in_executor(self._executor, self._score_together, [request])

    async def stop(self) -> None:
        """Score everything still queued, then stop the task and the worker thread."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
        if self._executor is not None:
            # a thread stuck in the model is not waited for: it would hold the shutdown forever
            self._executor.shutdown(wait=not self.abandoned)

    async def submit(self, prompts: list[str], responses: list[str]) -> Scores:
        """Queue one request's pairs; return their scores in order.

        Raises :class:`QueueFull` at once when the pairs do not fit in the queue.
        """
        if self.queued_pairs + len(prompts) > self.max_queue:
            raise QueueFull(f"the queue holds {self.queued_pairs} pairs; {len(prompts)} more would exceed "
                            f"max_queue={self.max_queue}")
        request = _Request(prompts, responses, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued(len(request))
        self._wakeup.set()
        if self.timeout is None:
            return await request.future
        try:
            # shield: a timeout here must not cancel the future the gathering task answers
            return await asyncio.wait_for(asyncio.shield(request.future), self.timeout)
        except asyncio.TimeoutError:
            request.future.cancel()  # skipped if still queued, its answer dropped if in a model call
            error_id = _error_id()
            log.error("request timeout %s: no scores for %d pairs after %.1f s (queue %d pairs, model call %s)",
                      error_id, len(request), self.timeout, self.queued_pairs,
                      "stuck" if self.stuck else "running" if self._call_started else "idle")
            raise RequestTimeout(error_id, f"no scores within the request timeout of {self.timeout:g} s "
                                 "(--request-timeout)") from None

    def _queued(self, delta: int) -> None:
        self.queued_pairs += delta
        if self.on_queue is not None:
            self.on_queue(self.queued_pairs)

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="ensrm-model")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._free.acquire()  # gather only when a worker can take the batch
                batch = await self._gather()
                if not batch:
                    self._free.release()
                    continue
                self._busy += 1
                task = asyncio.create_task(self._dispatch(loop, batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        finally:
            if self._running:  # stopping: answer what the workers hold
                await asyncio.gather(*self._running, return_exceptions=True)

    async def _gather(self) -> list[_Request]:
        """Wait for more requests until the batch is full or the oldest has waited max_wait; take them."""
        deadline = self._queue[0].arrived + self.max_wait
        while self.waiting_for_more and self.queued_pairs < self.max_batch and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        # Share what waits between the free workers: one batch of everything would leave the other
        # streams idle while it runs, and closed-loop clients would stay in one cohort for good.
        free = self.concurrency - self._busy  # >= 1: the caller holds a free slot
        limit = min(self.max_batch, -(-self.queued_pairs // free))
        batch = [self._queue.popleft()]
        pairs = len(batch[0])
        while self._queue and pairs + len(self._queue[0]) <= limit:
            pairs += len(self._queue[0])
            batch.append(self._queue.popleft())
        self._queued(-pairs)
        return [request for request in batch if not request.future.done()]  # timed out while queued

    async def _dispatch(self, loop, batch: list[_Request]) -> None:
        """Score ``batch`` in a worker thread and answer its requests; frees the worker's slot."""
        try:
            pairs = sum(len(request) for request in batch)
            start = time.perf_counter()
            results, calls = await self._call(loop, batch)
            self.model_calls += calls
            if self.on_batch is not None:
                self.on_batch(pairs, calls, time.perf_counter() - start)
            self.waiting_for_more = len(batch) > 1 or bool(self._queue) or self._busy > 1
            for request, result in zip(batch, results):
                if request.future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)
        finally:
            self._busy -= 1
            self._free.release()
            self._wakeup.set()  # the gathering task may be waiting for this slot's batch to end

    async def _call(self, loop, batch: list[_Request]) -> tuple[list, int]:
        """Run ``batch`` in a worker thread: one result per request, and the model calls it took. Past
        the timeout, abandon the call (see the module docstring)."""
        future = loop.run_in_executor(self._executor, self._score, batch)
        key = id(future)
        self._call_started[key] = time.perf_counter()
        try:
            if self.timeout is None:
                return await future
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            error_id = _error_id()
            self.abandoned += 1
            future.add_done_callback(self._returned)
            replace = self.abandoned <= MAX_ABANDONED
            log.error("model call stuck %s: a batch of %d pairs has run for more than %.1f s; its requests answer "
                      "504 and %s", error_id, sum(len(r) for r in batch), self.timeout,
                      "later batches run on a new worker thread" if replace else
                      f"{self.abandoned} calls are stuck, so later batches wait behind this one")
            if replace:
                self._executor.shutdown(wait=False)  # the stuck thread ends when (if) its call returns
                self._executor = self._new_executor()
            return [RequestTimeout(error_id, f"the model call did not return within {self.timeout:g} s "
                                   "(--request-timeout)")] * len(batch), 0
        finally:
            del self._call_started[key]

    def _returned(self, future) -> None:
        self.abandoned -= 1
        log.warning("a model call given up as stuck returned after all; %d still stuck", self.abandoned)

    # -- in the worker thread --------------------------------------------------------------

    def _score(self, batch: list[_Request]) -> tuple[list[Scores | Exception], int]:
        self._local.calls = 0
        return self._score_each(batch), self._local.calls

    def _score_each(self, batch: list[_Request]) -> list[Scores | Exception]:
        try:
            return self._score_together(batch)
        except InputError as exc:
            if len(batch) == 1:  # its indices are the request's own
                return [exc]
        except Exception as exc:  # noqa: BLE001 - any model failure must reach the clients, not kill the task
            return [self._model_error(exc)] * len(batch)
        return [self._score_alone(request) for request in batch]

    def _score_together(self, batch: list[_Request]) -> list[Scores]:
        prompts = [p for request in batch for p in request.prompts]
        responses = [r for request in batch for r in request.responses]
        scores = self._score_pairs(prompts, responses)  # [pairs]
        results, start = [], 0
        for request in batch:
            results.append(scores.take(slice(start, start + len(request))))
            start += len(request)
        return results

    def _score_pairs(self, prompts: list[str], responses: list[str]) -> Scores:
        """Tokenise once, score in length groups, scatter back: what ``score_texts`` does, with
        groups cut by padding as well as by size."""
        encoder = self.scorer.text_encoder
        encodings = encoder.encode(prompts, responses, truncation=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))  # [pairs]
        parts, rows = [], []
        for group in length_groups(lengths, self.call_size):
            for batch_rows, feeds in encoder.batches([encodings[i] for i in group], len(group)):
                parts.append(self.scorer.score(**feeds))
                self._local.calls = getattr(self._local, "calls", 0) + 1
                rows.append(group[batch_rows])
        scores = Scores.concatenate(parts, self.scorer.num_heads)
        return scores.take(np.argsort(np.concatenate(rows), kind="stable"))  # back to input order

    def _score_alone(self, request: _Request) -> Scores | Exception:
        try:
            return self._score_pairs(request.prompts, request.responses)
        except InputError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - see _score
            return self._model_error(exc)

    @staticmethod
    def _model_error(exc: Exception) -> ModelError:
        error_id = _error_id()
        log.error("model error %s: %s: %s", error_id, type(exc).__name__, exc, exc_info=exc)
        return ModelError(error_id)
