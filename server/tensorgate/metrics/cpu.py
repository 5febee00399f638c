"""The host's CPU utilization and memory, as Triton's nv_cpu_* gauges report them (Linux /proc)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuSample:
    utilization: float  # 0..1 over every core, since the previous reading
    memory_total_bytes: int
    memory_used_bytes: int  # MemTotal - MemAvailable


class CpuReader:
    """Reads /proc/stat and /proc/meminfo; each ``read`` reports the utilization since the last one."""

    def __init__(self, proc: Path = PROC) -> None:
        self._proc = proc
        self._last = self._times()

    def _times(self) -> tuple[int, int]:
        """(busy, total) jiffies of all cores: idle and iowait count as not busy."""
        fields = (self._proc / "stat").read_text().split("\n", 1)[0].split()[1:]
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total = sum(values)
        return total - values[3] - values[4], total

    def read(self) -> CpuSample:
        busy, total = self._times()
        last_busy, last_total = self._last
        self._last = (busy, total)
        elapsed = total - last_total
        utilization = (busy - last_busy) / elapsed if elapsed > 0 else 0.0
        memory: dict[str, int] = {}
        for line in (self._proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                memory[key] = int(rest.split()[0]) * 1024  # kB
        total_bytes = memory["MemTotal"]
        return CpuSample(min(1.0, max(0.0, utilization)), total_bytes, total_bytes - memory["MemAvailable"])
