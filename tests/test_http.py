"""The KServe V2 HTTP/REST face against a real server: tritonclient.http, raw HTTP, curl and perf_analyzer,
each answer checked against the gRPC face of the same server (same answers, same error messages, one
scheduler: gRPC and HTTP requests batch together).

Written from the protocol documents, not from the implementation:

- KServe V2 REST (kserve/kserve docs/predict-api/v2/required_api.md): the endpoints, health as 200 (true) or
  4xx (false), JSON tensors whose ``data`` is nested or flat in row-major order, ``{"error": "..."}`` bodies.
- Triton's extensions (triton-inference-server/server docs/protocol/): binary tensor data
  (``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``, ``binary_data_output``; FP16 and
  BF16 only as binary data, as Triton's ReadDataFromJson / WriteDataToJson refuse them in JSON), model
  repository (``POST v2/repository/index``, ``.../models/{name}/load|unload``, a body that may be empty),
  statistics (``GET v2/models[/{name}[/versions/{v}]]/stats``).
- Triton's status codes (src/http_server.cc, HttpCodeFromError): INVALID_ARG 400, NOT_FOUND 404, UNAVAILABLE
  503, UNSUPPORTED 501, INTERNAL 500, anything else 400; an unknown model is 400 in Triton's older cores
  (INVALID_ARG) and 404 in newer ones, so both are accepted; an unknown path 404, a wrong method 405.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import http.client
import json
import re
import shlex
import shutil
import socket
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from conftest import ROOT, Server, free_port, live_waits_during, peak_rss_bytes, running
from models import identity, write_config
from onnx import TensorProto
from repository_helpers import add_const, error_of, model_with_versions
from tensorgate.frontend import http_codec
from test_perf_analyzer import PERF_ANALYZER, _installed
from test_v2_api import _add_sub_inputs
from tritonclient.utils import InferenceServerException

COLS = 5  # the dtype models: identity of [batch, COLS]
MIXED_ROWS = 4  # rows each protocol sends to the shared-batch model at once

# Triton's HTTP status for each gRPC status the same fault gets on the gRPC face.
HTTP_STATUS_FOR = {
    "INVALID_ARGUMENT": {400},
    "NOT_FOUND": {400, 404},  # unknown model: 400 in Triton's older cores, 404 in newer ones
    "UNAVAILABLE": {503},
    "UNIMPLEMENTED": {501},
    "INTERNAL": {500},
    "RESOURCE_EXHAUSTED": {429, 503},
    "ALREADY_EXISTS": {400, 409},
}


# ---------------------------------------------------------------------------------------------------------------
# the datatypes: one identity model each


@dataclass(frozen=True)
class Kind:
    v2: str
    onnx: int
    numpy: Any
    json: bool = True  # may travel as JSON; FP16 and BF16 are binary only (Triton's binary tensor data extension)

    @property
    def model(self) -> str:
        return f"id_{self.v2.lower()}"


KINDS = [
    Kind("BOOL", TensorProto.BOOL, np.bool_),
    Kind("UINT8", TensorProto.UINT8, np.uint8),
    Kind("UINT16", TensorProto.UINT16, np.uint16),
    Kind("UINT32", TensorProto.UINT32, np.uint32),
    Kind("UINT64", TensorProto.UINT64, np.uint64),
    Kind("INT8", TensorProto.INT8, np.int8),
    Kind("INT16", TensorProto.INT16, np.int16),
    Kind("INT32", TensorProto.INT32, np.int32),
    Kind("INT64", TensorProto.INT64, np.int64),
    Kind("FP16", TensorProto.FLOAT16, np.float16, json=False),
    Kind("FP32", TensorProto.FLOAT, np.float32),
    Kind("FP64", TensorProto.DOUBLE, np.float64),
    Kind("BF16", TensorProto.BFLOAT16, ml_dtypes.bfloat16, json=False),
    Kind("BYTES", TensorProto.STRING, np.object_),
]
BY_V2 = {k.v2: k for k in KINDS}
MODES = [(False, False), (True, True), (False, True), (True, False)]  # (input binary, output binary)


def sample(kind: Kind) -> np.ndarray:
    """Two rows of COLS values with each type's extremes (a JSON number that went through a double would lose
    INT64 and UINT64's)."""
    if kind.v2 == "BOOL":
        return np.array([[True, False, True, True, False], [False, False, True, False, True]])
    if kind.v2 == "BYTES":
        return np.array([["héllo".encode(), b"", b"x" * 300, "日本".encode(), b"a b"], [b"1"] * COLS], np.object_)
    if kind.v2 in ("FP16", "BF16"):
        return np.array([[0.5, -1.25, 2.0**-6, 0.0, -0.0], [1.0, 2.0, 3.0, 256.0, -512.0]]).astype(kind.numpy)
    if kind.v2 in ("FP32", "FP64"):
        info = np.finfo(kind.numpy)
        first = [0.1, -1 / 3, float(info.max), float(info.tiny), -0.0]
        return np.array([first, np.random.default_rng(3).standard_normal(COLS)], dtype=kind.numpy)
    ints = np.iinfo(kind.numpy)
    values = [[ints.min, ints.max, 0, 1, ints.max - 1], [ints.min + 1, 2, 3, ints.max // 3, 7]]
    return np.array(values, dtype=kind.numpy)


def flat(data: Any) -> list[Any]:
    """JSON ``data``, nested or flat, as a flat list of the JSON values themselves."""
    return [v for item in data for v in flat(item)] if isinstance(data, list) else [data]


def as_bytes(values: np.ndarray) -> list[Any]:
    """BYTES answers as bytes: tritonclient gives JSON strings back as str, binary ones as bytes."""
    return [v.encode() if isinstance(v, str) else v for v in values.flatten().tolist()]


MIXED_CONFIG = f"""
name: "mixed"
backend: "onnxruntime"
max_batch_size: {2 * MIXED_ROWS}
dynamic_batching {{ max_queue_delay_microseconds: 2000000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models, an identity model per datatype, ``mixed``: one instance, a queue delay and room
    for both protocols' rows in one batch, and ``big``: an identity of any length."""
    path = tmp_path_factory.mktemp("http") / "repo"
    shutil.copytree(ROOT / "model_repo", path)
    for kind in KINDS:
        identity(path / kind.model / "1" / "model.onnx", elem_type=kind.onnx, shape=("batch", COLS))
    identity(path / "mixed" / "1" / "model.onnx")
    write_config(path / "mixed", MIXED_CONFIG)
    identity(path / "big" / "1" / "model.onnx", shape=("n",))  # one FP32 tensor of any length
    write_config(path / "big", "max_batch_size: 0\n")
    identity(path / "one_string" / "1" / "model.onnx", elem_type=TensorProto.STRING, shape=("batch", 1))
    identity(path / "two_free_dims" / "1" / "model.onnx", shape=("n", "m"))
    write_config(path / "two_free_dims", "max_batch_size: 0\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# raw HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> str:
        """The message of a V2 error answer: a JSON object with a non-empty string "error"."""
        assert 400 <= self.status < 600, (self.status, self.body)
        doc = self.json()
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], self.body
        return str(doc["error"])

    def infer_outputs(self) -> dict[str, Any]:
        """The outputs of an inference answer by name: binary ones (after the JSON header, in output order)
        as raw bytes, JSON ones as their ``data``."""
        assert self.status == 200, (self.status, self.body)
        length = self.headers.get("inference-header-content-length")
        size = int(length) if length is not None else len(self.body)
        header, rest = json.loads(self.body[:size]), self.body[size:]
        out: dict[str, Any] = {}
        for o in header["outputs"]:
            n = (o.get("parameters") or {}).get("binary_data_size")
            if n is None:
                out[o["name"]] = o["data"]
            else:
                assert "data" not in o, o
                out[o["name"]], rest = rest[:n], rest[n:]
        assert rest == b"", "binary data beyond what the outputs declare"
        return out


class Http:
    """The HTTP face of a server: tritonclient.http and raw requests on one port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"127.0.0.1:{port}"
        self.client = httpclient.InferenceServerClient(self.url, connection_timeout=10, network_timeout=30)

    def call(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, path: str) -> Answer:
        return self.call("GET", path)

    def post_json(self, path: str, doc: Any) -> Answer:
        return self.call("POST", path, json.dumps(doc), {"Content-Type": "application/json"})

    def post_binary(self, path: str, doc: Any, *chunks: bytes, header_length: int | str | None = None) -> Answer:
        header = json.dumps(doc).encode()
        length = str(len(header) if header_length is None else header_length)
        return self.call(
            "POST",
            path,
            header + b"".join(chunks),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length},
        )

    def wait_listening(self, server: Server, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.get("/v2/health/live").status == 200:
                    return
            except OSError:
                pass
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no HTTP on {self.url}:\n{server.log}")
            time.sleep(0.1)

    def close(self) -> None:
        self.client.close()


def start_http(server: Server, port: int) -> Http:
    h = Http(port)
    h.wait_listening(server)
    return h


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(repo: Path, http_port: int) -> Iterator[Server]:
    with running(repo, "--http-port", str(http_port)) as s:
        yield s


@pytest.fixture(scope="module")
def web(server: Server, http_port: int) -> Iterator[Http]:
    h = start_http(server, http_port)
    yield h
    h.close()


def numbers(doc: Any) -> Any:
    """A JSON document with integers written as strings (protobuf's JSON for int64) turned into numbers."""
    if isinstance(doc, dict):
        return {k: numbers(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [numbers(v) for v in doc]
    if isinstance(doc, str) and re.fullmatch(r"-?\d+", doc):
        return int(doc)
    return doc


def assert_contains(big: Any, small: Any, where: str = "") -> None:
    """Everything ``small`` says, ``big`` says too (``big`` may add fields, e.g. defaults that protobuf's JSON of
    the gRPC answer leaves out)."""
    if isinstance(small, dict):
        assert isinstance(big, dict), f"{where}: {big!r} is not an object"
        for k, v in small.items():
            assert k in big, f"{where}.{k} missing in {big!r}"
            assert_contains(big[k], v, f"{where}.{k}")
    elif isinstance(small, list):
        assert isinstance(big, list) and len(big) == len(small), f"{where}: {big!r} vs {small!r}"
        for i, (b, s) in enumerate(zip(big, small, strict=True)):
            assert_contains(b, s, f"{where}[{i}]")
    else:
        assert numbers(big) == numbers(small), f"{where}: {big!r} != {small!r}"


def grpc_status(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


def same_error(http_call: Callable[[], object], grpc_call: Callable[[], object]) -> tuple[str, int]:
    """The same fault on both faces: the same message, and the HTTP status Triton gives that gRPC status."""
    h = error_of(http_call)
    g = error_of(grpc_call)
    assert h.message() == g.message(), (h.message(), g.message())
    code = grpc_status(g)
    assert int(h.status()) in HTTP_STATUS_FOR[code], (h.status(), code, h.message())
    return h.message(), int(h.status())


# ---------------------------------------------------------------------------------------------------------------
# health, metadata, config


def test_http_port_is_logged_and_health(server: Server, web: Http) -> None:
    assert any(
        "event=http_listening" in line and f"address=127.0.0.1:{web.port}" in line for line in server.log.splitlines()
    )
    assert web.get("/v2/health/live").status == 200
    assert web.get("/v2/health/ready").status == 200
    assert web.client.is_server_live() and web.client.is_server_ready()


def test_the_machine_is_looked_at_once_however_many_models_load(server: Server) -> None:
    """Twenty models load at once on threads at the start: the engines this machine has are detected (and
    logged) once, not once per model that got there first."""
    assert server.log.count("event=engines_detected") == 1, server.log.count("event=engines_detected")


def test_http_port_zero_and_off(repo: Path, tmp_path: Path) -> None:
    """``--http-port 0``: a free port, named in the log; ``-1``: no HTTP at all, gRPC as ever."""
    small = tmp_path / "repo"
    shutil.copytree(repo / "identity", small / "identity")
    servers = [
        Server(small, "--http-port", "0", wait_ready=False),
        Server(small, "--http-port", "-1", wait_ready=False),
    ]
    try:
        for s in servers:
            s.wait_ready()
        any_port, off = servers
        pattern = re.compile(r"event=http_listening .*address=127\.0\.0\.1:(\d+)")
        found = [m for line in any_port.log.splitlines() if (m := pattern.search(line))]
        assert found and int(found[0].group(1)) > 0, any_port.log
        web = start_http(any_port, int(found[0].group(1)))
        assert web.client.is_model_ready("identity")
        web.close()
        assert "event=http_listening" not in off.log and off.client.is_model_ready("identity")
    finally:
        codes = [s.stop() for s in servers]
    assert codes == [0, 0], [s.log for s in servers]


def test_server_metadata_matches_grpc(server: Server, web: Http) -> None:
    answer = web.get("/v2")
    assert answer.status == 200 and answer.headers["content-type"].startswith("application/json")
    meta = answer.json()
    grpc_meta = server.client.get_server_metadata(as_json=True)
    assert meta["name"] == grpc_meta["name"] == "tensorgate"
    assert meta["version"] == grpc_meta["version"]
    assert set(grpc_meta["extensions"]) <= set(meta["extensions"])
    assert {"binary_tensor_data", "statistics", "model_repository"} <= set(meta["extensions"])
    assert web.client.get_server_metadata() == meta


def test_model_readiness(server: Server, web: Http) -> None:
    cases = [("add_sub", ""), ("add_sub", "1"), ("add_sub", "2"), ("nope", ""), ("id_int64", "")]
    for name, version in cases:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        status = web.get(path).status
        ready = server.client.is_model_ready(name, version)
        assert (status == 200) if ready else (400 <= status < 500), (path, status)
        assert web.client.is_model_ready(name, version) == ready
    assert server.client.is_model_ready("add_sub") and not server.client.is_model_ready("add_sub", "2")


@pytest.mark.parametrize("model", ["identity", "add_sub", "string_identity", "id_int64", "id_fp16"])
def test_model_metadata_matches_grpc(server: Server, web: Http, model: str) -> None:
    meta = web.get(f"/v2/models/{model}").json()
    assert meta == web.get(f"/v2/models/{model}/versions/1").json() == web.client.get_model_metadata(model)
    grpc_meta = server.client.get_model_metadata(model, as_json=True)
    assert meta["name"] == model and meta["versions"] == ["1"] and meta["platform"] == grpc_meta["platform"]
    for side in ("inputs", "outputs"):
        for tensor in meta[side]:
            assert all(type(d) is int for d in tensor["shape"]), tensor  # JSON numbers, -1 for a variable size
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta[side]] == [
            (t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in grpc_meta[side]
        ]


def test_identity_metadata_is_the_documented_one(web: Http) -> None:
    meta = web.client.get_model_metadata("identity")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}]


@pytest.mark.parametrize("model", ["add_sub", "identity", "mixed"])
def test_model_config_matches_grpc(server: Server, web: Http, model: str) -> None:
    config = web.get(f"/v2/models/{model}/config").json()
    assert config == web.get(f"/v2/models/{model}/versions/1/config").json() == web.client.get_model_config(model)
    assert_contains(config, server.client.get_model_config(model, as_json=True)["config"], model)
    assert type(config["max_batch_size"]) is int


def test_add_sub_config_fields(web: Http) -> None:
    config = web.client.get_model_config("add_sub")
    assert config["name"] == "add_sub" and config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_FP32", [16]),
    ]
    assert [(g["kind"], int(g["count"])) for g in config["instance_group"]] == [("KIND_CPU", 1)]
    # as Triton's JSON: an unset message field is left out (clients test "reshape" in an input), scalars
    # and lists are written even when empty
    assert all("reshape" not in t for t in config["input"]) and config["input"][0]["is_shape_tensor"] is False
    assert "sequence_batching" not in config and "dynamic_batching" not in config  # add_sub sets none


# ---------------------------------------------------------------------------------------------------------------
# inference through tritonclient.http


def _http_inputs(a: np.ndarray, b: np.ndarray, binary: bool) -> list[httpclient.InferInput]:
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
        httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


@pytest.mark.parametrize(("in_binary", "out_binary"), MODES)
def test_add_sub_answers_as_grpc_does(server: Server, web: Http, in_binary: bool, out_binary: bool) -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 16), dtype=np.float32)
    b = rng.standard_normal((3, 16), dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=out_binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = web.client.infer("add_sub", _http_inputs(a, b, in_binary), outputs=outputs, request_id="r-42")
    want = server.client.infer("add_sub", _add_sub_inputs(a, b))
    response = result.get_response()
    assert response["id"] == "r-42" and response["model_name"] == "add_sub" and response["model_version"] == "1"
    for name in ("OUTPUT0", "OUTPUT1"):
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == (3, 16)
        np.testing.assert_array_equal(got, want.as_numpy(name))
        out = result.get_output(name)
        assert out["datatype"] == "FP32" and out["shape"] == [3, 16]
        if out_binary:
            assert out["parameters"]["binary_data_size"] == 3 * 16 * 4 and "data" not in out
        else:
            assert "data" in out and "binary_data_size" not in (out.get("parameters") or {})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_versioned_infer_and_requested_subset(web: Http) -> None:
    a = np.ones((1, 16), np.float32)
    result = web.client.infer(
        "add_sub", _http_inputs(a, a, True), model_version="1", outputs=[httpclient.InferRequestedOutput("OUTPUT1")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


@pytest.mark.parametrize("kind", KINDS, ids=[k.v2 for k in KINDS])
def test_every_datatype_in_json_and_binary(web: Http, kind: Kind) -> None:
    x = sample(kind)
    for in_binary, out_binary in MODES:
        if not kind.json and not (in_binary and out_binary):
            continue  # refused: test_fp16_and_bf16_travel_only_as_binary_data
        tensor = httpclient.InferInput("INPUT0", list(x.shape), kind.v2)
        tensor.set_data_from_numpy(x, binary_data=in_binary)
        result = web.client.infer(
            kind.model, [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", out_binary)]
        )
        out = result.get_output("OUTPUT0")
        assert out["datatype"] == kind.v2 and out["shape"] == [2, COLS], out
        assert ("binary_data_size" in (out.get("parameters") or {})) == out_binary, out
        got = result.as_numpy("OUTPUT0")
        mode = f"input {'binary' if in_binary else 'JSON'}, output {'binary' if out_binary else 'JSON'}"
        if kind.v2 == "BYTES":
            assert as_bytes(got) == as_bytes(x), mode
            if not out_binary:
                assert all(isinstance(v, str) for v in out["data"]), out  # BYTES as JSON strings
            continue
        assert got.dtype == x.dtype and got.shape == x.shape, mode
        assert got.tobytes() == x.tobytes(), mode  # bit for bit: -0.0, the extremes of INT64 and UINT64
        if not out_binary and kind.v2 == "BOOL":
            assert all(type(v) is bool for v in flat(out["data"])), out  # JSON true/false
        if not out_binary and kind.v2 in ("INT64", "UINT64"):
            assert flat(out["data"]) == [int(v) for v in x.flatten()], out  # exact JSON integers


BINARY_ONLY = [(v2, direction) for v2 in ("FP16", "BF16") for direction in ("input", "output")]


@pytest.mark.parametrize(("v2", "direction"), BINARY_ONLY, ids=[f"{v}-{d}" for v, d in BINARY_ONLY])
def test_fp16_and_bf16_travel_only_as_binary_data(web: Http, v2: str, direction: str) -> None:
    """Refused as JSON with 400 and a message that says to send binary data (Triton's rule; JSON has no 16-bit
    floats), by hand since tritonclient refuses to send BF16 as JSON."""
    kind = BY_V2[v2]
    x = sample(kind)[:1]
    path = f"/v2/models/{kind.model}/infer"
    tensor: dict[str, Any] = {"name": "INPUT0", "shape": list(x.shape), "datatype": v2}
    if direction == "input":
        answer = web.post_json(path, {"inputs": [{**tensor, "data": x.astype(np.float64).tolist()}]})
    else:
        doc = {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
        }
        answer = web.post_binary(path, doc, x.tobytes())
    assert answer.status == 400, (answer.status, answer.body)
    message = answer.error()
    assert "binary" in message, message
    if direction == "input":
        assert "INPUT0" in message, message
    tensor_in = httpclient.InferInput("INPUT0", list(x.shape), v2)
    tensor_in.set_data_from_numpy(x)
    result = web.client.infer(kind.model, [tensor_in])  # binary both ways: fine
    assert result.as_numpy("OUTPUT0").tobytes() == x.tobytes()


def test_string_model_in_json(web: Http) -> None:
    text = np.array([["héllo"], [""], ["x" * 1000]], dtype=np.object_)
    tensor = httpclient.InferInput("TEXT", [3, 1], "BYTES")
    tensor.set_data_from_numpy(text, binary_data=False)
    result = web.client.infer("string_identity", [tensor], outputs=[httpclient.InferRequestedOutput("TEXT_OUT", False)])
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("TEXT_OUT").flatten()] == [
        "héllo",
        "",
        "x" * 1000,
    ]
    assert result.get_output("TEXT_OUT")["data"] == ["héllo", "", "x" * 1000]


# ---------------------------------------------------------------------------------------------------------------
# inference by hand: what tritonclient cannot express

ROW = [float(i) for i in range(16)]


def test_json_data_nested_or_flat(web: Http) -> None:
    flat = {"inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "FP32", "data": ROW + ROW[::-1]}]}
    nested = {"inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "FP32", "data": [ROW, ROW[::-1]]}]}
    answers = [web.post_json("/v2/models/identity/infer", doc) for doc in (flat, nested)]
    for answer in answers:
        assert answer.status == 200, answer.body
        assert answer.headers["content-type"].startswith("application/json")
        (out,) = answer.json()["outputs"]
        assert out["name"] == "OUTPUT0" and out["datatype"] == "FP32" and out["shape"] == [2, 16]
        assert np.ravel(out["data"]).tolist() == ROW + ROW[::-1]


def test_request_parameters_and_binary_data_output(web: Http) -> None:
    a = np.arange(16, dtype=np.float32)
    doc = {
        "id": "p1",
        "parameters": {"binary_data_output": True, "custom_flag": True, "note": "free text", "count": 3},
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a.tolist()},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
        ],
    }
    answer = web.post_json("/v2/models/add_sub/infer", doc)  # no output listed: binary_data_output covers all
    assert answer.status == 200, answer.body
    assert "inference-header-content-length" in answer.headers  # binary data follows the JSON
    header = json.loads(answer.body[: int(answer.headers["inference-header-content-length"])])
    assert header["id"] == "p1"
    outputs = answer.infer_outputs()
    assert np.frombuffer(outputs["OUTPUT0"], np.float32).tolist() == (a + 1).tolist()
    assert np.frombuffer(outputs["OUTPUT1"], np.float32).tolist() == (a - 1).tolist()

    # a listed output is JSON unless its own binary_data is true, whatever binary_data_output says (Triton's
    # CheckBinaryOutputData: binary_data_output is for the outputs a request does not list)
    doc["outputs"] = [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": True}}]
    outputs = web.post_json("/v2/models/add_sub/infer", doc).infer_outputs()
    assert np.ravel(outputs["OUTPUT0"]).tolist() == (a + 1).tolist()  # JSON data
    assert np.frombuffer(outputs["OUTPUT1"], np.float32).tolist() == (a - 1).tolist()  # binary

    doc["parameters"] = {"binary_data_output": False}
    doc["outputs"] = [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]
    outputs = web.post_json("/v2/models/add_sub/infer", doc).infer_outputs()
    assert list(outputs) == ["OUTPUT0"] and np.frombuffer(outputs["OUTPUT0"], np.float32).tolist() == (a + 1).tolist()

    del doc["parameters"], doc["outputs"]  # no outputs named: all of them, as JSON
    answer = web.post_json("/v2/models/add_sub/infer", doc)
    assert "inference-header-content-length" not in answer.headers
    outputs = answer.infer_outputs()
    assert sorted(outputs) == ["OUTPUT0", "OUTPUT1"] and np.ravel(outputs["OUTPUT0"]).tolist() == (a + 1).tolist()


def test_binary_data_size_mixed_with_json(web: Http) -> None:
    a = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.25, np.float32)
    doc = {
        "inputs": [
            {"name": "INPUT0", "shape": [2, 16], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "INPUT1", "shape": [2, 16], "datatype": "FP32", "data": b.tolist()},
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}],
    }
    answer = web.post_binary("/v2/models/add_sub/infer", doc, a.tobytes())
    outputs = answer.infer_outputs()
    assert np.frombuffer(outputs["OUTPUT0"], np.float32).tolist() == (a + b).flatten().tolist()
    assert np.ravel(outputs["OUTPUT1"]).tolist() == (a - b).flatten().tolist()
    assert "inference-header-content-length" in answer.headers  # a binary output: JSON + data, JSON's length

    # two binary inputs: their data follows the JSON in the order of the inputs
    doc["inputs"][1] = {"name": "INPUT1", "shape": [2, 16], "datatype": "FP32", "parameters": {"binary_data_size": 128}}
    outputs = web.post_binary("/v2/models/add_sub/infer", doc, a.tobytes(), b.tobytes()).infer_outputs()
    assert np.frombuffer(outputs["OUTPUT0"], np.float32).tolist() == (a + b).flatten().tolist()
    assert np.ravel(outputs["OUTPUT1"]).tolist() == (a - b).flatten().tolist()


def raw_binary(web: Http, model: str, body: bytes) -> Answer:
    """Triton's raw binary request: Inference-Header-Content-Length 0, the whole body the one input's data."""
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "0"}
    return web.call("POST", f"/v2/models/{model}/infer", body, headers)


@pytest.mark.parametrize("kind", [k for k in KINDS if k.v2 != "BYTES"], ids=lambda k: k.v2)
def test_raw_binary_request(web: Http, kind: Kind) -> None:
    row = sample(kind)[:1]  # the model batches: a raw request is a batch of one, dims from the config
    answer = raw_binary(web, kind.model, row.tobytes())
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.infer_outputs() == {"OUTPUT0": row.tobytes()}  # every output, as binary data


def test_raw_binary_request_deduces_the_variable_dim_and_one_string(web: Http) -> None:
    values = np.arange(37, dtype=np.float32)  # big: max_batch_size 0, dims [-1]
    answer = raw_binary(web, "big", values.tobytes())
    assert answer.infer_outputs() == {"OUTPUT0": values.tobytes()}
    header = json.loads(answer.body[: int(answer.headers["inference-header-content-length"])])
    assert header["outputs"][0]["shape"] == [37]

    text = "427 héllo".encode()  # a BYTES input of shape [1]: the body is its one element
    outputs = raw_binary(web, "one_string", text).infer_outputs()
    assert outputs == {"OUTPUT0": len(text).to_bytes(4, "little") + text}  # BYTES binary data: length, bytes


@pytest.mark.parametrize(
    ("model", "body", "words"),
    [
        ("add_sub", bytes(128), "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in"),
        ("id_bytes", b"427", "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]"),
        ("two_free_dims", bytes(16), "The shape of the raw input 'INPUT0' can not be deduced because there are more"),
        ("id_fp32", bytes(7), "input 'INPUT0'"),  # 7 bytes are no [1, 5] FP32: the usual size check says so
        ("no_such_model", bytes(4), "Request for unknown model: 'no_such_model'"),
    ],
    ids=["two-inputs", "bytes-of-5", "two-free-dims", "wrong-size", "unknown-model"],
)
def test_raw_binary_request_refused_as_triton(web: Http, model: str, body: bytes, words: str) -> None:
    answer = raw_binary(web, model, body)
    assert answer.status in (400, 404), (answer.status, answer.body)
    assert words in answer.error()


def _chunked(web: Http, path: str, body: bytes, transfer: str) -> Answer:
    """A POST whose body is sent in one HTTP/1.1 chunk under ``Transfer-Encoding: transfer``."""
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Transfer-Encoding", transfer)
        conn.putheader("Inference-Header-Content-Length", "0")
        conn.endheaders()
        conn.send(f"{len(body):X}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def test_requests_http_cannot_parse_get_400_and_leave_the_log_quiet(server: Server, web: Http) -> None:
    """aiohttp logs a request it cannot parse at ERROR with a traceback quoting the client's bytes: 200 such
    requests from anyone who reaches the port would be 2,200 log lines and 200 ERROR alerts. Each gets its
    400, and the log (at the default INFO) says nothing of them."""
    before = server.log.count("\n")
    bad = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"A" * 4000 + b"\r\n\r\n"
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as conn:
            conn.sendall(bad)
            assert conn.recv(64).split(b" ")[1] == b"400", "not refused"
    assert web.get("/v2/health/ready").status == 200  # still serving
    added = server.log.split("\n")[before:]
    assert not [line for line in added if "aiohttp" in line or "Traceback" in line or "AAAA" in line], added[:5]


def test_transfer_codings_other_than_chunked_are_refused(web: Http) -> None:
    """aiohttp undoes only chunked: a `gzip, chunked` body would reach the model still compressed (a raw
    binary request into a model with a free dim would run on the compressed bytes). Refused as Triton
    refuses them; plain chunked is taken."""
    values = np.arange(10, dtype=np.float32)
    plain = _chunked(web, "/v2/models/big/infer", values.tobytes(), "chunked")
    assert plain.infer_outputs() == {"OUTPUT0": values.tobytes()}
    refused = _chunked(web, "/v2/models/big/infer", gzip.compress(values.tobytes()), "gzip, chunked")
    assert refused.status == 400 and "Unsupported HTTP header: Transfer-Encoding 'gzip, chunked'" in refused.error()


def _one_input(**fields: Any) -> dict[str, Any]:
    tensor = {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": ROW, **fields}
    return {"inputs": [{k: v for k, v in tensor.items() if v is not None}]}


BINARY_INPUT = {
    "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]
}
F32_ROW = np.arange(16, dtype=np.float32).tobytes()

MALFORMED: list[tuple[str, Callable[[Http], Answer]]] = [
    (
        "not JSON",
        lambda w: w.call("POST", "/v2/models/identity/infer", b"{not json", {"Content-Type": "application/json"}),
    ),
    ("JSON but not an object", lambda w: w.post_json("/v2/models/identity/infer", [1, 2])),
    ("no inputs", lambda w: w.post_json("/v2/models/identity/infer", {"id": "x"})),
    ("inputs not a list", lambda w: w.post_json("/v2/models/identity/infer", {"inputs": 5})),
    ("input without a name", lambda w: w.post_json("/v2/models/identity/infer", _one_input(name=None))),
    ("input without a datatype", lambda w: w.post_json("/v2/models/identity/infer", _one_input(datatype=None))),
    ("shape not a list", lambda w: w.post_json("/v2/models/identity/infer", _one_input(shape="1,16"))),
    ("too few values for the shape", lambda w: w.post_json("/v2/models/identity/infer", _one_input(data=ROW[:15]))),
    ("too many values for the shape", lambda w: w.post_json("/v2/models/identity/infer", _one_input(data=[*ROW, 1.0]))),
    ("strings for FP32", lambda w: w.post_json("/v2/models/identity/infer", _one_input(data=["a"] * 16))),
    ("neither data nor binary_data_size", lambda w: w.post_json("/v2/models/identity/infer", _one_input(data=None))),
    (
        "binary_data_size without binary data",
        lambda w: w.post_json("/v2/models/identity/infer", BINARY_INPUT),
    ),
    (
        "Inference-Header-Content-Length beyond the body",
        lambda w: w.post_binary("/v2/models/identity/infer", BINARY_INPUT, F32_ROW, header_length=10_000),
    ),
    (
        "Inference-Header-Content-Length not a number",
        lambda w: w.post_binary("/v2/models/identity/infer", BINARY_INPUT, F32_ROW, header_length="many"),
    ),
    (
        "binary_data_size beyond the body",
        lambda w: w.post_binary("/v2/models/identity/infer", BINARY_INPUT, F32_ROW[:60]),
    ),
    (
        "binary_data_size not a number",
        lambda w: w.post_binary(
            "/v2/models/identity/infer",
            {"inputs": [{**BINARY_INPUT["inputs"][0], "parameters": {"binary_data_size": "64"}}]},
            F32_ROW,
        ),
    ),
]


@pytest.mark.parametrize("send", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_400_with_an_error(web: Http, send: Callable[[Http], Answer]) -> None:
    answer = send(web)
    assert answer.status == 400, (answer.status, answer.body)
    answer.error()
    good = web.post_json("/v2/models/identity/infer", _one_input())  # the connection's fault stays its own
    assert good.status == 200, good.body


INFER = "/v2/models/identity/infer"
LONE = "\ud800"  # a lone surrogate: valid JSON as the escape \ud800, but no Unicode text (UTF-8 cannot hold it)
DEEP = "[" * 100_000 + "]" * 100_000  # nested far deeper than Python's json parser recurses (~1000)


def _big_number(doc: dict[str, Any]) -> str:
    """``doc`` as JSON with its first 0.0 written as an integer of 5000 digits (beyond Python's int-digits limit)."""
    return json.dumps(doc).replace("0.0", "9" * 5000, 1)


# (case, the request, what the 400's message must say)
REFUSED: list[tuple[str, Callable[[Http], Answer], str]] = [
    ("infer: JSON nested 100000 deep", lambda w: w.call("POST", INFER, DEEP), "nested too deeply"),
    (
        "infer: a 5000-digit integer",
        lambda w: w.call("POST", INFER, _big_number(_one_input())),
        "an integer of more than",
    ),
    ("'outputs': 5", lambda w: w.post_json(INFER, {**_one_input(), "outputs": 5}), "'outputs' must be a list"),
    (
        "a parameter beyond int64",
        lambda w: w.post_json(INFER, {**_one_input(), "parameters": {"knob": 2**64}}),
        "request parameter 'knob': the integer is out of the int64 range",
    ),
    ("'outputs': true", lambda w: w.post_json(INFER, {**_one_input(), "outputs": True}), "'outputs' must be a list"),
    (
        "'outputs' an object",
        lambda w: w.post_json(INFER, {**_one_input(), "outputs": {"name": "OUTPUT0"}}),
        "'outputs' must be a list",
    ),
    ("id: a lone surrogate", lambda w: w.post_json(INFER, {**_one_input(), "id": LONE}), "id holds a string"),
    ("input name: a lone surrogate", lambda w: w.post_json(INFER, _one_input(name="IN" + LONE)), "inputs[0].name "),
    ("datatype: a lone surrogate", lambda w: w.post_json(INFER, _one_input(datatype=LONE)), "inputs[0].datatype "),
    (
        "parameter key: a lone surrogate",
        lambda w: w.post_json(INFER, {**_one_input(), "parameters": {LONE: 1}}),
        "parameters has a key",
    ),
    (
        "parameter value: a lone surrogate",
        lambda w: w.post_json(INFER, {**_one_input(), "parameters": {"note": LONE}}),
        "parameters.note ",
    ),
    (
        "input parameter value: a lone surrogate",
        lambda w: w.post_json(INFER, _one_input(parameters={"note": LONE})),
        "inputs[0].parameters.note ",
    ),
    (
        "BYTES element: a lone surrogate",
        lambda w: w.post_json(
            "/v2/models/string_identity/infer",
            {"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": ["ok", "x" + LONE]}]},
        ),
        "inputs[0].data[1] holds a string that is not valid Unicode",
    ),
    (
        "output name: a lone surrogate",
        lambda w: w.post_json(INFER, {**_one_input(), "outputs": [{"name": LONE}]}),
        "outputs[0].name ",
    ),
    (
        "Inference-Header-Content-Length: a superscript two",
        # "²" in UTF-8 on the wire (http.client writes header values as latin-1); str.isdigit() takes it
        lambda w: w.post_binary(INFER, BINARY_INPUT, F32_ROW, header_length="²".encode().decode("latin-1")),
        "Inference-Header-Content-Length is",
    ),
    (
        "Inference-Header-Content-Length: 5000 digits",
        lambda w: w.post_binary(INFER, BINARY_INPUT, F32_ROW, header_length="0" * 4999 + "1"),
        "Inference-Header-Content-Length is",
    ),
    (
        "a body that does not decode as its Content-Encoding says",
        lambda w: w.call("POST", INFER, b"not gzip", {"Content-Encoding": "gzip"}),
        "the request body cannot be read",
    ),
    (
        "a compressed body cut short",
        lambda w: w.call(
            "POST", INFER, gzip.compress(json.dumps(_one_input()).encode())[:-12], {"Content-Encoding": "gzip"}
        ),
        "the request body cannot be read",
    ),
    (
        "a Content-Encoding not known",
        lambda w: w.call("POST", INFER, json.dumps(_one_input()), {"Content-Encoding": "br"}),
        "unsupported Content-Encoding 'br'",
    ),
    (
        "binary_data_output not a boolean",
        lambda w: w.post_json(INFER, {**_one_input(), "parameters": {"binary_data_output": "true"}}),
        "Unable to parse 'binary_data_output'",
    ),
    (
        "an output's binary_data not a boolean",
        lambda w: w.post_json(
            INFER, {**_one_input(), "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": 1}}]}
        ),
        "Unable to parse 'binary_data'",
    ),
    (
        "a parameter named triton_*",
        lambda w: w.post_json(INFER, {**_one_input(), "parameters": {"triton_enable_empty_final_response": True}}),
        "parameter keys starting with 'triton_' are reserved",
    ),
    (
        "an input with both data and binary data",
        lambda w: w.post_binary(INFER, _one_input(parameters={"binary_data_size": 64}), F32_ROW),
        "must set only one of 'data', the binary_data_size parameter and the shared_memory_region parameter, not "
        "'data' and the binary_data_size parameter",
    ),
    (
        "index: ready not a boolean",
        lambda w: w.post_json("/v2/repository/index", {"ready": "yes"}),
        "'ready', if given, is true or false",
    ),
    ("index: JSON nested 100000 deep", lambda w: w.call("POST", "/v2/repository/index", DEEP), "nested too deeply"),
    (
        "index: a 5000-digit integer",
        lambda w: w.call("POST", "/v2/repository/index", '{"ready": ' + "9" * 5000 + "}"),
        "an integer of more than",
    ),
    (
        "load: JSON nested 100000 deep",
        lambda w: w.call("POST", "/v2/repository/models/identity/load", DEEP),
        "nested too deeply",
    ),
    (
        "load: a config with a lone surrogate",
        lambda w: w.post_json(
            "/v2/repository/models/identity/load", {"parameters": {"config": '{"x": "' + LONE + '"}'}}
        ),
        "parameters.config holds a string that is not valid Unicode",
    ),
]


