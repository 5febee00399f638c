"""The scheduler of one model version: queues requests, forms batches, runs them on free instances.

Triton's dynamic batcher semantics, so existing config.pbtxt files mean the same thing:

- Requests wait in one queue per priority level (level 1 first). A batch starts with the oldest
  request of the highest level and takes every later request whose non-batch shapes and dtypes agree
  (others wait for a batch of their own), up to ``max_batch_size`` rows. A request that carries n
  rows counts n.
- The batch goes as soon as an instance is free and: it is full, or a preferred size is reached
  (the largest one that can be formed), or ``max_queue_delay_microseconds`` has passed since its
  oldest request arrived (0, the default, means at once). While every instance is busy requests
  accumulate, so under load batches grow by themselves.
- A full queue answers RESOURCE_EXHAUSTED at once. A request whose queue timeout passes is answered
  UNAVAILABLE (timeout_action REJECT) or moved behind every request that has not timed out
  (DELAY). A request whose client cancels or whose deadline passes is dropped from the queue and
  never executed.
- Without dynamic batching every request is its own batch, still queued FIFO over the instances.

Each instance has its own worker thread (see instance.py); the loop forms batches and hands back
results, and runs a batch itself only where the instance measured batches of that size cheaper
than the hop to its thread (tens to a few hundred microseconds). Each caller gets exactly its own
rows, as views of the batch output.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tensorgate.backends.base import BackendExecuteError, BackendInputError
from tensorgate.errors import Code, InvalidArgument, ServerError, Unavailable
from tensorgate.instance import BatchResult, Instance
from tensorgate.proto import model_config_pb2 as mc
from tensorgate.stats import ModelStats

log = logging.getLogger(__name__)

ShapeKey = tuple[tuple[str, tuple[int, ...], str], ...]


class TimeoutAction(enum.Enum):
    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True)
class QueuePolicy:
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_us: int = 0  # 0: no timeout
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0: unbounded


@dataclass(frozen=True)
class BatchingPolicy:
    """How one model version schedules: the dynamic_batching block of its config, resolved."""

    max_batch_size: int = 0
    dynamic: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    priority_levels: int = 1
    default_priority: int = 1
    queue_policies: tuple[QueuePolicy, ...] = (QueuePolicy(),)  # one per priority level

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> BatchingPolicy:
        if not config.HasField("dynamic_batching") or config.max_batch_size == 0:
            return cls(max_batch_size=config.max_batch_size)
        db = config.dynamic_batching
        levels = max(1, db.priority_levels)
        default_level = (db.default_priority_level or (levels + 1) // 2) if db.priority_levels else 1
        default = _queue_policy(db.default_queue_policy) if db.HasField("default_queue_policy") else QueuePolicy()
        policies = tuple(
            _queue_policy(db.priority_queue_policy[level]) if level in db.priority_queue_policy else default
            for level in range(1, levels + 1)
        )
        preferred = tuple(sorted({p for p in db.preferred_batch_size if 0 < p <= config.max_batch_size}))
        return cls(
            max_batch_size=config.max_batch_size,
            dynamic=True,
            preferred_batch_sizes=preferred,
            max_queue_delay_us=db.max_queue_delay_microseconds,
            priority_levels=levels,
            default_priority=min(max(1, default_level), levels),
            queue_policies=policies,
        )


def _queue_policy(p: mc.ModelQueuePolicy) -> QueuePolicy:
    action = TimeoutAction.DELAY if p.timeout_action == mc.ModelQueuePolicy.DELAY else TimeoutAction.REJECT
    return QueuePolicy(action, p.default_timeout_microseconds, p.allow_timeout_override, p.max_queue_size)


@dataclass
class InferRequest:
    """A decoded, validated request. ``batch_size`` is its rows (1 for a model without batching);
    ``priority`` 0 and ``timeout_us`` 0 mean the model's defaults."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    batch_size: int = 1
    priority: int = 0
    timeout_us: int = 0
    arrival_ns: int = field(default_factory=time.perf_counter_ns)


