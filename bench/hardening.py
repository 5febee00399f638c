"""Hardening report: fuzzing, overload, soak and drain of real ``tensorgate serve`` processes.

    .venv/bin/python bench/hardening.py [--quick] [--server-flag=--grpc-max-pending-calls=500 ...]
    .venv/bin/python bench/hardening.py --only overload --levels 1,2,5,10 --level-seconds 10

Four phases, each on a fresh server started with the same ``--server-flag`` flags (repeatable; one flag, or
a flag and its value in one quoted string), all printed as tables:

1. fuzz: tests/fuzz_strategies.py's hypothesis strategies, without pytest (no shrinking, nothing fails):
   ModelInferRequests from correct to wild (unary, several at once, and on ModelStreamInfer) and random or
   corrupted bytes on every RPC of inference.GRPCInferenceService and on grpc.health.v1.Health/Check, against
   the example models of model_repo/. Cases and status codes per method, and the problems found (statuses
   outside the allowed set, unbounded or leaky messages, wrong answers to correct requests).
2. overload: capacity first (closed loop, c=16, grpc.aio) on ``identity`` and the compute-bound ``cnn``
   (bench/make_models.py), then an open loop (Poisson arrivals, grpc.aio, every call with a client deadline)
   at 1x, 2x and 5x that capacity. Per level: offered and achieved send rate, admitted (OK) rate and
   latency, rejections by status with their latency and whether they carried a message, and the CPU the
   client and the server used (they share the machine's cores: a client at ~100% of a core did not keep up).
3. soak: mixed good and bad requests (drawn once from the fuzz strategies: unary, streams, the BYTES model,
   metadata and health calls) from a few threads; the server's RSS, open fds and threads sampled every
   second, before/after and the RSS slope over the second half (least squares).
4. drain: closed-loop traffic from several workers, SIGTERM mid-run; requests in flight at the signal vs
   sent after it, by outcome; requests lost (in flight at the signal and failed), exit status, time to exit.

The default run takes about 4 minutes on the 2-core machine, ``--quick`` about 1.5. The exit status is 1
when fuzzing found a problem, a server died or did not exit 0, the soak saw a status outside the allowed
set, or the drain lost a request in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests")]  # the bench's modules and the shared fuzz strategies
import make_models  # noqa: E402
from fuzz_strategies import (  # noqa: E402
    ALLOWED,
    CHANNEL_OPTIONS,
    HEALTH_CHECK,
    INFER,
    SERVICE,
    STREAM,
    Catalog,
    FuzzRequest,
    Tally,
    call_stream,
    call_unary,
    campaign,
    channel,
    infer_requests,
    problem_kind,
    raw_messages,
)
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from load import send_on_schedule  # noqa: E402
from processes import CpuDelta, CpuSample, Server, cpu_model  # noqa: E402
from tables import table  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402

PHASES = ("fuzz", "overload", "soak", "drain")
INTERNAL_MARKERS = ("event=internal_error", "raised by servicer method")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    quick: bool
    phases: tuple[str, ...]
    server_flags: tuple[str, ...]
    models: tuple[str, ...]  # overload
    levels: tuple[float, ...]  # multiples of capacity
    capacity_s: float
    level_s: float
    deadline_s: float
    fuzz_examples: int
    soak_s: float
    soak_threads: int
    drain_workers: int
    drain_warmup_s: float
    seed: int


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run (~1.5 min): fewer cases, shorter windows")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases (default: {','.join(PHASES)})")
    p.add_argument(
        "--server-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for every server started, e.g. --server-flag=--grpc-max-pending-calls=500 (repeatable; "
        "'--flag value' in one quoted string also works)",
    )
    p.add_argument("--models", default="identity,cnn", help="overload models (of bench/make_models.py)")
    p.add_argument("--levels", default="1,2,5", help="open-loop rates as multiples of the closed-loop capacity")
    p.add_argument("--capacity-seconds", type=float, help="closed-loop capacity window (default 4; quick 2)")
    p.add_argument("--level-seconds", type=float, help="open-loop window per level (default 10; quick 3)")
    p.add_argument("--deadline-seconds", type=float, help="client deadline of each call (default 10; quick 5)")
    p.add_argument("--fuzz-examples", type=int, help="hypothesis examples of ModelInfer (default 200; quick 60)")
    p.add_argument("--soak-seconds", type=float, help="soak length (default 60; quick 15)")
    p.add_argument("--soak-threads", type=int, default=4)
    p.add_argument("--drain-workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    phases = tuple(x for x in a.only.split(",") if x)
    unknown = [x for x in phases if x not in PHASES]
    if unknown:
        p.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    models = tuple(m for m in a.models.split(",") if m)
    if any(m not in make_models.MODELS for m in models):
        p.error(f"unknown models in {models}; choose from {', '.join(make_models.MODELS)}")
    q = bool(a.quick)
    return Options(
        quick=q,
        phases=phases,
        server_flags=tuple(part for flag in a.server_flag for part in shlex.split(flag)),
        models=models,
        levels=tuple(float(x) for x in a.levels.split(",") if x),
        capacity_s=a.capacity_seconds or (2.0 if q else 4.0),
        level_s=a.level_seconds or (3.0 if q else 10.0),
        deadline_s=a.deadline_seconds or (5.0 if q else 10.0),
        fuzz_examples=a.fuzz_examples or (60 if q else 200),
        soak_s=a.soak_seconds or (15.0 if q else 60.0),
        soak_threads=a.soak_threads,
        drain_workers=a.drain_workers,
        drain_warmup_s=1.0 if q else 2.0,
        seed=a.seed,
    )


# ---------------------------------------------------------------------------------------------------------------
# the machine, the code, the server processes


def git_rev() -> str:
    """The checkout's commit, read from .git's files (no git command)."""
    git = ROOT / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:10]
        ref = head[5:]
        for base in (git, Path((git / "commondir").read_text().strip()) if (git / "commondir").exists() else git):
            base = base if base.is_absolute() else git / base
            if (base / ref).exists():
                return f"{(base / ref).read_text().strip()[:10]} ({ref.removeprefix('refs/heads/')})"
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(f" {ref}"):
                        return f"{line[:10]} ({ref.removeprefix('refs/heads/')})"
    except OSError:
        pass
    return "unknown"


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class ProcSample:
    t: float
    rss_mib: float
    threads: int
    fds: int

    @staticmethod
    def take(pid: int, t0: float) -> ProcSample | None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None
        values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss_kib = int(values["VmRSS"].split()[0])
        return ProcSample(time.monotonic() - t0, rss_kib / 1024, int(values["Threads"]), fds)


def start_server(repo: Path, log_path: Path, opts: Options) -> Server:
    server = Server.tensorgate(repo, log_path, extra=opts.server_flags)
    server.wait_ready()
    log(f"server ready on {server.url} (pid {server.pid}) {' '.join(opts.server_flags)}")
    return server


def internal_errors(server: Server) -> int:
    text = server.log_path.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if any(m in line for m in INTERNAL_MARKERS))


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    v = seconds * 1000
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def infer_payload(model: str, rows: int = 1, seed: int = 0) -> bytes:
    """A correct one-input FP32 request for a model of bench/make_models.py."""
    dims = make_models.MODELS[model].input_dims
    data = np.random.default_rng(seed).standard_normal((rows, *dims)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=make_models.INPUT, datatype="FP32", shape=list(data.shape))
    request.raw_input_contents.append(data.tobytes())
    return bytes(request.SerializeToString())


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, title: str, *parts: str) -> None:
        self.sections.append("\n".join([f"### {title}", "", *parts, ""]))
        print(self.sections[-1], flush=True)


# ---------------------------------------------------------------------------------------------------------------
# 1. fuzz


def run_fuzz(opts: Options, tmp: Path, report: Report) -> None:
    repo = tmp / "examples"
    shutil.copytree(ROOT / "model_repo", repo)
    server = start_server(repo, tmp / "fuzz-server.log", opts)
    tally = Tally()
    started = time.monotonic()
    try:
        catalog = Catalog.read(server.client)
        campaign(server.url, catalog, tally, opts.fuzz_examples, lambda: server.proc.poll() is None)
        alive = server.proc.poll() is None
        after = "-"
        if alive:
            good = call_unary_good_add_sub(server.url)
            after = "right answer" if good else "WRONG or failed"
            if not good:
                report.failures.append("fuzz: a good request after the fuzzing did not get the right answer")
    finally:
        code = server.stop()
    seconds = time.monotonic() - started
    internal = internal_errors(server)
    cases = sum(tally.cases.values())
    calls = sum(sum(c.values()) for c in tally.counts.values())
    classes = Counter(problem_kind(p) for p in tally.problems)
    lines = [
        f"{cases:,} cases ({calls:,} calls and stream messages) in {seconds:.0f} s on the example models; "
        f"server alive afterwards: {'yes' if alive else 'NO'}, then exit status {code}; a good add_sub request "
        f"afterwards: {after}; internal errors in the log: {internal}.",
        "",
        tally.table(),
        "",
        f"cases by kind: {', '.join(f'{k} {v}' for k, v in sorted(tally.cases.items()))}",
        "",
        f"problems: {len(tally.problems)}" + (", by kind (numbers as N):" if tally.problems else ""),
        *(f"- {n} x {k}" for k, n in classes.most_common(12)),
    ]
    report.add("Fuzz: status codes per method", *lines)
    if tally.problems or not alive or code != 0 or internal:
        report.failures.append(f"fuzz: {len(tally.problems)} problems, alive={alive}, exit {code}, internal {internal}")


def call_unary_good_add_sub(url: str) -> bool:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    request = pb.ModelInferRequest(model_name="add_sub")
    for name, array in (("INPUT0", a), ("INPUT1", np.ones_like(a))):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(array.tobytes())
    with channel(url) as ch:
        answer = call_unary(ch, INFER, request.SerializeToString())
    if answer.code != grpc.StatusCode.OK or answer.response is None:
        return False
    response = pb.ModelInferResponse.FromString(answer.response)
    out = {
        o.name: np.frombuffer(raw, np.float32)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    return bool(np.array_equal(out["OUTPUT0"], (a + 1).ravel()) and np.array_equal(out["OUTPUT1"], (a - 1).ravel()))


# ---------------------------------------------------------------------------------------------------------------
# 2. overload


@dataclass(frozen=True)
class Call:
    scheduled: float  # seconds from the level's start
    sent: float
    done: float
    code: str  # grpc status name
    details: str  # the status message (cut)


async def _one(method: Any, payload: bytes, deadline: float) -> tuple[str, str]:
    try:
        await method(payload, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, (exc.details() or "")[:200]
    return "OK", ""


def _channels(url: str, n: int) -> list[grpc.aio.Channel]:
    return [
        grpc.aio.insecure_channel(url, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
        for _ in range(n)
    ]


async def closed_loop(
    url: str, payload: bytes, concurrency: int, seconds: float, deadline: float
) -> tuple[float, float]:
    """``concurrency`` callers back to back for ``seconds`` (after a short warm-up): answers/s and p50."""
    chans = _channels(url, 4)
    methods = [c.unary_unary(INFER) for c in chans]
    latencies: list[float] = []
    stop = time.monotonic() + 0.5 + seconds
    measure_from = time.monotonic() + 0.5
    errors = Counter[str]()

    async def caller(i: int) -> None:
        method = methods[i % len(methods)]
        while (t := time.monotonic()) < stop:
            code, _ = await _one(method, payload, deadline)
            if t >= measure_from:
                if code == "OK":
                    latencies.append(time.monotonic() - t)
                else:
                    errors[code] += 1

    try:
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    finally:
        await asyncio.gather(*(c.close() for c in chans))
    if errors:
        log(f"closed loop errors: {dict(errors)}")
    return len(latencies) / seconds, pct(latencies, 50)


async def open_loop(
    url: str, payload: bytes, rate: float, seconds: float, deadline: float, seed: int
) -> tuple[list[Call], int]:
    """Poisson arrivals at ``rate`` for ``seconds``, each sent whatever the server does (a task per call). The
    generator stops sending at 1.5 x ``seconds``: what it had not sent by then is returned as unsent."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * seconds))
    offsets = np.cumsum(rng.exponential(1 / rate, n))
    chans = _channels(url, 4)
    methods = [c.unary_unary(INFER) for c in chans]
    loop = asyncio.get_running_loop()
    calls: list[Call] = []

    async def one(i: int, scheduled: float) -> None:
        sent = loop.time()
        code, details = await _one(methods[i % len(methods)], payload, deadline)
        calls.append(Call(scheduled - start, sent - start, loop.time() - start, code, details))

    tasks: list[asyncio.Task[None]] = []
    try:
        for c in chans:
            await c.channel_ready()
        start = loop.time()

        def launch(i: int, scheduled: float) -> None:
            tasks.append(asyncio.create_task(one(i, scheduled)))

        launched = await send_on_schedule(offsets, start, launch, cutoff=start + 1.5 * seconds)
        if tasks:
            await asyncio.wait(tasks, timeout=deadline + 10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(c.close() for c in chans))
    return calls, n - launched


