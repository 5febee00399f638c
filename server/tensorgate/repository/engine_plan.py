"""Which engine runs a model: TensorRT, then ONNX Runtime on CUDA, then ONNX Runtime on the CPU.

The plan for a model version is decided from its instance settings (``instance_group`` kind and
GPUs, ``optimization.execution_accelerators``), the server's default and what this machine has.
Every engine passed over comes with the reason, which the repository logs, so a user can always
tell why a model runs where it runs. GPU libraries are probed lazily: a CPU install never imports them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tensorgate.backends.base import Engine, Precision
from tensorgate.errors import ModelConfigError
from tensorgate.model_config import InstanceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers; ``None`` fields carry the reason they are missing.

    ``gpus`` (names) and ``gpu_uuids`` are in CUDA's device order as this process sees it: index n
    is CUDA device n, the n of ``instance_group { gpus: [n] }`` and of ``cuda:n``."""

    gpus: tuple[str, ...] = ()
    no_gpu_reason: str = "no NVIDIA GPU"
    tensorrt_version: str | None = None
    no_tensorrt_reason: str = "tensorrt is not installed"
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    gpu_uuids: tuple[str, ...] = ()

    @property
    def ort_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.ort_providers

    @classmethod
    def detect(cls) -> Capabilities:
        visible, no_gpu = _probe_gpus()
        trt, no_trt = _probe_tensorrt()
        return cls(
            tuple(g.name for g in visible),
            no_gpu,
            trt,
            no_trt,
            _probe_ort_providers(),
            tuple(g.uuid for g in visible),
        )


@dataclass(frozen=True)
class NvmlGpu:
    """A GPU as NVML reports it (NVML sees every GPU, whatever CUDA_VISIBLE_DEVICES says)."""

    uuid: str
    name: str
    pci_bus_id: str  # "DDDDDDDD:BB:DD.F" (domain, bus, device, function; hex)


def _pci_order(gpu: NvmlGpu) -> tuple[int, ...]:
    parts = gpu.pci_bus_id.replace(".", ":").split(":")
    try:
        return tuple(int(part, 16) for part in parts)
    except ValueError:
        return (1 << 64,)  # unreadable: after the others


def cuda_devices(gpus: Sequence[NvmlGpu], environ: Mapping[str, str]) -> tuple[list[NvmlGpu], str]:
    """The GPUs CUDA numbers 0, 1, ... in this process, and why some (or all) are missing.

    CUDA numbers devices in PCI bus order only under ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (which
    ``detect`` sets when unset, before any CUDA library starts); then ``CUDA_VISIBLE_DEVICES``, as
    CUDA reads it: a comma-separated list of indices (into that order) or UUIDs (``GPU-...``, any
    unique prefix), enumerated in the order given; an entry that names no device hides it and every
    entry after it; an empty value hides every GPU."""
    ordered = sorted(gpus, key=_pci_order)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return ordered, ""
    chosen: list[NvmlGpu] = []
    for token in (t.strip() for t in visible.split(",")):
        found: NvmlGpu | None = None
        if token.isdigit():
            found = ordered[int(token)] if int(token) < len(ordered) else None
        elif token.upper().startswith("GPU-"):
            matches = [g for g in ordered if g.uuid.upper().startswith(token.upper())]
            found = matches[0] if len(matches) == 1 else None
        if found is None or found in chosen:
            if token:
                return chosen, f"CUDA_VISIBLE_DEVICES={visible!r}: {token!r} names no single GPU (CUDA stops there)"
            break
        chosen.append(found)
    return chosen, "" if chosen else f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"


def _probe_gpus() -> tuple[list[NvmlGpu], str]:
    if importlib.util.find_spec("pynvml") is None:
        return [], "nvidia-ml-py is not installed (install tensorgate[gpu] on a GPU machine)"
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"NVML cannot start ({exc}): no NVIDIA driver or GPU"
    try:
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid, name = pynvml.nvmlDeviceGetUUID(handle), pynvml.nvmlDeviceGetName(handle)
            bus = pynvml.nvmlDeviceGetPciInfo(handle).busId
            found.append(NvmlGpu(*(v.decode() if isinstance(v, bytes) else str(v) for v in (uuid, name, bus))))
    finally:
        pynvml.nvmlShutdown()
    if not found:
        return [], "NVML found no GPU"
    # NVML's order and CUDA's default (fastest first) differ: number GPUs as NVML's PCI order, which
    # CUDA follows under PCI_BUS_ID. Set before any CUDA library initialises in this process.
    order = os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if order != "PCI_BUS_ID":
        log.warning(
            "event=gpu_order_unknown CUDA_DEVICE_ORDER=%s reason=%s",
            order,
            "CUDA numbers GPUs fastest first; tensorgate assumes PCI bus order, so names in logs may not match",
        )
    visible, why = cuda_devices(found, os.environ)
    return visible, why if not visible else ""


def _probe_tensorrt() -> tuple[str | None, str]:
    """TensorRT's version if this install can run TensorRT engines (tensorrt and cuda-python)."""
    from tensorgate.backends.tensorrt import libs  # imports neither library

    missing = libs.missing()
    if missing:
        return None, missing
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13_libs", "tensorrt-cu12-libs"):
        try:
            return importlib.metadata.version(dist), ""
        except importlib.metadata.PackageNotFoundError:
            continue
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
    if instances.cpu_only:
        why = "instance_group asks for KIND_CPU"
        passed += [PassedOver(Engine.TENSORRT, why), PassedOver(Engine.ORT_CUDA, why)]
    elif not caps.gpus:
        passed += [PassedOver(Engine.TENSORRT, caps.no_gpu_reason), PassedOver(Engine.ORT_CUDA, caps.no_gpu_reason)]
    else:
        beyond = [g for g in instances.gpus if g >= len(caps.gpus)]
        if beyond:
            raise ModelConfigError(
                f"instance_group names GPU {beyond[0]} but this process sees {len(caps.gpus)} "
                "(CUDA device numbers, after CUDA_VISIBLE_DEVICES)"
            )
        device = instances.gpu_devices(len(caps.gpus))[0]  # the first instance's; the loader places the rest
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
