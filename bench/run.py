"""The batching benchmark: tensorgate under Triton's perf_analyzer, an open-loop generator, and raw ONNX Runtime.

    python bench/run.py [--quick] [--models identity,mlp,...] [--concurrency 1,4,16,64] [--repeats 3]

One run builds the model repository (bench/make_models.py), starts ``tensorgate serve`` on a free port,
checks that every model answers exactly what raw ONNX Runtime answers, sweeps closed-loop load with
perf_analyzer (``--repeats`` times, medians reported), drives open-loop (fixed-rate) load with a
tritonclient.grpc.aio generator, stops the server with SIGTERM (it must exit 0), sweeps the same
concurrencies on a bare grpc.aio echo of ``identity`` (bench/echo_server.py, the peer baseline: what any
Python gRPC server does on the day's machine), measures raw in-process ONNX Runtime with nothing else
running, prints the tables and appends them to bench/RESULTS.md.

It is a benchmark, not a test: missed targets are reported, not failed. The exit status is 1 only when
the server answered differently from ONNX Runtime, a perf_analyzer run failed, or the server did not
exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import hashlib
import math
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import make_models
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PERF_ANALYZER = ROOT / "scripts" / "perf_analyzer"
RESULTS = BENCH / "RESULTS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    concurrency: tuple[int, ...]
    repeats: int
    measurement_ms: int  # perf_analyzer -p
    stability_pct: int  # perf_analyzer -s
    max_trials: int  # perf_analyzer -r
    open_loop_s: float
    open_loop_warmup_s: float
    rate_fractions: tuple[float, ...]
    arrival: str  # "poisson" or "uniform"
    raw_seconds: float  # raw ORT timing per batch size
    repo: Path
    results: Path | None
    quick: bool
    peer: bool  # also sweep the bare grpc.aio echo (bench/echo_server.py) when identity is measured


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: c1 and c16, one repeat, short windows")
    p.add_argument(
        "--models",
        default=",".join(make_models.DEFAULT_MODELS),
        help="comma-separated models (default: %(default)s; also: cnn_small)",
    )
    p.add_argument("--concurrency", help="comma-separated closed-loop concurrencies (default 1,4,16,64; quick 1,16)")
    p.add_argument("--repeats", type=int, help="closed-loop sweeps, medians reported (default 3; quick 1)")
    p.add_argument("--measurement-ms", type=int, help="perf_analyzer -p (default 1500; quick 500)")
    p.add_argument("--stability", type=int, help="perf_analyzer -s percent (default 25; quick 40)")
    p.add_argument("--max-trials", type=int, help="perf_analyzer -r (default 6; quick 4)")
    p.add_argument("--open-loop-seconds", type=float, help="open-loop run length per rate (default 5; quick 2)")
    p.add_argument(
        "--rates",
        default="0.5,0.9",
        help="open-loop rates as fractions of closed-loop c16 infer/s (the highest c when 16 is not run)",
    )
    p.add_argument("--arrival", choices=("poisson", "uniform"), default="poisson", help="open-loop spacing")
    p.add_argument("--repo", type=Path, default=make_models.DEFAULT_REPO, help="model repository to (re)write")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file the run is appended to")
    p.add_argument("--no-results", action="store_true", help="do not append to the results file")
    p.add_argument(
        "--no-peer", action="store_true", help="skip the bare grpc.aio echo peer baseline (bench/echo_server.py)"
    )
    a = p.parse_args(argv)
    quick = bool(a.quick)
    models = tuple(m for m in a.models.split(",") if m)
    unknown = [m for m in models if m not in make_models.MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join(make_models.MODELS)}")
    conc = a.concurrency or ("1,16" if quick else "1,4,16,64")
    return Settings(
        models=models,
        concurrency=tuple(int(c) for c in conc.split(",") if c),
        repeats=a.repeats or (1 if quick else 3),
        measurement_ms=a.measurement_ms or (500 if quick else 1500),
        stability_pct=a.stability or (40 if quick else 25),
        max_trials=a.max_trials or (4 if quick else 6),
        open_loop_s=a.open_loop_seconds or (2.0 if quick else 5.0),
        open_loop_warmup_s=0.3 if quick else 0.5,
        rate_fractions=tuple(float(r) for r in a.rates.split(",") if r),
        arrival=a.arrival,
        raw_seconds=0.4 if quick else 1.0,
        repo=a.repo,
        results=None if a.no_results else a.results,
        quick=quick,
        peer=not a.no_peer,
    )


# ---------------------------------------------------------------------------------------------------------------
# CPU accounting: whose CPU time a measurement used (ours, perf_analyzer's, or other processes' on the machine)


def _cpu_seconds(stat_path: str) -> float:
    """utime + stime of a /proc/.../stat file (a process or one thread), in seconds; 0 once it is gone."""
    with contextlib.suppress(OSError), open(stat_path) as f:
        stat = f.read().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / CLK_TCK
    return 0.0


@dataclass(frozen=True)
class CpuSample:
    machine_busy: float  # seconds of all cores, busy
    machine_total: float  # seconds of all cores, busy + idle
    server: float  # server process CPU seconds
    loop: float  # CPU seconds of the server's main thread, which runs its event loop
    wall: float  # time.monotonic()
    children: float  # waited-for children (perf_analyzer) CPU seconds
    self_: float  # this process

    @staticmethod
    def take(server_pid: int | None) -> CpuSample:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        busy = user + nice + system + irq + softirq + steal
        server = loop = 0.0
        if server_pid is not None:
            server = _cpu_seconds(f"/proc/{server_pid}/stat")
            loop = _cpu_seconds(f"/proc/{server_pid}/task/{server_pid}/stat")  # its main thread
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return CpuSample(
            busy / CLK_TCK,
            (busy + idle + iowait) / CLK_TCK,
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


# ---------------------------------------------------------------------------------------------------------------
# the server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server under test as a child process on a fresh loopback port: ``python -m tensorgate serve``
    (:meth:`tensorgate`) or the bare grpc.aio echo peer, bench/echo_server.py (:meth:`echo`)."""

    def __init__(self, command: Callable[[int], list[str]], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.command = command(self.port)
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.client = grpcclient.InferenceServerClient(self.url)

    @classmethod
    def tensorgate(cls, repo: Path, log_path: Path) -> Server:
        return cls(
            lambda port: [
                sys.executable,
                "-m",
                "tensorgate",
                "serve",
                "--model-repository",
                str(repo),
                "--grpc-port",
                str(port),
                "--metrics-port",
                "-1",
                "--host",
                "127.0.0.1",
            ],
            log_path,
        )

    @classmethod
    def echo(cls, log_path: Path) -> Server:
        return cls(lambda port: [sys.executable, str(BENCH / "echo_server.py"), str(port)], log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if self.client.is_server_ready():
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


@dataclass(frozen=True)
class StatsSnapshot:
    inference_count: int
    execution_count: int
    success_count: int
    fail_count: int
    batches: dict[int, int]  # batch size -> executions

    @staticmethod
    def take(client: grpcclient.InferenceServerClient, model: str) -> StatsSnapshot:
        stats: dict[str, Any] = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
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


# ---------------------------------------------------------------------------------------------------------------
# correctness: the server's answers against raw ONNX Runtime, bit for bit


@dataclass(frozen=True)
class CheckResult:
    model: str
    requests: int
    exact: bool
    max_abs_diff: float
    executions: int
    largest_batch: int


def raw_session(repo: Path, model: str) -> ort.InferenceSession:
    """Raw ONNX Runtime as a user would make it: CPU provider, default session options and threads."""
    path = make_models.model_file(repo, model)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _infer_input(array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(make_models.INPUT, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


async def _send_all(url: str, model: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    client = grpcaio.InferenceServerClient(url)
    try:
        results = await asyncio.gather(
            *(client.infer(model, [_aio_input(a)]) for a in arrays)  # all at once, so the batcher can batch
        )
        return [np.asarray(r.as_numpy(make_models.OUTPUT)) for r in results]
    finally:
        await client.close()


def _aio_input(array: np.ndarray) -> grpcaio.InferInput:
    tensor = grpcaio.InferInput(make_models.INPUT, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def check_model(server: Server, session: ort.InferenceSession, model: str, seed: int) -> CheckResult:
    dims = make_models.MODELS[model].input_dims
    rng = np.random.default_rng(seed)
    # 32 one-sample requests sent together, then one request of 4 samples.
    singles = [rng.standard_normal((1, *dims)).astype(np.float32) for _ in range(32)]
    multi = rng.standard_normal((4, *dims)).astype(np.float32)
    before = StatsSnapshot.take(server.client, model)
    got = asyncio.run(_send_all(server.url, model, singles))
    result = server.client.infer(model, [_infer_input(multi)])
    got.append(np.asarray(result.as_numpy(make_models.OUTPUT)))
    delta = StatsSnapshot.take(server.client, model).minus(before)
    exact, worst = True, 0.0
    for x, y in zip([*singles, multi], got, strict=True):
        want = session.run(None, {make_models.INPUT: x})[0]
        same = want.shape == y.shape and want.dtype == y.dtype and np.array_equal(want, y)
        exact = exact and same
        if want.shape == y.shape:
            worst = max(worst, float(np.max(np.abs(want.astype(np.float64) - y.astype(np.float64)))))
        else:
            worst = math.inf
    return CheckResult(model, len(got), exact, worst, delta.execution_count, max(delta.batches, default=0))


# ---------------------------------------------------------------------------------------------------------------
# closed loop: perf_analyzer


@dataclass(frozen=True)
class PaRun:
    model: str
    concurrency: int
    repeat: int
    ok: bool
    error: str = ""
    infer_per_s: float = math.nan
    p50_us: float = math.nan
    p90_us: float = math.nan
    p99_us: float = math.nan
    server_queue_us: float = math.nan
    server_infer_us: float = math.nan
    stats: StatsSnapshot | None = None
    cpu: CpuDelta | None = None
    retried: bool = False

    @property
    def avg_batch(self) -> float:
        return self.stats.avg_batch if self.stats else math.nan

    @property
    def requests(self) -> int:
        return self.stats.success_count if self.stats else 0

    @property
    def server_cpu_us(self) -> float:
        return 1e6 * self.cpu.server_s / self.requests if self.cpu and self.requests else math.nan

    @property
    def client_cpu_us(self) -> float:
        return 1e6 * self.cpu.client_s / self.requests if self.cpu and self.requests else math.nan


def _pa_command(url: str, model: str, c: int, s: Settings, stability: int, out: Path) -> list[str]:
    return [
        str(PERF_ANALYZER),
        "-i",
        "grpc",
        "-u",
        url,
        "-m",
        model,
        "--concurrency-range",
        f"{c}:{c}",
        "-p",
        str(s.measurement_ms),
        "-s",
        str(stability),
        "-r",
        str(s.max_trials),
        "-f",
        str(out),
    ]


def perf_analyzer(server: Server, model: str, c: int, repeat: int, s: Settings, tmp: Path, label: str = "") -> PaRun:
    out = tmp / f"pa-{label}{model}-c{c}-r{repeat}.csv"
    stability = s.stability_pct
    retried = False
    for attempt in range(2):
        out.unlink(missing_ok=True)
        before = StatsSnapshot.take(server.client, model)
        cpu_before = CpuSample.take(server.pid)
        proc = subprocess.run(
            _pa_command(server.url, model, c, s, stability, out),
            capture_output=True,
            text=True,
            timeout=60 + 3 * s.max_trials * s.measurement_ms / 1000,
        )
        cpu = CpuDelta.between(cpu_before, CpuSample.take(server.pid), client_is_self=False)
        stats = StatsSnapshot.take(server.client, model).minus(before)
        text = proc.stdout + proc.stderr
        if proc.returncode == 0 and out.exists():
            row = next(csv.DictReader(out.open()))
            return PaRun(
                model,
                c,
                repeat,
                True,
                "",
                float(row["Inferences/Second"]),
                float(row["p50 latency"]),
                float(row["p90 latency"]),
                float(row["p99 latency"]),
                float(row.get("Server Queue", "nan")),  # absent when the server has no statistics extension
                float(row.get("Server Compute Infer", "nan")),
                stats,
                cpu,
                retried,
            )
        if "stable measurement" in text and attempt == 0:
            stability, retried = min(100, 2 * stability), True  # a noisy machine: accept a looser window once
            continue
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return PaRun(model, c, repeat, False, f"rc={proc.returncode}: " + " | ".join(lines[-3:]), stats=stats, cpu=cpu)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------------
# open loop: requests at a fixed rate regardless of completions


@dataclass(frozen=True)
class OpenLoopRun:
    model: str
    fraction: float
    target_rate: float
    sent: int
    offered: float  # what the generator actually sent after warm-up, per second (Poisson: near the target)
    achieved: float  # completions of those requests per second, until the last one finished
    error_codes: str  # failed requests by gRPC status, most frequent first ("CANCELLED 3,679"); "" for none
    p50_ms: float  # latency from the scheduled send time (no coordinated omission)
    p90_ms: float
    p99_ms: float
    lag_p99_ms: float  # how late the generator sent, p99 (large: the generator could not keep up)
    avg_batch: float
    client_cpu_us: float


async def _open_loop(
    url: str, model: str, dims: tuple[int, ...], rate: float, seconds: float, arrival: str, seed: int
) -> list[tuple[float, float, float, str]]:
    """Send ``rate * seconds`` requests on a fixed schedule, whatever the server's speed; returns
    (scheduled, sent, done, error) per request, in seconds from the start; error is the gRPC status
    name of a failed request, "" for an answered one."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * seconds))
    gaps = rng.exponential(1 / rate, n) if arrival == "poisson" else np.full(n, 1 / rate)
    offsets = np.cumsum(gaps) - gaps[0]
    inputs = [_aio_input(rng.standard_normal((1, *dims)).astype(np.float32))]  # one request body, reused
    client = grpcaio.InferenceServerClient(url)
    loop = asyncio.get_running_loop()
    records: list[tuple[float, float, float, str]] = []  # (scheduled, sent, done, error)

    async def one(scheduled: float) -> None:
        sent = loop.time()
        error = ""
        try:
            await client.infer(model, inputs)
        except InferenceServerException as exc:
            error = str(exc.status() or "no status").removeprefix("StatusCode.")
        except Exception as exc:
            error = type(exc).__name__
        records.append((scheduled, sent, loop.time(), error))

    try:
        await client.is_server_ready()  # connect before the clock starts
        start = loop.time() + 0.01
        tasks: list[asyncio.Task[None]] = []
        i = 0
        while i < n:
            now = loop.time()
            due = start + offsets[i]
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < n and start + offsets[i] <= now:
                tasks.append(asyncio.create_task(one(start + float(offsets[i]))))
                i += 1
            await asyncio.sleep(0)  # let the new tasks send before scheduling more
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    finally:
        await client.close()
    return [(a - start, b - start, c - start, error) for a, b, c, error in records]


def open_loop(server: Server, model: str, fraction: float, rate: float, s: Settings, seed: int) -> OpenLoopRun:
    dims = make_models.MODELS[model].input_dims
    total = s.open_loop_s + s.open_loop_warmup_s
    before = StatsSnapshot.take(server.client, model)
    cpu_before = CpuSample.take(server.pid)
    records = asyncio.run(_open_loop(server.url, model, dims, rate, total, s.arrival, seed))
    warmup = s.open_loop_warmup_s
    cpu = CpuDelta.between(cpu_before, CpuSample.take(server.pid), client_is_self=True)
    stats = StatsSnapshot.take(server.client, model).minus(before)
    measured = [r for r in records if r[0] >= warmup]
    first = min((r[0] for r in measured), default=warmup)
    offered = len(measured) / max(max((r[0] for r in measured), default=total) - first, 1e-9)
    completed = [r for r in measured if not r[3]]
    achieved = len(completed) / max(max((r[2] for r in completed), default=total) - first, 1e-9)
    latencies = np.array([1e3 * (d - sch) for sch, _, d, error in measured if not error])
    lags = np.array([1e3 * (snt - sch) for sch, snt, _, _ in measured])

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if a.size else math.nan

    return OpenLoopRun(
        model,
        fraction,
        rate,
        len(records),
        offered,
        achieved,
        ", ".join(f"{code} {n:,}" for code, n in Counter(r[3] for r in records if r[3]).most_common()),
        pct(latencies, 50),
        pct(latencies, 90),
        pct(latencies, 99),
        pct(lags, 99),
        stats.avg_batch,
        1e6 * cpu.client_s / max(1, len(records)),
    )


# ---------------------------------------------------------------------------------------------------------------
# raw ONNX Runtime, in process, with nothing else running


def raw_throughput(session: ort.InferenceSession, dims: tuple[int, ...], batch: int, seconds: float) -> float:
    """Samples per second of ``session.run`` at ``batch``: the median of five timed slices."""
    x = np.random.default_rng(batch).standard_normal((batch, *dims)).astype(np.float32)
    feed = {make_models.INPUT: x}
    warm_until = time.perf_counter() + min(0.2, seconds / 4)
    while time.perf_counter() < warm_until:
        session.run(None, feed)
    rates = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / 5:
            session.run(None, feed)
            n += 1
        rates.append(n * batch / elapsed)
    return statistics.median(rates)


# ---------------------------------------------------------------------------------------------------------------
# reporting


def median(values: Iterator[float] | Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def fmt_int(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:,.0f}"


def fmt_ms(us: float) -> str:
    if math.isnan(us):
        return "-"
    ms = us / 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_x(v: float, digits: int = 2) -> str:
    return "-" if math.isnan(v) or math.isinf(v) else f"{v:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    right = [i > 0 for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    rules = (("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True))
    sep = "|" + "|".join(rules) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def top_batches(batches: Counter[int], k: int = 3) -> str:
    total = sum(batches.values())
    if not total:
        return "-"
    return ", ".join(f"{b}:{100 * n / total:.0f}%" for b, n in batches.most_common(k))


@dataclass
class Report:
    settings: Settings
    command: str
    started: datetime.datetime
    checks: list[CheckResult] = field(default_factory=list)
    runs: list[PaRun] = field(default_factory=list)
    open_runs: list[OpenLoopRun] = field(default_factory=list)
    raw: dict[tuple[str, int], float] = field(default_factory=dict)  # (model file, batch) -> samples/s
    open_loop_base_c: int = 16  # open-loop rates are fractions of closed-loop infer/s at this concurrency
    raw_foreign_pct: float = 0.0  # the most CPU other processes took while raw ORT was timed
    server_exit: int | None = None
    peer_runs: list[PaRun] = field(default_factory=list)  # the bare grpc.aio echo, model identity
    peer_exit: int | None = None  # None: the peer was not run
    peer_error: str = ""  # the echo server did not start
    load_before: str = ""
    code: str = ""  # git_state() when the run started, before the server imported the code
    seconds: float = 0.0

    def cell(self, model: str, c: int) -> list[PaRun]:
        return [r for r in self.runs if r.model == model and r.concurrency == c and r.ok]

    def med(self, model: str, c: int, attr: Callable[[PaRun], float]) -> float:
        return median([attr(r) for r in self.cell(model, c)])

    def peer_cell(self, c: int) -> list[PaRun]:
        return [r for r in self.peer_runs if r.concurrency == c and r.ok]

    def peer_med(self, c: int, attr: Callable[[PaRun], float]) -> float:
        return median([attr(r) for r in self.peer_cell(c)])

    @property
    def peer_ran(self) -> bool:
        return self.peer_exit is not None or bool(self.peer_error)

    def raw_at(self, model: str, batch: float) -> tuple[int, float]:
        b = formed_batch(batch)
        return b, self.raw.get((make_models.MODELS[model].file, b), math.nan)

    def closed_loop_table(self) -> str:
        rows = []
        for model in self.settings.models:
            for c in self.settings.concurrency:
                runs = self.cell(model, c)
                if not runs:
                    rows.append([model, str(c), "failed", *["-"] * 9])
                    continue
                ips = self.med(model, c, lambda r: r.infer_per_s)
                spread = (max(r.infer_per_s for r in runs) - min(r.infer_per_s for r in runs)) / ips if ips else 0
                batch = self.med(model, c, lambda r: r.avg_batch)
                raw1 = self.raw.get((make_models.MODELS[model].file, 1), math.nan)
                b, rawb = self.raw_at(model, batch)
                rows.append(
                    [
                        model,
                        str(c),
                        fmt_int(ips),
                        f"{100 * spread:.0f}%" if len(runs) > 1 else "-",
                        fmt_ms(self.med(model, c, lambda r: r.p50_us)),
                        fmt_ms(self.med(model, c, lambda r: r.p99_us)),
                        fmt_x(batch),
                        fmt_int(raw1),
                        f"{fmt_int(rawb)} (b{b})",
                        fmt_x(ips / raw1),
                        fmt_x(ips / rawb),
                    ]
                )
        return table(
            [
                "model",
                "c",
                "server infer/s",
                "spread",
                "p50 ms",
                "p99 ms",
                "avg batch",
                "raw ORT b1 /s",
                "raw ORT formed /s",
                "server/raw(b1)",
                "server/raw(formed)",
            ],
            rows,
        )

    def time_table(self) -> str:
        rows = []
        for model in self.settings.models:
            for c in self.settings.concurrency:
                runs = self.cell(model, c)
                if not runs:
                    continue
                batches: Counter[int] = Counter()
                for r in runs:
                    batches.update(r.stats.batches if r.stats else {})
                rows.append(
                    [
                        model,
                        str(c),
                        fmt_int(self.med(model, c, lambda r: r.server_cpu_us)),
                        fmt_int(self.med(model, c, lambda r: r.client_cpu_us)),
                        fmt_int(self.med(model, c, lambda r: r.server_queue_us)),
                        fmt_int(self.med(model, c, lambda r: r.server_infer_us)),
                        top_batches(batches),
                        fmt_x(self.med(model, c, lambda r: r.cpu.loop_pct if r.cpu else math.nan), 0) + "%",
                        fmt_x(self.med(model, c, lambda r: r.cpu.idle_pct if r.cpu else math.nan), 0) + "%",
                        fmt_x(self.med(model, c, lambda r: r.cpu.foreign_pct if r.cpu else math.nan), 0) + "%",
                        str(sum(r.retried for r in runs)),
                    ]
                )
        return table(
            [
                "model",
                "c",
                "server CPU µs/req",
                "client CPU µs/req",
                "server queue µs",
                "compute infer µs",
                "batch sizes (share of executions)",
                "event loop busy",
                "machine idle",
                "other procs",
                "loose -s",
            ],
            rows,
        )

    def peer_table(self) -> str:
        rows = []
        for c in self.settings.concurrency:
            runs = self.peer_cell(c)
            echo_ips = self.peer_med(c, lambda r: r.infer_per_s)
            echo_p50 = self.peer_med(c, lambda r: r.p50_us)
            spread = (max(r.infer_per_s for r in runs) - min(r.infer_per_s for r in runs)) / echo_ips if runs else 0
            tg_ips = self.med("identity", c, lambda r: r.infer_per_s)
            tg_p50 = self.med("identity", c, lambda r: r.p50_us)
            rows.append(
                [
                    str(c),
                    fmt_int(echo_ips) if runs else "failed",
                    f"{100 * spread:.0f}%" if len(runs) > 1 else "-",
                    fmt_ms(echo_p50),
                    fmt_int(self.peer_med(c, lambda r: r.server_cpu_us)),
                    fmt_int(tg_ips),
                    fmt_ms(tg_p50),
                    fmt_int(self.med("identity", c, lambda r: r.server_cpu_us)),
                    fmt_x(tg_ips / echo_ips),
                    fmt_x(tg_p50 / echo_p50),
                ]
            )
        return table(
            [
                "c",
                "echo infer/s",
                "echo spread",
                "echo p50 ms",
                "echo server CPU µs/req",
                "tensorgate identity infer/s",
                "tensorgate p50 ms",
                "tensorgate server CPU µs/req",
                "tensorgate/echo infer/s",
                "tensorgate/echo p50",
            ],
            rows,
        )

    def on_off_table(self) -> str:
        rows = []
        for base in ("mlp", "cnn"):
            off = f"{base}_nobatch"
            if base not in self.settings.models or off not in self.settings.models:
                continue
            for c in self.settings.concurrency:
                on_v = self.med(base, c, lambda r: r.infer_per_s)
                off_v = self.med(off, c, lambda r: r.infer_per_s)
                rows.append([base, str(c), fmt_int(on_v), fmt_int(off_v), fmt_x(on_v / off_v)])
        return table(["model", "c", "batching on infer/s", "batching off infer/s", "on/off"], rows) if rows else ""

    def open_loop_table(self) -> str:
        rows = [
            [
                r.model,
                f"{r.fraction:.0%}",
                fmt_int(r.target_rate),
                fmt_int(r.offered),
                fmt_int(r.achieved),
                fmt_x(r.p50_ms, 3),
                fmt_x(r.p90_ms, 3),
                fmt_x(r.p99_ms, 3),
                fmt_x(r.lag_p99_ms, 3),
                fmt_x(r.avg_batch),
                r.error_codes or "0",
                fmt_int(r.client_cpu_us),
                "overloaded" if r.achieved < 0.95 * r.offered else "kept up",
            ]
            for r in self.open_runs
        ]
        return table(
            [
                "model",
                f"of c{self.open_loop_base_c}",
                "target /s",
                "offered /s",
                "achieved /s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "send lag p99 ms",
                "avg batch",
                "errors",
                "generator CPU µs/req",
                "server",
            ],
            rows,
        )

    def raw_table(self) -> str:
        files = sorted({k[0] for k in self.raw})
        sizes = sorted({k[1] for k in self.raw})
        rows = [[f, *(fmt_int(self.raw.get((f, b), math.nan)) for b in sizes)] for f in files]
        return table(["model file", *(f"b{b}" for b in sizes)], rows)

    def check_table(self) -> str:
        rows = [
            [
                c.model,
                str(c.requests),
                "yes" if c.exact else "NO",
                f"{c.max_abs_diff:.3g}",
                str(c.executions),
                str(c.largest_batch),
            ]
            for c in self.checks
        ]
        return table(["model", "requests", "identical to raw ORT", "max |diff|", "executions", "largest batch"], rows)

    def targets(self) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []

        def verdict(value: float, ok: bool) -> str:
            return "n/a" if math.isnan(value) else ("PASS" if ok else "miss")

        cnn = self.med("cnn", 16, lambda r: r.infer_per_s)
        raw16 = self.raw.get(("cnn", 16), math.nan)
        ratio = cnn / raw16
        out.append(
            (
                "cnn c16 infer/s >= 0.8 x raw ORT b16",
                f"{fmt_int(cnn)} / {fmt_int(raw16)} = {fmt_x(ratio)}",
                verdict(ratio, ratio >= 0.8),
            )
        )
        on_off = self.med("mlp", 16, lambda r: r.infer_per_s) / self.med("mlp_nobatch", 16, lambda r: r.infer_per_s)
        out.append(("mlp c16 batching on >= 3 x off", fmt_x(on_off), verdict(on_off, on_off >= 3)))
        ident = self.med("identity", 16, lambda r: r.infer_per_s)
        out.append(("identity c16 >= 6,000 infer/s", fmt_int(ident), verdict(ident, ident >= 6000)))
        if self.peer_ran:  # the two identity targets scaled by the bare echo measured in this run
            echo16 = self.peer_med(16, lambda r: r.infer_per_s)
            share = ident / echo16
            out.append(
                (
                    "identity c16 >= 0.75 x bare echo (6,000 / 8,000 as in the note), scaled to the day's machine",
                    f"{fmt_int(ident)} / {fmt_int(echo16)} = {fmt_x(share)}",
                    verdict(share, share >= 0.75),
                )
            )
        p50 = self.med("identity", 1, lambda r: r.p50_us)
        out.append(("identity c1 p50 <= 0.4 ms", fmt_ms(p50), verdict(p50, p50 <= 400)))
        if self.peer_ran:
            echo_p50 = self.peer_med(1, lambda r: r.p50_us)
            slower = p50 / echo_p50
            out.append(
                (
                    "identity c1 p50 <= 1.33 x bare echo p50 (0.4 / 0.3 ms), scaled to the day's machine",
                    f"{fmt_ms(p50)} / {fmt_ms(echo_p50)} ms = {fmt_x(slower)}",
                    verdict(slower, slower <= 0.4 / 0.3),
                )
            )
        if self.checks:
            bad = [c.model for c in self.checks if not c.exact]
            out.append(
                (
                    "answers identical to raw ORT (batching on and off)",
                    "all identical" if not bad else "differ: " + ", ".join(bad),
                    "PASS" if not bad else "FAIL",
                )
            )
        return out

    def failures(self) -> list[str]:
        out = [f"{r.model} c{r.concurrency} repeat {r.repeat}: {r.error}" for r in self.runs if not r.ok]
        out += [f"echo c{r.concurrency} repeat {r.repeat}: {r.error}" for r in self.peer_runs if not r.ok]
        if self.peer_error:
            out.append(f"echo server: {self.peer_error}")
        return out

    def markdown(self) -> str:
        s = self.settings
        uname = platform.uname()
        parts = [
            f"## {self.started:%Y-%m-%d %H:%M} UTC{' (quick)' if s.quick else ''}",
            "",
            f"- command: `{self.command}`",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores, Linux {uname.release}; "
            f"Python {platform.python_version()}, onnxruntime {ort.__version__}, grpcio {grpc.__version__}, "
            f"numpy {np.__version__}",
            f"- code: {self.code}",
            f"- load average before the run: {self.load_before}; run took {self.seconds / 60:.1f} min",
            f"- closed loop: perf_analyzer -p {s.measurement_ms} -s {s.stability_pct} -r {s.max_trials}, "
            f"one sample per request, {s.repeats} sweep(s), medians; "
            "spread = (max - min) / median of infer/s over the sweeps",
            f"- open loop: {s.arrival} arrivals for {s.open_loop_s:g} s after {s.open_loop_warmup_s:g} s warm-up; "
            "latency from each request's scheduled send time",
            "- raw ORT: `InferenceSession.run` in process, CPUExecutionProvider, default options and threads, measured "
            "after the server exited (nothing else of ours running)",
            f"- server exit status on SIGTERM: {self.server_exit}",
        ]
        if self.peer_ran:
            parts.append(
                "- peer: bench/echo_server.py (bare grpc.aio echo, np.frombuffer / tobytes, no tensorgate code) "
                "swept like identity with the same perf_analyzer settings after the tensorgate server exited; "
                f"exit status on SIGTERM: {self.peer_exit}"
            )
        parts += [
            "",
            "### Targets",
            "",
            table(["target", "measured", "verdict"], [list(t) for t in self.targets()]),
            "",
            "### Closed loop (perf_analyzer; medians)",
            "",
            self.closed_loop_table(),
            "",
        ]
        if self.peer_ran:
            parts += [
                "### Peer: bare grpc.aio echo (same machine, same run)",
                "",
                self.peer_table(),
                "",
                "tensorgate/echo p50 above 1 means slower than the echo; the scaled targets above read identity "
                "against this table.",
                "",
            ]
        on_off = self.on_off_table()
        if on_off:
            parts += ["### Batching on / off", "", on_off, ""]
        parts += [
            "### Where the time goes (medians; CPU per request over the whole perf_analyzer call)",
            "",
            self.time_table(),
            "",
            "### Open loop (tritonclient.grpc.aio, fixed rate)",
            "",
            self.open_loop_table(),
            "",
            "### Raw ONNX Runtime, samples/s (nothing else running)",
            "",
            self.raw_table(),
            "",
            f"Other processes took at most {self.raw_foreign_pct:.0f}% of the machine while raw ORT was timed.",
            "",
            "### Correctness (32 one-sample requests sent together + one 4-sample request, vs raw ORT per request)",
            "",
            self.check_table(),
            "",
        ]
        failures = self.failures()
        if failures:
            parts += ["### perf_analyzer failures", "", *(f"- {f}" for f in failures), ""]
        return "\n".join(parts)


def formed_batch(avg: float) -> int:
    return 1 if math.isnan(avg) else max(1, min(make_models.MAX_BATCH_SIZE, round(avg)))


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def git_state() -> str:
    """The commit, and when the server's code has uncommitted changes, a digest of them (runs on the same
    digest ran the same code)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        sha = git("rev-parse", "--short", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "server")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    if not diff:
        return f"git {sha}"
    files = sum(1 for line in diff.splitlines() if line.startswith("diff --git"))
    digest = hashlib.sha1(diff.encode()).hexdigest()[:10]
    return f"git {sha} + uncommitted changes to {files} file(s) under server/ (diff sha1 {digest})"


def append_results(path: Path, text: str) -> None:
    if not path.exists():
        path.write_text(
            "# Batching benchmark results\n\nOne section per run of `bench/run.py`, newest last. "
            "See bench/README.md for how to read them.\n\n"
        )
    with path.open("a") as f:
        f.write(text + "\n")


# ---------------------------------------------------------------------------------------------------------------
# the run


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def log_pa(what: str, run: PaRun) -> None:
    log(
        f"{what} c{run.concurrency}: "
        + (
            f"{run.infer_per_s:,.0f} infer/s p50 {run.p50_us / 1000:.3f} ms avg batch "
            f"{run.avg_batch:.2f} server CPU {run.server_cpu_us:.0f} µs/req" + (" (loose -s)" if run.retried else "")
            if run.ok
            else f"FAILED {run.error}"
        )
    )


def run_peer(report: Report, s: Settings, tmp: Path) -> None:
    """The same-run peer: bench/echo_server.py alone on the machine (tensorgate has exited), swept with
    perf_analyzer at identity's concurrencies and repeats. A failure is reported, never fatal to the run."""
    echo = Server.echo(tmp / "echo.log")
    try:
        echo.wait_ready(timeout=30)
        log(f"echo server ready on {echo.url} (pid {echo.pid})")
        for rep in range(s.repeats):
            for c in s.concurrency:
                run = perf_analyzer(echo, "identity", c, rep, s, tmp, label="echo-")
                report.peer_runs.append(run)
                log_pa(f"peer sweep {rep + 1}/{s.repeats} echo identity", run)
    except Exception as exc:  # the echo did not start or answer: the tensorgate results still stand
        report.peer_error = f"{type(exc).__name__}: {exc}"
        log(f"echo server failed: {report.peer_error}")
    finally:
        report.peer_exit = echo.stop()
        log(f"echo server stopped with SIGTERM: exit status {report.peer_exit}")
        if report.peer_exit != 0:
            print(echo.log_tail(), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    s = parse_args(argv)
    if subprocess.run([str(PERF_ANALYZER), "--version"], capture_output=True).returncode != 0:
        print(f"perf_analyzer is not installed ({PERF_ANALYZER}): scripts/install_perf_analyzer.sh", file=sys.stderr)
        return 2
    report = Report(s, shlex.join([sys.executable, *sys.argv]), datetime.datetime.now(datetime.timezone.utc))
    report.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report.code = git_state()
    t_start = time.monotonic()
    log(f"building the model repository in {s.repo}")
    make_models.build(s.repo, list(s.models))
    sessions = {m: raw_session(s.repo, m) for m in s.models}

    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = Server.tensorgate(s.repo, tmp / "server.log")
        try:
            server.wait_ready()
            log(f"server ready on {server.url} (pid {server.pid})")
            for i, model in enumerate(s.models):
                check = check_model(server, sessions[model], model, seed=100 + i)
                report.checks.append(check)
                log(
                    f"check {model}: {'identical' if check.exact else 'DIFFERENT'} to raw ORT ({check.requests} "
                    f"requests in {check.executions} executions, largest batch {check.largest_batch})"
                )
            for rep in range(s.repeats):
                for model in s.models:
                    for c in s.concurrency:
                        run = perf_analyzer(server, model, c, rep, s, tmp)
                        report.runs.append(run)
                        log_pa(f"sweep {rep + 1}/{s.repeats} {model}", run)
            base_c = report.open_loop_base_c = 16 if 16 in s.concurrency else max(s.concurrency)
            for i, model in enumerate(s.models):
                base = report.med(model, base_c, lambda r: r.infer_per_s)
                if math.isnan(base):
                    continue
                for fraction in s.rate_fractions:
                    run_ol = open_loop(server, model, fraction, fraction * base, s, seed=1000 + i)
                    report.open_runs.append(run_ol)
                    log(
                        f"open loop {model} {fraction:.0%} of c{base_c} ({run_ol.target_rate:,.0f}/s): achieved "
                        f"{run_ol.achieved:,.0f}/s p50 {run_ol.p50_ms:.3f} ms p99 {run_ol.p99_ms:.3f} ms "
                        f"lag p99 {run_ol.lag_p99_ms:.3f} ms avg batch {run_ol.avg_batch:.2f}"
                    )
        finally:
            report.server_exit = server.stop()
            log(f"server stopped with SIGTERM: exit status {report.server_exit}")
            if report.server_exit != 0:
                print(server.log_tail(), file=sys.stderr)
        if s.peer and "identity" in s.models:
            run_peer(report, s, tmp)

    # Raw ORT with nothing else of ours running: batch 1, 16, and every batch size the server formed.
    wanted: set[tuple[str, int]] = set()
    for model in s.models:
        file = make_models.MODELS[model].file
        wanted |= {(file, 1), (file, 16)}
        for c in s.concurrency:
            wanted.add((file, formed_batch(report.med(model, c, lambda r: r.avg_batch))))
    for file, b in sorted(wanted):
        model = next(m for m in s.models if make_models.MODELS[m].file == file)
        before = CpuSample.take(None)
        report.raw[(file, b)] = raw_throughput(sessions[model], make_models.MODELS[model].input_dims, b, s.raw_seconds)
        foreign = CpuDelta.between(before, CpuSample.take(None), client_is_self=True).foreign_pct
        report.raw_foreign_pct = max(report.raw_foreign_pct, foreign)
        log(f"raw ORT {file} b{b}: {report.raw[(file, b)]:,.0f} samples/s (other processes {foreign:.0f}%)")
    report.seconds = time.monotonic() - t_start

    text = report.markdown()
    print(text)
    if s.results is not None:
        append_results(s.results, text)
        log(f"appended to {s.results}")
    bad = report.server_exit != 0 or any(not c.exact for c in report.checks) or bool(report.failures())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
