"""Triton's system shared memory extension against a real server, with tritonclient's own shared-memory
utilities (POSIX shared memory made by its C library) over gRPC and HTTP: regions registered, inputs read
from them and outputs written into them, Triton's errors, a region unregistered while a request uses it,
and nothing left mapped or open once a region is unregistered."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from conftest import ROOT, Server, held_and_queued, running, wait_for
from models import identity, slow, write_config
from onnx import TensorProto
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor

X = np.arange(16, dtype=np.float32).reshape(1, 16)
WIDE = 2**20
TEXTS = 5000
Y = np.full((1, 16), 0.5, dtype=np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shm") / "repo"
    shutil.copytree(ROOT / "model_repo", path)
    slow(path / "slow" / "1" / "model.onnx")
    write_config(path / "slow", "max_batch_size: 64\n")
    identity(path / "wide" / "1" / "model.onnx", shape=("batch", WIDE))  # 4 MiB a row
    write_config(path / "wide", "max_batch_size: 2\n")
    identity(path / "texts" / "1" / "model.onnx", elem_type=TensorProto.STRING, shape=("batch", TEXTS))
    write_config(path / "texts", "max_batch_size: 2\n")
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with running(repo) as s:
        yield s


class Regions:
    """Shared-memory objects made with tritonclient's utilities, destroyed (unmapped, unlinked) at the end."""

    def __init__(self, test: str) -> None:
        self.prefix = f"/tg_{os.getpid()}_{test[:40]}_"
        self.handles: list[Any] = []

    def make(self, name: str, byte_size: int) -> tuple[Any, str]:
        key = self.prefix + name
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles.append(handle)
        return handle, key

    def destroy(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(request: pytest.FixtureRequest, server: Server) -> Iterator[Regions]:
    made = Regions(request.node.name.replace("[", "_").replace("]", "").replace("/", "_"))
    yield made
    server.client.unregister_system_shared_memory()  # every region, whatever the test left
    made.destroy()


def _error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def _status(error: InferenceServerException) -> str:
    return str(error.status()).removeprefix("StatusCode.")


def _add_sub_in_memory(client: Any, mod: Any, region: str, **kwargs: Any) -> Any:
    """add_sub with INPUT0 from ``region`` (at 0) and INPUT1 in the request; both outputs into ``region``."""
    a = mod.InferInput("INPUT0", [1, 16], "FP32")
    a.set_shared_memory(region, 64)
    b = mod.InferInput("INPUT1", [1, 16], "FP32")
    b.set_data_from_numpy(Y, **({"binary_data": True} if mod is httpclient else {}))
    outputs = []
    for i, name in enumerate(("OUTPUT0", "OUTPUT1")):
        wanted = mod.InferRequestedOutput(name, **({"binary_data": False} if mod is httpclient else {}))
        wanted.set_shared_memory(region, 64, offset=64 * (i + 1))
        outputs.append(wanted)
    return client.infer("add_sub", [a, b], outputs=outputs, **kwargs)


def test_grpc_inputs_from_and_outputs_into_shared_memory(server: Server, regions: Regions) -> None:
    c = server.client
    handle, key = regions.make("io", 192)
    shm.set_shared_memory_region(handle, [X])
    c.register_system_shared_memory("io", key, 192)
    assert "system_shared_memory" in c.get_server_metadata().extensions

    result = _add_sub_in_memory(c, grpcclient, "io", request_id="r1")
    response = result.get_response()
    # As Triton: each output named with its datatype and shape, its data only in the region (an empty
    # raw_output_contents entry keeps the indices of the others)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "FP32", [1, 16]),
        ("OUTPUT1", "FP32", [1, 16]),
    ]
    assert list(response.raw_output_contents) == [b"", b""] and response.id == "r1"
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=64), X + Y)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=128), X - Y)

    # The input is read at each request: new contents, new answer
    shm.set_shared_memory_region(handle, [X * 3])
    _add_sub_in_memory(c, grpcclient, "io")
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=64), X * 3 + Y)

    status = c.get_system_shared_memory_status(as_json=True)["regions"]
    assert status == {"io": {"name": "io", "key": key, "byte_size": "192"}}  # offset 0: left out of protobuf's JSON
    assert c.get_system_shared_memory_status("io", as_json=True)["regions"]["io"]["key"] == key
    stats = c.get_inference_statistics("add_sub").model_stats[0].inference_stats
    assert stats.success.count >= 2 and stats.fail.count == 0


