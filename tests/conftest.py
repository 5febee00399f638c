"""Fixtures: real server processes on free loopback ports, and tritonclient clients."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(repo: Path, port: int, metrics_port: int, *args: str) -> list[str]:
    """``tensorgate serve`` on loopback with the given ports (HTTP/REST on any free one unless
    ``args`` name ``--http-port``, which then wins)."""
    return [
        sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
        "--grpc-port", str(port), "--metrics-port", str(metrics_port), "--http-port", "0", *args,
    ]  # fmt: skip


class Server:
    """A ``tensorgate serve`` child process; ``url`` is its gRPC address."""

    def __init__(
        self,
        repo: Path,
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        port: int | None = None,
    ) -> None:
        self.repo = repo
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log_path = repo.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = serve_command(repo, self.port, self.metrics_port, *args)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.client = grpcclient.InferenceServerClient(self.url)
        self.signalled = False
        if wait_ready:
            self.wait_ready()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                if self.client.is_server_ready():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log}")

    @property
    def http_port(self) -> int:
        """The HTTP/REST port it listens on (started with --http-port 0 unless told otherwise), from its log."""
        found = re.findall(r"event=http_listening address=\S+:(\d+)", self.log)
        assert found, f"the server logged no HTTP port:\n{self.log}"
        return int(found[-1])

    def exposition(self, timeout: float = 10) -> str:
        """The server's /metrics page (Prometheus text format)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
            return str(r.read().decode())

    def sample(self, line_start: str) -> float:
        """The value of the first /metrics sample whose line starts with ``line_start``."""
        for line in self.exposition().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(line_start)

    def taken(self, model: str) -> tuple[int, int]:
        """Requests of ``model`` the server has answered, and those it holds (queued or running): read in
        that order, so a request that finishes between the two reads is missed once, never counted twice."""
        answered = self.client.get_inference_statistics(model).model_stats[0].inference_stats.success.count
        held = self.sample(f'tensorgate_requests_in_flight{{model="{model}"')
        return int(answered), int(held)

    def holds_all(self, model: str, count: int) -> bool:
        """Whether the server has taken all ``count`` requests sent to ``model`` and still holds some of them."""
        answered, held = self.taken(model)
        return held > 0 and answered + held == count

    def send_signal(self, sig: int) -> None:
        """Signal the server (stop() then only waits: a second signal would force it out)."""
        self.signalled = True
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            if not self.signalled:
                self.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(repo: Path, *args: str) -> Iterator[Server]:
    """A server for a whole module (use inside a module-scoped fixture); it must exit 0 at the end."""
    server = Server(repo, *args)
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server exited with {code}:\n{server.log}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's model repository: a copy of the example ``model_repo/`` (a module may override it)."""
    path = tmp_path_factory.mktemp("repo") / "repo"
    shutil.copytree(ROOT / "model_repo", path)
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    """A server on the module's ``repo`` for the whole module; it must exit 0 at the end."""
    with running(repo) as s:
        yield s


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """tritonclient's own generated stub on the module's ``server``, for requests tritonclient refuses to build."""
    with grpc.insecure_channel(server.url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[type[Server]]:
    """Start servers with ``start_server(repo, *flags)``; all are stopped (and must exit 0) at the end."""
    started: list[Server] = []

    def start(repo: Path, *args: str, **kwargs: object) -> Server:
        server = Server(repo, *args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        code = server.stop()
        assert code == 0, f"server exited with {code}:\n{server.log}"


T = TypeVar("T")


def live_waits_during(url: str, call: Callable[[], T]) -> tuple[T, float, list[float]]:
    """``call()``'s result and how long it took, and how long each gRPC ServerLive to the server at
    ``url`` took, called every 5 ms meanwhile (from 0.2 s before): how long the event loop was held."""
    waits: list[float] = []
    done = threading.Event()
    with grpc.insecure_channel(url) as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")

        def probe() -> None:
            while not done.is_set():
                started = time.monotonic()
                live(b"", timeout=30)
                waits.append(time.monotonic() - started)
                time.sleep(0.005)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            time.sleep(0.2)
            started = time.monotonic()
            result = call()
            latency = time.monotonic() - started
        finally:
            done.set()
            prober.join()
    return result, latency, waits


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory process ``pid`` has used so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmHWM")


def held_and_queued(server: Server, model: str) -> tuple[int, int]:
    """From one scrape: the requests of ``model`` the server holds (queued or running), and those of
    them waiting in its queue. For FP32 inputs (decoded on the event loop, then queued and taken in the
    same step) held minus queued is the number running."""
    held = queued = -1
    for line in server.exposition().splitlines():
        if line.startswith(f'tensorgate_requests_in_flight{{model="{model}"'):
            held = int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith(f'nv_inference_pending_request_count{{model="{model}"'):
            queued = int(float(line.rsplit(" ", 1)[1]))
    assert held >= 0 and queued >= 0, server.exposition()
    return held, queued


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def index_of(client: grpcclient.InferenceServerClient) -> dict[str, list[tuple[str, str, str]]]:
    """RepositoryIndex as {name: [(version, state, reason), ...]}."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for m in client.get_model_repository_index().models:
        out.setdefault(m.name, []).append((m.version, m.state, m.reason))
    return out


def flags(*pairs: Sequence[str]) -> list[str]:
    return [x for p in pairs for x in p]