LEVEL_HEADERS = [
    "level", "offered/s", "sent/s", "OK/s", "OK p50 ms", "OK p99 ms", "rejected by code", "rej p50 ms", "rej p99 ms",
    "rej with message", "unsent", "send lag p99 ms", "client CPU", "server CPU", "other procs", "idle",
]  # fmt: skip


@dataclass
class Level:
    model: str
    multiple: float
    target: float
    seconds: float
    calls: list[Call]
    unsent: int
    cpu: CpuDelta
    wall: float


def commonest_messages(calls: Sequence[Call]) -> list[str]:
    by_code: dict[str, Counter[str]] = {}
    for c in calls:
        if c.code != "OK":
            by_code.setdefault(c.code, Counter())[c.details] += 1
    return [
        f"- {code}: {sum(m.values()):,} calls; the commonest message ({n:,}): {d!r}"
        for code, m in sorted(by_code.items())
        for d, n in m.most_common(1)
    ]


def run_overload(opts: Options, tmp: Path, report: Report) -> None:
    repo = make_models.build(tmp / "bench_repo", list(opts.models))
    server = start_server(repo, tmp / "overload-server.log", opts)
    capacity: dict[str, tuple[float, float]] = {}
    levels: list[Level] = []
    try:
        for model in opts.models:
            payload = infer_payload(model)
            capacity[model] = asyncio.run(closed_loop(server.url, payload, 16, opts.capacity_s, opts.deadline_s))
            log(f"capacity {model}: {capacity[model][0]:,.0f}/s at c16, p50 {ms(capacity[model][1])} ms")
            for k, multiple in enumerate(opts.levels):
                rate = multiple * capacity[model][0]
                before, wall0 = CpuSample.take(server.pid), time.monotonic()
                calls, unsent = asyncio.run(
                    open_loop(server.url, payload, rate, opts.level_s, opts.deadline_s, opts.seed + k)
                )
                cpu = CpuDelta.between(before, CpuSample.take(server.pid), client_is_self=True)
                levels.append(Level(model, multiple, rate, opts.level_s, calls, unsent, cpu, time.monotonic() - wall0))
                n_ok = sum(1 for c in calls if c.code == "OK")
                log(f"open loop {model} {multiple:g}x: {len(calls):,} calls, {n_ok:,} OK, {unsent} not sent")
                if server.proc.poll() is not None:
                    report.failures.append(f"overload: the server died at {model} {multiple:g}x")
                    break
                time.sleep(1.0)  # let what gRPC still holds drain before the next level
    finally:
        code = server.stop()
    internal = internal_errors(server)
    cap_rows = [[m, f"{r:,.0f}", ms(p50)] for m, (r, p50) in capacity.items()]
    rows = []
    for lv in levels:
        ok = [c for c in lv.calls if c.code == "OK"]
        bad = [c for c in lv.calls if c.code != "OK"]
        sent_span = max((c.sent for c in lv.calls), default=lv.seconds)
        by_code = Counter(c.code for c in bad)
        lag = [c.sent - c.scheduled for c in lv.calls]
        rows.append(
            [
                f"{lv.model} {lv.multiple:g}x",
                f"{lv.target:,.0f}",
                f"{len(lv.calls) / max(sent_span, 1e-9):,.0f}",
                f"{len(ok) / lv.seconds:,.0f}",
                ms(pct([c.done - c.scheduled for c in ok], 50)),
                ms(pct([c.done - c.scheduled for c in ok], 99)),
                ", ".join(f"{k} {v:,}" for k, v in by_code.most_common()) or "-",
                ms(pct([c.done - c.scheduled for c in bad], 50)),
                ms(pct([c.done - c.scheduled for c in bad], 99)),
                f"{sum(bool(c.details) for c in bad):,}/{len(bad):,}" if bad else "-",
                f"{lv.unsent:,}",
                ms(pct(lag, 99)),
                f"{100 * lv.cpu.client_s / lv.wall:.0f}%",
                f"{100 * lv.cpu.server_s / lv.wall:.0f}%",
                f"{lv.cpu.foreign_pct:.0f}%",
                f"{lv.cpu.idle_pct:.0f}%",
            ]
        )
    report.add(
        "Overload: capacity (closed loop, c16, grpc.aio) and open loop at multiples of it",
        table(["model", "capacity infer/s", "p50 ms"], cap_rows),
        "",
        table(LEVEL_HEADERS, rows),
        "",
        f"Latency from each call's scheduled send time (no coordinated omission); client deadline "
        f"{opts.deadline_s:g} s; {opts.level_s:g} s a level. `sent/s` below `offered/s`, a large send lag or "
        f"`unsent` calls (the generator stops at 1.5x the window) mean the load generator, on the same cores, did "
        f"not keep up. CPU: of one core for the client (this process, all threads) and the server (its process); "
        f"`other procs` and `idle` of the whole machine ({os.cpu_count()} cores). "
        f"Server exit status {code}; internal errors in its log: {internal}.",
        "",
        "Rejection messages, the commonest per status (gRPC's own when the server never saw the call):",
        *commonest_messages([c for lv in levels for c in lv.calls]),
    )
    if code != 0 or internal:
        report.failures.append(f"overload: server exit {code}, internal errors {internal}")


