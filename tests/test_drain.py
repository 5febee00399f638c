"""Shutdown under steady traffic (nothing in flight is lost; new calls are still taken for the drain
delay) and the health service as Kubernetes probes call it (any service name)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, free_port, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import add_sub, slow, write_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Call:
    started: float
    ended: float
    error: str | None  # None: answered with the right outputs


@pytest.fixture
def cleanup() -> Iterator[list[Server]]:
    """Servers a test starts itself (it checks their exit): stopped at the end whatever happened, so a
    failed test leaves no server running into the next ones."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
        server.stop()


def _repo(root: Path) -> Path:
    repo = root / "repo"
    add_sub(repo / "add_sub" / "1" / "model.onnx")
    write_config(
        repo / "add_sub",
        "max_batch_size: 8\ndynamic_batching { }\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n",
    )
    slow(repo / "slow" / "1" / "model.onnx")
    write_config(repo / "slow", "max_batch_size: 64\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n")
    return repo


class Traffic:
    """Closed-loop workers, each with its own tritonclient, calling until told to stop; every call
    is recorded with its start and end (monotonic) and its error, if any."""

    def __init__(
        self, url: str, workers: int, model: str = "add_sub", channel_args: list[tuple[str, str]] | None = None
    ) -> None:
        self.url = url
        self.model = model
        self.channel_args = channel_args
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(i,)) for i in range(workers)]
        for t in self._threads:
            t.start()

    def _work(self, seed: int) -> None:
        client = grpcclient.InferenceServerClient(self.url, channel_args=self.channel_args)
        rows = 16 if self.model == "add_sub" else 512
        a = np.full((1, rows), seed, np.float32) if self.model == "add_sub" else np.ones((4, rows), np.float32)
        b = np.ones_like(a)
        inputs = [grpcclient.InferInput("INPUT0", list(a.shape), "FP32")]
        inputs[0].set_data_from_numpy(a)
        if self.model == "add_sub":
            inputs.append(grpcclient.InferInput("INPUT1", list(b.shape), "FP32"))
            inputs[1].set_data_from_numpy(b)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                error: str | None = None
                try:
                    result = client.infer(self.model, inputs, client_timeout=30)
                    if self.model == "add_sub" and not np.array_equal(result.as_numpy("OUTPUT0"), a + b):
                        error = "wrong answer"
                except Exception as exc:
                    error = str(exc)
                with self._lock:
                    self.calls.append(Call(started, time.monotonic(), error))
                if error is not None:
                    time.sleep(0.01)  # refused: the server is going away
        finally:
            client.close()

    def stop(self) -> list[Call]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self.calls


def _steady(server: Server, traffic: Traffic, seconds: float = 1.0) -> float:
    """Let the traffic run, check it succeeds, then SIGTERM the server; the signal's time."""
    wait_for(lambda: len(traffic.calls) >= 20, 20, 0.01)
    time.sleep(seconds)
    assert all(c.error is None for c in traffic.calls), [c.error for c in traffic.calls if c.error][:3]
    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)
    return signalled


@pytest.mark.parametrize("model", ["add_sub", "slow"])
def test_sigterm_under_steady_traffic_loses_no_request_in_flight(tmp_path: Path, model: str) -> None:
    """Every call sent before the signal is answered, fast model or slow batches; calls sent after it
    (no drain delay) may be refused, never cut off."""
    server = Server(_repo(tmp_path))
    traffic = Traffic(server.url, 8, model)
    signalled = _steady(server, traffic)
    code = server.proc.wait(30)
    calls = traffic.stop()
    server.stop()
    assert code == 0, server.log
    before = [c for c in calls if c.started < signalled]
    lost = [c.error for c in before if c.error is not None]
    assert not lost, f"{len(lost)} of {len(before)} calls in flight at SIGTERM failed: {lost[:3]}"
    # Calls sent after the signal are answered or refused with UNAVAILABLE and a message; only those
    # that reach gRPC in the last instant before it stops, well after the signal, are cancelled by
    # gRPC itself (grpc/grpc#41785), which a drain delay avoids (next test).
    refused = [c for c in calls if c.started >= signalled and c.error is not None]
    odd = [c for c in refused if not any(s in c.error for s in ("UNAVAILABLE", "failed to connect", "refused"))]
    assert all(c.started - signalled >= 0.5 for c in odd), [(c.started - signalled, c.error) for c in odd][:3]
    assert "event=shutdown_complete" in server.log