def test_a_region_at_an_offset_that_is_no_page_boundary(server: Server, regions: Regions) -> None:
    """Triton's mmap refuses an offset that is not a multiple of the page size; here any offset works."""
    c = server.client
    handle, key = regions.make("odd", 4096 + 300)
    shm.set_shared_memory_region(handle, [X], offset=100 + 8)
    c.register_system_shared_memory("odd", key, 300, offset=100)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_shared_memory("odd", 64, offset=8)
    wanted = grpcclient.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("odd", 64, offset=200)
    c.infer("identity", [tensor], outputs=[wanted])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=300), X)
    assert c.get_system_shared_memory_status("odd", as_json=True)["regions"]["odd"]["offset"] == "100"


def _bytes_round_trip(
    c: Any, regions: Regions, region: str, model: str, names: tuple[str, str], strings: np.ndarray
) -> tuple[grpcclient.InferInput, int]:
    """``strings`` (BYTES) through an identity ``model`` (its input and output ``names``) with both tensors in one
    region, the output after the input; checks the output. Returns the input tensor and its byte size."""
    data = serialize_byte_tensor(strings)  # one object: the length-prefixed bytes
    size = len(data.item())
    handle, key = regions.make(region, 2 * size)
    shm.set_shared_memory_region(handle, [data])
    c.register_system_shared_memory(region, key, 2 * size)
    tensor = grpcclient.InferInput(names[0], list(strings.shape), "BYTES")
    tensor.set_shared_memory(region, size)
    wanted = grpcclient.InferRequestedOutput(names[1])
    wanted.set_shared_memory(region, size, offset=size)
    c.infer(model, [tensor], outputs=[wanted])
    raw = shm.get_contents_as_numpy(handle, np.uint8, [size], offset=size).tobytes()
    assert deserialize_bytes_tensor(raw).tolist() == strings.reshape(-1).tolist()
    return tensor, size


def test_bytes_tensors_in_shared_memory(server: Server, regions: Regions) -> None:
    c = server.client
    strings = np.array([[b"abc"], ["\u00e9t\u00e9".encode()], [b""]], dtype=np.object_)
    tensor, size = _bytes_round_trip(c, regions, "text", "string_identity", ("TEXT", "TEXT_OUT"), strings)

    # A BYTES input whose length prefixes do not add up to its byte size: said, as for raw contents
    tensor.set_shared_memory("text", size - 1)
    error = _error(lambda: c.infer("string_identity", [tensor]))
    assert _status(error) == "INVALID_ARGUMENT" and "shared memory region 'text'" in error.message()


def test_streaming_requests_use_shared_memory_too(server: Server, regions: Regions) -> None:
    handle, key = regions.make("stream", 192)
    shm.set_shared_memory_region(handle, [X])
    server.client.register_system_shared_memory("stream", key, 192)
    client = grpcclient.InferenceServerClient(server.url)
    answers: list[tuple[Any, Any]] = []
    done = threading.Event()
    try:
        client.start_stream(callback=lambda result, error: (answers.append((result, error)), done.set()))
        a = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        a.set_shared_memory("stream", 64)
        wanted = grpcclient.InferRequestedOutput("OUTPUT0")
        wanted.set_shared_memory("stream", 64, offset=64)
        client.async_stream_infer("identity", [a], outputs=[wanted], request_id="s1")
        assert done.wait(30)
    finally:
        client.stop_stream()
        client.close()
    ((result, error),) = answers
    assert error is None and result.get_response().id == "s1"
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=64), X)


