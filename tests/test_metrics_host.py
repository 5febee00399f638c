"""The host and GPU readers behind the nv_cpu_* and nv_gpu_* gauges.

The GPU tests here run on a machine without a GPU by handing the reader ``StandInNvml``: a small
stand-in for the ``pynvml`` module that answers as NVML's documentation says (memory in bytes,
power in milliwatts, energy in millijoules, utilization in percent). They check our calls, unit
conversions and stale handling; they say nothing of a real GPU (tests/test_gpu.py does, on one).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from tensorgate.metrics.cpu import CpuReader
from tensorgate.metrics.gpu import GpuReader
from tensorgate.metrics.models import host_families
from tensorgate.metrics.sampler import Sampler


class StandInNvmlError(Exception):
    pass


class StandInNvml(types.ModuleType):
    """Stand-in for pynvml with ``count`` GPUs; ``broken`` holds the indices that stop answering."""

    NVMLError = StandInNvmlError

    def __init__(self, count: int = 2, init_error: bool = False) -> None:
        super().__init__("pynvml")
        self.count = count
        self.init_error = init_error
        self.broken: set[int] = set()
        self.unsupported: set[tuple[int, str]] = set()  # (GPU, reading) NVML answers "Not Supported" for
        self.energy_mj = [5_000_000.0] * count
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise StandInNvmlError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def _check(self, handle: int, reading: str = "") -> None:
        if handle in self.broken:
            raise StandInNvmlError("GPU is lost")
        if (handle, reading) in self.unsupported:
            raise StandInNvmlError("Not Supported")

    def nvmlDeviceGetPciInfo(self, handle: int) -> types.SimpleNamespace:
        self._check(handle)
        return types.SimpleNamespace(busId=f"00000000:{0x17 + handle:02X}:00.0")

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        self._check(handle)
        return f"GPU-0000000{handle}-stand-in"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> types.SimpleNamespace:
        self._check(handle)
        return types.SimpleNamespace(gpu=40 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        self._check(handle)
        return types.SimpleNamespace(total=80 * 2**30, used=(handle + 1) * 2**30, free=0)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._check(handle)
        return 250_500  # mW

    def nvmlDeviceGetPowerManagementLimit(self, handle: int) -> int:
        self._check(handle, "power_limit")
        return 700_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> float:
        self._check(handle, "energy")
        return self.energy_mj[handle]


def test_stand_in_nvml_answers_map_to_tritons_units() -> None:
    nvml = StandInNvml()
    reader = GpuReader.open(nvml, environ={})
    assert reader is not None
    first = reader.read()
    nvml.energy_mj[1] += 3_500  # 3.5 J more on GPU 1
    gpus = reader.read()
    assert [g.uuid for g in gpus] == ["GPU-00000000-stand-in", "GPU-00000001-stand-in"]
    assert [g.energy_joules for g in first] == [0.0, 0.0]  # since the server started, not the driver
    assert [g.energy_joules for g in gpus] == [0.0, 3.5]
    one = gpus[1]
    assert one.utilization == 0.41 and one.memory_total_bytes == 80 * 2**30 and one.memory_used_bytes == 2 * 2**30
    assert (one.power_usage_watts, one.power_limit_watts) == (250.5, 700.0)


def test_stand_in_gpu_that_stops_answering_is_left_out_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = StandInNvml()
    reader = GpuReader.open(nvml, environ={})
    assert reader is not None
    nvml.broken.add(0)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert [g.uuid for g in reader.read()] == ["GPU-00000001-stand-in"]
        nvml.broken.clear()
        assert len(reader.read()) == 2
    assert caplog.text.count("event=gpu_metrics_stale gpu=0") == 1
    assert caplog.text.count("event=gpu_metrics_recovered gpu=0") == 1


def test_stand_in_gpu_reading_not_supported_leaves_out_that_series_alone(caplog: pytest.LogCaptureFixture) -> None:
    """NVML answers "Not Supported" for one reading of one GPU (energy before Volta, a power limit under
    vGPU): that series alone is left out, logged once; the GPU's other series and the other GPU stay."""
    nvml = StandInNvml()
    nvml.unsupported |= {(1, "energy"), (1, "power_limit")}
    sampler = Sampler(60, None, GpuReader.open(nvml, environ={}))
    registry = CollectorRegistry()
    registry.register(_HostCollector(sampler))
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            sampler.sample()
        text = generate_latest(registry).decode()
        nvml.unsupported.clear()
        sampler.sample()
    one, zero = 'gpu_uuid="GPU-00000001-stand-in"', 'gpu_uuid="GPU-00000000-stand-in"'
    assert f"nv_gpu_utilization{{{one}}} 0.41" in text and f"nv_gpu_power_usage{{{one}}} 250.5" in text
    assert f"nv_energy_consumption{{{one}}}" not in text and f"nv_gpu_power_limit{{{one}}}" not in text
    assert f"nv_energy_consumption{{{zero}}} 0.0" in text and f"nv_gpu_power_limit{{{zero}}} 700.0" in text
    assert caplog.text.count("event=gpu_metric_unavailable gpu=1 reading=energy reason=Not Supported") == 1
    assert caplog.text.count("event=gpu_metric_recovered gpu=1 reading=power_limit") == 1
    assert f"nv_energy_consumption{{{one}}} 0.0" in generate_latest(registry).decode()
    sampler.stop()


