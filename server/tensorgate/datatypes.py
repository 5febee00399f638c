"""The tensor datatypes: V2 protocol names, model-config enums, ONNX element types and numpy.

One table, so every boundary (wire, config.pbtxt, ONNX file, numpy) converts through the same facts.
BYTES travels as numpy object arrays of ``bytes``; BF16 has no numpy dtype and travels as the raw
16-bit patterns in ``uint16`` arrays (the tensor's datatype name says how to read them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class DataType:
    """One tensor element type as every layer names it."""

    v2: str  # KServe V2 / Triton wire name, e.g. "FP32"
    config: str  # model_config.proto DataType enum name, e.g. "TYPE_FP32"
    onnx: int  # onnx.TensorProto.DataType value
    numpy: np.dtype  # storage dtype (object for BYTES, uint16 for BF16)

    # Read for every tensor of every request: computed once (cached_property writes the instance's
    # __dict__ directly, which a frozen dataclass allows).
    @cached_property
    def is_bytes(self) -> bool:
        return self.v2 == "BYTES"

    @cached_property
    def itemsize(self) -> int:
        """Bytes per element in raw contents (0 for BYTES, which is length-prefixed)."""
        return 0 if self.is_bytes else self.numpy.itemsize


_ALL = (
    DataType("BOOL", "TYPE_BOOL", 9, np.dtype(np.bool_)),
    DataType("UINT8", "TYPE_UINT8", 2, np.dtype(np.uint8)),
    DataType("UINT16", "TYPE_UINT16", 4, np.dtype(np.uint16)),
    DataType("UINT32", "TYPE_UINT32", 12, np.dtype(np.uint32)),
    DataType("UINT64", "TYPE_UINT64", 13, np.dtype(np.uint64)),
    DataType("INT8", "TYPE_INT8", 3, np.dtype(np.int8)),
    DataType("INT16", "TYPE_INT16", 5, np.dtype(np.int16)),
    DataType("INT32", "TYPE_INT32", 6, np.dtype(np.int32)),
    DataType("INT64", "TYPE_INT64", 7, np.dtype(np.int64)),
    DataType("FP16", "TYPE_FP16", 10, np.dtype(np.float16)),
    DataType("FP32", "TYPE_FP32", 1, np.dtype(np.float32)),
    DataType("FP64", "TYPE_FP64", 11, np.dtype(np.float64)),
    DataType("BYTES", "TYPE_STRING", 8, np.dtype(np.object_)),
    DataType("BF16", "TYPE_BF16", 16, np.dtype(np.uint16)),
)

BY_V2: dict[str, DataType] = {d.v2: d for d in _ALL}
BY_CONFIG: dict[str, DataType] = {d.config: d for d in _ALL}
BY_ONNX: dict[int, DataType] = {d.onnx: d for d in _ALL}


def serialize_bytes(array: np.ndarray) -> bytes:
    """V2 raw encoding of a BYTES tensor: each element as a 4-byte little-endian length + bytes.
    Elements all ``bytes`` of one length (fixed-size tokens, empty strings) are laid out by numpy
    in one pass, with no Python object per element."""
    flat = array.reshape(-1)
    if flat.size and set(map(type, flat)) == {bytes}:
        lengths = np.fromiter(map(len, flat), dtype=np.int64, count=flat.size)
        length = int(lengths[0])
        if (lengths == length).all():
            out = np.empty((flat.size, 4 + length), dtype=np.uint8)
            out[:, :4] = np.frombuffer(length.to_bytes(4, "little"), dtype=np.uint8)
            out[:, 4:] = np.frombuffer(b"".join(flat), dtype=np.uint8).reshape(flat.size, length)
            return out.tobytes()
    parts: list[bytes] = []
    for item in flat:
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, count: int) -> np.ndarray:
    """Inverse of :func:`serialize_bytes`; raises ValueError when ``raw`` does not hold exactly
    ``count`` elements. Elements all of one length are found by numpy (the length prefixes read as
    one strided array) and need no parsing loop; empty ones share one ``b""``."""
    view = memoryview(raw).cast("B")
    if 4 * count > len(view):  # before allocating: a shape can claim far more elements than were sent
        raise ValueError(
            f"are {len(view)} bytes, fewer than the {4 * count} that {count} length-prefixed elements need"
        )
    if count and len(view) % count == 0:
        width = len(view) // count
        lengths = np.ndarray((count,), dtype="<u4", buffer=view, strides=(width,))
        if (lengths == width - 4).all():
            if width == 4:
                return np.full(count, b"", dtype=np.object_)
            items = np.ndarray((count,), dtype=f"V{width - 4}", buffer=view, offset=4, strides=(width,))
            out = np.empty(count, dtype=np.object_)
            out[:] = items.tolist()  # bytes objects, NULs kept (a "S" dtype would strip trailing ones)
            return out
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise ValueError(f"holds fewer than the {count} length-prefixed elements its shape needs")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(view):
            raise ValueError(f"element {i} claims {length} bytes but only {len(view) - offset} remain")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise ValueError(f"has {len(view) - offset} bytes left over after the {count} elements its shape needs")
    return out