# ---------------------------------------------------------------------------------------------------------------
# 3. soak


def request_pool(catalog: Catalog, size: int) -> tuple[list[FuzzRequest], list[bytes]]:
    """``size`` requests from the fuzz strategies (correct, mutated, wild) and as many raw stream messages."""
    requests: list[FuzzRequest] = []
    raws: list[bytes] = []
    quiet = settings(
        database=None,
        deadline=None,
        derandomize=True,  # the same pool every run
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )

    @settings(quiet, max_examples=size)
    @given(infer_requests(catalog), raw_messages(STREAM, catalog))
    def collect(request: FuzzRequest, raw: bytes) -> None:
        requests.append(request)
        raws.append(raw)

    collect()
    return requests, raws


def _metadata_calls(catalog: Catalog) -> list[tuple[str, bytes]]:
    names = [*catalog.names, "nope", "x" * 5000]
    calls: list[tuple[str, bytes]] = [
        (f"/{SERVICE}/ServerReady", b""),
        (f"/{SERVICE}/ServerLive", b""),
        (f"/{SERVICE}/ServerMetadata", b""),
        (f"/{SERVICE}/RepositoryIndex", b""),
        (f"/{SERVICE}/ModelStatistics", b""),
        (HEALTH_CHECK, b""),
        (HEALTH_CHECK, b"\x0a\x1einference.GRPCInferenceService"),
    ]
    for name in names:
        calls.append((f"/{SERVICE}/ModelMetadata", pb.ModelMetadataRequest(name=name).SerializeToString()))
        calls.append((f"/{SERVICE}/ModelConfig", pb.ModelConfigRequest(name=name).SerializeToString()))
        calls.append((f"/{SERVICE}/ModelReady", pb.ModelReadyRequest(name=name, version="1").SerializeToString()))
    return calls


