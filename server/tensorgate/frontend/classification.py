"""Triton's classification extension: an output asked for with ``classification: k`` comes back as
the k largest values of each batch row, a BYTES tensor of ``"value:index"`` strings (``":label"``
added where the output's ``label_filename`` names one), largest first.

As Triton's ``TopkClassifications``: values are written as C++ ``std::to_string`` writes them (6
decimals for floats), k is capped at a row's element count, the result's shape is ``[batch, k]`` for
a model that batches and ``[k]`` otherwise, and only integer and FP32/FP64 outputs can be classified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tensorgate.datatypes import DataType
from tensorgate.errors import InvalidArgument, clip
from tensorgate.proto import inference_pb2 as pb

_KINDS = frozenset("iuf")  # numpy kinds Triton classifies: signed, unsigned, float (FP16 and BF16 excepted)
_UNSUPPORTED = frozenset({"BOOL", "BYTES", "FP16", "BF16"})


def class_count(requested: pb.ModelInferRequest.InferRequestedOutputTensor, datatype: DataType) -> int:
    """The k of a requested output's ``classification`` parameter (0: none asked), checked as Triton
    checks it; INVALID_ARGUMENT naming the output otherwise."""
    if "classification" not in requested.parameters:
        return 0
    param = requested.parameters["classification"]
    name = clip(requested.name)
    if param.WhichOneof("parameter_choice") != "int64_param":
        raise InvalidArgument(
            f"output '{name}': invalid value type for 'classification' parameter, expected an integer (int64_param)"
        )
    count = param.int64_param
    if count < 0:
        raise InvalidArgument(f"output '{name}': 'classification' is the number of classes to return, not {count}")
    if count and datatype.v2 in _UNSUPPORTED:
        raise InvalidArgument(
            f"output '{name}': class result not available for output due to unsupported type '{datatype.v2}'"
        )
    return int(count)


def top_k(array: np.ndarray, count: int, batched: bool, labels: Sequence[str]) -> np.ndarray:
    """The classification of ``array`` (an output as the model made it): an object array of bytes,
    ``[rows, k]`` if ``batched`` else ``[k]``."""
    assert array.dtype.kind in _KINDS, array.dtype
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim else array.reshape(1, -1)
    k = min(count, rows.shape[1])
    out = np.empty((rows.shape[0], k), dtype=np.object_)
    as_text = _float_text if rows.dtype.kind == "f" else str
    for r, row in enumerate(rows):
        # Largest first; equal values in index order. (Stable ascending sort of the reversed row, read
        # backwards: no negation, which unsigned values would wrap.)
        order = row.size - 1 - np.argsort(row[::-1], kind="stable")[::-1][:k]
        for j, index in enumerate(order.tolist()):
            text = f"{as_text(row[index].item())}:{index}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            out[r, j] = text.encode()
    return out if batched and array.ndim else out.reshape(k)


def _float_text(value: float) -> str:
    """As C++'s std::to_string of a float or double (printf's %f)."""
    return f"{value:f}"