@pytest.mark.parametrize(("send", "names"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_requests_say_what_is_wrong(
    server: Server, web: Http, send: Callable[[Http], Answer], names: str
) -> None:
    """A client's mistake is a 400 naming it, never a 500: no internal error is counted."""
    before = server.sample("tensorgate_internal_errors_total ")
    answer = send(web)
    assert answer.status == 400, (answer.status, answer.body[:300])
    assert names in answer.error(), answer.error()
    assert server.sample("tensorgate_internal_errors_total ") == before
    good = web.post_json(INFER, _one_input())
    assert good.status == 200, good.body


def test_an_input_in_a_region_not_registered_is_refused_as_over_grpc(web: Http) -> None:
    """(tests/test_shared_memory.py has the extension itself.)"""
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 64}
    doc = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": params}]}
    answer = web.post_json(INFER, doc)
    assert (answer.status, answer.error()) == (404, "Unable to find shared memory region: 'r'"), answer.body


def test_compressed_requests_and_responses(web: Http) -> None:
    """Bodies in gzip and deflate (with zlib's header or raw), from tritonclient and by hand."""
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    for algorithm in ("gzip", "deflate"):
        tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        result = web.client.infer("identity", [tensor], request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    for algorithm in ("gzip", "deflate"):  # an answer compressed as the client accepts it
        tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        result = web.client.infer("identity", [tensor], response_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
        answer = web.call("POST", INFER, json.dumps(_one_input()), {"Accept-Encoding": algorithm})
        assert answer.headers["content-encoding"] == algorithm
        decoded = gzip.decompress(answer.body) if algorithm == "gzip" else zlib.decompress(answer.body)
        assert json.loads(decoded)["outputs"][0]["data"] == ROW
    for refused in ("gzip;q=0, deflate;q=0", "identity", "*;q=0", "br"):  # takes neither: not compressed
        answer = web.call("POST", INFER, json.dumps(_one_input()), {"Accept-Encoding": refused})
        assert "content-encoding" not in answer.headers and answer.json()["outputs"][0]["data"] == ROW, refused
    answer = web.call("POST", INFER, json.dumps(_one_input()), {"Accept-Encoding": "gzip;q=0.2, deflate"})
    assert answer.headers["content-encoding"] == "deflate"
    body = json.dumps(_one_input()).encode()
    # gzip in two members (RFC 1952: a gzip file may be several), and deflate with zlib's header or raw
    half = len(body) // 2
    answer = web.call(
        "POST", INFER, gzip.compress(body[:half]) + gzip.compress(body[half:]), {"Content-Encoding": "gzip"}
    )
    assert answer.status == 200, answer.body
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for encoded, coding in [(zlib.compress(body), "deflate"), (raw.compress(body) + raw.flush(), "deflate")]:
        answer = web.call("POST", INFER, encoded, {"Content-Encoding": coding})
        assert answer.status == 200, answer.body


def test_a_compression_bomb_is_refused_without_inflating_it(repo: Path) -> None:
    """A 1 MiB gzip body that inflates to 1 GiB, against a 4 MiB message limit: 413 naming the limit,
    the connection closed (nothing more of it is read), the server's memory not grown by the bomb, and
    gRPC served throughout (the inflating happens on a thread, bounded by the limit)."""
    port = free_port()
    flags = ("--http-port", str(port), "--grpc-max-message-bytes", str(4 << 20))
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(squeeze.compress(bytes(1 << 24)) for _ in range(64)) + squeeze.flush()
    with running(repo, *flags) as server:
        wait_for_http(port)
        before = peak_rss_bytes(server.proc.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
            conn.sendall(head.encode() + bomb)
            answer = b""
            while chunk := conn.recv(65536):  # to the end: the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"exceeds 4194304 bytes (--grpc-max-message-bytes)" in answer
        assert peak_rss_bytes(server.proc.pid) - before < 64 << 20
        assert server.client.is_server_live() and start_http(server, port).get("/v2/health/ready").status == 200


def test_data_nested_hundreds_deep(web: Http) -> None:
    """``data`` may nest as deep as the JSON parser goes: its values are taken in row-major order."""
    body = '{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":%s}]}'
    answer = web.call("POST", INFER, body % ("[" * 900 + json.dumps(ROW) + "]" * 900))
    assert answer.status == 200, answer.body[:300]
    assert np.ravel(answer.infer_outputs()["OUTPUT0"]).tolist() == ROW
    deep: list[Any] = [ROW]
    for _ in range(100_000):
        deep = [deep]
    assert http_codec._flatten(deep) == ROW  # without recursion, whatever the depth


def test_a_client_that_hangs_up_mid_body_is_no_server_error(server: Server, web: Http) -> None:
    """A client that sends part of its body and closes: nobody to answer, and not a server bug (neither
    counted as an internal error nor logged as one); the server goes on serving."""
    before = server.sample("tensorgate_internal_errors_total ")
    errors = server.log.count("level=ERROR")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", web.port)) as raw:
            head = b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            raw.sendall(head + b"{" * 1000)
            time.sleep(0.2)  # the server reads the part sent and waits for the rest
    time.sleep(0.5)  # the server sees the hang-ups
    assert server.sample("tensorgate_internal_errors_total ") == before
    assert server.log.count("level=ERROR") == errors, server.log[-3000:]
    assert web.post_json(INFER, _one_input()).status == 200


@pytest.mark.parametrize(("count", "json_in"), [(8 << 20, True), (4 << 20, False)], ids=["request", "response"])
def test_large_json_does_not_stall_other_calls(server: Server, web: Http, count: int, json_in: bool) -> None:
    """A valid request whose JSON is large (a 16 MiB body of 8M values; or 4M values answered as JSON) is
    answered in full, while gRPC's ServerLive, called every 5 ms meanwhile, never waits more than half of that
    request's own latency: the JSON is parsed and written off the event loop (before, the loop stalled for most
    of it). What still holds the loop is the longest single C call that holds the GIL, json.loads of the body
    (about a fifth of the latency here)."""
    if json_in:
        values = ",".join(["0"] * count)
        doc = '{"parameters":{"binary_data_output":true},"inputs":[{"name":"INPUT0","shape":[%d],"datatype":"FP32",'
        body = (doc % count + '"data":[' + values + "]}]}").encode()
        headers = {"Content-Type": "application/json"}
    else:
        sizes = {"binary_data_size": 4 * count}
        header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [count], "datatype": "FP32", "parameters": sizes}]})
        body = header.encode() + bytes(4 * count)
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    answer, latency, waits = live_waits_during(
        server.url, lambda: web.call("POST", "/v2/models/big/infer", body, headers)
    )
    out = answer.infer_outputs()["OUTPUT0"]
    if json_in:
        assert out == bytes(4 * count)
    else:
        assert len(out) == count and not any(out)
    assert max(waits) < latency / 2, (max(waits), latency)


