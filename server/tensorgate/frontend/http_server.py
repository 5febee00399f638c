"""The KServe V2 HTTP/REST API (with Triton's binary tensor data, statistics and model repository
extensions) on aiohttp, on the event loop gRPC uses.

Every route turns its request into the gRPC service's protobuf request and calls the same
:class:`InferenceService` method, so both faces share one set of checks and error messages, one
repository, and one scheduler per model: HTTP and gRPC requests batch together. A
:class:`ServerError` becomes Triton's HTTP status for it and a ``{"error": "..."}`` body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from tensorgate import accept_encoding
from tensorgate.errors import Code, InvalidArgument, ServerError, Unimplemented, bounded, clip
from tensorgate.frontend import http_codec
from tensorgate.frontend.service import InferenceService, check_allowed, restriction_of, unsupported_extension
from tensorgate.proto import inference_pb2 as pb
from tensorgate.settings import Settings

log = logging.getLogger(__name__)

# Triton's HTTP status for each error (its HttpCodeFromError): everything else is 400.
HTTP_STATUS: dict[Code, int] = {
    Code.NOT_FOUND: 404,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 503,  # a full queue is UNAVAILABLE in Triton
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

# Content-Encoding of a request body: zlib's window bits for each (gzip and deflate as Triton takes them).
_DECODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}
# Triton's other HTTP endpoints, which tensorgate does not serve: answered as their gRPC RPCs are.
_UNSUPPORTED = {  # path -> an RPC of the same protocol group (for --grpc-restricted-protocol)
    "/v2/trace/setting": "TraceSetting",
    "/v2/logging": "LogSettings",
}


class _Headers:
    """The request's headers where the restriction check expects gRPC metadata."""

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(k.lower(), v) for k, v in self._request.headers.items()]


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


def _json(value: object, status: int = 200) -> web.Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json")


