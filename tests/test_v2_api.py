"""The V2 RPCs through tritonclient against the example repository, answers checked against ONNX
Runtime run in this process."""

from __future__ import annotations

import asyncio
import os
import queue
import re
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from conftest import Server
from tritonclient.utils import InferenceServerException


def _reference(repo: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[no-any-return]


def _add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
        grpcclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_health_and_server_metadata(server: Server) -> None:
    c = server.client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("add_sub") and c.is_model_ready("add_sub", "1")
    assert not c.is_model_ready("add_sub", "2") and not c.is_model_ready("nope")
    meta = c.get_server_metadata()
    assert meta.name == "tensorgate" and "statistics" in meta.extensions


def test_grpc_health_service(server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_model_metadata_and_config(server: Server) -> None:
    c = server.client
    meta = c.get_model_metadata("identity")
    assert meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("INPUT0", "FP32", [-1, 16])]
    derived = c.get_model_config("identity").config
    assert derived.max_batch_size == 4 and derived.backend == "onnxruntime"
    # filled as Triton fills them (AutoCompleteBackendFields, NormalizeInstanceGroup, NormalizeModelConfig)
    assert derived.platform == "onnxruntime_onnx" and derived.default_model_filename == "model.onnx"
    assert [g.name for g in derived.instance_group] == ["identity"]  # the group Triton adds has the model's name
    assert list(derived.dynamic_batching.preferred_batch_size) == [4]  # none given: max_batch_size
    assert [g.kind for g in derived.instance_group] == [2]  # KIND_CPU: the engine chosen on this machine
    assert [(t.name, list(t.dims)) for t in derived.output] == [("OUTPUT0", [16])]
    given = c.get_model_config("add_sub", "1").config
    assert given.max_batch_size == 8 and [t.name for t in given.input] == ["INPUT0", "INPUT1"]
    assert [g.name for g in given.instance_group] == ["add_sub_0"]  # a group config.pbtxt leaves unnamed
    strings = c.get_model_metadata("string_identity")
    assert strings.inputs[0].datatype == "BYTES"


def test_infer_matches_onnxruntime(server: Server) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 16), dtype=np.float32)
    b = rng.standard_normal((3, 16), dtype=np.float32)
    result = server.client.infer("add_sub", _add_sub_inputs(a, b), request_id="req-7")
    want = _reference(server.repo, "add_sub", {"INPUT0": a, "INPUT1": b})
    assert result.get_response().id == "req-7"
    assert result.get_response().model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), want[0])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), want[1])


def test_requested_output_subset(server: Server) -> None:
    a = np.ones((1, 16), np.float32)
    result = server.client.infer("add_sub", _add_sub_inputs(a, a), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


def test_bytes_round_trip(server: Server) -> None:
    text = np.array([["héllo".encode()], [b""], [b"x" * 1000]], dtype=np.object_)
    tensor = grpcclient.InferInput("TEXT", [3, 1], "BYTES")
    tensor.set_data_from_numpy(text)
    result = server.client.infer("string_identity", [tensor])
    assert result.as_numpy("TEXT_OUT").tolist() == text.tolist()


def test_async_infer(server: Server) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    a = np.full((2, 16), 3, np.float32)
    for i in range(5):
        server.client.async_infer(
            "add_sub", _add_sub_inputs(a, a * i), lambda result, error: answers.put((result, error)), request_id=str(i)
        )
    got = {}
    for _ in range(5):
        result, error = answers.get(timeout=10)
        assert error is None
        got[result.get_response().id] = result.as_numpy("OUTPUT0")  # type: ignore[attr-defined]
    for i in range(5):
        np.testing.assert_array_equal(got[str(i)], a + a * i)


def test_stream_infer_with_an_error_in_the_middle(server: Server) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    a = np.ones((1, 16), np.float32)
    try:
        for i in range(4):
            client.async_stream_infer("add_sub", _add_sub_inputs(a * i, a), request_id=f"s{i}")
        client.async_stream_infer("no_such_model", _add_sub_inputs(a, a), request_id="bad")
        client.async_stream_infer("add_sub", _add_sub_inputs(a, a), request_id="after")
        results, errors = {}, []
        for _ in range(6):
            result, error = answers.get(timeout=10)
            if error is not None:
                errors.append(str(error))
            else:
                results[result.get_response().id] = result.as_numpy("OUTPUT0")  # type: ignore[attr-defined]
    finally:
        client.stop_stream()
        client.close()
    assert len(errors) == 1 and "no_such_model" in errors[0]
    assert sorted(results) == ["after", "s0", "s1", "s2", "s3"]
    for i in range(4):
        np.testing.assert_array_equal(results[f"s{i}"], a * i + a)


def test_asyncio_client(server: Server) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)

    async def run() -> np.ndarray:
        async with aioclient.InferenceServerClient(server.url) as client:
            assert await client.is_server_ready()
            inputs = [aioclient.InferInput("INPUT0", [1, 16], "FP32")]
            inputs[0].set_data_from_numpy(a)
            result = await client.infer("identity", inputs)
            return result.as_numpy("OUTPUT0")  # type: ignore[no-any-return]

    np.testing.assert_array_equal(asyncio.run(run()), a)


