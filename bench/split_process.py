"""A prototype, measured, not merged: frontend processes feeding one engine process through shared memory.

    python bench/split_process.py [--model cnn] [--concurrency 16] [--rounds 3] [--no-results]

Issue 14 asks what a second frontend process would cost and give: on a GPU host with 16+ cores one
grpc.aio event loop (one core, one GIL) cannot feed the engine, so the design to weigh is one frontend
process per core, each its own gRPC server and event loop, feeding one engine process that owns the model.
This file is the smallest such design that serves perf_analyzer, and the bench that measures it against
``tensorgate serve`` in the same run:

- **engine process** (``engine`` subcommand): one ONNX Runtime session (tensorgate's options: default
  intra-op threads, spinning off) and a selector over one socket per frontend. It reads every slot
  number that has arrived, gathers those slots' inputs from the shared memory into one batch (at most
  max_batch_size), runs it, writes each output row back into its slot and answers each frontend with
  the slot numbers done, in one send per frontend. No thread, no GIL shared with any frontend.
- **frontend process** (``frontend`` subcommand): a grpc.aio server as bare as bench/echo_server.py (its
  health and metadata handlers), with ModelInfer taking a free slot of its own, copying the request's
  raw input into it, sending the slot number, and awaiting the answer (``loop.add_reader`` on the
  socket); the response is built from the slot's output row.
- shared memory: ``multiprocessing.shared_memory``, slots of one sample each (input row + output row);
  the prototype serves only one-sample FP32 requests of one model (what perf_analyzer sends here).

Measured per round, each with perf_analyzer on the same cores (one perf_analyzer per port, the
concurrency split between them, their throughputs added): ``tensorgate serve`` (one port, so each
perf_analyzer on it), the same frontend and engine code in one process with the engine on a thread (what
a lean frontend alone gives, the GIL shared as in tensorgate), the prototype with one frontend (what the
process split gives on top: no GIL shared between the event loop and the engine), and with
``--frontends`` frontends (what parallel frontends give). Server CPU counts every process of the variant.
A benchmark, not a test; what it found is in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules below import each other by name
import make_models
import numpy as np
from processes import StatsSnapshot, cpu_seconds, free_port, machine_seconds

SLOT = struct.Struct("<I")
SLOTS_PER_FRONTEND = 256


@dataclass(frozen=True)
class Layout:
    """Where each slot's input and output rows lie in the shared memory."""

    frontends: int
    in_dims: tuple[int, ...]
    out_dims: tuple[int, ...]

    @property
    def slots(self) -> int:
        return self.frontends * SLOTS_PER_FRONTEND

    @property
    def in_bytes(self) -> int:
        return 4 * int(np.prod(self.in_dims))

    @property
    def size(self) -> int:
        return self.counters_at + 16

    @property
    def counters_at(self) -> int:
        return self.slots * (self.in_bytes + 4 * int(np.prod(self.out_dims)))

    def counters(self, buf: Any) -> np.ndarray:
        """The engine's executions and samples so far (int64 each), for the bench's average batch."""
        return np.ndarray((2,), np.int64, buf, self.counters_at)

    def views(self, buf: Any) -> tuple[np.ndarray, np.ndarray]:
        inputs = np.ndarray((self.slots, *self.in_dims), np.float32, buf, 0)
        outputs = np.ndarray((self.slots, *self.out_dims), np.float32, buf, self.slots * self.in_bytes)
        return inputs, outputs


def attach(name: str) -> shared_memory.SharedMemory:
    """The bench's shared memory, in a child: Python 3.11 registers an attached segment with the resource
    tracker, which would unlink it when the child exits; the bench process owns and unlinks it."""
    from multiprocessing import resource_tracker

    shm = shared_memory.SharedMemory(name=name)
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def layout_of(model: str, frontends: int) -> Layout:
    return Layout(
        frontends, make_models.MODELS[model].input_dims, make_models.OUTPUT_DIMS[make_models.MODELS[model].file]
    )


# ---------------------------------------------------------------------------------------------------------------
# the engine process


