"""FP32 -> FP16 conversion and the accuracy gate, on real ONNX models run by ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tensorgate.backends.fp16 import (
    DEFAULT_BLOCK_OPS,
    Tolerance,
    check_accuracy,
    compare_outputs,
    convert_to_fp16,
    fp16_pipeline,
    sample_inputs,
)

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test",
        inputs,
        outputs,
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Add", ["h", "b1"], ["h1"], name="add1"),
            helper.make_node("Relu", ["h1"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["o"], name="mm2"),
            helper.make_node("Add", ["o", "b2"], ["y"], name="add2"),
        ],
        [helper.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 4])],
        {
            "w1": rng.standard_normal((16, 32)) * 0.25,
            "b1": rng.standard_normal(32) * 0.1,
            "w2": rng.standard_normal((32, 4)) * 0.2,
            "b2": rng.standard_normal(4) * 0.1,
        },
    )


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, feeds)]


def types_of(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph (by ONNX type inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def io_types(model: onnx.ModelProto) -> list[int]:
    return [vi.type.tensor_type.elem_type for vi in (*model.graph.input, *model.graph.output)]


def test_mlp_converts_to_fp16_inside_with_fp32_io_and_passes_the_gate() -> None:
    model = mlp()
    before = model.SerializeToString()
    fp16 = convert_to_fp16(model)
    assert model.SerializeToString() == before  # the input is not modified

    assert io_types(fp16) == [FLOAT, FLOAT]
    assert fp16.ir_version == 9
    onnx.checker.check_model(fp16, full_check=True)  # valid, topologically sorted
    initializers = {t.name: t.data_type for t in fp16.graph.initializer}
    assert initializers == {"w1": FLOAT16, "b1": FLOAT16, "w2": FLOAT16, "b2": FLOAT16}
    types = types_of(fp16)
    matmuls = [n for n in fp16.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2
    assert all(types[name] == FLOAT16 for n in matmuls for name in (*n.input, *n.output))

    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    (expected,) = run(model, {"x": x})
    (got,) = run(fp16, {"x": x})  # the FP16 model itself runs in ONNX Runtime
    assert got.dtype == np.float32 and got.shape == (8, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)

    result = fp16_pipeline(model.SerializeToString(), [{"x": x}])
    assert result.accepted, result.reason
    assert result.reason.startswith("FP16 accepted")
    assert result.model is not None and result.report is not None
    (output,) = result.report.outputs
    assert output.name == "y" and output.passed
    assert 0 < output.max_rel_error < 1e-2  # FP16 did change the numbers, a little
    accepted = onnx.load_model_from_string(result.model)
    assert io_types(accepted) == [FLOAT, FLOAT]
    (from_bytes,) = run(accepted, {"x": x})
    np.testing.assert_allclose(from_bytes, expected, rtol=1e-2, atol=1e-2)


def test_layernorm_and_softmax_stay_fp32() -> None:
    rng = np.random.default_rng(2)
    model = make_model(
        [
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1, name="ln"),
            helper.make_node("MatMul", ["n", "w"], ["m"], name="mm"),
            # gamma is shared by a blocked op (LayerNormalization) and an FP16 one (Mul)
            helper.make_node("Mul", ["m", "gamma"], ["m2"], name="mul"),
            helper.make_node("Softmax", ["m2"], ["y"], axis=-1, name="softmax"),
        ],
        [helper.make_tensor_value_info("x", FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 8])],
        {"gamma": np.full(8, 1.1), "beta": np.zeros(8), "w": rng.standard_normal((8, 8))},
    )
    fp16 = convert_to_fp16(model)
    assert io_types(fp16) == [FLOAT, FLOAT]
    types = types_of(fp16)
    nodes = {n.name: n for n in fp16.graph.node}
    ln, softmax, mm = nodes["ln"], nodes["softmax"], nodes["mm"]
    assert all(types[name] == FLOAT for name in (*ln.input, *ln.output, *softmax.input, *softmax.output))
    assert all(types[name] == FLOAT16 for name in (*mm.input, *mm.output))
    # The FP32 input reaches LayerNormalization directly, not through an FP16 round trip ...
    assert ln.input[0] == "x"
    # ... and Softmax's FP32 result reaches the output without being rounded to FP16 on the way.
    producers = {out: n for n in fp16.graph.node for out in n.output}
    tensor = "y"
    while tensor != softmax.output[0]:
        node = producers[tensor]
        assert node.op_type == "Cast" and node.attribute[0].i == FLOAT, node
        tensor = node.input[0]

    samples = [sample_inputs(model, batch_size=4, seed=s) for s in range(2)]
    result = fp16_pipeline(model.SerializeToString(), samples)
    assert result.accepted, result.reason


def test_values_that_overflow_fp16_are_refused_naming_the_output() -> None:
    # x ~ 1e2 times weights ~ 1e3, summed over 16: intermediates ~ 4e5, beyond FP16's 65504.
    # Scaled back down, the FP32 output is moderate and finite.
    rng = np.random.default_rng(3)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Mul", ["h", "scale"], ["y"], name="scale_down"),
        ],
        [helper.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 4])],
        {"w": rng.standard_normal((16, 4)) * 1e3, "scale": np.array([1e-3])},
    )
    samples = [{"x": (rng.standard_normal((4, 16)) * 1e2).astype(np.float32)}]
    (expected,) = run(model, samples[0])
    assert np.isfinite(expected).all() and np.abs(expected).max() < 5e3

    result = fp16_pipeline(model.SerializeToString(), samples)
    assert not result.accepted
    assert result.model is None
    assert "'y'" in result.reason and "inf/NaN" in result.reason and "65504" in result.reason
    assert "overflow" in result.reason
    assert result.report is not None
    (output,) = result.report.outputs
    assert not output.passed and output.new_nonfinite > 0


def test_a_small_error_is_refused_by_a_tight_tolerance_and_accepted_by_a_loose_one() -> None:
    model = mlp()
    samples = [sample_inputs(model, batch_size=8, seed=s) for s in range(2)]
    fp16 = convert_to_fp16(model)
    report = check_accuracy(model, fp16, samples)
    (output,) = report.outputs
    assert report.passed and 1e-5 < output.max_rel_error < 1e-2

    tight = fp16_pipeline(model.SerializeToString(), samples, Tolerance(rtol=1e-5))
    assert not tight.accepted and tight.model is None
    assert "output 'y': max relative error" in tight.reason and "> rtol 1e-05" in tight.reason
    loose = fp16_pipeline(model.SerializeToString(), samples, Tolerance(rtol=5e-2))
    assert loose.accepted and loose.model is not None
    assert "<= rtol 0.05" in loose.reason


def test_a_chain_of_blocked_ops_stays_fp32_so_squares_beyond_fp16_range_survive() -> None:
    # RMS of values around 300: the squares (~1e5) exceed FP16's 65504, the result (~300) does not.
    model = make_model(
        [
            helper.make_node("Mul", ["x", "gain"], ["big"], name="gain"),
            helper.make_node("Pow", ["big", "two"], ["squares"], name="pow"),
            helper.make_node("ReduceMean", ["squares"], ["mean"], axes=[-1], name="mean"),
            helper.make_node("Sqrt", ["mean"], ["y"], name="sqrt"),
        ],
        [helper.make_tensor_value_info("x", FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 1])],
        {"gain": np.array(300.0), "two": np.array(2.0)},
    )
    samples = [sample_inputs(model, batch_size=4, seed=0)]
    fp16 = convert_to_fp16(model)
    types = types_of(fp16)
    pow_node, mean = (next(n for n in fp16.graph.node if n.name == name) for name in ("pow", "mean"))
    assert types[pow_node.output[0]] == FLOAT and mean.input[0] == pow_node.output[0]  # no FP16 round trip
    assert fp16_pipeline(model.SerializeToString(), samples).accepted

    all_fp16 = fp16_pipeline(model.SerializeToString(), samples, block_ops=())
    assert not all_fp16.accepted and "output 'y'" in all_fp16.reason and "inf/NaN" in all_fp16.reason


def test_float_attribute_constants_are_converted() -> None:
    model = make_model(
        [
            helper.make_node("Constant", [], ["c"], value_float=2.0),
            helper.make_node("Constant", [], ["v"], value_floats=[1.0, 2.0, 3.0, 4.0]),
            helper.make_node("Mul", ["x", "c"], ["xc"]),
            helper.make_node("Add", ["xc", "v"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 4])],
        {},
    )
    result = fp16_pipeline(model.SerializeToString())
    assert result.accepted, result.reason


def test_a_blocked_op_inside_an_if_body_is_refused_not_mis_converted() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["x2"], ["t"]), helper.make_node("Softmax", ["t"], ["t_out"], axis=-1)],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", FLOAT, [2, 4])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x2"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", FLOAT, [2, 4])],
    )
    model = make_model(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Greater", ["m", "zero"], ["positive"]),
            helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch),
        ],
        [helper.make_tensor_value_info("x", FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 4])],
        {"two": np.array(2.0), "zero": np.array(0.0)},
    )
    result = fp16_pipeline(model.SerializeToString())
    assert not result.accepted
    assert "If/Loop/Scan" in result.reason
    # Without the blocked op in the body, the same model converts and passes.
    assert fp16_pipeline(model.SerializeToString(), block_ops=DEFAULT_BLOCK_OPS - {"Softmax"}).accepted


def test_sample_inputs_honor_dynamic_dims_and_types() -> None:
    graph = helper.make_graph(
        [],
        "inputs",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"]),
            helper.make_tensor_value_info("image", FLOAT, [None, 3, "height", 5]),
            helper.make_tensor_value_info("half", FLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("bytes", TensorProto.UINT8, [7]),
        ],
        [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    samples = sample_inputs(model, batch_size=3, seed=7)
    assert samples["ids"].dtype == np.int64 and samples["ids"].shape[0] == 3
    seq = samples["ids"].shape[1]
    assert 1 <= seq <= 8
    assert samples["mask"].dtype == np.bool_ and samples["mask"].shape == (3, seq)
    assert samples["image"].dtype == np.float32
    assert samples["image"].shape[:2] == (3, 3) and samples["image"].shape[3] == 5
    assert 1 <= samples["image"].shape[2] <= 8
    assert samples["half"].dtype == np.float16 and samples["half"].shape == (3, 2)
    assert samples["bytes"].dtype == np.uint8 and samples["bytes"].shape == (7,)
    assert samples["ids"].min() >= 0 and samples["ids"].max() < 4
    assert abs(float(samples["image"].std()) - 1.0) < 0.5  # standard normal

    again = sample_inputs(model.SerializeToString(), batch_size=3, seed=7)
    assert all(np.array_equal(samples[k], again[k]) for k in samples)
    chosen = sample_inputs(model, batch_size=1, seed=7, dims={"seq": 6, "height": 2})
    assert chosen["ids"].shape == (1, 6) and chosen["image"].shape == (1, 3, 2, 5)

    strings = helper.make_model(
        helper.make_graph([], "s", [helper.make_tensor_value_info("text", TensorProto.STRING, [1])], []),
        ir_version=9,
    )
    with pytest.raises(ValueError, match="'text' has type STRING"):
        sample_inputs(strings)


def test_compare_outputs_on_integer_and_non_finite_values() -> None:
    ref = [{"label": np.array([1, 2, 3, 4]), "score": np.array([np.nan, 1.0, np.inf], np.float32)}]
    same = [{"label": np.array([1, 2, 3, 4]), "score": np.array([np.nan, 1.001, np.inf], np.float16)}]
    assert compare_outputs(ref, same).passed

    flipped = [{"label": np.array([1, 2, 3, 0]), "score": np.array([np.nan, 1.0, 5.0], np.float32)}]
    report = compare_outputs(ref, flipped)
    assert not report.passed
    label, score = report.outputs
    assert label.mismatches == 1 and "output 'label': 1 of 4 values differ" in report.reason
    assert score.nonfinite_mismatch == 1 and "inf/NaN in FP32 but differ in FP16" in report.reason
    assert compare_outputs(ref, flipped, Tolerance(max_mismatch_fraction=0.25)).outputs[0].passed
