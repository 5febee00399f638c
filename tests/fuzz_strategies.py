"""Fuzzing tensorgate's gRPC face: hypothesis strategies for V2 requests and raw bytes, the calls that send
them with gRPC's generic stubs (bytes in, bytes out), what an answer may be, and a tally of the answers.

Shared by tests/test_fuzz.py (which asserts) and bench/hardening.py (which counts). Requests are built with
tritonclient's own generated protobuf (package ``inference``: what a real client sends), from a
:class:`Catalog` read from the running server, so strategies follow whatever models the repository holds.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
INFER = f"/{SERVICE}/ModelInfer"
STREAM = f"/{SERVICE}/ModelStreamInfer"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Every RPC of Triton's service (tritonclient's descriptor): path -> request message class.
METHODS: dict[str, type[Any]] = {
    f"/{SERVICE}/{m.name}": getattr(pb, m.input_type.name) for m in _SERVICE_DESCRIPTOR.methods
}
STREAMING = frozenset(f"/{SERVICE}/{m.name}" for m in _SERVICE_DESCRIPTOR.methods if m.client_streaming)
UNARY_METHODS = tuple(sorted(p for p in METHODS if p not in STREAMING))

# Every status a request may get, whatever it holds. UNKNOWN and INTERNAL mean an exception escaped (ours or a
# library's), DEADLINE_EXCEEDED that the call hung (the client's deadline is far above any honest answer).
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
MAX_DETAILS = 4096  # bytes of a status message (gRPC clients refuse trailers above 8 KiB)
CALL_TIMEOUT_S = 10.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

V2_DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES", "BF16",
)  # fmt: skip
BOGUS_DATATYPES = ("", "FP8", "fp32", "INT128", "STRING", "TYPE_FP32", "FP32 ", "\x00", "Ω", "FP32\x00")
ITEMSIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2,
}  # fmt: skip
# The typed contents field of each datatype (FP16 and BF16 have none).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
# The values each integer datatype holds (what a correct typed request may send).
INT_RANGE = {
    "BOOL": (0, 1), "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1), "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}  # fmt: skip
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PARAMETER_KEYS = (
    "priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "binary_data_output",
    "binary_data_size", "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset",
    "classification", "binary_data", "headers", "",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# the models the strategies aim at


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension; -1 = any size


@dataclass(frozen=True)
class ModelInfo:
    name: str
    max_batch_size: int  # 0: not batched
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True, repr=False)
class Catalog:
    models: tuple[ModelInfo, ...]  # READY models
    names: tuple[str, ...]  # every name in RepositoryIndex (unavailable ones too)

    @staticmethod
    def read(client: grpcclient.InferenceServerClient) -> Catalog:
        """The repository as the server reports it: RepositoryIndex, ModelConfig of every READY model."""
        names: list[str] = []
        models: list[ModelInfo] = []
        for row in client.get_model_repository_index().models:
            if row.name not in names:
                names.append(row.name)
            if row.state != "READY" or any(m.name == row.name for m in models):
                continue
            config = client.get_model_config(row.name).config
            models.append(ModelInfo(row.name, config.max_batch_size, _tensors(config.input), _tensors(config.output)))
        return Catalog(tuple(models), tuple(names))

    def __repr__(self) -> str:  # short, for hypothesis's report of a failing example
        return f"Catalog(models={[m.name for m in self.models]}, names={list(self.names)})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # what hypothesis's printer calls
        p.text(repr(self))

    def model(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.name == name), None)


def _tensors(items: Iterable[Any]) -> tuple[TensorInfo, ...]:
    """Config tensors with V2 datatype names (the config's TYPE_STRING is V2's BYTES)."""
    out = []
    for t in items:
        name = mc.DataType.Name(t.data_type).removeprefix("TYPE_")
        out.append(TensorInfo(t.name, "BYTES" if name == "STRING" else name, tuple(t.dims)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# strategies: pieces


def _repeated(element: st.SearchStrategy[Any], most: int) -> st.SearchStrategy[list[Any]]:
    """A long list of one drawn element (long lists drawn element by element are slow to generate)."""
    return st.builds(lambda e, n: [e] * n, element, st.integers(0, most))


def model_names(catalog: Catalog) -> st.SearchStrategy[str]:
    real = st.sampled_from(catalog.names or ("add_sub",))
    return st.one_of(
        real,
        real,
        real.map(str.upper),
        real.map(lambda n: f"{n}\x00"),
        real.map(lambda n: f"../{n}"),
        real.map(lambda n: f"{n}/1"),
        st.sampled_from(("", " ", ".", "..", "/", "模型", "naïve", "\U0001f600", "a" * 300)),
        st.text(max_size=40),
        st.builds(lambda c, n: c * n, st.sampled_from(("x", "é", "\U0001f600")), st.integers(1000, 100_000)),
    )


def versions() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(("", "", "1", "2", "0", "-1", "01", " 1", "1 ", "１", "1.0", "latest", "2147483648")),
        st.integers(-(2**70), 2**70).map(str),
        st.text(max_size=20),
        st.builds(lambda n: "9" * n, st.integers(100, 10_000)),
    )


def dims() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-2, 20),
        st.sampled_from((0, -1, 2**31, 2**32, 2**40, 2**58, 2**59, 2**62, 4611686018427387904, INT64_MAX, INT64_MIN)),
        st.integers(INT64_MIN, INT64_MAX),
    )


def shapes() -> st.SearchStrategy[list[int]]:
    return st.one_of(
        st.lists(dims(), max_size=6),
        st.sampled_from(([], [4611686018427387904, 0], [0, 4611686018427387904], [2**62, 2**62, 0], [2**32, 2**32])),
        _repeated(st.integers(-1, 2), 5000),  # rank in the thousands
    )


def parameter_values() -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        st.tuples(st.just("bool_param"), st.booleans()),
        st.tuples(st.just("int64_param"), st.integers(INT64_MIN, INT64_MAX)),
        st.tuples(st.just("int64_param"), st.integers(-3, 3)),
        st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)),
        st.tuples(st.just("double_param"), st.floats()),
        st.tuples(st.just("string_param"), st.text(max_size=30)),
        st.tuples(st.just("string_param"), _repeated(st.just("s"), 20_000).map("".join)),
        st.just(("", None)),  # a parameter with no value set
    )


def parameters() -> st.SearchStrategy[dict[str, tuple[str, Any]]]:
    return st.dictionaries(
        st.one_of(st.sampled_from(PARAMETER_KEYS), st.text(max_size=10)), parameter_values(), max_size=4
    )


def _valid_value(key: str, drawn: tuple[str, Any]) -> tuple[str, Any]:
    """A value a correct request may give ``key`` (Triton's gRPC types: a timeout is an int64, a priority
    an int64 or a uint64, a custom parameter an int64, a bool or a string)."""
    if key == "priority":
        return drawn
    if key == "timeout":
        return ("int64_param", drawn[1])
    return ("bool_param", True)


def _set_parameters(target: Any, params: dict[str, tuple[str, Any]]) -> None:
    for key, (kind, value) in params.items():
        param = target[key]  # a map entry: created even when no value is set below
        if kind:
            setattr(param, kind, value)


def _contents_values(field_name: str) -> st.SearchStrategy[list[Any]]:
    element: st.SearchStrategy[Any] = {
        "bool_contents": st.booleans(),
        "int_contents": st.integers(-(2**31), 2**31 - 1),
        "int64_contents": st.integers(INT64_MIN, INT64_MAX),
        "uint_contents": st.integers(0, 2**32 - 1),
        "uint64_contents": st.integers(0, 2**64 - 1),
        "fp32_contents": st.floats(width=32),
        "fp64_contents": st.floats(),
        "bytes_contents": st.binary(max_size=12),
    }[field_name]
    return st.lists(element, max_size=40)


CONTENTS_FIELDS = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)


def bytes_elements(count: int) -> st.SearchStrategy[list[bytes]]:
    """``count`` valid BYTES elements: UTF-8 text (ONNX string tensors hold text)."""
    return st.lists(st.text(max_size=8).map(str.encode), min_size=count, max_size=count)


def length_prefixed(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


# ---------------------------------------------------------------------------------------------------------------
# strategies: whole ModelInferRequests


@dataclass(repr=False)
class FuzzRequest:
    """A request and what it must get: ``valid`` ones were built to be correct and must be answered OK with the
    model's results (``model``: the model they were built for); the others may get any allowed status."""

    message: Any  # service_pb2.ModelInferRequest
    valid: bool
    model: ModelInfo | None = None
    recipe: list[str] = field(default_factory=list)  # what was done to it, for the reader of a failure

    def serialize(self) -> bytes:
        return bytes(self.message.SerializeToString())

    def __repr__(self) -> str:
        return f"FuzzRequest({'+'.join(self.recipe)}, valid={self.valid}):\n{describe(self.message)}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _valid_tensor(draw: st.DrawFn, message: Any, info: TensorInfo, batch: int | None, raw: bool) -> None:
    dims = [d if d >= 0 else draw(st.integers(1, 3)) for d in info.dims]
    shape = ([batch] if batch is not None else []) + dims
    count = math.prod(shape)
    tensor = message.inputs.add(name=info.name, datatype=info.datatype, shape=shape)
    dtype = info.datatype
    if dtype == "BYTES":
        items = draw(bytes_elements(count))
        if raw:
            message.raw_input_contents.append(length_prefixed(items))
        else:
            tensor.contents.bytes_contents.extend(items)
    elif raw or dtype not in CONTENTS_FIELD:
        if dtype == "BOOL":
            data = bytes(draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)))
        elif dtype in ("FP32", "FP64", "FP16"):  # finite integers: exact in any arithmetic the model does
            fmt = {"FP32": "f", "FP64": "d", "FP16": "e"}[dtype]
            values = draw(st.lists(st.integers(-1000, 1000), min_size=count, max_size=count))
            data = struct.pack(f"<{count}{fmt}", *values)
        else:
            data = draw(st.binary(min_size=count * ITEMSIZE[dtype], max_size=count * ITEMSIZE[dtype]))
        message.raw_input_contents.append(data)
    else:
        lo, hi = INT_RANGE.get(dtype, (-1000, 1000))
        values = draw(st.lists(st.integers(lo, hi), min_size=count, max_size=count))
        getattr(tensor.contents, CONTENTS_FIELD[dtype]).extend([bool(v) for v in values] if dtype == "BOOL" else values)


