"""config.pbtxt's ``model_operations { op_library_filename }``: the custom-op libraries ONNX Runtime
registers before it loads the model, as Triton's ONNX Runtime backend does. The library is a real one
(onnxruntime-extensions' custom ops, e.g. ``ai.onnx.contrib:StringUpper``), served by a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
from conftest import Server
from models import write_config
from onnx import TensorProto, helper


def _library_path() -> str:
    """onnxruntime-extensions' custom-op library, asked of a child interpreter: importing the package sets
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in os.environ, which every server this test session
    starts afterwards would inherit (pure-Python protobuf: other messages for bad UTF-8, slower)."""
    ask = "import onnxruntime_extensions as x; print(x.get_library_path())"
    return subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, check=True).stdout.strip()


def _upper(path: Path) -> None:
    """A model of one custom op: STRING [batch, n] -> the same, upper-cased (ai.onnx.contrib:StringUpper)."""
    graph = helper.make_graph(
        [helper.make_node("StringUpper", ["TEXT"], ["UPPER"], domain="ai.onnx.contrib")],
        "upper",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("UPPER", TensorProto.STRING, ["batch", "n"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_a_custom_op_library_is_registered_and_its_model_serves(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    repo = tmp_path / "repo"
    library = _library_path()
    for name, operations in [
        ("upper", f"model_operations {{ op_library_filename: '{library}' }}"),
        ("no_library", ""),  # the same model without its library cannot load
        ("bad_library", "model_operations { op_library_filename: '/nonexistent/libcustom.so' }"),
    ]:
        _upper(repo / name / "1" / "model.onnx")
        write_config(repo / name, f"max_batch_size: 4\n{operations}")
    server = start_server(repo)
    text = grpcclient.InferInput("TEXT", [1, 2], "BYTES")
    text.set_data_from_numpy(np.array([[b"abc", "d\u00e9f".encode()]], dtype=np.object_))
    out = server.client.infer("upper", [text]).as_numpy("UPPER")
    assert out is not None and out.tolist() == [[b"ABC", "D\u00e9F".encode()]]  # (the op upper-cases ASCII)

    index = {m.name: (m.state, m.reason) for m in server.client.get_model_repository_index().models}
    assert index["no_library"][0] == "UNAVAILABLE" and "StringUpper" in index["no_library"][1]
    assert index["bad_library"][0] == "UNAVAILABLE"
    assert "op_library_filename '/nonexistent/libcustom.so' cannot be registered" in index["bad_library"][1]
    assert "model_operations is ignored" not in server.log
