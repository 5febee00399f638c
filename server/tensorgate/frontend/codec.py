"""ModelInferRequest to numpy and numpy to ModelInferResponse, checking every tensor on the way in.

Nothing below the frontend sees protobuf. Every error names the tensor and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from tensorgate import datatypes
from tensorgate.datatypes import DataType
from tensorgate.errors import Code, InvalidArgument, ServerError, clip
from tensorgate.frontend import classification, shared_memory
from tensorgate.frontend.shared_memory import NO_REGIONS, Location, SystemSharedMemory
from tensorgate.model_config import ModelSpec, TensorSpec
from tensorgate.proto import inference_pb2 as pb
from tensorgate.request import InferRequest, OutputBuffer

# Which InferTensorContents field holds each datatype (FP16 and BF16 have none: raw only).
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = sorted(set(_CONTENTS_FIELD.values()))
MAX_ELEMENTS = 2**59  # elements of one tensor: x 8 bytes (FP64, object) stays below numpy's 2**63 limit


def _shape_text(shape: Sequence[int]) -> str:
    """A shape for a message: a client's shape may have thousands of dimensions, so only the first
    few are written out."""
    if len(shape) <= 8:
        return "[" + ",".join(str(d) for d in shape) + "]"
    return "[" + ",".join(str(d) for d in shape[:8]) + f",...] ({len(shape)} dimensions)"


def _expected_shape(spec: TensorSpec, model: ModelSpec) -> str:
    dims = ["-1" if d == -1 else str(d) for d in spec.dims]
    return "[" + ",".join(([f"batch<={model.max_batch_size}"] if model.batched else []) + dims) + "]"


def _check_shape(name: str, shape: tuple[int, ...], spec: TensorSpec, model: ModelSpec) -> int:
    """Validate one input's shape; returns its batch size (1 for models without batching)."""
    fixed = spec.fixed_dims
    if fixed is not None:  # the common case, checked without building lists
        if not model.batched:
            if shape == fixed:
                return 1
        elif shape and 1 <= shape[0] <= model.max_batch_size and shape[1:] == fixed:
            return shape[0]
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}' has shape {_shape_text(shape)}: dimensions cannot be negative")
    elements = math.prod(d for d in shape if d)  # zeros aside: numpy refuses such a shape even when empty
    if elements > MAX_ELEMENTS:
        raise InvalidArgument(
            f"input '{name}' has shape {_shape_text(shape)}: {elements} elements, more than a tensor can hold "
            f"({MAX_ELEMENTS})"
        )
    dims = list(shape)
    batch = 1
    if model.batched:
        if not dims:
            raise InvalidArgument(
                f"input '{name}' has shape []: model '{model.name}' batches, so the first dimension is the "
                f"batch size; expected {_expected_shape(spec, model)}"
            )
        batch = dims.pop(0)
        if batch < 1 or batch > model.max_batch_size:
            raise InvalidArgument(
                f"input '{name}' has batch size {batch} but model '{model.name}' takes 1 to "
                f"{model.max_batch_size} (max_batch_size); split the request"
            )
    if not spec.accepts(dims):
        raise InvalidArgument(
            f"input '{name}' has shape {_shape_text(shape)} but model '{model.name}' expects "
            f"{_expected_shape(spec, model)}"
        )
    return batch