def run_soak(opts: Options, tmp: Path, report: Report) -> None:
    repo = tmp / "soak_repo"
    make_models.build(repo, ["identity"])
    for name in ("add_sub", "string_identity"):
        shutil.copytree(ROOT / "model_repo" / name, repo / name)
    server = start_server(repo, tmp / "soak-server.log", opts)
    samples: list[ProcSample] = []
    counts: dict[str, Counter[str]] = {}
    lock = threading.Lock()
    unexpected: list[str] = []
    try:
        catalog = Catalog.read(server.client)
        requests, raws = request_pool(catalog, 150 if opts.quick else 300)
        good = [r.serialize() for r in requests if r.valid]
        bad = [r.serialize() for r in requests if not r.valid]
        strings = [r.serialize() for r in requests if r.valid and r.model and r.model.name == "string_identity"]
        metadata = _metadata_calls(catalog)
        log(f"soak pool: {len(good)} correct, {len(bad)} bad requests, {len(strings)} of the BYTES model")
        t0 = time.monotonic()
        stop = threading.Event()

        def note(kind: str, code: grpc.StatusCode, responses: Sequence[Any] = ()) -> None:
            with lock:
                counts.setdefault(kind, Counter())[code.name] += 1
                for r in responses:
                    counts.setdefault("stream messages", Counter())[
                        "error_message" if r.error_message else "answer"
                    ] += 1
                if code not in ALLOWED:
                    unexpected.append(f"{kind}: {code.name}")

        def worker(k: int) -> None:
            rng = random.Random(opts.seed * 100 + k)
            unary: dict[str, Callable[[], tuple[str, bytes]]] = {
                "unary good": lambda: (INFER, rng.choice(good)),
                "unary fuzzed": lambda: (INFER, rng.choice(bad)),
                "BYTES model": lambda: (INFER, rng.choice(strings or good)),
                "metadata/health": lambda: rng.choice(metadata),
            }
            kinds, weights = [*unary, "stream"], [0.30, 0.25, 0.10, 0.20, 0.15]
            messages = good + bad + raws
            with channel(server.url) as ch:
                while not stop.is_set():
                    kind = rng.choices(kinds, weights)[0]
                    if kind == "stream":
                        answer = call_stream(ch, [rng.choice(messages) for _ in range(rng.randint(1, 6))])
                        note(kind, answer.code, answer.responses)
                    else:
                        note(kind, call_unary(ch, *unary[kind]()).code)

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(opts.soak_threads)]
        first = ProcSample.take(server.pid, t0)
        for t in threads:
            t.start()
        while (elapsed := time.monotonic() - t0) < opts.soak_s and server.proc.poll() is None:
            sample = ProcSample.take(server.pid, t0)
            if sample:
                samples.append(sample)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - elapsed)))
        stop.set()
        for t in threads:
            t.join(timeout=30)
        alive = server.proc.poll() is None
        last = ProcSample.take(server.pid, t0)
        wall = time.monotonic() - t0
    finally:
        code = server.stop()
    internal = internal_errors(server)
    half = [s for s in samples if s.t >= opts.soak_s / 2]
    slope = (np.polyfit([s.t / 60 for s in half], [s.rss_mib for s in half], 1)[0]) if len(half) >= 3 else math.nan
    rows = [
        [name, str(getattr(first, a) if first else "-"), str(getattr(last, a) if last else "-"),
         str(max((getattr(s, a) for s in samples), default="-"))]
        for name, a in (("threads", "threads"), ("open fds", "fds"))
    ]  # fmt: skip
    rss = [
        "RSS MiB",
        f"{first.rss_mib:.1f}" if first else "-",
        f"{last.rss_mib:.1f}" if last else "-",
        f"{max(s.rss_mib for s in samples):.1f}" if samples else "-",
    ]
    total = sum(sum(c.values()) for k, c in counts.items() if k != "stream messages")
    codes = sorted({c for v in counts.values() for c in v})
    report.add(
        f"Soak: {wall:.0f} s of mixed good and bad requests from {opts.soak_threads} threads",
        table(["server", "before", "after", "max"], [rss, *rows]),
        "",
        f"RSS slope over the second half ({len(half)} samples, least squares): {slope:+.2f} MiB/min; "
        f"{total:,} calls ({total / wall:,.0f}/s); server alive at the end: {'yes' if alive else 'NO'}, then exit "
        f"status {code}; internal errors in its log: {internal}; statuses outside the allowed set: {len(unexpected)}"
        + (f" (first: {unexpected[0]})" if unexpected else ""),
        "",
        table(
            ["kind", "calls", *codes],
            [[k, f"{sum(c.values()):,}", *(f"{c.get(x, 0):,}" for x in codes)] for k, c in sorted(counts.items())],
        ),
    )
    if unexpected or not alive or code != 0 or internal:
        report.failures.append(f"soak: {len(unexpected)} unexpected statuses, alive={alive}, exit {code}")