class HttpFrontend:
    def __init__(self, settings: Settings, service: InferenceService) -> None:
        self.settings = settings
        self.service = service
        self.host = settings.http_address or settings.host
        self.port = settings.http_port
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=settings.grpc_max_message_bytes, middlewares=[_json_errors])
        self._add_routes(app)
        self.app = app

    def _add_routes(self, app: web.Application) -> None:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        get, post = "GET", "POST"
        routes: list[tuple[str, str, str, Handler]] = [
            (get, "/v2", "ServerMetadata", self.server_metadata),
            (get, "/v2/health/live", "ServerLive", self.server_live),
            (get, "/v2/health/ready", "ServerReady", self.server_ready),
            (get, "/v2/models/stats", "ModelStatistics", self.model_statistics),
            (post, "/v2/repository/index", "RepositoryIndex", self.repository_index),
            (post, "/v2/repository/models/{model}/load", "RepositoryModelLoad", self.load),
            (post, "/v2/repository/models/{model}/unload", "RepositoryModelUnload", self.unload),
        ]
        for prefix in (model, versioned):
            routes += [
                (get, prefix, "ModelMetadata", self.model_metadata),
                (get, f"{prefix}/ready", "ModelReady", self.model_ready),
                (get, f"{prefix}/config", "ModelConfig", self.model_config),
                (get, f"{prefix}/stats", "ModelStatistics", self.model_statistics),
                (post, f"{prefix}/infer", "ModelInfer", self.infer),
            ]
        for kind in ("system", "cuda"):  # Triton's /v2/{kind}sharedmemory[/region/{name}]/{verb}
            for prefix in (f"/v2/{kind}sharedmemory", f"/v2/{kind}sharedmemory/region/{{region}}"):
                for method, verb in ((get, "status"), (post, "register"), (post, "unregister")):
                    rpc = f"{kind.capitalize()}SharedMemory{verb.capitalize()}"
                    routes.append((method, f"{prefix}/{verb}", rpc, getattr(self, f"{kind}_shared_memory_{verb}")))
        for method, path, rpc, handler in routes:
            app.router.add_route(method, path, self._wrap(rpc, handler))
        # Triton's extensions tensorgate does not serve: 501 with the reason, behind the restriction of
        # their protocol group as over gRPC (a restricted group answers 403 first).
        for prefix, rpc in _UNSUPPORTED.items():
            for path in (prefix, prefix + "/{rest:.*}"):
                app.router.add_route("*", path, self._wrap(rpc, _unsupported))
        app.router.add_route("*", f"{model}/trace/setting", self._wrap("TraceSetting", _unsupported))

    def _wrap(self, rpc: str, handler: Handler) -> Handler:
        """Refuse what --grpc-restricted-protocol restricts (the same groups as over gRPC), and turn
        errors into Triton's statuses."""
        restriction = restriction_of(self.settings, rpc)
        state = self.service.state

        async def call(request: web.Request) -> web.StreamResponse:
            response = await answer(request)
            if not state.ready and not response.prepared:
                # Shutting down (or not yet serving): the client's next request opens a new connection,
                # which the Service sends to a replica that is ready, instead of this kept-alive one.
                response.force_close()
            return response

        async def answer(request: web.Request) -> web.StreamResponse:
            if restriction is not None:
                try:
                    check_allowed(restriction, _Headers(request))
                except ServerError:  # Triton's HTTP answer to a restricted API: 403
                    return _error(f"This API is restricted, expecting header '{restriction.key}'", 403)
            try:
                return await handler(request)
            except ServerError as exc:
                return _error(exc.message, HTTP_STATUS.get(exc.code, 400))
            except web.HTTPRequestEntityTooLarge:
                limit = self.settings.grpc_max_message_bytes
                # The connection closes: read on, the rest of the body (or of its decompression) would be
                # read only to be thrown away, on the event loop every request shares.
                too_large = _error(f"the request body exceeds {limit} bytes (--grpc-max-message-bytes)", 413)
                too_large.force_close()
                return too_large
            except web.RequestPayloadError as exc:
                # The body cannot be decoded as sent (its Content-Encoding, chunks or length): the client's fault.
                return _error(bounded(f"the request body cannot be read: {' '.join(str(exc).split())}"), 400)
            except ConnectionResetError:
                # The client hung up before its whole body came: no server fault, and the answer (that
                # aiohttp then fails to write, and drops the connection) reaches nobody.
                log.debug("event=client_disconnected rpc=%s protocol=http path=%s", rpc, request.path)
                return _error("the connection closed before the whole request body arrived", 400)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.internal_errors += 1
                log.exception("event=internal_error rpc=%s protocol=http path=%s", rpc, request.path)
                return _error(bounded(f"internal error: {exc}"), 500)

        return call

    async def _body(self, request: web.Request) -> bytes:
        """The request body, decompressed as its Content-Encoding says (gzip, deflate), on a thread and
        to at most --grpc-max-message-bytes: a small compressed body may hold gigabytes (413, connection
        closed), which must not be inflated on the event loop every gRPC and HTTP call shares."""
        raw = await request.read()  # (aiohttp's own decompression is off: see start())
        transfer = request.headers.get("Transfer-Encoding")
        if transfer is not None and [c.strip().lower() for c in transfer.split(",")] != ["chunked"]:
            # aiohttp undoes only chunked: the body would stay compressed (as Triton, which refuses them too)
            raise InvalidArgument(
                f"Unsupported HTTP header: Transfer-Encoding '{clip(transfer)}' (only chunked is supported; "
                "send a compressed body with Content-Encoding)"
            )
        coding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if coding in ("", "identity"):
            return raw
        wbits = _DECODINGS.get(coding)
        if wbits is None:
            raise InvalidArgument(
                f"unsupported Content-Encoding '{clip(coding)}' of the request body (supported: gzip, deflate)"
            )
        limit = self.settings.grpc_max_message_bytes
        return await asyncio.to_thread(_inflate, raw, wbits, limit)

    # ---- health and metadata ----

    async def server_live(self, request: web.Request) -> web.Response:
        live = await self.service.server_live(pb.ServerLiveRequest(), None)
        return web.Response(status=200 if live.live else 400)

    async def server_ready(self, request: web.Request) -> web.Response:
        ready = await self.service.server_ready(pb.ServerReadyRequest(), None)
        return web.Response(status=200 if ready.ready else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        ready = await self.service.model_ready(pb.ModelReadyRequest(name=name, version=version), None)
        return web.Response(status=200 if ready.ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        response = await self.service.server_metadata(pb.ServerMetadataRequest(), None)
        return _json(http_codec.message_json(response))

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        response = await self.service.model_metadata(pb.ModelMetadataRequest(name=name, version=version), None)
        return _json(http_codec.message_json(response))

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        response = await self.service.model_config(pb.ModelConfigRequest(name=name, version=version), None)
        return _json(http_codec.message_json(response.config))

    async def model_statistics(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        query = pb.ModelStatisticsRequest(name=name, version=version)
        response = await self.service.model_statistics(query, None)
        return _json(http_codec.message_json(response))

    # ---- repository ----

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ready = False
        if body.strip():
            parsed = await _off_loop(len(body) > http_codec.JSON_ON_LOOP, lambda: http_codec.parse_json(body))
            if not isinstance(parsed, dict) or not isinstance(parsed.get("ready", False), bool):
                raise InvalidArgument(
                    "the index request must be a JSON object whose 'ready', if given, is true or false"
                )
            ready = parsed.get("ready", False)
        response = await self.service.repository_index(pb.RepositoryIndexRequest(ready=ready), None)
        rows = [http_codec.message_json(m) for m in response.models]
        for row in rows:  # as Triton's index: a reason only where there is one
            if not row.get("reason"):
                row.pop("reason", None)
        return _json(rows)

    async def load(self, request: web.Request) -> web.Response:
        query = pb.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        body = await self._body(request)
        params = await _off_loop(len(body) > http_codec.JSON_ON_LOOP, lambda: http_codec.load_parameters(body))
        for key, value in params.items():
            query.parameters[key].string_param = value
        await self.service.repository_model_load(query, None)
        return _json({})

    async def unload(self, request: web.Request) -> web.Response:
        await self._body(request)
        query = pb.RepositoryModelUnloadRequest(model_name=request.match_info["model"])
        await self.service.repository_model_unload(query, None)
        return _json({})

    # ---- shared memory ----

    async def system_shared_memory_status(self, request: web.Request) -> web.Response:
        query = pb.SystemSharedMemoryStatusRequest(name=request.match_info.get("region", ""))
        response = await self.service.system_shared_memory_status(query, None)
        return _json([http_codec.message_json(response.regions[name]) for name in sorted(response.regions)])

    async def system_shared_memory_register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = request.match_info.get("region", "")
        if not name:
            raise InvalidArgument("'region name' is necessary to register system shared memory region")
        key, offset, byte_size = http_codec.register_body(body)
        query = pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=byte_size)
        await self.service.system_shared_memory_register(query, None)
        return _json({})

    async def system_shared_memory_unregister(self, request: web.Request) -> web.Response:
        await self._body(request)
        query = pb.SystemSharedMemoryUnregisterRequest(name=request.match_info.get("region", ""))
        await self.service.system_shared_memory_unregister(query, None)
        return _json({})

    async def cuda_shared_memory_status(self, request: web.Request) -> web.Response:
        query = pb.CudaSharedMemoryStatusRequest(name=request.match_info.get("region", ""))
        await self.service.cuda_shared_memory_status(query, None)
        return _json([])  # none is ever registered

    async def cuda_shared_memory_register(self, request: web.Request) -> web.Response:
        await self._body(request)
        query = pb.CudaSharedMemoryRegisterRequest(name=request.match_info.get("region", ""))
        await self.service.cuda_shared_memory_register(query, None)
        return _json({})

    async def cuda_shared_memory_unregister(self, request: web.Request) -> web.Response:
        await self._body(request)
        query = pb.CudaSharedMemoryUnregisterRequest(name=request.match_info.get("region", ""))
        await self.service.cuda_shared_memory_unregister(query, None)
        return _json({})

    # ---- inference ----

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        body = await self._body(request)
        length = request.headers.get(http_codec.HEADER_LENGTH)
        if http_codec.is_raw_request(length):
            spec = self.service.repository.get(name, version).spec
            query, choice = http_codec.raw_request(name, version, body, spec)
        else:
            heavy = http_codec.heavy_request(body, length)
            query, choice = await _off_loop(heavy, lambda: http_codec.infer_request(name, version, body, length))
        response = await self.service.model_infer(query, response_limit=0, grpc_parameters=False)
        heavy = http_codec.heavy_response(response, choice)
        payload, header_length = await _off_loop(heavy, lambda: http_codec.infer_response(response, choice))
        if header_length is None:
            answer = web.Response(body=payload, content_type="application/json")
        else:
            answer = web.Response(
                body=payload,
                content_type="application/octet-stream",
                headers={http_codec.HEADER_LENGTH: str(header_length)},
            )
        coding = accept_encoding.choose(request.headers.get("Accept-Encoding", ""), ("gzip", "deflate"))
        if coding is not None:
            # gzip or deflate as the client takes them (Triton's response compression); aiohttp compresses a
            # large body on a thread. Inference-Header-Content-Length counts the JSON before compression.
            answer.enable_compression(web.ContentCoding(coding))
        return answer

    # ---- lifecycle ----

    async def start(self) -> None:
        """Listen; OSError if the address cannot be bound."""
        # Requests in flight at cleanup get the shutdown's grace; the exit timeout bounds it anyway.
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.settings.exit_timeout_secs,
            auto_decompress=False,  # bodies are decompressed off the loop and bounded (_body)
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses: list[Any] = runner.addresses
        self.port = int(addresses[0][1])

    async def stop(self) -> None:
        """Stop listening, let the requests in flight finish, close the connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    """``raw`` decompressed, at most ``limit`` bytes (HTTPRequestEntityTooLarge past it); deflate may
    come with zlib's header (RFC 9110) or raw, as some clients send it."""
    if not raw:  # an empty body holds no compressed data to read (a bodiless POST, whatever its headers)
        return raw
    for bits in (wbits, -zlib.MAX_WBITS) if wbits == zlib.MAX_WBITS else (wbits,):
        parts: list[bytes] = []
        size, rest = 0, raw
        try:
            while True:  # gzip: one member after another (RFC 1952), the whole body within the limit
                inflater = zlib.decompressobj(bits)
                part = inflater.decompress(rest, limit + 1 - size)
                size += len(part)
                parts.append(part)
                if size > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                if not inflater.eof:
                    raise InvalidArgument("the request body cannot be read: its compressed data ends early")
                rest = inflater.unused_data
                if not rest:
                    return b"".join(parts)
                if bits != _DECODINGS["gzip"]:  # only gzip comes in members
                    raise InvalidArgument("the request body cannot be read: data follows its compressed stream")
        except zlib.error as exc:
            error = exc
    raise InvalidArgument(
        bounded(f"the request body cannot be read: it does not decode as its Content-Encoding says ({error})")
    )


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own answers (no such path, a method the path does not take) as Triton's: JSON errors."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _error("Not Found", 404)
    except web.HTTPMethodNotAllowed as exc:
        refused = _error("Method Not Allowed", 405)
        refused.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return refused


async def _unsupported(request: web.Request) -> web.Response:
    raise Unimplemented(unsupported_extension(request.path))


async def _off_loop(heavy: bool, work: Callable[[], T]) -> T:
    """``work()``, on a thread when ``heavy`` (large JSON): the event loop serves every other call meanwhile."""
    return await asyncio.to_thread(work) if heavy else work()


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info.get("model", ""), request.match_info.get("version", "")
