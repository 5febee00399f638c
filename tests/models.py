"""Small ONNX models and repositories made on the fly for tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 9
OPSET = 17

Dim = int | str | None


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def identity(
    path: Path,
    elem_type: int = TensorProto.FLOAT,
    shape: Sequence[Dim] = ("batch", 16),
    in_name: str = "INPUT0",
    out_name: str = "OUTPUT0",
) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", [in_name], [out_name])],
        "identity",
        [helper.make_tensor_value_info(in_name, elem_type, list(shape))],
        [helper.make_tensor_value_info(out_name, elem_type, list(shape))],
    )
    return save(graph, path)


def add_sub(path: Path, elem_type: int = TensorProto.FLOAT, shape: Sequence[Dim] = ("batch", 16)) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [helper.make_tensor_value_info(n, elem_type, list(shape)) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, elem_type, list(shape)) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return save(graph, path)


def slow(path: Path, size: int = 512, layers: int = 64) -> Path:
    """FP32 [batch, size] through ``layers`` MatMuls with one shared weight: at batch 64 about a
    tenth of a second per call on two cores, so requests stay in flight long enough to observe."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    nodes, last = [], "INPUT0"
    for i in range(layers):
        out = "OUTPUT0" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [last, "w"], [out]))
        last = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", size])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return save(graph, path)


def lookup(path: Path) -> Path:
    """INT64 [batch, 1] indices into a table of four FP32 values (10, 11, 12, 13): an index beyond
    the table fails inside ONNX Runtime, an engine failure of that request alone."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "INPUT0"], ["OUTPUT0"])],
        "lookup",
        [helper.make_tensor_value_info("INPUT0", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([10, 11, 12, 13], np.float32), "table")],
    )
    return save(graph, path)


def write_config(model_dir: Path, text: str) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)