def engine(model_file: str, shm_name: str, layout: Layout, fds: Sequence[int], max_batch: int) -> int:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as tensorgate's sessions
    session = ort.InferenceSession(model_file, so, providers=["CPUExecutionProvider"])
    shm = attach(shm_name)
    inputs, outputs = layout.views(shm.buf)
    counters = layout.counters(shm.buf)
    socks = [socket.socket(fileno=fd) for fd in fds]
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    pending: list[tuple[int, int]] = []  # (frontend, slot) in arrival order
    partial = [b""] * len(socks)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    if threading.current_thread() is threading.main_thread():  # in a thread (the in-process variant): no handler
        signal.signal(signal.SIGTERM, on_term)
    while not stop:
        for key, _ in selector.select(timeout=None if not pending else 0):
            frontend = int(key.data)
            with contextlib.suppress(BlockingIOError):
                data = partial[frontend] + key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return 0  # a frontend went away: the prototype stops
                whole = len(data) - len(data) % SLOT.size
                partial[frontend] = data[whole:]
                pending += [(frontend, s) for (s,) in SLOT.iter_unpack(data[:whole])]
        if not pending:
            continue
        batch, pending = pending[:max_batch], pending[max_batch:]
        slots = np.fromiter((s for _, s in batch), dtype=np.intp, count=len(batch))
        (result,) = session.run(None, {make_models.INPUT: inputs[slots]})  # fancy indexing: the gather copy
        outputs[slots] = result
        counters += (1, len(batch))
        done: dict[int, list[int]] = {}
        for frontend, s in batch:
            done.setdefault(frontend, []).append(s)
        for frontend, ss in done.items():
            socks[frontend].setblocking(True)
            socks[frontend].sendall(b"".join(SLOT.pack(s) for s in ss))
            socks[frontend].setblocking(False)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# a frontend process


def frontend(port: int, index: int, shm_name: str, layout: Layout, fd: int, model: str) -> int:
    import grpc
    from echo_server import generic_handler
    from tensorgate.proto import inference_pb2 as pb
    from tensorgate.proto import model_config_pb2 as mc

    shm = attach(shm_name)
    inputs, outputs = layout.views(shm.buf)
    in_dims, out_dims = layout.in_dims, layout.out_dims
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)

    class Frontend:
        def __init__(self) -> None:
            self.requests = 0
            self.free = list(range(index * SLOTS_PER_FRONTEND, (index + 1) * SLOTS_PER_FRONTEND))
            self.waiting: dict[int, asyncio.Future[None]] = {}
            self.partial = b""
            self.config = mc.ModelConfig(
                name=model,
                platform="onnxruntime_onnx",
                max_batch_size=make_models.MAX_BATCH_SIZE,
                input=[mc.ModelInput(name=make_models.INPUT, data_type=mc.TYPE_FP32, dims=in_dims)],
                output=[mc.ModelOutput(name=make_models.OUTPUT, data_type=mc.TYPE_FP32, dims=out_dims)],
            )

        def readable(self) -> None:
            try:
                data = self.partial + sock.recv(65536)
            except BlockingIOError:
                return
            whole = len(data) - len(data) % SLOT.size
            self.partial = data[whole:]
            for (slot,) in SLOT.iter_unpack(data[:whole]):
                future = self.waiting.pop(slot)
                if not future.done():
                    future.set_result(None)

        async def server_live(self, request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        async def server_ready(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def model_ready(self, request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=request.name == model)

        async def server_metadata(self, request: Any, context: Any) -> Any:
            return pb.ServerMetadataResponse(name="bench-split-frontend", version="0")  # no extensions

        async def model_metadata(self, request: Any, context: Any) -> Any:
            response = pb.ModelMetadataResponse(name=model, versions=["1"], platform="onnxruntime_onnx")
            response.inputs.add(name=make_models.INPUT, datatype="FP32", shape=[-1, *in_dims])
            response.outputs.add(name=make_models.OUTPUT, datatype="FP32", shape=[-1, *out_dims])
            return response

        async def model_config(self, request: Any, context: Any) -> Any:
            return pb.ModelConfigResponse(config=self.config)

        async def model_statistics(self, request: Any, context: Any) -> Any:
            stats = pb.ModelStatistics(name=model, version="1", inference_count=self.requests)
            stats.inference_stats.success.count = self.requests
            return pb.ModelStatisticsResponse(model_stats=[stats])

        async def model_infer(self, request: Any, context: Any) -> Any:
            raw = request.raw_input_contents
            if len(raw) != 1 or len(raw[0]) != layout.in_bytes or not self.free:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prototype takes one FP32 sample")
            slot = self.free.pop()
            inputs[slot] = np.frombuffer(raw[0], dtype=np.float32).reshape(in_dims)
            future = asyncio.get_running_loop().create_future()
            self.waiting[slot] = future
            sock.send(SLOT.pack(slot))  # 4 bytes into a local socket's buffer: never blocks here
            try:
                await future
                response = pb.ModelInferResponse(model_name=model, model_version="1", id=request.id)
                tensor = response.outputs.add(name=make_models.OUTPUT, datatype="FP32")
                tensor.shape.extend([1, *out_dims])
                response.raw_output_contents.append(outputs[slot].tobytes())
            finally:
                self.free.append(slot)
            self.requests += 1
            return response

    async def serve() -> int:
        fe = Frontend()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((generic_handler(fe),))  # type: ignore[arg-type]
        server.add_insecure_port(f"127.0.0.1:{port}")
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), fe.readable)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await server.start()
        await stop.wait()
        await server.stop(0.5)
        return 0

    return asyncio.run(serve())


