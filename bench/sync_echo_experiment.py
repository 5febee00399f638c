"""An experiment, not a server: bench's echo with one ONNX Runtime run per request, on grpc.aio or the sync server.

    MODE=aio|sync THREADS=2 ORT=0|1 python bench/sync_echo_experiment.py PORT

Serves bench/echo_server.py's ``identity`` (same handlers, same answers) on 127.0.0.1:PORT, either on
grpc.aio (MODE=aio) or on the sync ``grpc.server`` with THREADS worker threads (MODE=sync). With
ORT=1 each ModelInfer also runs bench/model_repo's identity model through ONNX Runtime on the thread
that handles it. It measures what the engine call costs each frontend (gil-release-note.md); drive
it with perf_analyzer and read the infer count from ModelStatistics. SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import echo_server as echo_module
import grpc
import numpy as np
import onnxruntime as ort
from tensorgate.proto import inference_pb2 as pb

MODEL_FILE = Path(__file__).resolve().parent / "model_repo" / "identity" / "1" / "model.onnx"


class OrtEcho(echo_module.Echo):
    def __init__(self, run_model: bool) -> None:
        super().__init__()
        self.session: ort.InferenceSession | None = None
        if run_model:
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(MODEL_FILE), options, providers=["CPUExecutionProvider"])

    def infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self.requests += 1
        shape = tuple(request.inputs[0].shape)
        data = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(shape)
        if self.session is not None:
            data = self.session.run([echo_module.OUTPUT], {echo_module.INPUT: data})[0]
        response = pb.ModelInferResponse(model_name=echo_module.MODEL, model_version=echo_module.VERSION, id=request.id)
        tensor = response.outputs.add(name=echo_module.OUTPUT, datatype="FP32")
        tensor.shape.extend(shape)
        response.raw_output_contents.append(np.ascontiguousarray(data).tobytes())
        return response

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return self.infer(request, context)


def _blocking(handler: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Any]:
    """The echo's (non-infer) coroutine handlers, for the sync server: none of them awaits anything."""

    def call(request: Any, context: Any) -> Any:
        return asyncio.run(handler(request, context))

    return call


def sync_handler(echo: OrtEcho) -> grpc.GenericRpcHandler:
    unary: dict[str, tuple[Callable[[Any, Any], Any], Any, Any]] = {
        "ServerLive": (_blocking(echo.server_live), pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (_blocking(echo.server_ready), pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (_blocking(echo.model_ready), pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (_blocking(echo.server_metadata), pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (_blocking(echo.model_metadata), pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": (_blocking(echo.model_config), pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": (_blocking(echo.model_statistics), pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "ModelInfer": (echo.infer, pb.ModelInferRequest, pb.ModelInferResponse),
    }
    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
        for rpc, (fn, req, resp) in unary.items()
    }
    return grpc.method_handlers_generic_handler(echo_module.SERVICE_NAME, handlers)


async def serve_aio(echo: OrtEcho, address: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((echo_module.generic_handler(echo),))
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)


def serve_sync(echo: OrtEcho, address: str, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((sync_handler(echo),))
    server.add_insecure_port(address)
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(1.0))
    server.wait_for_termination()


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    echo = OrtEcho(run_model=os.environ.get("ORT") == "1")
    address = f"127.0.0.1:{sys.argv[1]}"
    if os.environ.get("MODE", "aio") == "sync":
        serve_sync(echo, address, int(os.environ.get("THREADS", "2")))
    else:
        asyncio.run(serve_aio(echo, address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
