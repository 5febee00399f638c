"""The scheduler of one model version: takes requests, hands them to a free instance, answers.

This first scheduler runs each request as its own batch on the next free instance (FIFO across
waiters). Dynamic batching replaces the dispatch step, not this interface: ``infer`` takes one
request and returns exactly that request's outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from tensorgate.backends.base import BackendExecuteError, BackendInputError
from tensorgate.errors import Code, InvalidArgument, ServerError, Unavailable
from tensorgate.instance import Instance
from tensorgate.stats import ModelStats

log = logging.getLogger(__name__)


@dataclass
class InferRequest:
    """A decoded, validated request. ``batch_size`` is its rows (1 for a model without batching)."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    batch_size: int = 1
    arrival_ns: int = field(default_factory=time.perf_counter_ns)


class Scheduler:
    def __init__(self, model: str, version: int, instances: list[Instance], stats: ModelStats) -> None:
        self.model = model
        self.version = version
        self.instances = instances
        self.stats = stats
        self._idle: asyncio.Queue[Instance] = asyncio.Queue()
        for instance in instances:
            self._idle.put_nowait(instance)
        self._in_flight = 0
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        if self._closing:
            raise Unavailable(f"model '{self.model}' version {self.version} is unloading; retry")
        self._in_flight += 1
        self._drained.clear()
        ok = False
        queue_ns = infer_ns = 0
        try:
            instance = await self._idle.get()
            try:
                queue_ns = time.perf_counter_ns() - request.arrival_ns
                outputs, infer_ns = await instance.run(request.inputs, request.outputs)
            finally:
                self._idle.put_nowait(instance)
            self.stats.record_execution(request.batch_size, 0, infer_ns, 0)
            ok = True
            return outputs
        except BackendInputError as exc:
            raise InvalidArgument(str(exc)) from None
        except BackendExecuteError as exc:
            log.error("event=execute_failed model=%s version=%d request_id=%r error=%r",
                      self.model, self.version, request.id, str(exc))
            raise ServerError(f"model '{self.model}' failed to execute: {exc}", Code.INTERNAL) from None
        finally:
            total_ns = time.perf_counter_ns() - request.arrival_ns
            self.stats.record_request(ok, total_ns, queue_ns, 0, infer_ns, 0, samples=request.batch_size)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

    async def close(self) -> None:
        """Refuse new requests, let in-flight ones finish, then release the instances."""
        self._closing = True
        await self._drained.wait()
        await asyncio.gather(*(asyncio.to_thread(i.close) for i in self.instances))