def test_repository_index(server: Server) -> None:
    index = server.client.get_model_repository_index()
    rows = {(m.name, m.version, m.state) for m in index.models}
    assert rows == {("add_sub", "1", "READY"), ("identity", "1", "READY"), ("string_identity", "1", "READY")}


def test_statistics_count_requests(server: Server) -> None:
    c = server.client
    before = c.get_inference_statistics("identity").model_stats[0]
    a = np.zeros((2, 16), np.float32)
    tensor = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    tensor.set_data_from_numpy(a)
    for _ in range(3):
        c.infer("identity", [tensor])
    after = c.get_inference_statistics("identity", "1").model_stats[0]
    assert after.name == "identity" and after.version == "1"
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 3
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference > 0
    assert any(b.batch_size == 2 for b in after.batch_stats)
    every = c.get_inference_statistics().model_stats
    assert {s.name for s in every} == {"add_sub", "identity", "string_identity"}
    # Triton's codes and words (its tests match them): INVALID_ARGUMENT, "requested model ... is not available"
    for args, words in [
        (("nope",), "requested model 'nope' is not available"),
        (("identity", "7"), "requested model version is not available for model 'identity'"),
    ]:
        with pytest.raises(InferenceServerException, match=re.escape(words)) as refused:
            c.get_inference_statistics(*args)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_latency_and_batch_size_histograms(server: Server) -> None:

    from prometheus_client.parser import text_string_to_metric_families

    tensor = grpcclient.InferInput("INPUT0", [3, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((3, 16), np.float32))
    for _ in range(5):
        server.client.infer("identity", [tensor])
    text = server.exposition()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    stats = server.client.get_inference_statistics("identity").model_stats[0]

    def sample(family: str, suffix: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no {family}{suffix} {labels}")

    latency = "tensorgate_request_duration_seconds"
    inf = sample(latency, "_bucket", model="identity", le="+Inf")
    assert inf == sample(latency, "_count", model="identity") == stats.inference_stats.success.count >= 5
    # the sums are the statistics' own durations
    served = stats.inference_stats
    assert sample(latency, "_sum", model="identity") == pytest.approx(served.success.ns / 1e9, rel=1e-9)
    assert sample("tensorgate_queue_duration_seconds", "_sum", model="identity") == pytest.approx(
        served.queue.ns / 1e9, rel=1e-9
    )
    compute_ns = served.compute_input.ns + served.compute_infer.ns + served.compute_output.ns
    assert sample("tensorgate_compute_duration_seconds", "_sum", model="identity") == pytest.approx(
        compute_ns / 1e9, rel=1e-9
    )
    # the buckets: 100 µs to 60 s (README), and they place the requests where their summed time says:
    # every one above the largest bound no request is under, none above the smallest bound all are under
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in families[latency].samples
        if s.name == latency + "_bucket" and s.labels.get("model") == "identity"
    ]
    bounds = [b for b, _ in buckets]
    assert (bounds[0], bounds[-2], bounds[-1]) == (0.0001, 60.0, float("inf")), buckets
    empty = max((b for b, n in buckets if n == 0), default=0.0)
    full = min(b for b, n in buckets if n == inf)
    assert inf * empty < sample(latency, "_sum", model="identity") <= inf * full, buckets
    assert sample("tensorgate_batch_size", "_bucket", model="identity", le="2") < sample(
        "tensorgate_batch_size", "_bucket", model="identity", le="4"
    )  # every 3-row request ran in a batch of at least 3
    assert sample("tensorgate_batch_size", "_bucket", model="identity", le="+Inf") == stats.execution_count


def test_event_loop_cpu_counter_is_the_loop_threads_own_clock(server: Server) -> None:

    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> float:
        text = server.exposition()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "tensorgate_event_loop_cpu_seconds_total":
                    return float(s.value)
        raise AssertionError("no tensorgate_event_loop_cpu_seconds_total")

    def main_thread_cpu() -> float:  # the event loop runs on the server's main thread (TID == PID)
        pid = server.proc.pid
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
    before = scrape()
    for _ in range(300):
        server.client.infer("identity", [tensor])
    after = scrape()
    assert after > before  # every request costs the loop some CPU
    assert abs(after - main_thread_cpu()) < 0.1  # the loop thread's clock, not the process's


def test_metrics_endpoint(server: Server) -> None:

    text = server.exposition()
    assert 'nv_inference_request_success{model="identity",version="1"}' in text
    assert "tensorgate_internal_errors_total 0.0" in text and "tensorgate_server_ready 1.0" in text
