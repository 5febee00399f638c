"""Builds the grpc.aio server: the V2 inference service and the standard gRPC health service."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2

from tensorgate.frontend.service import InferenceService, ServerState, generic_handler
from tensorgate.settings import Settings, host_port

log = logging.getLogger(__name__)

# The service names that ask whether the process is alive; every other name asks whether it is ready.
LIVENESS_NAMES = frozenset({"liveness", "live"})
_LIVENESS = "liveness"
_READINESS = ""


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1`` for whatever service name a probe sends (as Triton answers): ``liveness``
    (or ``live``) is SERVING from the moment the port listens until the process exits, loads and
    drain included; any other name (``""``, the inference service, ``readiness``...) is SERVING while
    the server is ready: models loaded at start, not shutting down.

    Requests reach it through :func:`health_handler`, which maps every name to one of the two.
    """

    _ended = False  # the server is stopping: every Watch stream has been told the last status and ends

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """The status now, then each change, until the client goes or the server stops. (The
        library's own Watch drops a service's condition when any one of its watchers leaves, so the
        others would hear of no later change; here every name is one of two, each with its one
        condition for good.)"""
        name = request.service
        condition = self._server_watchers[name]
        last = None
        async with condition:
            while True:
                status = self._server_status.get(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                if self._ended:
                    return
                await condition.wait()

    async def end_watches(self) -> None:
        """At shutdown, before gRPC stops: end every Watch stream (after its last status), as an open
        one would otherwise hold the stop until the exit timeout."""
        self._ended = True
        for name in (_LIVENESS, _READINESS):
            condition = self._server_watchers[name]
            async with condition:
                condition.notify_all()


def health_handler(
    health_servicer: Health, state: ServerState, models_ready: Callable[[], bool] = lambda: True
) -> grpc.GenericRpcHandler:
    """The health service's methods on raw bytes, parsed here: a message that does not parse gets
    INVALID_ARGUMENT (and is counted), not gRPC's UNKNOWN with a Python exception's text; the
    service name it asks for becomes liveness or readiness. A readiness Check is also NOT_SERVING
    while ``models_ready`` says no (--strict-readiness: every model asked to load serving), as
    ServerReady is."""

    async def parse(raw: bytes, context: Any) -> health_pb2.HealthCheckRequest:
        try:
            request: health_pb2.HealthCheckRequest = health_pb2.HealthCheckRequest.FromString(raw)
        except (DecodeError, UnicodeDecodeError):  # (the second: protobuf's pure-Python parser, bad UTF-8)
            state.malformed_messages += 1
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the message ({len(raw)} bytes) is not a valid grpc.health.v1.HealthCheckRequest",
            )
        return _canonical(request)

    async def check(raw: bytes, context: Any) -> Any:
        request = await parse(raw, context)
        response = await health_servicer.Check(request, context)
        if (
            request.service == _READINESS
            and response.status == health_pb2.HealthCheckResponse.SERVING
            and not models_ready()
        ):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return response

    async def watch(raw: bytes, context: Any) -> None:
        await health_servicer.Watch(await parse(raw, context), context)

    serialize = health_pb2.HealthCheckResponse.SerializeToString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(check, response_serializer=serialize),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, response_serializer=serialize),
    }
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", handlers)


def _canonical(request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckRequest:
    name = _LIVENESS if request.service in LIVENESS_NAMES else _READINESS
    return health_pb2.HealthCheckRequest(service=name)


class PortInUse(RuntimeError):
    pass


class TlsError(RuntimeError):
    """The TLS settings cannot be used (missing pair, unreadable file); the message says which."""


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from --grpc-tls-cert/--grpc-tls-key (mutual TLS with --grpc-tls-client-ca),
    read again at the next handshake after a file changes; None: plaintext."""
    cert, key, client_ca = settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsError("--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key")
        return None
    if cert is None or key is None:
        raise TlsError("TLS needs both --grpc-tls-cert and --grpc-tls-key")
    files = TlsFiles(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.read(), files.changed, require_client_authentication=client_ca is not None
    )


class TlsFiles:
    """The PEM files of the TLS setup, watched: a new certificate (a renewal by cert-manager, a
    rotated CA) is taken at the next connection's handshake without a restart. A change is taken
    only once the certificate and key match, so a renewal caught half-written keeps the old pair."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = (cert, key, client_ca)
        self._stamp = self._stat()
        self._refused = self._stamp  # the last change found unusable (logged once)

    def _stat(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in self.paths:
            try:
                info = path.stat() if path is not None else None
            except OSError:
                info = None
            stamps.append((info.st_mtime_ns, info.st_size) if info is not None else None)
        return tuple(stamps)

    def read(self) -> grpc.ServerCertificateConfiguration:
        """The files' configuration now; TlsError if they cannot be read or do not match."""
        cert, key, client_ca = self.paths
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            pair = (key.read_bytes(), cert.read_bytes())
        except OSError as exc:  # ssl.SSLError is an OSError
            raise TlsError(f"cannot use the TLS files: {exc}") from None
        roots = None
        if client_ca is not None:
            # Checked here as the pair is: gRPC would take an empty or broken CA file and refuse every
            # client (or, at start, fail with a misleading bind error; on a reload, keep the old one).
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=client_ca)
                roots = client_ca.read_bytes()
            except OSError as exc:
                raise TlsError(f"cannot use the client CA file {client_ca} (--grpc-tls-client-ca): {exc}") from None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def changed(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher, called at each handshake: the new configuration if a file changed."""
        stamp = self._stat()
        if stamp == self._stamp or stamp == self._refused:
            return None
        try:
            configuration = self.read()
        except TlsError as exc:
            self._refused = stamp
            log.warning("event=tls_reload_failed reason=%s keeping=%s", str(exc), "the certificate in use")
            return None
        self._stamp = stamp
        log.info("event=tls_reloaded cert=%s", self.paths[0])
        return configuration


class GrpcFrontend:
    def __init__(self, settings: Settings, service: InferenceService) -> None:
        limit = settings.grpc_max_message_bytes
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if settings.grpc_so_reuseport else 0),
            ("grpc.keepalive_time_ms", settings.grpc_keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", settings.grpc_keepalive_timeout_ms),
        ]
        if settings.grpc_max_connection_age_ms > 0:
            options.append(("grpc.max_connection_age_ms", settings.grpc_max_connection_age_ms))
        if settings.grpc_max_pending_calls > 0:
            # gRPC core's cap on calls that arrived but that the server has not taken yet (random
            # early drops between the two limits; its defaults are 1000 and 3000).
            pending = settings.grpc_max_pending_calls
            options += [
                ("grpc.server.max_pending_requests", pending),
                ("grpc.server.max_pending_requests_hard_limit", 3 * pending),
            ]
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers((generic_handler(service),))
        self.health = Health()
        strict = settings.strict_readiness
        models_ready = (lambda: service.repository.all_ready()) if strict else (lambda: True)
        self.server.add_generic_rpc_handlers((health_handler(self.health, service.state, models_ready),))
        self.host = settings.grpc_address or settings.host
        self.address = host_port(self.host, settings.grpc_port)
        address = self.address
        credentials = server_credentials(settings)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise PortInUse(f"cannot listen on {address}: {exc}") from None
        if self.port == 0:
            raise PortInUse(f"cannot listen on {address} (port in use?)")

    async def start(self) -> None:
        await self.set_serving(False)
        await self.health.set(_LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        """Readiness, as every service name but liveness reports it."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(_READINESS, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls and wait up to ``grace`` seconds for those in flight (health Watch
        streams end first: they never end by themselves)."""
        await self.health.end_watches()
        await self.server.stop(grace)