def test_registering_errors_in_tritons_words(server: Server, regions: Regions, tmp_path: Path) -> None:
    c = server.client
    _, key = regions.make("r", 128)
    c.register_system_shared_memory("r", key, 128)
    outside = tmp_path / "secret"
    outside.write_bytes(b"x" * 4096)
    link = f"/tg_{os.getpid()}_link"
    os.symlink(outside, "/dev/shm" + link)
    try:
        cases: list[tuple[Callable[[], object], str, str]] = [
            (
                lambda: c.register_system_shared_memory("r", key, 64),
                "ALREADY_EXISTS",
                "shared memory region 'r' already in manager",
            ),
            (
                lambda: c.register_system_shared_memory("n", "/tg_no_such_key", 64),
                "INVALID_ARGUMENT",
                "Unable to open shared memory region: '/tg_no_such_key'",
            ),
            # shm_open takes one name, no path: neither a path out of /dev/shm nor a link is followed
            (
                lambda: c.register_system_shared_memory("n", "/../etc/passwd", 64),
                "INVALID_ARGUMENT",
                "Unable to open shared memory region: '/../etc/passwd'",
            ),
            (
                lambda: c.register_system_shared_memory("n", "dir/x", 64),
                "INVALID_ARGUMENT",
                "Unable to open shared memory region: 'dir/x'",
            ),
            (
                lambda: c.register_system_shared_memory("n", link, 64),
                "INVALID_ARGUMENT",
                f"Unable to open shared memory region: '{link}'",
            ),
            (
                lambda: c.register_system_shared_memory("n", key, 100, offset=100),
                "INVALID_ARGUMENT",
                "failed to register shared memory region 'n': invalid args",
            ),
            (
                lambda: c.register_system_shared_memory("n", key, 0),
                "INVALID_ARGUMENT",
                "failed to register shared memory region 'n': unable to process address space",
            ),
            (
                lambda: c.register_system_shared_memory("", key, 64),
                "INVALID_ARGUMENT",
                "'region name' is necessary to register system shared memory region",
            ),
            (
                lambda: c.register_system_shared_memory("n", "triton_python_backend_shm_region_1", 64),
                "INVALID_ARGUMENT",
                "the reserved prefix 'triton_python_backend_shm_region_'",
            ),
            (
                lambda: c.get_system_shared_memory_status("n"),
                "NOT_FOUND",
                "Unable to find system shared memory region: 'n'",
            ),
            # CUDA shared memory is not served; its status and unregister answer as a Triton without GPUs
            (
                lambda: c.register_cuda_shared_memory("g", b"\0" * 64, 0, 64),
                "UNIMPLEMENTED",
                "failed to register CUDA shared memory region: 'g'",
            ),
            (
                lambda: c.get_cuda_shared_memory_status("g"),
                "NOT_FOUND",
                "Unable to find cuda shared memory region: 'g'",
            ),
        ]
        for call, code, words in cases:
            error = _error(call)
            assert (_status(error), words in error.message()) == (code, True), error.message()
    finally:
        os.unlink("/dev/shm" + link)
    assert outside.read_bytes() == b"x" * 4096
    c.unregister_system_shared_memory("never_registered")  # no error, as Triton
    c.unregister_cuda_shared_memory()
    assert c.get_cuda_shared_memory_status(as_json=True) == {}
    assert list(c.get_system_shared_memory_status(as_json=True)["regions"]) == ["r"]
    assert "Traceback" not in server.log


