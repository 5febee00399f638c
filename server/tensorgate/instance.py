"""A model instance: one loaded backend and the long-lived worker thread that runs it.

The event loop hands a batch of requests to the instance's own thread, which concatenates the
inputs (one copy, none for a batch of one), executes, and slices each request's rows back out of
the outputs as views; the scheduler runs batches measured cheaper than that hand-over on the
loop itself instead (scheduler/placement.py). One thread per instance keeps the engine single-threaded from our
side; the engine's own intra-op threads do the parallel work.

The statistics' phases are Triton's: compute_input is gathering the batch plus, on a GPU, copying it to
the device; compute_infer the engine's run; compute_output copying back plus slicing the outputs. A
backend that copies to a device reports those copies (``ReportsPhases``) and they move out of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tensorgate.backends.base import Backend, BackendExecuteError, ReportsPhases
from tensorgate.errors import bounded
from tensorgate.request import InferRequest, Outputs

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchResult:
    """Each request's outputs (in batch order), or the error that failed the whole batch; or, for a
    batch the engine failed and that was run again one request at a time, ``alone``: each request's
    own run (its outputs or its error), in batch order."""

    per_request: list[Outputs] | None = None
    error: BaseException | None = None
    rows: int = 0  # samples in the batch (a request of n rows counts n)
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    total_ns: int = 0  # the three together
    alone: list[BatchResult] | None = None


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


class Instance:
    def __init__(self, model: str, index: int, backend: Backend) -> None:
        self.name = f"{model}_{index}"
        self.index = index
        self.backend = backend
        # Checked once: the per-batch path only reads an attribute.
        self._phases = backend if isinstance(backend, ReportsPhases) else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tg-{self.name}")
        self._stopping = False  # a stop was asked (terminate) and not yet reset: no batch is run again

    def submit(
        self,
        requests: Sequence[InferRequest],
        outputs: Sequence[str],
        batched: bool,
        done: Callable[[BatchResult], object],
    ) -> None:
        """Run the batch on this instance's thread; ``done`` is called on that thread."""
        try:
            future: Future[BatchResult] = self._executor.submit(self.run, requests, outputs, batched)
        except RuntimeError as exc:  # closed: fail this batch rather than leave its callers waiting
            done(BatchResult(error=BackendExecuteError(f"instance {self.name} is closed ({exc})")))
            return
        future.add_done_callback(lambda f: done(f.result()))

    def terminate(self) -> None:
        """Stop the batch in progress (the engine's stop, which holds until :meth:`reset_terminate`)."""
        self._stopping = True
        self.backend.terminate()

    def reset_terminate(self) -> None:
        self._stopping = False
        self.backend.reset_terminate()

    def run(self, requests: Sequence[InferRequest], outputs: Sequence[str], batched: bool) -> BatchResult:
        """Run one batch, here and now (on the event loop, or on the worker thread via ``submit``).

        When the engine fails a batch of several requests, each is run again alone: one request the
        engine cannot take (an index out of a table's range, a value it refuses) fails only itself, not
        the requests batched with it, which would otherwise get its error and see its values."""
        result = BatchResult(rows=requests[0].batch_size if len(requests) == 1 else sum(r.batch_size for r in requests))
        try:
            t0 = time.perf_counter_ns()
            inputs = gather_inputs(requests, batched)
            t1 = time.perf_counter_ns()
            try:
                produced = self.backend.execute(inputs, outputs)
            except BackendExecuteError as exc:
                if len(requests) == 1 or self._stopping:  # a stopped batch is not run again
                    raise
                log.warning(
                    "event=batch_failed_rerun_alone instance=%s requests=%d error=%s",
                    self.name,
                    len(requests),
                    bounded(str(exc)),  # as event=execute_failed writes it
                )
                return BatchResult(rows=result.rows, alone=[self.run((r,), outputs, batched) for r in requests])
            t2 = time.perf_counter_ns()
            result.per_request = split_outputs(requests, produced, batched)
            t3 = time.perf_counter_ns()
            result.input_ns, result.infer_ns, result.output_ns = t1 - t0, t2 - t1, t3 - t2
            if self._phases is not None:
                phases = self._phases.last_phases()
                copy_in = min(max(phases.copy_in_ns, 0), result.infer_ns)
                copy_out = min(max(phases.copy_out_ns, 0), result.infer_ns - copy_in)
                result.input_ns += copy_in
                result.output_ns += copy_out
                result.infer_ns -= copy_in + copy_out
            result.total_ns = t3 - t0
        except Exception as exc:  # handed to every caller of the batch
            result.error = exc
            result.per_request = None
        return result

    def close(self) -> None:
        """Wait for the batch in progress (if any), then release the engine."""
        self._executor.shutdown(wait=True)
        self.backend.close()
