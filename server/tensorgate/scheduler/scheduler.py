"""The scheduler of one model version: queues requests, forms batches, runs them on free instances.

Triton's dynamic batcher semantics (the queue and its policies: queue.py), so existing config.pbtxt
files mean the same thing. The batch goes as soon as an instance is free and the queue has one
ready; while every instance is busy requests accumulate, so under load batches grow by themselves.
A request whose client cancels or whose deadline passes is dropped from the queue and never run.

Every batch runs through one path (``_run``): placement.py decides whether it runs on the event
loop or on the instance's worker thread; either way ``_finished`` frees the instance, records the
cost and the statistics and hands each caller exactly its own rows, as views of the batch output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence

from tensorgate.backends.base import BackendExecuteError, BackendInputError
from tensorgate.errors import Code, InvalidArgument, ServerError, Unavailable, bounded, clip
from tensorgate.instance import BatchResult, Instance
from tensorgate.model_config import BatchingPolicy
from tensorgate.request import InferRequest, Outputs
from tensorgate.scheduler.placement import Placement
from tensorgate.scheduler.queue import Pending, PriorityQueue
from tensorgate.stats import Failure, ModelStats

log = logging.getLogger(__name__)

Answer = Outputs | ServerError
OVERLOAD_LOG_SECS = 10.0  # at most one overload warning per model version this often
# The event loop's lateness below this is a timer's ordinary jitter (about 1 ms on an idle server), not a
# backlog: a bound smaller than it (--max-queue-wait-ms 1) refuses on the loop's lag only beyond it.
LOOP_LAG_FLOOR_NS = 20_000_000


class Scheduler:
    def __init__(
        self,
        model: str,
        version: int,
        instances: list[Instance],
        stats: ModelStats,
        policy: BatchingPolicy | None = None,
        inline_execution_us: int = 0,
        max_queue_wait_ms: int = 0,
        execution_timeout_ms: int = 0,
    ) -> None:
        self.model = model
        self.version = version
        self.instances = instances
        self.stats = stats
        self.policy = policy or BatchingPolicy()
        # By Instance.index; a GPU engine's instances never run inline (placement.py).
        self.placements = [Placement.for_engine(i.backend.engine, inline_execution_us) for i in instances]
        self._batched = self.policy.max_batch_size > 0
        self._no_delay = not self.policy.dynamic or self.policy.max_queue_delay_us == 0
        self._queue = PriorityQueue(model, self.policy, self._schedule, self._count_rejected)
        self._idle: list[Instance] = list(instances)
        self._in_flight = 0
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()
        self.max_queue_wait_ms = max_queue_wait_ms  # 0: no admission bound
        self.execution_timeout_ms = execution_timeout_ms  # 0: none
        self._request_ns = 0  # recent cost of one request of a batch, per instance (moving average)
        self._running: dict[int, list[Pending]] = {}  # Instance.index -> its batch on the worker thread
        self._stopped: set[int] = set()  # instances whose batch was stopped at the execution timeout
        self.refused = 0  # requests refused at once because the queue was too long (admission)
        self._refusals_logged_at = -OVERLOAD_LOG_SECS

    @property
    def in_flight(self) -> int:
        """Requests queued or running (the run-at-once path aside, which never waits)."""
        return self._in_flight

    # ---- the request side ----

    async def infer(self, request: InferRequest, held: bool = False) -> Outputs:
        """Run ``request`` in a batch and return its outputs; ``held``: the caller holds the scheduler
        (:meth:`held`), so it is taken even if closing began after it chose this version."""
        if self._closing and not held:
            raise Unavailable(f"model '{self.model}' version {self.version} is unloading; retry")
        if self._no_delay and self._idle and not self._queue.depth:
            instance = self._idle[-1]
            nbytes = request.nbytes
            if self.placements[instance.index].inline(nbytes):
                # Nothing queued, no queue delay to wait out, and a free instance whose batches run on
                # the loop: run it now, without the queue's bookkeeping (a future, a queue entry, a
                # shape key). The batch the queue would form is this request alone.
                self._idle.pop()
                (answer,) = self._run_inline(instance, (request,), request.outputs, nbytes)
                if isinstance(answer, ServerError):
                    raise answer
                assert answer is not None  # None only for batches run with their queue entries
                return answer
        entry = self._queue.push(request)
        counted = not held  # a held request is counted once, by held()
        if counted:
            self._in_flight += 1
            self._drained.clear()
        self._schedule()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # Client cancelled or its deadline passed: if it is still queued it never runs; if its
            # batch is running and every request of it has gone, the run is stopped.
            if not entry.taken:
                self._queue.forget(entry)
                self._count_failed(request, Failure.CANCELED)
            else:
                self._stop_if_abandoned(entry)
            raise
        finally:
            if counted:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._drained.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """For a request that has chosen this version and awaits something (a decode on a worker thread)
        before it calls :meth:`infer`: close() waits for it, as for a queued request, so an unload or a
        reload that retires the version meanwhile does not turn it away."""
        self._in_flight += 1
        self._drained.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

    def admit(self, loop_lag_ns: int = 0) -> None:
        """Refuse a new request at once (RESOURCE_EXHAUSTED, counted REJECTED) when the requests
        queued ahead of it would take longer than ``max_queue_wait_ms`` to run, as the recent cost
        of a request says, or when the event loop itself runs that far behind (the request waited
        that long before it got here): under overload the wait of those admitted stays bounded,
        and the excess is told so at once instead of timing out."""
        bound_ns = self.max_queue_wait_ms * 1_000_000
        if not bound_ns:
            return
        if loop_lag_ns > bound_ns and loop_lag_ns > LOOP_LAG_FLOOR_NS:
            self._refuse(loop_lag_ns, f"the server runs {loop_lag_ns // 1_000_000} ms behind in taking requests")
        if not self._queue.depth:
            return
        wait_ns = self._queue.depth * self._request_ns // len(self.instances)
        if wait_ns > bound_ns:
            self._refuse(
                wait_ns, f"the {self._queue.depth} requests queued ahead would take about {wait_ns // 1_000_000} ms"
            )

    def _refuse(self, wait_ns: int, why: str) -> None:
        self.refused += 1
        self.stats.record_request(False, 0, failure=Failure.REJECTED)
        now = time.monotonic()
        if now - self._refusals_logged_at >= OVERLOAD_LOG_SECS:
            self._refusals_logged_at = now
            log.warning(
                "event=overloaded model=%s version=%d queued=%d expected_wait_ms=%d max_queue_wait_ms=%d "
                "refused_total=%d",
                self.model,
                self.version,
                self._queue.depth,
                wait_ns // 1_000_000,
                self.max_queue_wait_ms,
                self.refused,
            )
        raise ServerError(
            f"model '{self.model}' version {self.version} is overloaded: {why}, above its bound of "
            f"{self.max_queue_wait_ms} ms (parameter max_queue_wait_ms, or --max-queue-wait-ms); retry later, or "
            "add instances or replicas",
            Code.RESOURCE_EXHAUSTED,
        )

    @property
    def queue_depth(self) -> int:
        """Requests waiting in the queue (not yet in a batch)."""
        return self._queue.depth

    def _count_rejected(self, request: InferRequest) -> None:
        self._count_failed(request, Failure.REJECTED)

    def _count_failed(self, request: InferRequest, failure: Failure) -> None:
        """A request that never ran: refused, timed out or cancelled while queued."""
        self.stats.record_request(False, time.perf_counter_ns() - request.arrival_ns, failure=failure)

    # ---- running batches ----

    def _schedule(self) -> None:
        """Run batches while an instance is free and the queue has a batch ready."""
        while self._idle:
            batch = self._queue.take_batch(time.perf_counter_ns())
            if batch is None:
                return
            self._run(self._idle.pop(), batch)

    def _run(self, instance: Instance, batch: list[Pending]) -> None:
        """The one path a queued batch runs: where placement says, then its callers are answered."""
        requests = [e.request for e in batch]
        outputs = tuple(dict.fromkeys(name for r in requests for name in r.outputs))
        nbytes = requests[0].nbytes if len(requests) == 1 else sum(r.nbytes for r in requests)
        if self.placements[instance.index].inline(nbytes):
            _settle(batch, self._run_inline(instance, requests, outputs, nbytes))
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        self._running[instance.index] = batch
        timeout = self.execution_timeout_ms
        timer = loop.call_later(timeout / 1000, self._timed_out, instance, batch) if timeout else None

        def done(result: BatchResult) -> None:
            del self._running[instance.index]
            if timer is not None:
                timer.cancel()
            if instance.index in self._stopped:
                self._stopped.discard(instance.index)
                instance.reset_terminate()  # its stopped batch has returned: the next one runs
                ran_ms = (time.perf_counter_ns() - started) // 1_000_000
                log.info("event=instance_recovered instance=%s ran_ms=%d", instance.name, ran_ms)
            _settle(batch, self._finished(instance, requests, result, started, nbytes, inline=False, entries=batch))
            self._schedule()

        instance.submit(requests, outputs, self._batched, lambda result: loop.call_soon_threadsafe(done, result))

    def _timed_out(self, instance: Instance, batch: list[Pending]) -> None:
        """A batch ran past the execution timeout: its requests fail now (UNAVAILABLE) and the run
        is stopped, so the instance serves again (it rejoins when the engine returns)."""
        error = Unavailable(
            f"model '{self.model}' version {self.version}: the batch ran past the execution timeout of "
            f"{self.execution_timeout_ms} ms (parameter execution_timeout_ms, or --execution-timeout-ms) and was "
            "stopped; retry, or raise the timeout"
        )
        for entry in batch:
            if not entry.future.done():
                self._count_failed(entry.request, Failure.OTHER)
                entry.future.set_exception(error)
        log.error(
            "event=execution_timeout model=%s version=%d instance=%s requests=%d execution_timeout_ms=%d",
            self.model,
            self.version,
            instance.name,
            len(batch),
            self.execution_timeout_ms,
        )
        self._stopped.add(instance.index)
        instance.terminate()

    def _stop_if_abandoned(self, entry: Pending) -> None:
        """Stop a running batch once every request in it has gone (cancelled, past its deadline)."""
        for index, batch in self._running.items():
            if entry in batch:
                if all(e.future.done() for e in batch) and index not in self._stopped:
                    log.info(
                        "event=batch_abandoned model=%s version=%d requests=%d", self.model, self.version, len(batch)
                    )
                    self._stopped.add(index)
                    self.instances[index].terminate()
                return

    def _run_inline(
        self, instance: Instance, requests: Sequence[InferRequest], outputs: Sequence[str], nbytes: int
    ) -> list[Answer | None]:
        started = time.perf_counter_ns()
        result = instance.run(requests, outputs, self._batched)
        return self._finished(instance, requests, result, started, nbytes, inline=True)

    def _finished(
        self,
        instance: Instance,
        requests: Sequence[InferRequest],
        result: BatchResult,
        started_ns: int,
        nbytes: int,
        inline: bool,
        entries: Sequence[Pending] | None = None,
    ) -> list[Answer | None]:
        """A batch ended: its instance is free again, its cost and statistics are recorded; returns
        each request's answer (its outputs or its error), in batch order; None for a request already
        answered (at the execution timeout) or that left while its run was stopped."""
        self._idle.append(instance)
        now_ns = time.perf_counter_ns()
        if result.alone is not None:
            return self._finished_alone(instance, requests, result.alone, started_ns, inline, entries, now_ns)
        if result.error is None:
            self.placements[instance.index].record(nbytes, result.total_ns, inline)
            self.stats.record_execution(result.rows, result.input_ns, result.infer_ns, result.output_ns)
            each = result.total_ns // len(requests)
            self._request_ns = each if not self._request_ns else (7 * self._request_ns + each) // 8
        per_request: Sequence[Outputs | None] = result.per_request or [None] * len(requests)
        if entries is None:
            if len(requests) == 1:  # the run-at-once path's batch of one
                return [self._answer(requests[0], result, per_request[0], started_ns, now_ns)]
            return [
                self._answer(request, result, outputs, started_ns, now_ns)
                for request, outputs in zip(requests, per_request, strict=True)
            ]
        answers: list[Answer | None] = []
        for entry, outputs in zip(entries, per_request, strict=True):
            answers.append(self._settled_answer(entry, result, outputs, started_ns, now_ns))
        return answers

    def _finished_alone(
        self,
        instance: Instance,
        requests: Sequence[InferRequest],
        runs: Sequence[BatchResult],
        started_ns: int,
        inline: bool,
        entries: Sequence[Pending] | None,
        now_ns: int,
    ) -> list[Answer | None]:
        """A batch the engine failed, run again one request at a time (Instance.run): each run is an
        execution of its own, and each request is answered from its own run."""
        for request, run in zip(requests, runs, strict=True):
            if run.error is None:
                self.placements[instance.index].record(request.nbytes, run.total_ns, inline)
                self.stats.record_execution(run.rows, run.input_ns, run.infer_ns, run.output_ns)
        own = [run.per_request[0] if run.per_request else None for run in runs]
        if entries is None:
            return [
                self._answer(request, run, outputs, started_ns, now_ns)
                for request, run, outputs in zip(requests, runs, own, strict=True)
            ]
        return [
            self._settled_answer(entry, run, outputs, started_ns, now_ns)
            for entry, run, outputs in zip(entries, runs, own, strict=True)
        ]

    def _settled_answer(
        self, entry: Pending, result: BatchResult, outputs: Outputs | None, started_ns: int, now_ns: int
    ) -> Answer | None:
        """The answer of a queued request whose run ended; None if it was answered already (failed at
        the execution timeout, and counted then) or left while its run was stopped."""
        future = entry.future
        if future.done() and not future.cancelled():
            return None
        if future.cancelled() and result.error is not None:
            self._count_failed(entry.request, Failure.CANCELED)  # its run was stopped: all had left
            return None
        return self._answer(entry.request, result, outputs, started_ns, now_ns)

    def _answer(
        self, request: InferRequest, result: BatchResult, outputs: Outputs | None, started_ns: int, now_ns: int
    ) -> Answer:
        """Count one request of a finished batch; its outputs, or the error to answer it with."""
        if result.error is not None or outputs is None:
            engine = isinstance(result.error, BackendExecuteError)
            failure = Failure.BACKEND if engine else Failure.OTHER
            self.stats.record_request(False, now_ns - request.arrival_ns, failure=failure)
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
            "event=execute_failed model=%s version=%d request_id=%s error=%s",
            self.model,
            self.version,
            clip(request.id),  # a client's string, of any length
            bounded(str(error)),
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


def _settle(batch: Sequence[Pending], answers: Sequence[Answer | None]) -> None:
    for entry, answer in zip(batch, answers, strict=True):
        if answer is None or entry.future.done():
            continue
        if isinstance(answer, ServerError):
            entry.future.set_exception(answer)
        else:
            entry.future.set_result(answer)