def test_inference_errors_in_tritons_words(server: Server, regions: Regions) -> None:
    c = server.client
    handle, key = regions.make("r", 128)
    shm.set_shared_memory_region(handle, [X])
    c.register_system_shared_memory("r", key, 128)

    def infer(byte_size: int = 64, offset: int = 0, out: tuple[int, int] | None = None) -> object:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_shared_memory("r", byte_size, offset=offset)
        wanted = grpcclient.InferRequestedOutput("OUTPUT0")
        if out is not None:
            wanted.set_shared_memory("r", out[0], offset=out[1])
        return c.infer("identity", [tensor], outputs=[wanted])

    def classified_into_memory() -> object:  # tritonclient refuses to build it: by hand
        pb = grpcclient.service_pb2
        request = pb.ModelInferRequest(model_name="identity")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(X.tobytes())
        wanted = request.outputs.add(name="OUTPUT0")
        wanted.parameters["classification"].int64_param = 2
        wanted.parameters["shared_memory_region"].string_param = "r"
        wanted.parameters["shared_memory_byte_size"].int64_param = 64
        with grpc.insecure_channel(server.url) as channel:
            try:
                return grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            except grpc.RpcError as exc:
                raise InferenceServerException(exc.details(), status=str(exc.code())) from None  # type: ignore[attr-defined]

    cases: list[tuple[Callable[[], object], str, str]] = [
        (lambda: infer(offset=128), "INVALID_ARGUMENT", "Invalid offset for shared memory region: 'r'"),
        (lambda: infer(offset=100), "INVALID_ARGUMENT", "Invalid offset + byte size for shared memory region: 'r'"),
        (
            lambda: infer(byte_size=60),
            "INVALID_ARGUMENT",
            "input byte size mismatch for input 'INPUT0' for model 'identity'. Expected 64, got 60",
        ),
        (
            lambda: infer(out=(32, 64)),
            "INVALID_ARGUMENT",
            "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be at least 64 "
            "bytes to hold the results",
        ),
        (lambda: infer(out=(64, 100)), "INVALID_ARGUMENT", "Invalid offset + byte size for shared memory region: 'r'"),
        (classified_into_memory, "INVALID_ARGUMENT", "can't set both 'shared_memory_region' and 'classification'"),
    ]
    before = c.get_inference_statistics("identity").model_stats[0].inference_stats.success.count
    for call, code, words in cases:
        error = _error(call)
        assert (_status(error), words in error.message()) == (code, True), error.message()
    # All refused before a run: the output too small too, its size being fixed by the config
    after = c.get_inference_statistics("identity").model_stats[0].inference_stats.success.count
    assert after == before
    infer(out=(64, 64))  # and the region still serves
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=64), X)


def test_a_region_unregistered_while_a_request_uses_it(server: Server, regions: Regions) -> None:
    """The name goes at once (it can be registered again); the requests that hold the region (their inputs
    were read at arrival) still write their outputs there: its object stays open until they have finished."""
    c = server.client
    rows, size = 64, 512
    x = np.random.default_rng(1).standard_normal((rows, size), dtype=np.float32)
    nbytes = x.nbytes
    handle, key = regions.make("big", 2 * nbytes)
    shm.set_shared_memory_region(handle, [x])
    c.register_system_shared_memory("big", key, 2 * nbytes)
    expected = c.infer("slow", [grpcclient.InferInput("INPUT0", [rows, size], "FP32").set_data_from_numpy(x)])
    answers: list[tuple[Any, Any]] = []
    done = threading.Event()
    tensor = grpcclient.InferInput("INPUT0", [rows, size], "FP32")
    tensor.set_shared_memory("big", nbytes)
    wanted = grpcclient.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("big", nbytes, offset=nbytes)
    sent = 16  # each a full batch of 64 rows, 0.03-0.1 s a run: they queue behind each other for a second or so
    for _ in range(sent):
        c.async_infer(
            "slow", [tensor], lambda result, error: (answers.append((result, error)), done.set()), outputs=[wanted]
        )
    wait_for(lambda: held_and_queued(server, "slow")[0] >= 2, interval=0.01)
    c.unregister_system_shared_memory("big")
    assert c.get_system_shared_memory_status(as_json=True) == {}
    _, other = regions.make("other", 64)
    c.register_system_shared_memory("big", other, 64)  # the name is free again
    assert held_and_queued(server, "slow")[0] >= 1  # unregistered while requests hold it
    assert _maps_and_fds(server.proc.pid, key)[1] == 1  # ... which keep its object open
    wait_for(lambda: len(answers) == sent, timeout=60)
    assert [e for _, e in answers] == [None] * sent
    assert _maps_and_fds(server.proc.pid, key)[1] == 0  # closed with the last of them
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [rows, size], offset=nbytes), expected.as_numpy("OUTPUT0")
    )
    error = _error(lambda: c.infer("slow", [tensor]))  # the new "big" is 64 bytes
    assert "Invalid offset + byte size for shared memory region: 'big'" in error.message()


