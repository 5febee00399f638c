"""Random sample inputs for a model, for the accuracy gate when the caller has none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from tensorgate.backends.fp16.graph import FLOAT, FLOAT16, as_model, real_inputs

FLOAT_TYPES: dict[int, type[np.floating[Any]]] = {
    FLOAT: np.float32,
    FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
}
"""The numpy type of each ONNX float tensor type."""

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
    graph_model = as_model(model)
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = dict(dims or {})
    inputs = real_inputs(graph_model)
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
        if elem_type in FLOAT_TYPES:
            samples[vi.name] = rng.standard_normal(shape).astype(FLOAT_TYPES[elem_type])
        elif elem_type == onnx.TensorProto.BOOL:
            samples[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif elem_type in _INT_TYPES:
            samples[vi.name] = rng.integers(0, 4, size=shape).astype(_INT_TYPES[elem_type])
        else:
            type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
            raise ValueError(f"input {vi.name!r} has type {type_name}; pass samples for this model")
    return samples


def default_samples(model: onnx.ModelProto | bytes) -> list[dict[str, np.ndarray]]:
    """The samples :func:`~tensorgate.backends.fp16.fp16_pipeline` uses when given none: two random batches of 2."""
    return [sample_inputs(model, batch_size=2, seed=seed) for seed in (0, 1)]
