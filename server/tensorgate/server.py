"""One server process, in three phases: startup (frontend listening, models loaded, then ready),
serving until SIGTERM/SIGINT, and shutdown (not ready, drain, stop taking requests, finish the ones
in flight, unload, return 0). A second signal during shutdown, or during startup, exits at once; work
still running ``--exit-timeout-secs`` after the first is abandoned and the process exits 1.

Shutdown loses no request that reached the server. gRPC cancels, without a message, the calls it has
received but not yet handed to the service when it stops (grpc/grpc#41785), so before it stops the
service takes every call gRPC holds: it keeps answering until no new call has come for a moment,
then refuses new ones (UNAVAILABLE, saying why) until those in flight are done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time

from google.protobuf.internal import api_implementation

from tensorgate import __version__
from tensorgate.frontend.grpc_server import GrpcFrontend, PortInUse, TlsError
from tensorgate.frontend.http_server import HttpFrontend
from tensorgate.frontend.loop_lag import LoopLag
from tensorgate.frontend.service import InferenceService, ServerState
from tensorgate.metrics import MetricsEndpoint, VersionMetrics, serve_metrics, thread_cpu_seconds
from tensorgate.repository import ModelVersion, Repository, RepositoryMissing
from tensorgate.settings import Settings, host_port

log = logging.getLogger(__name__)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = ServerState()
        self.repository = Repository(settings)
        self._stop = asyncio.Event()
        self._metrics: MetricsEndpoint | None = None
        self._http: HttpFrontend | None = None
        self._lag = LoopLag()
        self._watchdog: threading.Timer | None = None
        self._signalled_at = 0.0  # time.monotonic() of the first signal
        self._shutdown_status: int | None = None  # shutdown() has returned this exit status

    async def serve(self) -> int:
        """The process's exit status: 0 after a clean shutdown, 1 if it could not start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        frontend = await self.startup()
        if frontend is None:
            return 1
        await self._stop.wait()
        return await self.shutdown(frontend)

    def _on_signal(self, sig: int) -> None:
        if self._stop.is_set():
            # The second signal: a batch that never ends (or a load that hangs) must not keep the
            # process alive. In-flight requests are lost, and the log says so.
            log.warning("event=shutdown_forced signal=%s reason=%s", signal.Signals(sig).name, "second signal")
            logging.shutdown()
            os._exit(128 + sig)
        log.info("event=signal_received signal=%s", signal.Signals(sig).name)
        self._signalled_at = time.monotonic()
        self._stop.set()
        # The exit timeout is a promise, kept even where the loop cannot act: a batch that runs past
        # it, a model load or warmup that has not ended (they run on threads nothing can interrupt).
        self._watchdog = threading.Timer(self.settings.exit_timeout_secs, self._exit_timed_out)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _exit_timed_out(self) -> None:
        status = self._shutdown_status
        if status is None:
            reason = "work still running at the exit timeout was abandoned (requests in flight failed)"
        else:
            # Shutdown is done; what holds the exit is a thread it cannot stop (a model load or its
            # warmup), or nothing but a slow teardown, which keeps the status shutdown gave.
            busy = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
            if not busy:
                logging.shutdown()
                os._exit(status)
            reason = f"threads still running after the shutdown were abandoned (a model load or warmup): {busy}"
        log.error("event=shutdown_timeout exit_timeout_secs=%.1f reason=%s", self.settings.exit_timeout_secs, reason)
        logging.shutdown()
        os._exit(1)

    async def startup(self) -> GrpcFrontend | None:
        """Listen (not ready yet), load the repository, then report ready; None if it cannot listen."""
        settings, state, repository = self.settings, self.state, self.repository
        if settings.drain_delay_secs and settings.drain_delay_secs >= settings.exit_timeout_secs:
            reason = (
                f"--drain-delay-secs ({settings.drain_delay_secs:.1f}) must be shorter than --exit-timeout-secs "
                f"({settings.exit_timeout_secs:.1f}), which counts from the signal and must leave time to finish"
            )
            log.error("event=startup_failed reason=%s", reason)
            return None
        try:
            frontend_service = InferenceService(repository, state, self._lag)
            frontend = GrpcFrontend(settings, frontend_service)
        except (PortInUse, TlsError) as exc:
            log.error("event=startup_failed reason=%s", str(exc))
            return None
        if settings.metrics_port >= 0:
            try:
                self._metrics = serve_metrics(
                    settings.metrics_address or settings.host,
                    settings.metrics_port,
                    lambda: [_version_metrics(v) for v in repository.ready_versions()],
                    state,
                    thread_cpu_seconds(threading.get_ident()),  # this thread runs the event loop
                    interval_ms=settings.metrics_interval_ms,
                    cpu=settings.allow_cpu_metrics,
                    gpu=settings.allow_gpu_metrics,
                )
            except OSError as exc:
                reason = f"cannot serve metrics on port {settings.metrics_port}: {exc}"
                log.error("event=startup_failed reason=%s", reason)
                return None
        await frontend.start()
        if settings.http_port >= 0:
            self._http = HttpFrontend(settings, frontend_service)
            try:
                await self._http.start()
            except OSError as exc:
                reason = f"cannot serve HTTP on {host_port(self._http.host, settings.http_port)}: {exc}"
                log.error("event=startup_failed reason=%s", reason)
                await frontend.stop(0)
                return None
            log.info("event=http_listening address=%s", host_port(self._http.host, self._http.port))
        tls = "mutual" if settings.grpc_tls_client_ca else "on" if settings.grpc_tls_cert else "off"
        address = host_port(frontend.host, frontend.port)  # the port bound (0 picks one)
        log.info("event=grpc_listening version=%s address=%s tls=%s", __version__, address, tls)
        protobuf = api_implementation.Type()
        if protobuf != "upb":
            # e.g. PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in the environment (some packages set it)
            log.warning(
                "event=slow_protobuf implementation=%s reason=%s",
                protobuf,
                "protobuf's C implementation (upb) is not in use: every message parses and serializes several "
                "times slower",
            )
        try:
            await repository.start()
        except RepositoryMissing as exc:
            log.error("event=startup_failed reason=%s", str(exc))
            if self._http is not None:
                await self._http.stop()
            await frontend.stop(0)
            if self._metrics is not None:
                self._metrics.stop()
            return None
        self._lag.start()
        # What is loaded now (modules, sessions, configs) lives as long as the server: keep it out of
        # the garbage collector's full passes, each a pause of every request in flight (bench/RESULTS.md).
        gc.collect()
        gc.freeze()
        state.ready = True
        await frontend.set_serving(True)
        ready = [f"{v.name}:{v.version}({v.engine.value})" for v in repository.ready_versions()]
        log.info("event=server_ready models=%s", ",".join(ready) or "-")
        return frontend

    async def shutdown(self, frontend: GrpcFrontend) -> int:
        """Not ready (health NOT_SERVING), drain, take what gRPC holds, refuse new calls, let those in
        flight finish, unload. The exit status: 0, or 1 if requests still running at the exit timeout
        were abandoned (gRPC cancels them; their runs are stopped)."""
        settings, state = self.settings, self.state
        log.info(
            "event=shutdown_started drain_delay_secs=%.1f exit_timeout_secs=%.1f",
            settings.drain_delay_secs,
            settings.exit_timeout_secs,
        )
        state.ready = False
        await frontend.set_serving(False)
        if settings.drain_delay_secs > 0:
            log.info(
                "event=draining drain_delay_secs=%.1f reason=%s",
                settings.drain_delay_secs,
                "not ready, still answering: requests on their way while endpoints update are not lost",
            )
            await asyncio.sleep(settings.drain_delay_secs)
        # Requests in flight get the exit timeout but a tenth (at most a second), kept for unloading.
        timeout = settings.exit_timeout_secs
        deadline = self._signalled_at + max(0.0, timeout - min(1.0, timeout / 10))
        grpc_stopped: asyncio.Task[None] | None = None
        if settings.drain_delay_secs > 0:
            # The endpoints no longer list this replica, but a client whose connection a Service pinned
            # here still sends on it. gRPC stops listening and sends GOAWAY on every connection now: such a
            # client opens a new connection, to a replica that serves, and gRPC itself retries there a call
            # sent after the GOAWAY (refused here it would fail). Calls in flight go on to the deadline.
            grpc_stopped = asyncio.create_task(frontend.stop(max(0.0, deadline - time.monotonic())))
        # What gRPC already holds reaches the service within moments: answer it, as any request.
        await _until_quiet(state, QUIET_SECS, SETTLE_SECS)
        state.stop_accepting()
        log.info("event=closing in_flight=%d", state.inferring)
        while state.inferring and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await _until_quiet(state, QUIET_SECS, min(SETTLE_SECS, max(0.0, deadline - time.monotonic())))
        abandoned = state.inferring
        if self._http is not None:
            await self._http.stop()
        if grpc_stopped is None:
            # No drain delay: no GOAWAY before the calls gRPC holds have reached the service (a call that
            # arrives as gRPC stops is cancelled by gRPC itself: grpc/grpc#41785).
            await frontend.stop(max(0.0, deadline - time.monotonic()))
        else:
            await grpc_stopped
        await self.repository.stop()
        self._lag.stop()
        if self._metrics is not None:
            self._metrics.stop()
        # The watchdog stays armed: a model load or warmup still running on a thread holds the
        # interpreter's exit (asyncio.run and Python wait for their threads) past the exit timeout.
        if abandoned:
            log.error(
                "event=shutdown_timeout exit_timeout_secs=%.1f requests_abandoned=%d reason=%s",
                timeout,
                abandoned,
                "requests still running at the exit timeout were cancelled",
            )
            self._shutdown_status = 1
            return 1
        log.info("event=shutdown_complete")
        self._shutdown_status = 0
        return 0


QUIET_SECS = 0.05  # no new inference call for this long: gRPC holds no more
SETTLE_SECS = 0.5  # at most this long waiting for that


async def _until_quiet(state: ServerState, quiet: float, limit: float) -> None:
    """Until no inference call has reached the service for ``quiet`` seconds, at most ``limit``."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        seen = state.inference_calls
        await asyncio.sleep(quiet)
        if state.inference_calls == seen:
            return


def _version_metrics(v: ModelVersion) -> VersionMetrics:
    scheduler = v.scheduler
    return VersionMetrics(
        v.name,
        v.version,
        v.stats,
        scheduler.queue_depth,
        scheduler.in_flight,
        v.engine.value,
        v.precision.value,
        v.device,
        v.load_seconds,
    )


async def serve(settings: Settings) -> int:
    return await Server(settings).serve()
