"""Prometheus metrics on ``--metrics-port``: the collector (models.py), the host and GPU sampler
(sampler.py, cpu.py, gpu.py) and the event counters recorded off the request path (events.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import waitress
from prometheus_client.registry import REGISTRY

from tensorgate.metrics.cpu import CpuReader
from tensorgate.metrics.exposition import triton_exposition
from tensorgate.metrics.gpu import GpuReader
from tensorgate.metrics.models import (
    ModelStatsCollector,
    ServerView,
    VersionMetrics,
    VersionSource,
    counter_names,
    thread_cpu_seconds,
)
from tensorgate.metrics.sampler import Sampler
from tensorgate.settings import host_port

__all__ = ["MetricsEndpoint", "Sampler", "VersionMetrics", "serve_metrics", "thread_cpu_seconds"]

log = logging.getLogger(__name__)

# The HTTP server of /metrics (waitress): one event loop thread holds the connections, a fixed pool
# answers scrapes. A client that connects and sends nothing, or stops reading, holds no thread and
# is closed once idle; past the connection limit new ones wait in the listen backlog.
SCRAPE_THREADS = 2
CONNECTION_LIMIT = 512  # far above what scrapers need; a flood past it waits in the backlog
IDLE_TIMEOUT_SECS = 10


class MetricsEndpoint:
    """The /metrics server and the sampler; ``stop`` ends both."""

    def __init__(self, server: Any, sampler: Sampler | None) -> None:  # a waitress server
        self.sampler = sampler
        self._server = server
        self._thread = threading.Thread(target=server.run, name="tg-metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.close()
        if self.sampler is not None:
            self.sampler.stop()


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
) -> MetricsEndpoint:
    """Start the /metrics HTTP endpoint on its own threads, and the sampler of host (``cpu``) and
    GPU (``gpu``) state when either is on. OSError if the address cannot be bound."""
    sampler = None
    if cpu or gpu:
        if not gpu:
            log.info("event=gpu_metrics_off reason=%s", "--allow-gpu-metrics=false")
        gpu_reader = GpuReader.open() if gpu else None
        sampler = Sampler(interval_ms / 1000, CpuReader() if cpu else None, gpu_reader)
        sampler.start()
    REGISTRY.register(ModelStatsCollector(source, server, loop_cpu_seconds, sampler))
    http = waitress.create_server(
        triton_exposition(REGISTRY, counter_names),
        host=host,
        port=port,
        threads=SCRAPE_THREADS,
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=IDLE_TIMEOUT_SECS,
        cleanup_interval=1,
        asyncore_use_poll=True,  # select() would stop at 1024 descriptors
        ident="tensorgate",
        clear_untrusted_proxy_headers=True,
    )
    endpoint = MetricsEndpoint(http, sampler)
    log.info(
        "event=metrics_listening address=%s path=/metrics interval_ms=%d cpu=%s gpu=%s",
        host_port(host, int(http.effective_port)),  # the port bound (port 0 picks one)
        interval_ms,
        str(cpu).lower(),
        str(gpu).lower(),
    )
    return endpoint
