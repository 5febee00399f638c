"""The scheduler on its own, with a fake backend whose speed the test controls."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from tensorgate.backends.base import TensorInfo
from tensorgate.errors import Code, ServerError
from tensorgate.frontend.loop_lag import LoopLag
from tensorgate.instance import Instance
from tensorgate.model_config import BatchingPolicy, QueuePolicy, TimeoutAction
from tensorgate.request import InferRequest
from tensorgate.scheduler import Scheduler
from tensorgate.scheduler.queue import COMPACT_AFTER, PriorityQueue
from tensorgate.stats import ModelStats


class FakeBackend:
    """Doubles its input; records every batch it ran; can be held (gate) to let a queue build."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []  # the first column of each batch
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()

    @property
    def engine(self) -> str:
        return "fake"

    @property
    def inputs(self) -> Sequence[TensorInfo]:
        return (TensorInfo("x", 1, (None, None)),)

    @property
    def outputs(self) -> Sequence[TensorInfo]:
        return (TensorInfo("y", 1, (None, None)),)

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        self.running.set()
        self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        x = inputs["x"]
        self.batches.append([int(v) for v in x[:, 0]])
        return {"y": x * 2}

    def close(self) -> None:
        pass


def request(value: int, rows: int = 1, width: int = 4, priority: int = 0, timeout_us: int = 0) -> InferRequest:
    x = np.full((rows, width), value, np.float32)
    return InferRequest(
        id=str(value), inputs={"x": x}, outputs=("y",), batch_size=rows, priority=priority, timeout_us=timeout_us
    )


def policy(**kw: object) -> BatchingPolicy:
    base: dict[str, object] = {"max_batch_size": 8, "dynamic": True}
    base.update(kw)
    return BatchingPolicy(**base)  # type: ignore[arg-type]


def make(backend: FakeBackend, p: BatchingPolicy, instances: int = 1) -> Scheduler:
    return Scheduler("fake", 1, [Instance("fake", i, backend) for i in range(instances)], ModelStats(), p)


async def hold(backend: FakeBackend, scheduler: Scheduler) -> asyncio.Task[dict[str, np.ndarray]]:
    """Occupy the only instance with a request so the next ones queue up."""
    backend.gate.clear()
    backend.running.clear()
    task = asyncio.create_task(scheduler.infer(request(-1)))
    await asyncio.to_thread(backend.running.wait, 5)
    return task