def _from_contents(name: str, tensor: pb.ModelInferRequest.InferInputTensor, dtype: DataType, count: int) -> np.ndarray:
    used = [f for f in _ALL_CONTENTS_FIELDS if len(getattr(tensor.contents, f))]
    if count == 0 and not used:  # a tensor with no elements has nothing to put in any field
        return np.empty(0, dtype=dtype.numpy)
    field = _CONTENTS_FIELD.get(dtype.v2)
    if field is None:
        raise InvalidArgument(
            f"input '{name}' is {dtype.v2}, which has no typed contents field; send it in raw_input_contents"
        )
    if used != [field]:
        raise InvalidArgument(
            f"input '{name}' is {dtype.v2}, so its data goes in contents.{field}"
            + (f", not {', '.join(used)}" if used else "; it has no data")
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"input '{name}' has {len(values)} elements in contents.{field} but its shape "
            f"{_shape_text(tensor.shape)} needs {count}"
        )
    if dtype.is_bytes:
        return np.array(list(values), dtype=np.object_)
    try:
        return np.array(values, dtype=dtype.numpy)
    except OverflowError:
        raise InvalidArgument(f"input '{name}': a value in contents.{field} does not fit {dtype.v2}") from None


def _check_raw_count(tensors: Sequence[pb.ModelInferRequest.InferInputTensor], raw: int) -> None:
    """As Triton: an input in shared memory has no entry in raw_input_contents, every other input one."""
    shared = sum(1 for t in tensors if shared_memory.REGION in t.parameters)
    if raw != len(tensors) - shared:
        raise InvalidArgument(
            f"request has {len(tensors)} inputs"
            + (f" ({shared} in shared memory)" if shared else "")
            + f" but {raw} raw_input_contents; send one raw_input_contents entry per input not in shared memory, "
            "in the order of inputs"
        )


def _from_shared(
    name: str,
    model: ModelSpec,
    memory: SystemSharedMemory,
    where: Location,
    shape: tuple[int, ...],
    dtype: DataType,
    count: int,
) -> np.ndarray:
    """The tensor of ``shape`` in the client's shared memory, copied out of it (BYTES: objects)."""
    span = memory.span(where)
    if not dtype.is_bytes and where.byte_size != count * dtype.itemsize:
        raise InvalidArgument(
            f"input byte size mismatch for input '{name}' for model '{model.name}'. Expected "
            f"{count * dtype.itemsize}, got {where.byte_size}"
        )
    data = memoryview(span.read()).toreadonly()  # read-only, as a view of a message's bytes is
    if dtype.is_bytes:
        try:
            return datatypes.deserialize_bytes(data, count).reshape(shape)
        except ValueError as exc:
            raise InvalidArgument(
                f"input '{name}' (BYTES, shape {_shape_text(shape)}): the bytes in shared memory region "
                f"'{clip(where.region)}' {exc}"
            ) from None
    return np.ndarray(shape, dtype.numpy, data)


def _from_raw(name: str, raw: bytes, shape: tuple[int, ...], dtype: DataType, count: int) -> np.ndarray:
    """The tensor of ``shape`` that ``raw`` holds: a read-only view of the message's bytes (BYTES: objects)."""
    if dtype.is_bytes:
        try:
            return datatypes.deserialize_bytes(raw, count).reshape(shape)
        except ValueError as exc:
            raise InvalidArgument(f"input '{name}' (BYTES, shape {_shape_text(shape)}): raw contents {exc}") from None
    needed = count * dtype.itemsize
    if len(raw) != needed:
        raise InvalidArgument(
            f"input '{name}' has {len(raw)} bytes of raw contents but shape {_shape_text(shape)} of "
            f"{dtype.v2} needs {needed} bytes"
        )
    return np.ndarray(shape, dtype.numpy, raw)  # one call, half the cost of frombuffer and then reshape


def _to_model(name: str, array: np.ndarray, spec: TensorSpec, dims: tuple[int, ...], batched: bool) -> np.ndarray:
    """An input in the model's shape (config.pbtxt's reshape); sizes the model file fixes are checked."""
    target = spec.to_model(dims)
    assert spec.model_dims is not None
    if any(want != -1 and want != got for want, got in zip(spec.model_dims, target, strict=True)):
        raise InvalidArgument(
            f"input '{name}' has shape {_shape_text(array.shape)}: reshaped as config.pbtxt says, it would be "
            f"{_shape_text(target)}, but the model takes {_shape_text(spec.model_dims)} (-1: any size)"
        )
    return array.reshape(((array.shape[0],) if batched else ()) + target)


