"""The metric set under known traffic, read back through a real Prometheus: Triton's counters with
their failure reasons, the pending count, the latency histograms, engine info and the host gauges."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, wait_for
from models import lookup, slow, write_config
from prometheus_client import REGISTRY, generate_latest
from tensorgate.metrics import events
from test_prometheus import PROMETHEUS, eventually, prometheus  # noqa: F401  (the fixture, for this module's server)
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (scripts/install_prometheus.sh installs Debian's)"
)
# With 384 layers 2-4 s a request on two cores (the machine's speed varies ~2x by day): long enough for
# Prometheus's 1 s scrapes to land while one request runs and another waits. At 256 layers a fast day
# made it ~1.4 s, and the instant query below missed the moment often.
SLOW_ROWS = 1024


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics") / "repo"
    slow(root / "slow" / "1" / "model.onnx", layers=384)
    write_config(
        root / "slow",
        "max_batch_size: 1024\ndynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n",
    )
    lookup(root / "lookup" / "1" / "model.onnx")
    write_config(root / "lookup", "max_batch_size: 8\n")
    return root


def _slow(server: Server, outcomes: list[str], timeout: float | None = None) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    tensor = grpcclient.InferInput("INPUT0", [SLOW_ROWS, 512], "FP32")
    tensor.set_data_from_numpy(np.ones((SLOW_ROWS, 512), np.float32))
    try:
        client.infer("slow", [tensor], client_timeout=timeout)
        outcomes.append("OK")
    except InferenceServerException as exc:
        outcomes.append(str(exc.status()))
    finally:
        client.close()


def _lookup(server: Server, index: int, datatype: str = "INT64") -> str:
    tensor = grpcclient.InferInput("INPUT0", [1, 1], datatype)
    tensor.set_data_from_numpy(np.array([[index]], np.int64 if datatype == "INT64" else np.float32))
    try:
        server.client.infer("lookup", [tensor])
        return "OK"
    except InferenceServerException as exc:
        return str(exc.status())


def _value(url: str, expr: str) -> float:
    return float(eventually(url, expr)[0]["value"][1])  # type: ignore[index]


def test_known_traffic_reads_back_through_prometheus(server: Server, prometheus: str) -> None:  # noqa: F811
    eventually(prometheus, 'up{job="tensorgate"} == 1')
    # lookup: five successes, one engine failure (an index beyond the table), one invalid request
    assert [_lookup(server, 1) for _ in range(5)] == ["OK"] * 5
    assert _lookup(server, 7) == "StatusCode.INTERNAL"
    assert _lookup(server, 1, datatype="FP32") == "StatusCode.INVALID_ARGUMENT"
    # slow: one running, one queued (max_queue_size 1), a third rejected
    outcomes: list[str] = []
    first = threading.Thread(target=_slow, args=(server, outcomes))
    first.start()
    wait_for(lambda: server.sample('tensorgate_requests_in_flight{model="slow"') == 1, 10, 0.01)
    assert server.sample('nv_inference_pending_request_count{model="slow"') == 0  # running is not pending
    second = threading.Thread(target=_slow, args=(server, outcomes))
    second.start()
    wait_for(lambda: server.sample('nv_inference_pending_request_count{model="slow"') == 1, 10, 0.01)
    assert server.sample('tensorgate_requests_in_flight{model="slow"') == 2
    _slow(server, outcomes)  # the queue is full
    assert outcomes == ["StatusCode.UNAVAILABLE"]
    # Prometheus saw both in flight while they ran (a scrape within the window; the instant value may
    # already be 1 when the query runs)
    assert _value(prometheus, 'max_over_time(tensorgate_requests_in_flight{model="slow"}[1m]) == 2') == 2
    first.join(30)
    second.join(30)
    # then one more running and one whose deadline passes while it waits behind it: cancelled
    third = threading.Thread(target=_slow, args=(server, outcomes))
    third.start()
    wait_for(lambda: server.sample('tensorgate_requests_in_flight{model="slow"') == 1, 10, 0.01)
    _slow(server, outcomes, timeout=0.3)
    third.join(30)
    assert sorted(outcomes) == ["OK"] * 3 + ["StatusCode.DEADLINE_EXCEEDED", "StatusCode.UNAVAILABLE"]

    def failures(model: str) -> dict[str, float]:
        rows = eventually(prometheus, f'nv_inference_request_failure{{model="{model}"}}')
        return {r["metric"]["reason"]: float(r["value"][1]) for r in rows}  # type: ignore[index]

    assert _value(prometheus, 'nv_inference_request_success{model="slow"} == 3') == 3
    wait_for(lambda: failures("slow") == {"REJECTED": 1, "CANCELED": 1, "BACKEND": 0, "OTHER": 0}, 15, 0.5)
    assert _value(prometheus, 'nv_inference_request_success{model="lookup"} == 5') == 5
    # the invalid request was refused by the frontend's checks, before any queue: not a failed inference
    assert failures("lookup") == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}
    assert _value(prometheus, 'tensorgate_requests_in_flight{model="slow"} == 0') == 0
    assert _value(prometheus, 'max_over_time(tensorgate_requests_in_flight{model="slow"}[5m])') == 2
    assert _value(prometheus, 'max_over_time(nv_inference_pending_request_count{model="slow"}[5m])') == 1
    # histograms: three slow requests computed for over 0.1 s each; the queued one waited a whole run
    assert _value(prometheus, 'tensorgate_compute_duration_seconds_count{model="slow"}') == 3
    assert _value(prometheus, 'tensorgate_compute_duration_seconds_bucket{model="slow",le="0.1"}') == 0
    waited = _value(prometheus, 'tensorgate_queue_duration_seconds_bucket{model="slow",le="0.25"}')
    assert waited <= 2
    p50 = _value(prometheus, 'histogram_quantile(0.5, tensorgate_request_duration_seconds_bucket{model="slow"})')
    assert 0.1 < p50 < 60
    info = eventually(prometheus, 'tensorgate_model_engine_info{model="lookup"}')
    assert info[0]["metric"]["engine"] == "onnxruntime-cpu" and info[0]["metric"]["device"] == "cpu"  # type: ignore[index]
    assert info[0]["metric"]["precision"] == "fp32"  # type: ignore[index]
    assert 0 < _value(prometheus, 'nv_model_load_duration_secs{model="slow"}') < 60


def test_host_gauges_match_the_machine(server: Server, prometheus: str) -> None:  # noqa: F811
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    assert _value(prometheus, "nv_cpu_memory_total_bytes") == total
    used = _value(prometheus, "nv_cpu_memory_used_bytes")
    assert 0 < used < total
    assert 0 <= _value(prometheus, "nv_cpu_utilization") <= 1
    if "nv_gpu_utilization" not in server.exposition():
        assert "event=gpu_metrics_off" in server.log  # why there are none, said once
        assert server.log.count("event=gpu_metrics_off") == 1


def test_promtool_finds_nothing_but_tritons_own_names(server: Server) -> None:
    """Our families pass ``promtool check metrics``; what it says of Triton's nv_* names (abbreviated
    units, a gauge named _count) is Triton's naming, kept so its dashboards work unchanged."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's prometheus package brings it: scripts/install_prometheus.sh)")
    text = server.exposition()
    ours = "\n".join(line for line in text.splitlines() if not re.match(r"(# (HELP|TYPE) )?nv_", line)) + "\n"
    clean = subprocess.run([promtool, "check", "metrics"], input=ours, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    whole = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    findings = [line for line in (whole.stdout + whole.stderr).splitlines() if line.strip()]
    assert findings and all(line.startswith("nv_") for line in findings), findings


@pytest.mark.parametrize("gzipped", [False, True])
def test_tritons_counters_are_typed_counter_in_the_text_format_whatever_the_scraper_asks(
    server: Server, gzipped: bool
) -> None:
    """Prometheus asks for OpenMetrics first; Triton answers its text format (0.0.4) with its counters
    typed ``counter`` under their bare names, and so does tensorgate (collectors that read types take
    untyped series for gauges)."""
    import gzip
    import urllib.request

    headers = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"}
    if gzipped:
        headers["Accept-Encoding"] = "gzip"
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert (answer.headers.get("Content-Encoding") == "gzip") is gzipped
        body = answer.read()
    text = (gzip.decompress(body) if gzipped else body).decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                 "nv_inference_compute_output_duration_us"):  # fmt: skip
        assert types.get(name) == "counter", (name, types.get(name))
        assert re.search(rf"^{name}{{", text, re.M), name  # the samples under the bare name, no _total
    assert types["nv_inference_pending_request_count"] == "gauge"
    assert "untyped" not in {types[n] for n in types if n.startswith("nv_")}


