"""The KServe V2 REST bodies (JSON, and Triton's binary tensor data extension) to and from the
protobuf messages of the gRPC service.

An HTTP inference request becomes a ``ModelInferRequest`` whose tensors are all in
``raw_input_contents`` (binary data as sent; JSON ``data`` laid out by numpy), so it goes through
the same checks, messages and scheduler as a gRPC one. Only what is particular to JSON is checked
here: that the body is JSON of the right shape, that ``data`` holds as many values of the declared
datatype as the declared shape needs, and (as Triton) that FP16 and BF16 travel as binary data only.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tensorgate import datatypes
from tensorgate.errors import InvalidArgument, clip
from tensorgate.frontend import shared_memory
from tensorgate.model_config.spec import ModelSpec
from tensorgate.proto import inference_pb2 as pb

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_ONLY = frozenset({"FP16", "BF16"})  # JSON has no 16-bit floats: binary data only, as Triton
_INT64 = (-(2**63), 2**63 - 1)
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit takes "²"), few enough for any body

# Parsing JSON (json.loads, flattening and checking ``data``, numpy) costs ~0.35 µs a value: 64 KiB of
# it hold the event loop, and every gRPC and HTTP call with it, 2.5 ms (floats) to 11 ms (one-digit
# values; measured 2026-12-07). A larger JSON part is parsed on a thread (and a response with this much
# JSON written on one): its hand-off (~0.1 ms) is then small beside the stall it spares the others.
JSON_ON_LOOP = 64 * 1024
_SLICE = 65536  # values converted at once (json.dumps, numpy): each call holds the GIL, a thread's too


def parse_json(body: bytes) -> Any:
    """``body`` as JSON, or InvalidArgument naming what is wrong with it."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise InvalidArgument("the request body is JSON nested too deeply (arrays and objects in each other)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    except ValueError:  # the only other: an integer past Python's int-digits limit
        limit = sys.get_int_max_str_digits()
        raise InvalidArgument(f"the request body holds an integer of more than {limit} digits") from None
    # JSON may escape a lone surrogate (\ud800), which no UTF-8 (protobuf strings, BYTES) can hold;
    # only a body with such an escape is searched for one.
    if b"\\ud" in body or b"\\uD" in body:
        _check_unicode(doc)
    return doc


_NOT_UNICODE = "is not valid Unicode (a lone surrogate escape such as \\ud800)"