def test_unknown_paths_and_methods(web: Http) -> None:
    """Answered as Triton answers them: a JSON error body (clients parse every error as JSON)."""
    for path in ("/v2/nope", "/nope", "/v2/models/identity/"):
        answer = web.get(path)
        assert (answer.status, answer.error()) == (404, "Not Found"), path
    for method, path in [
        ("GET", "/v2/models/identity/infer"),
        ("POST", "/v2/health/ready"),
        ("GET", "/v2/repository/index"),
    ]:
        answer = web.call(method, path, b"" if method == "POST" else None)
        assert (answer.status, answer.error()) == (405, "Method Not Allowed"), path  # index: POST, as Triton's
        assert answer.headers["allow"] in ("POST", "GET"), answer.headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/trace/setting"),
        ("POST", "/v2/models/identity/trace/setting"),
        ("GET", "/v2/logging"),
    ],
)
def test_triton_extensions_not_served_say_so(web: Http, method: str, path: str) -> None:
    """Trace and log settings: 501 and the reason, as their RPCs over gRPC (UNIMPLEMENTED)."""
    answer = web.call(method, path, b"{}" if method == "POST" else None)
    assert answer.status == 501 and "is not supported by tensorgate yet" in answer.error(), answer.body


def test_tritonclient_calls_to_extensions_not_served_get_the_reason(web: Http) -> None:
    for call in (
        web.client.get_trace_settings,
        web.client.get_log_settings,
    ):
        with pytest.raises(InferenceServerException, match="is not supported by tensorgate yet"):
            call()


