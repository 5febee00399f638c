"""Every V2 datatype ONNX has, end to end through a real server and the real tritonclient: raw and
typed contents, output subsets, request ids, dynamic and fixed shapes, async and streaming calls.

Answers are compared, exactly, with ONNX Runtime run in this process on the same model file.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server
from models import save, write_config
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROWS = 4  # the derived max_batch_size (tensorgate's default, as Triton's)
COLS = 5


@dataclass(frozen=True)
class Kind:
    """One V2 datatype: its ONNX element type, the numpy dtype tritonclient takes, the two ops the
    test model applies, and the typed contents field (None: raw only)."""

    v2: str
    onnx: int
    numpy: Any
    op0: str  # OUTPUT0 = op0(INPUT0, INPUT1) (or op0(INPUT0) for unary ops)
    op1: str  # OUTPUT1 = op1(INPUT1)
    field: str | None


UNARY = {"Identity", "Not", "Neg"}
KINDS = [
    Kind("BOOL", TensorProto.BOOL, np.bool_, "Xor", "Not", "bool_contents"),
    Kind("UINT8", TensorProto.UINT8, np.uint8, "Add", "Identity", "uint_contents"),
    Kind("UINT16", TensorProto.UINT16, np.uint16, "Add", "Identity", "uint_contents"),
    Kind("UINT32", TensorProto.UINT32, np.uint32, "Mul", "Identity", "uint_contents"),
    Kind("UINT64", TensorProto.UINT64, np.uint64, "Add", "Identity", "uint64_contents"),
    Kind("INT8", TensorProto.INT8, np.int8, "Add", "Neg", "int_contents"),
    Kind("INT16", TensorProto.INT16, np.int16, "Mul", "Neg", "int_contents"),
    Kind("INT32", TensorProto.INT32, np.int32, "Add", "Neg", "int_contents"),
    Kind("INT64", TensorProto.INT64, np.int64, "Mul", "Neg", "int64_contents"),
    Kind("FP16", TensorProto.FLOAT16, np.float16, "Add", "Neg", None),
    Kind("FP32", TensorProto.FLOAT, np.float32, "Mul", "Neg", "fp32_contents"),
    Kind("FP64", TensorProto.DOUBLE, np.float64, "Add", "Neg", "fp64_contents"),
    Kind("BYTES", TensorProto.STRING, np.object_, "Identity", "Identity", "bytes_contents"),
    Kind("BF16", TensorProto.BFLOAT16, ml_dtypes.bfloat16, "Identity", "Identity", None),
]
BY_NAME = {k.v2: k for k in KINDS}
TEXTS = [b"", "héllo wörld".encode(), "日本語".encode(), "🙂".encode(), b"a\x00b", b"plain", b" ", "Ωμέγα".encode()]


def _model_name(kind: Kind) -> str:
    return f"dt_{kind.v2.lower()}"


def _two_op_model(path: Path, kind: Kind) -> None:
    shape: list[int | str | None] = ["batch", COLS]
    args0 = ["INPUT0"] if kind.op0 in UNARY else ["INPUT0", "INPUT1"]
    graph = helper.make_graph(
        [helper.make_node(kind.op0, args0, ["OUTPUT0"]), helper.make_node(kind.op1, ["INPUT1"], ["OUTPUT1"])],
        _model_name(kind),
        [helper.make_tensor_value_info(n, kind.onnx, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, kind.onnx, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    save(graph, path)


def _identity(path: Path, elem_type: int, shape: list[int | str | None]) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        path.parent.parent.name,
        [helper.make_tensor_value_info("INPUT0", elem_type, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem_type, shape)],
    )
    save(graph, path)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datatypes") / "repo"
    for kind in KINDS:
        _two_op_model(root / _model_name(kind) / "1" / "model.onnx", kind)
    _identity(root / "seq" / "1" / "model.onnx", TensorProto.FLOAT, ["batch", "seq"])
    _identity(root / "fixed" / "1" / "model.onnx", TensorProto.INT32, [2, 3])
    _identity(root / "nobatch" / "1" / "model.onnx", TensorProto.FLOAT, ["n", 3])
    write_config(root / "nobatch", 'name: "nobatch"\nmax_batch_size: 0\n')
    _identity(root / "strings" / "1" / "model.onnx", TensorProto.STRING, ["batch", "n"])
    _bf16_cast(root / "bf16_cast" / "1" / "model.onnx")
    _bf16_strings(root / "bf16_strings" / "1" / "model.onnx")
    return root


def _bf16_cast(path: Path) -> None:
    """BF16 that computes: TO_BF16 = Cast(X: FP32), TO_FP32 = Cast(B: BF16)."""
    shape: list[int | str | None] = ["batch", COLS]
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["X"], ["TO_BF16"], to=TensorProto.BFLOAT16),
            helper.make_node("Cast", ["B"], ["TO_FP32"], to=TensorProto.FLOAT),
        ],
        "bf16_cast",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("B", TensorProto.BFLOAT16, shape),
        ],
        [
            helper.make_tensor_value_info("TO_BF16", TensorProto.BFLOAT16, shape),
            helper.make_tensor_value_info("TO_FP32", TensorProto.FLOAT, shape),
        ],
    )
    save(graph, path)


def _bf16_strings(path: Path) -> None:
    """BF16 and string inputs in one model: F = Cast(B: BF16 -> FP32), SO = Identity(S: STRING)."""
    shape: list[int | str | None] = ["batch", 2]
    graph = helper.make_graph(
        [helper.make_node("Cast", ["B"], ["F"], to=TensorProto.FLOAT), helper.make_node("Identity", ["S"], ["SO"])],
        "bf16_strings",
        [
            helper.make_tensor_value_info("B", TensorProto.BFLOAT16, shape),
            helper.make_tensor_value_info("S", TensorProto.STRING, shape),
        ],
        [
            helper.make_tensor_value_info("F", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("SO", TensorProto.STRING, shape),
        ],
    )
    save(graph, path)


_sessions: dict[Path, ort.InferenceSession] = {}


def _reference(repo: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime in this process on the server's own model file."""
    path = repo / model / "1" / "model.onnx"
    if path not in _sessions:
        _sessions[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session = _sessions[path]
    ort_feeds = {
        name: (np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(a) if a.dtype == object else a)
        for name, a in feeds.items()
    }
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(names, ort_feeds), strict=True))
    return {
        n: (np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(a) if a.dtype == object else a)
        for n, a in out.items()
    }