# ---------------------------------------------------------------------------------------------------------------
# 4. drain


@dataclass(frozen=True)
class DrainCall:
    model: str
    sent: float
    done: float
    code: str


async def _drain_traffic(server: Server, opts: Options) -> tuple[list[DrainCall], float, float | None, int | None]:
    """Workers back to back on identity and cnn (batches of 4: tens of ms each, so some are in flight at any
    moment); SIGTERM after the warm-up; workers go on until the process has exited. Returns the calls, the
    signal's time, the time to exit and the exit status (None: it did not exit in 60 s)."""
    payloads = {"identity": infer_payload("identity"), "cnn": infer_payload("cnn", rows=4)}
    chans = _channels(server.url, 4)
    methods = [c.unary_unary(INFER) for c in chans]
    calls: list[DrainCall] = []
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def worker(k: int) -> None:
        model = "cnn" if k % 2 else "identity"
        while not exited.is_set() or loop.time() < exited_at + 0.3:
            sent = loop.time()
            code, _ = await _one(methods[k % len(methods)], payloads[model], opts.deadline_s)
            calls.append(DrainCall(model, sent, loop.time(), code))
            if code != "OK":
                await asyncio.sleep(0.01)

    exited_at = math.inf
    for c in chans:
        await c.channel_ready()
    tasks = [asyncio.create_task(worker(k)) for k in range(opts.drain_workers)]
    await asyncio.sleep(opts.drain_warmup_s)
    signalled = loop.time()
    server.proc.send_signal(signal.SIGTERM)
    try:
        status: int | None = await asyncio.to_thread(server.proc.wait, 60)
        exited_at = loop.time()
    except Exception:
        status = None
        exited_at = loop.time()
    exited.set()
    await asyncio.wait(tasks, timeout=opts.deadline_s + 5)
    for c in chans:
        await c.close()
    return calls, signalled, (exited_at - signalled) if status is not None else None, status


