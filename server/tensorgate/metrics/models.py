"""The collector behind /metrics: Triton's series (same names, labels and meaning, so existing
dashboards and autoscaling rules keep working) and tensorgate's own, in base units.

Everything is read at scrape time: counters and histograms from each model version's statistics
(which the scheduler keeps anyway), host and GPU gauges from the sampler's latest readings. The
request path does no extra work for metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tensorgate.metrics.sampler import Sampler
from tensorgate.stats import LATENCY_BUCKETS_NS, ModelStats

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

log = logging.getLogger(__name__)


_DURATIONS = (
    ("nv_inference_request_duration_us", "success", "Cumulative inference request duration in microseconds"),
    ("nv_inference_queue_duration_us", "queue", "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_input_duration_us", "compute_input", "Cumulative compute input duration in microseconds"),
    (
        "nv_inference_compute_infer_duration_us",
        "compute_infer",
        "Cumulative compute inference duration in microseconds",
    ),
    ("nv_inference_compute_output_duration_us", "compute_output", "Cumulative compute output duration in microseconds"),
)


class _Counter(Metric):
    """A cumulative count under Triton's bare name (``nv_*`` without ``_total``). prometheus_client
    would append ``_total`` to a ``counter`` family, so the family is made untyped here, and the
    page is typed ``counter`` as it is written (exposition.py)."""

    names: ClassVar[set[str]] = set()  # every family made so far (a few fixed names)

    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation, "unknown")
        self.name = name
        _Counter.names.add(name)

    def add(self, labels: dict[str, str], value: float) -> None:
        self.add_sample(self.name, labels, value)


def counter_names() -> frozenset[str]:
    """Triton's counters (``nv_*``), for exposition.py to type them ``counter`` as Triton does (ours are
    prometheus_client's counters, named ``_total``)."""
    names = frozenset(_Counter.names)  # a copy first: another scrape thread may be adding to the set
    return frozenset(name for name in names if name.startswith("nv_"))


def thread_cpu_seconds(thread_id: int) -> Callable[[], float] | None:
    """A reader of the CPU time a thread (``threading.get_ident()``) has used so far, in seconds;
    None where the OS has no per-thread CPU clock for Python to read (macOS)."""
    getcpuclockid = getattr(time, "pthread_getcpuclockid", None)
    if getcpuclockid is None:
        return None
    clock = getcpuclockid(thread_id)
    return lambda: time.clock_gettime(clock)


@dataclass(frozen=True)
class VersionMetrics:
    """What the collector reads of one served model version at scrape time."""

    name: str
    version: int
    stats: ModelStats
    pending: int  # requests waiting in the queue for an execution (Triton's pending requests)
    in_flight: int  # requests the version holds: queued, running, or decoding for it
    engine: str
    precision: str
    device: str
    load_seconds: float


VersionSource = Callable[[], Iterable[VersionMetrics]]


class ServerView(Protocol):
    """What the collector reads of the server itself (the frontend's ServerState)."""

    ready: bool
    internal_errors: int  # requests failed by a server bug
    malformed_messages: int  # messages that did not parse as their RPC's request