def _check_unicode(doc: object) -> None:
    """InvalidArgument naming, by its path, a string of ``doc`` (a key or a value) that is not valid Unicode."""
    todo: list[tuple[str, object]] = [("", doc)]  # (path, container): a stack, as the client picks the nesting
    while todo:
        path, value = todo.pop()
        items: Iterable[tuple[str | int, object]] = ()
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        for key, item in items:
            if isinstance(key, str) and not _encodable(key):
                raise InvalidArgument(f"{path or 'the request body'} has a key that {_NOT_UNICODE}")
            if isinstance(item, str) and not _encodable(item):
                raise InvalidArgument(f"{_path(path, key)} holds a string that {_NOT_UNICODE}")
            if isinstance(item, (dict, list)):
                todo.append((_path(path, key), item))


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{clip(key)}" if parent else clip(key)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class OutputChoice:
    """Which outputs go back as binary data (Triton's ``binary_data`` / ``binary_data_output``)."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)  # written in the client's shared memory: named, no data

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _parameters(target: Any, given: object, what: str, skip: tuple[str, ...] = ()) -> None:
    """JSON parameters into a protobuf map of InferParameter."""
    for key, value in _object(given, f"{what} 'parameters'").items():
        if key in skip:
            continue
        if key.startswith("triton_"):
            raise InvalidArgument(
                f"{what} parameter '{clip(key)}': parameter keys starting with 'triton_' are reserved for Triton "
                "usage and should not be specified"
            )
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, int):
            raise InvalidArgument(f"{what} parameter '{clip(key)}': the integer is out of the int64 range")
        else:
            raise InvalidArgument(f"{what} parameter '{clip(key)}' must be a boolean, an integer, a number or a string")


def _flag(params: dict[str, Any], key: str, what: str) -> bool:
    """A boolean parameter of the binary data extension (false if absent); anything else is refused, as Triton."""
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"Unable to parse '{key}' of the {what}: it must be true or false")
    return value


def _shape(name: str, given: object) -> list[int]:
    if not isinstance(given, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and _INT64[0] <= d <= _INT64[1] for d in given
    ):
        raise InvalidArgument(f"input '{clip(name)}': 'shape' must be a list of integers")
    return given


def _flatten(data: object) -> list[object]:
    """The values of ``data``, nested or flat, in row-major order (a loop: the client picks the depth)."""
    if not isinstance(data, list):
        return [data]
    out: list[object] = []
    todo: list[Iterator[object]] = [iter(data)]
    while todo:
        for item in todo[-1]:
            if isinstance(item, list):
                todo.append(iter(item))
                break
            out.append(item)
        else:
            todo.pop()
    return out


def _json_data(name: str, datatype: str, shape: list[int], data: object) -> bytes:
    """The raw V2 encoding of an input's JSON ``data`` (flat or nested, row-major)."""
    dtype = datatypes.BY_V2.get(datatype)
    if dtype is None:
        return b""  # the datatype is refused, by name, where every request's are checked
    if dtype.v2 in BINARY_ONLY:
        raise InvalidArgument(
            f"receiving {dtype.v2} data via JSON is not supported; use the binary data format for input "
            f"'{clip(name)}' (Triton's binary tensor data extension)"
        )
    values = _flatten(data)
    needed = math.prod(shape) if all(d >= 0 for d in shape) else -1
    if len(values) != needed:
        raise InvalidArgument(
            f"input '{clip(name)}' has {len(values)} values in 'data' but its shape {shape} needs "
            f"{needed if needed >= 0 else 'a non-negative number of'}"
        )
    if dtype.is_bytes:
        texts = [v for v in values if isinstance(v, str)]
        if len(texts) != len(values):
            raise InvalidArgument(f"input '{clip(name)}' is BYTES: its 'data' must hold strings")
        return datatypes.serialize_bytes(np.array([v.encode("utf-8") for v in texts], dtype=np.object_))
    if dtype.v2 == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise InvalidArgument(f"input '{clip(name)}' is BOOL: its 'data' must hold true or false")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InvalidArgument(f"input '{clip(name)}' is {dtype.v2}: its 'data' must hold numbers")
    elif dtype.numpy.kind in "iu" and not all(isinstance(v, int) for v in values):
        raise InvalidArgument(f"input '{clip(name)}' is {dtype.v2}: its 'data' must hold integers")
    array = np.empty(len(values), dtype=dtype.numpy)
    try:
        for i in range(0, len(values), _SLICE):  # a slice at a time (see _SLICE)
            array[i : i + _SLICE] = np.asarray(values[i : i + _SLICE], dtype=dtype.numpy)
    except OverflowError:
        raise InvalidArgument(f"input '{clip(name)}': a value in 'data' does not fit {dtype.v2}") from None
    return array.tobytes()


def heavy_request(body: bytes, header_length: str | None) -> bool:
    """Whether parsing ``body`` may stall the event loop: its JSON part is over JSON_ON_LOOP bytes
    (binary tensor data after it costs only a copy)."""
    size = len(body)
    if header_length is not None and _DIGITS.fullmatch(header_length):
        size = min(size, int(header_length))
    return size > JSON_ON_LOOP