def _check_utf8(name: str, flat: np.ndarray) -> None:
    """BYTES inputs of an ONNX model are string tensors, which hold UTF-8 text. Checked here, per
    request: found by the engine, one bad request would fail every request batched with it. ASCII
    text (the usual case) is valid as a whole, in one pass; otherwise element by element."""
    if b"".join(flat).isascii():
        return
    for i, item in enumerate(flat):
        try:
            item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"input '{name}': element {i} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "the model's BYTES inputs are ONNX string tensors, which hold UTF-8 text"
            ) from None


# BYTES tensors cost Python work per element (a UTF-8 check, an object each when their lengths
# differ): a request or response with more than this many of them is decoded or encoded on a thread,
# so the event loop keeps serving other calls meanwhile.
BYTES_ELEMENTS_ON_LOOP = 4096
# Inputs in shared memory are copied out of it (pread): more bytes than this in one request (~1 ms of
# copying) are read on a thread.
SHARED_BYTES_ON_LOOP = 4 * 2**20
# A response's fields besides its tensors' bytes (names, shapes, ids) stay well under this; past it the
# message is measured exactly. A ModelStreamInferResponse wraps it in at most this many bytes more: its
# infer_response field's tag and length, and the triton_final_response parameter every stream answer has.
RESPONSE_FIELDS_BYTES = 64 * 1024
_FINAL = pb.ModelStreamInferResponse()
_FINAL.infer_response.parameters["triton_final_response"].bool_param = True
STREAM_WRAPPER_BYTES = _FINAL.ByteSize() + 8  # + a 64-bit length's varint


def heavy_request(request: pb.ModelInferRequest, model: ModelSpec) -> bool:
    """Whether decoding ``request`` may take long enough to stall the event loop: BYTES inputs of more
    than BYTES_ELEMENTS_ON_LOOP elements (judged from their sizes before any parsing), or inputs in
    shared memory of more than SHARED_BYTES_ON_LOOP bytes in all (each is copied out)."""
    bytes_inputs = model.bytes_inputs
    shared = 0
    for tensor in request.inputs:
        in_memory = tensor.parameters.get(shared_memory.BYTE_SIZE) if tensor.parameters else None
        if in_memory is not None:
            shared += max(0, in_memory.int64_param)
        if bytes_inputs:
            spec = model.inputs.get(tensor.name)
            if spec is not None and spec.datatype.is_bytes:
                if len(tensor.contents.bytes_contents) > BYTES_ELEMENTS_ON_LOOP:
                    return True
                if in_memory is not None and in_memory.int64_param > 4 * BYTES_ELEMENTS_ON_LOOP:
                    return True
    if shared > SHARED_BYTES_ON_LOOP:
        return True
    # Raw BYTES contents hold at least 4 bytes an element.
    return bytes_inputs and sum(len(raw) for raw in request.raw_input_contents) > 4 * BYTES_ELEMENTS_ON_LOOP


def heavy_response(
    model: ModelSpec,
    outputs: dict[str, np.ndarray],
    classes: Mapping[str, int] | None = None,
    output_memory: Mapping[str, OutputBuffer] | None = None,
) -> bool:
    """Whether encoding ``outputs`` may stall the event loop (many BYTES elements, many class strings
    to write, or many bytes to write in shared memory)."""
    if output_memory and sum(a.nbytes for n, a in outputs.items() if n in output_memory) > SHARED_BYTES_ON_LOOP:
        return True
    elements = 0
    if model.bytes_outputs:
        elements = sum(a.size for n, a in outputs.items() if model.outputs[n].datatype.is_bytes)
    if classes:
        elements += sum(
            min(a.size, (a.shape[0] if model.batched and a.ndim else 1) * classes[n])
            for n, a in outputs.items()
            if n in classes
        )
    return elements > BYTES_ELEMENTS_ON_LOOP


