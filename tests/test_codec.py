"""The codec in process (no server): ModelInferRequest to the decoded request and back."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tensorgate import model_config
from tensorgate.backends.base import TensorInfo
from tensorgate.errors import InvalidArgument
from tensorgate.frontend import codec
from tensorgate.frontend.codec import decode_request, encode_response
from tensorgate.model_config import ModelSpec, RawConfig
from tensorgate.proto import inference_pb2 as pb
from tensorgate.proto import model_config_pb2 as mc

FP32, STRING = 1, 8


def spec(text: str, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> ModelSpec:
    raw = RawConfig(text_format.Parse(text, mc.ModelConfig()), max_batch_size_given="max_batch_size" in text)
    return model_config.model_spec(raw, name="m", inputs=inputs, outputs=outputs, default_max_batch_size=4, gpu=False)


ADD = spec(
    "max_batch_size: 8",
    [TensorInfo("A", FP32, (None, 4)), TensorInfo("B", FP32, (None, 4))],
    [TensorInfo("SUM", FP32, (None, 4)), TensorInfo("DIFF", FP32, (None, 4))],
)
TEXT = spec("max_batch_size: 0", [TensorInfo("S", STRING, (2,))], [TensorInfo("T", STRING, (2,))])


def request(rows: int = 2, **parameters: int) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", id="r1")
    for name, start in (("A", 0.0), ("B", 100.0)):
        req.inputs.add(name=name, datatype="FP32", shape=[rows, 4])
        req.raw_input_contents.append(np.arange(start, start + rows * 4, dtype=np.float32).tobytes())
    for key, value in parameters.items():
        req.parameters[key].int64_param = value
    return req


def test_raw_inputs_become_views_of_the_message_with_the_batch_and_defaults() -> None:
    req = request(rows=3)
    decoded = decode_request(req, ADD)
    assert decoded.id == "r1" and decoded.batch_size == 3
    assert decoded.outputs == ("SUM", "DIFF")  # none asked: all, in the model's order
    assert (decoded.priority, decoded.timeout_us) == (0, 0)
    a = decoded.inputs["A"]
    assert a.shape == (3, 4) and a.dtype == np.float32 and a[2, 3] == 11
    assert not a.flags.writeable  # np.frombuffer over the message's bytes: no copy


def test_requested_outputs_priority_and_timeout_are_read() -> None:
    req = request(priority=2, timeout=500)
    req.outputs.add(name="DIFF")
    req.outputs.add(name="DIFF")
    decoded = decode_request(req, ADD)
    assert decoded.outputs == ("DIFF",) and (decoded.priority, decoded.timeout_us) == (2, 500)


def test_typed_contents_and_bytes() -> None:
    req = pb.ModelInferRequest(model_name="m")
    tensor = req.inputs.add(name="S", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"x", "é".encode()])
    decoded = decode_request(req, TEXT)
    assert decoded.inputs["S"].tolist() == [b"x", "é".encode()] and decoded.batch_size == 1


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda r: r.inputs[0].ClearField("shape"), InvalidArgument, ("'A'", "shape []")),
        (lambda r: r.inputs[1].shape.__setitem__(0, 3), InvalidArgument, ("'B' has batch size 3", "'A' has 2")),
        (lambda r: setattr(r.inputs[0], "datatype", "FP16"), InvalidArgument, ("'A'", "FP16", "FP32")),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 3), InvalidArgument, ("'A'", "3 bytes", "32 bytes")),
        (lambda r: r.inputs[0].shape.__setitem__(0, 9), InvalidArgument, ("batch size 9", "1 to 8")),
        (lambda r: r.outputs.add(name="NOPE"), InvalidArgument, ("'NOPE'", "['DIFF', 'SUM']")),
        (lambda r: setattr(r.inputs[1], "name", "A"), InvalidArgument, ("'A' appears more than once",)),
        (lambda r: r.parameters["priority"].__setattr__("string_param", "high"), InvalidArgument, ("'priority'",)),
        (
            lambda r: r.inputs[0].parameters["shared_memory_region"].__setattr__("string_param", "r"),
            InvalidArgument,
            ("'shared_memory_byte_size' must be specified along with 'shared_memory_region'", "'A'"),
        ),
    ],
)
def test_bad_requests_name_the_tensor_and_what_was_expected(change, error, words) -> None:  # type: ignore[no-untyped-def]
    req = request()
    change(req)
    with pytest.raises(error) as caught:
        decode_request(req, ADD)
    for word in words:
        assert word in caught.value.message, caught.value.message


def test_encode_response_carries_raw_outputs_and_bytes() -> None:
    out = encode_response(ADD, 3, "r9", {"SUM": np.ones((2, 4), np.float32)})
    assert (out.model_name, out.model_version, out.id) == ("m", "3", "r9")
    assert [(t.name, t.datatype, list(t.shape)) for t in out.outputs] == [("SUM", "FP32", [2, 4])]
    assert np.frombuffer(out.raw_output_contents[0], np.float32).tolist() == [1.0] * 8
    text = encode_response(TEXT, 1, "", {"T": np.array([b"ab", b""], dtype=object)})
    assert text.raw_output_contents[0] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


ANY = spec("max_batch_size: 0", [TensorInfo("X", FP32, (None, None))], [TensorInfo("Y", FP32, (None, None))])


@pytest.mark.parametrize("dims", [[4611686018427387904, 0], [2**30, 2**30, 0, 2**10]])
def test_a_shape_whose_element_count_overflows_is_refused_naming_the_tensor(dims: list[int]) -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="X", datatype="FP32", shape=dims)
    req.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgument, match=r"input 'X' has shape .*more than a tensor can hold"):
        decode_request(req, ANY)


def test_an_empty_tensor_at_the_element_bound_still_decodes() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="X", datatype="FP32", shape=[2**59, 0])
    req.raw_input_contents.append(b"")
    assert decode_request(req, ANY).inputs["X"].shape == (2**59, 0)


def test_names_a_client_sent_are_clipped_in_messages() -> None:
    req = request()
    req.outputs.add(name="N" * 100_000)
    with pytest.raises(InvalidArgument) as caught:
        decode_request(req, ADD)
    assert len(caught.value.message) < 300 and "(100000 characters)" in caught.value.message


def test_much_shared_memory_to_copy_is_decoded_off_the_event_loop() -> None:
    """Inputs in shared memory are copied out of it: above SHARED_BYTES_ON_LOOP bytes in all (whatever their
    datatype) the request is decoded on a thread; below it, and with no shared memory, on the loop."""

    def in_memory(*sizes: int) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name="m")
        for name, size in zip("AB", sizes, strict=False):
            tensor = req.inputs.add(name=name, datatype="FP32", shape=[1, 4])
            tensor.parameters["shared_memory_region"].string_param = "r"
            tensor.parameters["shared_memory_byte_size"].int64_param = size
        return req

    limit = codec.SHARED_BYTES_ON_LOOP
    assert codec.heavy_request(in_memory(limit // 2 + 1, limit // 2), ADD)
    assert not codec.heavy_request(in_memory(limit // 2, limit // 2), ADD)
    assert not codec.heavy_request(in_memory(-(2**62), limit), ADD)  # a negative size (refused later) adds nothing
    assert not codec.heavy_request(request(), ADD)
