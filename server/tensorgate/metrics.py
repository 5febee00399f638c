"""Prometheus metrics, named and labelled as Triton's so existing dashboards keep working.

Counters are read from each model version's statistics at scrape time, so the request path does
no extra work for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from tensorgate.stats import LATENCY_BUCKETS_NS, ModelStats

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

log = logging.getLogger(__name__)

StatsSource = Callable[[], Iterable[tuple[str, int, ModelStats]]]

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
    would append ``_total`` to a ``counter`` family, so the family is exposed untyped."""

    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation, "unknown")
        self.name = name

    def add(self, labels: dict[str, str], value: float) -> None:
        self.add_sample(self.name, labels, value)


def thread_cpu_seconds(thread_id: int) -> Callable[[], float] | None:
    """A reader of the CPU time a thread (``threading.get_ident()``) has used so far, in seconds;
    None where the OS has no per-thread CPU clock for Python to read (macOS)."""
    getcpuclockid = getattr(time, "pthread_getcpuclockid", None)
    if getcpuclockid is None:
        return None
    clock = getcpuclockid(thread_id)
    return lambda: time.clock_gettime(clock)


class ModelStatsCollector(Collector):
    def __init__(
        self,
        source: StatsSource,
        ready: Callable[[], bool],
        internal_errors: Callable[[], int],
        loop_cpu_seconds: Callable[[], float] | None,
    ) -> None:
        self._source = source
        self._ready = ready
        self._internal_errors = internal_errors
        self._loop_cpu_seconds = loop_cpu_seconds

    def collect(self) -> Iterator[Metric]:
        success = _Counter("nv_inference_request_success", "Number of successful inference requests")
        failure = _Counter("nv_inference_request_failure", "Number of failed inference requests")
        count = _Counter("nv_inference_count", "Number of inferences performed (a batch of n counts n)")
        execs = _Counter("nv_inference_exec_count", "Number of model executions")
        durations = [_Counter(name, doc) for name, _, doc in _DURATIONS]
        labels = ["model", "version"]
        latency = HistogramMetricFamily(
            "tensorgate_request_duration_seconds",
            "Successful requests by time in the server (queue + compute), for percentiles",
            labels=labels,
        )
        batch = HistogramMetricFamily(
            "tensorgate_batch_size", "Model executions by the batch size the scheduler formed", labels=labels
        )
        for model, version, stats in list(self._source()):
            key = {"model": model, "version": str(version)}
            success.add(key, stats.success.count)
            failure.add(key, stats.fail.count)
            count.add(key, stats.inference_count)
            execs.add(key, stats.execution_count)
            for family, (_, field, _) in zip(durations, _DURATIONS, strict=True):
                family.add(key, getattr(stats, field).ns // 1000)
            latency.add_metric(list(key.values()), _latency_buckets(stats), sum_value=stats.success.ns / 1e9)
            sizes = {size: b.compute_infer.count for size, b in list(stats.batches.items())}
            batch.add_metric(
                list(key.values()), _batch_buckets(sizes), sum_value=sum(size * n for size, n in sizes.items())
            )
        ready = GaugeMetricFamily("tensorgate_server_ready", "1 when the server reports ready")
        ready.add_metric([], 1.0 if self._ready() else 0.0)
        errors = _Counter(
            "tensorgate_internal_errors", "Requests that failed on a server bug (logged with a traceback)"
        )
        errors.add({}, self._internal_errors())
        yield from (success, failure, count, execs, *durations, latency, batch, ready, errors)
        if self._loop_cpu_seconds is not None:
            yield CounterMetricFamily(
                "tensorgate_event_loop_cpu_seconds",
                "CPU time of the event-loop thread, which takes every request off gRPC, decodes, schedules "
                "and answers it; a rate near 1 means the server is saturated and new calls wait inside gRPC",
                value=self._loop_cpu_seconds(),
            )


def _latency_buckets(stats: ModelStats) -> list[tuple[str, float]]:
    """Cumulative (upper bound in seconds, count) pairs, as Prometheus histograms want them."""
    cumulative, buckets = 0, []
    for bound, n in zip((*LATENCY_BUCKETS_NS, None), list(stats.latency_buckets), strict=True):
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


def serve_metrics(
    host: str,
    port: int,
    source: StatsSource,
    ready: Callable[[], bool],
    internal_errors: Callable[[], int],
    loop_cpu_seconds: Callable[[], float] | None,
) -> None:
    """Start the /metrics HTTP endpoint on its own thread."""
    REGISTRY.register(ModelStatsCollector(source, ready, internal_errors, loop_cpu_seconds))
    start_http_server(port, addr=host)
    log.info("event=metrics_listening address=%s:%d path=/metrics", host, port)
