"""FP16 emulation on the CPU: the FP32 model the accuracy gate runs for an FP16 one (see DESIGN.md,
The gate)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from tensorgate.backends.fp16.errors import Fp16Error, first_line
from tensorgate.backends.fp16.graph import FLOAT, FLOAT16, all_names, elem_types, fresh


def fp16_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 model that computes what ``model`` computes with its FP16 tensors, for ONNX Runtime's CPU.

    Every tensor ``model`` holds in FP16 is produced in FP32 and sent through ``Cast(fp16)`` and
    ``Cast(fp32)``, so it is rounded (and overflows, and underflows) exactly as in FP16; FP16
    initializers and constants become FP32 with the same values. FP16 graph inputs and outputs
    become FP32 (feed them values already rounded to FP16). See DESIGN.md for why.
    Raises :class:`Fp16Error` if the type of some tensor cannot be inferred.
    """
    try:
        emulated = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise Fp16Error(f"cannot infer the FP16 model's tensor types: {first_line(exc)}") from exc
    names = all_names(emulated.graph)
    _emulate_graph(emulated.graph, {}, names)
    return emulated


def _upcast_tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == FLOAT16:
        array = numpy_helper.to_array(tensor).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _holds_fp16(type_proto: onnx.TypeProto) -> bool:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return type_proto.tensor_type.elem_type == FLOAT16
    if kind == "sequence_type":
        return _holds_fp16(type_proto.sequence_type.elem_type)
    if kind == "optional_type":
        return _holds_fp16(type_proto.optional_type.elem_type)
    if kind == "map_type":
        return _holds_fp16(type_proto.map_type.value_type)
    return False


def _upcast_value_info(vi: onnx.ValueInfoProto) -> None:
    if not _holds_fp16(vi.type):
        return
    if vi.type.WhichOneof("value") != "tensor_type":
        raise Fp16Error(f"cannot emulate FP16 for {vi.name!r}: FP16 inside a sequence, map or optional")
    vi.type.tensor_type.elem_type = FLOAT


def _emulate_graph(graph: onnx.GraphProto, outer: Mapping[str, int], names: set[str]) -> None:
    types = {**outer, **elem_types(graph)}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _upcast_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.TENSORS:
                for tensor in attr.tensors:
                    _upcast_tensor(tensor)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _emulate_graph(attr.g, types, names)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _emulate_graph(sub, types, names)
            elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == FLOAT16:
                attr.i = FLOAT  # Cast(to=fp16), RandomNormal(dtype=fp16), ...: rounded by the Casts below
        nodes.append(node)
        for i, out in enumerate(node.output):
            if not out:
                continue
            elem_type = types.get(out)
            if elem_type is None:
                raise Fp16Error(
                    f"cannot emulate FP16: the type of {out!r} (output of {node.op_type} "
                    f"{node.name or '(unnamed)'}) cannot be inferred"
                )
            if elem_type != FLOAT16:
                continue
            wide = fresh(f"{out}__fp32", names)
            half = fresh(f"{out}__fp16", names)
            node.output[i] = wide
            nodes.append(onnx.helper.make_node("Cast", [wide], [half], to=FLOAT16, name=fresh(f"{half}_cast", names)))
            nodes.append(onnx.helper.make_node("Cast", [half], [out], to=FLOAT, name=fresh(f"{out}_cast", names)))
    graph.ClearField("node")
    graph.node.extend(nodes)
    for tensor in graph.initializer:
        _upcast_tensor(tensor)
    for vi in (*graph.input, *graph.output):
        _upcast_value_info(vi)
    graph.ClearField("value_info")