def _maps_and_fds(pid: int, key: str) -> tuple[int, int]:
    """The server's mappings of the object ``key`` names, and its descriptors open on it."""
    path = "/dev/shm/" + key.lstrip("/")
    maps = sum(line.endswith(path) for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    fds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # a descriptor closed meanwhile
            fds += os.readlink(f"/proc/{pid}/fd/{fd}") == path
    return maps, fds


def test_unregistering_unmaps_and_nothing_stays_open(server: Server, regions: Regions) -> None:
    c = server.client
    handle, key = regions.make("leak", 1 << 20)
    shm.set_shared_memory_region(handle, [X])
    c.register_system_shared_memory("leak", key, 1 << 20)
    # No mapping (the object is read and written with pread and pwrite), one descriptor while registered
    assert _maps_and_fds(server.proc.pid, key) == (0, 1)
    for i in range(200):
        c.unregister_system_shared_memory("leak")
        c.register_system_shared_memory("leak", key, (1 << 20) - 8192, offset=4096 * (i % 3))
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_shared_memory("leak", 64)
        c.infer("identity", [tensor])
    assert _maps_and_fds(server.proc.pid, key) == (0, 1)  # the unregistered regions' descriptors are closed
    c.unregister_system_shared_memory()
    assert _maps_and_fds(server.proc.pid, key) == (0, 0)


def test_http_register_infer_status_unregister(server: Server, regions: Regions) -> None:
    web = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        handle, key = regions.make("h", 192)
        shm.set_shared_memory_region(handle, [X])
        web.register_system_shared_memory("h", key, 192)
        assert web.get_system_shared_memory_status() == [{"name": "h", "key": key, "offset": 0, "byte_size": 192}]
        assert web.get_system_shared_memory_status("h") == [{"name": "h", "key": key, "offset": 0, "byte_size": 192}]
        result = _add_sub_in_memory(web, httpclient, "h")
        # As Triton: an output in shared memory is named with its datatype and shape, no data
        assert result.get_response()["outputs"] == [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 16]},
            {"name": "OUTPUT1", "datatype": "FP32", "shape": [1, 16]},
        ]
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=64), X + Y)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=128), X - Y)
        web.unregister_system_shared_memory("h")
        assert web.get_system_shared_memory_status() == []
        assert web.get_cuda_shared_memory_status() == []
        web.unregister_cuda_shared_memory()
    finally:
        web.close()


def _http(server: Server, method: str, path: str, body: object = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body).encode())
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        connection.close()


def test_http_errors_in_tritons_words(server: Server, regions: Regions) -> None:
    _, key = regions.make("e", 128)
    base = "/v2/systemsharedmemory"
    cases: list[tuple[str, str, object, int, str]] = [
        (
            "POST",
            f"{base}/register",
            {"key": key, "byte_size": 64},
            400,
            "'region name' is necessary to register system shared memory region",
        ),
        (
            "POST",
            f"{base}/region/e/register",
            {"byte_size": 64},
            400,
            "Shared memory register request has no 'key' field",
        ),
        (
            "POST",
            f"{base}/region/e/register",
            {"key": key},
            400,
            "Shared memory register request has no 'byte_size' field",
        ),
        (
            "POST",
            f"{base}/region/e/register",
            {"key": key, "byte_size": -1},
            400,
            "'byte_size' must be a non-negative integer",
        ),
        (
            "POST",
            f"{base}/region/e/register",
            {"key": "/tg_none", "byte_size": 8},
            400,
            "Unable to open shared memory region: '/tg_none'",
        ),
        ("GET", f"{base}/region/e/status", None, 404, "Unable to find system shared memory region: 'e'"),
        ("GET", f"{base}/region/e/register", None, 405, "Method Not Allowed"),
        (
            "POST",
            "/v2/cudasharedmemory/region/g/register",
            {"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 8},
            501,
            "failed to register CUDA shared memory region: 'g'",
        ),
    ]
    for method, path, body, status, words in cases:
        got, doc = _http(server, method, path, body)
        assert (got, words in doc["error"]) == (status, True), (path, body, got, doc)
    assert _http(server, "POST", f"{base}/region/e/register", {"key": key, "byte_size": 64, "offset": 8}) == (200, {})
    assert _http(server, "POST", f"{base}/region/e/register", {"key": key, "byte_size": 64})[0] == 400  # already there
    doc = {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [1, 16],
                "datatype": "FP32",
                "data": X.tolist(),
                "parameters": {"shared_memory_region": "e", "shared_memory_byte_size": 64},
            }
        ]
    }
    got, answer = _http(server, "POST", "/v2/models/identity/infer", doc)
    assert (
        got == 400
        and "must set only one of 'data', the binary_data_size parameter and the shared_memory_region"
        in answer["error"]
    )
    doc = {
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": X.tolist()}],
        "outputs": [
            {
                "name": "OUTPUT0",
                "parameters": {"shared_memory_region": "e", "shared_memory_byte_size": 64, "binary_data": True},
            }
        ],
    }
    got, answer = _http(server, "POST", "/v2/models/identity/infer", doc)
    assert (got, answer["error"]) == (400, "output 'OUTPUT0' can't set both 'shared_memory_region' and 'binary_data'")
    assert _http(server, "POST", f"{base}/unregister", {}) == (200, {})
    assert _http(server, "GET", f"{base}/status") == (200, [])


