"""Triton's classification extension, over gRPC and HTTP with tritonclient against a real server: an
output asked for with ``class_count`` k comes back as the k largest values of each row, a BYTES tensor of
``"value:index[:label]"`` strings (values as C++'s std::to_string writes them, labels from the output's
``label_filename``). The expected strings are written out by hand from that rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import Server
from models import identity, write_config
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

ROWS = np.array([[0.1, 0.9, 0.5, 0.9, -1.0], [3.0, -2.0, 0.25, 1.5, 0.0]], np.float32)
# index 2 has an empty label, index 4 none at all; "\u2028" is no line break in a label file (Triton's getline)
LABELS = ["cat", "dog\u2028x", "", "fish"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("classification") / "repo"
    identity(path / "labelled" / "1" / "model.onnx", shape=("batch", 5))
    (path / "labelled" / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    write_config(
        path / "labelled",
        "max_batch_size: 4\noutput [{ name: 'OUTPUT0' data_type: TYPE_FP32 dims: [5] label_filename: 'labels.txt' }]",
    )
    identity(path / "ints" / "1" / "model.onnx", elem_type=TensorProto.UINT8, shape=("batch", 5))
    identity(path / "flat" / "1" / "model.onnx", elem_type=TensorProto.DOUBLE, shape=(4,))
    write_config(path / "flat", "max_batch_size: 0\n")
    identity(path / "half" / "1" / "model.onnx", elem_type=TensorProto.FLOAT16, shape=("batch", 5))
    identity(path / "no_labels_file" / "1" / "model.onnx", shape=("batch", 5))
    write_config(
        path / "no_labels_file",
        "max_batch_size: 4\noutput [{ name: 'OUTPUT0' data_type: TYPE_FP32 dims: [5] label_filename: '../x.txt' }]",
    )
    return path


def _grpc(server: Server, model: str, array: np.ndarray, datatype: str, count: int) -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT0", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    wanted = [grpcclient.InferRequestedOutput("OUTPUT0", class_count=count)]
    result = server.client.infer(model, [tensor], outputs=wanted).as_numpy("OUTPUT0")
    assert result is not None
    return result


def _http(port: int, model: str, array: np.ndarray, datatype: str, count: int, binary: bool) -> np.ndarray:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        tensor = httpclient.InferInput("INPUT0", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        wanted = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=count)]
        result = client.infer(model, [tensor], outputs=wanted).as_numpy("OUTPUT0")
    finally:
        client.close()
    assert result is not None
    return result


EXPECTED_TOP3 = [
    ["0.900000:1:dog\u2028x".encode(), b"0.900000:3:fish", b"0.500000:2"],  # ties in index order; 2 has no label
    [b"3.000000:0:cat", b"1.500000:3:fish", b"0.250000:2"],
]


def test_top_k_with_labels_over_grpc(server: Server) -> None:
    out = _grpc(server, "labelled", ROWS, "FP32", 3)
    assert out.shape == (2, 3)
    assert out.tolist() == EXPECTED_TOP3


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_top_k_with_labels_over_http(server: Server, binary: bool) -> None:
    out = _http(server.http_port, "labelled", ROWS, "FP32", 3, binary)
    assert out.shape == (2, 3)
    # (tritonclient reads JSON strings back as str, binary ones as bytes)
    assert [[v.encode() if isinstance(v, str) else v for v in row] for row in out.tolist()] == EXPECTED_TOP3


def test_integers_a_k_above_the_row_and_a_model_without_batching(server: Server) -> None:
    ints = np.array([[7, 200, 3, 200, 0]], np.uint8)  # unsigned: the largest is not lost to a sign flip
    out = _grpc(server, "ints", ints, "UINT8", 10)  # k above the row's 5 elements: all 5, largest first
    assert out.tolist() == [[b"200:1", b"200:3", b"7:0", b"3:2", b"0:4"]]

    flat = np.array([0.5, 2.0, -1.0, 1.0], np.float64)  # max_batch_size 0: shape [k]
    out = _grpc(server, "flat", flat, "FP64", 2)
    assert out.shape == (2,) and out.tolist() == [b"2.000000:1", b"1.000000:3"]


def test_the_other_outputs_and_a_count_of_zero_are_untouched(server: Server) -> None:
    out = _grpc(server, "labelled", ROWS, "FP32", 0)
    assert out.dtype == np.float32 and np.array_equal(out, ROWS)


def test_an_fp16_output_cannot_be_classified(server: Server) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _grpc(server, "half", ROWS.astype(np.float16), "FP16", 2)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "class result not available for output due to unsupported type 'FP16'" in str(caught.value.message())


def test_a_label_file_outside_the_model_directory_fails_the_load(server: Server) -> None:
    assert not server.client.is_model_ready("no_labels_file")
    (row,) = [m for m in server.client.get_model_repository_index().models if m.name == "no_labels_file"]
    assert row.state == "UNAVAILABLE"
    assert "label_filename '../x.txt' names no file in the model directory" in row.reason


def test_an_output_asked_twice_is_answered_as_first_asked(server: Server) -> None:
    """As Triton's frontends keep the first setting of an output (output_map_.emplace)."""
    tensor = grpcclient.InferInput("INPUT0", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    plain_first = [
        grpcclient.InferRequestedOutput("OUTPUT0"),
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=3),
    ]
    out = server.client.infer("labelled", [tensor], outputs=plain_first).as_numpy("OUTPUT0")
    assert out is not None and out.dtype == np.float32 and np.array_equal(out, ROWS)
    three_first = [
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=3),
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=5),
    ]
    out = server.client.infer("labelled", [tensor], outputs=three_first).as_numpy("OUTPUT0")
    assert out is not None and out.shape == (2, 3)