def _bf16_from_float32(values: np.ndarray) -> np.ndarray:
    """bfloat16 by hand: the top 16 bits of each float32 (truncation)."""
    bits = (np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return bits.view(ml_dtypes.bfloat16)


def _data(kind: Kind, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    if kind.v2 == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if kind.v2 == "BYTES":
        return np.array([TEXTS[int(i)] for i in rng.integers(0, len(TEXTS), size=size)], dtype=object).reshape(shape)
    if kind.v2 in ("FP16", "FP32", "FP64", "BF16"):
        values = (rng.standard_normal(size) * 1000).astype(np.float32 if kind.v2 == "BF16" else kind.numpy)
        specials = [np.nan, np.inf, -np.inf, -0.0, 1e-40 if kind.v2 != "FP16" else 1e-7]
        values[: len(specials)] = specials[: min(len(specials), size)]
        if kind.v2 == "BF16":
            return _bf16_from_float32(values).reshape(shape)
        return values.reshape(shape)
    info = np.iinfo(kind.numpy)
    values = rng.integers(info.min, info.max, size=size, endpoint=True, dtype=kind.numpy)
    values[:2] = [info.min, info.max][: min(2, size)]
    return values.reshape(shape)


def _inputs(kind: Kind, arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), kind.v2)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _same(got: np.ndarray | None, want: np.ndarray) -> None:
    """Exact equality: same shape, dtype and values (NaN equals NaN; bit patterns for floats)."""
    assert got is not None
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert [bytes(x) for x in got.reshape(-1)] == list(want.reshape(-1))
        return
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.dtype == ml_dtypes.bfloat16:  # Identity only: every bit pattern survives, NaN payloads too
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    elif want.dtype.kind == "f":
        # Compare bits where they are not NaN (NaN payloads may differ), and NaN-ness everywhere.
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        keep = ~np.isnan(want)
        assert got[keep].tobytes() == want[keep].tobytes()
    else:
        np.testing.assert_array_equal(got, want)


def _expected(repo: Path, kind: Kind, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if kind.v2 == "BF16":
        # ONNX Runtime's Python API cannot take bfloat16 numpy arrays; Identity keeps the bits.
        return {"OUTPUT0": arrays["INPUT0"], "OUTPUT1": arrays["INPUT1"]}
    return _reference(repo, _model_name(kind), arrays)


# ---- every datatype, raw contents ----


@pytest.mark.parametrize("rows", [1, ROWS])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.v2)
def test_raw_contents_match_onnxruntime(server: Server, repo: Path, kind: Kind, rows: int) -> None:
    arrays = {"INPUT0": _data(kind, (rows, COLS), 1), "INPUT1": _data(kind, (rows, COLS), 2)}
    result = server.client.infer(_model_name(kind), _inputs(kind, arrays), request_id=f"{kind.v2}-{rows}")
    response = result.get_response()
    assert response.id == f"{kind.v2}-{rows}"
    assert response.model_name == _model_name(kind) and response.model_version == "1"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", kind.v2, [rows, COLS]),
        ("OUTPUT1", kind.v2, [rows, COLS]),
    ]
    for name, want in _expected(repo, kind, arrays).items():
        _same(result.as_numpy(name), want)


