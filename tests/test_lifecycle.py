"""The process: CLI flags and environment, startup failures, graceful shutdown under load."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, free_port, serve_command, wait_for
from models import identity, slow, write_config

SLOW_BATCH = 512  # about 80 ms a call on two cores


def _slow_repo(root: Path) -> Path:
    repo = root / "repo"
    slow(repo / "slow" / "1" / "model.onnx")
    write_config(repo / "slow", "max_batch_size: 1024\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n")
    identity(repo / "identity" / "1" / "model.onnx")
    return repo


def _slow_requests(server: Server, count: int) -> tuple[list[threading.Thread], list[BaseException | None]]:
    """``count`` threads, started, each sending one slow request; each appends None when answered,
    else the error it got."""
    data = np.ones((SLOW_BATCH, 512), np.float32)
    outcomes: list[BaseException | None] = []

    def send() -> None:
        client = grpcclient.InferenceServerClient(server.url)
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        try:
            out = client.infer("slow", [tensor]).as_numpy("OUTPUT0")
            outcomes.append(None if out is not None and out.shape == data.shape else ValueError("no output"))
        except BaseException as exc:
            outcomes.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=send) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, outcomes


def test_help_documents_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tensorgate", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--model-repository",
        "--grpc-port",
        "--metrics-port",
        "--model-control-mode",
        "--host",
        "--repository-poll-secs",
        "--load-model",
        "--exit-timeout-secs",
        "--grpc-max-message-bytes",
    ):
        assert flag in out
    assert "TENSORGATE_GRPC_PORT" in out and "default 8001" in out


@pytest.mark.parametrize(
    ("args", "disabled"),
    [
        ([], False),
        (["--disable-auto-complete-config"], True),
        (["--disable-auto-complete-config", "false"], False),
        (["--strict-model-config"], True),  # Triton's older name
        (["--strict-model-config=false"], False),
        (["--strict-model-config", "--model-repository", "r"], True),  # a bare flag does not take the next flag
    ],
)
def test_auto_complete_switch_and_its_triton_names(args: list[str], disabled: bool) -> None:
    from tensorgate import cli
    from tensorgate import settings as settings_module

    options = settings_module.from_namespace(cli.build_parser().parse_args(["serve", *args]))
    assert options.disable_auto_complete_config is disabled


def test_environment_variables_set_options(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    identity(repo / "a" / "1" / "model.onnx")
    identity(repo / "b" / "1" / "model.onnx")
    server = start_server(repo, env={"TENSORGATE_MODEL_CONTROL_MODE": "explicit", "TENSORGATE_LOAD_MODEL": "b"})
    assert server.client.is_model_ready("b") and not server.client.is_model_ready("a")


def test_bad_environment_value_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tensorgate", "serve"],
        capture_output=True,
        text=True,
        env={**os.environ, "TENSORGATE_GRPC_PORT": "eighty"},
    )
    assert result.returncode == 2 and "TENSORGATE_GRPC_PORT" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--repository-poll-secs", "0", "must be at least 0.1"),  # 0 would rescan back to back: a core spun
        ("--metrics-interval-ms", "0", "must be at least 1"),
        ("--grpc-stream-max-outstanding", "0", "must be at least 1"),  # no stream message would ever be read
        ("--grpc-port", "70000", "must be from 0 to 65535"),
        ("--grpc-max-message-bytes", "3000000000", "must be from 1 to 2147483647"),  # gRPC's C int: a traceback
        ("--host", "", "an empty address"),  # the metrics server died at start on it, with a traceback
        ("--exit-timeout-secs", "-1", "must be at least 0.1"),
        ("--max-queue-wait-ms", "-5", "must be at least 0"),
        ("--exit-timeout-secs", "nan", "must be a finite number"),  # NaN compares false with every bound
        ("--repository-poll-secs", "inf", "must be a finite number"),
    ],
)
def test_a_setting_out_of_its_bounds_is_refused_at_start(flag: str, value: str, reason: str) -> None:
    for how in ("flag", "environment"):
        env = {**os.environ}
        args = [sys.executable, "-m", "tensorgate", "serve"]
        if how == "flag":
            args += [flag, value]
        else:
            env["TENSORGATE_" + flag.removeprefix("--").replace("-", "_").upper()] = value
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 2 and reason in result.stderr, (how, result.stderr)


@pytest.mark.parametrize("mode", ["none", "explicit"])
def test_a_missing_repository_stops_the_start_outside_poll_mode(tmp_path: Path, mode: str) -> None:
    """A mistyped --model-repository does not give a server that reports ready with no models (poll
    mode waits for the repository to appear: tests/test_model_control.py)."""
    missing = tmp_path / "no-such-repo"
    result = subprocess.run(
        [*serve_command(missing, free_port(), free_port(), "--model-control-mode", mode)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "event=startup_failed" in result.stderr and f"{missing} is not a directory" in result.stderr


def test_port_in_use_fails_clearly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    identity(repo / "a" / "1" / "model.onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            serve_command(repo, port, free_port()),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1 and f"127.0.0.1:{port}" in result.stderr


def test_startup_log_says_what_loaded_where(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    identity(repo / "a" / "1" / "model.onnx")
    server = start_server(repo)
    log = server.log
    assert "event=model_ready model=a version=1 engine=onnxruntime-cpu" in log
    assert "event=grpc_listening" in log and f":{server.port}" in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_answers_requests_in_flight(tmp_path: Path, sig: int) -> None:
    server = Server(_slow_repo(tmp_path))
    threads, outcomes = _slow_requests(server, 6)
    # Wait until the server has taken all six, some still queued or running: a request still on its way
    # when the signal comes may be refused, which is not what this pins down.
    wait_for(lambda: server.holds_all("slow", 6), 10, 0.01)
    started = time.monotonic()
    server.send_signal(sig)
    for t in threads:
        t.join(30)
    code = server.stop()
    assert code == 0, server.log
    assert outcomes == [None] * 6, f"requests in flight failed on shutdown: {outcomes}"
    assert "event=shutdown_complete" in server.log
    assert time.monotonic() - started < 25


def test_new_requests_refused_after_shutdown(tmp_path: Path) -> None:
    server = Server(_slow_repo(tmp_path))
    server.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    assert server.proc.returncode == 0
    with pytest.raises(Exception, match=r"UNAVAILABLE|failed to connect|Connection refused"):
        server.client.is_server_live()
    server.stop()


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    """A shutdown waiting on work that will not end soon (here ~5 s of queued batches, under a 60 s
    grace period) ends at the second signal, with the log saying so and 128 + the signal."""
    server = Server(_slow_repo(tmp_path), "--exit-timeout-secs", "60")
    threads, outcomes = _slow_requests(server, 60)
    wait_for(lambda: server.client.get_inference_statistics("slow").model_stats[0].execution_count >= 1, 10, 0.01)
    server.send_signal(signal.SIGTERM)
    wait_for(lambda: "event=shutdown_started" in server.log, 10, 0.01)
    assert server.proc.poll() is None  # the first signal waits for the requests in flight
    forced = time.monotonic()
    server.send_signal(signal.SIGTERM)
    code = server.proc.wait(10)
    assert time.monotonic() - forced < 3
    assert code == 128 + signal.SIGTERM
    assert "event=shutdown_forced signal=SIGTERM" in server.log
    for t in threads:
        t.join(30)
    assert len(outcomes) == 60 and outcomes.count(None) < 60  # what was still queued got an error, not silence
    server.stop()


def test_disable_auto_complete_config_stands_alone_and_is_obeyed(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    """Triton's bare --disable-auto-complete-config: a model without config.pbtxt does not load (saying
    why), one whose config.pbtxt declares its tensors loads as written (no max_batch_size filled in)."""
    repo = tmp_path / "repo"
    identity(repo / "bare" / "1" / "model.onnx")
    identity(repo / "written" / "1" / "model.onnx", shape=(16,))
    write_config(
        repo / "written",
        "input [{ name: 'INPUT0' data_type: TYPE_FP32 dims: [16] }]\n"
        "output [{ name: 'OUTPUT0' data_type: TYPE_FP32 dims: [16] }]",
    )
    server = start_server(repo, "--disable-auto-complete-config")
    assert server.client.is_model_ready("written")
    assert server.client.get_model_config("written").config.max_batch_size == 0
    (bare,) = [m for m in server.client.get_model_repository_index().models if m.name == "bare"]
    assert bare.state == "UNAVAILABLE" and "must declare its inputs and outputs" in bare.reason


@pytest.mark.parametrize("strict", [False, True])
def test_strict_readiness(tmp_path: Path, start_server, strict: bool) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    identity(repo / "good" / "1" / "model.onnx")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    server = start_server(repo, "--strict-readiness", str(strict).lower(), wait_ready=False)
    wait_for(lambda: "event=server_ready" in server.log)
    assert server.client.is_server_live() and server.client.is_model_ready("good")
    assert server.client.is_server_ready() is (not strict)
    # the grpc.health.v1 readiness a Kubernetes gRPC probe reads says the same; liveness is not touched
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        ready = probe.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=10).status
        live = probe.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10).status
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert ready == (not_serving if strict else serving) and live == serving


def test_the_exit_timeout_is_kept_with_a_batch_that_runs_longer(tmp_path: Path) -> None:
    """--exit-timeout-secs 2 while a batch of ~10 s runs: the process is gone ~2 s after SIGTERM,
    with status 1 (work was abandoned) and the log saying so."""
    repo = tmp_path / "repo"
    slow(repo / "slow" / "1" / "model.onnx", layers=4096)
    write_config(repo / "slow", "max_batch_size: 1024\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n")
    server = Server(repo, "--exit-timeout-secs", "2")
    threads, outcomes = _slow_requests(server, 1)
    wait_for(lambda: "event=model_ready" in server.log, 10, 0.05)
    time.sleep(0.5)  # the batch is running
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    code = server.proc.wait(15)
    assert time.monotonic() - started < 4, "the exit timeout was not kept"
    assert code == 1 and "event=shutdown_timeout" in server.log, server.log
    for t in threads:
        t.join(30)
    assert outcomes and outcomes[0] is not None  # the abandoned request failed, it did not hang
    server.stop()


def test_sigterm_during_a_long_warmup_exits_within_the_timeout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    slow(repo / "slow" / "1" / "model.onnx", layers=256)
    write_config(
        repo / "slow",
        "max_batch_size: 1024\nmodel_warmup [ { name: 'w' batch_size: 1024 count: 1000 inputs { key: 'INPUT0' "
        "value: { data_type: TYPE_FP32 dims: [ 512 ] zero_data: true } } } ]\n",
    )
    server = Server(repo, "--exit-timeout-secs", "2", wait_ready=False)
    wait_for(lambda: "event=model_instances model=slow" in server.log, 20, 0.05)  # warming up now
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    code = server.proc.wait(15)
    assert time.monotonic() - started < 4 and code == 1, server.log
    assert "event=shutdown_timeout" in server.log
    server.stop()


def test_grpc_http_and_metrics_bind_their_own_addresses(tmp_path: Path) -> None:
    """--grpc-address, --http-address and --metrics-address win over --host (here an address no
    interface has, which would fail the start if any server used it)."""
    repo = tmp_path / "repo"
    identity(repo / "identity" / "1" / "model.onnx")
    server = Server(
        repo, "--host", "192.0.2.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
        "--http-address", "127.0.0.1",
        "--grpc-keepalive-time-ms", "60000", "--grpc-max-connection-age-ms", "600000",
    )  # fmt: skip
    assert server.client.is_server_ready()
    assert "tensorgate_server_ready 1.0" in server.exposition()
    assert server.stop() == 0


def test_max_connection_age_makes_clients_reconnect_without_failing_calls(tmp_path: Path) -> None:
    """--grpc-max-connection-age-ms: the server ends each connection after that age (GOAWAY), so a client
    calling steadily connects again and again (its channel goes READY anew) and no call fails."""
    import grpc

    repo = tmp_path / "repo"
    identity(repo / "identity" / "1" / "model.onnx")
    server = Server(repo, "--grpc-max-connection-age-ms", "300")
    readies: list[float] = []
    failures: list[str] = []

    def seen(state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.READY:
            readies.append(time.monotonic())

    try:
        with grpc.insecure_channel(server.url) as channel:
            channel.subscribe(seen, try_to_connect=True)
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            deadline = time.monotonic() + 30
            while len(readies) < 3 and time.monotonic() < deadline:
                try:
                    live(b"", timeout=10, wait_for_ready=True)
                except grpc.RpcError as exc:
                    failures.append(str(exc))
                time.sleep(0.05)
            channel.unsubscribe(seen)
    finally:
        server.stop()
    assert len(readies) >= 3, f"the connection was not renewed: READY {len(readies)} time(s) in 30 s"
    assert not failures, failures[:3]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_an_ipv6_host_serves_grpc_http_and_metrics_and_logs_the_ports_bound(tmp_path: Path) -> None:
    """--host ::1 (an IPv6 literal, bracketed for gRPC's host:port), every port 0: each server
    answers on ::1, and the log names the port each bound, the metrics one included."""
    import re
    import urllib.request

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    repo = tmp_path / "repo"
    identity(repo / "identity" / "1" / "model.onnx")
    args = serve_command(repo, 0, 0, "--host", "::1")  # HTTP on port 0 too
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "event=server_ready" in line or "event=startup_failed" in line:
                break
        log = "".join(lines)
        assert "event=server_ready" in log, log
        ports = {m[1]: int(m[2]) for m in re.finditer(r"event=(grpc|http|metrics)_listening .*?address=\S*:(\d+)", log)}
        assert set(ports) == {"grpc", "http", "metrics"} and 0 not in ports.values(), log
        with grpc.insecure_channel(f"[::1]:{ports['grpc']}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        for port, path in ((ports["http"], "/v2/health/ready"), (ports["metrics"], "/metrics")):
            with urllib.request.urlopen(f"http://[::1]:{port}{path}", timeout=10) as answer:
                assert answer.status == 200
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