async def test_queued_requests_form_one_batch_and_each_gets_its_rows() -> None:
    backend = FakeBackend()
    s = make(backend, policy())
    first = await hold(backend, s)
    tasks = [asyncio.create_task(s.infer(request(i, rows=1 + i % 2))) for i in range(5)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    results = await asyncio.gather(first, *tasks)
    assert backend.batches[1] == [0, 1, 1, 2, 3, 3, 4]  # 7 rows in one batch, in order
    for i, out in enumerate(results[1:]):
        np.testing.assert_array_equal(out["y"], np.full((1 + i % 2, 4), 2 * i, np.float32))
    assert s.stats.execution_count == 2 and s.stats.inference_count == 8


async def test_batch_never_exceeds_max_batch_size() -> None:
    backend = FakeBackend()
    s = make(backend, policy(max_batch_size=4))
    first = await hold(backend, s)
    tasks = [asyncio.create_task(s.infer(request(i, rows=3))) for i in range(3)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, *tasks)
    assert [len(b) for b in backend.batches[1:]] == [3, 3, 3]


async def test_only_matching_shapes_share_a_batch() -> None:
    backend = FakeBackend()
    s = make(backend, policy())
    first = await hold(backend, s)
    tasks = [asyncio.create_task(s.infer(request(i, width=4 if i % 2 else 6))) for i in range(6)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    results = await asyncio.gather(first, *tasks)
    assert sorted(map(sorted, backend.batches[1:])) == [[0, 2, 4], [1, 3, 5]]
    for i, out in enumerate(results[1:]):
        assert out["y"].shape == (1, 4 if i % 2 else 6) and out["y"][0, 0] == 2 * i


async def test_without_dynamic_batching_each_request_runs_alone() -> None:
    backend = FakeBackend()
    s = make(backend, BatchingPolicy(max_batch_size=8))
    first = await hold(backend, s)
    tasks = [asyncio.create_task(s.infer(request(i))) for i in range(4)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, *tasks)
    assert backend.batches[1:] == [[0], [1], [2], [3]]


async def test_preferred_batch_size_dispatches_before_the_delay() -> None:
    backend = FakeBackend()
    s = make(backend, policy(preferred_batch_sizes=(2,), max_queue_delay_us=5_000_000))
    started = time.monotonic()
    await asyncio.gather(s.infer(request(1)), s.infer(request(2)))
    assert time.monotonic() - started < 1.0
    assert backend.batches == [[1, 2]]


async def test_preferred_batch_size_splits_a_full_queue() -> None:
    """Triton's GetDynamicBatch: a queue holding max_batch_size rows or more still goes out at the
    largest preferred size reached while the queue delay has not passed."""
    for queued, sizes in ((8, [4, 4]), (9, [4, 4, 1])):
        backend = FakeBackend()
        s = make(backend, policy(preferred_batch_sizes=(4,)))
        first = await hold(backend, s)
        tasks = [asyncio.create_task(s.infer(request(i))) for i in range(queued)]
        await asyncio.sleep(0.01)
        backend.gate.set()
        await asyncio.gather(first, *tasks)
        assert [len(b) for b in backend.batches[1:]] == sizes, queued
        assert [v for b in backend.batches[1:] for v in b] == list(range(queued))


async def test_past_the_queue_delay_everything_pending_goes() -> None:
    """Once the oldest request has waited max_queue_delay, Triton sends all that is pending (up to
    max_batch_size), not only the part that reaches a preferred size."""
    backend = FakeBackend()
    s = make(backend, policy(preferred_batch_sizes=(2,), max_queue_delay_us=10_000))
    first = await hold(backend, s)
    tasks = [asyncio.create_task(s.infer(request(i))) for i in range(5)]
    await asyncio.sleep(0.05)  # past the 10 ms delay
    backend.gate.set()
    await asyncio.gather(first, *tasks)
    assert backend.batches[1:] == [[0, 1, 2, 3, 4]]


async def test_a_batch_that_would_outgrow_the_largest_preferred_size_goes_at_once() -> None:
    """GetDynamicBatch: when the next request would take the rows past the largest preferred size and
    no preferred size was reached, the rows before it go at once; what is left waits for the delay."""
    queue = PriorityQueue(
        "fake", policy(preferred_batch_sizes=(4,), max_queue_delay_us=5_000_000), lambda: None, lambda r: None
    )
    entries = [queue.push(request(i, rows=3)) for i in range(2)]
    now = time.perf_counter_ns()
    assert queue.take_batch(now) == entries[:1]
    assert queue.take_batch(now) is None  # 3 rows, below 4: waits for the delay
    assert queue.take_batch(now + 5_000_000_000) == entries[1:]


async def test_queue_delay_waits_for_more_requests() -> None:
    backend = FakeBackend()
    s = make(backend, policy(max_queue_delay_us=200_000))
    started = time.monotonic()
    first = asyncio.create_task(s.infer(request(1)))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, s.infer(request(2)))
    assert backend.batches == [[1, 2]]
    assert time.monotonic() - started > 0.15  # the first request waited for the delay (not run alone at once)


async def test_priorities_go_first() -> None:
    backend = FakeBackend()
    s = make(
        backend,
        policy(max_batch_size=1, priority_levels=2, default_priority=2, queue_policies=(QueuePolicy(), QueuePolicy())),
    )
    first = await hold(backend, s)
    low = [asyncio.create_task(s.infer(request(i))) for i in range(3)]
    high = [asyncio.create_task(s.infer(request(10 + i, priority=1))) for i in range(2)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, *low, *high)
    assert [b[0] for b in backend.batches[1:]] == [10, 11, 0, 1, 2]


async def test_a_priority_above_the_levels_goes_to_the_default_level() -> None:
    """As Triton's InferenceRequest::SetPriority: a priority beyond the model's levels is the default
    level (here the lowest of two), not an error: it waits behind priority 1."""
    backend = FakeBackend()
    s = make(
        backend,
        policy(max_batch_size=1, priority_levels=2, default_priority=2, queue_policies=(QueuePolicy(), QueuePolicy())),
    )
    first = await hold(backend, s)
    beyond = asyncio.create_task(s.infer(request(7, priority=9)))
    high = asyncio.create_task(s.infer(request(1, priority=1)))
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, beyond, high)
    assert [b[0] for b in backend.batches[1:]] == [1, 7]
    assert s.stats.success.count == 3