@st.composite
def valid_requests(draw: st.DrawFn, catalog: Catalog) -> FuzzRequest:
    """A correct request for one READY model: right names, datatypes, shapes and data, raw or typed."""
    model = draw(st.sampled_from(catalog.models))
    message = pb.ModelInferRequest(model_name=model.name, id=draw(st.text(max_size=12)))
    if draw(st.booleans()):
        message.model_version = ""
    batch = draw(st.integers(1, model.max_batch_size)) if model.max_batch_size > 0 else None
    raw = draw(st.booleans())
    for info in draw(st.permutations(model.inputs)):
        _valid_tensor(draw, message, info, batch, raw)
    for name in draw(st.lists(st.sampled_from([t.name for t in model.outputs]), max_size=3)):
        message.outputs.add(name=name)
    if draw(st.booleans()):  # parameters a correct request may carry: default priority, timeouts, unknown keys
        _set_parameters(
            message.parameters,
            draw(
                st.dictionaries(
                    st.sampled_from(("priority", "timeout", "binary_data_output", "x-custom")),
                    st.one_of(
                        st.tuples(st.just("int64_param"), st.integers(0, 0)),
                        st.tuples(st.just("uint64_param"), st.integers(0, 0)),
                    ),
                    max_size=2,
                ).map(lambda d: {k: _valid_value(k, v) for k, v in d.items()})
            ),
        )
    return FuzzRequest(message, valid=True, model=model, recipe=["valid"])


