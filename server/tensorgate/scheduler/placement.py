"""Where a batch runs: on the instance's worker thread, or on the event loop itself.

Handing a batch to the worker thread and back costs two thread wake-ups and the worker's wait for
the GIL (measured in bench/RESULTS.md). A batch that typically costs less than that runs on the loop
instead: one whose size class has measured, typically, under ``inline_execution_us`` there. The class
is the batch's input bytes, by powers of two (``nbytes.bit_length()``), so each class earns its place
by itself: a model cheap at one row can take milliseconds at 64 rows, or at one row of 32 MB, and a
size it has not measured always starts on the worker. The loop's stall is so bounded by the limit
whatever a request's size. 0 turns it off (every batch on the worker).

GPU engines (TensorRT, ONNX Runtime on CUDA) never run on the loop, however fast their batches
measure: the loop would wait on the device while gRPC waits on the loop, and every instance of the
model would be serialised behind it. ``for_engine`` gives them a placement that always answers the
worker thread.
"""

from __future__ import annotations

from tensorgate.backends.base import Engine

# Engines whose batches run on a GPU: always on their instance's worker thread.
GPU_ENGINES = frozenset({Engine.TENSORRT, Engine.ORT_CUDA})


class RecentMedian:
    """The median of the last ``size`` durations recorded (ns); -1 until there is one.

    A median, not a moving average: one batch that the OS preempted, or a profiler paused, for
    milliseconds would pull an average of microsecond batches over the limit for hundreds of
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
    """What one instance has measured of its batches of one size class."""

    __slots__ = ("executions", "inline", "since_inline", "worker")

    def __init__(self) -> None:
        self.executions = 0
        # Typical whole batches (gather + execute + split), on the worker thread and on the event loop.
        self.worker = RecentMedian()
        self.inline = RecentMedian()
        self.since_inline = 0  # executions on the worker since the last one on the loop


class Placement:
    """The choice for one instance, from what its batches measured."""

    # Executions of a size class measured (on the worker thread) before its batches may run inline.
    WARMUP_EXECUTIONS = 16
    # A batch measured on the worker thread takes longer than the same batch on the loop (it waits
    # there for the GIL while the loop thread holds it), so a model measured only on the worker might
    # never get to run inline. Batches typically under PROBE_BELOW x the limit there run inline once
    # every PROBE_EVERY executions of their class, which measures them where the choice matters.
    PROBE_BELOW = 3
    PROBE_EVERY = 64

    __slots__ = ("_classes", "inline_execution_ns")

    def __init__(self, inline_execution_us: int) -> None:
        self.inline_execution_ns = inline_execution_us * 1000
        self._classes: dict[int, SizeClass] = {}

    @classmethod
    def for_engine(cls, engine: object, inline_execution_us: int) -> Placement:
        """The placement of an instance whose backend runs on ``engine``: a GPU engine's batches
        always go to the worker thread (limit 0), others may run inline under ``inline_execution_us``."""
        return cls(0 if engine in GPU_ENGINES else inline_execution_us)

    def inline(self, nbytes: int) -> bool:
        """Whether a batch of ``nbytes`` of inputs runs on the event loop: its size class is measured
        cheaper there than the hop to the worker, or a probe is due (see above)."""
        limit = self.inline_execution_ns
        if limit <= 0:
            return False
        size = self._classes.get(nbytes.bit_length())
        if size is None or size.executions < self.WARMUP_EXECUTIONS:
            return False
        inline = size.inline.value
        known = inline if inline >= 0 else size.worker.value  # the loop's figure once there is one
        if known < limit:
            return True
        return size.worker.value < self.PROBE_BELOW * limit and size.since_inline >= self.PROBE_EVERY

    def record(self, nbytes: int, ns: int, inline: bool) -> None:
        """A batch of ``nbytes`` took ``ns`` (gather + execute + split) on the loop or on the worker."""
        key = nbytes.bit_length()
        size = self._classes.get(key)
        if size is None:
            size = self._classes[key] = SizeClass()
        size.executions += 1
        if inline:
            size.since_inline = 0
            size.inline.add(ns)
        else:
            size.since_inline += 1
            size.worker.add(ns)

    def inline_ns(self, nbytes: int) -> int:
        """A typical batch of ``nbytes``' size class on the event loop (ns); -1 until measured there."""
        size = self._classes.get(nbytes.bit_length())
        return -1 if size is None else size.inline.value