# ---------------------------------------------------------------------------------------------------------------
# errors: the same fault, the same message as on gRPC


def _identity_request(mod: Any, shape: list[int], datatype: str = "FP32") -> list[Any]:
    dtype = {"FP32": np.float32, "INT32": np.int32}[datatype]
    tensor = mod.InferInput("INPUT0", shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype))
    return [tensor]


def _extra_input(mod: Any) -> list[Any]:
    extra = mod.InferInput("NOPE", [1, 16], "FP32")
    extra.set_data_from_numpy(np.zeros((1, 16), np.float32))
    return [*_identity_request(mod, [1, 16]), extra]


def _only_input0(mod: Any) -> list[Any]:
    tensor = mod.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
    return [tensor]


FAULTS: list[tuple[str, str, str, Callable[[Any], list[Any]], list[str]]] = [
    ("unknown model", "no_such_model", "", lambda m: _identity_request(m, [1, 16]), []),
    ("unknown version", "identity", "7", lambda m: _identity_request(m, [1, 16]), []),
    ("wrong shape", "identity", "", lambda m: _identity_request(m, [1, 15]), []),
    ("wrong datatype", "identity", "", lambda m: _identity_request(m, [1, 16], "INT32"), []),
    ("batch too large", "identity", "", lambda m: _identity_request(m, [5, 16]), []),
    ("missing input", "add_sub", "", _only_input0, []),
    ("unknown input", "identity", "", _extra_input, []),
    ("unknown output", "identity", "", lambda m: _identity_request(m, [1, 16]), ["NOPE"]),
]