def _random_tensor(draw: st.DrawFn, message: Any, names: Sequence[str]) -> None:
    name = draw(st.one_of(st.sampled_from(names), st.text(max_size=12))) if names else draw(st.text(max_size=12))
    datatype = draw(st.sampled_from(V2_DATATYPES + BOGUS_DATATYPES))
    tensor = message.inputs.add(name=name, datatype=datatype, shape=draw(shapes()))
    for field_name in draw(st.lists(st.sampled_from(CONTENTS_FIELDS), max_size=2, unique=True)):
        getattr(tensor.contents, field_name).extend(draw(_contents_values(field_name)))
    if draw(st.integers(0, 4)) == 0:
        _set_parameters(tensor.parameters, draw(parameters()))


_MUTATIONS = (
    "model_name", "version", "datatype", "shape", "shape", "drop_raw", "extra_raw", "resize_raw", "raw_to_typed",
    "typed_field", "typed_count", "parameters", "tensor_parameters", "output", "output_parameters",
    "duplicate_input", "drop_input", "rename_input", "extra_input", "id",
)  # fmt: skip


def _mutate(draw: st.DrawFn, request: FuzzRequest, catalog: Catalog) -> None:
    m = request.message
    what = draw(st.sampled_from(_MUTATIONS))
    request.recipe.append(what)
    target = draw(st.integers(0, max(0, len(m.inputs) - 1)))
    has_input = len(m.inputs) > 0
    if what == "model_name":
        m.model_name = draw(model_names(catalog))
    elif what == "version":
        m.model_version = draw(versions())
    elif what == "datatype" and has_input:
        m.inputs[target].datatype = draw(st.sampled_from(V2_DATATYPES + BOGUS_DATATYPES))
    elif what == "shape" and has_input:
        del m.inputs[target].shape[:]
        m.inputs[target].shape.extend(draw(shapes()))
    elif what == "drop_raw" and m.raw_input_contents:
        del m.raw_input_contents[draw(st.integers(0, len(m.raw_input_contents) - 1))]
    elif what == "extra_raw":
        m.raw_input_contents.append(draw(st.binary(max_size=80)))
    elif what == "resize_raw" and m.raw_input_contents:
        i = draw(st.integers(0, len(m.raw_input_contents) - 1))
        old = m.raw_input_contents[i]
        cut = draw(st.integers(0, len(old) + 8))
        m.raw_input_contents[i] = old[:cut] + draw(st.binary(max_size=max(0, cut - len(old))))
    elif what == "raw_to_typed" and has_input:
        field_name = draw(st.sampled_from(CONTENTS_FIELDS))
        getattr(m.inputs[target].contents, field_name).extend(draw(_contents_values(field_name)))
    elif what == "typed_field" and has_input:
        m.inputs[target].ClearField("contents")
        field_name = draw(st.sampled_from(CONTENTS_FIELDS))
        getattr(m.inputs[target].contents, field_name).extend(draw(_contents_values(field_name)))
    elif what == "typed_count" and has_input:
        contents = m.inputs[target].contents
        for f in CONTENTS_FIELDS:
            values = getattr(contents, f)
            if len(values):
                del values[draw(st.integers(0, len(values) - 1)) :]
    elif what == "parameters":
        _set_parameters(m.parameters, draw(parameters()))
    elif what == "tensor_parameters" and has_input:
        _set_parameters(m.inputs[target].parameters, draw(parameters()))
    elif what == "output":
        names = [t.name for t in request.model.outputs] if request.model else []
        name = draw(st.one_of(st.sampled_from(names), st.text(max_size=12))) if names else draw(st.text(max_size=12))
        m.outputs.add(name=name)
    elif what == "output_parameters":
        if not m.outputs:
            m.outputs.add(name=request.model.outputs[0].name if request.model else "OUTPUT0")
        _set_parameters(m.outputs[draw(st.integers(0, len(m.outputs) - 1))].parameters, draw(parameters()))
    elif what == "duplicate_input" and has_input:
        m.inputs.add().CopyFrom(m.inputs[target])
        if m.raw_input_contents:
            m.raw_input_contents.append(m.raw_input_contents[min(target, len(m.raw_input_contents) - 1)])
    elif what == "drop_input" and has_input:
        del m.inputs[target]
        if len(m.raw_input_contents) > target:
            del m.raw_input_contents[target]
    elif what == "rename_input" and has_input:
        m.inputs[target].name = draw(st.one_of(st.text(max_size=12), st.sampled_from([i.name for i in m.inputs])))
    elif what == "extra_input":
        _random_tensor(draw, m, [])
        if m.raw_input_contents:
            m.raw_input_contents.append(draw(st.binary(max_size=64)))
    elif what == "id":
        m.id = draw(st.one_of(st.text(), _repeated(st.just("i"), 50_000).map("".join)))