async def test_full_queue_rejects_at_once() -> None:
    backend = FakeBackend()
    s = make(backend, policy(queue_policies=(QueuePolicy(max_queue_size=2),)))
    first = await hold(backend, s)
    queued = [asyncio.create_task(s.infer(request(i))) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ServerError, match="queue is full") as info:
        await s.infer(request(9))
    assert info.value.code is Code.UNAVAILABLE  # Triton's status for a full queue
    backend.gate.set()
    await asyncio.gather(first, *queued)
    assert s.stats.fail.count == 1 and s.stats.success.count == 3


async def test_queue_timeout_rejects_and_never_runs() -> None:
    backend = FakeBackend()
    s = make(backend, policy(queue_policies=(QueuePolicy(default_timeout_us=50_000),)))
    first = await hold(backend, s)
    with pytest.raises(ServerError, match="timed out") as info:
        await s.infer(request(5))
    assert info.value.code is Code.UNAVAILABLE
    assert s.stats.fail.count == 1 and s.stats.last_inference_ms == 0  # it never ran: no inference (as Triton)
    backend.gate.set()
    await first
    await asyncio.sleep(0.05)
    assert [5] not in backend.batches
    assert s.stats.last_inference_ms > 0  # set by the run of the first


async def test_request_timeout_override_needs_permission_and_a_default_to_shorten() -> None:
    """As Triton's PolicyQueue::Enqueue: a request's timeout applies only with allow_timeout_override and
    only below the default timeout; with no default (0) there is none to shorten and it is ignored."""
    allowed = QueuePolicy(allow_timeout_override=True, default_timeout_us=10_000_000)
    backend = FakeBackend()
    s = make(backend, policy(queue_policies=(allowed,)))
    first = await hold(backend, s)
    with pytest.raises(ServerError, match="timed out after 30000 us"):
        await s.infer(request(5, timeout_us=30_000))
    backend.gate.set()
    await first
    for queue_policy in (QueuePolicy(), QueuePolicy(allow_timeout_override=True)):
        other = FakeBackend()
        ignored = make(other, policy(queue_policies=(queue_policy,)))
        first = await hold(other, ignored)
        task = asyncio.create_task(ignored.infer(request(6, timeout_us=30_000)))
        await asyncio.sleep(0.1)
        other.gate.set()
        await asyncio.gather(first, task)  # the request's timeout was not applied


async def test_timeout_delay_moves_behind_others() -> None:
    backend = FakeBackend()
    s = make(
        backend,
        policy(
            max_batch_size=1,
            queue_policies=(
                QueuePolicy(timeout_action=TimeoutAction.DELAY, allow_timeout_override=True, default_timeout_us=10**7),
            ),
        ),
    )
    first = await hold(backend, s)
    late = asyncio.create_task(s.infer(request(1, timeout_us=10_000)))
    await asyncio.sleep(0.05)  # request 1 timed out while queued
    others = [asyncio.create_task(s.infer(request(i))) for i in (2, 3)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, late, *others)
    assert [b[0] for b in backend.batches[1:]] == [2, 3, 1]


async def test_timeout_delay_stays_ahead_of_lower_priorities() -> None:
    """DELAY moves a request behind the requests of its own (and higher) priority levels that have not
    timed out, not behind lower ones (model_config.proto; Triton's PriorityQueue goes level by level)."""
    backend = FakeBackend()
    s = make(
        backend,
        policy(
            max_batch_size=1,
            priority_levels=2,
            default_priority=2,
            queue_policies=(
                QueuePolicy(timeout_action=TimeoutAction.DELAY, allow_timeout_override=True, default_timeout_us=10**7),
                QueuePolicy(),
            ),
        ),
    )
    first = await hold(backend, s)
    late = asyncio.create_task(s.infer(request(1, priority=1, timeout_us=10_000)))
    await asyncio.sleep(0.05)  # request 1 timed out while queued
    others = [asyncio.create_task(s.infer(request(i, priority=p))) for i, p in ((20, 2), (21, 2), (2, 1))]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, late, *others)
    assert [b[0] for b in backend.batches[1:]] == [2, 1, 20, 21]


async def test_cancelled_request_leaves_the_queue_and_never_runs() -> None:
    backend = FakeBackend()
    s = make(backend, policy(queue_policies=(QueuePolicy(max_queue_size=1),)))
    first = await hold(backend, s)
    doomed = asyncio.create_task(s.infer(request(7)))
    await asyncio.sleep(0.01)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    kept = asyncio.create_task(s.infer(request(8)))  # the queue has room again
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, kept)
    assert [7] not in backend.batches and [8] in backend.batches
    assert s.in_flight == 0


