"""Prometheus metrics, named and labelled as Triton's so existing dashboards keep working.

Counters are read from each model version's statistics at scrape time, so the request path does
no extra work for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from tensorgate.stats import ModelStats

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


class ModelStatsCollector(Collector):
    def __init__(self, source: StatsSource, ready: Callable[[], bool], internal_errors: Callable[[], int]) -> None:
        self._source = source
        self._ready = ready
        self._internal_errors = internal_errors

    def collect(self) -> Iterator[Metric]:
        success = _Counter("nv_inference_request_success", "Number of successful inference requests")
        failure = _Counter("nv_inference_request_failure", "Number of failed inference requests")
        count = _Counter("nv_inference_count", "Number of inferences performed (a batch of n counts n)")
        execs = _Counter("nv_inference_exec_count", "Number of model executions")
        durations = [_Counter(name, doc) for name, _, doc in _DURATIONS]
        for model, version, stats in list(self._source()):
            key = {"model": model, "version": str(version)}
            success.add(key, stats.success.count)
            failure.add(key, stats.fail.count)
            count.add(key, stats.inference_count)
            execs.add(key, stats.execution_count)
            for family, (_, field, _) in zip(durations, _DURATIONS, strict=True):
                family.add(key, getattr(stats, field).ns // 1000)
        ready = GaugeMetricFamily("tensorgate_server_ready", "1 when the server reports ready")
        ready.add_metric([], 1.0 if self._ready() else 0.0)
        errors = _Counter(
            "tensorgate_internal_errors", "Requests that failed on a server bug (logged with a traceback)"
        )
        errors.add({}, self._internal_errors())
        yield from (success, failure, count, execs, *durations, ready, errors)


def serve_metrics(
    host: str, port: int, source: StatsSource, ready: Callable[[], bool], internal_errors: Callable[[], int]
) -> None:
    """Start the /metrics HTTP endpoint on its own thread."""
    REGISTRY.register(ModelStatsCollector(source, ready, internal_errors))
    start_http_server(port, addr=host)
    log.info("event=metrics_listening address=%s:%d path=/metrics", host, port)
