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
import logging
import time
from collections.abc import Sequence

from tensorgate.backends.base import BackendExecuteError, BackendInputError
from tensorgate.errors import Code, InvalidArgument, ServerError, Unavailable
from tensorgate.instance import BatchResult, Instance
from tensorgate.model_config import BatchingPolicy
from tensorgate.request import InferRequest, Outputs
from tensorgate.scheduler.placement import Placement
from tensorgate.scheduler.queue import Pending, PriorityQueue
from tensorgate.stats import Failure, ModelStats

log = logging.getLogger(__name__)

Answer = Outputs | ServerError


class Scheduler:
    def __init__(
        self,
        model: str,
        version: int,
        instances: list[Instance],
        stats: ModelStats,
        policy: BatchingPolicy | None = None,
        inline_execution_us: int = 0,
    ) -> None:
        self.model = model
        self.version = version
        self.instances = instances
        self.stats = stats
        self.policy = policy or BatchingPolicy()
        self.placements = [Placement(inline_execution_us) for _ in instances]  # by Instance.index
        self._batched = self.policy.max_batch_size > 0
        self._no_delay = not self.policy.dynamic or self.policy.max_queue_delay_us == 0
        self._queue = PriorityQueue(model, self.policy, self._schedule, self._count_rejected)
        self._idle: list[Instance] = list(instances)
        self._in_flight = 0
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def in_flight(self) -> int:
        """Requests queued or running (the run-at-once path aside, which never waits)."""
        return self._in_flight

    # ---- the request side ----

    async def infer(self, request: InferRequest) -> Outputs:
        if self._closing:
            raise Unavailable(f"model '{self.model}' version {self.version} is unloading; retry")
        if self._no_delay and self._idle and not self._queue.depth:
            instance = self._idle[-1]
            nbytes = request.nbytes
            if self.placements[instance.index].inline(nbytes):
                # Nothing queued, no queue delay to wait out, and a free instance whose batches run on
                # the loop: run it now, without the queue's bookkeeping (a future, a queue entry, a
                # shape key). The batch the queue would form is this request alone.
                self._queue.level(request)  # the same priority check as a queued request
                self._idle.pop()
                (answer,) = self._run_inline(instance, (request,), request.outputs, nbytes)
                if isinstance(answer, ServerError):
                    raise answer
                return answer
        entry = self._queue.push(request)
        self._in_flight += 1
        self._drained.clear()
        self._schedule()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # Client cancelled or its deadline passed: if it is still queued it never runs.
            if not entry.taken:
                self._queue.forget(entry)
                self._count_failed(request, Failure.CANCELED)
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

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

        def done(result: BatchResult) -> None:
            _settle(batch, self._finished(instance, requests, result, started, nbytes, inline=False))
            self._schedule()

        instance.submit(requests, outputs, self._batched, lambda result: loop.call_soon_threadsafe(done, result))

    def _run_inline(
        self, instance: Instance, requests: Sequence[InferRequest], outputs: Sequence[str], nbytes: int
    ) -> list[Answer]:
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
    ) -> list[Answer]:
        """A batch ended: its instance is free again, its cost and statistics are recorded; returns
        each request's answer (its outputs or its error), in batch order."""
        self._idle.append(instance)
        now_ns = time.perf_counter_ns()
        if result.error is None:
            self.placements[instance.index].record(nbytes, result.total_ns, inline)
            self.stats.record_execution(result.rows, result.input_ns, result.infer_ns, result.output_ns)
        per_request: Sequence[Outputs | None] = result.per_request or [None] * len(requests)
        return [
            self._answer(request, result, outputs, started_ns, now_ns)
            for request, outputs in zip(requests, per_request, strict=True)
        ]

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


def _settle(batch: Sequence[Pending], answers: Sequence[Answer]) -> None:
    for entry, answer in zip(batch, answers, strict=True):
        if entry.future.done():
            continue
        if isinstance(answer, ServerError):
            entry.future.set_exception(answer)
        else:
            entry.future.set_result(answer)