async def test_requests_that_left_the_queue_are_let_go_while_the_instance_stays_busy() -> None:
    """Requests that time out in the queue while the instance stays busy (a higher priority level, a
    long batch) are released with their tensors at once, not held until the queue is next read (a
    level below a busy one may not be read for long: 1,000 timed-out 1 MiB requests held 1 GiB)."""
    backend = FakeBackend()
    s = make(backend, policy(queue_policies=(QueuePolicy(default_timeout_us=1000),)))
    first = await hold(backend, s)
    doomed = [request(2) for _ in range(1000)]
    alive = [weakref.ref(r.inputs["x"]) for r in doomed]

    async def refused(r: InferRequest) -> str:
        try:
            await s.infer(r)
        except ServerError as exc:
            return exc.message
        return "answered"

    outcomes = await asyncio.gather(*(refused(r) for r in doomed))
    del doomed
    assert all("timed out" in outcome for outcome in outcomes)
    gc.collect()
    assert sum(ref() is not None for ref in alive) <= 2 * COMPACT_AFTER
    assert s.queue_depth == 0 and s.stats.fail.count == 1000
    backend.gate.set()
    await first
    assert backend.batches == [[-1]]


class CountsOverlap(FakeBackend):
    """Records the most batches it ran at once."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.lock = threading.Lock()
        self.now = self.most = 0

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().execute(inputs, output_names)
        finally:
            with self.lock:
                self.now -= 1


async def test_instances_run_batches_concurrently() -> None:
    backend = CountsOverlap(delay=0.2)
    s = make(backend, BatchingPolicy(max_batch_size=8), instances=3)
    await asyncio.gather(*(s.infer(request(i)) for i in range(3)))
    assert backend.most == 3  # one batch on each instance, all three at once


async def test_backend_error_fails_only_that_batch() -> None:
    s = make(FailsOn13(), BatchingPolicy(max_batch_size=8))
    with pytest.raises(ServerError, match="boom") as info:
        await s.infer(request(13))
    assert info.value.code is Code.INTERNAL
    assert s.stats.last_inference_ms == 0  # a failed execution is no inference (Triton reports none for it)
    out = await s.infer(request(2))
    assert out["y"][0, 0] == 4


async def test_close_waits_for_queued_requests() -> None:
    backend = FakeBackend()
    s = make(backend, policy())
    first = await hold(backend, s)
    queued = [asyncio.create_task(s.infer(request(i))) for i in range(3)]
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(s.close())
    await asyncio.sleep(0.01)
    with pytest.raises(ServerError, match="unloading"):
        await s.infer(request(9))
    backend.gate.set()
    await asyncio.gather(first, *queued, closing)


class ThreadRecorder(FakeBackend):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.threads: list[str] = []

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super().execute(inputs, output_names)


class FailsOn13(ThreadRecorder):
    """Raises for a batch whose first value is 13, as an engine error would fail a whole batch."""

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        if inputs["x"][0, 0] == 13:
            raise RuntimeError("boom")
        return super().execute(inputs, output_names)


async def test_a_loop_running_behind_the_bound_refuses_at_once() -> None:
    """Admission also refuses when the event loop runs further behind than the bound (requests have
    waited that long before the service saw them), whatever the queue holds; LoopLag measures it."""
    scheduler = Scheduler(
        "fake", 1, [Instance("fake", 0, FakeBackend())], ModelStats(), policy(), max_queue_wait_ms=100
    )
    scheduler.admit(50_000_000)  # 50 ms behind: admitted
    tiny = Scheduler("fake", 1, [Instance("fake", 0, FakeBackend())], ModelStats(), policy(), max_queue_wait_ms=1)
    tiny.admit(5_000_000)  # a 1 ms bound: a loop 5 ms late (timer jitter, not a backlog) still admits
    with pytest.raises(ServerError) as refused:
        scheduler.admit(250_000_000)
    assert refused.value.code is Code.RESOURCE_EXHAUSTED
    assert "runs 250 ms behind" in refused.value.message and "max_queue_wait_ms" in refused.value.message
    assert scheduler.stats.fail.count == 1
    lag = LoopLag()
    lag.start()
    await asyncio.sleep(0.05)
    assert lag.lag_ns < 200_000_000  # an idle loop is not measured as far behind (below the 0.3 s block next)
    time.sleep(0.3)  # the loop is blocked: the probe's timer fires late, in the next loop iteration
    await asyncio.sleep(0)  # that iteration: this task's step, then the overdue probe
    await asyncio.sleep(0)  # the one after: the probe has fired, its next one is 10 ms away
    lag.stop()
    assert lag.lag_ns >= 200_000_000
