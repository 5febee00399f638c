"""How far behind the event loop runs: a timer every PROBE_SECS measures how late it fires, which is
about how long a call that arrives now waits before the loop gets to it (gRPC has no arrival time to
give). The admission bound uses it: a loop this far behind is overloaded whatever the queues hold."""

from __future__ import annotations

import asyncio

PROBE_SECS = 0.01


class LoopLag:
    """A plain timer callback that re-arms itself (no task, no future: a probe costs one handle)."""

    def __init__(self) -> None:
        self.lag_ns = 0  # the latest probe's lateness
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_at(loop.time() + PROBE_SECS, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._handle is not None
        self.lag_ns = max(0, int((loop.time() - self._handle.when()) * 1e9))
        self._arm(loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