def infer_request(
    model_name: str, version: str, body: bytes, header_length: str | None
) -> tuple[pb.ModelInferRequest, OutputChoice]:
    """A V2 REST inference request (with binary tensors after the JSON header when
    ``Inference-Header-Content-Length`` says where it ends) as a ModelInferRequest."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not _DIGITS.fullmatch(header_length) or int(header_length) > len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH} is {clip(header_length)} but the body has {len(body)} bytes; it must be the "
                "length of the JSON part, which the binary tensor data follows"
            )
        header, binary = body[: int(header_length)], body[int(header_length) :]
    j = _object(parse_json(header), "the request body")
    request = pb.ModelInferRequest(model_name=model_name, model_version=version)
    request_id = j.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    request.id = request_id
    choice = OutputChoice()
    if "parameters" in j:
        params = _object(j["parameters"], "'parameters'")
        choice.default_binary = _flag(params, "binary_data_output", "request")
        _parameters(request.parameters, params, "request", skip=("binary_data_output",))
    inputs = j.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("the request needs 'inputs', a list of tensors")
    offset = 0
    for given in inputs:
        tensor = _object(given, "each of 'inputs'")
        name = tensor.get("name")
        datatype = tensor.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidArgument("each input needs a 'name' and a 'datatype' (strings)")
        shape = _shape(name, tensor.get("shape"))
        target = request.inputs.add(name=name, datatype=datatype, shape=shape)
        params = _object(tensor.get("parameters", {}), f"input '{clip(name)}' 'parameters'")
        _parameters(target.parameters, params, f"input '{clip(name)}'", skip=("binary_data_size", "binary_data"))
        size = params.get("binary_data_size")
        sources = [
            source
            for source, given in (
                ("'data'", "data" in tensor),
                ("the binary_data_size parameter", size is not None),
                ("the shared_memory_region parameter", shared_memory.REGION in params),
            )
            if given
        ]
        if len(sources) > 1:
            raise InvalidArgument(
                f"input '{clip(name)}' must set only one of 'data', the binary_data_size parameter and the "
                f"shared_memory_region parameter, not {' and '.join(sources)}"
            )
        if shared_memory.REGION in params:
            continue  # read from the client's shared memory as a gRPC request's is (no raw_input_contents entry)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(
                    f"input '{clip(name)}': binary_data_size {clip(str(size))} does not fit the {len(binary) - offset} "
                    "bytes of binary data left in the body"
                )
            request.raw_input_contents.append(binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            request.raw_input_contents.append(_json_data(name, datatype, shape, tensor["data"]))
        else:
            raise InvalidArgument(
                f"input '{clip(name)}' has none of 'data', a binary_data_size parameter and a shared_memory_region "
                "parameter"
            )
    if offset != len(binary):
        raise InvalidArgument(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    outputs = j.get("outputs")
    if outputs is None:
        outputs = []
    elif not isinstance(outputs, list):
        raise InvalidArgument("'outputs' must be a list of the outputs wanted")
    for given in outputs:
        wanted = _object(given, "each of 'outputs'")
        name = wanted.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("each requested output needs a 'name' (a string)")
        target = request.outputs.add(name=name)
        params = _object(wanted.get("parameters", {}), f"output '{clip(name)}' 'parameters'")
        # A listed output is JSON unless its own binary_data says otherwise: binary_data_output is for the
        # outputs a request does not list (Triton's CheckBinaryOutputData and default_output_kind).
        as_binary = _flag(params, "binary_data", f"output '{clip(name)}'")
        if as_binary and shared_memory.REGION in params:
            raise InvalidArgument(f"output '{clip(name)}' can't set both 'shared_memory_region' and 'binary_data'")
        if name not in choice.binary:  # an output listed twice: the first listing wins, as in the codec
            choice.binary[name] = as_binary
            if shared_memory.REGION in params:
                choice.shared.add(name)
        _parameters(target.parameters, params, f"output '{clip(name)}'", skip=("binary_data",))
    return request, choice


def is_raw_request(header_length: str | None) -> bool:
    """Whether the request is Triton's raw binary request: ``Inference-Header-Content-Length: 0``, no
    JSON, the whole body the data of the model's one input."""
    return header_length is not None and _DIGITS.fullmatch(header_length) is not None and int(header_length) == 0


def raw_request(
    model_name: str, version: str, body: bytes, spec: ModelSpec
) -> tuple[pb.ModelInferRequest, OutputChoice]:
    """Triton's raw binary request as a ModelInferRequest: ``body`` is the data of the model's only input,
    its shape deduced as Triton's core deduces it (a batch of one where the model batches, the config's
    dims, the one variable-size dim from the byte size; a BYTES input must be one element); every output
    is answered, as binary data."""
    if len(spec.inputs) != 1:
        raise InvalidArgument(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(spec.inputs)} inputs in "
            f"'{clip(model_name)}' model configuration"
        )
    (tensor,) = spec.inputs.values()
    shape = [1] if spec.batched else []
    variable = [i for i, d in enumerate(tensor.dims) if d == -1]
    if len(variable) > 1:
        raise InvalidArgument(
            f"The shape of the raw input '{tensor.name}' can not be deduced because there are more than one "
            "variable-sized dimension"
        )
    fixed = math.prod(d for d in tensor.dims if d != -1)
    dims = list(tensor.dims)
    if tensor.datatype.is_bytes:
        if variable or fixed != 1:
            raise InvalidArgument(f"For BYTE datatype raw input '{tensor.name}', the model must have input shape [1]")
        data = len(body).to_bytes(4, "little") + body  # one element, length-prefixed as BYTES travels
    else:
        if variable:
            dims[variable[0]] = len(body) // fixed // tensor.datatype.itemsize
        data = body  # a size that does not fit the shape is refused by the request's usual checks
    request = pb.ModelInferRequest(model_name=model_name, model_version=version)
    request.inputs.add(name=tensor.name, datatype=tensor.datatype.v2, shape=shape + dims)
    request.raw_input_contents.append(data)
    return request, OutputChoice(default_binary=True)


