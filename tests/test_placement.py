"""Where the scheduler runs a batch (scheduler/placement.py): on the event loop once its size class
is measured cheap there, else on the instance's worker thread; with fake backends whose speed the
test controls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from tensorgate.backends.base import Engine
from tensorgate.errors import Code, ServerError
from tensorgate.instance import Instance
from tensorgate.scheduler import Scheduler
from tensorgate.scheduler.placement import Placement
from tensorgate.stats import ModelStats
from test_scheduler import FailsOn13, ThreadRecorder, policy, request


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
    assert (await s.infer(request(1, priority=7)))["y"][0, 0] == 2  # beyond the levels: the default, as Triton
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
    delayed = policy(max_queue_delay_us=500_000)  # far longer than the loop's 5 ms pause below, however slow
    s = Scheduler("fake", 1, [instance], ModelStats(), delayed, inline_execution_us=50_000)
    s.placements[0] = warm.placements[0]  # what the instance measured, without the delay
    assert s.placements[0].inline(request(0, rows=2).nbytes)
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
    assert s.placements[0].inline_ns(request(0).nbytes) < 1_000_000


class SlowPerRow(ThreadRecorder):
    """Takes 0.1 ms a row: cheap at one row (a 40th of the 4 ms limit: one run the OS preempts for
    milliseconds still measures cheap), 2 x the limit at 80."""

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        time.sleep(0.0001 * len(inputs["x"]))
        return super().execute(inputs, output_names)


async def test_a_model_cheap_at_one_row_runs_big_batches_on_the_worker() -> None:
    main = threading.current_thread().name
    backend = SlowPerRow()
    big = policy(max_batch_size=128)
    s = Scheduler("fake", 1, [Instance("fake", 0, backend)], ModelStats(), big, inline_execution_us=4_000)
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


async def test_one_row_of_32_mb_runs_on_the_worker_though_one_row_is_cheap() -> None:
    """The class is the batch's bytes, not its rows: a one-row request of 32 MB is a size the
    instance never measured, so it cannot stall the loop for the milliseconds it takes."""
    main = threading.current_thread().name
    backend = ThreadRecorder()
    s = Scheduler("fake", 1, [Instance("fake", 0, backend)], ModelStats(), policy(), inline_execution_us=1_000)
    for i in range(Placement.WARMUP_EXECUTIONS + 2):
        await s.infer(request(i))
    assert backend.threads[-1] == main  # one small row: cheap, on the loop
    before = len(backend.threads)
    for i in range(Placement.WARMUP_EXECUTIONS + 4):
        out = await s.infer(request(i, width=8_000_000))  # one row, 32 MB
        assert out["y"].shape == (1, 8_000_000)
    assert main not in backend.threads[before:]
    await s.infer(request(1))
    assert backend.threads[-1] == main


async def test_a_batch_far_above_the_limit_is_never_probed() -> None:
    main = threading.current_thread().name
    backend = SlowOffTheLoop(main, worker_delay=0.004)  # 4 x the limit: not worth blocking the loop to try
    s = Scheduler("fake", 1, [Instance("fake", 0, backend)], ModelStats(), policy(), inline_execution_us=1_000)
    for i in range(Placement.PROBE_EVERY + 20):
        await s.infer(request(i))
    assert main not in backend.threads


class GpuRecorder(ThreadRecorder):
    """A fast backend that reports a GPU engine."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self._engine = engine

    @property
    def engine(self) -> Engine:  # type: ignore[override]
        return self._engine


@pytest.mark.parametrize("engine", [Engine.TENSORRT, Engine.ORT_CUDA])
async def test_gpu_engines_never_run_inline_however_cheap(engine: Engine) -> None:
    fast = GpuRecorder(engine)
    s = Scheduler("fake", 1, [Instance("fake", 0, fast)], ModelStats(), policy(), inline_execution_us=1_000_000)
    for i in range(Placement.WARMUP_EXECUTIONS + Placement.PROBE_EVERY + 8):
        await s.infer(request(i))
    assert threading.current_thread().name not in fast.threads
    assert s.placements[0].inline_execution_ns == 0


def test_placement_for_engine() -> None:
    assert Placement.for_engine(Engine.TENSORRT, 250).inline_execution_ns == 0
    assert Placement.for_engine(Engine.ORT_CUDA, 250).inline_execution_ns == 0
    assert Placement.for_engine(Engine.ORT_CPU, 250).inline_execution_ns == 250_000
