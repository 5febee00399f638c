"""How far behind the event loop runs: a timer every PROBE_SECS measures how late it fires, which is
about how long a call that arrives now waits before the loop gets to it (gRPC has no arrival time to
give). The admission bound uses it: a loop this far behind is overloaded whatever the queues hold."""

from __future__ import annotations

import asyncio

PROBE_SECS = 0.01


class LoopLag:
    def __init__(self) -> None:
        self.lag_ns = 0  # the latest probe's lateness
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="tg-loop-lag")

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(PROBE_SECS)
            self.lag_ns = max(0, int((loop.time() - started - PROBE_SECS) * 1e9))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