class ModelStatsCollector(Collector):
    def __init__(
        self,
        source: VersionSource,
        server: ServerView,
        loop_cpu_seconds: Callable[[], float] | None,
        sampler: Sampler | None = None,
    ) -> None:
        self._source = source
        self._server = server
        self._loop_cpu_seconds = loop_cpu_seconds
        self._sampler = sampler

    def collect(self) -> Iterator[Metric]:
        yield from self._models(list(self._source()))
        ready = GaugeMetricFamily("tensorgate_server_ready", "1 when the server reports ready")
        ready.add_metric([], 1.0 if self._server.ready else 0.0)
        errors = CounterMetricFamily(
            "tensorgate_internal_errors",
            "Requests that failed on a server bug (logged with a traceback)",
            value=self._server.internal_errors,
        )
        malformed = CounterMetricFamily(
            "tensorgate_malformed_messages",
            "gRPC messages that did not parse as their RPC's request (answered INVALID_ARGUMENT)",
            value=self._server.malformed_messages,
        )
        yield from (ready, errors, malformed)
        if self._loop_cpu_seconds is not None:
            yield CounterMetricFamily(
                "tensorgate_event_loop_cpu_seconds",
                "CPU time of the event-loop thread, which takes every request off gRPC, decodes, schedules "
                "and answers it; a rate near 1 means the server is saturated and new calls wait inside gRPC",
                value=self._loop_cpu_seconds(),
            )
        if self._sampler is not None:
            yield from host_families(self._sampler)

    def _models(self, versions: list[VersionMetrics]) -> Iterator[Metric]:
        success = _Counter("nv_inference_request_success", "Number of successful inference requests")
        failure = _Counter("nv_inference_request_failure", "Number of failed inference requests, by reason")
        count = _Counter("nv_inference_count", "Number of inferences performed (a batch of n counts n)")
        execs = _Counter("nv_inference_exec_count", "Number of model executions")
        durations = [_Counter(name, doc) for name, _, doc in _DURATIONS]
        labels = ["model", "version"]
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model",
            labels=labels,
        )
        load = GaugeMetricFamily("nv_model_load_duration_secs", "Model load time in seconds", labels=labels)
        load_s = GaugeMetricFamily(
            "tensorgate_model_load_duration_seconds",
            "Time the version took to load: engine, instances and warmup",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "tensorgate_requests_in_flight",
            "Requests the model version holds: waiting in its queue, running, or being decoded for it",
            labels=labels,
        )
        info = GaugeMetricFamily(
            "tensorgate_model_engine_info",
            "The engine each served model version runs on (value 1)",
            labels=[*labels, "engine", "precision", "device"],
        )
        latencies = [
            HistogramMetricFamily(name, doc, labels=labels)
            for name, doc in (
                ("tensorgate_request_duration_seconds", "Successful requests by time in the server (queue + compute)"),
                ("tensorgate_queue_duration_seconds", "Successful requests by time waiting in the queue"),
                ("tensorgate_compute_duration_seconds", "Successful requests by compute time (input, infer, output)"),
            )
        ]
        batch = HistogramMetricFamily(
            "tensorgate_batch_size", "Model executions by the batch size the scheduler formed", labels=labels
        )
        for v in versions:
            stats = v.stats
            key = {"model": v.name, "version": str(v.version)}
            values = list(key.values())
            success.add(key, stats.success.count)
            for reason, n in list(stats.failures.items()):
                failure.add({**key, "reason": reason.value}, n)
            count.add(key, stats.inference_count)
            execs.add(key, stats.execution_count)
            for family, (_, field, _) in zip(durations, _DURATIONS, strict=True):
                family.add(key, getattr(stats, field).ns // 1000)
            pending.add_metric(values, v.pending)
            in_flight.add_metric(values, v.in_flight)
            load.add_metric(values, v.load_seconds)
            load_s.add_metric(values, v.load_seconds)
            info.add_metric([*values, v.engine, v.precision, v.device], 1.0)
            sums = (
                stats.success.ns,
                stats.queue.ns,
                stats.compute_input.ns + stats.compute_infer.ns + stats.compute_output.ns,
            )
            counts = (stats.latency_buckets, stats.queue_buckets, stats.compute_buckets)
            for latency, buckets, total_ns in zip(latencies, counts, sums, strict=True):
                latency.add_metric(values, _latency_buckets(buckets), sum_value=total_ns / 1e9)
            sizes = {size: b.compute_infer.count for size, b in list(stats.batches.items())}
            batch.add_metric(values, _batch_buckets(sizes), sum_value=sum(size * n for size, n in sizes.items()))
        yield from (success, failure, count, execs, *durations, pending, in_flight, load, load_s, info)
        yield from (*latencies, batch)


def host_families(sampler: Sampler) -> Iterator[Metric]:
    """Triton's CPU and GPU gauges from the sampler's latest readings."""
    cpu = sampler.cpu
    if cpu is not None:
        for name, doc, value in (
            ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", cpu.utilization),
            ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", cpu.memory_total_bytes),
            ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", cpu.memory_used_bytes),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
    gpus = sampler.gpus
    if not gpus:
        return
    gauges = [
        ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "utilization"),
        ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "memory_total_bytes"),
        ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "memory_used_bytes"),
        ("nv_gpu_power_usage", "GPU power usage in watts", "power_usage_watts"),
        ("nv_gpu_power_limit", "GPU power management limit in watts", "power_limit_watts"),
    ]
    for name, doc, attr in gauges:
        family = GaugeMetricFamily(name, doc, labels=["gpu_uuid"])
        for gpu in gpus:
            value = getattr(gpu, attr)
            if value is not None:  # None: this GPU did not answer that reading (its series is left out)
                family.add_metric([gpu.uuid], float(value))
        yield family
    energy = _Counter("nv_energy_consumption", "GPU energy consumption in joules since the server started")
    for gpu in gpus:
        if gpu.energy_joules is not None:
            energy.add({"gpu_uuid": gpu.uuid}, gpu.energy_joules)
    yield energy


def _latency_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative (upper bound in seconds, count) pairs, as Prometheus histograms want them."""
    cumulative, buckets = 0, []
    for bound, n in zip((*LATENCY_BUCKETS_NS, None), list(counts), strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound is None else repr(bound / 1e9), float(cumulative)))
    return buckets


def _batch_buckets(sizes: dict[int, int]) -> list[tuple[str, float]]:
    return [
        (
            "+Inf" if bound is None else str(bound),
            float(sum(n for size, n in sizes.items() if bound is None or size <= bound)),
        )
        for bound in (*_BATCH_BUCKETS, None)
    ]