def test_drain_delay_keeps_taking_requests_while_not_ready(tmp_path: Path) -> None:
    """SIGTERM turns readiness NOT_SERVING at once (liveness stays SERVING), but requests are still
    answered for --drain-delay-secs, so calls already on their way while the endpoint is still listed
    succeed; then the process exits 0."""
    drain = 2.0
    server = Server(_repo(tmp_path), "--drain-delay-secs", str(drain))
    channel = grpc.insecure_channel(server.url)
    health = health_pb2_grpc.HealthStub(channel)
    traffic = Traffic(server.url, 4)
    signalled = _steady(server, traffic, 0.5)
    wait_for(lambda: "event=draining" in server.log, 5, 0.01)
    readiness = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5).status
    liveness = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5).status
    assert not server.client.is_server_ready()
    assert (readiness, liveness) == (NOT_SERVING, SERVING)
    code = server.proc.wait(30)
    exited = time.monotonic()
    calls = traffic.stop()
    channel.close()
    server.stop()
    assert code == 0, server.log
    assert exited - signalled >= drain
    in_drain = [c for c in calls if signalled <= c.started and c.ended < signalled + drain - 0.3]
    assert len(in_drain) >= 10, f"only {len(in_drain)} calls during the drain delay"
    failed = [c.error for c in calls if c.started < signalled + drain - 0.3 and c.error is not None]
    assert not failed, f"{len(failed)} calls sent before the drain delay ended failed: {failed[:3]}"


def test_http_answers_close_their_kept_alive_connection_while_draining(tmp_path: Path) -> None:
    """A Service balances connections: an HTTP client keeping its connection alive would keep sending
    to a replica that is going away. While it drains, the server answers (200) and closes each
    connection (``Connection: close``), so the client's next request opens a new one, which the Service
    sends to a replica that is ready."""
    import http.client

    port = free_port()
    server = Server(_repo(tmp_path), "--http-port", str(port), "--drain-delay-secs", "3")
    body = json.dumps(
        {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "FP32", "data": list(range(16))} for n in ("INPUT0", "INPUT1")
            ]
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/v2/models/add_sub/infer", body)
        before = connection.getresponse()
        before.read()
        assert before.status == 200 and before.getheader("Connection", "").lower() != "close"
        server.send_signal(signal.SIGTERM)
        wait_for(lambda: "event=draining" in server.log, 5, 0.01)
        connection.request("POST", "/v2/models/add_sub/infer", body)  # the same kept-alive connection
        during = connection.getresponse()
        assert during.status == 200 and json.loads(during.read())["outputs"]
        assert during.getheader("Connection", "").lower() == "close"
    finally:
        connection.close()
    assert server.proc.wait(30) == 0, server.log
    server.stop()


def test_drain_delay_must_leave_time_to_finish(tmp_path: Path) -> None:
    server = Server(_repo(tmp_path), "--drain-delay-secs", "10", "--exit-timeout-secs", "5", wait_ready=False)
    assert server.proc.wait(30) != 0
    assert "--drain-delay-secs (10.0) must be shorter than --exit-timeout-secs (5.0)" in server.log
    server.stop()


def test_health_answers_any_service_name(tmp_path: Path) -> None:
    """Probes may send any service name: 'liveness' means the process is up, every other name (the
    empty one, the inference service, 'readiness', anything) means ready to serve."""
    server = Server(_repo(tmp_path))
    with grpc.insecure_channel(server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService", "readiness", "liveness", "anything-else"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == SERVING, name
        watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=10)
        assert next(watch).status == SERVING
        other = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(other).status == SERVING
        other.cancel()  # one watcher leaving must not deafen the others
        time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        watch.cancel()
    assert server.stop() == 0


def test_two_replicas_keep_serving_while_one_is_drained_and_restarted(tmp_path: Path) -> None:
    """Clients on a round_robin channel over two replicas, with client-side health checking on the
    readiness service (what a service mesh or an L7 balancer does with Kubernetes' endpoints): one
    replica gets SIGTERM (drain delay 1 s), exits 0 and is started again on the same port; every
    request of the steady traffic succeeds, and both replicas serve before and after."""
    repo = _repo(tmp_path)
    a, b = Server(repo, "--drain-delay-secs", "1"), Server(repo, "--drain-delay-secs", "1")
    health_check = {"serviceName": "readiness"}
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": health_check})
    url = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    traffic = Traffic(url, 4, channel_args=[("grpc.service_config", config)])
    try:
        wait_for(lambda: _answered(a) > 20 and _answered(b) > 20, 20, 0.05)
        signalled = time.monotonic()
        a.send_signal(signal.SIGTERM)
        assert a.proc.wait(30) == 0, a.log
        assert time.monotonic() - signalled < 30
        served_by_b = _answered(b)
        time.sleep(0.5)
        assert _answered(b) > served_by_b  # b carried the traffic meanwhile
        a.stop()
        a = Server(repo, "--drain-delay-secs", "1", port=a.port)
        wait_for(lambda: _answered(a) > 20, 30, 0.05)  # the channel took the restarted replica back
    finally:
        calls = traffic.stop()
        a.stop()
        b.stop()
    failed = [c.error for c in calls if c.error is not None]
    assert len(calls) > 100 and not failed, f"{len(failed)} of {len(calls)} calls failed: {failed[:3]}"