def test_the_shared_memory_protocol_can_be_restricted(repo: Path, tmp_path: Path) -> None:
    with running(repo, "--grpc-restricted-protocol", "shared-memory:admin=s3cret") as server:
        regions = Regions("restricted")
        try:
            _, key = regions.make("r", 64)
            error = _error(lambda: server.client.register_system_shared_memory("r", key, 64))
            assert _status(error) == "UNAVAILABLE" and "expecting header 'admin'" in error.message()
            server.client.register_system_shared_memory("r", key, 64, headers={"admin": "s3cret"})
            assert _http(server, "GET", "/v2/systemsharedmemory/status")[0] == 403
            # inference is another group: a request naming the region is served
            tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            tensor.set_shared_memory("r", 64)
            server.client.infer("identity", [tensor])
        finally:
            regions.destroy()


def test_a_message_naming_regions_breaks_nothing_else(server: Server, regions: Regions) -> None:
    """Bad shared-memory requests next to good ones over raw gRPC: each refused alone, the server serving."""
    with grpc.insecure_channel(server.url) as channel:
        stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
        pb = grpcclient.service_pb2
        for name, key in (("a", "/../../x"), ("b", "\0"), ("c", "/" * 300), ("d", "x" * 300)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name=name, key=key, byte_size=8))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    result = server.client.infer("identity", [grpcclient.InferInput("INPUT0", [1, 16], "FP32").set_data_from_numpy(X)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), X)
    assert server.proc.poll() is None and "Traceback" not in server.log


def test_a_region_whose_object_shrank_is_refused_not_a_crash(server: Server, regions: Regions) -> None:
    """Reading a mapping past the end of its object kills a process (SIGBUS): a client that shrinks a registered
    object gets an error naming it, and the server goes on."""
    c = server.client
    _, key = regions.make("shrunk", 3 * 4096)
    c.register_system_shared_memory("shrunk", key, 3 * 4096)
    os.truncate("/dev/shm/" + key.lstrip("/"), 4096)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_shared_memory("shrunk", 64, offset=8192)
    error = _error(lambda: c.infer("identity", [tensor]))
    assert _status(error) == "INVALID_ARGUMENT", error.message()
    assert (
        f"shared memory region 'shrunk' is no longer whole: its object '{key}' now holds 4096 bytes" in error.message()
    )
    # an output there: refused too (the input from the request)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32").set_data_from_numpy(X)
    wanted = grpcclient.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("shrunk", 64, offset=8192)
    error = _error(lambda: c.infer("identity", [tensor], outputs=[wanted]))
    assert "is no longer whole" in error.message()
    # what the object still holds serves
    wanted.set_shared_memory("shrunk", 64, offset=64)
    c.infer("identity", [tensor], outputs=[wanted])
    assert server.proc.poll() is None


