"""GPU state from NVML (``nvidia-ml-py``, the [gpu] extra), as Triton's nv_gpu_* series report it.

Read by the sampler thread on ``--metrics-interval-ms``, never on the request path. Only the GPUs
this process can use are read (``CUDA_VISIBLE_DEVICES``, as Triton filters DCGM's GPUs by CUDA's): on a
host where each server owns one GPU, each exports its own. A GPU that stops answering NVML is left
out of the exposition (Prometheus marks its series stale) and logged once, until it answers again; a
reading one GPU does not support (energy before Volta, a power limit under some vGPU and MIG setups)
leaves out that series alone, logged once, and the GPU's others stay. /metrics itself never fails
for a GPU.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tensorgate.repository.engine_plan import NvmlGpu, cuda_devices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    """One GPU's readings; None where NVML did not answer that one (its series is left out)."""

    uuid: str
    utilization: float | None  # 0..1, the share of the last sample period a kernel was running
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    power_usage_watts: float | None
    power_limit_watts: float | None
    energy_joules: float | None  # since the server started


class GpuReader:
    """One reader for the GPUs this process can use; ``read`` returns those that answered."""

    def __init__(self, handles: list[Any], nvml: ModuleType) -> None:
        self._nvml = nvml
        self._handles = handles
        self._energy_start: dict[int, float] = {}
        self._stale: set[int] = set()
        self._missing: set[tuple[int, str]] = set()  # (GPU, reading) that did not answer last time

    @classmethod
    def open(cls, nvml: ModuleType | None = None, environ: Mapping[str, str] | None = None) -> GpuReader | None:
        """A reader, or None with the reason logged once (no nvidia-ml-py, no driver, no GPU this
        process can use)."""
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError:
                log.info("event=gpu_metrics_off reason=%s", "nvidia-ml-py is not installed (the [gpu] extra)")
                return None
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.info("event=gpu_metrics_off reason=%s", f"NVML cannot start ({exc}): no NVIDIA driver or GPU")
            return None
        found: list[NvmlGpu] = []
        by_uuid: dict[str, Any] = {}
        for index in range(count):
            try:  # one GPU that does not answer leaves out that GPU alone
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                bus = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
            except nvml.NVMLError as exc:
                log.warning("event=gpu_metrics_stale gpu=%d reason=%s", index, str(exc))
                continue
            found.append(NvmlGpu(uuid, "", bus))
            by_uuid[uuid] = handle
        environ = os.environ if environ is None else environ
        if "MIG-" in environ.get("CUDA_VISIBLE_DEVICES", ""):
            # A MIG instance is not a GPU NVML lists: its GPU is the one NVML shows this container.
            visible, why = sorted(found, key=lambda g: g.pci_bus_id), ""
        else:
            visible, why = cuda_devices(found, environ)
        handles = [by_uuid[gpu.uuid] for gpu in visible]
        if not handles:
            log.info("event=gpu_metrics_off reason=%s", why or "NVML found no GPU that answers")
            nvml.nvmlShutdown()
            return None
        log.info("event=gpu_metrics_on gpus=%d of=%d", len(handles), count)
        return cls(handles, nvml)

    def read(self) -> list[GpuSample]:
        samples = []
        for index, handle in enumerate(self._handles):
            try:
                uuid = _text(self._nvml.nvmlDeviceGetUUID(handle))
            except self._nvml.NVMLError as exc:
                if index not in self._stale:
                    self._stale.add(index)
                    log.warning("event=gpu_metrics_stale gpu=%d reason=%s", index, str(exc))
                continue
            if index in self._stale:
                self._stale.discard(index)
                log.info("event=gpu_metrics_recovered gpu=%d", index)
            samples.append(self._read_one(index, handle, uuid))
        return samples

    def _read_one(self, index: int, handle: Any, uuid: str) -> GpuSample:
        nvml = self._nvml
        memory = self._reading(index, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        utilization = self._reading(
            index, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        )
        power = self._reading(index, "power_usage", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # mW
        limit = self._reading(index, "power_limit", lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0)
        # mJ since the driver loaded; reported since the server started
        energy = self._reading(index, "energy", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0)
        if energy is not None:
            energy -= self._energy_start.setdefault(index, energy)
        return GpuSample(
            uuid=uuid,
            utilization=utilization,
            memory_total_bytes=None if memory is None else int(memory.total),
            memory_used_bytes=None if memory is None else int(memory.used),
            power_usage_watts=power,
            power_limit_watts=limit,
            energy_joules=energy,
        )

    def _reading(self, index: int, what: str, read: Callable[[], Any]) -> Any:
        """One NVML reading of one GPU, or None (logged when it stops and when it answers again)."""
        key = (index, what)
        try:
            value = read()
        except self._nvml.NVMLError as exc:
            if key not in self._missing:
                self._missing.add(key)
                log.warning("event=gpu_metric_unavailable gpu=%d reading=%s reason=%s", index, what, str(exc))
            return None
        if key in self._missing:
            self._missing.discard(key)
            log.info("event=gpu_metric_recovered gpu=%d reading=%s", index, what)
        return value

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
