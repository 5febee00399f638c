"""The bad requests of test_errors.py: how they are built (by hand, with tritonclient's own generated
protobuf, since tritonclient refuses to send many of them) and the table of cases, each with the
status and the words its message must carry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from conftest import Server
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

Request = Any  # service_pb2.ModelInferRequest (generated, untyped)
MAX_BATCH = 2


# ---- request building ----


def _f32(rows: int = 1, cols: int = 4, start: float = 0.0) -> np.ndarray:
    return (np.arange(rows * cols, dtype=np.float32) + start).reshape(rows, cols)


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None = None
    contents: dict[str, list[Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


def _request(
    model: str,
    *tensors: Tensor,
    version: str = "",
    outputs: tuple[str, ...] = (),
    raw: list[bytes] | None = None,
    request_id: str = "bad",
) -> Request:
    """A ModelInferRequest; each tensor's ``raw`` goes to raw_input_contents unless ``raw`` is given."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for t in tensors:
        tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for key, values in t.contents.items():
            getattr(tensor.contents, key).extend(values)
        for key, value in t.parameters.items():
            if isinstance(value, str):
                tensor.parameters[key].string_param = value
            else:
                tensor.parameters[key].int64_param = value
    if raw is None:
        raw = [t.raw for t in tensors if t.raw is not None]
    request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _fp32(name: str, array: np.ndarray) -> Tensor:
    return Tensor(name, "FP32", list(array.shape), raw=array.tobytes())


def _good_add_sub(rows: int = 1) -> Request:
    return _request("add_sub", _fp32("INPUT0", _f32(rows)), _fp32("INPUT1", _f32(rows, start=1)), request_id="good")


def _strings(*items: bytes, shape: list[int] | None = None) -> Tensor:
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in items)
    return Tensor("INPUT0", "BYTES", shape or [1, len(items)], raw=raw)


def _check_serving(server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """ServerLive, then a good request that gives the right answer."""
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert server.client.is_server_live()
    result = grpcclient.InferResult(stub.ModelInfer(_good_add_sub(2)))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), _f32(2) * 2 + 1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((2, 4), -1, dtype=np.float32))


# ---- the bad requests ----

INVALID = grpc.StatusCode.INVALID_ARGUMENT
BadCase = tuple[str, Callable[[], Request], grpc.StatusCode, tuple[str, ...]]

