"""FP32 ONNX -> mixed-precision FP16 ONNX, with FP32 inputs and outputs (see DESIGN.md, Conversion
and Block list)."""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import onnx

from tensorgate.backends.fp16.errors import Fp16ConversionError, first_line
from tensorgate.backends.fp16.graph import (
    FLOAT,
    bypass_fp16_round_trips,
    float_constants_as_tensors,
    sort_topologically,
)

# Op types kept in FP32 (inputs cast up, outputs down); why each group, and what is deliberately not
# blocked: DESIGN.md, Block list.
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


def convert_to_fp16(model: onnx.ModelProto, block_ops: Collection[str] = DEFAULT_BLOCK_OPS) -> onnx.ModelProto:
    """A mixed-precision copy of ``model``: FP16 inside, FP32 inputs and outputs, ``block_ops`` in FP32.

    The input model is not modified. Raises :class:`Fp16ConversionError` if the converter fails or
    its result is not a valid model.
    """
    from onnxruntime.transformers import float16 as ort_float16  # adds its folder to sys.path

    source = onnx.ModelProto()
    source.CopyFrom(model)
    float_constants_as_tensors(source.graph)
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
    sort_topologically(converted.graph)
    bypass_fp16_round_trips(converted)
    _check_io_types(model, converted)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        if _passes_full_check(model):  # else strict inference fails on the original too: judge structure only
            raise Fp16ConversionError(f"the FP16 model is not valid ONNX: {first_line(exc)}") from exc
        try:
            onnx.checker.check_model(converted)
        except Exception as exc2:
            raise Fp16ConversionError(f"the FP16 model is not valid ONNX: {first_line(exc2)}") from exc2
    return converted


def _passes_full_check(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:
        return False
    return True


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
