"""GPU state from NVML (``nvidia-ml-py``, the [gpu] extra), as Triton's nv_gpu_* series report it.

Read by the sampler thread on ``--metrics-interval-ms``, never on the request path. A GPU that stops
answering NVML is left out of the exposition (Prometheus marks its series stale) and logged once,
until it answers again; /metrics itself never fails for it.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    uuid: str
    utilization: float  # 0..1, the share of the last sample period a kernel was running
    memory_total_bytes: int
    memory_used_bytes: int
    power_usage_watts: float
    power_limit_watts: float
    energy_joules: float  # since the server started


class GpuReader:
    """One reader for every GPU NVML sees; ``read`` returns those that answered."""

    def __init__(self, handles: list[Any], nvml: ModuleType) -> None:
        self._nvml = nvml
        self._handles = handles
        self._energy_start: dict[int, float] = {}
        self._stale: set[int] = set()

    @classmethod
    def open(cls, nvml: ModuleType | None = None) -> GpuReader | None:
        """A reader, or None with the reason logged once (no nvidia-ml-py, no driver, no GPU)."""
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError:
                log.info("event=gpu_metrics_off reason=%s", "nvidia-ml-py is not installed (the [gpu] extra)")
                return None
        try:
            nvml.nvmlInit()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            log.info("event=gpu_metrics_off reason=%s", f"NVML cannot start ({exc}): no NVIDIA driver or GPU")
            return None
        if not handles:
            log.info("event=gpu_metrics_off reason=%s", "NVML found no GPU")
            nvml.nvmlShutdown()
            return None
        log.info("event=gpu_metrics_on gpus=%d", len(handles))
        return cls(handles, nvml)

    def read(self) -> list[GpuSample]:
        samples = []
        for index, handle in enumerate(self._handles):
            try:
                samples.append(self._read_one(index, handle))
            except self._nvml.NVMLError as exc:
                if index not in self._stale:
                    self._stale.add(index)
                    log.warning("event=gpu_metrics_stale gpu=%d reason=%s", index, str(exc))
                continue
            if index in self._stale:
                self._stale.discard(index)
                log.info("event=gpu_metrics_recovered gpu=%d", index)
        return samples

    def _read_one(self, index: int, handle: Any) -> GpuSample:
        nvml = self._nvml
        uuid = nvml.nvmlDeviceGetUUID(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        energy = nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # mJ since the driver loaded
        start = self._energy_start.setdefault(index, energy)
        return GpuSample(
            uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            utilization=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
            memory_total_bytes=int(memory.total),
            memory_used_bytes=int(memory.used),
            power_usage_watts=nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # mW
            power_limit_watts=nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,  # mW
            energy_joules=energy - start,
        )

    def close(self) -> None:
        self._nvml.nvmlShutdown()
