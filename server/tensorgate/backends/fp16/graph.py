"""Edits and walks of ONNX graphs for the FP16 conversion (see DESIGN.md, Conversion).

Subgraph walks (reads from enclosing scopes count as reads), the topological sort the converter's
output needs, the bypass of FP32 -> FP16 -> FP32 round trips, and fresh tensor names.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import onnx

from tensorgate.backends.fp16.errors import Fp16ConversionError, first_line

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16


def as_model(model: onnx.ModelProto | bytes) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load_model_from_string(model)
    except Exception as exc:
        raise ValueError(f"not an ONNX model: {first_line(exc)}") from exc


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers (what a caller feeds)."""
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for sub in subgraphs(node):
            used |= outer_references(sub)
        defined.update(node.output)
    return used - defined - {""}


def node_reads(node: onnx.NodeProto) -> set[str]:
    reads = {name for name in node.input if name}
    for sub in subgraphs(node):
        reads |= outer_references(sub)
    return reads


def cast_to(node: onnx.NodeProto) -> int | None:
    """The ``to`` type of a Cast node, None for any other node."""
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    for attr in node.attribute:
        if attr.name == "to":
            return int(attr.i)
    return None


def elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """The element type of every tensor of ``graph`` whose type is declared or inferred."""
    types: dict[str, int] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    return types


def float_constants_as_tensors(graph: onnx.GraphProto) -> None:
    """``Constant(value_float=...)`` / ``value_floats`` become the same ``Constant(value=tensor)``.

    The converter only converts tensor attributes; it would leave these FP32 next to FP16 consumers.
    """
    for node in graph.node:
        for sub in subgraphs(node):
            float_constants_as_tensors(sub)
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attr = node.attribute[0]
        if attr.name == "value_float":
            tensor = onnx.helper.make_tensor("value", FLOAT, [], [attr.f])
        elif attr.name == "value_floats":
            tensor = onnx.helper.make_tensor("value", FLOAT, [len(attr.floats)], list(attr.floats))
        else:
            continue
        node.ClearField("attribute")
        node.attribute.append(onnx.helper.make_attribute("value", tensor))


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after what it reads (stable: keeps the order where it can).

    Reads through subgraphs (an If branch using a tensor of the main graph) count as reads.
    """
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    waiting_on: list[set[int]] = []
    dependents: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps: set[int] = set()
        for name in node_reads(node):
            if name in producer:
                deps.add(producer[name])
            elif name not in available:
                where = " (inside a subgraph)" if name not in node.input else ""
                raise Fp16ConversionError(
                    f"the FP16 model is invalid: node {node.name or node.op_type!r} ({node.op_type}) reads "
                    f"{name!r}{where}, which nothing produces; the converter does not support blocked ops "
                    "inside If/Loop/Scan bodies"
                )
        deps.discard(i)
        waiting_on.append(deps)
        for d in deps:
            dependents[d].append(i)
    ready = [i for i, deps in enumerate(waiting_on) if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in dependents[i]:
            waiting_on[j].discard(i)
            if not waiting_on[j]:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise Fp16ConversionError("the FP16 model is invalid: its graph has a cycle")
    graph.ClearField("node")
    graph.node.extend(nodes[i] for i in order)


def bypass_fp16_round_trips(model: onnx.ModelProto) -> None:
    """``a(fp32) -> Cast(fp16) -> Cast(fp32) -> consumer`` becomes ``a -> consumer`` (top-level graph)."""
    graph = model.graph
    try:
        types = elem_types(onnx.shape_inference.infer_shapes(model).graph)
    except Exception:  # without types nothing is bypassed; the checker judges the model as it is
        return
    producers = {out: node for node in graph.node for out in node.output if out}
    graph_outputs = {o.name for o in graph.output}
    read_by_subgraphs: set[str] = set()
    for node in graph.node:
        for sub in subgraphs(node):
            read_by_subgraphs |= outer_references(sub)
    renamed: dict[str, str] = {}
    removed: list[onnx.NodeProto] = []
    for node in graph.node:
        if cast_to(node) != FLOAT:
            continue
        first = producers.get(node.input[0])
        if first is None or cast_to(first) != FLOAT16 or types.get(first.input[0]) != FLOAT:
            continue
        source = first.input[0]
        out = node.output[0]
        if out in graph_outputs or out in read_by_subgraphs:
            node.input[0] = source  # now an FP32 -> FP32 Cast: keeps the output's name
        else:
            renamed[out] = source
            removed.append(node)
    for node in removed:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    # Casts to FP16 that fed only the bypassed round trips are now dead.
    read = {name for node in graph.node for name in node_reads(node)} | graph_outputs
    dead = [n for n in graph.node if cast_to(n) == FLOAT16 and not any(o in read for o in n.output)]
    for node in dead:
        graph.node.remove(node)
    gone = set(renamed) | {o for n in dead for o in n.output}
    keep = [vi for vi in graph.value_info if vi.name not in gone]
    graph.ClearField("value_info")
    graph.value_info.extend(keep)


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name used in ``graph`` and its subgraphs."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for sub in subgraphs(node):
            names |= all_names(sub)
    return names


def fresh(base: str, names: set[str]) -> str:
    """``base``, or ``base`` with a number, not yet in ``names`` (to which it is added)."""
    name, n = base, 0
    while name in names:
        n += 1
        name = f"{base}{n}"
    names.add(name)
    return name
