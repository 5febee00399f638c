"""The thread that reads host and GPU state every ``--metrics-interval-ms``; a scrape reads its
latest readings and never waits on /proc or NVML."""

from __future__ import annotations

import logging
import threading

from tensorgate.metrics.cpu import CpuReader, CpuSample
from tensorgate.metrics.gpu import GpuReader, GpuSample

log = logging.getLogger(__name__)


class Sampler:
    def __init__(self, interval_s: float, cpu: CpuReader | None, gpu: GpuReader | None) -> None:
        self.interval_s = interval_s
        self._cpu = cpu
        self._gpu = gpu
        self.cpu: CpuSample | None = None  # the latest readings (replaced whole: no lock needed)
        self.gpus: list[GpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tg-metrics-sampler", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def sample(self) -> None:
        try:
            if self._cpu is not None:
                self.cpu = self._cpu.read()
            if self._gpu is not None:
                self.gpus = self._gpu.read()
        except Exception:  # a reader bug must not end the thread nor reach /metrics
            log.exception("event=metrics_sample_failed")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._gpu is not None:
            self._gpu.close()
