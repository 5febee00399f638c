"""In-process cost of one request through tensorgate's path (no gRPC): decode, schedule, run, encode.

Calls InferenceService.model_infer directly on a ModelInferRequest for the example `identity` model,
so the figure is our Python plus ONNX Runtime's run, with gRPC's C core left out. Prints the median of
several rounds of the calling thread's CPU time, in microseconds per request, and the same for a raw
InferenceSession.run baseline (CPU time: wall time on these shared machines swings with the neighbours).

For a figure that does not move with the machine, count instructions: run it under
``valgrind --tool=callgrind --separate-threads=yes`` with ``--rounds 1`` at two values of ``-n`` and
divide the difference of the main thread's totals by the difference of ``n`` (only the main thread:
how ONNX Runtime's pool threads share a run varies from run to run; bench/RESULTS.md has such a
before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tensorgate.frontend.service import InferenceService, ServerState
from tensorgate.proto import inference_pb2 as pb
from tensorgate.repository import Repository
from tensorgate.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def request(model: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id="1")
    tensor = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    del tensor
    req.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return req


async def measure(rounds: int, n: int, warmup: int) -> tuple[list[float], list[float]]:
    repo = Repository(Settings(model_repository=ROOT / "model_repo"))
    await repo.start()
    service = InferenceService(repo, ServerState())
    req = request("identity")
    for _ in range(warmup):  # warm up, and let the inline choice settle
        await service.model_infer(req)
    ours = []
    for _ in range(rounds):
        t0 = time.thread_time_ns()  # this thread's CPU: steadier than wall time on a shared machine
        for _ in range(n):
            await service.model_infer(req)
        ours.append((time.thread_time_ns() - t0) / n / 1000)
    await repo.stop()
    session = ort.InferenceSession(str(ROOT / "model_repo" / "identity" / "1" / "model.onnx"))
    feeds = {"INPUT0": np.arange(16, dtype=np.float32).reshape(1, 16)}
    raw = []
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        for _ in range(n):
            session.run(None, feeds)
        raw.append((time.thread_time_ns() - t0) / n / 1000)
    return ours, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=2000)
    args = parser.parse_args()
    ours, raw = asyncio.run(measure(args.rounds, args.n, args.warmup))
    print(f"tensorgate path: median {statistics.median(ours):.2f} us/request (min {min(ours):.2f})")
    print(f"raw ORT run:     median {statistics.median(raw):.2f} us/request (min {min(raw):.2f})")
    print(f"our Python:      {statistics.median(ours) - statistics.median(raw):.2f} us/request")


if __name__ == "__main__":
    main()
