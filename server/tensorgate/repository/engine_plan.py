"""Which engine runs a model: TensorRT, then ONNX Runtime on CUDA, then ONNX Runtime on the CPU.

The plan for a model version is decided from its instance settings (``instance_group`` kind and
GPUs, ``optimization.execution_accelerators``), the server's default and what this machine has.
Every engine passed over comes with the reason, which the repository logs, so a user can always
tell why a model runs where it runs. GPU libraries are probed lazily: a CPU install never imports them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import NamedTuple

from tensorgate.backends.base import Engine, Precision
from tensorgate.errors import ModelConfigError
from tensorgate.model_config import InstanceSettings


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers; ``None`` fields carry the reason they are missing."""

    gpus: tuple[str, ...] = ()
    no_gpu_reason: str = "no NVIDIA GPU"
    tensorrt_version: str | None = None
    no_tensorrt_reason: str = "tensorrt is not installed"
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @property
    def ort_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.ort_providers

    @classmethod
    def detect(cls) -> Capabilities:
        gpus, no_gpu = _probe_gpus()
        trt, no_trt = _probe_tensorrt()
        return cls(gpus, no_gpu, trt, no_trt, _probe_ort_providers())


def _probe_gpus() -> tuple[tuple[str, ...], str]:
    if importlib.util.find_spec("pynvml") is None:
        return (), "nvidia-ml-py is not installed (install tensorgate[gpu] on a GPU machine)"
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return (), f"NVML cannot start ({exc}): no NVIDIA driver or GPU"
    try:
        names = tuple(
            str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(pynvml.nvmlDeviceGetCount())
        )
    finally:
        pynvml.nvmlShutdown()
    return names, "" if names else "NVML found no GPU"


def _probe_tensorrt() -> tuple[str | None, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return None, "tensorrt is not installed (the GPU image has it; PyPI's wheels are stubs)"
    return "installed", ""


def _probe_ort_providers() -> tuple[str, ...]:
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


@dataclass(frozen=True)
class Candidate:
    engine: Engine
    precision: Precision = Precision.FP32
    device: int | None = None  # GPU index for GPU engines
    # Built off the request path: the model serves on the next engine meanwhile, then moves over.
    background: bool = False


class PassedOver(NamedTuple):
    """An engine not tried for a model, and why."""

    engine: Engine
    reason: str


@dataclass(frozen=True)
class EnginePlan:
    """Engines to try in order (the last is always the CPU), and those passed over, with why."""

    candidates: tuple[Candidate, ...]
    passed_over: tuple[PassedOver, ...] = ()


def plan(
    instances: InstanceSettings,
    caps: Capabilities,
    default_precision: Precision = Precision.FP16,
    tensorrt_missing: str | None = None,
) -> EnginePlan:
    """The engines for one model version, best first. ``tensorrt_missing``: why this build cannot
    run TensorRT engines (None: it can)."""
    passed: list[PassedOver] = []
    candidates: list[Candidate] = []
    precision = instances.precision or default_precision
    device = instances.gpus[0] if instances.gpus else 0
    if instances.cpu_only:
        why = "instance_group asks for KIND_CPU"
        passed += [PassedOver(Engine.TENSORRT, why), PassedOver(Engine.ORT_CUDA, why)]
    elif not caps.gpus:
        passed += [PassedOver(Engine.TENSORRT, caps.no_gpu_reason), PassedOver(Engine.ORT_CUDA, caps.no_gpu_reason)]
    else:
        if device >= len(caps.gpus):
            raise ModelConfigError(f"instance_group names GPU {device} but this machine has {len(caps.gpus)}")
        trt_missing = caps.no_tensorrt_reason if caps.tensorrt_version is None else (tensorrt_missing or "")
        if trt_missing:
            passed.append(PassedOver(Engine.TENSORRT, trt_missing))
        else:
            candidates.append(Candidate(Engine.TENSORRT, precision, device, background=True))
        if caps.ort_cuda:
            candidates.append(Candidate(Engine.ORT_CUDA, Precision.FP32, device))
        else:
            passed.append(
                PassedOver(
                    Engine.ORT_CUDA,
                    f"onnxruntime has no CUDAExecutionProvider (it has {', '.join(caps.ort_providers)}); "
                    "install tensorgate[gpu]",
                )
            )
    candidates.append(Candidate(Engine.ORT_CPU))
    return EnginePlan(tuple(candidates), tuple(passed))