CASES: list[BadCase] = [
    # model and version
    (
        "unknown_model",
        lambda: _request("nope", _fp32("INPUT0", _f32())),
        grpc.StatusCode.NOT_FOUND,
        ("Request for unknown model: 'nope' is not found",),
    ),
    (
        "unknown_version",
        lambda: _request("add_sub", _fp32("INPUT0", _f32()), version="7"),
        grpc.StatusCode.NOT_FOUND,
        ("Request for unknown model: 'add_sub' version 7 is not found", "[1]"),
    ),
    (
        "non_numeric_version",
        lambda: _request("add_sub", _fp32("INPUT0", _f32()), version="latest"),
        INVALID,
        ("failed to get model version from specified version string 'latest'", "'add_sub'"),
    ),
    # A model or version that does not serve: Triton's NOT_FOUND and words, which clients match on, then why.
    (
        "model_failed_to_load",
        lambda: _request("broken", _fp32("INPUT0", _f32())),
        grpc.StatusCode.NOT_FOUND,
        ("Request for unknown model: 'broken' has no available versions", "UNAVAILABLE", "cannot load"),
    ),
    (
        "version_failed_to_load",
        lambda: _request("half", _fp32("INPUT0", _f32()), version="2"),
        grpc.StatusCode.UNAVAILABLE,  # a version Triton knows but that is not ready (ModelLifeCycle::GetModel)
        ("Request for unknown model: 'half' version 2 is not at ready state", "failed to load"),
    ),
    (
        "engine_cannot_run_model",
        lambda: _request("bf16_out_strings_in", _fp32("X", _f32(1, 2))),
        grpc.StatusCode.NOT_FOUND,
        ("'bf16_out_strings_in' has no available versions", "string inputs and bfloat16 outputs"),
    ),
    # datatype and shape
    (
        "wrong_dtype",
        lambda: _request("add_sub", Tensor("INPUT0", "INT32", [1, 4], raw=bytes(16)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "INT32", "expects FP32"),
    ),
    (
        "empty_dtype",
        lambda: _request("add_sub", Tensor("INPUT0", "", [1, 4], raw=bytes(16)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "(empty)", "FP32"),
    ),
    (
        "unknown_dtype",
        lambda: _request("add_sub", Tensor("INPUT0", "FP8", [1, 4], raw=bytes(4)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "FP8", "FP32"),
    ),
    (
        "wrong_rank",
        lambda: _request("add_sub", Tensor("INPUT0", "FP32", [1, 4, 1], raw=bytes(16)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "[1,4,1]", f"[batch<={MAX_BATCH},4]"),
    ),
    (
        "wrong_fixed_dim",
        lambda: _request("add_sub", _fp32("INPUT0", _f32(1, 5)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "[1,5]", f"[batch<={MAX_BATCH},4]"),
    ),
    (
        "scalar_for_batched_model",
        lambda: _request("add_sub", Tensor("INPUT0", "FP32", [], raw=bytes(4)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "batch", f"[batch<={MAX_BATCH},4]"),
    ),
    (
        "negative_dim",
        lambda: _request("add_sub", Tensor("INPUT0", "FP32", [1, -4], raw=bytes(16)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "[1,-4]", "negative"),
    ),
    (
        "non_batched_wrong_dim",
        lambda: _request("fixed", _fp32("INPUT0", _f32(3, 3))),
        INVALID,
        ("'INPUT0'", "[3,3]", "[2,3]"),
    ),
    (
        "non_batched_extra_batch_dim",
        lambda: _request("fixed", Tensor("INPUT0", "FP32", [1, 2, 3], raw=bytes(24))),
        INVALID,
        ("'INPUT0'", "[1,2,3]", "[2,3]"),
    ),
    (
        "batch_above_max",
        lambda: _request("add_sub", _fp32("INPUT0", _f32(3)), _fp32("INPUT1", _f32(3))),
        INVALID,
        ("'INPUT0'", "batch size 3", f"1 to {MAX_BATCH}", "max_batch_size"),
    ),
    (
        "batch_zero",
        lambda: _request("add_sub", _fp32("INPUT0", _f32(0)), _fp32("INPUT1", _f32(0))),
        INVALID,
        ("'INPUT0'", "batch size 0", "max_batch_size"),
    ),
    (
        "mismatched_batch",
        lambda: _request("add_sub", _fp32("INPUT0", _f32(1)), _fp32("INPUT1", _f32(2))),
        INVALID,
        ("'INPUT1'", "batch size 2", "'INPUT0'", "has 1"),
    ),
    # which inputs
    ("missing_input", lambda: _request("add_sub", _fp32("INPUT0", _f32())), INVALID, ("'INPUT1'", "'add_sub'")),
    ("no_inputs", lambda: _request("add_sub"), INVALID, ("'INPUT0'", "'INPUT1'")),
    (
        "unknown_input",
        lambda: _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32()), _fp32("EXTRA", _f32())),
        INVALID,
        ("'EXTRA'", "'INPUT0'", "'INPUT1'"),
    ),
    (
        "duplicate_input",
        lambda: _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "more than once"),
    ),
    # raw contents
    (
        "raw_too_short",
        lambda: _request("add_sub", Tensor("INPUT0", "FP32", [1, 4], raw=bytes(12)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "12 bytes", "needs 16 bytes"),
    ),
    (
        "raw_too_long",
        lambda: _request("add_sub", Tensor("INPUT0", "FP32", [1, 4], raw=bytes(20)), _fp32("INPUT1", _f32())),
        INVALID,
        ("'INPUT0'", "20 bytes", "needs 16 bytes"),
    ),
    (
        "raw_for_huge_shape",
        lambda: _request("large", Tensor("INPUT0", "FP32", [1, 2**58], raw=bytes(16))),
        INVALID,
        ("'INPUT0'", "16 bytes", f"needs {4 * 2**58} bytes"),
    ),
    (
        "shape_beyond_any_tensor",
        lambda: _request("large", Tensor("INPUT0", "FP32", [1, 2**61], raw=bytes(16))),
        INVALID,
        ("'INPUT0'", f"{2**61} elements", "more than a tensor can hold"),
    ),
    (
        "raw_count_below_inputs",
        lambda: _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32()), raw=[_f32().tobytes()]),
        INVALID,
        ("2 inputs", "1 raw_input_contents", "one raw_input_contents entry per input"),
    ),
    (
        "raw_count_above_inputs",
        lambda: _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32()), raw=[_f32().tobytes()] * 3),
        INVALID,
        ("2 inputs", "3 raw_input_contents"),
    ),
    (
        "raw_and_typed_contents",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], raw=bytes(16), contents={"fp32_contents": [1, 2, 3, 4]}),
            _fp32("INPUT1", _f32()),
        ),
        INVALID,
        ("'INPUT0'", "both contents and raw_input_contents"),
    ),
    # BYTES raw contents
    (
        "bytes_length_beyond_end",
        lambda: _request("strings", Tensor("INPUT0", "BYTES", [1, 1], raw=(100).to_bytes(4, "little") + b"abc")),
        INVALID,
        ("'INPUT0'", "BYTES", "element 0 claims 100 bytes", "3 remain"),
    ),
    (
        "bytes_prefix_cut",
        lambda: _request("strings", Tensor("INPUT0", "BYTES", [1, 3], raw=_strings(b"a", b"hello").raw + b"\x01\x00")),
        INVALID,
        ("'INPUT0'", "[1,3]", "fewer than the 3"),
    ),
    (
        "bytes_shorter_than_prefixes",
        lambda: _request("strings", Tensor("INPUT0", "BYTES", [1, 2], raw=bytes(6))),
        INVALID,
        ("'INPUT0'", "[1,2]", "6 bytes", "8"),
    ),
    (
        "bytes_left_over",
        lambda: _request("strings", Tensor("INPUT0", "BYTES", [1, 1], raw=_strings(b"a", b"b").raw)),
        INVALID,
        ("'INPUT0'", "left over"),
    ),
    (
        "bytes_huge_shape",
        lambda: _request("strings", Tensor("INPUT0", "BYTES", [1, 2**40], raw=_strings(b"a").raw)),
        INVALID,
        ("'INPUT0'", "BYTES", str(2**40)),
    ),
    (
        "bytes_invalid_utf8",
        lambda: _request("strings", _strings(b"ok", b"\xff\xfe bad", b"")),
        INVALID,
        ("'INPUT0'", "UTF-8"),
    ),
    # typed contents
    (
        "typed_wrong_field",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], contents={"int_contents": [1, 2, 3, 4]}),
            Tensor("INPUT1", "FP32", [1, 4], contents={"fp32_contents": [1, 2, 3, 4]}),
        ),
        INVALID,
        ("'INPUT0'", "FP32", "contents.fp32_contents", "not int_contents"),
    ),
    (
        "typed_two_fields",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], contents={"fp32_contents": [1, 2, 3, 4], "fp64_contents": [1, 2, 3, 4]}),
            Tensor("INPUT1", "FP32", [1, 4], contents={"fp32_contents": [1, 2, 3, 4]}),
        ),
        INVALID,
        ("'INPUT0'", "contents.fp32_contents", "fp64_contents"),
    ),
    (
        "typed_wrong_count",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], contents={"fp32_contents": [1, 2, 3]}),
            Tensor("INPUT1", "FP32", [1, 4], contents={"fp32_contents": [1, 2, 3, 4]}),
        ),
        INVALID,
        ("'INPUT0'", "3 elements", "contents.fp32_contents", "needs 4"),
    ),
    (
        "typed_no_data",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4]),
            Tensor("INPUT1", "FP32", [1, 4], contents={"fp32_contents": [1, 2, 3, 4]}),
        ),
        INVALID,
        ("'INPUT0'", "contents.fp32_contents", "no data"),
    ),
    (
        "typed_fp16_has_no_field",
        lambda: _request("fp16", Tensor("INPUT0", "FP16", [1, 4], contents={"fp32_contents": [1] * 4})),
        INVALID,
        ("'INPUT0'", "FP16", "raw_input_contents"),
    ),
    (
        "typed_out_of_range",
        lambda: _request("int8", Tensor("INPUT0", "INT8", [1, 4], contents={"int_contents": [1, 2, 300, 4]})),
        INVALID,
        ("'INPUT0'", "contents.int_contents", "INT8"),
    ),
    (
        "typed_bytes_wrong_field",
        lambda: _request("strings", Tensor("INPUT0", "BYTES", [1, 1], contents={"int_contents": [1]})),
        INVALID,
        ("'INPUT0'", "contents.bytes_contents", "int_contents"),
    ),
    # outputs
    (
        "unknown_output",
        lambda: _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32()), outputs=("OUTPUT9",)),
        INVALID,
        ("'OUTPUT9'", "'OUTPUT0'", "'OUTPUT1'"),
    ),
    # shared memory (Triton's words): a region never registered, parameters of the wrong type or apart
    (
        "shm_input_unregistered",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], parameters={"shared_memory_region": "r0", "shared_memory_byte_size": 16}),
            _fp32("INPUT1", _f32()),
        ),
        grpc.StatusCode.NOT_FOUND,
        ("Unable to find shared memory region: 'r0'",),
    ),
    (
        "shm_input_without_byte_size",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], parameters={"shared_memory_region": "r0"}),
            _fp32("INPUT1", _f32()),
        ),
        INVALID,
        (
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor "
            "'INPUT0'",
        ),
    ),
    (
        "shm_input_offset_without_region",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], raw=_f32().tobytes(), parameters={"shared_memory_offset": 8}),
            _fp32("INPUT1", _f32()),
        ),
        INVALID,
        ("'shared_memory_offset' can not be specified without 'shared_memory_region' parameter for tensor 'INPUT0'",),
    ),
    (
        "shm_input_region_not_a_string",
        lambda: _request(
            "add_sub",
            Tensor("INPUT0", "FP32", [1, 4], parameters={"shared_memory_region": 3, "shared_memory_byte_size": 16}),
            _fp32("INPUT1", _f32()),
        ),
        INVALID,
        ("invalid value type for 'shared_memory_region' parameter for tensor 'INPUT0', expected string_param.",),
    ),
    (
        "shm_input_negative_offset",
        lambda: _request(
            "add_sub",
            Tensor(
                "INPUT0",
                "FP32",
                [1, 4],
                parameters={"shared_memory_region": "r0", "shared_memory_byte_size": 16, "shared_memory_offset": -4},
            ),
            _fp32("INPUT1", _f32()),
        ),
        INVALID,
        ("'shared_memory_offset' of tensor 'INPUT0' must not be negative, not -4",),
    ),
    (
        "shm_input_and_raw_contents",  # an input in shared memory has no raw_input_contents entry
        lambda: _request(
            "add_sub",
            Tensor(
                "INPUT0",
                "FP32",
                [1, 4],
                raw=_f32().tobytes(),
                parameters={"shared_memory_region": "r0", "shared_memory_byte_size": 16},
            ),
            _fp32("INPUT1", _f32()),
        ),
        INVALID,
        ("request has 2 inputs (1 in shared memory) but 2 raw_input_contents", "not in shared memory"),
    ),
]