def decode_request(
    request: pb.ModelInferRequest, model: ModelSpec, memory: SystemSharedMemory = NO_REGIONS
) -> InferRequest:
    """Check a request against the model and turn its tensors into numpy arrays (views where raw; copies of
    what the client's shared memory holds, ``memory`` being the regions registered)."""
    # Each read of a repeated protobuf field builds a wrapper (~0.3 µs with upb): each is read once.
    tensors = request.inputs
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(tensors):
        _check_raw_count(tensors, len(raw_contents))
    raw_index = 0
    arrays: dict[str, np.ndarray] = {}
    nbytes = 0
    batch: int | None = None
    batch_from = ""
    specs = model.inputs
    for tensor in tensors:
        name = tensor.name
        where = shared_memory.location(name, tensor.parameters) if tensor.parameters else None
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected input '{clip(name)}' for model '{model.name}'; its inputs are {sorted(specs)}"
            )
        if name in arrays:
            raise InvalidArgument(f"input '{name}' appears more than once in the request")
        dtype = spec.datatype
        if tensor.datatype != dtype.v2:
            raise InvalidArgument(
                f"input '{name}' has datatype {clip(tensor.datatype) or '(empty)'} but model '{model.name}' "
                f"expects {dtype.v2}"
            )
        shape = tuple(tensor.shape[:])  # a slice first: half the cost of iterating upb's container
        rows = _check_shape(name, shape, spec, model)
        if batch is None:
            batch, batch_from = rows, name
        elif rows != batch:
            raise InvalidArgument(
                f"input '{name}' has batch size {rows} but input '{batch_from}' has {batch}; "
                "all inputs of a request share the batch size"
            )
        count = math.prod(shape)
        if where is not None:
            if raw_contents:  # the others' entries: counted before this input's memory is looked up
                _check_raw_count(tensors, len(raw_contents))
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"unexpected 'content' provided when using shared memory for input tensor '{name}' for model "
                    f"'{model.name}'"
                )
            array = _from_shared(name, model, memory, where, shape, dtype, count)
        elif raw_contents:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"input '{name}' has both contents and raw_input_contents; send one")
            array = _from_raw(name, raw_contents[raw_index], shape, dtype, count)
            raw_index += 1
        else:
            array = _from_contents(name, tensor, dtype, count).reshape(shape)
        if dtype.is_bytes:
            _check_utf8(name, array.reshape(-1))
        if spec.reshape is not None:  # config.pbtxt's reshape: the model's own shape
            array = _to_model(name, array, spec, shape[1:] if model.batched else shape, model.batched)
        arrays[name] = array
        nbytes += array.nbytes
    if raw_index != len(raw_contents):  # more entries than inputs outside shared memory
        _check_raw_count(tensors, len(raw_contents))
    if len(arrays) != len(specs):  # every input given (names are checked above): nothing is missing
        missing = [n for n, s in specs.items() if n not in arrays and not s.optional]
        if missing:
            raise InvalidArgument(
                f"model '{model.name}' needs input{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)}, which the request does not have"
            )
    outputs: tuple[str, ...] = model.output_names
    classes: dict[str, int] | None = None
    output_memory: dict[str, OutputBuffer] | None = None
    requested_outputs = request.outputs
    if requested_outputs:
        wanted: list[str] = []
        for requested in requested_outputs:
            if requested.name not in model.outputs:
                raise InvalidArgument(
                    f"unexpected output '{clip(requested.name)}' requested from model '{model.name}'; "
                    f"its outputs are {sorted(model.outputs)}"
                )
            if requested.parameters:
                count = classification.class_count(requested, model.outputs[requested.name].datatype)
                where = shared_memory.location(requested.name, requested.parameters)
                if where is not None and count:
                    raise InvalidArgument(
                        f"output '{requested.name}' can't set both 'shared_memory_region' and 'classification'"
                    )
                if requested.name not in wanted:  # an output asked twice: the first asking wins
                    if count:
                        classes = {**(classes or {}), requested.name: count}
                    if where is not None:
                        # Looked up now: a region that is not there, or too small for an output whose size
                        # the config fixes, fails the request before it runs.
                        target = memory.span(where)
                        _check_room(requested.name, model, batch if batch is not None else 1, target)
                        output_memory = {**(output_memory or {}), requested.name: target}
            if requested.name not in wanted:
                wanted.append(requested.name)
        outputs = tuple(wanted)
    parameters = request.parameters
    return InferRequest(
        id=request.id,
        inputs=arrays,
        outputs=outputs,
        batch_size=batch if batch is not None else 1,
        priority=_int_parameter(request, "priority") if parameters else 0,
        timeout_us=_int_parameter(request, "timeout") if parameters else 0,
        nbytes=nbytes,
        classes=classes,
        output_memory=output_memory,
    )


