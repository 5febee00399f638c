"""Per model-version inference statistics, in the shape of Triton's ModelStatistics.

Updated only on the event loop thread, so no locks. Durations are nanoseconds.
"""

from __future__ import annotations

import bisect
import enum
import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


# Upper bounds (ns) of the latency histograms' buckets (request, queue, compute): 100 us to 60 s.
LATENCY_BUCKETS_NS: tuple[int, ...] = tuple(
    int(v * 1000) for v in (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
                            500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 60_000_000)
)  # fmt: skip


class Failure(enum.Enum):
    """Why a request failed, as Triton's ``reason`` label of nv_inference_request_failure says it."""

    REJECTED = "REJECTED"  # queue full, or its queue timeout passed
    CANCELED = "CANCELED"  # the client cancelled, or its deadline passed, while it was queued
    BACKEND = "BACKEND"  # the engine failed on its batch
    OTHER = "OTHER"


def _buckets() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS_NS) + 1)


@dataclass
class ModelStats:
    inference_count: int = 0  # samples (a request of batch n counts n)
    execution_count: int = 0  # model executions (one per batch)
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    failures: dict[Failure, int] = field(default_factory=lambda: dict.fromkeys(Failure, 0))
    # Successful requests per latency bucket (last slot: above the largest bound), for percentiles:
    # time in the server, in the queue, and computing (input + infer + output).
    latency_buckets: list[int] = field(default_factory=_buckets)
    queue_buckets: list[int] = field(default_factory=_buckets)
    compute_buckets: list[int] = field(default_factory=_buckets)

    def record_request(
        self,
        ok: bool,
        total_ns: int,
        queue_ns: int = 0,
        input_ns: int = 0,
        infer_ns: int = 0,
        output_ns: int = 0,
        samples: int = 1,
        failure: Failure = Failure.OTHER,
    ) -> None:
        """One request finished (Triton counts per-request durations in these fields); a failed one
        counts under ``failure``."""
        if not ok:
            self.fail.add(total_ns)
            self.failures[failure] += 1
            return
        self.inference_count += samples
        self.success.add(total_ns)
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_NS, total_ns)] += 1
        self.queue_buckets[bisect.bisect_left(LATENCY_BUCKETS_NS, queue_ns)] += 1
        compute_ns = input_ns + infer_ns + output_ns
        self.compute_buckets[bisect.bisect_left(LATENCY_BUCKETS_NS, compute_ns)] += 1
        queue = self.queue
        queue.count += 1
        queue.ns += queue_ns
        _add_phases(self.compute_input, self.compute_infer, self.compute_output, input_ns, infer_ns, output_ns)

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution of ``batch_size`` samples (the time of the last one is ``last_inference``: a
        request that never ran, or whose run failed, does not move it, as in Triton)."""
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.execution_count += 1
        batch = self.batches.get(batch_size)
        if batch is None:  # (setdefault would build a BatchStats on every call)
            batch = self.batches[batch_size] = BatchStats()
        _add_phases(batch.compute_input, batch.compute_infer, batch.compute_output, input_ns, infer_ns, output_ns)


def _add_phases(
    c_in: Duration, c_infer: Duration, c_out: Duration, input_ns: int, infer_ns: int, output_ns: int
) -> None:
    """One count and its time on each of the three compute phases: per request and per execution, on the
    event loop, so the fields directly rather than three calls of Duration.add."""
    c_in.count += 1
    c_in.ns += input_ns
    c_infer.count += 1
    c_infer.ns += infer_ns
    c_out.count += 1
    c_out.ns += output_ns
