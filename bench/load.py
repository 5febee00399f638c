"""The load drivers, each against a running :class:`processes.Server`: the correctness check (the server's answers
against raw ONNX Runtime, bit for bit), closed loop with perf_analyzer, open loop with a tritonclient.grpc.aio
generator; and raw ONNX Runtime throughput in process, for the ratios."""

from __future__ import annotations

import asyncio
import csv
import math
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import make_models
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from processes import CpuDelta, CpuSample, Server, StatsSnapshot
from settings import PERF_ANALYZER, Settings
from tritonclient.utils import InferenceServerException

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
    protocol: str = "grpc"  # perf_analyzer -i: "grpc" or "http" (the server's HTTP/REST port)

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


def _pa_command(
    url: str, model: str, c: int, s: Settings, stability: int, out: Path, protocol: str, extra: Sequence[str] = ()
) -> list[str]:
    return [
        str(PERF_ANALYZER),
        "-i",
        protocol,
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
        *extra,
    ]


def perf_analyzer(
    server: Server,
    model: str,
    c: int,
    repeat: int,
    s: Settings,
    tmp: Path,
    label: str = "",
    protocol: str = "grpc",
    extra: Sequence[str] = (),
) -> PaRun:
    """One closed-loop perf_analyzer run; ``protocol`` "http" drives the server's HTTP/REST port instead of gRPC;
    ``extra``: more perf_analyzer flags (``--shared-memory system``)."""
    out = tmp / f"pa-{label}{model}-{protocol}-c{c}-r{repeat}.csv"
    url = server.http_url if protocol == "http" else server.url
    stability = s.stability_pct
    retried = False
    for attempt in range(2):
        out.unlink(missing_ok=True)
        before = StatsSnapshot.take(server.client, model)
        cpu_before = CpuSample.take(server.pid)
        proc = subprocess.run(
            _pa_command(url, model, c, s, stability, out, protocol, extra),
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
                protocol,
            )
        if "stable measurement" in text and attempt == 0:
            stability, retried = min(100, 2 * stability), True  # a noisy machine: accept a looser window once
            continue
        lines = [ln for ln in text.splitlines() if ln.strip()]
        error = f"rc={proc.returncode}: " + " | ".join(lines[-3:])
        return PaRun(model, c, repeat, False, error, stats=stats, cpu=cpu, protocol=protocol)
    raise AssertionError("unreachable")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def log_pa(what: str, run: PaRun) -> None:
    log(
        f"{what} c{run.concurrency}: "
        + (
            f"{run.infer_per_s:,.0f} infer/s p50 {run.p50_us / 1000:.3f} ms avg batch "
            f"{run.avg_batch:.2f} server CPU {run.server_cpu_us:.0f} µs/req"
            + (f" other procs {run.cpu.foreign_pct:.0f}%" if run.cpu else "")
            + (" (loose -s)" if run.retried else "")
            if run.ok
            else f"FAILED {run.error}"
        )
    )


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


async def send_on_schedule(
    offsets: np.ndarray, start: float, launch: Callable[[int, float], object], cutoff: float = math.inf
) -> int:
    """Call ``launch(i, scheduled)`` for arrival i at its loop time ``start + offsets[i]``, whatever the server
    does (an open loop: ``launch`` starts a task and returns); stops at loop time ``cutoff``. Returns how many
    were launched (the rest were never sent)."""
    loop = asyncio.get_running_loop()
    n = len(offsets)
    i = 0
    while i < n and loop.time() < cutoff:
        now = loop.time()
        due = start + offsets[i]
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < n and start + offsets[i] <= now:
            launch(i, start + float(offsets[i]))
            i += 1
        await asyncio.sleep(0)  # let the new tasks send before scheduling more
    return i


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
        await send_on_schedule(offsets, start, lambda _, scheduled: tasks.append(asyncio.create_task(one(scheduled))))
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


@dataclass(frozen=True)
class RawRun:
    batch: int
    threads: int
    samples_per_s: float
    core_us_per_sample: float


def raw_ort(model_path: Path, dims: tuple[int, ...], batch: int, threads: int, seconds: float) -> RawRun:
    """``threads`` 0: ONNX Runtime's default options and threads (spinning on), as bench/run.py's baseline."""
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as tensorgate's sessions
    session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    feed = {make_models.INPUT: np.random.default_rng(batch).standard_normal((batch, *dims)).astype(np.float32)}
    for _ in range(3):
        session.run(None, feed)
    rates, costs = [], []
    for _ in range(5):
        n, c0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            session.run(None, feed)
            n += 1
        rates.append(n * batch / (time.perf_counter() - t0))
        costs.append(1e6 * (time.process_time() - c0) / (n * batch))
    return RawRun(batch, threads, statistics.median(rates), statistics.median(costs))


def formed_batch(avg: float) -> int:
    """The batch size raw ORT is timed and compared at for a server's average batch: rounded, 1..max_batch_size."""
    return 1 if math.isnan(avg) else max(1, min(make_models.MAX_BATCH_SIZE, round(avg)))
