"""A real Prometheus server scrapes tensorgate and can answer what a Grafana dashboard asks."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (scripts/install_prometheus.sh installs Debian's)"
)


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: tensorgate\n    static_configs: [{{targets: ['127.0.0.1:{server.metrics_port}']}}]\n"
    )
    port = free_port()
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(work / "log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def query(url: str, expr: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


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
