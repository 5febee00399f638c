"""What a measurement watches besides its client: CPU time from /proc (of the whole machine, the server under
test and its event-loop thread, perf_analyzer, this process) and the machine's CPU model, the server under test
as a child process (``tensorgate serve``, the bare grpc.aio echo peer or Triton, bench/triton_python.py), and its
ModelStatistics."""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import tritonclient.grpc as grpcclient
from settings import BENCH, ROOT

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------------
# CPU accounting: whose CPU time a measurement used (ours, perf_analyzer's, or other processes' on the machine)


def cpu_seconds(stat_path: str) -> float:
    """utime + stime of a /proc/.../stat file (a process or one thread), in seconds; 0 once it is gone."""
    with contextlib.suppress(OSError), open(stat_path) as f:
        stat = f.read().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / CLK_TCK
    return 0.0


def machine_seconds() -> tuple[float, float]:
    """(busy, idle) seconds of all the machine's cores since boot, from /proc/stat (iowait counts as idle)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, (idle + iowait) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """``pid`` and the processes under it now (Triton's Python backend runs each model in a child process)."""
    with contextlib.suppress(psutil.Error):
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    return [pid]


def _process_cpu_seconds(pid: int) -> float:
    """CPU time of a whole process, all threads (those that exited included), to the nanosecond: its POSIX CPU
    clock (clock_getcpuclockid's id, CPUCLOCK_SCHED); /proc's 10 ms ticks where that cannot be read."""
    try:
        return time.clock_gettime_ns((~pid << 3) | 2) / 1e9
    except OSError:
        return cpu_seconds(f"/proc/{pid}/stat")


@dataclass(frozen=True)
class CpuSample:
    machine_busy: float  # seconds of all cores, busy
    machine_total: float  # seconds of all cores, busy + idle
    server: float  # CPU seconds of the server process and its children
    loop: float  # CPU seconds of the server's main thread, which runs its event loop
    wall: float  # time.monotonic()
    children: float  # waited-for children (perf_analyzer) CPU seconds
    self_: float  # this process

    @staticmethod
    def take(server_pid: int | None) -> CpuSample:
        busy, idle = machine_seconds()
        server = loop = 0.0
        if server_pid is not None:
            server = sum(_process_cpu_seconds(p) for p in process_tree(server_pid))
            loop = cpu_seconds(f"/proc/{server_pid}/task/{server_pid}/stat")  # its main thread
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return CpuSample(
            busy,
            busy + idle,
            server,
            loop,
            time.monotonic(),
            children.ru_utime + children.ru_stime,
            me.ru_utime + me.ru_stime,
        )


@dataclass(frozen=True)
class CpuDelta:
    server_s: float
    client_s: float  # perf_analyzer, or this process for the open-loop generator
    foreign_pct: float  # share of the machine's capacity used by other processes
    idle_pct: float
    loop_pct: float  # share of the time the server's event-loop thread was on a core

    @staticmethod
    def between(a: CpuSample, b: CpuSample, client_is_self: bool) -> CpuDelta:
        total = max(b.machine_total - a.machine_total, 1e-9)
        busy = b.machine_busy - a.machine_busy
        server = b.server - a.server
        children = b.children - a.children
        me = b.self_ - a.self_
        foreign = max(0.0, busy - server - children - me)
        return CpuDelta(
            server,
            me if client_is_self else children,
            100 * foreign / total,
            100 * max(0.0, total - busy) / total,
            100 * (b.loop - a.loop) / max(b.wall - a.wall, 1e-9),
        )


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------------------------------------------------------
# the server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server under test as a child process on a fresh loopback port: ``python -m tensorgate serve``
    (:meth:`tensorgate`), the bare grpc.aio echo peer, bench/echo_server.py (:meth:`echo`), or any other command
    given its port (bench/triton_python.py's tritonserver)."""

    def __init__(
        self,
        command: Callable[[int], list[str]],
        log_path: Path,
        code: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.command = command(self.port)
        if code is not None:
            env = {**(env or os.environ), "PYTHONPATH": str(code)}  # ahead of the editable install
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.client = grpcclient.InferenceServerClient(self.url)
        self.http_port: int | None = None  # tensorgate's HTTP/REST port; None: the server has none (the echo)

    @property
    def http_url(self) -> str:
        if self.http_port is None:
            raise ValueError(f"{self.command[:3]} serves no HTTP/REST")
        return f"127.0.0.1:{self.http_port}"

    @classmethod
    def tensorgate(
        cls,
        repo: Path,
        log_path: Path,
        extra: Sequence[str] = (),
        code: Path | None = None,
        launcher: Sequence[str] = ("-m", "tensorgate"),
    ) -> Server:
        """``extra`` flags come last, so they override the defaults here (``--metrics-port``, ``--http-port``);
        ``code``: a directory holding a ``tensorgate`` package (:func:`snapshot_code`) to run instead of server/;
        ``launcher``: what the interpreter runs (bench/experiment_server.py with its flags and ``--`` runs the
        server with an experiment applied). HTTP/REST listens on a free port of its own (:attr:`http_url`)."""
        http_port = free_port()
        server = cls(
            lambda port: [
                sys.executable,
                *launcher,
                "serve",
                "--model-repository",
                str(repo),
                "--grpc-port",
                str(port),
                "--metrics-port",
                "-1",
                "--host",
                "127.0.0.1",
                "--http-port",
                str(http_port),
                *extra,
            ],
            log_path,
            code,
        )
        server.http_port = http_port
        return server

    @classmethod
    def echo(cls, log_path: Path, model_file: Path | None = None, grpc_experiments: str = "") -> Server:
        """The bare echo; with ``model_file`` (identity's ONNX file) it also runs each request through ONNX Runtime;
        with ``grpc_experiments``, gRPC core's GRPC_EXPERIMENTS (otherwise gRPC's defaults: none is passed on)."""
        extra = [str(model_file)] if model_file is not None else []
        env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
        if grpc_experiments:
            env["GRPC_EXPERIMENTS"] = grpc_experiments
        return cls(lambda port: [sys.executable, str(BENCH / "echo_server.py"), str(port), *extra], log_path, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 120.0, models: Sequence[str] = ()) -> None:
        """Until the server is ready and so is each of ``models`` (PyTriton is ready before it binds them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if self.client.is_server_ready() and all(self.client.is_model_ready(m) for m in models):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL only if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log.close()
        return int(self.proc.returncode)


def snapshot_code(dest: Path) -> str:
    """Copy server/tensorgate under ``dest``, so that every server a run starts runs the same code while
    server/ is being edited; returns a digest of the copy (same digest, same code)."""
    shutil.copytree(ROOT / "server" / "tensorgate", dest / "tensorgate", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha1()
    for f in sorted(p for p in (dest / "tensorgate").rglob("*") if p.is_file()):
        digest.update(f.relative_to(dest).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:10]


def code_at(rev: str, dest: Path) -> Path:
    """server/tensorgate as commit ``rev`` holds it, under ``dest`` (for :meth:`Server.tensorgate`'s ``code``)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "server/tensorgate"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "server"


@dataclass(frozen=True)
class StatsSnapshot:
    inference_count: int
    execution_count: int
    success_count: int
    fail_count: int
    batches: dict[int, int]  # batch size -> executions

    @staticmethod
    def take(client: grpcclient.InferenceServerClient, model: str) -> StatsSnapshot:
        return StatsSnapshot.of(client.get_inference_statistics(model, as_json=True)["model_stats"][0])

    @staticmethod
    def of(stats: dict[str, Any]) -> StatsSnapshot:
        """From one model's ModelStatistics as tritonclient's JSON gives it."""
        infer = stats.get("inference_stats", {})
        return StatsSnapshot(
            int(stats.get("inference_count", 0)),
            int(stats.get("execution_count", 0)),
            int(infer.get("success", {}).get("count", 0)),
            int(infer.get("fail", {}).get("count", 0)),
            {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", ())},
        )

    def minus(self, before: StatsSnapshot) -> StatsSnapshot:
        batches = {k: v - before.batches.get(k, 0) for k, v in self.batches.items()}
        return StatsSnapshot(
            self.inference_count - before.inference_count,
            self.execution_count - before.execution_count,
            self.success_count - before.success_count,
            self.fail_count - before.fail_count,
            {k: v for k, v in batches.items() if v > 0},
        )

    @property
    def avg_batch(self) -> float:
        return self.inference_count / self.execution_count if self.execution_count else math.nan