@pytest.mark.parametrize(
    ("visible", "read"),
    [
        (None, ["GPU-00000000-stand-in", "GPU-00000001-stand-in"]),
        ("1", ["GPU-00000001-stand-in"]),
        ("GPU-00000001", ["GPU-00000001-stand-in"]),
        ("1,0", ["GPU-00000001-stand-in", "GPU-00000000-stand-in"]),
    ],
)
def test_stand_in_only_the_gpus_cuda_shows_this_process_are_read(visible: str | None, read: list[str]) -> None:
    """As Triton keeps only DCGM's GPUs that CUDA sees: one server pinned to a GPU by
    CUDA_VISIBLE_DEVICES exports that GPU, not every GPU of the host."""
    reader = GpuReader.open(StandInNvml(), environ={} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})
    assert reader is not None and [g.uuid for g in reader.read()] == read


def test_stand_in_a_gpu_that_does_not_answer_at_start_leaves_out_that_gpu_alone() -> None:
    nvml = StandInNvml(count=3)
    nvml.broken.add(1)
    reader = GpuReader.open(nvml, environ={})
    assert reader is not None and [g.uuid for g in reader.read()] == ["GPU-00000000-stand-in", "GPU-00000002-stand-in"]


def test_stand_in_a_mig_instance_reads_the_gpu_nvml_shows() -> None:
    reader = GpuReader.open(StandInNvml(count=1), environ={"CUDA_VISIBLE_DEVICES": "MIG-4d3a-stand-in"})
    assert reader is not None and [g.uuid for g in reader.read()] == ["GPU-00000000-stand-in"]


def test_stand_in_no_gpu_visible_to_cuda_turns_gpu_metrics_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert GpuReader.open(StandInNvml(), environ={"CUDA_VISIBLE_DEVICES": ""}) is None
    assert "event=gpu_metrics_off" in caplog.text


class _HostCollector(Collector):
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        return host_families(self.sampler)


def test_stand_in_gpu_gauges_in_the_exposition() -> None:
    nvml = StandInNvml(count=1)
    sampler = Sampler(60, None, GpuReader.open(nvml, environ={}))
    sampler.sample()
    registry = CollectorRegistry()
    registry.register(_HostCollector(sampler))
    text = generate_latest(registry).decode()
    uuid = 'gpu_uuid="GPU-00000000-stand-in"'
    for line in (
        f"nv_gpu_utilization{{{uuid}}} 0.4",
        f"nv_gpu_memory_total_bytes{{{uuid}}} 8.589934592e+10",
        f"nv_gpu_memory_used_bytes{{{uuid}}} 1.073741824e+09",
        f"nv_gpu_power_usage{{{uuid}}} 250.5",
        f"nv_gpu_power_limit{{{uuid}}} 700.0",
        f"nv_energy_consumption{{{uuid}}} 0.0",
    ):
        assert line in text, text
    nvml.broken.add(0)
    sampler.sample()
    assert "nv_gpu_" not in generate_latest(registry).decode()  # stale: absent, /metrics still answers
    sampler.stop()
    assert nvml.shutdowns == 1


@pytest.mark.parametrize(
    ("nvml", "why"), [(StandInNvml(init_error=True), "NVML cannot start"), (StandInNvml(0), "no GPU")]
)
def test_without_a_gpu_the_reader_is_absent_and_says_why(
    nvml: StandInNvml, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        assert GpuReader.open(nvml, environ={}) is None
    assert "event=gpu_metrics_off" in caplog.text and why in caplog.text


def test_cpu_reader_reads_this_machine(tmp_path: Path) -> None:
    reader = CpuReader()
    sample = reader.read()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert sample.memory_total_bytes == int(meminfo["MemTotal"].split()[0]) * 1024
    assert 0 < sample.memory_used_bytes < sample.memory_total_bytes
    assert 0.0 <= sample.utilization <= 1.0


def test_cpu_utilization_is_the_busy_share_between_readings(tmp_path: Path) -> None:
    """A /proc written by the test: 300 of 400 jiffies busy between the readings is 0.75."""
    (tmp_path / "meminfo").write_text("MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:  250 kB\n")
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 1000 0 0 0 0 0 0\ncpu0 ...\n")
    reader = CpuReader(tmp_path)
    stat.write_text("cpu  300 0 200 1100 0 0 0 0 0 0\ncpu0 ...\n")
    sample = reader.read()
    assert sample.utilization == 0.75
    assert (sample.memory_total_bytes, sample.memory_used_bytes) == (1000 * 1024, 750 * 1024)
