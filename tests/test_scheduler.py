"""The scheduler on its own, with a fake backend whose speed the test controls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from tensorgate.backends.base import TensorInfo
from tensorgate.errors import Code, ServerError
from tensorgate.instance import Instance
from tensorgate.model_config import BatchingPolicy, QueuePolicy, TimeoutAction
from tensorgate.request import InferRequest
from tensorgate.scheduler import Scheduler
from tensorgate.scheduler.placement import Placement
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


async def test_queue_delay_waits_for_more_requests() -> None:
    backend = FakeBackend()
    s = make(backend, policy(max_queue_delay_us=200_000))
    started = time.monotonic()
    first = asyncio.create_task(s.infer(request(1)))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, s.infer(request(2)))
    assert backend.batches == [[1, 2]]
    assert 0.15 < time.monotonic() - started < 2.0


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


async def test_bad_priority_is_refused() -> None:
    s = make(FakeBackend(), policy())
    with pytest.raises(ServerError, match="priority 3 is out of range"):
        await s.infer(request(1, priority=3))


async def test_full_queue_rejects_at_once() -> None:
    backend = FakeBackend()
    s = make(backend, policy(queue_policies=(QueuePolicy(max_queue_size=2),)))
    first = await hold(backend, s)
    queued = [asyncio.create_task(s.infer(request(i))) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ServerError, match="queue is full") as info:
        await s.infer(request(9))
    assert info.value.code is Code.RESOURCE_EXHAUSTED
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
    backend.gate.set()
    await first
    await asyncio.sleep(0.05)
    assert [5] not in backend.batches


async def test_request_timeout_override_needs_permission() -> None:
    backend = FakeBackend()
    allowed = make(backend, policy(queue_policies=(QueuePolicy(allow_timeout_override=True),)))
    first = await hold(backend, allowed)
    with pytest.raises(ServerError, match="timed out"):
        await allowed.infer(request(5, timeout_us=30_000))
    backend.gate.set()
    await first
    other = FakeBackend()
    refused = make(other, policy())
    first = await hold(other, refused)
    task = asyncio.create_task(refused.infer(request(6, timeout_us=30_000)))
    await asyncio.sleep(0.1)
    other.gate.set()
    await asyncio.gather(first, task)  # the override was ignored: no timeout


async def test_timeout_delay_moves_behind_others() -> None:
    backend = FakeBackend()
    s = make(
        backend,
        policy(
            max_batch_size=1,
            queue_policies=(QueuePolicy(timeout_action=TimeoutAction.DELAY, allow_timeout_override=True),),
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


async def test_instances_run_batches_concurrently() -> None:
    backend = FakeBackend(delay=0.2)
    s = make(backend, BatchingPolicy(max_batch_size=8), instances=3)
    started = time.monotonic()
    await asyncio.gather(*(s.infer(request(i)) for i in range(3)))
    assert time.monotonic() - started < 0.5


async def test_backend_error_fails_only_that_batch() -> None:
    s = make(FailsOn13(), BatchingPolicy(max_batch_size=8))
    with pytest.raises(ServerError, match="boom") as info:
        await s.infer(request(13))
    assert info.value.code is Code.INTERNAL
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


async def test_cheap_batches_run_inline_after_measuring() -> None:
    fast = ThreadRecorder()
    s = Scheduler("fake", 1, [Instance("fake", 0, fast)], ModelStats(), policy(), inline_execution_us=50_000)
    for i in range(Placement.WARMUP_EXECUTIONS + 4):
        out = await s.infer(request(i))
        assert out["y"][0, 0] == 2 * i
    main = threading.current_thread().name
    assert all(t != main for t in fast.threads[: Placement.WARMUP_EXECUTIONS])
    assert all(t == main for t in fast.threads[Placement.WARMUP_EXECUTIONS :])


async def test_costly_batches_stay_on_the_worker_thread() -> None:
    slow = ThreadRecorder(delay=0.002)
    s = Scheduler("fake", 1, [Instance("fake", 0, slow)], ModelStats(), policy(), inline_execution_us=1_000)
    for i in range(Placement.WARMUP_EXECUTIONS + 4):
        await s.infer(request(i))
    assert threading.current_thread().name not in slow.threads


async def test_inline_requests_keep_statistics_errors_and_priorities() -> None:
    fast = FailsOn13()
    stats = ModelStats()
    s = Scheduler("fake", 1, [Instance("fake", 0, fast)], stats, policy(), inline_execution_us=50_000)
    for i in range(Placement.WARMUP_EXECUTIONS):
        await s.infer(request(100 + i))
        await s.infer(request(100 + i, rows=3))  # each batch size earns its place on the loop
    before = (stats.inference_count, stats.execution_count, stats.success.count)
    out = await s.infer(request(5, rows=3))
    assert fast.threads[-1] == threading.current_thread().name  # it ran inline
    assert out["y"].shape == (3, 4) and out["y"][0, 0] == 10
    assert (stats.inference_count, stats.execution_count, stats.success.count) == (
        before[0] + 3,
        before[1] + 1,
        before[2] + 1,
    )
    assert stats.batches[3].compute_infer.count == Placement.WARMUP_EXECUTIONS + 1
    with pytest.raises(ServerError, match="boom") as info:
        await s.infer(request(13))
    assert info.value.code is Code.INTERNAL
    assert stats.fail.count == 1
    with pytest.raises(ServerError, match="priority 7 is out of range"):
        await s.infer(request(1, priority=7))
    assert (await s.infer(request(4)))["y"][0, 0] == 8  # the instance is free again


async def test_cheap_instance_still_batches_what_queues_while_it_is_busy() -> None:
    fast = ThreadRecorder()
    s = Scheduler("fake", 1, [Instance("fake", 0, fast)], ModelStats(), policy(), inline_execution_us=50_000)
    for i in range(Placement.WARMUP_EXECUTIONS):
        await s.infer(request(i))
    fast.batches.clear()
    # Requests that wait together (here: all created before the loop runs any of them, with the
    # instance taken by the first) go out as batches, not one at a time.
    results = await asyncio.gather(*(s.infer(request(i)) for i in range(6)))
    assert [int(r["y"][0, 0]) for r in results] == [2 * i for i in range(6)]
    assert sum(len(b) for b in fast.batches) == 6


async def test_cheap_instance_still_waits_out_the_queue_delay() -> None:
    fast = ThreadRecorder()
    instance = Instance("fake", 0, fast)
    warm = Scheduler("fake", 1, [instance], ModelStats(), policy(), inline_execution_us=50_000)
    for i in range(Placement.WARMUP_EXECUTIONS):  # batches of two rows, measured cheap
        await warm.infer(request(i, rows=2))
    delayed = policy(max_queue_delay_us=50_000)
    s = Scheduler("fake", 1, [instance], ModelStats(), delayed, inline_execution_us=50_000)
    s.placements[0] = warm.placements[0]  # what the instance measured, without the delay
    assert s.placements[0].inline(2)
    fast.batches.clear()
    first = asyncio.create_task(s.infer(request(1)))
    await asyncio.sleep(0.005)
    second = asyncio.create_task(s.infer(request(2)))
    await asyncio.gather(first, second)
    assert fast.batches == [[1, 2]]  # the first waited for the second instead of running at once


class SlowOffTheLoop(ThreadRecorder):
    """Slow on the worker thread (as a batch that waits there for the GIL), quick on the loop."""

    def __init__(self, loop_thread: str, worker_delay: float) -> None:
        super().__init__()
        self.loop_thread = loop_thread
        self.worker_delay = worker_delay

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        if threading.current_thread().name != self.loop_thread:
            time.sleep(self.worker_delay)
        return super().execute(inputs, output_names)


async def test_a_batch_slow_only_on_the_worker_is_probed_inline_and_moves_there() -> None:
    main = threading.current_thread().name
    backend = SlowOffTheLoop(main, worker_delay=0.0015)  # 1.5 x the limit on the worker
    s = Scheduler("fake", 1, [Instance("fake", 0, backend)], ModelStats(), policy(), inline_execution_us=1_000)
    runs = Placement.WARMUP_EXECUTIONS + Placement.PROBE_EVERY + 10
    for i in range(runs):
        await s.infer(request(i))
    first_inline = backend.threads.index(main)
    assert first_inline == Placement.PROBE_EVERY  # the probe, once enough worker runs were measured
    assert all(t == main for t in backend.threads[first_inline:])  # measured cheap there: it stays


class StallsSometimes(ThreadRecorder):
    """Quick, except that the runs numbered in ``stall_at`` stall for 20 ms on the loop, as a batch
    does when the OS preempts the thread or a profiler pauses the process."""

    def __init__(self, loop_thread: str, stall_at: set[int]) -> None:
        super().__init__()
        self.loop_thread = loop_thread
        self.stall_at = stall_at

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        if threading.current_thread().name == self.loop_thread and len(self.threads) in self.stall_at:
            time.sleep(0.02)
        return super().execute(inputs, output_names)


async def test_a_few_stalled_batches_do_not_move_a_cheap_model_off_the_loop() -> None:
    main = threading.current_thread().name
    warmup = Placement.WARMUP_EXECUTIONS
    backend = StallsSometimes(main, stall_at={warmup + 5, warmup + 30, warmup + 31, warmup + 60})
    s = Scheduler("fake", 1, [Instance("fake", 0, backend)], ModelStats(), policy(), inline_execution_us=1_000)
    for i in range(warmup + 100):
        await s.infer(request(i))
    assert backend.threads[warmup:] == [main] * 100  # 20 x the limit, four times: still typically cheap
    assert s.placements[0].inline_ns(1) < 1_000_000


class SlowPerRow(ThreadRecorder):
    """Takes 0.1 ms a row: cheap at one row, 8 x the 1 ms limit at 80."""

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        time.sleep(0.0001 * len(inputs["x"]))
        return super().execute(inputs, output_names)


async def test_a_model_cheap_at_one_row_runs_big_batches_on_the_worker() -> None:
    main = threading.current_thread().name
    backend = SlowPerRow()
    big = policy(max_batch_size=128)
    s = Scheduler("fake", 1, [Instance("fake", 0, backend)], ModelStats(), big, inline_execution_us=1_000)
    warmup = Placement.WARMUP_EXECUTIONS
    for i in range(warmup + 2):
        await s.infer(request(i))
    assert backend.threads[-1] == main  # one row: measured cheap, on the loop
    before = len(backend.threads)
    for i in range(warmup + 8):
        out = await s.infer(request(i, rows=80))
        assert out["y"].shape == (80, 4)
    assert main not in backend.threads[before:]  # 80 rows: ~8 ms, never blocks the loop
    await s.infer(request(1))
    assert backend.threads[-1] == main  # and one row is still cheap


async def test_a_batch_far_above_the_limit_is_never_probed() -> None:
    main = threading.current_thread().name
    backend = SlowOffTheLoop(main, worker_delay=0.004)  # 4 x the limit: not worth blocking the loop to try
    s = Scheduler("fake", 1, [Instance("fake", 0, backend)], ModelStats(), policy(), inline_execution_us=1_000)
    for i in range(Placement.PROBE_EVERY + 20):
        await s.infer(request(i))
    assert main not in backend.threads
