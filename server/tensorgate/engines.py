"""Which engine runs a model: TensorRT, then ONNX Runtime on CUDA, then ONNX Runtime on the CPU.

The plan for a model is decided from its config.pbtxt (``instance_group`` kind,
``optimization.execution_accelerators``), the server's default and what this machine has. Every
engine passed over comes with the reason, which the repository logs, so a user can always tell why
a model runs where it runs. GPU libraries are probed lazily: a CPU install never imports them.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from tensorgate.errors import ModelConfigError
from tensorgate.proto import model_config_pb2 as mc

log = logging.getLogger(__name__)


class Engine(enum.Enum):
    TENSORRT = "tensorrt"
    ORT_CUDA = "onnxruntime-cuda"
    ORT_CPU = "onnxruntime-cpu"


class Precision(enum.Enum):
    FP16 = "fp16"
    FP32 = "fp32"


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


@dataclass(frozen=True)
class EnginePlan:
    """Engines to try in order (the last is always the CPU), and those passed over, with why."""

    candidates: tuple[Candidate, ...]
    passed_over: tuple[tuple[Engine, str], ...] = field(default=())


def _accelerator(config: mc.ModelConfig) -> tuple[bool, Precision | None]:
    """Whether config.pbtxt asks for TensorRT, and in which precision."""
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name != "tensorrt":
            raise ModelConfigError(f"gpu_execution_accelerator {accelerator.name!r} is not supported (only 'tensorrt')")
        mode = accelerator.parameters.get("precision_mode", "").upper()
        if mode not in ("", "FP16", "FP32"):
            raise ModelConfigError(f"tensorrt precision_mode {mode!r} is not supported (FP16 or FP32)")
        return True, Precision(mode.lower()) if mode else None
    return False, None


def plan(
    config: mc.ModelConfig,
    caps: Capabilities,
    default_precision: Precision = Precision.FP16,
    tensorrt_available: Callable[[], str] | None = None,
) -> EnginePlan:
    """The engines for one model, best first. ``tensorrt_available`` returns "" when this build can
    run TensorRT engines, else why not."""
    kinds = {g.kind for g in config.instance_group} or {mc.ModelInstanceGroup.KIND_AUTO}
    passed: list[tuple[Engine, str]] = []
    candidates: list[Candidate] = []
    wants_trt, precision = _accelerator(config)
    precision = precision or default_precision
    gpu_ids = [g for group in config.instance_group for g in group.gpus]
    device = gpu_ids[0] if gpu_ids else 0
    if kinds == {mc.ModelInstanceGroup.KIND_CPU}:
        why = "instance_group asks for KIND_CPU"
        passed += [(Engine.TENSORRT, why), (Engine.ORT_CUDA, why)]
    elif not caps.gpus:
        passed += [(Engine.TENSORRT, caps.no_gpu_reason), (Engine.ORT_CUDA, caps.no_gpu_reason)]
    else:
        if device >= len(caps.gpus):
            raise ModelConfigError(f"instance_group names GPU {device} but this machine has {len(caps.gpus)}")
        trt_missing = caps.no_tensorrt_reason if caps.tensorrt_version is None else ""
        if not trt_missing and tensorrt_available is not None:
            trt_missing = tensorrt_available()
        if trt_missing:
            passed.append((Engine.TENSORRT, trt_missing))
        else:
            candidates.append(Candidate(Engine.TENSORRT, precision, device, background=True))
        if caps.ort_cuda:
            candidates.append(Candidate(Engine.ORT_CUDA, Precision.FP32, device))
        else:
            passed.append(
                (
                    Engine.ORT_CUDA,
                    f"onnxruntime has no CUDAExecutionProvider (it has {', '.join(caps.ort_providers)}); "
                    "install tensorgate[gpu]",
                )
            )
    if wants_trt and not any(c.engine is Engine.TENSORRT for c in candidates):
        log.warning("event=engine_request_unmet model=%s wanted=tensorrt", config.name)
    candidates.append(Candidate(Engine.ORT_CPU))
    return EnginePlan(tuple(candidates), tuple(passed))
