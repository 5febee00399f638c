"""The KServe V2 gRPC service (Triton's ``inference.GRPCInferenceService``) on grpc.aio.

Handlers turn protobuf into calls on the repository and back. A :class:`ServerError` becomes the
gRPC status it names; anything else is our bug: logged with the request id, counted, INTERNAL.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from tensorgate import __version__
from tensorgate.errors import Code, InvalidArgument, NotFound, ServerError, Unavailable, Unimplemented, bounded, clip
from tensorgate.frontend import codec, shared_memory
from tensorgate.frontend.loop_lag import LoopLag
from tensorgate.frontend.shared_memory import SystemSharedMemory
from tensorgate.model_config import RawConfig
from tensorgate.proto import inference_pb2 as pb
from tensorgate.proto import model_config_pb2 as mc
from tensorgate.repository import ModelVersion, Repository
from tensorgate.settings import ControlMode, Restriction, Settings
from tensorgate.stats import Duration, ModelStats

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "tensorgate"
SHUTTING_DOWN = "the server is shutting down and takes no new requests; retry on another replica"
EXTENSIONS = (
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "system_shared_memory",
)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class ServerState:
    """Readiness as the frontend reports it: off until models are loaded, off again on shutdown."""

    def __init__(self) -> None:
        self.ready = False
        self.internal_errors = 0
        self.malformed_messages = 0  # messages that did not parse as their RPC's request
        # Shutdown watches these: inference requests that reached the service, and those in it now.
        self.inference_calls = 0
        self.inferring = 0
        self.closing = asyncio.Event()  # set when shutdown stops taking inference requests

    def stop_accepting(self) -> None:
        self.closing.set()


def _duration(target: pb.StatisticDuration, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns


def _model_statistics(version: ModelVersion) -> pb.ModelStatistics:
    s: ModelStats = version.stats
    out = pb.ModelStatistics(
        name=version.name,
        version=str(version.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
    )
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _duration(getattr(out.inference_stats, field), getattr(s, field))
    out.inference_stats.cache_hit.SetInParent()  # no response cache: always 0, but present, as Triton writes it
    out.inference_stats.cache_miss.SetInParent()
    for size, batch in sorted(s.batches.items()):
        row = out.batch_stats.add(batch_size=size)
        _duration(row.compute_input, batch.compute_input)
        _duration(row.compute_infer, batch.compute_infer)
        _duration(row.compute_output, batch.compute_output)
    return out


def _one_repository(name: str) -> None:
    """tensorgate serves one repository, so (as Triton) a request that names one is refused."""
    if name:
        raise Unimplemented(
            f"'repository_name' specification is not supported (asked for '{clip(name)}'): the server has one "
            "repository; leave the field empty"
        )


def _config_override(value: pb.ModelRepositoryParameter) -> RawConfig:
    """A load request's ``config`` parameter: a model config as a JSON object, in a string_param."""
    if value.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument("invalid value type for load parameter 'config', expected string_param")
    config = mc.ModelConfig()
    try:
        fields = json.loads(value.string_param)
        if not isinstance(fields, dict):
            raise InvalidArgument(
                f"load parameter 'config' must be a model config as a JSON object, not {type(fields).__name__}"
            )
        json_format.ParseDict(fields, config)
    except (json_format.ParseError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"load parameter 'config' is not a valid model config in JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("load parameter 'config' is not a valid model config in JSON: nested too deep") from None
    if config.HasField("model_operations"):
        # A client would name a native library for the server to load and run: only the repository may.
        raise InvalidArgument(
            "load parameter 'config' may not set model_operations (a custom-op library the server would load "
            "and run); put it in the model's config.pbtxt"
        )
    # As in config.pbtxt, a max_batch_size left out is completed from the file (an explicit 0 is kept).
    return RawConfig(config, max_batch_size_given=bool({"max_batch_size", "maxBatchSize"} & set(fields)))


class InferenceService:
    def __init__(self, repository: Repository, state: ServerState, lag: LoopLag | None = None) -> None:
        self.repository = repository
        self.state = state
        self.lag = lag or LoopLag()  # not started: no lag
        self.max_response_bytes = repository.settings.grpc_max_message_bytes
        self.shared_memory = SystemSharedMemory(repository.settings.max_shared_memory_regions)

    # ---- health and metadata ----

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        strict = self.repository.settings.strict_readiness
        return pb.ServerReadyResponse(ready=self.state.ready and (not strict or self.repository.all_ready()))

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.repository.is_ready(request.name, request.version))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        served = self.repository.get(request.name, request.version)
        spec = served.spec
        if request.version:  # as Triton: the version asked for; with none, every ready version
            ready = [served.version]
        else:
            ready = sorted(v.version for v in self.repository.ready_versions() if v.name == request.name)
        response = pb.ModelMetadataResponse(
            name=spec.name, versions=[str(v) for v in ready], platform="onnxruntime_onnx"
        )
        prefix = [-1] if spec.batched else []
        for target, tensors in ((response.inputs, spec.inputs), (response.outputs, spec.outputs)):
            for tensor in tensors.values():
                target.add(name=tensor.name, datatype=tensor.datatype.v2, shape=[*prefix, *tensor.dims])
        return response

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        served = self.repository.get(request.name, request.version)
        response = pb.ModelConfigResponse()
        response.config.MergeFromString(served.spec.config.SerializeToString())
        return response

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        if request.name:
            # Triton's codes and words for a model or version that does not serve: INVALID_ARGUMENT.
            try:
                served = self.repository.get(request.name, request.version)
            except (NotFound, Unavailable):  # unknown, or known and not ready: not available either way
                if request.version and self.repository.is_ready(request.name):
                    raise InvalidArgument(
                        f"requested model version is not available for model '{clip(request.name)}'"
                    ) from None
                raise InvalidArgument(f"requested model '{clip(request.name)}' is not available") from None
            if request.version:
                chosen = [served]
            else:
                chosen = [v for v in self.repository.ready_versions() if v.name == request.name]
        else:
            chosen = self.repository.ready_versions()
        chosen.sort(key=lambda v: (v.name, v.version))
        return pb.ModelStatisticsResponse(model_stats=[_model_statistics(v) for v in chosen])

    # ---- repository ----

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        _one_repository(request.repository_name)
        response = pb.RepositoryIndexResponse()
        for row in self.repository.index(ready_only=request.ready):
            response.models.add(name=row.name, version=row.version, state=row.state, reason=row.reason)
        return response

    def _check_explicit(self, what: str) -> None:
        mode = self.repository.settings.model_control_mode
        if mode is not ControlMode.EXPLICIT:
            raise Unavailable(
                f"explicit model load / unload is not allowed if polling is enabled: {what} needs "
                f"--model-control-mode=explicit (this server runs in mode '{mode.value}')"
            )

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._check_explicit("loading a model")
        _one_repository(request.repository_name)
        override: RawConfig | None = None
        for key, value in request.parameters.items():
            if key == "config":
                override = _config_override(value)
            elif key.startswith("file:"):
                raise Unimplemented("loading model files sent in the request (file: parameters) is not supported")
            else:
                raise InvalidArgument(f"unknown load parameter '{clip(key)}' (supported: config)")
        await self.repository.load(request.model_name, override)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_explicit("unloading a model")
        _one_repository(request.repository_name)
        await self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- shared memory ----

    async def system_shared_memory_status(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        regions = self.shared_memory.status(request.name)
        return pb.SystemSharedMemoryStatusResponse(regions={r.name: r.status() for r in regions})

    async def system_shared_memory_register(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        if not request.name:  # an empty name means every region to Unregister: such a region could not be named
            raise InvalidArgument("'region name' is necessary to register system shared memory region")
        self.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def system_shared_memory_unregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def cuda_shared_memory_status(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:  # none is ever registered (cuda_register)
            raise NotFound(f"Unable to find cuda shared memory region: '{clip(request.name)}'")
        return pb.CudaSharedMemoryStatusResponse()

    async def cuda_shared_memory_register(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> pb.CudaSharedMemoryRegisterResponse:
        shared_memory.cuda_register(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    async def cuda_shared_memory_unregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # none is registered: nothing to do, no error (Triton's)

    # ---- inference ----

    async def model_infer(
        self,
        request: pb.ModelInferRequest,
        context: Any = None,
        *,
        response_limit: int | None = None,
        grpc_parameters: bool = True,
    ) -> pb.ModelInferResponse:
        """One inference. Its response must fit ``response_limit`` bytes: by default a unary gRPC
        message (--grpc-max-message-bytes); 0: no limit (HTTP/REST). ``grpc_parameters``: the request's
        parameters are checked as Triton's gRPC frontend checks them (HTTP/REST checks its own)."""
        state = self.state
        state.inference_calls += 1
        if state.closing.is_set():
            raise Unavailable(SHUTTING_DOWN)
        if grpc_parameters and request.parameters:
            codec.check_request_parameters(request)
        state.inferring += 1
        try:
            served = self.repository.get(request.model_name, request.model_version)
            served.scheduler.admit(self.lag.lag_ns)
            spec = served.spec
            if codec.heavy_request(request, spec):
                # Decoded on a worker thread (many BYTES elements, or much shared memory to copy, would stall
                # the loop); the version chosen above is held meanwhile, so an unload or reload does not turn
                # this request away.
                with served.scheduler.held():
                    decoded = await asyncio.to_thread(codec.decode_request, request, spec, self.shared_memory)
                    outputs = await served.scheduler.infer(decoded, held=True)
            else:
                decoded = codec.decode_request(request, spec, self.shared_memory)
                outputs = await served.scheduler.infer(decoded)
            limit = self.max_response_bytes if response_limit is None else response_limit
            classes, memory = decoded.classes, decoded.output_memory
            if (spec.bytes_outputs or classes or memory) and codec.heavy_response(spec, outputs, classes, memory):
                return await asyncio.to_thread(
                    codec.encode_response, spec, served.version, request.id, outputs, limit, classes, memory
                )
            return codec.encode_response(spec, served.version, request.id, outputs, limit, classes, memory)
        finally:
            state.inferring -= 1

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request is answered in the order the requests came (Triton's order for a model that
        is not decoupled: a request that completes early waits for those before it); errors travel in
        ``error_message`` with the request's id and the stream stays open, and every answer carries
        ``triton_final_response: true``, as Triton does. A message that does not parse is answered too,
        with an error naming its place on the stream.

        Flow control: at most ``--grpc-stream-max-outstanding`` messages of a stream may be unanswered
        (running, queued, or answered but not yet sent because the client does not read); at the
        bound no further message is read from the stream until one is sent, so HTTP/2's flow control
        holds the client's writes. On shutdown no further message is read, and the stream ends with
        UNAVAILABLE once every message read is answered (the status says how many)."""
        state = self.state
        # The answers in the order of the messages, each a future; None: the stream's end.
        answers: asyncio.Queue[asyncio.Future[pb.ModelStreamInferResponse] | None] = asyncio.Queue()
        pending: set[asyncio.Task[pb.ModelStreamInferResponse]] = set()
        slots = asyncio.Semaphore(self.repository.settings.grpc_stream_max_outstanding)
        received = 0
        loop = asyncio.get_running_loop()

        async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                # the stream's message wraps the response in a few bytes more
                limit = self.max_response_bytes - codec.STREAM_WRAPPER_BYTES
                response = pb.ModelStreamInferResponse(
                    infer_response=await self.model_infer(request, response_limit=limit)
                )
            except Exception as exc:
                if isinstance(exc, ServerError):
                    message = exc.message
                else:
                    state.internal_errors += 1
                    log.exception("event=internal_error rpc=ModelStreamInfer request_id=%s", clip(request.id))
                    message = bounded(f"internal error: {exc}")
                response = pb.ModelStreamInferResponse(error_message=message)
                failed = response.infer_response  # which request failed, as Triton says it
                failed.id, failed.model_name, failed.model_version = (
                    request.id,
                    request.model_name,
                    request.model_version,
                )
            response.infer_response.parameters["triton_final_response"].bool_param = True
            return response

        async def read() -> None:
            nonlocal received
            messages = aiter(requests)
            ended = True  # the stream ended (or failed): the last answer is the end; not when cancelled at shutdown
            try:
                while True:
                    await slots.acquire()  # released when an answer has been sent
                    try:
                        raw = await anext(messages)
                    except StopAsyncIteration:
                        break
                    received += 1
                    try:
                        request = _parse(state, pb.ModelInferRequest, raw)
                    except ServerError as exc:
                        unparsed = pb.ModelStreamInferResponse(
                            error_message=f"stream message {received}: {exc.message}"
                        )
                        unparsed.infer_response.parameters["triton_final_response"].bool_param = True
                        refused = loop.create_future()
                        refused.set_result(unparsed)
                        answers.put_nowait(refused)
                        continue
                    task = asyncio.create_task(answer(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    answers.put_nowait(task)
                await _settled(pending)
            except asyncio.CancelledError:
                ended = False
                raise
            finally:
                if ended:
                    answers.put_nowait(None)

        ended_by_shutdown = asyncio.Event()

        async def close_on_shutdown(reader: asyncio.Task[None]) -> None:
            await state.closing.wait()
            # Read no further message: one read from here on would be answered after the end below.
            reader.cancel()
            await _settled(pending)
            ended_by_shutdown.set()
            answers.put_nowait(None)

        try:
            check_allowed(restriction_of(self.repository.settings, "ModelStreamInfer"), context)
        except ServerError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        reader = asyncio.create_task(read())
        helpers = (reader, asyncio.create_task(close_on_shutdown(reader)))
        try:
            while (item := await answers.get()) is not None:
                yield await item
                slots.release()
        finally:
            for task in (*helpers, *pending):
                task.cancel()
        if ended_by_shutdown.is_set():
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(
                f"{SHUTTING_DOWN}; every message received on this stream was answered ({received} received)"
            )

    # ---- not implemented ----

    async def unimplemented(self, request: Message, context: Any) -> Message:
        raise Unimplemented(unsupported_extension(type(request).__name__.removesuffix("Request")))


def unsupported_extension(what: str) -> str:
    """The answer to one of Triton's extensions tensorgate does not serve (an RPC, or an HTTP path)."""
    return f"{what} is not supported by tensorgate yet (trace and log settings)"


# Which of Triton's protocol groups each RPC is in (for --grpc-restricted-protocol).
GROUPS: dict[str, str] = {
    **dict.fromkeys(("ServerLive", "ServerReady", "ModelReady"), "health"),
    **dict.fromkeys(("ServerMetadata", "ModelMetadata"), "metadata"),
    **dict.fromkeys(("ModelInfer", "ModelStreamInfer"), "inference"),
    **{
        f"{kind}SharedMemory{verb}": "shared-memory"
        for kind in ("System", "Cuda")
        for verb in ("Status", "Register", "Unregister")
    },
    "ModelConfig": "model-config",
    **dict.fromkeys(("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"), "model-repository"),
    "ModelStatistics": "statistics",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}


async def _settled(tasks: set[asyncio.Task[Any]]) -> None:
    """Until every task of a set that may still grow has ended. Cancelling the wait leaves the tasks
    running (asyncio.wait, not gather, which would cancel them): shutdown cancels a stream's reader
    while it waits here for the answers of a half-closed stream, and those answers must still go."""
    while tasks:
        await asyncio.wait(list(tasks))


def restriction_of(settings: Settings, rpc: str) -> Restriction | None:
    """The --grpc-restricted-protocol restriction that covers ``rpc``, if any."""
    restriction = settings.grpc_restricted_protocol
    return restriction if restriction is not None and GROUPS[rpc] in restriction.protocols else None


def check_allowed(restriction: Restriction | None, context: Any) -> None:
    """UNAVAILABLE unless the call carries the restriction's header and value (compared in constant
    time), as Triton answers a restricted protocol."""
    if restriction is None:
        return
    sent = [v for k, v in (context.invocation_metadata() or ()) if k == restriction.key]
    given = sent[0] if sent and isinstance(sent[0], str) else ""
    if not hmac.compare_digest(given.encode(), restriction.value.encode()):
        raise ServerError(
            f"This protocol is restricted, expecting header '{restriction.key}' with its value", Code.UNAVAILABLE
        )


def _unary(
    state: ServerState,
    handler: Callable[[Req, Any], Awaitable[Resp]],
    request_type: type[Req],
    response_type: type[Resp],
    restriction: Restriction | None = None,
) -> Callable[[bytes, grpc.aio.ServicerContext[bytes, Resp]], Awaitable[Resp]]:
    """Wrap a handler: refuse a call its restriction does not allow, parse the request here (a message
    that does not parse is INVALID_ARGUMENT, not gRPC's UNKNOWN with a Python exception), and turn
    errors into statuses (set, not raised: cheaper than abort)."""

    async def call(raw: bytes, context: grpc.aio.ServicerContext[bytes, Resp]) -> Resp:
        request: Req | None = None
        try:
            check_allowed(restriction, context)
            request = _parse(state, request_type, raw)
            response: Resp = await handler(request, context)
            return response
        except ServerError as exc:
            context.set_code(grpc.StatusCode[exc.code.value])
            context.set_details(exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.internal_errors += 1
            request_id = clip(getattr(request, "id", ""))  # a client's string: cut, as in every message
            log.exception("event=internal_error rpc=%s request_id=%s", handler.__name__, request_id)
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details(bounded(f"internal error: {exc}"))
        empty: Resp = response_type()
        return empty

    return call


def _parse(state: ServerState, message_type: type[Req], raw: bytes) -> Req:
    try:
        message: Req = message_type.FromString(raw)
    except (DecodeError, UnicodeDecodeError):  # (protobuf's pure-Python parser: bad UTF-8 in a string field)
        state.malformed_messages += 1
        raise InvalidArgument(
            f"the message ({len(raw)} bytes) is not a valid inference.{message_type.DESCRIPTOR.name}; "
            "check that the client speaks the KServe V2 / Triton protocol"
        ) from None
    return message


def generic_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    """Register every RPC under Triton's method paths (/inference.GRPCInferenceService/...)."""
    unary: dict[str, tuple[Callable[..., Awaitable[Any]], type[Message], type[Message]]] = {
        "ServerLive": (service.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (service.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (service.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (service.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (service.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": (service.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelConfig": (service.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": (service.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "RepositoryIndex": (service.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "RepositoryModelLoad": (
            service.repository_model_load,
            pb.RepositoryModelLoadRequest,
            pb.RepositoryModelLoadResponse,
        ),
        "RepositoryModelUnload": (
            service.repository_model_unload,
            pb.RepositoryModelUnloadRequest,
            pb.RepositoryModelUnloadResponse,
        ),
    }
    for kind in ("System", "Cuda"):
        for verb in ("Status", "Register", "Unregister"):
            rpc = f"{kind}SharedMemory{verb}"
            handler = getattr(service, f"{kind.lower()}_shared_memory_{verb.lower()}")
            unary[rpc] = (handler, getattr(pb, f"{rpc}Request"), getattr(pb, f"{rpc}Response"))
    unary["TraceSetting"] = (service.unimplemented, pb.TraceSettingRequest, pb.TraceSettingResponse)
    unary["LogSettings"] = (service.unimplemented, pb.LogSettingsRequest, pb.LogSettingsResponse)

    handlers: dict[str, grpc.RpcMethodHandler] = {
        rpc: grpc.unary_unary_rpc_method_handler(
            _unary(service.state, fn, req, resp, restriction_of(service.repository.settings, rpc)),
            request_deserializer=None,  # bytes: _unary parses them, so a bad message gets a clear status
            response_serializer=resp.SerializeToString,
        )
        for rpc, (fn, req, resp) in unary.items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        service.model_stream_infer,
        request_deserializer=None,  # bytes: each message is parsed (and a bad one answered) in the handler
        response_serializer=pb.ModelStreamInferResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