@pytest.mark.parametrize(("model", "version", "inputs", "outputs"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_infer_errors_are_the_grpc_errors(
    server: Server, web: Http, model: str, version: str, inputs: Callable[[Any], list[Any]], outputs: list[str]
) -> None:
    def over(mod: Any, client: Any) -> Callable[[], object]:
        requested = [mod.InferRequestedOutput(n) for n in outputs] or None
        return lambda: client.infer(model, inputs(mod), model_version=version, outputs=requested)

    message, _ = same_error(over(httpclient, web.client), over(grpcclient, server.client))
    assert message


def test_non_inference_errors_are_the_grpc_errors(server: Server, web: Http) -> None:
    g, h = server.client, web.client
    message, status = same_error(lambda: h.get_model_metadata("nope"), lambda: g.get_model_metadata("nope"))
    assert "nope" in message and status in (400, 404)
    same_error(lambda: h.get_model_metadata("identity", "7"), lambda: g.get_model_metadata("identity", "7"))
    same_error(lambda: h.get_model_config("nope"), lambda: g.get_model_config("nope"))
    same_error(lambda: h.get_inference_statistics("nope"), lambda: g.get_inference_statistics("nope"))
    # load and unload outside explicit mode
    same_error(lambda: h.load_model("identity"), lambda: g.load_model("identity"))
    same_error(lambda: h.unload_model("identity"), lambda: g.unload_model("identity"))
    assert g.is_model_ready("identity") and h.is_model_ready("identity")
    answer = web.get("/v2/models/nope")
    assert answer.status in (400, 404) and "nope" in answer.error()


# ---------------------------------------------------------------------------------------------------------------
# statistics and the repository


def _identity_http(rows: int) -> list[httpclient.InferInput]:
    tensor = httpclient.InferInput("INPUT0", [rows, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((rows, 16), np.float32))
    return [tensor]


def test_statistics_match_grpc(server: Server, web: Http) -> None:
    before = web.get("/v2/models/identity/stats").json()["model_stats"][0]
    for _ in range(3):
        web.client.infer("identity", _identity_http(2))
    stats = web.client.get_inference_statistics("identity")
    (after,) = stats["model_stats"]
    assert after["name"] == "identity" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] - before["execution_count"] == 3
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 3
    assert type(success["ns"]) is int and success["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] >= before["last_inference"] > 0
    assert any(b["batch_size"] == 2 for b in after["batch_stats"])
    # every field Triton writes, the response cache's too (tensorgate has none: 0)
    assert after["inference_stats"]["cache_hit"] == after["inference_stats"]["cache_miss"] == {"count": 0, "ns": 0}
    assert_contains(stats, server.client.get_inference_statistics("identity", as_json=True), "stats")
    assert web.get("/v2/models/identity/versions/1/stats").json() == stats

    every = web.get("/v2/models/stats").json()["model_stats"]
    want = {"add_sub", "identity", "string_identity", "mixed", "big", "one_string", "two_free_dims"}
    want |= {k.model for k in KINDS}
    assert {s["name"] for s in every} == want
    assert web.client.get_inference_statistics() == {"model_stats": every}


def test_repository_index_matches_grpc(server: Server, web: Http) -> None:
    index = web.client.get_model_repository_index()  # POST with an empty body
    rows = {(m["name"], m.get("version", ""), m["state"]) for m in index}
    grpc_rows = {
        (m["name"], m.get("version", ""), m["state"])
        for m in server.client.get_model_repository_index(as_json=True)["models"]
    }
    assert rows == grpc_rows
    assert ("add_sub", "1", "READY") in rows and ("id_bf16", "1", "READY") in rows
    answer = web.post_json("/v2/repository/index", {"ready": True})
    assert answer.status == 200 and {(m["name"], m["state"]) for m in answer.json()} == {(n, s) for n, _, s in rows}
    assert all("reason" not in m for m in answer.json())  # as Triton's index: a reason only where there is one


def _add_const_input(mod: Any) -> list[Any]:
    tensor = mod.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return [tensor]


def test_load_and_unload_in_explicit_mode(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    repo = tmp_path / "repo"
    model_with_versions(repo / "a", 1)
    add_const(repo / "b" / "1" / "model.onnx", 5.0)
    model_with_versions(repo / "c", 1, 2)
    port = free_port()
    server = start_server(repo, "--model-control-mode", "explicit", "--load-model", "*", "--http-port", str(port))
    web = start_http(server, port)
    g, h = server.client, web.client
    try:

        def index() -> set[tuple[str, str, str]]:
            rows = {(m["name"], m.get("version", ""), m["state"]) for m in h.get_model_repository_index()}
            assert rows == {(m.name, m.version, m.state) for m in g.get_model_repository_index().models}
            return rows

        def add(name: str, version: str = "") -> float:
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            tensor = httpclient.InferInput("INPUT0", [2, 4], "FP32")
            tensor.set_data_from_numpy(x)
            out = h.infer(name, [tensor], model_version=version).as_numpy("OUTPUT0")
            (added,) = np.unique(out - x)
            return float(added)

        assert index() == {("a", "1", "READY"), ("b", "1", "READY"), ("c", "2", "READY")}
        assert add("a") == 1.0 and add("b") == 5.0 and add("c") == 2.0

        h.unload_model("b")
        assert not h.is_model_ready("b") and not g.is_model_ready("b")
        assert ("b", "1", "READY") not in index()
        ready = web.post_json("/v2/repository/index", {"ready": True}).json()
        assert {m["name"] for m in ready} == {"a", "c"}
        same_error(
            lambda: h.infer("b", _add_const_input(httpclient)), lambda: g.infer("b", _add_const_input(grpcclient))
        )
        assert add("a") == 1.0  # the others untouched

        h.load_model("b")
        assert h.is_model_ready("b") and g.is_model_ready("b") and add("b") == 5.0

        # a config override, as a JSON string parameter: every version of c
        h.load_model("c", config='{"version_policy": {"all": {}}}')
        assert h.is_model_ready("c", "1") and h.is_model_ready("c", "2")
        assert add("c", "1") == 1.0 and add("c", "2") == 2.0

        # bodies may be empty (Triton's repository extension)
        assert web.call("POST", "/v2/repository/models/a/unload", b"").status == 200
        assert not g.is_model_ready("a")
        assert web.call("POST", "/v2/repository/models/a/load", b"").status == 200
        assert g.is_model_ready("a") and add("a") == 1.0

        message, status = same_error(lambda: h.load_model("ghost"), lambda: g.load_model("ghost"))
        assert "ghost" in message and status in (400, 404)
        same_error(lambda: h.load_model("c", config="{not json"), lambda: g.load_model("c", config="{not json"))
        h.unload_model("ghost")  # nothing to unload: nothing done, on both (as Triton)
        g.unload_model("ghost")
        assert add("c", "1") == 1.0  # a failed load keeps what serves
    finally:
        web.close()


# ---------------------------------------------------------------------------------------------------------------
# one scheduler: gRPC and HTTP requests batch together


def test_grpc_and_http_requests_share_batches(server: Server, web: Http) -> None:
    """``mixed`` waits up to 2 s for a batch of 2 x MIXED_ROWS rows: each protocol sends MIXED_ROWS one-row
    requests at once, so only a batch of both can be larger than MIXED_ROWS."""

    def stats() -> tuple[int, int, dict[int, int]]:
        s = server.client.get_inference_statistics("mixed").model_stats[0]
        return s.inference_count, s.execution_count, {b.batch_size: b.compute_infer.count for b in s.batch_stats}

    rows = [np.full((1, 16), i, np.float32) for i in range(2 * MIXED_ROWS)]

    async def send_both() -> list[np.ndarray]:
        g = grpcaio.InferenceServerClient(server.url)
        h = httpaio.InferenceServerClient(web.url, conn_limit=2 * MIXED_ROWS)
        try:
            assert await g.is_server_ready() and await h.is_server_ready()  # connected before the clock starts

            async def over_grpc(x: np.ndarray) -> np.ndarray:
                tensor = grpcaio.InferInput("INPUT0", [1, 16], "FP32")
                tensor.set_data_from_numpy(x)
                return (await g.infer("mixed", [tensor])).as_numpy("OUTPUT0")  # type: ignore[no-any-return]

            async def over_http(x: np.ndarray) -> np.ndarray:
                tensor = httpaio.InferInput("INPUT0", [1, 16], "FP32")
                tensor.set_data_from_numpy(x)
                return (await h.infer("mixed", [tensor])).as_numpy("OUTPUT0")  # type: ignore[no-any-return]

            calls = [over_grpc(x) for x in rows[:MIXED_ROWS]] + [over_http(x) for x in rows[MIXED_ROWS:]]
            return list(await asyncio.gather(*calls))
        finally:
            await g.close()
            await h.close()

    before = stats()
    answers = asyncio.run(send_both())
    after = stats()
    for x, got in zip(rows, answers, strict=True):
        np.testing.assert_array_equal(got, x)  # each caller gets its own row back
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 2 * MIXED_ROWS and executions < inferences, (inferences, executions)
    formed = {size: n - before[2].get(size, 0) for size, n in after[2].items() if n > before[2].get(size, 0)}
    assert max(formed) > MIXED_ROWS, formed  # a batch held rows of both protocols
    web_stats = web.client.get_inference_statistics("mixed")["model_stats"][0]
    assert (web_stats["inference_count"], web_stats["execution_count"]) == after[:2]


# ---------------------------------------------------------------------------------------------------------------
# perf_analyzer -i http


@pytest.mark.skipif(
    not _installed(), reason="perf_analyzer is not installed (scripts/install_perf_analyzer.sh; x86_64 only)"
)
@pytest.mark.parametrize(("model", "extra"), [("identity", []), ("string_identity", ["--string-length", "12"])])
def test_perf_analyzer_http_sweep(tmp_path: Path, server: Server, web: Http, model: str, extra: list[str]) -> None:
    before = server.client.get_inference_statistics(model).model_stats[0].inference_stats
    report = tmp_path / "report.csv"
    command = [str(PERF_ANALYZER), "-i", "http", "-u", web.url, "-m", model, "--concurrency-range", "1:4:3"]
    command += ["-p", "500", "-s", "999", "-r", "6", "-f", str(report), *extra]  # -s 999: no stability criterion
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(report.open()))
    assert sorted(r["Concurrency"] for r in rows) == ["1", "4"]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    after = server.client.get_inference_statistics(model).model_stats[0].inference_stats
    assert after.fail.count == before.fail.count
    assert after.success.count > before.success.count


# ---------------------------------------------------------------------------------------------------------------
# the README's curl examples

README_PORT = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
SHELL_FENCES = ("sh", "bash", "shell", "console")


def readme_http_commands(text: str) -> list[str]:
    """The curl commands of the ```sh / ```bash blocks under the README's headings that name HTTP (a command
    may go on over lines: backslash continuations, or a quoted argument left open)."""
    commands: list[str] = []
    level = 0  # the level of the HTTP heading we are under; 0: not under one
    fence: str | None = None
    pending = ""
    for line in text.splitlines():
        if fence is None:
            heading = re.match(r"(#+)\s+(.*)", line)
            if heading:
                depth = len(heading.group(1))
                if level and depth <= level:
                    level = 0
                if not level and "HTTP" in heading.group(2):
                    level = depth
                continue
            opening = re.match(r"\s*```+\s*(\w*)", line)
            if opening:
                fence = opening.group(1)
            continue
        if re.match(r"\s*```", line):
            fence, pending = None, ""
            continue
        if not level or fence not in SHELL_FENCES:
            continue
        pending += line.removeprefix("$ ") + "\n"
        if pending.rstrip().endswith("\\"):
            continue
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:
            continue  # a quote is still open
        if words and words[0] == "curl":
            commands.append(pending.strip())
        pending = ""
    return commands


def _request_body(words: list[str]) -> Any:
    for flag in ("-d", "--data", "--data-raw", "--data-binary"):
        if flag in words:
            return json.loads(words[words.index(flag) + 1])
    return None


def test_readme_curl_examples_run(web: Http) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl binary on this machine (apt-get install curl)")
    commands = readme_http_commands((ROOT / "README.md").read_text())
    if not commands:
        pytest.skip("README.md has no curl examples in ```sh blocks under a heading with 'HTTP' yet")
    run_curl_examples(web, commands)


def run_curl_examples(web: Http, commands: list[str]) -> None:
    """Run each command with the port of ``web`` for 8000 and check its answer by the path it asks for."""
    seen: set[str] = set()
    for command in commands:
        local = README_PORT.sub(f"127.0.0.1:{web.port}", command)
        assert local != command, f"an example without localhost:8000: {command}"
        ran = subprocess.run(["bash", "-c", local], capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        answer: Any = json.loads(ran.stdout) if ran.stdout.strip() else None
        words = shlex.split(command, comments=True)
        path = next(urlparse_path(w) for w in words if README_PORT.search(w))
        if path in ("/v2/health/ready", "/v2/health/live"):
            assert answer in (None, 200), (command, ran.stdout)
        elif path == "/v2/models/add_sub":
            assert answer["name"] == "add_sub" and [t["name"] for t in answer["inputs"]] == ["INPUT0", "INPUT1"]
        elif path == "/v2/models/add_sub/infer":
            inputs = {t["name"]: np.ravel(t["data"]).astype(np.float32) for t in _request_body(words)["inputs"]}
            outputs = {o["name"]: np.ravel(o["data"]) for o in answer["outputs"]}
            assert outputs["OUTPUT0"].tolist() == (inputs["INPUT0"] + inputs["INPUT1"]).tolist(), answer
            assert outputs["OUTPUT1"].tolist() == (inputs["INPUT0"] - inputs["INPUT1"]).tolist(), answer
        elif path == "/v2/repository/index":
            assert {"name": "add_sub", "version": "1", "state": "READY"} in [
                {k: m.get(k) for k in ("name", "version", "state")} for m in answer
            ], answer
        else:
            assert answer is not None, (command, ran.stdout)  # any other example answers JSON
        seen.add(path)
    wanted = {"/v2/health/ready", "/v2/models/add_sub", "/v2/models/add_sub/infer", "/v2/repository/index"}
    assert wanted <= seen, f"the README's HTTP examples should show {sorted(wanted - seen)} too"


def urlparse_path(word: str) -> str:
    match = README_PORT.search(word)
    assert match is not None
    rest = word[match.end() :]
    return rest.split("?", 1)[0] or "/"


def test_readme_command_parser() -> None:
    text = "\n".join(
        [
            "## Calling it over HTTP/REST",
            "```sh",
            "curl -s localhost:8000/v2/health/ready   # ready?",
            "curl -s localhost:8000/v2/models/add_sub/infer \\",
            "  -d '{",
            '  "inputs": []',
            "}'",
            "tensorgate serve --http-port 8000",
            "```",
            "```python",
            "curl = 1",
            "```",
            "## Options",
            "```sh",
            "curl -s localhost:8000/v2",
            "```",
        ]
    )
    commands = readme_http_commands(text)
    assert len(commands) == 2 and commands[0].startswith("curl -s localhost:8000/v2/health/ready")
    assert json.loads(shlex.split(commands[1])[-1]) == {"inputs": []}


def test_the_restricted_protocol_guards_http_too(repo: Path) -> None:
    """--grpc-restricted-protocol covers the same groups on the HTTP face: without the header,
    model control answers 403 with the reason (Triton's HTTP answer); with it, it works; inference stays open."""
    port = free_port()
    flags = ("--http-port", str(port), "--model-control-mode", "explicit", "--load-model", "add_sub")
    with running(repo, *flags, "--grpc-restricted-protocol", "model-repository:admin-key=s3cret") as server:
        wait_for_http(port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/v2/repository/index", body=b"{}")
        refused = connection.getresponse()
        assert refused.status == 403
        assert json.loads(refused.read())["error"] == "This API is restricted, expecting header 'admin-key'"
        connection.request("POST", "/v2/repository/index", body=b"{}", headers={"admin-key": "s3cret"})
        allowed = connection.getresponse()
        assert allowed.status == 200 and any(m["name"] == "add_sub" for m in json.loads(allowed.read()))
        connection.request("GET", "/v2/health/ready")
        ready = connection.getresponse()
        ready.read()
        assert ready.status == 200
        connection.close()
        assert server.client.is_server_ready()
    # Triton's extensions tensorgate does not serve sit behind their group's restriction too
    with running(repo, "--http-port", str(port), "--grpc-restricted-protocol", "trace,logging:k=v") as server:
        wait_for_http(port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for path, headers, status in [
            ("/v2/trace/setting", {}, 403),
            ("/v2/models/identity/trace/setting", {}, 403),
            ("/v2/logging", {}, 403),
            ("/v2/logging", {"k": "v"}, 501),
            ("/v2/systemsharedmemory/status", {}, 200),  # another group: open
        ]:
            connection.request("GET", path, headers=headers)
            answer = connection.getresponse()
            answer.read()
            assert answer.status == status, (path, headers, answer.status)
        connection.close()


def wait_for_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/live")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no HTTP server on port {port}")