def run_drain(opts: Options, tmp: Path, report: Report) -> None:
    repo = make_models.build(tmp / "drain_repo", ["identity", "cnn"])
    server = start_server(repo, tmp / "drain-server.log", opts)
    try:
        calls, signalled, to_exit, status = asyncio.run(_drain_traffic(server, opts))
    finally:
        code = server.stop()  # only waits (or kills) if it is still running
    groups = {
        "done before the signal": [c for c in calls if c.done <= signalled],
        "in flight at the signal": [c for c in calls if c.sent < signalled < c.done],
        "sent after the signal": [c for c in calls if c.sent >= signalled],
    }
    rows = []
    for name, group in groups.items():
        failed = Counter(c.code for c in group if c.code != "OK")
        rows.append(
            [
                name,
                f"{len(group):,}",
                f"{sum(c.code == 'OK' for c in group):,}",
                ", ".join(f"{k} {v:,}" for k, v in failed.most_common()) or "-",
            ]
        )
    lost = sum(1 for c in groups["in flight at the signal"] if c.code != "OK")
    after_ok = [c for c in groups["sent after the signal"] if c.code == "OK"]
    internal = internal_errors(server)
    report.add(
        f"Drain: SIGTERM after {opts.drain_warmup_s:g} s of traffic from {opts.drain_workers} workers",
        table(["requests", "count", "OK", "failed by code"], rows),
        "",
        f"requests lost (in flight at the signal and failed): {lost}; sent after the signal and still answered OK: "
        f"{len(after_ok)} (the last {ms(max((c.done - signalled for c in after_ok), default=math.nan))} ms after "
        f"the signal); exit status {status if status is not None else 'none (killed after 60 s)'} (stop: {code}); "
        f"time from SIGTERM to exit: {f'{to_exit:.2f} s' if to_exit is not None else '-'}; internal errors in the "
        f"log: {internal}.",
    )
    if lost or status != 0 or internal:
        report.failures.append(f"drain: {lost} lost, exit status {status}, internal errors {internal}")


# ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    cpu0 = self_cpu_s()
    header = [
        f"## Hardening report, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{shlex.join([sys.executable, *sys.argv])}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, Linux {platform.uname().release}; Python "
        f"{platform.python_version()}, grpcio {grpc.__version__}",
        f"- code: {git_rev()} (plus whatever is uncommitted in the working tree)",
        f"- server flags: {' '.join(opts.server_flags) or '(defaults)'}; phases: {', '.join(opts.phases)}"
        + ("; quick" if opts.quick else ""),
        "",
    ]
    print("\n".join(header), flush=True)
    report = Report()
    runners = {"fuzz": run_fuzz, "overload": run_overload, "soak": run_soak, "drain": run_drain}
    with tempfile.TemporaryDirectory(prefix="tg-hardening-") as tmp_name:
        tmp = Path(tmp_name)
        for phase in opts.phases:
            log(f"phase {phase}")
            try:
                runners[phase](opts, tmp, report)
            except Exception as exc:  # one phase failing (a server that did not start) leaves the others
                report.failures.append(f"{phase}: {type(exc).__name__}: {exc}")
                log(f"phase {phase} failed: {type(exc).__name__}: {exc}")
    wall = time.monotonic() - t0
    print(f"run took {wall:.0f} s; this process used {self_cpu_s() - cpu0:.0f} s of CPU")
    if report.failures:
        print("\nfindings:\n" + "\n".join(f"- {f}" for f in report.failures))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
