"""FP32 ONNX -> mixed-precision FP16 ONNX, and the accuracy gate that decides whether to use it.

TensorRT 11 builds strongly typed networks only (``BuilderFlag.FP16`` is gone): the precision of
every tensor is the one the ONNX graph declares. So FP16 has to be written into the graph before
the engine is built. This module does that, and checks the result, on the CPU with ONNX Runtime;
it imports nothing of the server (only numpy, onnx and onnxruntime).

The pipeline (:func:`fp16_pipeline`) is::

    FP32 model --convert_to_fp16--> FP16 model --check_accuracy (vs FP32, on samples)--> accept | refuse

and a refusal carries a reason (naming the output and the numbers) for the caller to log before it
keeps the FP32 model.

Conversion
----------
:func:`convert_to_fp16` uses ``onnxruntime.transformers.float16.convert_float_to_float16`` with
``keep_io_types=True``: the converter that ships inside the ``onnxruntime`` wheel (CPU and GPU builds
alike), maintained with it (Olive's FP16 pass uses it too), so it adds no dependency. It was chosen
over ``onnxconverter-common`` 1.16.0 (its last release, 2025-08), which with onnx 1.23 / numpy 2
produces invalid models in two common cases: an initializer shared by a blocked and an unblocked
node (ORT refuses the model: "Type parameter (T) ... bound to different types"), and a blocked op
that produces a graph output (that output silently becomes FLOAT16 despite ``keep_io_types``).
The converted graph is then post-processed, without changing what the converter decided:

* it is put back in topological order (the converter appends its Casts at the end, which ONNX
  forbids and onnx's checker rejects);
* an FP32 value that the converter sends through FP16 only to reach an FP32 consumer
  (``x -> Cast(fp16) -> Cast(fp32) -> LayerNormalization``, a blocked op feeding a blocked op, a
  blocked op feeding a graph output) reaches that consumer directly: the round trip would only lose
  precision and range (a value above 65504 would become inf on its way to an op kept in FP32 to
  protect it);
* the IR version of the input is kept, inputs and outputs are checked to be FP32 where they were,
  and the result must pass ``onnx.checker`` (full check).

A blocked op inside an If/Loop/Scan body is a case the converter gets wrong (it puts that op's Casts
in the main graph); such a model fails the checks above and is refused, not mis-converted.

Block list
----------
:data:`DEFAULT_BLOCK_OPS` are the op types kept in FP32 (their inputs are cast up, their outputs
down). FP16 has an 11-bit significand (a relative step of 2**-11, about 4.9e-4) and a largest
finite value of 65504; the list holds the ops where those limits, rather than the usual rounding
noise, decide the result:

* normalizations (LayerNormalization, RMSNormalization, GroupNormalization, InstanceNormalization,
  LpNormalization, MeanVarianceNormalization): a mean of squares over a whole row; activations of
  a few hundred already overflow when squared (256**2 > 65504), and the small difference ``x - mean``
  loses its digits;
* Softmax, LogSoftmax: a sum of exponentials over a whole axis (e.g. a 50k vocabulary);
* accumulating reductions (ReduceSum, ReduceMean, ReduceSumSquare, ReduceL1, ReduceL2, ReduceLogSum,
  ReduceLogSumExp, ReduceProd, CumSum): long sums lose the small terms, products overflow.
  ReduceMax/ReduceMin/ArgMax stay FP16: they only select a value, which is exact;
* Pow, Exp, Log, Sqrt: Exp overflows above 11.09 and Pow above 256**2; Log and Sqrt sit on the same
  variance/log-probability paths as the ops above, so blocking them keeps those chains in FP32;
* ops whose float values are integers or coordinates (Range, TopK, NonMaxSuppression, RoiAlign,
  GridSample, AffineGrid): FP16 holds integers exactly only up to 2048 and pixel coordinates of a
  1024-pixel image to about half a pixel;
* ops that have no FP16 form or whose float inputs must stay FP32 (the ``ai.onnx.ml`` operators,
  RandomUniformLike, Upsample): the same as onnxruntime's converter blocks by default.

Not blocked, deliberately: MatMul/Gemm/Conv (the point of FP16; TensorRT accumulates them in FP32),
Div and Reciprocal (in every attention and normalization; blocking them would cast at every layer,
and the gate catches the rare overflow), Erf/Tanh/Sigmoid (bounded), Resize (interpolates between
neighbours so it cannot overflow; the converter keeps its ``scales`` input FP32 by itself),
Min/Max/Clip (exact in FP16; onnxruntime blocks Min and Max only for old kernel gaps).

The gate
--------
ONNX Runtime's CPU provider has few FP16 kernels: it runs FP16 nodes in FP32 and removes the
FP16->FP32 round trips between them (its InsertCastTransformer). Run as it is, an FP16 model on the
CPU never rounds or overflows its intermediates, and a gate built on that would pass a model whose
intermediates exceed 65504. So :func:`check_accuracy` runs :func:`fp16_emulation` of the candidate:
the same graph in FP32 with an explicit ``Cast(fp16) -> Cast(fp32)`` after every tensor the FP16
model stores in FP16, which ONNX Runtime keeps. That reproduces FP16 storage exactly (rounding,
overflow to inf, underflow) and FP16 arithmetic of elementwise ops (an FP32 result rounded to FP16
is the correctly rounded FP16 result for +, -, *, /, sqrt); sums inside one op (MatMul, Conv,
reductions) accumulate in FP32, as TensorRT's tensor-core kernels do. It is a CPU model of the
engine, not the engine: once built, the engine's own outputs should be compared again with
:func:`compare_outputs`.

Tolerance
---------
Every output element is compared with its own magnitude, but never with less than the output's RMS
(``atol`` if that is smaller)::

    error_i = |candidate_i - reference_i| / max(|reference_i|, rms(reference), atol)

and an output passes if its largest ``error_i`` is at most ``rtol``. FP16 rounds each intermediate to
about 3 decimal digits of *that intermediate's* magnitude, so an output element that is small
because large terms cancelled carries an absolute error of the order of the output's typical
magnitude, not its own; a pure relative error would refuse every model on such elements, a pure
absolute one would not know the output's scale. The defaults, ``rtol=1e-2`` and ``atol=1e-4``:
rounding noise through a deep network is typically 1e-3 to 5e-3 on this measure, while real FP16
failures (overflow, a lost small term, a saturated normalization) give 1e-1 and more or non-finite
values; ``atol`` is just above FP16's smallest normal number (6.1e-5), below which FP16 has no
relative precision at all. Whatever the numbers, any inf/NaN in the candidate where the reference is
finite fails the output. Integer, bool and string outputs must match exactly
(``max_mismatch_fraction`` loosens that).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
FP16_MAX = 65504.0

DEFAULT_BLOCK_OPS: frozenset[str] = frozenset(
    {
        # normalizations: mean of squares over a row
        "LayerNormalization",
        "RMSNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "LpNormalization",
        "MeanVarianceNormalization",
        # softmax: sum of exponentials over an axis
        "Softmax",
        "LogSoftmax",
        # accumulating reductions
        "ReduceSum",
        "ReduceMean",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceProd",
        "CumSum",
        # range-sensitive elementwise
        "Pow",
        "Exp",
        "Log",
        "Sqrt",
        # float values that are integers or coordinates
        "Range",
        "TopK",
        "NonMaxSuppression",
        "RoiAlign",
        "GridSample",
        "AffineGrid",
        # no FP16 form, or float inputs that must stay FP32 (as onnxruntime's converter)
        "RandomUniformLike",
        "Upsample",
        "ArrayFeatureExtractor",
        "Binarizer",
        "CastMap",
        "CategoryMapper",
        "DictVectorizer",
        "FeatureVectorizer",
        "Imputer",
        "LabelEncoder",
        "LinearClassifier",
        "LinearRegressor",
        "Normalizer",
        "OneHotEncoder",
        "SVMClassifier",
        "SVMRegressor",
        "Scaler",
        "TreeEnsemble",
        "TreeEnsembleClassifier",
        "TreeEnsembleRegressor",
        "ZipMap",
    }
)


class Fp16Error(Exception):
    """Base of this module's errors; the message says what went wrong."""


