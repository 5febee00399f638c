"""A real Prometheus server scrapes tensorgate and can answer what a Grafana dashboard asks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server
from prom import PROMETHEUS, query, running_prometheus

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (scripts/install_prometheus.sh installs Debian's)"
)


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), server.metrics_port) as url:
        yield url


def eventually(url: str, expr: str, timeout: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = query(url, expr)
            if result:
                return result
        except OSError:
            pass  # Prometheus still starting
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus never answered {expr!r}")
        time.sleep(0.5)


def test_prometheus_scrapes_counters_and_histograms(server: Server, prometheus: str) -> None:
    tensor = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    for _ in range(20):
        server.client.infer("identity", [tensor])
    up = eventually(prometheus, 'up{job="tensorgate"} == 1')
    assert up
    done = eventually(prometheus, 'nv_inference_request_success{model="identity",version="1"} >= 20')
    assert float(done[0]["value"][1]) >= 20  # type: ignore[index]
    p99 = eventually(
        prometheus,
        'histogram_quantile(0.99, sum by (le) (tensorgate_request_duration_seconds_bucket{model="identity"}))',
    )
    assert 0 < float(p99[0]["value"][1]) < 10  # type: ignore[index]
    batches = eventually(prometheus, 'tensorgate_batch_size_count{model="identity"} > 0')
    assert batches
    # Requests cost the loop thread CPU: the counter Prometheus holds grows with them, and by at most
    # the wall time that passed (one thread, one core at most).
    first = float(eventually(prometheus, "tensorgate_event_loop_cpu_seconds_total")[0]["value"][1])  # type: ignore[index]
    started = time.monotonic()
    for _ in range(200):
        server.client.infer("identity", [tensor])
    grown = eventually(prometheus, f"tensorgate_event_loop_cpu_seconds_total > {first!r}")
    elapsed = time.monotonic() - started
    assert 0 < float(grown[0]["value"][1]) - first <= elapsed + 1.0  # type: ignore[index]  # + one scrape