def _output_parameter(key: str, value: str | int) -> Callable[[], Request]:
    def build() -> Request:
        request = _request("add_sub", _fp32("INPUT0", _f32()), _fp32("INPUT1", _f32()), outputs=("OUTPUT0",))
        param = request.outputs[0].parameters[key]
        if isinstance(value, str):
            param.string_param = value
        else:
            param.int64_param = value
        return request

    return build


CASES += [
    (
        "shm_output_without_byte_size",
        _output_parameter("shared_memory_region", "r0"),
        INVALID,
        (
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor "
            "'OUTPUT0'",
        ),
    ),
    (
        "shm_output_byte_size_not_an_int64",
        _output_parameter("shared_memory_byte_size", "16"),
        INVALID,
        ("invalid value type for 'shared_memory_byte_size' parameter for tensor 'OUTPUT0', expected int64_param.",),
    ),
    (
        "classification_not_int64",
        _output_parameter("classification", "3"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("'OUTPUT0'", "invalid value type for 'classification' parameter, expected an integer (int64_param)"),
    ),
    (
        "classification_negative",
        _output_parameter("classification", -2),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("'OUTPUT0'", "'classification' is the number of classes to return, not -2"),
    ),
]


def _request_parameter(key: str, which: str, value: object) -> Callable[[], Request]:
    def build() -> Request:
        request = _good_add_sub()
        setattr(request.parameters[key], which, value)
        return request

    return build


# Triton's gRPC frontend: each request parameter's value type, and only its own "triton_" keys
CASES += [
    (
        "triton_prefixed_parameter",
        _request_parameter("triton_foo", "bool_param", True),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("'triton_foo'", "reserved for Triton usage", "triton_enable_empty_final_response"),
    ),
    (
        "sequence_id_bool",
        _request_parameter("sequence_id", "bool_param", True),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("invalid value type for 'sequence_id' parameter, expected int64_param or string_param.",),
    ),
    (
        "sequence_start_int",
        _request_parameter("sequence_start", "int64_param", 1),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("invalid value type for 'sequence_start' parameter, expected bool_param.",),
    ),
    (
        "timeout_uint64",
        _request_parameter("timeout", "uint64_param", 5),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("invalid value type for 'timeout' parameter, expected int64_param.",),
    ),
    (
        "priority_double",
        _request_parameter("priority", "double_param", 1.0),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("invalid value type for 'priority' parameter, expected int64_param or uint64_param.",),
    ),
    (
        "custom_parameter_double",
        _request_parameter("my_knob", "double_param", 0.5),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("invalid value type for 'my_knob' parameter, expected int64_param, bool_param, or string_param.",),
    ),
    (
        "empty_final_response_not_bool",
        _request_parameter("triton_enable_empty_final_response", "string_param", "yes"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("'triton_enable_empty_final_response' parameter, expected bool_param.",),
    ),
]
