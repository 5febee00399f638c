"""A bare grpc.aio echo of bench's ``identity`` model: the peer baseline for tensorgate's identity numbers.

    python bench/echo_server.py PORT [MODEL.onnx]

Serves ``inference.GRPCInferenceService`` on 127.0.0.1:PORT with no tensorgate model code: handlers
registered by hand with ``grpc.method_handlers_generic_handler``, only the generated protobuf messages
imported. ModelInfer decodes ``raw_input_contents[0]`` with ``np.frombuffer`` and answers it back with
``.tobytes()`` (the "bare grpc.aio echo" of shared/notes/grpc-overhead.md), so it measures what any
Python gRPC server costs on the machine of the day. One model, ``identity``: FP32 [-1, 16] in
(INPUT0) and out (OUTPUT0), max_batch_size 64, like bench/make_models.py's.

With MODEL.onnx (a model file of bench/make_models.py's repository, REPO/NAME/1/model.onnx: identity, mlp, ...),
it serves that model, named NAME, instead: each request's array goes through ONNX Runtime's ``InferenceSession.run``
on the event loop and the run's output is answered, with tensorgate's CPU session settings (all graph
optimizations, ONNX Runtime's default intra-op threads, spinning off); the input and output dimensions are the
file's. That is the echo plus the model's run at the request's batch and nothing else of a server: the most a
server that runs the model on its loop can serve (bench/account.py's "echo + ONNX Runtime run" variant, and
bench/run.py's bound rows).

Also answered: ServerLive/ServerReady/ModelReady (so clients can wait for it), ServerMetadata with no
extensions (so perf_analyzer does not ask for statistics), ModelMetadata, ModelConfig, and
ModelStatistics with bare counters (so bench/run.py can divide server CPU by requests; nothing else
is timed). ``grpc.so_reuseport`` is 0, so a leftover server cannot share the port. SIGTERM or SIGINT
stops it (1 s grace) with exit status 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message
from tensorgate.proto import inference_pb2 as pb
from tensorgate.proto import model_config_pb2 as mc

SERVICE_NAME = "inference.GRPCInferenceService"
MODEL = "identity"
VERSION = "1"
INPUT = "INPUT0"
OUTPUT = "OUTPUT0"
DIMS: tuple[int, ...] = (16,)
MAX_BATCH_SIZE = 64


def _dims(shape: list[Any]) -> tuple[int, ...]:
    """An ONNX tensor's dimensions after the batch one (make_models writes them fixed)."""
    return tuple(int(d) for d in shape[1:])


class Echo:
    """The handlers, and the only state: how many infer requests were answered."""

    def __init__(self, model_file: str | None = None) -> None:
        self.requests = 0
        self.session: Any = None  # onnxruntime.InferenceSession with a model file
        self.model, self.in_dims, self.out_dims = MODEL, DIMS, DIMS
        if model_file is not None:
            import onnxruntime as ort  # only then: the bare echo loads nothing it does not use

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(model_file, sess_options=options, providers=["CPUExecutionProvider"])
            self.model = Path(model_file).resolve().parent.parent.name
            self.in_dims = _dims(self.session.get_inputs()[0].shape)
            self.out_dims = _dims(self.session.get_outputs()[0].shape)
        self.statistics_calls = 0
        self.config = mc.ModelConfig(
            name=self.model,
            platform="onnxruntime_onnx",
            backend="onnxruntime",
            max_batch_size=MAX_BATCH_SIZE,
            input=[mc.ModelInput(name=INPUT, data_type=mc.TYPE_FP32, dims=self.in_dims)],
            output=[mc.ModelOutput(name=OUTPUT, data_type=mc.TYPE_FP32, dims=self.out_dims)],
        )

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self.model)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="bench-echo", version="0")  # no extensions

    async def _check_model(self, name: str, context: Any) -> None:
        if name != self.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}'")

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        await self._check_model(request.name, context)
        response = pb.ModelMetadataResponse(name=self.model, versions=[VERSION], platform="onnxruntime_onnx")
        response.inputs.add(name=INPUT, datatype="FP32", shape=[-1, *self.in_dims])
        response.outputs.add(name=OUTPUT, datatype="FP32", shape=[-1, *self.out_dims])
        return response

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        await self._check_model(request.name, context)
        return pb.ModelConfigResponse(config=self.config)

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        self.statistics_calls += 1
        stats = pb.ModelStatistics(
            name=self.model, version=VERSION, inference_count=self.requests, execution_count=self.requests
        )
        stats.inference_stats.success.count = self.requests
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self.requests += 1
        data = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
        response = pb.ModelInferResponse(model_name=self.model, model_version=VERSION, id=request.id)
        tensor = response.outputs.add(name=OUTPUT, datatype="FP32")
        if self.session is not None:
            data = self.session.run([OUTPUT], {INPUT: data.reshape(-1, *self.in_dims)})[0]
            tensor.shape.extend(data.shape)
        else:
            tensor.shape.extend(request.inputs[0].shape)
        response.raw_output_contents.append(data.tobytes())
        return response


def generic_handler(echo: Echo) -> grpc.GenericRpcHandler:
    unary: dict[str, tuple[Callable[[Any, Any], Awaitable[Message]], type[Message], type[Message]]] = {
        "ServerLive": (echo.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (echo.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (echo.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (echo.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (echo.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": (echo.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": (echo.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "ModelInfer": (echo.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
    }
    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
        for rpc, (fn, req, resp) in unary.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


async def serve(port: int, model_file: str | None = None) -> int:
    echo = Echo(model_file)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((generic_handler(echo),))
    address = f"127.0.0.1:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        print(f"echo: cannot listen on {address}: {exc}", file=sys.stderr)
        return 1
    if bound == 0:
        print(f"echo: cannot listen on {address}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    runs = f", each request through ONNX Runtime ({model_file})" if model_file is not None else ""
    print(f"echo: serving {echo.model} on {address}{runs}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(1.0)
    print(
        f"echo: stopped after {echo.requests} infer requests, {echo.statistics_calls} statistics calls",
        file=sys.stderr,
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or not args[0].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    return asyncio.run(serve(int(args[0]), args[1] if len(args) == 2 else None))


if __name__ == "__main__":
    sys.exit(main())