def _json_values(datatype: str, shape: Sequence[int], raw: bytes) -> str:
    """An output's values as a flat JSON array, written a slice at a time (see _SLICE)."""
    dtype = datatypes.BY_V2[datatype]
    slices: Iterator[list[Any]]
    if dtype.is_bytes:
        texts = [b.decode("utf-8", errors="replace") for b in datatypes.deserialize_bytes(raw, math.prod(shape))]
        slices = (texts[i : i + _SLICE] for i in range(0, len(texts), _SLICE))
    else:
        array = np.frombuffer(raw, dtype=dtype.numpy)
        slices = (array[i : i + _SLICE].tolist() for i in range(0, len(array), _SLICE))
    return "[" + ",".join(_dumps(values)[1:-1] for values in slices) + "]"


_dumps = json.JSONEncoder(separators=(",", ":")).encode  # one encoder (json.dumps with options builds one a call)


def heavy_response(response: pb.ModelInferResponse, choice: OutputChoice) -> bool:
    """Whether writing ``response`` as JSON may stall the event loop (see JSON_ON_LOOP): a byte of raw
    data takes about 1 to 5 characters of JSON."""
    outputs = zip(response.outputs, response.raw_output_contents, strict=True)
    return sum(len(raw) for tensor, raw in outputs if not choice.is_binary(tensor.name)) > JSON_ON_LOOP // 4


def infer_response(response: pb.ModelInferResponse, choice: OutputChoice) -> tuple[bytes, int | None]:
    """The V2 REST body of a response, and the length of its JSON part when binary data follows."""
    head: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        head["id"] = response.id
    outputs: list[str] = []
    chunks: list[bytes] = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in choice.shared:
            outputs.append(_dumps(entry))  # as Triton: name, datatype and shape; the data is in shared memory
        elif choice.is_binary(tensor.name):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
            outputs.append(_dumps(entry))
        elif tensor.datatype in BINARY_ONLY:
            raise InvalidArgument(
                f"sending {tensor.datatype} data via JSON is not supported; ask for output '{tensor.name}' as binary "
                "data (parameter binary_data, or binary_data_output)"
            )
        else:  # the data written apart, a slice at a time, then put in the entry's object
            data = _json_values(tensor.datatype, tensor.shape, raw)
            outputs.append(f'{_dumps(entry)[:-1]},"data":{data}}}')
    header = f'{_dumps(head)[:-1]},"outputs":[{",".join(outputs)}]}}'.encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton writes it in JSON (protobuf's printer with every field without
    presence): field names as in the .proto, scalars and lists even when zero or empty, a message
    field only when set (clients test ``"reshape" in input``), 64-bit integers as numbers, enums by name."""
    out: dict[str, Any] = {}
    for f in message.DESCRIPTOR.fields:
        if f.containing_oneof is not None and message.WhichOneof(f.containing_oneof.name) != f.name:
            continue
        repeated = f.label == FieldDescriptor.LABEL_REPEATED
        if f.message_type is not None and not repeated and not message.HasField(f.name):
            continue
        value = getattr(message, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value_field = f.message_type.fields_by_name["value"]
            out[f.name] = {k: _json_scalar(value_field, v) for k, v in value.items()}
        elif repeated:
            out[f.name] = [_json_scalar(f, v) for v in value]
        else:
            out[f.name] = _json_scalar(f, value)
    return out


def _json_scalar(f: FieldDescriptor, value: Any) -> Any:
    if f.message_type is not None:
        return message_json(value)
    if f.enum_type is not None:
        return f.enum_type.values_by_number[value].name if value in f.enum_type.values_by_number else value
    if f.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def register_body(body: bytes) -> tuple[str, int, int]:
    """The key, offset and byte size of a system shared memory register request's JSON body (Triton's
    fields: ``key`` and ``byte_size`` required, ``offset`` 0 if absent)."""
    j = _object(parse_json(body) if body.strip() else {}, "the request body")
    key = j.get("key")
    if key is None:
        raise InvalidArgument("Shared memory register request has no 'key' field")
    if not isinstance(key, str):
        raise InvalidArgument("the shared memory register request's 'key' must be a string")
    if "byte_size" not in j:
        raise InvalidArgument("Shared memory register request has no 'byte_size' field")
    sizes = []
    for field_name in ("offset", "byte_size"):  # (byte_size is there: checked above)
        value = j.get(field_name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
            raise InvalidArgument(
                f"the shared memory register request's '{field_name}' must be a non-negative integer below 2^64"
            )
        sizes.append(value)
    return key, sizes[0], sizes[1]


def load_parameters(body: bytes) -> Mapping[str, str]:
    """The ``parameters`` of a repository load request body (Triton's: ``config`` as a JSON string)."""
    if not body.strip():
        return {}
    j = _object(parse_json(body), "the request body")
    params = _object(j.get("parameters", {}), "'parameters'")
    out: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(value, str):
            raise InvalidArgument(f"load parameter '{clip(key)}' must be a string")
        out[key] = value
    return out