def test_shared_memory_requests_batch_with_others(server: Server, regions: Regions) -> None:
    """Requests with their tensors in shared memory and requests with them in the message form one batch
    (queued behind a busy instance); each gets its own rows, in its own place."""
    c = server.client
    rows = np.random.default_rng(4).standard_normal((6, 512), dtype=np.float32)
    handle, key = regions.make("many", 6 * 4096)
    c.register_system_shared_memory("many", key, 6 * 4096)
    expected = []
    for i in range(6):
        shm.set_shared_memory_region(handle, [rows[i : i + 1]], offset=4096 * i)
        alone = grpcclient.InferInput("INPUT0", [1, 512], "FP32").set_data_from_numpy(rows[i : i + 1])
        expected.append(c.infer("slow", [alone]).as_numpy("OUTPUT0"))
    before = c.get_inference_statistics("slow").model_stats[0]
    busy = grpcclient.InferInput("INPUT0", [64, 512], "FP32").set_data_from_numpy(np.ones((64, 512), np.float32))
    answers: dict[int, Any] = {}
    busy_runs = 8  # full batches of 64 rows, 0.03-0.1 s each: the instance stays busy while the six come
    for b in range(busy_runs):
        c.async_infer("slow", [busy], lambda result, error, b=b: answers.__setitem__(-1 - b, (result, error)))
    wait_for(lambda: held_and_queued(server, "slow")[0] >= 2, interval=0.01)
    for i in range(6):
        tensor = grpcclient.InferInput("INPUT0", [1, 512], "FP32")
        wanted = grpcclient.InferRequestedOutput("OUTPUT0")
        if i % 2:  # every other request through the message
            tensor.set_data_from_numpy(rows[i : i + 1])
        else:
            tensor.set_shared_memory("many", 2048, offset=4096 * i)
            wanted.set_shared_memory("many", 2048, offset=4096 * i + 2048)
        c.async_infer(
            "slow", [tensor], lambda result, error, i=i: answers.__setitem__(i, (result, error)), outputs=[wanted]
        )
    wait_for(lambda: len(answers) == busy_runs + 6, timeout=60)
    assert [e for _, e in answers.values()] == [None] * (busy_runs + 6)
    after = c.get_inference_statistics("slow").model_stats[0]
    assert after.inference_count - before.inference_count == 64 * busy_runs + 6
    assert after.execution_count - before.execution_count < busy_runs + 6  # some of the six ran in one batch
    for i in range(6):
        if i % 2:
            got = answers[i][0].as_numpy("OUTPUT0")
        else:
            got = shm.get_contents_as_numpy(handle, np.float32, [1, 512], offset=4096 * i + 2048)
        np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-5)

    # a raw input before one in shared memory: raw_input_contents holds the first alone, as Triton reads it
    shm.set_shared_memory_region(handle, [X])
    raw = grpcclient.InferInput("INPUT0", [1, 16], "FP32").set_data_from_numpy(X * 10)
    in_memory = grpcclient.InferInput("INPUT1", [1, 16], "FP32")
    in_memory.set_shared_memory("many", 64)
    result = c.infer("add_sub", [raw, in_memory])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), X * 9)


def test_large_tensors_in_shared_memory_round_trip(server: Server, regions: Regions) -> None:
    """8 MiB in and out of shared memory (above the 4 MiB copied on the loop), and 5,000 BYTES elements (above
    what is converted on the loop) in and out: requests that take the worker-thread path (which
    tests/test_codec.py shows they choose), with the right answers."""
    c = server.client
    x = np.random.default_rng(3).standard_normal((2, WIDE), dtype=np.float32)
    handle, key = regions.make("wide", 2 * x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    c.register_system_shared_memory("wide", key, 2 * x.nbytes)
    tensor = grpcclient.InferInput("INPUT0", [2, WIDE], "FP32")
    tensor.set_shared_memory("wide", x.nbytes)
    wanted = grpcclient.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("wide", x.nbytes, offset=x.nbytes)
    c.infer("wide", [tensor], outputs=[wanted])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, WIDE], offset=x.nbytes), x)

    strings = np.array([[f"{i}".encode() * (i % 4) for i in range(TEXTS)]], dtype=np.object_)
    _bytes_round_trip(c, regions, "texts", "texts", ("INPUT0", "OUTPUT0"), strings)