# Triton's gRPC frontend (SetInferenceRequestMetadata): the value types each request parameter may have; a
# key starting with "triton_" only if it is one of Triton's; any other key an int64, a bool or a string.
_PARAMETER_TYPES = {
    "sequence_id": ("int64_param", "string_param"),
    "sequence_start": ("bool_param",),
    "sequence_end": ("bool_param",),
    "priority": ("int64_param", "uint64_param"),
    "timeout": ("int64_param",),
    "triton_enable_empty_final_response": ("bool_param",),
}
_CUSTOM_PARAMETER_TYPES = ("int64_param", "bool_param", "string_param")


def check_request_parameters(request: pb.ModelInferRequest) -> None:
    """A gRPC request's parameters have the value types Triton's gRPC frontend takes (INVALID_ARGUMENT in
    its words otherwise); HTTP/REST checks its JSON parameters itself."""
    for key, param in request.parameters.items():
        allowed = _PARAMETER_TYPES.get(key)
        if allowed is None:
            if key.startswith("triton_"):
                raise InvalidArgument(
                    f"parameter '{clip(key)}': parameter keys starting with 'triton_' are reserved for Triton usage. "
                    "Only the following keys starting with 'triton_' are allowed: triton_enable_empty_final_response"
                )
            allowed = _CUSTOM_PARAMETER_TYPES
        if param.WhichOneof("parameter_choice") not in allowed:
            *first, last = allowed
            expected = f"{', '.join(first)}{',' if len(first) > 1 else ''} or {last}" if first else last
            raise InvalidArgument(f"invalid value type for '{clip(key)}' parameter, expected {expected}.")


def _int_parameter(request: pb.ModelInferRequest, key: str) -> int:
    """A non-negative integer request parameter (Triton's ``priority`` and ``timeout`` in µs); 0 if absent."""
    if key not in request.parameters:
        return 0
    param = request.parameters[key]
    which = param.WhichOneof("parameter_choice")
    if which not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"request parameter '{key}' must be an integer, not {which or 'empty'}")
    value = int(getattr(param, which))
    if value < 0:
        raise InvalidArgument(f"request parameter '{key}' must be >= 0, not {value}")
    return value


