"""Regenerate the example models in model_repo/ (kilobytes each). Needs the [test] extra (onnx).

    python scripts/make_example_models.py [REPO_DIR]

add_sub        two FP32 inputs, their sum and difference; has a config.pbtxt (max_batch_size 8)
identity       FP32 [batch, 16] echoed back; no config.pbtxt, so its config is derived from the file
string_identity BYTES [batch, 1] echoed back; no config.pbtxt (shows string tensors)
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

IR_VERSION = 9  # onnx >= 1.23 writes IR 14 by default, which onnxruntime refuses
OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tensorgate")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def add_sub(repo: Path) -> None:
    shape = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    _save(graph, repo / "add_sub" / "1" / "model.onnx")
    (repo / "add_sub" / "config.pbtxt").write_text(
        """name: "add_sub"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
    )


def identity(repo: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])],
    )
    _save(graph, repo / "identity" / "1" / "model.onnx")


def strings(repo: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["TEXT_OUT"])],
        "string_identity",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("TEXT_OUT", TensorProto.STRING, ["batch", 1])],
    )
    _save(graph, repo / "string_identity" / "1" / "model.onnx")


def main() -> None:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "model_repo"
    add_sub(repo)
    identity(repo)
    strings(repo)
    print(f"wrote example models to {repo}")


if __name__ == "__main__":
    main()