class Fp16ConversionError(Fp16Error):
    """The model cannot be converted to a valid mixed-precision FP16 model."""


class AccuracyCheckError(Fp16Error):
    """A model could not be run for the accuracy check (so nothing could be compared)."""


# --------------------------------------------------------------------------------------------
# Conversion


def convert_to_fp16(model: onnx.ModelProto, block_ops: Collection[str] = DEFAULT_BLOCK_OPS) -> onnx.ModelProto:
    """A mixed-precision copy of ``model``: FP16 inside, FP32 inputs and outputs, ``block_ops`` in FP32.

    The input model is not modified. Raises :class:`Fp16ConversionError` if the converter fails or
    its result is not a valid model.
    """
    from onnxruntime.transformers import float16 as ort_float16  # adds its folder to sys.path

    source = onnx.ModelProto()
    source.CopyFrom(model)
    _float_constants_as_tensors(source.graph)
    try:
        converted = cast(
            onnx.ModelProto,
            ort_float16.convert_float_to_float16(
                source,
                keep_io_types=True,
                op_block_list=sorted(block_ops),
                node_block_list=[],
                force_fp16_initializers=False,
            ),
        )
    except Exception as exc:  # the converter raises ValueError, AssertionError, onnx errors
        raise Fp16ConversionError(f"onnxruntime's FP16 converter failed: {type(exc).__name__}: {exc}") from exc
    converted.ir_version = model.ir_version  # onnxruntime refuses IR versions newer than it knows
    _sort_topologically(converted.graph)
    _bypass_fp16_round_trips(converted)
    _check_io_types(model, converted)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        if _passes_full_check(model):  # else strict inference fails on the original too: judge structure only
            raise Fp16ConversionError(f"the FP16 model is not valid ONNX: {_first_line(exc)}") from exc
        try:
            onnx.checker.check_model(converted)
        except Exception as exc2:
            raise Fp16ConversionError(f"the FP16 model is not valid ONNX: {_first_line(exc2)}") from exc2
    return converted