def test_the_metrics_port_serves_metrics_alone(server: Server) -> None:
    """As Triton: /metrics (GET, and HEAD for its headers), 404 elsewhere; gzip only when the scraper
    takes it (``gzip;q=0`` refuses it), with ``Vary: Accept-Encoding``."""
    import http.client

    def ask(method: str, path: str, accept: str = "") -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
        try:
            connection.request(method, path, headers={"Accept-Encoding": accept} if accept else {})
            answer = connection.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            connection.close()

    status, headers, body = ask("GET", "/metrics")
    assert status == 200 and b"nv_inference_count" in body and headers["vary"] == "Accept-Encoding"
    status, headers, body = ask("HEAD", "/metrics")
    assert (status, body) == (200, b"") and int(headers["content-length"]) > 0
    for path in ("/", "/foo", "/metricsx", "/v2/health/ready"):
        assert ask("GET", path)[0] == 404, path
    assert "content-encoding" not in ask("GET", "/metrics", "gzip;q=0, identity")[1]
    assert ask("GET", "/metrics", "deflate, gzip;q=0.5")[1]["content-encoding"] == "gzip"
    assert "content-encoding" not in ask("GET", "/metrics", "identity")[1]


def test_no_created_series_beside_our_counters() -> None:
    """prometheus_client's `_created` gauges (OpenMetrics' idea, one more series per child in the text format)
    are off for the server's own counters and histograms."""
    events.ENGINE_BUILDS.labels(model="m", version="1", engine="tensorrt", outcome="built").inc()
    events.ENGINE_BUILD_SECONDS.labels(engine="tensorrt", outcome="built").observe(1.0)
    page = generate_latest(REGISTRY).decode()
    assert "tensorgate_engine_builds_total{" in page and "tensorgate_engine_build_duration_seconds_count{" in page
    assert "_created" not in page, [line for line in page.splitlines() if "_created" in line]