class _Pending:
    """A queued request and the future its caller awaits."""

    __slots__ = ("delayed", "future", "key", "level", "request", "taken", "timer")

    def __init__(
        self, request: InferRequest, future: asyncio.Future[dict[str, np.ndarray]], level: int, key: ShapeKey
    ) -> None:
        self.request = request
        self.future = future
        self.level = level
        self.key = key
        self.delayed = False  # timed out under timeout_action DELAY
        self.taken = False  # left the queue: dispatched, rejected or cancelled
        self.timer: asyncio.TimerHandle | None = None

    @property
    def live(self) -> bool:
        return not self.taken and not self.future.done()


def _shape_key(request: InferRequest, batched: bool) -> ShapeKey:
    cut = 1 if batched else 0
    return tuple(sorted((n, a.shape[cut:], a.dtype.str) for n, a in request.inputs.items()))


class Scheduler:
    def __init__(
        self,
        model: str,
        version: int,
        instances: list[Instance],
        stats: ModelStats,
        policy: BatchingPolicy | None = None,
        inline_below_us: int = 0,
    ) -> None:
        self.model = model
        self.inline_below_ns = inline_below_us * 1000
        self.version = version
        self.instances = instances
        self.stats = stats
        self.policy = policy or BatchingPolicy()
        self._batched = self.policy.max_batch_size > 0
        self._no_delay = not self.policy.dynamic or self.policy.max_queue_delay_us == 0
        levels = self.policy.priority_levels
        self._queues: list[deque[_Pending]] = [deque() for _ in range(levels)]
        self._delayed: list[deque[_Pending]] = [deque() for _ in range(levels)]
        self._queued = [0] * levels  # live entries per level (for max_queue_size)
        self._idle: list[Instance] = list(instances)
        self._delay_timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---- the request side ----

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        if self._closing:
            raise Unavailable(f"model '{self.model}' version {self.version} is unloading; retry")
        if (
            self._no_delay
            and self._idle
            and not any(self._queued)
            and self._idle[-1].cheap(self.inline_below_ns, request.batch_size)
        ):
            # Nothing queued, no queue delay to wait out, and a free instance whose batches are
            # cheaper than a thread hop: run it now, without the queue's bookkeeping (a future, a
            # queue entry, a shape key). The batch _form_batch would make is this request alone.
            return self._run_alone(request)
        entry = self._enqueue(request)
        self._in_flight += 1
        self._drained.clear()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # Client cancelled or its deadline passed: if it is still queued it never runs.
            self._forget(entry)
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

    def _level(self, request: InferRequest) -> int:
        """The queue (0 = highest priority) a request goes to; InvalidArgument if out of range."""
        policy = self.policy
        priority = request.priority or policy.default_priority
        if priority < 1 or priority > policy.priority_levels:
            raise InvalidArgument(
                f"priority {request.priority} is out of range for model '{self.model}': it has "
                f"{policy.priority_levels} priority level(s), 1 (highest) to {policy.priority_levels}, 0 = default"
            )
        return priority - 1

    def _run_alone(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Run one request on the event loop at once (see infer); same statistics and errors as a batch."""
        self._level(request)
        instance = self._idle.pop()
        started = time.perf_counter_ns()
        try:
            result = instance.run((request,), request.outputs, self._batched, inline=True)
        finally:
            self._idle.append(instance)
        (outputs,) = self._record([request], result, started, time.perf_counter_ns())
        if isinstance(outputs, ServerError):
            raise outputs
        return outputs

    def _enqueue(self, request: InferRequest) -> _Pending:
        policy = self.policy
        level = self._level(request)
        priority = level + 1
        queue_policy = policy.queue_policies[level]
        if queue_policy.max_queue_size and self._queued[level] >= queue_policy.max_queue_size:
            self._count_rejected(request)
            raise ServerError(
                f"model '{self.model}' queue is full (max_queue_size {queue_policy.max_queue_size} at priority "
                f"{priority}); retry later",
                Code.RESOURCE_EXHAUSTED,
            )
        loop = asyncio.get_running_loop()
        entry = _Pending(request, loop.create_future(), level, _shape_key(request, self._batched))
        timeout_us = queue_policy.default_timeout_us
        if request.timeout_us and queue_policy.allow_timeout_override:
            # As Triton: a request may shorten the default timeout, never lengthen it.
            timeout_us = min(timeout_us, request.timeout_us) if timeout_us else request.timeout_us
        if timeout_us:
            entry.timer = loop.call_later(timeout_us / 1e6, self._expire, entry, timeout_us)
        self._queues[level].append(entry)
        self._queued[level] += 1
        self._schedule()
        return entry

    def _forget(self, entry: _Pending) -> None:
        """Take an entry out of the queue (dispatched, rejected or cancelled); idempotent."""
        if entry.taken:
            return
        entry.taken = True
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        self._queued[entry.level] -= 1

    def _expire(self, entry: _Pending, timeout_us: int) -> None:
        entry.timer = None
        if not entry.live or entry.delayed:
            return
        action = self.policy.queue_policies[entry.level].timeout_action
        if action is TimeoutAction.DELAY:
            entry.delayed = True
            self._delayed[entry.level].append(entry)  # the stale copy in _queues is skipped
            return
        self._forget(entry)
        self._count_rejected(entry.request)
        entry.future.set_exception(
            Unavailable(
                f"request timed out after {timeout_us} us in the queue of model '{self.model}' "
                "(queue policy timeout); retry or raise the timeout"
            )
        )

    def _count_rejected(self, request: InferRequest) -> None:
        self.stats.record_request(False, time.perf_counter_ns() - request.arrival_ns)

    # ---- forming batches ----

    def _entries(self) -> Iterator[tuple[deque[_Pending], _Pending]]:
        """Queued live entries in dispatch order: levels by priority, delayed ones last. Dead heads
        (answered, cancelled, moved to the delayed queue) are dropped on the way."""
        for queues, delayed in ((self._queues, False), (self._delayed, True)):
            for q in queues:
                while q and (not q[0].live or q[0].delayed != delayed):
                    q.popleft()
                for entry in q:
                    if entry.live and entry.delayed == delayed:
                        yield q, entry

    def _form_batch(self, now_ns: int) -> list[_Pending] | None:
        """The next batch to dispatch now, or None (nothing queued, or waiting for the delay)."""
        found = self._entries()
        first = next(found, None)
        if first is None:
            return None
        head = first[1]
        if not self.policy.dynamic:
            return [head]
        limit = self.policy.max_batch_size
        preferred = self.policy.preferred_batch_sizes
        batch, rows = [head], head.request.batch_size
        last_preferred = 1 if rows in preferred else 0
        scanned = 0
        for _, entry in found:
            if rows >= limit or scanned > 4 * limit:
                break
            scanned += 1
            if entry.key != head.key or rows + entry.request.batch_size > limit:
                continue
            batch.append(entry)
            rows += entry.request.batch_size
            if rows in preferred:
                last_preferred = len(batch)
        if rows >= limit:
            return batch
        if last_preferred:
            return batch[:last_preferred]
        delay_ns = self.policy.max_queue_delay_us * 1000
        oldest = min(e.request.arrival_ns for e in batch)
        if delay_ns == 0 or now_ns - oldest >= delay_ns:
            return batch
        if self._delay_timer is None:
            wait = (oldest + delay_ns - now_ns) / 1e9
            self._delay_timer = asyncio.get_running_loop().call_later(wait, self._delay_done)
        return None

    def _delay_done(self) -> None:
        self._delay_timer = None
        self._schedule()

    def _schedule(self) -> None:
        """Dispatch batches while an instance is free and a batch is ready."""
        while self._idle:
            batch = self._form_batch(time.perf_counter_ns())
            if batch is None:
                return
            for entry in batch:
                self._forget(entry)
            instance = self._idle.pop()
            if instance.cheap(self.inline_below_ns, sum(e.request.batch_size for e in batch)):
                # A batch that typically runs in up to a few hundred microseconds costs less on the loop
                # than the hop to the worker thread and back (measured: bench/RESULTS.md).
                started = time.perf_counter_ns()
                result = instance.run([e.request for e in batch], self._outputs(batch), self._batched, inline=True)
                self._idle.append(instance)
                self._finish(batch, result, started)
                continue
            self._dispatch(instance, batch)

    @staticmethod
    def _outputs(batch: list[_Pending]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for e in batch for name in e.request.outputs))

    def _dispatch(self, instance: Instance, batch: list[_Pending]) -> None:
        requests = [e.request for e in batch]
        outputs = self._outputs(batch)
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()

        def done(result: BatchResult) -> None:
            self._idle.append(instance)
            self._finish(batch, result, started)
            self._schedule()

        def from_worker(result: BatchResult) -> None:
            loop.call_soon_threadsafe(done, result)

        instance.submit(requests, outputs, self._batched, from_worker)

    def _finish(self, batch: list[_Pending], result: BatchResult, started_ns: int) -> None:
        answers = self._record([e.request for e in batch], result, started_ns, time.perf_counter_ns())
        for entry, answer in zip(batch, answers, strict=True):
            if entry.future.done():
                continue
            if isinstance(answer, ServerError):
                entry.future.set_exception(answer)
            else:
                entry.future.set_result(answer)

    def _record(
        self, requests: list[InferRequest], result: BatchResult, started_ns: int, now_ns: int
    ) -> list[dict[str, np.ndarray] | ServerError]:
        """Statistics of a finished batch, and each request's answer (its outputs or its error)."""
        if result.error is None:
            self.stats.record_execution(result.rows, result.input_ns, result.infer_ns, result.output_ns)
        per_request: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        if result.per_request is not None:
            per_request = list(result.per_request)
        return [
            self._answer(request, result, outputs, started_ns, now_ns)
            for request, outputs in zip(requests, per_request, strict=True)
        ]

    def _answer(
        self,
        request: InferRequest,
        result: BatchResult,
        outputs: dict[str, np.ndarray] | None,
        started_ns: int,
        now_ns: int,
    ) -> dict[str, np.ndarray] | ServerError:
        """Count one request of a finished batch; its outputs, or the error to answer it with."""
        if result.error is not None or outputs is None:
            self.stats.record_request(False, now_ns - request.arrival_ns)
            return self._error(result.error, request)
        self.stats.record_request(
            True,
            now_ns - request.arrival_ns,
            started_ns - request.arrival_ns,
            result.input_ns,
            result.infer_ns,
            result.output_ns,
            samples=request.batch_size,
        )
        if len(outputs) == len(request.outputs):
            return outputs
        return {name: outputs[name] for name in request.outputs}

    def _error(self, error: BaseException | None, request: InferRequest) -> ServerError:
        if isinstance(error, BackendInputError):
            return InvalidArgument(str(error))
        log.error(
            "event=execute_failed model=%s version=%d request_id=%r error=%r",
            self.model,
            self.version,
            request.id,
            str(error),
        )
        if isinstance(error, BackendExecuteError):
            return ServerError(f"model '{self.model}' failed to execute: {error}", Code.INTERNAL)
        return ServerError(f"model '{self.model}' failed: {error!r}", Code.INTERNAL)

    # ---- shutdown ----

    async def close(self) -> None:
        """Refuse new requests, let queued and running ones finish, then release the instances."""
        self._closing = True
        await self._drained.wait()
        await asyncio.gather(*(asyncio.to_thread(i.close) for i in self.instances))