def _passes_full_check(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:
        return False
    return True


def _float_constants_as_tensors(graph: onnx.GraphProto) -> None:
    """``Constant(value_float=...)`` / ``value_floats`` become the same ``Constant(value=tensor)``.

    The converter only converts tensor attributes; it would leave these FP32 next to FP16 consumers.
    """
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _float_constants_as_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _float_constants_as_tensors(sub)
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for sub in _subgraphs(node):
            used |= _outer_references(sub)
        defined.update(node.output)
    return used - defined - {""}


def _node_reads(node: onnx.NodeProto) -> set[str]:
    reads = {name for name in node.input if name}
    for sub in _subgraphs(node):
        reads |= _outer_references(sub)
    return reads


def _sort_topologically(graph: onnx.GraphProto) -> None:
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
        for name in _node_reads(node):
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


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    for attr in node.attribute:
        if attr.name == "to":
            return int(attr.i)
    return None


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types: dict[str, int] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    return types


def _bypass_fp16_round_trips(model: onnx.ModelProto) -> None:
    """``a(fp32) -> Cast(fp16) -> Cast(fp32) -> consumer`` becomes ``a -> consumer`` (top-level graph)."""
    graph = model.graph
    try:
        types = _elem_types(onnx.shape_inference.infer_shapes(model).graph)
    except Exception:  # without types nothing is bypassed; the checker judges the model as it is
        return
    producers = {out: node for node in graph.node for out in node.output if out}
    graph_outputs = {o.name for o in graph.output}
    read_by_subgraphs: set[str] = set()
    for node in graph.node:
        for sub in _subgraphs(node):
            read_by_subgraphs |= _outer_references(sub)
    renamed: dict[str, str] = {}
    removed: list[onnx.NodeProto] = []
    for node in graph.node:
        if _cast_to(node) != FLOAT:
            continue
        first = producers.get(node.input[0])
        if first is None or _cast_to(first) != FLOAT16 or types.get(first.input[0]) != FLOAT:
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
    read = {name for node in graph.node for name in _node_reads(node)} | graph_outputs
    dead = [n for n in graph.node if _cast_to(n) == FLOAT16 and not any(o in read for o in n.output)]
    for node in dead:
        graph.node.remove(node)
    gone = set(renamed) | {o for n in dead for o in n.output}
    keep = [vi for vi in graph.value_info if vi.name not in gone]
    graph.ClearField("value_info")
    graph.value_info.extend(keep)


def _check_io_types(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    before = {vi.name: vi.type.tensor_type.elem_type for vi in (*original.graph.input, *original.graph.output)}
    for vi in (*converted.graph.input, *converted.graph.output):
        was = before.get(vi.name)
        if was is None:
            raise Fp16ConversionError(f"the FP16 model has an input or output {vi.name!r} the original lacks")
        if was == FLOAT and vi.type.tensor_type.elem_type != FLOAT:
            raise Fp16ConversionError(
                f"the FP16 converter changed {vi.name!r} from FP32 to "
                f"{onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}; inputs and outputs must stay FP32"
            )


# --------------------------------------------------------------------------------------------
# FP16 emulation on the CPU


def fp16_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 model that computes what ``model`` computes with its FP16 tensors, for ONNX Runtime's CPU.

    Every tensor ``model`` holds in FP16 is produced in FP32 and sent through ``Cast(fp16)`` and
    ``Cast(fp32)``, so it is rounded (and overflows, and underflows) exactly as in FP16; FP16
    initializers and constants become FP32 with the same values. FP16 graph inputs and outputs
    become FP32 (feed them values already rounded to FP16). See the module docstring for why.
    Raises :class:`Fp16Error` if the type of some tensor cannot be inferred.
    """
    try:
        emulated = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise Fp16Error(f"cannot infer the FP16 model's tensor types: {_first_line(exc)}") from exc
    names = _all_names(emulated.graph)
    _emulate_graph(emulated.graph, {}, names)
    return emulated


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for sub in _subgraphs(node):
            names |= _all_names(sub)
    return names


def _fresh(base: str, names: set[str]) -> str:
    name, n = base, 0
    while name in names:
        n += 1
        name = f"{base}{n}"
    names.add(name)
    return name


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
    types = {**outer, **_elem_types(graph)}
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
            wide = _fresh(f"{out}__fp32", names)
            half = _fresh(f"{out}__fp16", names)
            node.output[i] = wide
            nodes.append(onnx.helper.make_node("Cast", [wide], [half], to=FLOAT16, name=_fresh(f"{half}_cast", names)))
            nodes.append(onnx.helper.make_node("Cast", [half], [out], to=FLOAT, name=_fresh(f"{out}_cast", names)))
    graph.ClearField("node")
    graph.node.extend(nodes)
    for tensor in graph.initializer:
        _upcast_tensor(tensor)
    for vi in (*graph.input, *graph.output):
        _upcast_value_info(vi)
    graph.ClearField("value_info")


# --------------------------------------------------------------------------------------------
# Sample inputs


def _as_model(model: onnx.ModelProto | bytes) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load_model_from_string(model)
    except Exception as exc:
        raise ValueError(f"not an ONNX model: {_first_line(exc)}") from exc


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


_FLOAT_TYPES: dict[int, type[np.floating[Any]]] = {
    FLOAT: np.float32,
    FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
}


def sample_inputs(
    model: onnx.ModelProto | bytes,
    batch_size: int = 1,
    seed: int = 0,
    *,
    dims: Mapping[str, int] | None = None,
    max_dim: int = 8,
) -> dict[str, np.ndarray]:
    """Random data for every input of ``model``, in a range every model accepts.

    Float inputs are standard normal; integer inputs are in ``[0, 4)`` (valid indices and ids for
    any table); bool inputs are random. The first dynamic dimension of each input is the batch
    (``batch_size``); other dynamic dimensions take the value from ``dims`` for their symbolic name,
    else a random size in ``[1, max_dim]``, the same for every input that uses the same name.
    Raises ValueError for an input with no shape or a type it cannot make (string, bfloat16, ...).
    """
    graph_model = _as_model(model)
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = dict(dims or {})
    inputs = _real_inputs(graph_model)
    # A symbol that is the first dynamic dim of some input is the batch everywhere it appears.
    for vi in inputs:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.WhichOneof("value") != "dim_value":
                if dim.WhichOneof("value") == "dim_param" and dim.dim_param not in sizes:
                    sizes[dim.dim_param] = batch_size
                break
    unnamed = int(rng.integers(1, max_dim + 1))
    samples: dict[str, np.ndarray] = {}
    for vi in inputs:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            raise ValueError(f"input {vi.name!r} has no tensor shape; pass samples for this model")
        shape: list[int] = []
        first_dynamic = True
        for dim in vi.type.tensor_type.shape.dim:
            kind = dim.WhichOneof("value")
            if kind == "dim_value":
                shape.append(int(dim.dim_value))
                continue
            if kind == "dim_param":
                if dim.dim_param not in sizes:
                    sizes[dim.dim_param] = int(rng.integers(1, max_dim + 1))
                shape.append(sizes[dim.dim_param])
            else:
                shape.append(batch_size if first_dynamic else unnamed)
            first_dynamic = False
        elem_type = vi.type.tensor_type.elem_type
        if elem_type in _FLOAT_TYPES:
            samples[vi.name] = rng.standard_normal(shape).astype(_FLOAT_TYPES[elem_type])
        elif elem_type == onnx.TensorProto.BOOL:
            samples[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif elem_type in _INT_TYPES:
            samples[vi.name] = rng.integers(0, 4, size=shape).astype(_INT_TYPES[elem_type])
        else:
            type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
            raise ValueError(f"input {vi.name!r} has type {type_name}; pass samples for this model")
    return samples


_INT_TYPES: dict[int, type[np.integer[Any]]] = {
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.UINT64: np.uint64,
}


# --------------------------------------------------------------------------------------------
# Accuracy gate


@dataclass(frozen=True)
class Tolerance:
    """How far a candidate's outputs may be from the reference's (see the module docstring)."""

    rtol: float = 1e-2
    """Largest allowed ``|cand - ref| / max(|ref|, rms(ref), atol)`` of any element of a float output."""
    atol: float = 1e-4
    """Smallest magnitude errors are measured against (outputs whose RMS is below it)."""
    max_mismatch_fraction: float = 0.0
    """Fraction of elements of an integer, bool or string output allowed to differ."""


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class OutputAccuracy:
    """How one output of the candidate compares with the reference, over all samples."""

    name: str
    elements: int
    max_abs_error: float
    """Largest ``|cand - ref|`` where both are finite (float outputs)."""
    max_rel_error: float
    """Largest ``|cand - ref| / max(|ref|, rms(ref), atol)`` where both are finite (float outputs)."""
    new_nonfinite: int
    """Elements that are inf/NaN in the candidate but finite in the reference."""
    nonfinite_mismatch: int
    """Elements that are inf/NaN in the reference and something else in the candidate."""
    mismatches: int
    """Elements that differ (integer, bool and string outputs)."""
    passed: bool
    detail: str
    """One line: why it failed, or its worst error."""


@dataclass(frozen=True)
class AccuracyReport:
    outputs: tuple[OutputAccuracy, ...]
    samples: int
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def reason(self) -> str:
        """Why it failed (every failing output), or the worst error if it passed."""
        failed = [o for o in self.outputs if not o.passed]
        if failed:
            return "; ".join(o.detail for o in failed)
        if not self.outputs:
            return "no outputs compared"
        worst = max(self.outputs, key=lambda o: o.max_rel_error)
        count = f"{len(self.outputs)} output{'s' if len(self.outputs) != 1 else ''}"
        return f"{count} within tolerance over {self.samples} samples (worst: {worst.detail})"


@dataclass
class _OutputStats:
    name: str
    ref_label: str
    cand_label: str
    tolerance_atol: float
    elements: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    new_nonfinite: int = 0
    first_new_nonfinite: str = ""
    nonfinite_mismatch: int = 0
    first_nonfinite_mismatch: str = ""
    mismatches: int = 0
    first_mismatch: str = ""
    numeric: bool = True
    problems: list[str] = field(default_factory=list)

    def add(self, sample: int, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            self.problems.append(
                f"sample {sample}: shape {list(cand.shape)} in {self.cand_label}, {list(ref.shape)} in {self.ref_label}"
            )
            return
        self.elements += ref.size
        if ref.size == 0:
            return
        if ref.dtype.kind in "fc" and cand.dtype.kind in "fc":
            self._add_float(sample, ref.astype(np.float64), cand.astype(np.float64))
        else:
            self.numeric = False
            differ = np.asarray(ref != cand, dtype=np.bool_)
            count = int(differ.sum())
            if count and not self.mismatches:
                at = np.unravel_index(int(np.argmax(differ)), differ.shape)
                self.first_mismatch = (
                    f"sample {sample} index {list(map(int, at))}: {self.ref_label} {ref[at]!r}, "
                    f"{self.cand_label} {cand[at]!r}"
                )
            self.mismatches += count

    def _add_float(self, sample: int, ref: np.ndarray, cand: np.ndarray) -> None:
        ref_finite = np.isfinite(ref)
        cand_finite = np.isfinite(cand)
        new_nonfinite = ref_finite & ~cand_finite
        if new_nonfinite.any():
            if not self.new_nonfinite:
                at = np.unravel_index(int(np.argmax(new_nonfinite)), ref.shape)
                self.first_new_nonfinite = (
                    f"sample {sample} index {list(map(int, at))}: {self.ref_label} {ref[at]:.6g}, "
                    f"{self.cand_label} {cand[at]}"
                )
            self.new_nonfinite += int(new_nonfinite.sum())
        same_nonfinite = (np.isnan(ref) & np.isnan(cand)) | (np.isinf(ref) & (ref == cand))
        mismatch = ~ref_finite & ~same_nonfinite
        if mismatch.any():
            if not self.nonfinite_mismatch:
                at = np.unravel_index(int(np.argmax(mismatch)), ref.shape)
                self.first_nonfinite_mismatch = (
                    f"sample {sample} index {list(map(int, at))}: {self.ref_label} {ref[at]}, "
                    f"{self.cand_label} {cand[at]:.6g}"
                )
            self.nonfinite_mismatch += int(mismatch.sum())
        both = ref_finite & cand_finite
        if not both.any():
            return
        finite_ref = ref[ref_finite]
        scale = max(self.tolerance_atol, math.sqrt(float(np.mean(np.square(finite_ref)))))
        diff = np.where(both, np.abs(np.where(both, cand, 0.0) - np.where(both, ref, 0.0)), 0.0)
        rel = diff / np.maximum(np.abs(np.where(both, ref, 0.0)), scale)
        self.max_abs = max(self.max_abs, float(diff.max()))
        flat = int(np.argmax(rel))
        if float(rel.flat[flat]) >= self.max_rel:
            self.max_rel = float(rel.flat[flat])
            at = np.unravel_index(flat, ref.shape)
            self.worst = (
                f"sample {sample} index {list(map(int, at))}: {self.ref_label} {ref[at]:.6g}, "
                f"{self.cand_label} {cand[at]:.6g}, |diff| {diff[at]:.3g}, scale {max(abs(ref[at]), scale):.3g}"
            )

    def result(self, tolerance: Tolerance) -> OutputAccuracy:
        name = repr(self.name)
        if self.problems:
            passed, detail = False, f"output {name}: " + "; ".join(self.problems)
        elif self.new_nonfinite:
            passed = False
            detail = (
                f"output {name}: {self.new_nonfinite} of {self.elements} values are inf/NaN in {self.cand_label} "
                f"but finite in {self.ref_label} (first at {self.first_new_nonfinite}): an intermediate value "
                f"overflowed FP16's range (|x| > {FP16_MAX:g})"
            )
        elif self.nonfinite_mismatch:
            passed = False
            detail = (
                f"output {name}: {self.nonfinite_mismatch} of {self.elements} values are inf/NaN in "
                f"{self.ref_label} but differ in {self.cand_label} (first at {self.first_nonfinite_mismatch})"
            )
        elif not self.numeric:
            fraction = self.mismatches / self.elements if self.elements else 0.0
            passed = fraction <= tolerance.max_mismatch_fraction
            detail = f"output {name}: {self.mismatches} of {self.elements} values differ"
            if self.mismatches:
                detail += f" (first at {self.first_mismatch})"
            if not passed:
                detail += f", more than the allowed fraction {tolerance.max_mismatch_fraction:g}"
        else:
            passed = self.max_rel <= tolerance.rtol
            relation = "<=" if passed else ">"
            detail = (
                f"output {name}: max relative error {self.max_rel:.3g} {relation} rtol {tolerance.rtol:g}, "
                f"max abs error {self.max_abs:.3g}"
            )
            if self.worst:
                detail += f" (worst at {self.worst})"
        return OutputAccuracy(
            name=self.name,
            elements=self.elements,
            max_abs_error=self.max_abs,
            max_rel_error=self.max_rel,
            new_nonfinite=self.new_nonfinite,
            nonfinite_mismatch=self.nonfinite_mismatch,
            mismatches=self.mismatches,
            passed=passed,
            detail=detail,
        )


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    *,
    reference_label: str = "FP32",
    candidate_label: str = "FP16",
) -> AccuracyReport:
    """Compare outputs already computed (one mapping per sample; every reference output is compared).

    :func:`check_accuracy` uses it; so can a check of a built engine's outputs against FP32.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference samples but {len(candidate)} candidate samples")
    names = list(reference[0]) if reference else []
    stats = {name: _OutputStats(name, reference_label, candidate_label, tolerance.atol) for name in names}
    for sample, (ref_outputs, cand_outputs) in enumerate(zip(reference, candidate, strict=True)):
        for name in names:
            if name not in cand_outputs:
                stats[name].problems.append(f"sample {sample}: missing from {candidate_label}")
                continue
            stats[name].add(sample, np.asarray(ref_outputs[name]), np.asarray(cand_outputs[name]))
    return AccuracyReport(
        outputs=tuple(s.result(tolerance) for s in stats.values()), samples=len(reference), tolerance=tolerance
    )


def _session(model: onnx.ModelProto, level: ort.GraphOptimizationLevel, what: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind exception types
        raise AccuracyCheckError(f"ONNX Runtime cannot load the {what} model: {_first_line(exc)}") from exc


def _run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, dict(feeds))
    except Exception as exc:
        raise AccuracyCheckError(f"ONNX Runtime failed running the {what} model: {_first_line(exc)}") from exc
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def _feeds(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], emulated: bool) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for vi in _real_inputs(model):
        if vi.name not in sample:
            raise AccuracyCheckError(f"the samples have no value for input {vi.name!r}")
        value = np.asarray(sample[vi.name])
        elem_type = vi.type.tensor_type.elem_type
        if elem_type == FLOAT16:
            value = value.astype(np.float16)
            if emulated:
                value = value.astype(np.float32)
        elif elem_type in _FLOAT_TYPES:
            value = value.astype(_FLOAT_TYPES[elem_type])
        feeds[vi.name] = value
    return feeds


def check_accuracy(
    reference: onnx.ModelProto | bytes,
    candidate: onnx.ModelProto | bytes,
    samples: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    *,
    emulate_fp16: bool = True,
) -> AccuracyReport:
    """Run both models with ONNX Runtime on the CPU on every sample and compare every output.

    With ``emulate_fp16`` (the default) the candidate runs as :func:`fp16_emulation`, so its FP16
    tensors are rounded and overflow as they would on a GPU; without it, as it is (ONNX Runtime's
    CPU provider then computes most FP16 nodes in FP32, hiding FP16 overflow). Raises
    :class:`AccuracyCheckError` if a model cannot be loaded or run, ValueError if there are no samples.
    """
    if not samples:
        raise ValueError("check_accuracy needs at least one sample")
    ref_model = _as_model(reference)
    cand_model = _as_model(candidate)
    run_model = fp16_emulation(cand_model) if emulate_fp16 else cand_model
    ref_session = _session(ref_model, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "reference")
    # No optimization: the graph runs as written, every FP16 round trip included.
    cand_session = _session(run_model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "candidate")
    ref_outputs: list[dict[str, np.ndarray]] = []
    cand_outputs: list[dict[str, np.ndarray]] = []
    for sample in samples:
        ref_outputs.append(_run(ref_session, _feeds(ref_model, sample, emulated=False), "reference"))
        cand_outputs.append(_run(cand_session, _feeds(cand_model, sample, emulated=emulate_fp16), "candidate"))
    return compare_outputs(ref_outputs, cand_outputs, tolerance)


# --------------------------------------------------------------------------------------------
# Pipeline


@dataclass(frozen=True)
class Fp16Result:
    """What :func:`fp16_pipeline` decided. ``model`` is the FP16 model if accepted, else None."""

    accepted: bool
    reason: str
    model: bytes | None = None
    report: AccuracyReport | None = None


def default_samples(model: onnx.ModelProto | bytes) -> list[dict[str, np.ndarray]]:
    """The samples :func:`fp16_pipeline` uses when given none: two random batches of 2."""
    return [sample_inputs(model, batch_size=2, seed=seed) for seed in (0, 1)]


def fp16_pipeline(
    model_bytes: bytes,
    samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    *,
    block_ops: Collection[str] = DEFAULT_BLOCK_OPS,
) -> Fp16Result:
    """Convert an FP32 model to FP16, check it against FP32 on ``samples``, and accept or refuse it.

    Never raises for a model it cannot handle: a refusal's ``reason`` says why (conversion failed,
    a model did not run, or which output was out of tolerance and by how much), for the caller to
    log before it keeps FP32. ``samples`` default to :func:`default_samples`.
    """
    try:
        model = _as_model(model_bytes)
        fp16_model = convert_to_fp16(model, block_ops)
        if not any(t.data_type == FLOAT16 for t in fp16_model.graph.initializer) and not any(
            _cast_to(n) == FLOAT16 for n in fp16_model.graph.node
        ):
            return Fp16Result(False, "FP16 refused: the model has no FP32 computation to convert")
        chosen = default_samples(model) if samples is None else samples
        report = check_accuracy(model, fp16_model, chosen, tolerance)
    except (Fp16Error, ValueError) as exc:
        return Fp16Result(False, f"FP16 refused: {exc}")
    if not report.passed:
        return Fp16Result(False, f"FP16 refused: {report.reason}", report=report)
    return Fp16Result(True, f"FP16 accepted: {report.reason}", model=fp16_model.SerializeToString(), report=report)
