"""Bad requests get the right gRPC status and a message that names the tensor and what was expected,
and the server keeps serving after each one.

Most requests are built by hand with tritonclient's own generated protobuf (tritonclient itself
refuses to send many of them); a few go through tritonclient to show what its users see.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from bad_requests import CASES, MAX_BATCH, Request, _check_serving, _f32, _fp32, _good_add_sub, _request, _strings
from conftest import Server
from models import save, slow, write_config
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException


def _graph(
    path: Path, nodes: list[Any], inputs: dict[str, tuple[int, list[Any]]], outputs: dict[str, tuple[int, list[Any]]]
) -> None:
    save(
        helper.make_graph(
            nodes,
            path.parent.parent.name,
            [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
            [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        ),
        path,
    )


def _identity(path: Path, elem_type: int, shape: list[Any]) -> None:
    _graph(
        path,
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        {"INPUT0": (elem_type, shape)},
        {"OUTPUT0": (elem_type, shape)},
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors") / "repo"
    fp32 = (TensorProto.FLOAT, ["batch", 4])
    _graph(
        root / "add_sub" / "1" / "model.onnx",
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        {"INPUT0": fp32, "INPUT1": fp32},
        {"OUTPUT0": fp32, "OUTPUT1": fp32},
    )
    write_config(root / "add_sub", f'name: "add_sub"\nmax_batch_size: {MAX_BATCH}\n')
    _identity(root / "strings" / "1" / "model.onnx", TensorProto.STRING, ["batch", "n"])
    _identity(root / "strings_batched" / "1" / "model.onnx", TensorProto.STRING, ["batch", "n"])
    write_config(
        root / "strings_batched", "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n"
    )
    _identity(root / "fixed" / "1" / "model.onnx", TensorProto.FLOAT, [2, 3])
    _identity(root / "int8" / "1" / "model.onnx", TensorProto.INT8, ["batch", 4])
    _identity(root / "fp16" / "1" / "model.onnx", TensorProto.FLOAT16, ["batch", 4])
    _identity(root / "large" / "1" / "model.onnx", TensorProto.FLOAT, ["batch", "n"])
    slow(root / "slow" / "1" / "model.onnx")
    # OUTPUT0 = INPUT0 + BIAS, BIAS an initializer that is also a graph input: a request may override it
    save(
        helper.make_graph(
            [helper.make_node("Add", ["INPUT0", "BIAS"], ["OUTPUT0"])],
            "bias",
            [
                helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [4]),
                helper.make_tensor_value_info("BIAS", TensorProto.FLOAT, [4]),
            ],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [4])],
            initializer=[helper.make_tensor("BIAS", TensorProto.FLOAT, [4], [10.0, 20.0, 30.0, 40.0])],
        ),
        root / "bias" / "1" / "model.onnx",
    )
    # an initializer a request could override, of a type no request can carry: not offered, the model loads
    f8 = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Cast", ["SCALE"], ["scale32"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["INPUT0", "scale32"], ["OUTPUT0"]),
            ],
            "f8",
            [
                helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 2]),
                helper.make_tensor_value_info("SCALE", TensorProto.FLOAT8E4M3FN, [2]),
            ],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 2])],
            initializer=[helper.make_tensor("SCALE", TensorProto.FLOAT8E4M3FN, [2], [2.0, 0.5])],
        ),
        opset_imports=[helper.make_opsetid("", 19)],  # Cast from float8: opset 19
    )
    f8.ir_version = 9
    (root / "f8_initializer" / "1").mkdir(parents=True)
    onnx.save(f8, str(root / "f8_initializer" / "1" / "model.onnx"))
    write_config(
        root / "bias",
        "max_batch_size: 0\ninput [{ name: 'INPUT0' data_type: TYPE_FP32 dims: [4] }, "
        "{ name: 'BIAS' data_type: TYPE_FP32 dims: [4] optional: true }]",
    )
    write_config(root / "slow", "max_batch_size: 64\n")
    # A model that cannot load at all, and one whose version 2 cannot (version 1 serves).
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    _identity(root / "half" / "1" / "model.onnx", TensorProto.FLOAT, ["batch", 4])
    (root / "half" / "2").mkdir(parents=True)
    (root / "half" / "2" / "model.onnx").write_bytes(b"\x00\x01 nor is this")
    write_config(root / "half", 'name: "half"\nversion_policy: { all {} }\n')
    # String inputs with bfloat16 outputs: ONNX Runtime's Python API cannot run it, so it must not load.
    save(
        helper.make_graph(
            [
                helper.make_node("Identity", ["S"], ["SO"]),
                helper.make_node("Cast", ["X"], ["BO"], to=TensorProto.BFLOAT16),
            ],
            "bf16_out_strings_in",
            [
                helper.make_tensor_value_info("S", TensorProto.STRING, ["batch", 2]),
                helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2]),
            ],
            [
                helper.make_tensor_value_info("SO", TensorProto.STRING, ["batch", 2]),
                helper.make_tensor_value_info("BO", TensorProto.BFLOAT16, ["batch", 2]),
            ],
        ),
        root / "bf16_out_strings_in" / "1" / "model.onnx",
    )
    return root


@pytest.mark.parametrize(("build", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(
    server: Server,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    build: Callable[[], Request],
    code: grpc.StatusCode,
    words: tuple[str, ...],
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(build(), timeout=30)
    error: Any = caught.value
    assert error.code() == code, error.details()
    for word in words:
        assert word in error.details(), f"{word!r} not in {error.details()!r}"
    _check_serving(server, stub)


def test_an_optional_input_may_be_left_out_or_given(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    """An initializer the ONNX file lets a request override, declared optional (Triton's ONNX Runtime
    backend's form): a request without it gets the file's value, one with it its own."""
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    meta = server.client.get_model_metadata("bias")
    assert sorted(i.name for i in meta.inputs) == ["BIAS", "INPUT0"]
    alone = grpcclient.InferResult(stub.ModelInfer(_request("bias", _fp32("INPUT0", x))))
    assert alone.as_numpy("OUTPUT0").tolist() == [11.0, 22.0, 33.0, 44.0]
    given = stub.ModelInfer(_request("bias", _fp32("INPUT0", x), _fp32("BIAS", np.ones(4, np.float32))))
    assert grpcclient.InferResult(given).as_numpy("OUTPUT0").tolist() == [2.0, 3.0, 4.0, 5.0]
    assert server.client.is_model_ready("f8_initializer")  # a float8 one is just not offered as an input
    assert [i.name for i in server.client.get_model_metadata("f8_initializer").inputs] == ["INPUT0"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_request("bias", _fp32("BIAS", x)), timeout=30)  # the required one left out
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'INPUT0'" in error.details()


def test_a_model_with_a_broken_version_does_not_serve(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    """'half' version 2 cannot load: the model loads whole or not at all, as Triton's model lifecycle does, so
    unversioned requests do not move to version 1 behind the operator's back; the index says why."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_request("half", _fp32("INPUT0", _f32())), timeout=30)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND and "Request for unknown model: 'half'" in error.details()
    assert "version 2" in error.details()
    index = {(m.name, m.version): (m.state, m.reason) for m in server.client.get_model_repository_index().models}
    assert index[("half", "1")][0] == "UNAVAILABLE"  # it loaded, and was released with the model's failed load
    assert "the model's load failed, so this version was released" in index[("half", "1")][1]
    assert index[("half", "2")][0] == "UNAVAILABLE" and index[("half", "2")][1]
    assert not server.client.is_model_ready("half") and not server.client.is_model_ready("half", "1")
    # its statistics as Triton answers a model that is not available, whichever version is asked for
    for version in ("", "1", "2"):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelStatistics(pb.ModelStatisticsRequest(name="half", version=version), timeout=10)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (version, error.details())
        assert "is not available" in error.details(), error.details()
    broken = [state_reason for (name, _), state_reason in index.items() if name == "broken"]
    assert broken and all(state == "UNAVAILABLE" and reason for state, reason in broken), broken
    assert not server.client.is_model_ready("broken") and not server.client.is_model_ready("half", "2")


def test_bad_request_does_not_fail_its_batch(server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """Invalid UTF-8 is refused on its own: good requests batched with it still succeed."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    for rid, items in (("bad", [b"\xff"]), ("good1", [b"a"]), ("good2", ["é".encode()])):
        tensor = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([items], dtype=object))
        server.client.async_infer(
            "strings_batched",
            [tensor],
            request_id=rid,
            callback=lambda result, error, rid=rid: answers.put((rid, result, error)),
        )
    got = {rid: (result, error) for rid, result, error in (answers.get(timeout=30) for _ in range(3))}
    assert got["bad"][1] is not None and got["bad"][1].status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "'INPUT0'" in got["bad"][1].message() and "UTF-8" in got["bad"][1].message()
    for rid, want in (("good1", b"a"), ("good2", "é".encode())):
        result, error = got[rid]
        assert error is None, error
        assert result.as_numpy("OUTPUT0").tolist() == [[want]]
    _check_serving(server, stub)


# ---- the same through tritonclient ----


def _client_error(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_tritonclient_sees_status_and_message(server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    c = server.client
    a = grpcclient.InferInput("INPUT0", [1, 4], "INT32").set_data_from_numpy(np.zeros((1, 4), np.int32))
    b = grpcclient.InferInput("INPUT1", [1, 4], "FP32").set_data_from_numpy(_f32())
    error = _client_error(lambda: c.infer("add_sub", [a, b]))
    assert error.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "'INPUT0'" in error.message() and "INT32" in error.message() and "FP32" in error.message()

    error = _client_error(lambda: c.infer("nope", [b]))
    assert error.status() == str(grpc.StatusCode.NOT_FOUND) and "'nope'" in error.message()

    shm = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    shm.set_shared_memory("region", 16)
    error = _client_error(lambda: c.infer("add_sub", [shm, b]))
    assert error.status() == str(grpc.StatusCode.NOT_FOUND)
    assert error.message() == "Unable to find shared memory region: 'region'"
    _check_serving(server, stub)


def test_stream_errors_keep_the_stream_open(server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    good = [grpcclient.InferInput(n, [1, 4], "FP32").set_data_from_numpy(_f32()) for n in ("INPUT0", "INPUT1")]
    bad = [grpcclient.InferInput("INPUT0", [1, 5], "FP32").set_data_from_numpy(_f32(1, 5)), good[1]]
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("add_sub", bad, request_id="s-bad")
        client.async_stream_infer("nope", good, request_id="s-nope")
        client.async_stream_infer("add_sub", good, request_id="s-good")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
        client.close()
    errors = sorted(str(e) for r, e in got if e is not None)
    results = [r for r, e in got if e is None]
    assert len(errors) == 2 and len(results) == 1
    assert "'INPUT0'" in errors[1] and "[1,5]" in errors[1]
    assert "Request for unknown model: 'nope'" in errors[0]
    assert results[0].get_response().id == "s-good"
    np.testing.assert_array_equal(results[0].as_numpy("OUTPUT0"), _f32() * 2)
    _check_serving(server, stub)


# ---- RPCs tensorgate does not implement ----

UNIMPLEMENTED_RPCS = [
    ("TraceSetting", pb.TraceSettingRequest()),
    ("LogSettings", pb.LogSettingsRequest()),
]


@pytest.mark.parametrize(("rpc", "request_message"), UNIMPLEMENTED_RPCS, ids=[r for r, _ in UNIMPLEMENTED_RPCS])
def test_unimplemented_rpc(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub, rpc: str, request_message: Any
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, rpc)(request_message, timeout=30)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert rpc in error.details() and "not supported" in error.details()
    _check_serving(server, stub)


def test_unimplemented_through_tritonclient(server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    c = server.client
    for call in (
        lambda: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
        lambda: c.update_log_settings(settings={"log_info": True}),
    ):
        error = _client_error(call)
        assert error.status() == str(grpc.StatusCode.UNIMPLEMENTED)
        assert "not supported" in str(error.message())
    _check_serving(server, stub)


# ---- limits, statistics ----


def test_request_above_4_mib(server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """gRPC's default receive limit is 4 MiB; the server raises it, so a 6.4 MB tensor goes through."""
    x = np.random.default_rng(0).standard_normal((4, 400_000), dtype=np.float32)
    assert x.nbytes > 4 * 2**20
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32").set_data_from_numpy(x)
    result = server.client.infer("large", [tensor], request_id="big")
    assert result.get_response().id == "big"
    out = result.as_numpy("OUTPUT0")
    assert out is not None and out.tobytes() == x.tobytes()
    _check_serving(server, stub)


def _stats(server: Server, model: str) -> Any:
    return server.client.get_inference_statistics(model).model_stats[0]


def test_failures_leave_stats_and_process_sound(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    before = _stats(server, "add_sub")
    strings_before = _stats(server, "strings")
    for _, build, code, _words in CASES:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(build(), timeout=30)
        assert caught.value.code() == code  # type: ignore[attr-defined]
    for _ in range(3):
        stub.ModelInfer(_good_add_sub(2))
    good = stub.ModelInfer(_request("strings", _strings(b"x", "é".encode())))
    assert grpcclient.InferResult(good).as_numpy("OUTPUT0").tolist() == [[b"x", "é".encode()]]
    after = _stats(server, "add_sub")
    strings_after = _stats(server, "strings")
    # The good requests are all counted; the bad ones broke nothing.
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 3
    assert strings_after.inference_stats.success.count - strings_before.inference_stats.success.count == 1
    # Every bad request was refused by the frontend's checks, before any queue: none counts as a failed
    # inference (as Triton, whose failure counts start at the scheduler).
    assert after.inference_stats.fail.count == before.inference_stats.fail.count
    assert strings_after.inference_stats.fail.count == strings_before.inference_stats.fail.count
    assert server.proc.poll() is None
    assert server.client.is_server_live() and server.client.is_server_ready()
    assert "Traceback" not in server.log
    _check_serving(server, stub)


# ---- messages that are not protobuf at all ----

GARBAGE = bytes(range(256)) * 4  # not a valid message of any of these types (field 0, bad wire types)


@pytest.mark.parametrize("rpc", ["ModelInfer", "ModelMetadata", "ServerLive", "RepositoryModelLoad"])
def test_a_message_that_does_not_parse_is_invalid_argument(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub, rpc: str
) -> None:
    before = server.sample("tensorgate_malformed_messages_total ")
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as caught:
            call(GARBAGE, timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"is not a valid inference.{rpc}Request" in error.details() and "Traceback" not in error.details()
    assert "DecodeError" not in error.details()
    assert server.sample("tensorgate_malformed_messages_total ") == before + 1
    _check_serving(server, stub)


def test_every_stream_message_is_answered_even_one_that_does_not_parse(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    good = _good_add_sub(1).SerializeToString()
    with grpc.insecure_channel(server.url) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        answers = list(stream(iter([good, GARBAGE, good]), timeout=30))
    assert [a.infer_response.id for a in answers] == ["good", "", "good"]  # in the order of the messages
    assert [bool(a.error_message) for a in answers] == [False, True, False]
    assert all(a.infer_response.parameters["triton_final_response"].bool_param for a in answers)
    assert answers[1].error_message.startswith("stream message 2: ") and "ModelInferRequest" in answers[1].error_message
    _check_serving(server, stub)


def test_stream_answers_keep_the_order_of_the_requests(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    """As Triton answers a model that is not decoupled: a fast request or an error behind a slow request waits
    for it, so a client (tritonclient's callback gets no id with an error) can tell which answer is whose. Every
    answer says triton_final_response, errors with the request's id and model."""
    heavy = np.ones((64, 512), np.float32)  # slow: 64 MatMuls of [64, 512]: tens of ms on a worker thread
    messages = [
        _request("slow", _fp32("INPUT0", heavy), request_id="slow-1"),
        _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32()), request_id="fast-2"),
        _request("nope", _fp32("INPUT0", _f32()), request_id="unknown-3"),
        _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32()), request_id="fast-4"),
    ]
    messages[1].parameters["triton_enable_empty_final_response"].bool_param = True  # Triton's own: taken
    with grpc.insecure_channel(server.url) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        answers = list(stream(iter([m.SerializeToString() for m in messages]), timeout=60))
    assert [a.infer_response.id for a in answers] == ["slow-1", "fast-2", "unknown-3", "fast-4"]
    assert [bool(a.error_message) for a in answers] == [False, False, True, False]
    assert "Request for unknown model: 'nope'" in answers[2].error_message
    assert answers[2].infer_response.model_name == "nope"
    assert all(a.infer_response.parameters["triton_final_response"].bool_param for a in answers)
    _check_serving(server, stub)


def test_a_long_unknown_model_name_gets_not_found_with_a_short_message(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    """Echoed whole, a 20,000-character name would push the status past the client's 8 KiB metadata
    limit, and the client would see RESOURCE_EXHAUSTED instead of NOT_FOUND."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_request("m" * 20_000, _fp32("INPUT0", _f32())), timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert len(error.details()) < 300 and "(20000 characters)" in error.details()
    error = _client_error(lambda: server.client.get_model_metadata("x" * 20_000))
    assert error.status() == str(grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_message_above_the_limit_is_refused_before_it_is_read(
    server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub, compression: str | None
) -> None:
    """80 MB of zeros, beyond the default 64 MiB limit; gzipped it is 0.08 MB on the wire, and the
    limit still holds for what it would decompress to."""
    x = np.zeros((1, 20_000_000), np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32").set_data_from_numpy(x)
    error = _client_error(lambda: server.client.infer("large", [tensor], compression_algorithm=compression))
    assert error.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED), error
    _check_serving(server, stub)


def test_with_protobufs_pure_python_parser_bad_utf8_is_still_invalid_argument(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (set by some packages on import, inherited by the
    server): the start says protobuf runs slow, and a string field that is not UTF-8 (which that parser
    reports as UnicodeDecodeError, not DecodeError) is still INVALID_ARGUMENT naming the message."""
    repo = tmp_path / "repo"
    _identity(repo / "m" / "1" / "model.onnx", TensorProto.FLOAT, ["batch", 4])
    server = start_server(repo, env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
    assert "event=slow_protobuf implementation=python" in server.log
    with grpc.insecure_channel(server.url) as channel:
        config = channel.unary_unary("/inference.GRPCInferenceService/ModelConfig")
        with pytest.raises(grpc.RpcError) as caught:
            config(b"\n\x07\x00\x00\x00\x00\x00\x00\x80", timeout=10)  # name: 7 bytes, the last not UTF-8
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "is not a valid inference.ModelConfigRequest" in error.details()
        probe = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as caught:
            probe(b"\n\x01\xff", timeout=10)  # service: one byte that is not UTF-8
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "is not a valid grpc.health.v1.HealthCheckRequest" in error.details()