# ---------------------------------------------------------------------------------------------------------------
# the bench


@dataclass
class Variant:
    label: str
    procs: list[subprocess.Popen[bytes]]
    urls: list[str]  # perf_analyzer's targets (the concurrency is split across them)
    shm: shared_memory.SharedMemory | None = None
    layout: Layout | None = None

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.shm is not None:
            self.shm.close()
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()

    def cpu_s(self) -> float:
        return sum(cpu_seconds(f"/proc/{p.pid}/stat") for p in self.procs)


def start_tensorgate(repo: Path, log: Path, clients: int) -> Variant:
    port = free_port()
    command = [sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo), "--grpc-port", str(port)]
    command += ["--http-port", "-1", "--metrics-port", "-1", "--host", "127.0.0.1"]
    proc = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Variant("tensorgate serve", [proc], [f"127.0.0.1:{port}"] * clients)


def start_threaded(model: str, repo: Path, log: Path) -> Variant:
    """The same frontend and engine code in ONE process, the engine on a thread: what the split itself gives."""
    layout = layout_of(model, 1)
    shm = shared_memory.SharedMemory(create=True, size=layout.size)
    model_file = str(make_models.model_file(repo, make_models.MODELS[model].file))
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "frontend", model, shm.name, "1", str(port), "0", "-"]
    proc = subprocess.Popen([*command, model_file], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Variant("same code in one process: engine on a thread", [proc], [f"127.0.0.1:{port}"], shm, layout)


def start_split(model: str, repo: Path, frontends: int, log: Path) -> Variant:
    layout = layout_of(model, frontends)
    shm = shared_memory.SharedMemory(create=True, size=layout.size)
    pairs = [socket.socketpair() for _ in range(frontends)]
    me = str(Path(__file__).resolve())
    common = [model, shm.name, str(frontends)]
    model_file = str(make_models.model_file(repo, make_models.MODELS[model].file))
    engine_fds = [a.fileno() for a, _ in pairs]
    out = log.open("wb")
    procs = [
        subprocess.Popen(
            [sys.executable, me, "engine", *common, model_file, ",".join(map(str, engine_fds))],
            pass_fds=engine_fds,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ]
    ports = [free_port() for _ in range(frontends)]
    for i, (_, b) in enumerate(pairs):
        procs.append(
            subprocess.Popen(
                [sys.executable, me, "frontend", *common, str(ports[i]), str(i), str(b.fileno())],
                pass_fds=[b.fileno()],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    for a, b in pairs:
        a.close()
        b.close()
    label = f"split: engine + {frontends} frontend{'s' if frontends > 1 else ''}"
    return Variant(label, procs, [f"127.0.0.1:{p}" for p in ports], shm, layout)


def wait_ready(url: str, timeout: float = 120) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if client.is_server_ready():
                client.close()
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready")


@dataclass(frozen=True)
class Result:
    label: str
    infer_per_s: float
    server_cpu_us: float  # every process of the variant, per request
    client_cpu_us: float  # the perf_analyzers, per request
    idle_pct: float  # the machine's
    avg_batch: float  # the engine's (tensorgate's: from its statistics)


def _snapshot(url: str, model: str) -> StatsSnapshot:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return StatsSnapshot.take(client, model)
    finally:
        client.close()


def _answered(urls: Sequence[str], model: str) -> int:
    return sum(_snapshot(url, model).success_count for url in dict.fromkeys(urls))


def measure(variant: Variant, model: str, concurrency: int, seconds: float) -> Result:
    """perf_analyzer (closed loop) on every URL for the whole window; the rate from the servers' own counts."""
    from settings import PERF_ANALYZER

    for url in dict.fromkeys(variant.urls):
        wait_ready(url)
    n = len(variant.urls)
    share = [concurrency // n + (i < concurrency % n) for i in range(n)]
    loads = []
    for url, c in zip(variant.urls, share, strict=True):
        command = [str(PERF_ANALYZER), "-i", "grpc", "-u", url, "-m", model, "--concurrency-range", f"{c}:{c}"]
        command += ["-p", str(int(1000 * (seconds + 10))), "-s", "100", "-r", "3"]
        loads.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        time.sleep(3.0)  # connected and warm
        b0 = _batches(variant, model)
        a0, c0, i0 = _answered(variant.urls, model), variant.cpu_s(), machine_seconds()
        l0, t0 = sum(cpu_seconds(f"/proc/{p.pid}/stat") for p in loads), time.monotonic()
        time.sleep(seconds)
        a1, c1, i1 = _answered(variant.urls, model), variant.cpu_s(), machine_seconds()
        l1, t1 = sum(cpu_seconds(f"/proc/{p.pid}/stat") for p in loads), time.monotonic()
        b1 = _batches(variant, model)
    finally:
        for p in loads:
            p.send_signal(signal.SIGINT)
        for p in loads:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    requests = max(a1 - a0, 1)
    idle = 100 * (i1[1] - i0[1]) / max((i1[0] + i1[1]) - (i0[0] + i0[1]), 1e-9)  # (busy, idle) seconds
    batch = (b1[1] - b0[1]) / max(b1[0] - b0[0], 1)
    rate = requests / (t1 - t0)
    return Result(variant.label, rate, 1e6 * (c1 - c0) / requests, 1e6 * (l1 - l0) / requests, idle, batch)


def _batches(variant: Variant, model: str) -> tuple[int, int]:
    """(executions, samples) so far: the engine's counters, or tensorgate's statistics."""
    if variant.shm is not None and variant.layout is not None:
        executions, samples = variant.layout.counters(variant.shm.buf)
        return int(executions), int(samples)
    snapshot = _snapshot(variant.urls[0], model)
    return snapshot.execution_count, snapshot.inference_count


def main_bench(argv: Sequence[str]) -> int:
    from load import log
    from run import append_results, git_state
    from settings import RESULTS
    from tables import RunInfo, fmt_int, fmt_x, median, table

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", choices=sorted(make_models.MODELS))
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--frontends", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=8.0)
    p.add_argument("--no-results", action="store_true")
    args = p.parse_args(argv)
    info = RunInfo(shlex.join([sys.executable, *sys.argv]), git_state())
    results: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="tg-split-") as tmp_name:
        tmp = Path(tmp_name)
        repo = make_models.build(tmp / "repo", [args.model])
        starts = [
            lambda: start_tensorgate(repo, tmp / "tensorgate.log", args.frontends),
            lambda: start_threaded(args.model, repo, tmp / "threaded.log"),
            lambda: start_split(args.model, repo, 1, tmp / "split1.log"),
            lambda: start_split(args.model, repo, args.frontends, tmp / "splitn.log"),
        ]
        for _ in range(args.rounds):
            for start in starts:
                variant = start()
                try:
                    result = measure(variant, args.model, args.concurrency, args.window)
                finally:
                    variant.stop()
                log(f"{result.label}: {result.infer_per_s:,.0f} infer/s, server CPU {result.server_cpu_us:,.0f} µs/req")
                results.setdefault(result.label, []).append(result)
    info.finish()
    first = median(r.infer_per_s for r in next(iter(results.values())))
    rows = [
        [
            label,
            " / ".join(fmt_int(r.infer_per_s) for r in rs),
            fmt_int(median(r.infer_per_s for r in rs)),
            fmt_x(median(r.infer_per_s for r in rs) / first),
            fmt_int(median(r.server_cpu_us for r in rs)),
            fmt_int(median(r.client_cpu_us for r in rs)),
            f"{median(r.avg_batch for r in rs):.2f}",
            f"{median(r.idle_pct for r in rs):.0f}%",
        ]
        for label, rs in results.items()
    ]
    text = "\n".join([
        *info.header(f": split-process prototype, {args.model} c{args.concurrency} (bench/split_process.py, issue 14)"),
        f"- load: {args.frontends} perf_analyzer processes (concurrency split between them), one per frontend port "
        f"(all on tensorgate's one port); {args.rounds} interleaved round(s), {args.window:.0f} s windows; rates "
        "from the servers' own success counts",
        "",
        table(["server", "infer/s by round", "median infer/s", "vs tensorgate", "server CPU µs/req (all its processes)",
               "client CPU µs/req", "avg batch", "machine idle"], rows),
        "",
    ])  # fmt: skip
    print(text)
    if not args.no_results:
        append_results(RESULTS, text)
    return 0


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "engine":
        model, shm_name, frontends, model_file, fds = argv[1:6]
        return engine(model_file, shm_name, layout_of(model, int(frontends)), [int(f) for f in fds.split(",")],
                      make_models.MAX_BATCH_SIZE)  # fmt: skip
    if argv and argv[0] == "frontend":
        model, shm_name, frontends, port, index, fd = argv[1:7]
        layout = layout_of(model, int(frontends))
        if fd == "-":  # the in-process variant: the engine on a thread, over a socketpair of our own
            ours, its = socket.socketpair()
            engine_args = (argv[7], shm_name, layout, [its.detach()], make_models.MAX_BATCH_SIZE)
            threading.Thread(target=engine, args=engine_args, name="engine", daemon=True).start()
            fd = str(ours.detach())
        return frontend(int(port), int(index), shm_name, layout, int(fd), model)
    return main_bench(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
