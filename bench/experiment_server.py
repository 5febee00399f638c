"""``tensorgate`` with one experiment applied, for bench/account.py's variants (experiments not kept in server/).

    python bench/experiment_server.py [--switch-interval S] [--gather-on-loop] -- serve --model-repository ...

Each experiment changes the running server the way its flag says, then runs tensorgate's own command line, so
an A/B of an idea costs no change to the server and the measured code is the server's own otherwise:

--switch-interval S   sys.setswitchinterval(S) before the server starts (CPython's default is 0.005 s): how
                      long a thread that wants the GIL waits before the holder is asked to drop it.
--nice-engine N       the instance worker threads and ONNX Runtime's intra-op pool threads run at nice N
                      (the event loop and gRPC's threads stay at 0), so the kernel gives the frontend a core
                      first whenever it has work: the pool inherits the nice of the thread that creates
                      the session, which is raised for that while; the worker sets its own when it starts.
--gather-on-loop      a batch's inputs are concatenated on the event loop before the batch is handed to the
                      instance's worker thread (the server does it on the worker): the worker then starts with
                      ONNX Runtime's run, without a first GIL release and re-acquire inside numpy's copy.
--coalesce-on-loop    no run-at-once path, and a batch is formed one event-loop iteration after the request that
                      found an instance free, so every request that reached the scheduler in that iteration joins
                      it (the server runs a request that finds the queue empty at once, alone: on the loop, a
                      model cheap enough to run there never batches, whatever the load).
--inline-sized-batches
                      a model whose one-row batches run on the loop forms, while no queue delay is set, batches only as
                      large as the loop is expected to run under --inline-execution-us (its measured inline cost per
                      byte, from the largest size class measured cheap there, times the batch's bytes, up to 4 x that
                      class's bytes), and runs them there: a batch of a size class not yet measured on the loop runs
                      there on that estimate. The server forms the largest batch the queue holds, which for such a model
                      is too costly for the loop, goes to the worker, and while it runs the next one queues up as large
                      (bench/RESULTS.md: mlp c16 then serves 10-25% less than with every batch run at once on the loop).
--pin-loop            the event loop's thread runs on the first CPU only and every other thread of the server (gRPC's,
                      the instance workers, ONNX Runtime's pool) on the others, so the loop keeps its core's caches
                      to itself (threads are re-pinned as they appear, every 0.5 s).
--registered-infer    ModelInfer is also registered with gRPC as a registered method
                      (``add_registered_method_handlers``): gRPC's core matches its path and the server asks for
                      its calls apart (one more pending future in grpc.aio's accept loop), instead of every call
                      going through the generic handlers' lookup.
--ort-direct          the ONNX Runtime CPU backend's plain path calls the session's native ``run`` (``_sess.run``)
                      without ``InferenceSession.run``'s Python checks (missing inputs, OrtValue ownership, WebGPU
                      graph capture): what those checks cost a request.
--batch-while-busy N  a request that finds an instance free runs at once only while the event loop has nothing else
                      ready to run; otherwise it is queued and its batch runs once the loop's ready callbacks are
                      done (deferred again, up to N times, while others are ready and the batch is not full), so
                      requests that grpc.aio is still bringing in join it. At c1 the loop is idle and nothing
                      waits; under load a model cheap enough for the loop runs once a batch, not once a request.
                      (Reads asyncio's private ``loop._ready``, the callbacks of the current iteration.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tensorgate import instance
from tensorgate.cli import main as tensorgate_main
from tensorgate.request import InferRequest


def gather_on_loop() -> None:
    gathered: dict[int, dict[str, np.ndarray]] = {}  # id(requests) -> inputs, from submit to run
    own_gather = instance.gather_inputs
    own_submit = instance.Instance.submit

    def gather(requests: Sequence[InferRequest], batched: bool) -> dict[str, np.ndarray]:
        ready = gathered.pop(id(requests), None)
        return ready if ready is not None else own_gather(requests, batched)

    def submit(
        self: instance.Instance,
        requests: Sequence[InferRequest],
        outputs: Sequence[str],
        batched: bool,
        done: Callable[[instance.BatchResult], object],
    ) -> None:
        gathered[id(requests)] = own_gather(requests, batched)  # on the event loop
        own_submit(self, requests, outputs, batched, done)

    instance.gather_inputs = gather
    instance.Instance.submit = submit  # type: ignore[method-assign]


def coalesce_on_loop() -> None:
    import asyncio

    from tensorgate.scheduler.scheduler import Scheduler

    own_init = Scheduler.__init__
    own_schedule = Scheduler._schedule
    due: set[int] = set()  # id() of the schedulers whose _schedule is already called soon

    def init(self: Scheduler, *args: object, **kwargs: object) -> None:
        own_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self._no_delay = False  # no run-at-once path

    def run(self: Scheduler) -> None:
        due.discard(id(self))
        own_schedule(self)

    def schedule(self: Scheduler) -> None:
        if id(self) not in due:
            due.add(id(self))
            asyncio.get_running_loop().call_soon(run, self)

    Scheduler.__init__ = init  # type: ignore[method-assign]
    Scheduler._schedule = schedule  # type: ignore[method-assign]


def nice_engine(niceness: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tensorgate.backends import onnxruntime_cpu

    def renice() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)

    own_backend_init = onnxruntime_cpu.OnnxRuntimeCpuBackend.__init__

    def backend_init(self: onnxruntime_cpu.OnnxRuntimeCpuBackend, *args: object, **kwargs: object) -> None:
        me = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, me)
        os.setpriority(os.PRIO_PROCESS, me, niceness)  # the session's pool threads start now, and inherit it
        try:
            own_backend_init(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            os.setpriority(os.PRIO_PROCESS, me, before)

    own_instance_init = instance.Instance.__init__

    def instance_init(self: instance.Instance, *args: object, **kwargs: object) -> None:
        own_instance_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tg-{self.name}", initializer=renice)

    onnxruntime_cpu.OnnxRuntimeCpuBackend.__init__ = backend_init  # type: ignore[method-assign]
    instance.Instance.__init__ = instance_init  # type: ignore[method-assign]


def inline_sized_batches() -> None:
    from tensorgate.scheduler import queue as queue_module
    from tensorgate.scheduler.placement import Placement
    from tensorgate.scheduler.scheduler import Scheduler

    def budget_bytes(placement: Placement) -> int:
        """The most input bytes a batch may hold and be expected to run on the loop under the limit; 0: no
        size class is measured cheap there."""
        limit = placement.inline_execution_ns
        best = 0
        for key, size in placement._classes.items():
            cost = size.inline.value
            if 0 <= cost < limit and key > best:
                best = key
        if not best:
            return 0
        cost = max(placement._classes[best].inline.value, 1)
        low = 1 << (best - 1)  # the least bytes of the class: the most a byte can cost
        return min(limit * low // cost, 4 << best)

    own_inline = Placement.inline

    def inline(self: Placement, nbytes: int) -> bool:
        if own_inline(self, nbytes):
            return True
        size = self._classes.get(nbytes.bit_length())
        if size is not None and size.inline.value >= 0:
            return False  # measured on the loop, and not cheap there
        return nbytes <= budget_bytes(self)

    own_form = queue_module.PriorityQueue._form_batch
    caps: dict[int, int] = {}  # id(queue) -> byte cap of the batch being formed now

    def form(self: queue_module.PriorityQueue, now_ns: int) -> list[queue_module.Pending] | None:
        cap = caps.get(id(self), 0)
        if not cap:
            return own_form(self, now_ns)
        found = self._entries()
        head = next(found, None)
        if head is None:
            return None
        batch, rows, nbytes = [head], head.request.batch_size, head.request.nbytes
        for entry in found:
            if rows >= self.policy.max_batch_size or nbytes + entry.request.nbytes > cap:
                break
            if entry.key != head.key or rows + entry.request.batch_size > self.policy.max_batch_size:
                continue
            batch.append(entry)
            rows += entry.request.batch_size
            nbytes += entry.request.nbytes
        return batch

    def schedule(self: Scheduler) -> None:
        while self._idle:
            instance = self._idle[-1]
            if self._no_delay and self._batched:
                caps[id(self._queue)] = budget_bytes(self.placements[instance.index])
            batch = self._queue.take_batch(time.perf_counter_ns())
            if batch is None:
                return
            self._run(self._idle.pop(), batch)

    Placement.inline = inline  # type: ignore[method-assign]
    queue_module.PriorityQueue._form_batch = form  # type: ignore[method-assign]
    Scheduler._schedule = schedule  # type: ignore[method-assign]


def pin_loop() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    loop_cpu, others = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    main_tid = threading.get_native_id()  # the event loop's thread: tensorgate runs asyncio on the main thread

    def repin() -> None:
        pinned: set[int] = set()
        while True:
            for entry in os.scandir("/proc/self/task"):
                tid = int(entry.name)
                if tid not in pinned:
                    with contextlib.suppress(OSError):  # a thread that has ended
                        os.sched_setaffinity(tid, loop_cpu if tid == main_tid else others)
                        pinned.add(tid)
            time.sleep(0.5)

    threading.Thread(target=repin, name="pin-loop", daemon=True).start()


def registered_infer() -> None:
    from tensorgate.frontend import grpc_server
    from tensorgate.frontend.service import SERVICE_NAME, generic_handler

    own_init = grpc_server.GrpcFrontend.__init__

    class Details:
        method = f"/{SERVICE_NAME}/ModelInfer"
        invocation_metadata = ()

    def init(self: grpc_server.GrpcFrontend, settings: object, service: object) -> None:
        own_init(self, settings, service)  # type: ignore[arg-type]
        handler = generic_handler(service).service(Details())  # type: ignore[arg-type]
        self.server.add_registered_method_handlers(SERVICE_NAME, {"ModelInfer": handler})

    grpc_server.GrpcFrontend.__init__ = init  # type: ignore[method-assign]


def ort_direct() -> None:
    from tensorgate.backends import onnxruntime_cpu
    from tensorgate.backends.base import BackendExecuteError

    own_execute = onnxruntime_cpu.OnnxRuntimeCpuBackend.execute

    def execute(
        self: onnxruntime_cpu.OnnxRuntimeCpuBackend, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if not self._plain:
            return own_execute(self, inputs, output_names)
        names = list(output_names)
        try:
            results = self._session._sess.run(names, inputs, self._run_options)
        except Exception as exc:
            raise BackendExecuteError(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(names, results, strict=True))

    onnxruntime_cpu.OnnxRuntimeCpuBackend.execute = execute  # type: ignore[method-assign]


def batch_while_busy(max_defers: int) -> None:
    import asyncio

    from tensorgate.scheduler.scheduler import Scheduler

    def busy() -> bool:
        return bool(getattr(asyncio.get_running_loop(), "_ready", ()))

    def get_no_delay(self: Scheduler) -> bool:
        return bool(self.__dict__["_no_delay_set"]) and not busy()

    def set_no_delay(self: Scheduler, value: bool) -> None:
        self.__dict__["_no_delay_set"] = value

    own_schedule = Scheduler._schedule
    deferred: dict[int, int] = {}  # id() of a scheduler whose batch is deferred -> times deferred

    def run(self: Scheduler) -> None:
        times = deferred.pop(id(self))
        full = self._queue.depth >= max(1, self.policy.max_batch_size)
        if busy() and not full and times < max_defers:
            deferred[id(self)] = times + 1
            asyncio.get_running_loop().call_soon(run, self)
            return
        own_schedule(self)

    def schedule(self: Scheduler) -> None:
        if id(self) in deferred:
            return
        if self._idle and self._queue.depth and busy():
            deferred[id(self)] = 0
            asyncio.get_running_loop().call_soon(run, self)
            return
        own_schedule(self)

    Scheduler._no_delay = property(get_no_delay, set_no_delay)  # type: ignore[assignment]
    Scheduler._schedule = schedule  # type: ignore[method-assign]


if __name__ == "__main__":
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switch-interval", type=float)
    parser.add_argument("--gather-on-loop", action="store_true")
    parser.add_argument("--nice-engine", type=int)
    parser.add_argument("--coalesce-on-loop", action="store_true")
    parser.add_argument("--pin-loop", action="store_true")
    parser.add_argument("--inline-sized-batches", action="store_true")
    parser.add_argument("--registered-infer", action="store_true")
    parser.add_argument("--ort-direct", action="store_true")
    parser.add_argument("--batch-while-busy", type=int)
    args = parser.parse_args(sys.argv[1:split])
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.gather_on_loop:
        gather_on_loop()
    if args.nice_engine is not None:
        nice_engine(args.nice_engine)
    if args.coalesce_on_loop:
        coalesce_on_loop()
    if args.pin_loop:
        pin_loop()
    if args.inline_sized_batches:
        inline_sized_batches()
    if args.registered_infer:
        registered_infer()
    if args.ort_direct:
        ort_direct()
    if args.batch_while_busy is not None:
        batch_while_busy(args.batch_while_busy)
    sys.exit(tensorgate_main(sys.argv[split + 1 :]))