@st.composite
def wild_requests(draw: st.DrawFn, catalog: Catalog) -> FuzzRequest:
    """Anything a ModelInferRequest can hold: names, datatypes, shapes, contents, parameters, outputs."""
    message = pb.ModelInferRequest(model_name=draw(model_names(catalog)), model_version=draw(versions()))
    message.id = draw(st.text(max_size=20))
    model = catalog.model(message.model_name) or (draw(st.sampled_from(catalog.models)) if catalog.models else None)
    names = [t.name for t in model.inputs] if model else []
    for _ in range(draw(st.integers(0, 4))):
        _random_tensor(draw, message, names)
    message.raw_input_contents.extend(draw(st.lists(st.binary(max_size=96), max_size=5)))
    _set_parameters(message.parameters, draw(parameters()))
    out_names = [t.name for t in model.outputs] if model else []
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.one_of(st.sampled_from(out_names), st.text(max_size=8))) if out_names else draw(st.text())
        requested = message.outputs.add(name=name)
        if draw(st.booleans()):
            _set_parameters(requested.parameters, draw(parameters()))
    return FuzzRequest(message, valid=False, model=model, recipe=["wild"])


@st.composite
def infer_requests(draw: st.DrawFn, catalog: Catalog) -> FuzzRequest:
    """A mix: correct requests, correct ones with 1-3 mutations, and wild ones."""
    kind = draw(st.sampled_from(("valid", "mutated", "mutated", "wild")))
    if kind == "wild" or not catalog.models:
        return draw(wild_requests(catalog))
    request = draw(valid_requests(catalog))
    if kind == "mutated":
        request.valid = False
        request.recipe[0] = "mutated"
        for _ in range(draw(st.integers(1, 3))):
            _mutate(draw, request, catalog)
    return request