def encode_response(
    model: ModelSpec,
    version: int,
    request_id: str,
    outputs: dict[str, np.ndarray],
    max_bytes: int = 0,
    classes: Mapping[str, int] | None = None,
    output_memory: Mapping[str, OutputBuffer] | None = None,
) -> pb.ModelInferResponse:
    """The response message; RESOURCE_EXHAUSTED naming the limit if it would be larger than
    ``max_bytes`` (0: no limit), which gRPC would refuse to send with a traceback in the log.
    ``classes``: the outputs asked for as classifications (Triton's extension), with their k.
    ``output_memory``: the outputs to write in the client's shared memory (Triton's extension): the
    response names them, with their datatype and shape, and has an empty raw_output_contents entry for
    each, as Triton's."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(version), id=request_id)
    raw = response.raw_output_contents
    size = 0
    for name, array in outputs.items():
        spec = model.outputs[name]
        if spec.reshape is not None:  # config.pbtxt's reshape: back to the dims clients see
            array = _to_client(model, name, array, spec)
        tensor = response.outputs.add()
        tensor.name = name
        if classes and name in classes:
            array = classification.top_k(array, classes[name], model.batched, model.labels.get(name, ()))
            tensor.datatype = "BYTES"
            tensor.shape.extend(array.shape)
            data = datatypes.serialize_bytes(array)
            raw.append(data)
            size += len(data)
            continue
        tensor.datatype = spec.datatype.v2
        tensor.shape.extend(array.shape)
        if output_memory and name in output_memory:
            _write_shared(name, array, spec.datatype, output_memory[name])
            raw.append(b"")
            continue
        if spec.datatype.is_bytes:
            data = datatypes.serialize_bytes(array)
        else:
            data = np.ascontiguousarray(array, dtype=spec.datatype.numpy).tobytes()
        raw.append(data)
        size += len(data)  # (not len(raw[-1]): reading a repeated bytes field back copies it)
    if max_bytes and size + RESPONSE_FIELDS_BYTES > max_bytes:
        total = response.ByteSize()  # measured only once the tensors come near the limit
        if total > max_bytes:
            raise ServerError(
                f"the response of model '{model.name}' would be a {total}-byte message, above the largest gRPC "
                f"message of {max_bytes} bytes (--grpc-max-message-bytes): raise it, or ask for fewer rows or "
                "outputs",
                Code.RESOURCE_EXHAUSTED,
            )
    return response


def _check_room(name: str, model: ModelSpec, rows: int, target: OutputBuffer) -> None:
    """Refuse before the run a shared-memory span too small for an output whose size the config fixes."""
    spec = model.outputs[name]
    dims = spec.fixed_dims
    if dims is None or spec.datatype.is_bytes:
        return  # known only once the output is there (_write_shared)
    needed = (rows if model.batched else 1) * math.prod(dims) * spec.datatype.itemsize
    if needed > target.size:
        raise _too_small(name, target.size, needed)


def _too_small(name: str, size: int, needed: int) -> InvalidArgument:
    return InvalidArgument(
        f"shared memory size specified with the request for output '{name}' ({size} bytes) should be at least "
        f"{needed} bytes to hold the results"
    )


def _write_shared(name: str, array: np.ndarray, datatype: DataType, target: OutputBuffer) -> None:
    """Write an output where the client's shared memory holds it; INVALID_ARGUMENT if it does not fit
    (Triton's words; Triton says INTERNAL, but the client chose the size)."""
    if datatype.is_bytes:
        data = np.frombuffer(datatypes.serialize_bytes(array), dtype=np.uint8)
    else:
        data = np.ascontiguousarray(array, dtype=datatype.numpy).reshape(-1).view(np.uint8)
    if data.size > target.size:
        raise _too_small(name, target.size, data.size)
    target.write(data)


def _to_client(model: ModelSpec, name: str, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An output in the shape clients see (config.pbtxt's dims, from its reshape)."""
    if not model.batched and spec.dims == (1,) and not spec.reshape:
        # Triton's scalar form (dims [1]). ONNX Runtime reports an output whose rank it cannot infer as it
        # reports a scalar: one element goes as [1], any other output as the model made it.
        return array.reshape(1) if array.size == 1 else array
    prefix = (array.shape[0],) if model.batched and array.ndim else ()
    try:
        return array.reshape(prefix + spec.to_client(array.shape[len(prefix) :]))
    except ValueError:
        raise ServerError(
            f"output '{name}' of model '{model.name}' has shape {_shape_text(array.shape)}, which does not fit its "
            f"reshape {list(spec.reshape or ())} and dims {list(spec.dims)} in config.pbtxt",
            Code.INTERNAL,
        ) from None