def test_the_number_of_regions_is_bounded(repo: Path) -> None:
    regions = Regions("bounded")
    try:
        _, key = regions.make("r", 64)
        with running(repo, "--max-shared-memory-regions", "2") as server:
            c = server.client
            c.register_system_shared_memory("a", key, 64)
            c.register_system_shared_memory("b", key, 64)
            error = _error(lambda: c.register_system_shared_memory("c", key, 64))
            assert _status(error) == "RESOURCE_EXHAUSTED"
            assert "the server holds 2 regions, its limit (--max-shared-memory-regions)" in error.message()
            c.unregister_system_shared_memory("a")
            c.register_system_shared_memory("c", key, 64)
        with running(repo, "--max-shared-memory-regions", "0") as server:
            error = _error(lambda: server.client.register_system_shared_memory("a", key, 64))
            assert "system shared memory is off on this server" in error.message()
    finally:
        regions.destroy()


def test_http_an_output_listed_twice_is_answered_as_its_first_listing(server: Server, regions: Regions) -> None:
    """As the gRPC path does (the first asking wins): listed first without shared memory, the output comes in
    the body, and the region is not written."""
    handle, key = regions.make("twice", 64)
    c = server.client
    c.register_system_shared_memory("twice", key, 64)
    in_memory = {"shared_memory_region": "twice", "shared_memory_byte_size": 64}
    doc = {
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": X.tolist()}],
        "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0", "parameters": in_memory}],
    }
    status, answer = _http(server, "POST", "/v2/models/identity/infer", doc)
    assert status == 200 and answer["outputs"][0]["data"] == X.reshape(-1).tolist(), answer
    assert not shm.get_contents_as_numpy(handle, np.float32, [16]).any()
    doc["outputs"] = doc["outputs"][::-1]  # first listed in shared memory: written there, no data
    status, answer = _http(server, "POST", "/v2/models/identity/infer", doc)
    assert status == 200 and "data" not in answer["outputs"][0], answer
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [16]), X.reshape(-1))


FULL_TMPFS_CLIENT = """
import os, sys
sys.path.insert(0, {tests!r})
import numpy as np
import tritonclient.grpc as grpcclient
from conftest import Server
from pathlib import Path
server = Server(Path({repo!r}))
try:
    c = server.client
    # a sparse object of 8 MiB on a 1 MiB /dev/shm (ftruncate takes no space), then /dev/shm filled up
    fd = os.open("/dev/shm/sparse", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 8 << 20)
    os.close(fd)
    c.register_system_shared_memory("sparse", "/sparse", 8 << 20)
    with open("/dev/shm/filler", "wb") as f:
        try:
            f.write(b"x" * (2 << 20))
        except OSError:
            pass
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_shared_memory("sparse", 64, offset=4 << 20)  # a hole: reads as zeros
    print("read", c.infer("identity", [tensor]).as_numpy("OUTPUT0").tolist())
    wanted = grpcclient.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("sparse", 64, offset=4 << 20)  # a hole no page can back now
    try:
        c.infer("identity", [tensor], outputs=[wanted])
        print("written")
    except Exception as exc:
        print("refused", exc)
    print("alive", server.proc.poll() is None and c.is_server_ready())
finally:
    print("exit", server.stop())
"""


def test_a_full_dev_shm_is_refused_not_a_crash(repo: Path, tmp_path: Path) -> None:
    """Touching a mapped page of a sparse object while /dev/shm is full kills a process with SIGBUS (a
    mapping, as Triton reads regions through): read with pread and written with pwrite, the hole reads as
    zeros and the write that finds no space is refused. Run in a mount namespace of its own, with a 1 MiB
    /dev/shm, the server and the client both."""
    script = tmp_path / "client.py"
    script.write_text(FULL_TMPFS_CLIENT.format(tests=str(ROOT / "tests"), repo=str(repo)))
    command = f"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} {script}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "mount" in done.stderr and "read" not in done.stdout:
        pytest.skip(f"no mount namespace with a tmpfs of our own here: {done.stderr.strip()[:200]}")
    lines = done.stdout.splitlines()
    assert lines[0] == f"read {[[0.0] * 16]}", done.stdout + done.stderr
    assert lines[1].startswith("refused") and "No space left on device" in lines[1], lines
    assert lines[2:] == ["alive True", "exit 0"], done.stdout + done.stderr