# ---------------------------------------------------------------------------------------------------------------
# strategies: raw bytes


def seed_message(path: str, catalog: Catalog) -> bytes:
    """A well-formed request of the method (string fields naming a real model), for corrupting."""
    if path == HEALTH_CHECK:
        return b"\x0a\x00"  # service: ""
    message = METHODS[path]()
    name = catalog.models[0].name if catalog.models else "add_sub"
    for f in message.DESCRIPTOR.fields:
        if f.type == f.TYPE_STRING and not f.is_repeated:
            setattr(message, f.name, "1" if f.name == "version" else name)
    if path in (INFER, STREAM) and catalog.models:
        model = catalog.models[0]
        message = pb.ModelInferRequest(model_name=model.name)
        for t in model.inputs:
            shape = ([1] if model.max_batch_size else []) + [max(d, 1) for d in t.dims]
            message.inputs.add(name=t.name, datatype=t.datatype, shape=shape)
            count = math.prod(shape)
            raw = length_prefixed([b"a"] * count) if t.datatype == "BYTES" else bytes(count * ITEMSIZE[t.datatype])
            message.raw_input_contents.append(raw)
    return bytes(message.SerializeToString())


@st.composite
def corrupted(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes flipped, cut, inserted or repeated."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(("flip", "cut", "insert", "repeat", "truncate")))
        if how == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "repeat":
            data[at:at] = data[at:] * draw(st.integers(1, 3))
        elif how == "truncate":
            del data[at:]
    return bytes(data)


def raw_messages(path: str, catalog: Catalog) -> st.SearchStrategy[bytes]:
    """Random bytes, and corrupted well-formed requests of the method (they get further than random bytes)."""
    return st.one_of(st.binary(max_size=300), corrupted(seed_message(path, catalog)))


# ---------------------------------------------------------------------------------------------------------------
# sending, and what an answer may be


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    response: bytes | None  # the serialized response when OK (unary)


@dataclass(frozen=True)
class StreamAnswer:
    code: grpc.StatusCode  # of the stream itself
    details: str
    responses: tuple[Any, ...]  # parsed service_pb2.ModelStreamInferResponse, in arrival order


def channel(url: str) -> grpc.Channel:
    return grpc.insecure_channel(url, options=CHANNEL_OPTIONS)


def call_unary(ch: grpc.Channel, path: str, payload: bytes, timeout: float = CALL_TIMEOUT_S) -> Answer:
    try:
        response = ch.unary_unary(path)(payload, timeout=timeout)
    except grpc.RpcError as exc:
        return Answer(exc.code(), exc.details() or "", None)
    return Answer(grpc.StatusCode.OK, "", bytes(response))


def call_unary_many(
    ch: grpc.Channel, path: str, payloads: Sequence[bytes], timeout: float = CALL_TIMEOUT_S
) -> list[Answer]:
    """All at once (so the server may batch them together), answers in the order sent."""
    method = ch.unary_unary(path)
    futures = [method.future(p, timeout=timeout) for p in payloads]
    answers: list[Answer] = []
    for f in futures:
        try:
            answers.append(Answer(grpc.StatusCode.OK, "", bytes(f.result())))
        except grpc.RpcError:
            answers.append(Answer(f.code(), f.details() or "", None))
    return answers


def call_stream(ch: grpc.Channel, payloads: Sequence[bytes], timeout: float = CALL_TIMEOUT_S) -> StreamAnswer:
    """One ModelStreamInfer stream: every message written, then the write side closed; all answers read."""
    responses: list[Any] = []
    try:
        for raw in ch.stream_stream(STREAM)(iter(payloads), timeout=timeout):
            responses.append(pb.ModelStreamInferResponse.FromString(raw))
    except grpc.RpcError as exc:
        return StreamAnswer(exc.code(), exc.details() or "", tuple(responses))
    return StreamAnswer(grpc.StatusCode.OK, "", tuple(responses))


# What a Python exception looks like in a message. Built by concatenation, so hypothesis (which draws strings
# from the literals of the code under test) does not send the whole marker itself.
LEAKS = ("Traceback" + " (most recent", "<" + "class '", "File " + '"')


def text_problems(text: str, where: str, sent: bytes = b"") -> list[str]:
    """What is wrong with a message a client reads: too long, or a Python exception leaking out (a marker the
    client sent itself, echoed back in the message, is no leak)."""
    problems = []
    if len(text.encode()) >= MAX_DETAILS:
        problems.append(f"{where} is {len(text.encode())} bytes (limit {MAX_DETAILS}): {text[:160]!r}...")
    for leak in LEAKS:
        if leak in text and leak.encode() not in sent:
            problems.append(f"{where} leaks {leak!r}: {text[:300]!r}")
    return problems


def answer_problems(answer: Answer | StreamAnswer, sent: bytes = b"") -> list[str]:
    problems = []
    if answer.code not in ALLOWED:
        problems.append(f"status {answer.code.name}: {answer.details[:300]!r}")
    if "metadata size exceeds" in answer.details:  # the client's gRPC refused the server's status (over 8 KiB)
        problems.append(f"the client got {answer.code.name} instead of the server's status: {answer.details[:300]!r}")
    return problems + text_problems(answer.details, "status details", sent)


def stream_problems(answer: StreamAnswer, expected_errors: Sequence[bool], sent: bytes = b"") -> list[str]:
    """A stream of len(expected_errors) messages: it must end OK, answer each message once, set error_message
    exactly on those that failed as unary calls, and keep every error_message plain and bounded."""
    problems = answer_problems(answer, sent)
    if answer.code != grpc.StatusCode.OK:
        problems.append(f"the stream ended {answer.code.name} after {len(answer.responses)} answers")
    if len(answer.responses) != len(expected_errors):
        problems.append(f"{len(expected_errors)} messages sent, {len(answer.responses)} answers")
    errors = sum(1 for r in answer.responses if r.error_message)
    if errors != sum(expected_errors):
        problems.append(f"{errors} answers carry error_message, {sum(expected_errors)} failed as unary calls")
    for r in answer.responses:
        problems += text_problems(r.error_message, "error_message", sent)
    return problems


def _decode_inputs(message: Any) -> dict[str, np.ndarray]:
    """The tensors of a request built by valid_requests(), as numpy."""
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(message.inputs):
        shape = tuple(t.shape)
        if message.raw_input_contents:
            raw = message.raw_input_contents[i]
            if t.datatype == "BYTES":
                items, at = [], 0
                while at < len(raw):
                    (n,) = struct.unpack_from("<I", raw, at)
                    items.append(raw[at + 4 : at + 4 + n])
                    at += 4 + n
                out[t.name] = np.array(items, dtype=np.object_).reshape(shape)
            else:
                out[t.name] = np.frombuffer(raw, dtype=grpcclient.triton_to_np_dtype(t.datatype)).reshape(shape)
        elif t.datatype == "BYTES":
            out[t.name] = np.array(list(t.contents.bytes_contents), dtype=np.object_).reshape(shape)
        else:
            values = list(getattr(t.contents, CONTENTS_FIELD[t.datatype]))
            out[t.name] = np.array(values, dtype=grpcclient.triton_to_np_dtype(t.datatype)).reshape(shape)
    return out


def _expected_outputs(model: ModelInfo, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the example models of model_repo/ compute; {} for a model not known here."""
    if model.name == "add_sub":
        return {"OUTPUT0": inputs["INPUT0"] + inputs["INPUT1"], "OUTPUT1": inputs["INPUT0"] - inputs["INPUT1"]}
    if model.name == "identity":
        return {"OUTPUT0": inputs["INPUT0"]}
    if model.name == "string_identity":
        return {"TEXT_OUT": inputs["TEXT"]}
    return {}


def result_problems(request: FuzzRequest, answer: Answer) -> list[str]:
    """A correct request must be answered OK, with its id, exactly the outputs it asked for, and the model's
    results (the example models: exact values; any other: one output row per input row)."""
    if answer.code != grpc.StatusCode.OK:
        return [f"a correct request got {answer.code.name}: {answer.details[:500]!r}"]
    assert answer.response is not None and request.model is not None
    response = pb.ModelInferResponse.FromString(answer.response)
    result = grpcclient.InferResult(response)
    message = request.message
    asked = list(dict.fromkeys(o.name for o in message.outputs)) or [t.name for t in request.model.outputs]
    problems = []
    if sorted(o.name for o in response.outputs) != sorted(asked):
        problems.append(f"outputs {[o.name for o in response.outputs]}, asked for {asked}")
    if response.id != message.id or response.model_name != message.model_name:
        problems.append(f"the answer is for {response.model_name!r} id {response.id!r}")
    inputs = _decode_inputs(message)
    expected = _expected_outputs(request.model, inputs)
    rows = next(iter(inputs.values())).shape[0] if request.model.max_batch_size and inputs else None
    for name in (n for n in asked if n in {o.name for o in response.outputs}):
        got = result.as_numpy(name)
        want = expected.get(name)
        if want is not None and (got.shape != want.shape or not np.array_equal(got, want)):
            problems.append(f"output {name}: got {got!r}, expected {want!r}")
        elif want is None and rows is not None and got.shape[:1] != (rows,):
            problems.append(f"output {name} has shape {got.shape}, the request {rows} rows")
    return problems


def describe(message: Any) -> str:
    """A request for a failure report, long repeated fields summarized (a shape of 3000 ones is one line)."""
    copy = type(message)()
    copy.CopyFrom(message)
    notes = []
    for i, t in enumerate(getattr(copy, "inputs", ())):
        if len(t.shape) > 12:
            notes.append(f"inputs[{i}].shape: {len(t.shape)} dims {list(t.shape[:6])}...{list(t.shape[-3:])}")
            del t.shape[12:]
    text = str(copy)
    text = text if len(text) < 2000 else f"{text[:2000]}... ({len(text)} characters)"
    return "\n".join([text, *notes])


# ---------------------------------------------------------------------------------------------------------------
# rounds: send one fuzzed case, tally the answers, return what is wrong


def short(path: str) -> str:
    return path.rsplit("/", 1)[-1] if path.startswith(f"/{SERVICE}/") else path.strip("/")


@dataclass(repr=False)
class Tally:
    """Answers by method and status code (stream messages as ``ModelStreamInfer[message]`` by answer kind)."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    cases: Counter[str] = field(default_factory=Counter)  # hypothesis examples run, by test or phase
    problems: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Tally({sum(self.cases.values())} cases, {len(self.problems)} problems)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def add(self, path: str, code: grpc.StatusCode | str) -> None:
        name = code if isinstance(code, str) else code.name
        self.counts.setdefault(short(path), Counter())[name] += 1

    def add_stream(self, answer: StreamAnswer) -> None:
        self.add(STREAM, answer.code)
        for r in answer.responses:
            self.add(f"{STREAM}[message]", "error_message" if r.error_message else "answer")

    def as_json(self) -> dict[str, Any]:
        return {
            "cases": dict(self.cases),
            "calls": sum(sum(c.values()) for c in self.counts.values()),
            "codes": {m: dict(c.most_common()) for m, c in sorted(self.counts.items())},
            "problems": self.problems[:50],
        }

    def dumps(self) -> str:
        return json.dumps(self.as_json(), indent=2, ensure_ascii=False)

    def table(self) -> str:
        """A plain-text table: one row per method, one column per status code seen."""
        codes = sorted({c for counter in self.counts.values() for c in counter})
        header = ["method", "calls", *codes]
        rows = [
            [m, str(sum(c.values())), *(str(c.get(code, "")) for code in codes)] for m, c in sorted(self.counts.items())
        ]
        return text_table(header, rows)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "| " + " | ".join(cells) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def problem_kind(problem: str) -> str:
    """A problem without what varies from case to case (payload, numbers, long runs of one character): problems
    of one kind print as one line."""
    first = problem.split("\n", 1)[0].split(" (payload ", 1)[0]
    first = re.sub(r"\b\d+\b", "N", first)  # whole numbers only: "v1" stays
    first = re.sub(r"(?:-?N,){3,}", "N,...,", first)
    return re.sub(r"(.)\1{4,}", r"\1\1\1...", first)[:150]


def infer_round(ch: grpc.Channel, requests: Sequence[FuzzRequest], tally: Tally) -> list[str]:
    """The requests at once on ModelInfer: allowed statuses, plain messages, correct ones answered right."""
    problems = []
    payloads = [r.serialize() for r in requests]
    for request, sent, answer in zip(requests, payloads, call_unary_many(ch, INFER, payloads), strict=True):
        tally.add(INFER, answer.code)
        found = answer_problems(answer, sent) + (result_problems(request, answer) if request.valid else [])
        problems += [f"{'+'.join(request.recipe)}: {p}\nrequest:\n{describe(request.message)}" for p in found]
    tally.problems += problems
    return problems


def stream_round(ch: grpc.Channel, items: Sequence[FuzzRequest | bytes], tally: Tally) -> list[str]:
    """The messages on one ModelStreamInfer stream, with each one's unary answer as the oracle: exactly the
    messages that fail as unary calls carry error_message on the stream, and every message is answered."""
    payloads = [i.serialize() if isinstance(i, FuzzRequest) else i for i in items]
    unary = call_unary_many(ch, INFER, payloads)
    problems = [p for a, sent in zip(unary, payloads, strict=True) for p in answer_problems(a, sent)]
    stream = call_stream(ch, payloads)
    tally.add_stream(stream)
    problems += stream_problems(stream, [a.code != grpc.StatusCode.OK for a in unary], b"".join(payloads))
    if problems:
        problems = [f"stream of {len(payloads)}: {p}\nunary codes {[a.code.name for a in unary]}" for p in problems]
    tally.problems += problems
    return problems


def raw_round(ch: grpc.Channel, path: str, payload: bytes, tally: Tally) -> list[str]:
    answer = call_unary(ch, path, payload)
    tally.add(path, answer.code)
    problems = [f"{short(path)}: {p} (payload {payload[:200]!r})" for p in answer_problems(answer, payload)]
    tally.problems += problems
    return problems


def campaign(url: str, catalog: Catalog, tally: Tally, examples: int, alive: Callable[[], bool]) -> None:
    """Fuzz a server without failing (for bench/hardening.py): ``examples`` hypothesis examples of ModelInfer
    (1-4 requests at once), examples / 3 streams, and examples / 5 raw payloads on each RPC of the service, on
    ModelStreamInfer and on the health check; problems are collected in the tally, no shrinking. Stops early
    when ``alive`` says the server is gone."""
    quiet = settings(
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    with channel(url) as ch:

        @settings(quiet, max_examples=examples)
        @given(st.lists(infer_requests(catalog), min_size=1, max_size=4))
        def infer(requests: list[FuzzRequest]) -> None:
            if alive():
                tally.cases["ModelInfer"] += 1
                infer_round(ch, requests, tally)

        @settings(quiet, max_examples=max(1, examples // 3))
        @given(st.lists(st.one_of(infer_requests(catalog), raw_messages(STREAM, catalog)), min_size=1, max_size=6))
        def stream(items: list[FuzzRequest | bytes]) -> None:
            if alive():
                tally.cases["ModelStreamInfer"] += 1
                stream_round(ch, items, tally)

        def raw(path: str) -> Callable[[], None]:
            @settings(quiet, max_examples=max(1, examples // 5))
            @given(raw_messages(path, catalog))
            def run(payload: bytes) -> None:
                if alive():
                    tally.cases[f"raw {short(path)}"] += 1
                    raw_round(ch, path, payload, tally)

            return run

        infer()
        stream()
        for path in (*UNARY_METHODS, HEALTH_CHECK):
            raw(path)()
