"""What ONNX Runtime's run costs the event loop's thread when another thread wants the GIL (issue 14).

    python bench/gil_handoff.py [--model bench/model_repo/identity/1/model.onnx] [-n 50000] [--rounds 5]

``InferenceSession.run`` releases the GIL while ONNX Runtime runs, and takes it back after. In tensorgate a
model cheap enough runs on the event loop's thread, and grpc.aio's poller thread wants the GIL for every
completion it hands to the loop: when the loop lets the GIL go inside the run, the poller may take it, and the
loop waits, then pays to take it back. That is a cost of the run that no profile of the run alone shows, and
that the bare echo (whose handler never lets the GIL go) does not pay.

Measured here in one process, without gRPC: the calling thread's CPU time (and wall time) per run of the model
alone, and beside a second thread that (a) sleeps 100 µs between short bursts of Python, as a poller with
little traffic, and (b) wants the GIL all the time, as a poller under heavy traffic; and, as the control, the
same with a numpy call that keeps the GIL (``np.add`` on the input, no release) in place of the run. Ratios are
against the alone row of the same round; medians over rounds. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from processes import cpu_model
from tables import fmt_x, load_average, table

BENCH = Path(__file__).resolve().parent
COMPETITORS = ("alone", "beside a thread waking every 100 µs", "beside a thread always wanting the GIL")


def _session(model: Path) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    options = ort.SessionOptions()  # tensorgate's CPU session settings
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    feeds = {}
    for tensor in session.get_inputs():
        dims = [1] + [d if isinstance(d, int) else 1 for d in tensor.shape[1:]]
        feeds[tensor.name] = np.ones(dims, dtype=np.float32)
    return session, feeds


def _competitor(kind: int, stop: threading.Event) -> None:
    while not stop.is_set():
        if kind == 1:
            time.sleep(0.0001)  # the GIL is free meanwhile
        sum(range(50))  # a little Python, holding the GIL


def _per_call(call: Callable[[], object], n: int, competitor: int) -> tuple[float, float]:
    """The calling thread's CPU µs and wall µs per call, with ``competitor`` running beside it."""
    stop = threading.Event()
    thread = threading.Thread(target=_competitor, args=(competitor, stop), daemon=True) if competitor else None
    if thread is not None:
        thread.start()
    try:
        for _ in range(n // 20):
            call()
        cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
        for _ in range(n):
            call()
        cpu, wall = time.thread_time_ns() - cpu0, time.perf_counter_ns() - wall0
    finally:
        stop.set()
        if thread is not None:
            thread.join()
    return cpu / n / 1000, wall / n / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BENCH / "model_repo" / "identity" / "1" / "model.onnx")
    parser.add_argument("-n", type=int, default=50_000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    session, feeds = _session(args.model)
    first = next(iter(feeds.values()))
    calls: dict[str, Callable[[], object]] = {
        "ONNX Runtime run (lets the GIL go)": lambda: session.run(None, feeds),
        "np.add on the input (keeps the GIL)": lambda: np.add(first, first),
    }
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for label, call in calls.items():
            for competitor in range(len(COMPETITORS)):
                results.setdefault((label, competitor), []).append(_per_call(call, args.n, competitor))
    print(f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} CPUs; onnxruntime {ort.__version__}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load_average()}")
    print(f"model: {args.model}; {args.rounds} rounds of {args.n:,} calls each, medians\n")
    rows = []
    for label in calls:
        alone = [cpu for cpu, _ in results[(label, 0)]]
        for competitor, where in enumerate(COMPETITORS):
            cpus = [cpu for cpu, _ in results[(label, competitor)]]
            walls = [wall for _, wall in results[(label, competitor)]]
            ratio = statistics.median(c / a for c, a in zip(cpus, alone, strict=True))
            rows.append(
                [
                    label,
                    where,
                    f"{statistics.median(cpus):.2f}",
                    f"{statistics.median(walls):.2f}",
                    fmt_x(ratio),
                ]
            )
    print(table(["call", "where", "calling thread CPU µs/call", "wall µs/call", "CPU vs alone"], rows))


if __name__ == "__main__":
    main()
