"""GPU engine benchmark: the FP16 pipeline and each engine, raw (no server), in one run.

    .venv/bin/python bench/gpu.py [--models mlp,cnn] [--batches 1,16,64] [--seconds 2]

For each model of bench/make_models.py it
1. converts FP32 -> FP16 and runs the accuracy gate (on the CPU: runs everywhere);
2. times, where the machine has them, at each batch size: ORT CUDA on the FP32 graph, ORT CUDA on
   the FP16 graph, TensorRT FP32 and TensorRT FP16 (backends/tensorrt/, engines cached under
   bench/engine_cache/), and ORT CPU FP32 as the floor;
3. prints samples/s and the ratio of each engine to ORT CUDA FP32 at the same batch, and appends the
   tables, with the card, driver and versions, to bench/RESULTS.md.

What the machine lacks is printed as skipped with the reason; nothing is faked. The server's own
overhead on a GPU is measured by bench/run.py (the server picks ORT CUDA there).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_models
from tensorgate.backends import fp16
from tensorgate.repository.engine_plan import Capabilities

HERE = Path(__file__).resolve().parent
Run = Callable[[np.ndarray], object]


def timed(run: Run, x: np.ndarray, seconds: float) -> float:
    """Samples per second of ``run`` on batch ``x`` (after a warm-up), median of three windows."""
    for _ in range(3):
        run(x)
    rates = []
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            run(x)
            count += 1
        rates.append(count * x.shape[0] / (time.perf_counter() - start))
    return float(np.median(rates))


def ort_runner(model: bytes, providers: Sequence[str]) -> Run:
    session = ort.InferenceSession(model, providers=list(providers))
    if session.get_providers()[0] != providers[0]:
        raise RuntimeError(f"ONNX Runtime fell back to {session.get_providers()} (CUDA libraries missing?)")
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def trt_runner(label: str, model: bytes, precision: str, dims: tuple[int, ...], batches: Sequence[int]) -> Run:
    from tensorgate.backends import tensorrt as trt_backend
    from tensorgate.backends.tensorrt.cache import EngineCache

    top = max(batches)
    shapes = {make_models.INPUT: ((1, *dims), (top, *dims), (top, *dims))}
    options = trt_backend.BuildOptions(timing_cache=HERE / "engine_cache" / "timing.cache")
    plan = trt_backend.load_or_build(label, model, precision, shapes, options, EngineCache(HERE / "engine_cache"), 0)
    backend = trt_backend.TensorRTBackend(plan, 0, {make_models.INPUT: (top, *dims)})
    return lambda x: backend.execute({make_models.INPUT: x}, [make_models.OUTPUT])


def machine(caps: Capabilities) -> str:
    parts = [
        platform.processor() or platform.machine(),
        f"Python {platform.python_version()}",
        f"onnxruntime {ort.__version__} ({', '.join(caps.ort_providers)})",
    ]
    if caps.gpus:
        import pynvml

        pynvml.nvmlInit()
        parts.append(f"GPU {caps.gpus[0]}, driver {pynvml.nvmlSystemGetDriverVersion()}")
        pynvml.nvmlShutdown()
    else:
        parts.append(f"no GPU ({caps.no_gpu_reason})")
    parts.append(f"TensorRT {caps.tensorrt_version or 'absent'}")
    return "; ".join(parts)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    repo = make_models.build(HERE / "model_repo", models)
    caps = Capabilities.detect()
    gate_rows, speed_rows, skipped = [], [], []
    for name in models:
        info = make_models.MODELS[name]
        fp32 = (repo / name / "1" / "model.onnx").read_bytes()
        result = fp16.fp16_pipeline(fp32)
        gate_rows.append([name, "accepted" if result.accepted else "refused", result.reason[:140]])
        engines: dict[str, Run] = {"ORT CPU FP32": ort_runner(fp32, ["CPUExecutionProvider"])}
        candidates: dict[str, Callable[[], Run]] = {}
        fp16_bytes = result.model
        if caps.ort_cuda and caps.gpus:
            candidates["ORT CUDA FP32"] = partial(ort_runner, fp32, ["CUDAExecutionProvider"])
            if fp16_bytes is not None:
                candidates["ORT CUDA FP16 graph"] = partial(ort_runner, fp16_bytes, ["CUDAExecutionProvider"])
        else:
            skipped.append(f"ORT CUDA: {caps.no_gpu_reason if not caps.gpus else 'no CUDAExecutionProvider'}")
        if caps.tensorrt_version and caps.gpus:
            candidates["TensorRT FP32"] = partial(trt_runner, f"{name}-fp32", fp32, "fp32", info.input_dims, batches)
            if fp16_bytes is not None:
                candidates["TensorRT FP16"] = partial(
                    trt_runner, f"{name}-fp16", fp16_bytes, "fp16", info.input_dims, batches
                )
        else:
            skipped.append(f"TensorRT: {caps.no_tensorrt_reason if caps.gpus else caps.no_gpu_reason}")
        for label, make in candidates.items():
            try:
                engines[label] = make()
            except Exception as exc:  # an engine that cannot start is reported, the rest still run
                skipped.append(f"{name} {label}: {exc}")
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, *info.input_dims)).astype(np.float32)
            rates: Mapping[str, float] = {label: timed(run, x, args.seconds) for label, run in engines.items()}
            base = rates.get("ORT CUDA FP32")
            for label, rate in rates.items():
                ratio = f"{rate / base:.2f}" if base else "-"
                speed_rows.append([name, str(batch), label, f"{rate:,.0f}", ratio])
            print(f"{name} b{batch}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()), flush=True)
    report = "\n\n".join([
        f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC (bench/gpu.py)",
        f"- machine: {machine(caps)}\n- command: `{' '.join(sys.argv)}`",
        "### FP16 accuracy gate (CPU emulation of FP16, default tolerance)",
        table(["model", "verdict", "reason"], gate_rows),
        "### Raw engines, samples/s (ratio = engine / ORT CUDA FP32 at the same batch)",
        table(["model", "batch", "engine", "samples/s", "ratio"], speed_rows),
        "Skipped: " + ("; ".join(sorted(set(skipped))) or "nothing"),
    ])  # fmt: skip
    print(report)
    if not args.no_results:
        with (HERE / "RESULTS.md").open("a") as out:
            out.write("\n" + report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
