"""A model instance: one loaded backend and the long-lived worker thread that runs it.

The event loop hands a batch of requests to the instance's own thread, which concatenates the
inputs (one copy, none for a batch of one), executes, and slices each request's rows back out of
the outputs as views; only batches measured cheaper than that hand-over, at their size, run on
the loop itself (``cheap``). One thread per instance keeps the engine single-threaded from our
side; the engine's own intra-op threads do the parallel work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tensorgate.backends.base import Backend, BackendExecuteError

Outputs = dict[str, np.ndarray]


class InferRequest(Protocol):
    """What an instance needs of a request (the scheduler's InferRequest)."""

    @property
    def inputs(self) -> dict[str, np.ndarray]: ...

    @property
    def batch_size(self) -> int: ...


@dataclass
class BatchResult:
    """Each request's outputs (in batch order), or the error that failed the whole batch."""

    per_request: list[Outputs] | None = None
    error: BaseException | None = None
    rows: int = 0  # samples in the batch (a request of n rows counts n)
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


def gather_inputs(requests: Sequence[InferRequest], batched: bool) -> dict[str, np.ndarray]:
    """One batch from several requests: their arrays concatenated along the batch dimension."""
    if len(requests) == 1:
        return requests[0].inputs
    if not batched:
        raise ValueError("only models with max_batch_size > 0 can batch requests")
    return {name: np.concatenate([r.inputs[name] for r in requests]) for name in requests[0].inputs}


def split_outputs(requests: Sequence[InferRequest], outputs: Outputs, batched: bool) -> list[Outputs]:
    """Each request's rows of the batch outputs, as views."""
    if len(requests) == 1:
        return [outputs]
    rows = sum(r.batch_size for r in requests)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise BackendExecuteError(
                f"output '{name}' has shape {list(array.shape)}, whose first dimension is not the batch of {rows}; "
                "the model cannot be batched (set max_batch_size: 0 or remove dynamic_batching)"
            )
    parts: list[Outputs] = []
    start = 0
    for r in requests:
        stop = start + r.batch_size
        parts.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return parts


class RecentMedian:
    """The median of the last ``size`` durations recorded (ns); -1 until there is one.

    A median, not a moving average: one batch that the OS preempted, or a profiler paused, for
    milliseconds would pull an average of microsecond batches over the inline limit for hundreds of
    batches, and under load (or under py-spy) that happens every few seconds. The median follows a
    real change of cost within half a window."""

    __slots__ = ("_next", "_ring", "_size", "value")

    def __init__(self, size: int = 15) -> None:
        self._size = size
        self._ring: list[int] = []
        self._next = 0
        self.value = -1

    def add(self, ns: int) -> None:
        ring = self._ring
        if len(ring) < self._size:
            ring.append(ns)
        else:
            ring[self._next] = ns
            self._next = (self._next + 1) % self._size
        self.value = sorted(ring)[len(ring) // 2]


class SizeClass:
    """What an instance has measured of its batches of one size class: 1 row, 2-3, 4-7, 8-15, ...
    (``rows.bit_length()``). A model cheap at one row can take milliseconds at 64, so each class
    earns its place on the loop by itself."""

    __slots__ = ("executions", "inline", "since_inline", "worker")

    def __init__(self) -> None:
        self.executions = 0
        # Typical whole batches (gather + execute + split), on the worker thread and on the event loop.
        self.worker = RecentMedian()
        self.inline = RecentMedian()
        self.since_inline = 0  # executions on the worker since the last one on the loop


class Instance:
    # Executions of a size class measured (on the worker thread) before its batches may run inline.
    WARMUP_EXECUTIONS = 16
    # A batch measured on the worker thread takes longer than the same batch on the loop (it waits
    # there for the GIL while the loop thread holds it), so a model measured only on the worker might
    # never get to run inline. Batches typically under PROBE_BELOW x the limit there run inline once
    # every PROBE_EVERY executions of their class, which measures them where the choice matters.
    PROBE_BELOW = 3
    PROBE_EVERY = 64

    def __init__(self, model: str, index: int, backend: Backend) -> None:
        self.name = f"{model}_{index}"
        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tg-{self.name}")
        self._classes: dict[int, SizeClass] = {}

    def size_class(self, rows: int) -> SizeClass:
        key = rows.bit_length()
        found = self._classes.get(key)
        if found is None:
            found = self._classes[key] = SizeClass()
        return found

    def inline_ns(self, rows: int = 1) -> int:
        """A typical batch of ``rows``' size class on the event loop (ns); -1 until measured there."""
        size = self._classes.get(rows.bit_length())
        return -1 if size is None else size.inline.value

    def cheap(self, limit_ns: int, rows: int) -> bool:
        """Whether a batch of ``rows`` should run on the event loop: batches of its size class
        typically take under ``limit_ns`` there, so handing it to the worker thread (two thread
        wake-ups, and the worker's Python waiting for the GIL: ~100 us idle, ~250 us of CPU under load
        here) would cost more than running it; or a probe is due (see above)."""
        if limit_ns <= 0:
            return False
        size = self._classes.get(rows.bit_length())
        if size is None or size.executions < self.WARMUP_EXECUTIONS:
            return False
        inline = size.inline.value
        known = inline if inline >= 0 else size.worker.value  # the loop's figure once there is one
        if known < limit_ns:
            return True
        return size.worker.value < self.PROBE_BELOW * limit_ns and size.since_inline >= self.PROBE_EVERY

    def submit(
        self,
        requests: Sequence[InferRequest],
        outputs: Sequence[str],
        batched: bool,
        done: Callable[[BatchResult], None],
    ) -> None:
        """Run the batch on this instance's thread; ``done`` is called on that thread."""
        try:
            future: Future[BatchResult] = self._executor.submit(self.run, requests, outputs, batched)
        except RuntimeError as exc:  # closed: fail this batch rather than leave its callers waiting
            done(BatchResult(error=BackendExecuteError(f"instance {self.name} is closed ({exc})")))
            return
        future.add_done_callback(lambda f: done(f.result()))

    def run(
        self, requests: Sequence[InferRequest], outputs: Sequence[str], batched: bool, inline: bool = False
    ) -> BatchResult:
        """Run one batch, here and now (``inline``: on the event loop, else on the worker thread)."""
        result = BatchResult(rows=sum(r.batch_size for r in requests))
        try:
            t0 = time.perf_counter_ns()
            inputs = gather_inputs(requests, batched)
            t1 = time.perf_counter_ns()
            produced = self.backend.execute(inputs, outputs)
            t2 = time.perf_counter_ns()
            result.per_request = split_outputs(requests, produced, batched)
            t3 = time.perf_counter_ns()
            result.input_ns, result.infer_ns, result.output_ns = t1 - t0, t2 - t1, t3 - t2
            size = self.size_class(result.rows)
            size.executions += 1
            if inline:
                size.since_inline = 0
                size.inline.add(t3 - t0)
            else:
                size.since_inline += 1
                size.worker.add(t3 - t0)
        except Exception as exc:  # handed to every caller of the batch
            result.error = exc
            result.per_request = None
        return result

    def close(self) -> None:
        """Wait for the batch in progress (if any), then release the engine."""
        self._executor.shutdown(wait=True)
        self.backend.close()