def test_model_config_is_derived_with_dynamic_batch(server: Server) -> None:
    for kind in KINDS:
        config = server.client.get_model_config(_model_name(kind)).config
        assert config.max_batch_size == ROWS
        assert [(t.name, list(t.dims)) for t in config.input] == [("INPUT0", [COLS]), ("INPUT1", [COLS])]
        meta = server.client.get_model_metadata(_model_name(kind))
        assert [(t.datatype, list(t.shape)) for t in meta.outputs] == [(kind.v2, [-1, COLS])] * 2


def test_bf16_is_the_top_half_of_float32(server: Server) -> None:
    """What the client reads back is exactly the float32 cut to its top 16 bits."""
    values = np.array([[1.0, 3.14159265, -2.5e-3, 65504.0, 1e38]], dtype=np.float32)
    sent = _bf16_from_float32(values)
    kind = BY_NAME["BF16"]
    result = server.client.infer(_model_name(kind), _inputs(kind, {"INPUT0": sent, "INPUT1": sent}))
    got = result.as_numpy("OUTPUT0")
    assert got is not None and got.dtype == ml_dtypes.bfloat16
    truncated = (values.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    assert got.astype(np.float32).tobytes() == truncated.tobytes()


def _bf16_as_float32(values: np.ndarray) -> np.ndarray:
    """bfloat16 to float32 by hand: the 16 bits become the top half of the float32."""
    return (values.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("wanted", [("TO_BF16", "TO_FP32"), ("TO_BF16",), ("TO_FP32",)], ids="+".join)
def test_bf16_cast_both_ways(server: Server, wanted: tuple[str, ...]) -> None:
    """FP32 -> BF16 rounds to nearest even (as ml_dtypes does); BF16 -> FP32 is exact."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((ROWS, COLS)) * 1000).astype(np.float32)
    x[0] = [np.inf, -0.0, 1e-40, 3.14159265, 1.01171875]  # the last is a tie: rounds to even, up
    b = rng.integers(0, 2**16, size=(ROWS, COLS), dtype=np.uint16).view(ml_dtypes.bfloat16)
    inputs = [
        grpcclient.InferInput("X", [ROWS, COLS], "FP32").set_data_from_numpy(x),
        grpcclient.InferInput("B", [ROWS, COLS], "BF16").set_data_from_numpy(b),
    ]
    result = server.client.infer("bf16_cast", inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in wanted])
    assert sorted(o.name for o in result.get_response().outputs) == sorted(wanted)
    if "TO_BF16" in wanted:
        got = result.as_numpy("TO_BF16")
        assert got is not None and got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got.view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    if "TO_FP32" in wanted:
        _same(result.as_numpy("TO_FP32"), _bf16_as_float32(b))


def test_bf16_and_strings_in_one_model(server: Server) -> None:
    b = np.array([[1.5, -2.25], [np.inf, 0.0]], dtype=np.float32).astype(ml_dtypes.bfloat16)
    s = np.array([["é", ""], ["x", "日本"]], dtype=object)
    inputs = [
        grpcclient.InferInput("B", [2, 2], "BF16").set_data_from_numpy(b),
        grpcclient.InferInput("S", [2, 2], "BYTES").set_data_from_numpy(s),
    ]
    result = server.client.infer("bf16_strings", inputs)
    _same(result.as_numpy("F"), _bf16_as_float32(b))
    _same(result.as_numpy("SO"), np.vectorize(lambda t: t.encode("utf-8"), otypes=[object])(s))


# ---- typed contents (built by hand: tritonclient always sends raw) ----


def _typed_request(model: str, kind: Kind, arrays: dict[str, np.ndarray], request_id: str) -> Any:
    assert kind.field is not None
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype=kind.v2, shape=list(array.shape))
        getattr(tensor.contents, kind.field).extend(array.reshape(-1).tolist())
    return request


@pytest.mark.parametrize("kind", [k for k in KINDS if k.field], ids=lambda k: k.v2)
def test_typed_contents_match_onnxruntime(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, repo: Path, kind: Kind
) -> None:
    arrays = {"INPUT0": _data(kind, (3, COLS), 3), "INPUT1": _data(kind, (3, COLS), 4)}
    response = stub.ModelInfer(_typed_request(_model_name(kind), kind, arrays, "typed"))
    assert response.id == "typed"
    result = grpcclient.InferResult(response)
    for name, want in _expected(repo, kind, arrays).items():
        _same(result.as_numpy(name), want)


def test_typed_request_with_zero_elements(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """A tensor with no elements has nothing to put in its contents field, and needs nothing."""
    request = service_pb2.ModelInferRequest(model_name="seq", id="empty")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[3, 0])
    response = stub.ModelInfer(request)
    assert [(o.name, list(o.shape)) for o in response.outputs] == [("OUTPUT0", [3, 0])]
    assert list(response.raw_output_contents) == [b""]


# ---- output subsets, shapes, BYTES ----


@pytest.mark.parametrize("kind", [BY_NAME["INT32"], BY_NAME["BYTES"], BY_NAME["BF16"]], ids=lambda k: k.v2)
@pytest.mark.parametrize("wanted", ["OUTPUT0", "OUTPUT1"])
def test_requested_output_subset(server: Server, repo: Path, kind: Kind, wanted: str) -> None:
    arrays = {"INPUT0": _data(kind, (2, COLS), 5), "INPUT1": _data(kind, (2, COLS), 6)}
    result = server.client.infer(
        _model_name(kind), _inputs(kind, arrays), outputs=[grpcclient.InferRequestedOutput(wanted)]
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == [wanted]
    assert len(response.raw_output_contents) == 1
    other = "OUTPUT1" if wanted == "OUTPUT0" else "OUTPUT0"
    assert result.as_numpy(other) is None
    _same(result.as_numpy(wanted), _expected(repo, kind, arrays)[wanted])


def test_requesting_both_outputs(server: Server) -> None:
    kind = BY_NAME["INT64"]
    arrays = {"INPUT0": _data(kind, (1, COLS), 7), "INPUT1": _data(kind, (1, COLS), 8)}
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1"), grpcclient.InferRequestedOutput("OUTPUT0")]
    response = server.client.infer(_model_name(kind), _inputs(kind, arrays), outputs=outputs).get_response()
    assert sorted(o.name for o in response.outputs) == ["OUTPUT0", "OUTPUT1"]


def test_dynamic_non_batch_dims(server: Server, repo: Path) -> None:
    config = server.client.get_model_config("seq").config
    assert config.max_batch_size == ROWS and [list(t.dims) for t in config.input] == [[-1]]
    assert [list(t.shape) for t in server.client.get_model_metadata("seq").inputs] == [[-1, -1]]
    kind = BY_NAME["FP32"]
    for rows, seq in ((1, 1), (2, 7), (4, 33), (3, 1000)):
        x = _data(kind, (rows, seq), seq)
        result = server.client.infer("seq", _inputs(kind, {"INPUT0": x}), request_id=f"seq{seq}")
        assert result.get_response().id == f"seq{seq}"
        _same(result.as_numpy("OUTPUT0"), _reference(repo, "seq", {"INPUT0": x})["OUTPUT0"])


def test_zero_size_non_batch_dim(server: Server) -> None:
    x = np.zeros((2, 0), dtype=np.float32)
    result = server.client.infer("seq", _inputs(BY_NAME["FP32"], {"INPUT0": x}))
    out = result.as_numpy("OUTPUT0")
    assert out is not None and out.shape == (2, 0) and out.dtype == np.float32


def test_fixed_shape_model_has_no_batching(server: Server, repo: Path) -> None:
    config = server.client.get_model_config("fixed").config
    assert config.max_batch_size == 0 and [list(t.dims) for t in config.input] == [[2, 3]]
    assert [list(t.shape) for t in server.client.get_model_metadata("fixed").inputs] == [[2, 3]]
    x = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    result = server.client.infer("fixed", _inputs(BY_NAME["INT32"], {"INPUT0": x}))
    _same(result.as_numpy("OUTPUT0"), _reference(repo, "fixed", {"INPUT0": x})["OUTPUT0"])


def test_explicit_max_batch_size_zero(server: Server, repo: Path) -> None:
    """config.pbtxt says max_batch_size: 0 for an ONNX file with a dynamic first dim: the first dim
    is an ordinary dimension (any size, no batch limit)."""
    config = server.client.get_model_config("nobatch").config
    assert config.max_batch_size == 0 and [list(t.dims) for t in config.input] == [[-1, 3]]
    assert [list(t.shape) for t in server.client.get_model_metadata("nobatch").inputs] == [[-1, 3]]
    kind = BY_NAME["FP32"]
    for n in (1, ROWS + 5):
        x = _data(kind, (n, 3), n)
        result = server.client.infer("nobatch", _inputs(kind, {"INPUT0": x}))
        _same(result.as_numpy("OUTPUT0"), _reference(repo, "nobatch", {"INPUT0": x})["OUTPUT0"])


def test_bytes_non_ascii_and_empty(server: Server, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    kind = BY_NAME["BYTES"]
    x = np.array([TEXTS, TEXTS[::-1]], dtype=object)
    result = server.client.infer("strings", _inputs(kind, {"INPUT0": x}))
    _same(result.as_numpy("OUTPUT0"), x)
    # All elements empty: raw contents are just the 4-byte zero lengths.
    empty = np.array([[b"", b"", b""]], dtype=object)
    _same(server.client.infer("strings", _inputs(kind, {"INPUT0": empty})).as_numpy("OUTPUT0"), empty)
    # Same through typed bytes_contents.
    response = stub.ModelInfer(_typed_request("strings", kind, {"INPUT0": x}, "t"))
    _same(grpcclient.InferResult(response).as_numpy("OUTPUT0"), x)


def test_str_arrays_are_sent_as_utf8(server: Server) -> None:
    """tritonclient encodes numpy str arrays as UTF-8; the server answers the same bytes."""
    words = np.array([["naïve", "", "日本"]], dtype=np.object_)
    tensor = grpcclient.InferInput("INPUT0", [1, 3], "BYTES")
    tensor.set_data_from_numpy(words)
    out = server.client.infer("strings", [tensor]).as_numpy("OUTPUT0")
    assert out is not None and [bytes(b) for b in out.reshape(-1)] == [w.encode("utf-8") for w in words.reshape(-1)]


# ---- async and streaming ----


def test_async_infer(server: Server, repo: Path) -> None:
    kind = BY_NAME["FP32"]
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    sent: dict[str, dict[str, np.ndarray]] = {}
    for i in range(6):
        arrays = {
            "INPUT0": _data(kind, (1 + i % ROWS, COLS), 10 + i),
            "INPUT1": _data(kind, (1 + i % ROWS, COLS), 20 + i),
        }
        sent[f"async-{i}"] = arrays

        def done(result: Any, error: Any) -> None:
            answers.put((result, error))

        server.client.async_infer(_model_name(kind), _inputs(kind, arrays), callback=done, request_id=f"async-{i}")
    seen = set()
    for _ in sent:
        result, error = answers.get(timeout=30)
        assert error is None, error
        rid = result.get_response().id
        seen.add(rid)
        for name, want in _reference(repo, _model_name(kind), sent[rid]).items():
            _same(result.as_numpy(name), want)
    assert seen == set(sent)


def test_stream_infer(server: Server, repo: Path) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def callback(sink: queue.Queue[tuple[Any, Any]], result: Any, error: Any) -> None:
        sink.put((result, error))

    client = grpcclient.InferenceServerClient(server.url)
    sent: dict[str, tuple[Kind, dict[str, np.ndarray]]] = {}
    try:
        client.start_stream(callback=partial(callback, answers))
        for i, name in enumerate(("INT8", "FP64", "BYTES", "UINT64", "BOOL", "FP16", "INT32", "UINT16")):
            kind = BY_NAME[name]
            arrays = {"INPUT0": _data(kind, (2, COLS), 30 + i), "INPUT1": _data(kind, (2, COLS), 40 + i)}
            sent[f"stream-{i}"] = (kind, arrays)
            client.async_stream_infer(_model_name(kind), _inputs(kind, arrays), request_id=f"stream-{i}")
        seen = set()
        for _ in sent:
            result, error = answers.get(timeout=30)
            assert error is None, error
            rid = result.get_response().id
            seen.add(rid)
            kind, arrays = sent[rid]
            assert result.get_response().model_name == _model_name(kind)
            for name, want in _expected(repo, kind, arrays).items():
                _same(result.as_numpy(name), want)
        assert seen == set(sent)
    finally:
        client.stop_stream()
        client.close()
    assert answers.empty()
