"""Prometheus metrics on ``--metrics-port``: the collector (models.py), the host and GPU sampler
(sampler.py, cpu.py, gpu.py) and the event counters recorded off the request path (events.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import start_http_server
from prometheus_client.registry import REGISTRY

from tensorgate.metrics.cpu import CpuReader
from tensorgate.metrics.gpu import GpuReader
from tensorgate.metrics.models import (
    ModelStatsCollector,
    ServerView,
    VersionMetrics,
    VersionSource,
    thread_cpu_seconds,
)
from tensorgate.metrics.sampler import Sampler

__all__ = ["Sampler", "VersionMetrics", "serve_metrics", "thread_cpu_seconds"]

log = logging.getLogger(__name__)


def serve_metrics(
    host: str,
    port: int,
    source: VersionSource,
    server: ServerView,
    loop_cpu_seconds: Callable[[], float] | None,
    *,
    interval_ms: int = 2000,
    cpu: bool = True,
    gpu: bool = True,
) -> Sampler | None:
    """Start the /metrics HTTP endpoint on its own thread, and the sampler of host (``cpu``) and GPU
    (``gpu``) state when either is on; returns the sampler (to stop at shutdown)."""
    sampler = None
    if cpu or gpu:
        if not gpu:
            log.info("event=gpu_metrics_off reason=%r", "--allow-gpu-metrics=false")
        gpu_reader = GpuReader.open() if gpu else None
        sampler = Sampler(interval_ms / 1000, CpuReader() if cpu else None, gpu_reader)
        sampler.start()
    REGISTRY.register(ModelStatsCollector(source, server, loop_cpu_seconds, sampler))
    start_http_server(port, addr=host)
    log.info(
        "event=metrics_listening address=%s:%d path=/metrics interval_ms=%d cpu=%s gpu=%s",
        host,
        port,
        interval_ms,
        str(cpu).lower(),
        str(gpu).lower(),
    )
    return sampler
