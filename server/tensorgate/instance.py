"""A model instance: one loaded backend and the worker thread that runs it.

The event loop never runs a model: it hands a batch to the instance's own long-lived thread and
awaits the result. One thread per instance keeps the engine single-threaded from our side (the
engine's own intra-op threads do the parallel work).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tensorgate.backends.base import Backend


class Instance:
    def __init__(self, model: str, index: int, backend: Backend) -> None:
        self.name = f"{model}_{index}"
        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tg-{self.name}")

    async def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
        """Execute one batch on this instance's thread; returns the outputs and the compute time in ns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._execute, inputs, outputs)

    def _execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
        start = time.perf_counter_ns()
        result = self.backend.execute(inputs, outputs)
        return result, time.perf_counter_ns() - start

    def close(self) -> None:
        """Wait for the batch in progress (if any), then release the engine."""
        self._executor.shutdown(wait=True)
        self.backend.close()
