"""One server process: start the frontend, load the repository, serve until SIGTERM/SIGINT, then
stop taking requests, finish the ones in flight, unload and return 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading

from tensorgate import __version__
from tensorgate.frontend.grpc_server import GrpcFrontend, PortInUse
from tensorgate.frontend.service import InferenceService, ServerState
from tensorgate.metrics import serve_metrics, thread_cpu_seconds
from tensorgate.repository import Repository
from tensorgate.settings import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> int:
    state = ServerState()
    repository = Repository(settings)
    try:
        frontend = GrpcFrontend(settings, InferenceService(repository, state))
    except PortInUse as exc:
        log.error("event=startup_failed reason=%r", str(exc))
        return 1
    if settings.metrics_port >= 0:
        try:
            serve_metrics(
                settings.host,
                settings.metrics_port,
                lambda: [(v.name, v.version, v.stats) for v in repository.ready_versions()],
                lambda: state.ready,
                lambda: state.internal_errors,
                thread_cpu_seconds(threading.get_ident()),  # this thread runs the event loop
            )
        except OSError as exc:
            log.error("event=startup_failed reason=%r", f"cannot serve metrics on port {settings.metrics_port}: {exc}")
            return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await frontend.start()
    log.info("event=grpc_listening version=%s address=%s:%d", __version__, settings.host, frontend.port)
    await repository.start()
    # What is loaded now (modules, sessions, configs) lives as long as the server: keep it out of
    # the garbage collector's full passes, each a ~9 ms pause of every request in flight here.
    gc.collect()
    gc.freeze()
    state.ready = True
    await frontend.set_serving(True)
    ready = [f"{v.name}:{v.version}({v.engine})" for v in repository.ready_versions()]
    log.info("event=server_ready models=%s", ",".join(ready) or "-")

    await stop.wait()
    log.info("event=shutdown_started grace_secs=%.1f", settings.exit_timeout_secs)
    state.ready = False
    await frontend.set_serving(False)
    await frontend.stop(settings.exit_timeout_secs)
    await repository.stop()
    log.info("event=shutdown_complete")
    return 0
