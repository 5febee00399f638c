"""Where every core-microsecond of a request goes (issue 14): one model, one concurrency, the whole machine.

    python bench/account.py                                  # cnn at c16, 3 rounds, profiles in round 1
    python bench/account.py --model identity                 # identity, against the bare grpc.aio echo, and the
                                                             # echo with ONNX Runtime's run of the model on its loop
    python bench/account.py --model mlp                      # mlp, against the echo that runs it on its loop
    python bench/account.py --variant "2x1=@instances=2" --variant "loop-gather=--some-flag 1"
    python bench/account.py --triton                         # and Triton's Python backend in every round
    python bench/account.py --variant "before=@git=HEAD~1"   # the server code of a commit, same rounds

Each round starts the server under test on a fresh port with a repository holding only the model, lets
perf_analyzer (closed loop, one sample per request) load it for the whole round, and measures three
windows while that load runs, each ``--window`` seconds:

1. **CPU window** (nothing else running): CPU time and run-queue wait of every thread of the server
   (/proc/PID/task/TID/stat and schedstat), of perf_analyzer, of the whole machine (idle included), and
   the server's ModelStatistics (requests, executions, batch sizes, queue and compute phases). Requests
   per second come from the server's own success counter over this window.
2. **py-spy window** (``py-spy record --native --idle --threads``, round 1 only): each sample of the event
   loop and of the instance workers is put in one category (decode, scheduler, encode, ONNX Runtime, the
   GIL wait, waiting for work, gRPC and asyncio machinery, ...) by its innermost tensorgate frame, else by
   its leaf; a thread's CPU from window 1 is shared out among its on-CPU categories in proportion.
3. **perf window** (``perf record -a -e cpu-clock``, round 1 only): the share of each role's samples in each
   shared object (ONNX Runtime, gRPC's core, the Python interpreter, protobuf, numpy, libc, the kernel).

Then raw ONNX Runtime runs in this process with nothing else running, at the batch size the server formed
and at 16, with the server's thread settings (``intra_op_num_threads``, spinning off), giving the core-µs a
sample costs when nothing else competes for the cores. The account's total is the machine's capacity per
request (cores x window / requests): what the client, the server's threads, other processes and idle took.

Threads are told apart by name: the main thread runs the event loop; py-spy's thread list names the
instance workers (``tg-MODEL_N``), grpc.aio's poller and the asyncio executor; gRPC's own threads set their
names (``event_engine``, ``grpc_global_tim``, ``lifeguard``); threads of ``python`` with no Python frames
are native ones, i.e. ONNX Runtime's intra-op pools (the repository holds one model).

With ``--triton`` every round also measures Triton's Python backend serving the same model (bench/triton_python.py:
a model.py running the same ONNX file in ONNX Runtime per batch): the threads of tritonserver (its C++ gRPC
frontend and dynamic batcher), of the backend stub's main thread (model.py, and the calling thread of ONNX
Runtime's run) and of the stub's other threads (ONNX Runtime's intra-op pool, the stub's helpers) are its roles.

GIL waits are told by their leaf: CPython waits for the GIL in ``pthread_cond_timedwait`` (bounded by the
switch interval), while a worker waiting for its next batch sits in ``SimpleQueue.get`` and ONNX Runtime's
pool in ``pthread_cond_wait``. A benchmark, not a test: it reports, it never fails on a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules below import each other by name
import make_models
import triton_python
from load import RawRun, log, raw_ort
from processes import Server, StatsSnapshot, code_at, cpu_seconds, machine_seconds, process_tree
from run import append_results, git_state
from settings import PERF_ANALYZER, RESULTS
from tables import RunInfo, fmt_int, fmt_x, median, table
from tensorgate.frontend import grpc_experiments

PY_SPY = Path(sys.executable).parent / "py-spy"
EXPERIMENT = Path(__file__).resolve().parent / "experiment_server.py"
GRPC_THREADS = ("event_engine", "grpc_global_tim", "lifeguard")
ROLES = (
    "perf_analyzer (client)",
    "event loop (main thread)",
    "instance workers",
    "ONNX Runtime intra-op pool",
    "grpc.aio poller thread",
    "gRPC core threads",
    "other server threads",
    "tritonserver (C++ frontend, batcher)",
    "backend stub, main thread (model.py)",
    "backend stub, other threads (ORT's pool)",
    "other processes",
    "idle",
)
CLIENT = ROLES[0]
SERVER_ROLES = ROLES[1:-2]  # the server's own threads (all its processes): neither the client, others nor idle


# ---------------------------------------------------------------------------------------------------------------
# window 1: CPU and run-queue wait of every thread


@dataclass(frozen=True)
class ThreadTimes:
    comm: str
    cpu_s: float  # utime + stime
    wait_s: float  # schedstat: runnable, waiting for a core
    process: int  # the pid of the thread's process (the server's, or a child's: Triton's backend stub)


def thread_times(pid: int) -> dict[int, ThreadTimes]:
    """Every thread of the server process and of its children."""
    out: dict[int, ThreadTimes] = {}
    for process in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{process}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    _, wait_ns, _ = (int(x) for x in (task / "schedstat").read_text().split())  # on core, waiting, n
                    out[int(task.name)] = ThreadTimes(
                        (task / "comm").read_text().strip(),
                        cpu_seconds(str(task / "stat")),
                        wait_ns / 1e9,
                        process,
                    )
    return out


def python_threads(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from ``py-spy dump``."""
    proc = subprocess.run([str(PY_SPY), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    return {int(m[1]): m[2] for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', proc.stdout, re.M)}


def role_of(tid: int, pid: int, thread: ThreadTimes, names: dict[int, str]) -> str:
    name, comm = names.get(tid, ""), thread.comm
    if comm == "tritonserver" or (thread.process == pid and comm == "default-executo"):
        return "tritonserver (C++ frontend, batcher)"
    if thread.process != pid:  # Triton's Python backend stub: model.py on its main thread, ORT's pool beside it
        return (
            "backend stub, main thread (model.py)"
            if tid == thread.process
            else "backend stub, other threads (ORT's pool)"
        )
    if tid == pid:
        return "event loop (main thread)"
    if name.startswith("tg-"):
        return "instance workers"
    if "_poll_wrapper" in name:
        return "grpc.aio poller thread"
    if comm in GRPC_THREADS:
        return "gRPC core threads"
    if comm == "python" and not name:
        return "ONNX Runtime intra-op pool"
    return "other server threads"


@dataclass
class CpuWindow:
    seconds: float
    requests: int
    stats: StatsSnapshot
    phases_us: dict[str, float]  # queue, compute_input, compute_infer, compute_output per request
    cpu_s: dict[str, float]  # role -> CPU seconds
    wait_s: dict[str, float]  # role -> seconds runnable but waiting for a core
    workers: int  # instance worker threads
    batch_phase_s: dict[str, float]  # compute_input/infer/output summed over the window's executions, seconds

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def per_request_us(self, role: str) -> float:
        return 1e6 * self.cpu_s.get(role, 0.0) / max(self.requests, 1)


PHASES = ("compute_input", "compute_infer", "compute_output")


def _statistics(server: Server, model: str) -> tuple[StatsSnapshot, dict[str, tuple[int, int]]]:
    """The counts, and (count, ns) of each of Triton's phases per request and, as "batch_" + phase, summed
    over executions: from one ModelStatistics call."""
    model_stats = server.client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return StatsSnapshot.of(model_stats), _phases(model_stats)


def _phases(model_stats: dict[str, Any]) -> dict[str, tuple[int, int]]:
    stats = model_stats.get("inference_stats", {})
    out = {
        k: (int(stats.get(k, {}).get("count", 0)), int(stats.get(k, {}).get("ns", 0)))
        for k in ("success", "queue", *PHASES)
    }
    for phase in PHASES:
        rows = [b.get(phase, {}) for b in model_stats.get("batch_stats", ())]
        out["batch_" + phase] = (sum(int(r.get("count", 0)) for r in rows), sum(int(r.get("ns", 0)) for r in rows))
    return out


def cpu_window(server: Server, model: str, client_pid: int, seconds: float) -> CpuWindow:
    names = python_threads(server.pid)  # before the window: py-spy pauses the process briefly
    s0, p0 = _statistics(server, model)
    client_stat = f"/proc/{client_pid}/stat"
    t0, c0, (busy0, idle0), w0 = thread_times(server.pid), cpu_seconds(client_stat), machine_seconds(), time.monotonic()
    time.sleep(seconds)
    t1, c1, (busy1, idle1), w1 = thread_times(server.pid), cpu_seconds(client_stat), machine_seconds(), time.monotonic()
    s1, p1 = _statistics(server, model)
    cpu: dict[str, float] = defaultdict(float)
    wait: dict[str, float] = defaultdict(float)
    for tid, after in t1.items():
        before = t0.get(tid, ThreadTimes(after.comm, 0.0, 0.0, after.process))
        role = role_of(tid, server.pid, after, names)
        cpu[role] += after.cpu_s - before.cpu_s
        wait[role] += after.wait_s - before.wait_s
    client = c1 - c0
    cpu["perf_analyzer (client)"] = client
    server_cpu = sum(v for k, v in cpu.items() if k != "perf_analyzer (client)")
    cpu["other processes"] = max(0.0, (busy1 - busy0) - server_cpu - client)
    cpu["idle"] = idle1 - idle0
    delta = s1.minus(s0)
    requests = p1["success"][0] - p0["success"][0]
    phases = {k: (p1[k][1] - p0[k][1]) / 1e3 / max(p1[k][0] - p0[k][0], 1) for k in ("queue", *PHASES)}
    batch_phase_s = {k: (p1["batch_" + k][1] - p0["batch_" + k][1]) / 1e9 for k in PHASES}
    workers = sum(1 for name in names.values() if name.startswith("tg-"))
    return CpuWindow(w1 - w0, requests, delta, phases, dict(cpu), dict(wait), workers, batch_phase_s)


# ---------------------------------------------------------------------------------------------------------------
# window 2: py-spy, every sample of the main thread and the workers in one category


FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")


def categorize(frames: Sequence[str]) -> str:
    """One sample's category: its innermost tensorgate frame's job, else what its leaf is doing."""
    parsed = [(m["func"], m["where"]) if (m := FRAME.match(f)) else (f, "") for f in frames]
    leaf_func, leaf_where = parsed[-1]
    joined = ";".join(func for func, _ in parsed)
    if leaf_func == "pthread_cond_timedwait" or parsed[-2:-1] == [("pthread_cond_timedwait", "")]:
        return "waiting for the GIL"
    if "SimpleQueue_get" in joined:
        return "waiting for a batch (idle)"
    if "epoll_wait" in joined or "EpollSelector.select" in joined:
        return "waiting for I/O (idle)"
    if "pthread_cond_wait" in joined and "Session.run" in joined:
        return "ONNX Runtime: waiting for its pool"
    for func, where in reversed(parsed):
        if "onnxruntime" in where or func.startswith("Session.run"):
            return "ONNX Runtime run"
        if "tensorgate/" not in where or where.startswith(("tensorgate/cli.py", "tensorgate/__main__.py")):
            continue  # the command's own frames are under every sample of the loop
        if func == "_parse":
            return "protobuf parse"
        if "codec" in where:
            return "decode (codec)" if "decode" in func else "encode (codec)"
        if func.startswith("gather_inputs"):
            return "gather the batch"
        if func.startswith("split_outputs"):
            return "split the outputs"
        if "/scheduler/" in where:
            return "scheduler and queue"
        if "stats.py" in where or "/metrics/" in where:
            return "statistics"
        if "loop_lag" in where:
            return "loop-lag probe"
        if "instance.py" in where:
            return "instance hand-over"
        return "request handler (service, repository)"
    if "call_soon_threadsafe" in joined or "concurrent/futures" in leaf_where:
        return "instance hand-over"
    if "cygrpc" in joined or "grpc/" in ";".join(w for _, w in parsed):
        return "grpc.aio and gRPC core"
    return "asyncio and the interpreter"


IDLE_CATEGORIES = ("waiting for a batch (idle)", "waiting for I/O (idle)", "waiting for the GIL")


def py_spy(pid: int, seconds: float, out: Path) -> dict[str, Counter[str]]:
    """Role -> category -> samples (wall-clock samples, idle ones included)."""
    raw = out / "py-spy.txt"
    command = [str(PY_SPY), "record", "--pid", str(pid), "--native", "--idle", "--threads", "--format", "raw"]
    command += ["--rate", "97", "--duration", str(int(seconds)), "-o", str(raw)]
    subprocess.run(
        command,
        capture_output=True,
        timeout=seconds + 60,
        check=False,
    )
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    if not raw.exists():
        return counts
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        head = re.match(r"thread \((\d+)\): (.*)", frames[0])
        if head is None:
            continue
        tid, name = int(head[1]), head[2]
        role = "event loop (main thread)" if tid == pid else "instance workers" if name.startswith("tg-") else ""
        if role:
            counts[role][categorize(frames[1:])] += int(n)
    return counts


# ---------------------------------------------------------------------------------------------------------------
# window 3: perf, every role's samples by shared object

DSO_GROUPS = (
    ("onnxruntime", "ONNX Runtime"),
    ("cygrpc", "gRPC core + Cython"),
    ("libpython", "Python interpreter"),
    ("_message", "protobuf"),
    ("_multiarray", "numpy"),
    ("libc", "libc"),
    ("kernel", "kernel"),
    ("perf_analyzer", "perf_analyzer"),
)


def perf_window(pid: int, client_pid: int, roles: dict[int, str], seconds: float, out: Path) -> dict[str, Counter[str]]:
    """Role -> shared-object group -> samples, from ``perf record -a`` on the whole machine."""
    data = out / "perf.data"
    rec = subprocess.run(
        ["perf", "record", "-e", "cpu-clock", "-F", "499", "-a", "-o", str(data), "--", "sleep", str(seconds)],
        capture_output=True,
        timeout=seconds + 60,
        check=False,
    )
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    if rec.returncode != 0 or not data.exists():
        return counts
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "pid,dso", "--stdio", "-n"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for line in report.stdout.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\d+):\S*\s+(.*\S)", line)
        if m is None:
            continue
        samples, tid, dso = int(m[1]), int(m[2]), m[3]
        group = next((label for key, label in DSO_GROUPS if key in dso), "other")
        if tid in roles:
            role = roles[tid]
        elif dso.startswith("perf_analyzer") or _is_thread_of(tid, client_pid):
            role = "perf_analyzer (client)"
        elif tid == 0:
            role, group = "idle", "kernel"
        else:
            role = "other processes"
        counts[role][group] += samples
    return counts


def _is_thread_of(tid: int, pid: int) -> bool:
    return Path(f"/proc/{pid}/task/{tid}").exists()


# ---------------------------------------------------------------------------------------------------------------
# raw ONNX Runtime with the server's thread settings


# ---------------------------------------------------------------------------------------------------------------
# one round of one variant


@dataclass(frozen=True)
class Variant:
    label: str
    flags: tuple[str, ...]  # server flags
    instances: int = 0  # 0: the bench config's own count
    echo: bool = False  # bench/echo_server.py: the bare grpc.aio echo (identity only), or with echo_runs_model:
    echo_runs_model: bool = False  # the echo serving the model, ONNX Runtime's run of it on its loop (MODEL.onnx)
    triton: bool = False  # Triton's Python backend serving the model (bench/triton_python.py)
    experiment: tuple[str, ...] = ()  # bench/experiment_server.py's flags
    git: str = ""  # the server code of this commit (server/tensorgate as committed there) instead of the checkout's
    grpc_experiments: str = ""  # the echo's GRPC_EXPERIMENTS (tensorgate sets its own: --grpc-experiments)

    @staticmethod
    def parse(text: str) -> Variant:
        """``LABEL=TOKENS``: server flags, ``@instances=N``, ``@git=REV`` (the server code of commit REV, so a
        change is measured in the same run as its baseline), and ``@switch-interval=S`` / ``@gather-on-loop``
        (bench/experiment_server.py's experiments)."""
        label, _, rest = text.partition("=")
        flags: list[str] = []
        experiment: list[str] = []
        instances = 0
        git = ""
        for token in shlex.split(rest):
            if token.startswith("@instances="):
                instances = int(token.split("=", 1)[1])
            elif token.startswith("@git="):
                git = token.split("=", 1)[1]
            elif token.startswith("@"):
                experiment += ["--" + token[1:].split("=", 1)[0], *token.split("=", 1)[1:]]
            else:
                flags.append(token)
        return Variant(label, tuple(flags), instances, experiment=tuple(experiment), git=git)

    @property
    def described(self) -> str:
        words = [shlex.join(self.flags)] if self.flags else []
        words += [f"instances={self.instances}"] if self.instances else []
        words += [f"experiment {shlex.join(self.experiment)}"] if self.experiment else []
        words += [f"server code of git {self.git}"] if self.git else []
        words += [f"GRPC_EXPERIMENTS={self.grpc_experiments}"] if self.grpc_experiments else []
        return "; ".join(words)


@dataclass
class Round:
    variant: Variant
    window: CpuWindow
    intra_op_threads: int
    spy: dict[str, Counter[str]] = field(default_factory=dict)
    perf: dict[str, Counter[str]] = field(default_factory=dict)
    raw: RawRun | None = None  # raw ORT right after this round's server stopped: formed batch, its threads
    raw16: RawRun | None = None  # and at batch 16 with ONNX Runtime's defaults


def write_repo(dest: Path, model: str, instances: int) -> Path:
    make_models.build(dest, [model])
    if instances:
        config = dest / model / "config.pbtxt"
        config.write_text(re.sub(r"count: \d+", f"count: {instances}", config.read_text()))
    return dest


def start_load(url: str, model: str, concurrency: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """perf_analyzer for the whole round: one long window it never finishes measuring (we stop it)."""
    command = [str(PERF_ANALYZER), "-i", "grpc", "-u", url, "-m", model]
    command += ["--concurrency-range", f"{concurrency}:{concurrency}"]
    command += ["-p", str(int(seconds * 1000)), "-s", "100", "-r", "3"]
    return subprocess.Popen(command, stdout=(out / "pa.log").open("wb"), stderr=subprocess.STDOUT)


def intra_threads(log_path: Path) -> int:
    m = re.search(r"event=model_instances .* intra_op_threads=(\w+)", log_path.read_text(errors="replace"))
    if m is None or not m[1].isdigit():
        return 0
    return int(m[1])


def one_round(args: argparse.Namespace, variant: Variant, profile: bool, tmp: Path) -> Round:
    slug = re.sub(r"\W+", "_", variant.label)  # Triton's Python backend fails on a path with a space
    out = tmp / f"{slug}-{time.monotonic_ns()}"
    out.mkdir()
    repo = write_repo(out / "repo", args.model, variant.instances)  # (the bare echo has the model built in)
    model_file = make_models.model_file(repo, make_models.MODELS[args.model].file)
    if variant.echo:
        model = model_file if variant.echo_runs_model else None
        server = Server.echo(out / "server.log", model, grpc_experiments=variant.grpc_experiments)
    elif variant.triton:
        server = triton_python.start(variant.label, repo, [args.model], out)
    else:
        launcher = (str(EXPERIMENT), *variant.experiment, "--") if variant.experiment else ("-m", "tensorgate")
        code = code_at(variant.git, out / "code") if variant.git else None
        server = Server.tensorgate(
            repo, out / "server.log", ("--http-port", "-1", *variant.flags), code=code, launcher=launcher
        )
    try:
        server.wait_ready(models=[args.model])
        warm = subprocess.run(
            [str(PERF_ANALYZER), "-i", "grpc", "-u", server.url, "-m", args.model, "--concurrency-range",
             f"{args.concurrency}:{args.concurrency}", "-p", "1000", "-s", "100", "-r", "2"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if warm.returncode not in (0, 2):  # 2: no stable window in 2 tries, which a warm-up does not need
            log(f"warm-up of {variant.label}: perf_analyzer rc={warm.returncode}: {warm.stdout[-300:]!r}")
        windows = 3 if profile else 1
        load = start_load(server.url, args.model, args.concurrency, args.window * (windows + 2), out)
        try:
            time.sleep(1.0)
            window = cpu_window(server, args.model, load.pid, args.window)
            threads = 0 if variant.echo or variant.triton else intra_threads(server.log_path)
            result = Round(variant, window, threads)
            if profile:
                names = python_threads(server.pid)
                roles = {tid: role_of(tid, server.pid, t, names) for tid, t in thread_times(server.pid).items()}
                result.spy = py_spy(server.pid, args.window, out)
                if shutil.which("perf") is not None:
                    result.perf = perf_window(server.pid, load.pid, roles, args.window, out)
        finally:
            load.send_signal(signal.SIGINT)
            try:
                load.wait(10)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait()
    finally:
        rc = server.stop()
        if rc != 0:
            log(f"{variant.label}: server exit status {rc}")
    if not variant.echo:
        dims = make_models.MODELS[args.model].input_dims
        formed = max(1, round(window.stats.avg_batch))
        raw_threads = result.intra_op_threads or (os.cpu_count() or 1)
        result.raw = raw_ort(model_file, dims, formed, raw_threads, args.raw_seconds)
        result.raw16 = raw_ort(model_file, dims, 16, 0, args.raw_seconds)
    log(
        f"{variant.label}: {window.rate:,.0f} infer/s, avg batch {window.stats.avg_batch:.2f}, "
        f"server CPU {sum(window.per_request_us(r) for r in SERVER_ROLES):,.0f} µs/req"
    )
    return result


# ---------------------------------------------------------------------------------------------------------------
# the tables


def account_table(rounds: Sequence[Round]) -> list[str]:
    """The account of the first variant (medians over its rounds), split by py-spy where it profiled."""
    base = rounds[0]
    windows = [r.window for r in rounds]
    capacity = median(1e6 * (os.cpu_count() or 1) * w.seconds / max(w.requests, 1) for w in windows)
    rows: list[list[str]] = []
    total = 0.0
    for role in ROLES:
        us = median(w.per_request_us(role) for w in windows)
        total += us
        wait = median(1e6 * w.wait_s.get(role, 0.0) / max(w.requests, 1) for w in windows)
        waited = fmt_int(wait) if role in base.window.wait_s else "-"
        rows.append([role, fmt_int(us), f"{100 * us / capacity:.0f}%", waited])
        spy = base.spy.get(role)
        if spy:
            busy = {k: v for k, v in spy.items() if k not in IDLE_CATEGORIES}
            n = sum(busy.values())
            for category, samples in sorted(busy.items(), key=lambda kv: -kv[1]):
                share = samples / n
                if share >= 0.01:
                    rows.append([f"  {category}", fmt_int(us * share), f"{100 * us * share / capacity:.0f}%", ""])
    rows.append(["**total (sum of the rows)**", fmt_int(total), f"{100 * total / capacity:.0f}%", ""])
    rows.append(["machine capacity per request (cores x window / requests)", fmt_int(capacity), "100%", ""])
    lines = [
        table(["where", "core-µs per request", "share of the machine", "waiting for a core, µs per request"], rows),
        "",
        "Indented rows split their role's CPU by py-spy's on-CPU samples (round 1); 'waiting for a core' is the "
        "time the role's threads were runnable but not running (schedstat), which is not CPU.",
    ]
    raws = [r.raw for r in rounds if r.raw is not None]
    if raws and any(r.window.cpu_s.get("instance workers", 0.0) for r in rounds):  # batches ran on the workers
        ort_us = [
            r.window.per_request_us("instance workers") + r.window.per_request_us("ONNX Runtime intra-op pool")
            for r in rounds
        ]
        ratios = [us / r.raw.core_us_per_sample for us, r in zip(ort_us, rounds, strict=True) if r.raw is not None]
        lines += [
            "",
            f"Raw ONNX Runtime, same model, {raws[0].threads} intra-op thread(s), spinning off, at the batch each "
            f"round formed (batch {', '.join(str(r.batch) for r in raws)}), measured right after each round's server "
            f"stopped: {', '.join(fmt_int(r.core_us_per_sample) for r in raws)} core-µs a sample "
            f"({', '.join(fmt_int(r.samples_per_s) for r in raws)} samples/s). In the server, the workers and "
            f"ONNX Runtime's pool together took {', '.join(fmt_int(u) for u in ort_us)} core-µs a request: "
            f"{', '.join(fmt_x(x) for x in ratios)} x raw's cost (by round).",
        ]
    return lines


def waits_table(rounds: Sequence[Round]) -> list[str]:
    """Wall time of the event loop and the workers, by what they were doing (py-spy, idle included)."""
    base = rounds[0]
    rows = []
    role = "event loop (main thread)"
    spy = base.spy.get(role)
    if spy:
        n = sum(spy.values())
        for category, samples in sorted(spy.items(), key=lambda kv: -kv[1]):
            if samples / n >= 0.01:
                rows.append([role, category, f"{100 * samples / n:.0f}%"])
    measured = [r.window for r in rounds if r.window.workers]
    # The server's batch statistics count every batch, also those run on the event loop (placement.py): the rows
    # are the workers' only when their threads took CPU for them (a tenth of the run's time, at least).
    windows = [w for w in measured if w.cpu_s.get("instance workers", 0.0) >= 0.1 * w.batch_phase_s["compute_infer"]]
    note = ""
    if len(windows) < len(measured):
        note = (
            f" In {len(measured) - len(windows)} of {len(measured)} round(s) the workers' threads took (almost) no "
            "CPU: the batches ran on the event loop, and those rounds are left out of the workers' rows."
        )
    if windows:
        for phase, what in (
            ("compute_input", "gathering a batch (compute_input)"),
            ("compute_infer", "running ONNX Runtime (compute_infer)"),
            ("compute_output", "splitting the outputs (compute_output)"),
        ):
            share = median(100 * w.batch_phase_s[phase] / (w.seconds * w.workers) for w in windows)
            rows.append(["instance workers", what, f"{share:.0f}%"])
        idle = median(100 - 100 * sum(w.batch_phase_s.values()) / (w.seconds * w.workers) for w in windows)
        rows.append(["instance workers", "between batches", f"{idle:.0f}%"])
    if not rows:
        return []
    return [
        table(["thread", "doing", "share of its wall time"], rows),
        "",
        "The event loop's rows are py-spy's samples with idle ones kept (--idle, round 1); 'waiting for the GIL' is "
        "a leaf in pthread_cond_timedwait (CPython's GIL wait). The workers' rows are the server's own batch "
        "statistics over the CPU windows (medians; sum of each phase over the executions / window / workers): "
        "py-spy's native stacks of the workers were not trusted (they disagreed with these timers). A phase "
        "includes every wait inside it: for GIL and a core alike." + note,
    ]


def perf_table(rounds: Sequence[Round]) -> list[str]:
    perf = rounds[0].perf
    if not perf:
        return []
    groups = [label for _, label in DSO_GROUPS] + ["other"]
    used = [g for g in groups if any(perf[r][g] for r in perf)]
    everything = sum(sum(c.values()) for c in perf.values())
    rows = []
    for role in ROLES:
        counts = perf.get(role)
        if not counts:
            continue
        n = sum(counts.values())
        shares = (f"{100 * counts[g] / n:.0f}%" if counts[g] else "" for g in used)
        rows.append([role, f"{100 * n / everything:.0f}%", *shares])
    return [
        table(["role", "share of all samples", *used], rows),
        "",
        "perf record -a -e cpu-clock at 499 Hz over the whole machine (round 1): each row's samples by the shared "
        "object they were in (the Python interpreter row is our Python, asyncio's and grpc.aio's Python together).",
    ]


def roles_table(by_variant: dict[str, list[Round]]) -> list[str]:
    """Core-µs per request of every role, each variant beside the first (medians over rounds)."""
    labels = list(by_variant)
    rows = []
    for role in ROLES:
        cells = [median(r.window.per_request_us(role) for r in by_variant[label]) for label in labels]
        if any(cells):
            rows.append([role, *(fmt_int(c) for c in cells)])
    totals = [median(sum(r.window.per_request_us(x) for x in ROLES) for r in by_variant[label]) for label in labels]
    rows.append(["**total**", *(fmt_int(t) for t in totals)])
    return [table(["core-µs per request", *labels], rows)]


def variants_table(by_variant: dict[str, list[Round]]) -> list[str]:
    rows = []
    first = next(iter(by_variant.values()))
    base_rate = median(r.window.rate for r in first)
    for label, rounds in by_variant.items():
        w = [r.window for r in rounds]
        rate = median(x.rate for x in w)
        server = median(sum(x.per_request_us(role) for role in SERVER_ROLES) for x in w)
        client = median(x.per_request_us(CLIENT) for x in w)
        idle = median(100 * x.cpu_s.get("idle", 0.0) / (x.seconds * (os.cpu_count() or 1)) for x in w)
        rows.append([
            label,
            rounds[0].variant.described,
            " / ".join(fmt_int(x.rate) for x in w),
            fmt_int(rate),
            fmt_x(rate / base_rate),
            # (a model as cheap as identity serves a tiny share of raw ORT's rate: no figure)
            " / ".join(fmt_x(r.window.rate / r.raw16.samples_per_s) for r in rounds if r.raw16)
            if all(r.raw16 and r.window.rate > 0.05 * r.raw16.samples_per_s for r in rounds)
            else "-",
            f"{median(x.stats.avg_batch for x in w):.2f}",
            fmt_int(server),
            fmt_int(client),
            f"{median(x.phases_us['queue'] for x in w) / 1000:.1f}",
            f"{median(x.phases_us['compute_input'] for x in w) / 1000:.2f}",
            f"{median(x.phases_us['compute_infer'] for x in w) / 1000:.1f}",
            f"{idle:.0f}%",
        ])  # fmt: skip
    headers = ["variant", "what differs", "infer/s by round", "median infer/s", "vs first", "vs raw b16",
               "avg batch", "server CPU µs/req", "client CPU µs/req", "queue ms", "compute input ms",
               "compute infer ms", "machine idle"]  # fmt: skip
    return [
        table(headers, rows),
        "",
        "Rounds interleave the variants (A, B, ..., A, B, ...), so a drift of the shared machine falls on all; "
        "each figure is from its round's CPU window; 'vs raw b16' (by round) divides by raw ONNX Runtime at batch 16 "
        "with its default options and threads, measured in process right after that round's server stopped.",
    ]


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", choices=sorted(make_models.MODELS))
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--window", type=float, default=8.0, help="seconds of each measurement window")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every variant, interleaved")
    p.add_argument("--raw-seconds", type=float, default=3.0, help="raw ONNX Runtime timing after each round, per batch")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help='"LABEL=SERVER FLAGS" (and @instances=N for the config\'s instance count); the first variant '
        "is the default server unless --no-default",
    )
    p.add_argument("--no-default", action="store_true", help="do not add the default server as the first variant")
    p.add_argument(
        "--triton",
        action="store_true",
        help="add Triton's Python backend serving the same model (bench/triton_python.py) to every round",
    )
    p.add_argument("--no-profile", action="store_true", help="no py-spy / perf windows")
    p.add_argument("--no-results", action="store_true", help=f"print only; do not append to {RESULTS}")
    p.add_argument("--note", default="", help="a line printed under the section's header")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = RunInfo(shlex.join([sys.executable, *sys.argv]), git_state())
    variants = [] if args.no_default else [Variant("default", ())]
    variants += [Variant.parse(v) for v in args.variant]
    same = grpc_experiments.DEFAULT  # the gRPC core experiments tensorgate sets for itself (--grpc-experiments)
    if args.model == "identity":  # the bare echo answers identity only
        variants.append(Variant("bare grpc.aio echo", (), echo=True))
        variants.append(Variant("echo + ONNX Runtime run", (), echo=True, echo_runs_model=True))
        variants.append(Variant("echo, tensorgate's gRPC experiments", (), echo=True, grpc_experiments=same))
    if make_models.MODELS[args.model].file == args.model:  # the echo serves a model by its own file's name
        label = "echo + run, tensorgate's gRPC experiments"
        variants.append(Variant(label, (), echo=True, echo_runs_model=True, grpc_experiments=same))
    if args.triton:
        if reason := triton_python.install():
            raise SystemExit(f"Triton's Python backend: {reason}")
        variants.append(Variant(triton_python.PEERS[0], (), triton=True))
    if not variants:
        raise SystemExit("no variants to measure")
    profile_ok = PY_SPY.exists()  # the [test] extra brings it
    if shutil.which("perf") is None:
        log("perf not found (Debian's linux-perf): the by-shared-object table is left out")
    by_variant: dict[str, list[Round]] = {v.label: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="tg-account-") as tmp_name:
        tmp = Path(tmp_name)
        for n in range(args.rounds):
            for variant in variants:
                profile = n == 0 and not args.no_profile and profile_ok and not (variant.echo or variant.triton)
                by_variant[variant.label].append(one_round(args, variant, profile, tmp))
    base = by_variant[variants[0].label]
    info.finish()
    text = "\n".join(
        [
            *info.header(f": core-µs account, {args.model} c{args.concurrency} (bench/account.py, issue 14)"),
            f"- load: perf_analyzer -i grpc, concurrency {args.concurrency}, one sample per request, on the same "
            f"cores; {args.rounds} round(s) of {len(variants)} variant(s), {args.window:.0f} s windows",
            *([f"- {args.note}"] if args.note else []),
            "",
            f"### Account of '{variants[0].label}' (medians over its rounds)",
            "",
            *account_table(base),
            "",
            "### Where the event loop and the workers spend their wall time (round 1)",
            "",
            *waits_table(base),
            "",
            "### By shared object (round 1)",
            "",
            *perf_table(base),
            "",
            "### Variants, same run",
            "",
            *variants_table(by_variant),
            "",
            *roles_table(by_variant),
            "",
        ]
    )
    print(text)
    if not args.no_results:
        append_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