def test_a_client_pinned_to_a_draining_replica_moves_to_the_other(tmp_path: Path) -> None:
    """A ClusterIP Service pins a client's connection to one pod (here: a pick_first channel over two
    replicas, connected to the first). When that replica's drain delay ends it sends GOAWAY, and the
    client reconnects to the other; the calls it sends then are retried there by gRPC itself. Refused
    by the draining replica instead (UNAVAILABLE "shutting down"), they failed: 168 of ~11,000 calls in
    the 2 s a replica took to finish. What may remain is gRPC's own race, a call arriving just as
    gRPC stops (CANCELLED, grpc/grpc#41785): a few at most."""
    repo = _repo(tmp_path)
    a, b = Server(repo, "--drain-delay-secs", "1"), Server(repo, "--drain-delay-secs", "1")
    traffic = Traffic(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}", 4)
    try:
        wait_for(lambda: _answered(a) > 200, 20, 0.05)
        assert _answered(b) == 0  # pinned to the first
        a.send_signal(signal.SIGTERM)
        assert a.proc.wait(30) == 0, a.log
        served_by_b = _answered(b)
        wait_for(lambda: _answered(b) > served_by_b + 200, 20, 0.05)
    finally:
        calls = traffic.stop()
        a.stop()
        b.stop()
    failed = [c.error for c in calls if c.error is not None]
    refused = [e for e in failed if "shutting down" in e]
    assert not refused and len(failed) <= 8, (len(calls), failed[:5])


def _answered(server: Server) -> int:
    try:
        stats = server.client.get_inference_statistics("add_sub").model_stats[0]
    except Exception:
        return 0
    return int(stats.inference_stats.success.count)


def test_an_open_stream_ends_with_unavailable_once_its_messages_are_answered(tmp_path: Path) -> None:
    """A ModelStreamInfer stream left open at SIGTERM: every message it sent is answered, then the
    stream ends with UNAVAILABLE saying so (not cut off at the exit timeout), and the process exits 0."""
    import queue

    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server = Server(_repo(tmp_path))
    outbox: queue.Queue[service_pb2.ModelInferRequest | None] = queue.Queue()

    def messages() -> Iterator[service_pb2.ModelInferRequest]:
        while (item := outbox.get()) is not None:
            yield item

    a = np.ones((1, 16), np.float32).tobytes()
    with grpc.insecure_channel(server.url) as channel:
        answers = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(messages())
        for i in range(5):
            request = service_pb2.ModelInferRequest(model_name="add_sub", id=str(i))
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
            request.raw_input_contents.extend([a, a])
            outbox.put(request)
        assert sorted(next(answers).infer_response.id for _ in range(5)) == ["0", "1", "2", "3", "4"]
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as ended:
            next(answers)
        outbox.put(None)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "every message received on this stream was answered" in (ended.value.details() or "")
    assert server.proc.wait(30) == 0 and time.monotonic() - signalled < 10
    server.stop()


def test_a_stream_still_sending_at_shutdown_has_every_message_it_read_answered(
    tmp_path: Path, cleanup: list[Server]
) -> None:
    """A client that keeps sending on its ModelStreamInfer stream through SIGTERM: the server stops
    reading the stream, answers every message it had read (done or refused), and ends the stream
    with UNAVAILABLE saying how many it read: exactly as many answers reach the client."""
    import re

    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server = Server(_repo(tmp_path))
    cleanup.append(server)
    a = np.ones((1, 16), np.float32).tobytes()
    stop = threading.Event()

    def messages() -> Iterator[service_pb2.ModelInferRequest]:
        sent = 0
        while not stop.is_set():
            request = service_pb2.ModelInferRequest(model_name="add_sub", id=str(sent))
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
            request.raw_input_contents.extend([a, a])
            yield request
            sent += 1

    answered = 0
    with grpc.insecure_channel(server.url) as channel:
        answers = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(messages())
        for _ in range(200):
            next(answers)
            answered += 1
        server.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in answers:
                answered += 1
        stop.set()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    found = re.search(r"\((\d+) received\)", ended.value.details() or "")
    assert found, ended.value.details()
    assert answered == int(found.group(1)), f"{answered} answers for {found.group(1)} messages read"
    assert server.proc.wait(30) == 0
    server.stop()


def test_an_open_health_watch_does_not_hold_the_shutdown(tmp_path: Path, cleanup: list[Server]) -> None:
    """A client watching health (grpc.health.v1 Watch, as client-side health checking and meshes do)
    at SIGTERM: it hears NOT_SERVING, its stream ends, and the process exits at once, not at the exit
    timeout that gRPC's stop would otherwise wait out for the open stream."""
    server = Server(_repo(tmp_path), "--exit-timeout-secs", "20")
    cleanup.append(server)
    seen: list[int] = []
    ended: list[str] = []
    with grpc.insecure_channel(server.url) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

        def read() -> None:
            try:
                seen.extend(r.status for r in stream)
                ended.append("OK")
            except grpc.RpcError as exc:
                ended.append(f"{exc.code().name}: {exc.details()}")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: seen == [health_pb2.HealthCheckResponse.SERVING], 10, 0.01)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        exited = time.monotonic() - signalled
        reader.join(10)
    assert exited < 10, f"the open Watch held the shutdown {exited:.1f} s"
    assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING], seen
    assert ended == ["OK"], ended
    server.stop()


def test_a_model_load_running_at_sigterm_does_not_outlive_the_exit_timeout(
    tmp_path: Path, cleanup: list[Server]
) -> None:
    """SIGTERM while a RepositoryModelLoad warms a model up for longer than --exit-timeout-secs: the
    load runs on a thread nothing can interrupt, so the process leaves at the exit timeout, with
    status 1 (work was abandoned), rather than when the warmup ends."""
    repo = _repo(tmp_path)
    slow(repo / "slow" / "1" / "model.onnx", layers=16)
    write_config(
        repo / "slow",
        "max_batch_size: 1024 model_warmup [ { name: 'w' batch_size: 256 count: 1000 inputs { key: 'INPUT0' "
        "value: { data_type: TYPE_FP32 dims: [ 512 ] zero_data: true } } } ]",
    )
    server = Server(repo, "--model-control-mode", "explicit", "--load-model", "add_sub", "--exit-timeout-secs", "3")
    cleanup.append(server)
    outcome: list[str] = []

    def load() -> None:
        client = grpcclient.InferenceServerClient(server.url)
        try:
            client.load_model("slow")
            outcome.append("loaded")
        except Exception as exc:
            outcome.append(str(exc))

    threading.Thread(target=load, daemon=True).start()
    wait_for(lambda: "event=model_instances model=slow" in server.log, 30, 0.02)  # warming up now
    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)
    status = server.proc.wait(60)
    exited = time.monotonic() - signalled
    assert status == 1 and exited < 3 + 5, (status, f"{exited:.1f} s", server.log[-2000:])
    assert "event=shutdown_timeout" in server.log
    assert outcome != ["loaded"]
    server.stop()


def test_a_half_closed_stream_has_every_answer_at_shutdown(tmp_path: Path, cleanup: list[Server]) -> None:
    """A client that sent all its messages and half-closed the stream (tritonclient's stop_stream
    does), its answers still being computed at SIGTERM: every one of them reaches it (the shutdown
    stops reading the stream, and must not stop the answers pending), then the stream ends."""
    repo = tmp_path / "repo"
    slow(repo / "slow" / "1" / "model.onnx", layers=256)
    write_config(repo / "slow", "max_batch_size: 64")
    server = Server(repo, "--exit-timeout-secs", "30")
    cleanup.append(server)
    x = np.ones((64, 512), np.float32).tobytes()
    count = 20
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def messages() -> Iterator[service_pb2.ModelInferRequest]:
        for i in range(count):
            request = service_pb2.ModelInferRequest(model_name="slow", id=str(i))
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[64, 512])
            request.raw_input_contents.append(x)
            yield request  # then the iterator ends: the client half-closes

    ids: list[str] = []
    options = [("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.url, options=options) as channel:
        answers = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(messages())
        ids.append(next(answers).infer_response.id)
        wait_for(lambda: server.holds_all("slow", count), 30, 0.01)  # every message read, most not answered
        server.send_signal(signal.SIGTERM)
        ended = "OK"
        try:
            for answer in answers:  # one at a time: the stream's end raises after the last
                ids.append(answer.error_message or answer.infer_response.id)
        except grpc.RpcError as exc:
            ended = f"{exc.code().name}: {exc.details()}"
    assert sorted(ids, key=int) == [str(i) for i in range(count)], (ids, ended)
    assert server.proc.wait(30) == 0
    pending = int(server.log.split("event=closing in_flight=")[1].split()[0])
    assert pending >= 2, f"only {pending} answers were pending at the shutdown: the case was not exercised"
    server.stop()
