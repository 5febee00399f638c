"""Unit tests of tensorgate.model_config and the version policy (no server): config.pbtxt is parsed,
completed from the ONNX file's tensors, checked against them, and unsupported fields are named."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tensorgate import model_config as C
from tensorgate.backends.base import TensorInfo
from tensorgate.errors import ModelConfigError
from tensorgate.model_config.version_policy import missing_versions
from tensorgate.proto import model_config_pb2 as mc

FP32, INT32, INT64 = 1, 6, 7


def t(name: str, *shape: int | None, onnx_type: int = FP32) -> TensorInfo:
    return TensorInfo(name, onnx_type, tuple(shape))


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def build(
    text: str | None,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    *,
    tmp_path: Path,
    name: str = "m",
    default_max_batch_size: int = 4,
) -> C.ModelSpec:
    """What the repository does with one model directory: read, complete, validate."""
    model_dir = tmp_path / name
    model_dir.mkdir(exist_ok=True)
    if text is not None:
        (model_dir / "config.pbtxt").write_text(text)
    raw = C.read_config(model_dir)
    done = C.complete(
        raw.config,
        name=name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size_given=raw.max_batch_size_given,
        default_max_batch_size=default_max_batch_size,
    )
    return C.validate(done, inputs, outputs)


# ---- derivation without config.pbtxt ----


def test_no_config_dynamic_first_dim_gets_default_batch(tmp_path: Path) -> None:
    spec = build(None, [t("x", None, 3, None)], [t("y", None, 3, None)], tmp_path=tmp_path, default_max_batch_size=8)
    assert spec.max_batch_size == 8 and spec.batched
    assert spec.inputs["x"].dims == (3, -1)  # batch dim stripped, symbolic dim -> -1
    assert spec.outputs["y"].dims == (3, -1)
    assert spec.inputs["x"].datatype.config == "TYPE_FP32"
    cfg = spec.config
    assert cfg.name == "m" and cfg.backend == "onnxruntime"
    assert [tuple(i.dims) for i in cfg.input] == [(3, -1)]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, mc.ModelInstanceGroup.KIND_AUTO)]
    assert cfg.version_policy.WhichOneof("policy_choice") == "latest"
    assert cfg.version_policy.latest.num_versions == 1


def test_no_config_fixed_first_dim_is_not_batched(tmp_path: Path) -> None:
    spec = build(None, [t("x", 2, None)], [t("y", 2, None)], tmp_path=tmp_path)
    assert spec.max_batch_size == 0 and not spec.batched
    assert spec.inputs["x"].dims == (2, -1)
    assert spec.outputs["y"].dims == (2, -1)


def test_no_config_one_fixed_tensor_disables_batching(tmp_path: Path) -> None:
    spec = build(None, [t("a", None, 4), t("b", 1, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 0
    assert spec.inputs["a"].dims == (-1, 4)


def test_no_config_scalar_is_not_batched(tmp_path: Path) -> None:
    """Triton's auto-complete writes a scalar as dims [1] (its ONNX Runtime backend feeds it as a scalar)."""
    spec = build(None, [t("x")], [t("y")], tmp_path=tmp_path)
    assert spec.max_batch_size == 0 and spec.inputs["x"].dims == (1,) and spec.inputs["x"].model_dims == ()
    assert list(spec.config.input[0].dims) == [1] and not spec.config.input[0].HasField("reshape")


def test_default_max_batch_size_zero_disables_batching(tmp_path: Path) -> None:
    spec = build(None, [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path, default_max_batch_size=0)
    assert spec.max_batch_size == 0 and spec.inputs["x"].dims == (-1, 4)


def test_unservable_onnx_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"'x' has ONNX type 23"):
        build(None, [t("x", None, 4, onnx_type=23)], [t("y", None, 4)], tmp_path=tmp_path)


# ---- config.pbtxt that only gives part of the config ----


def test_explicit_max_batch_size_zero_is_kept(tmp_path: Path) -> None:
    spec = build("max_batch_size: 0", [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 0
    assert spec.inputs["x"].dims == (-1, 4)


def test_only_max_batch_size_fills_stripped_dims(tmp_path: Path) -> None:
    spec = build("max_batch_size: 16", [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 16 and spec.inputs["x"].dims == (4,) and spec.outputs["y"].dims == (4,)


@pytest.mark.parametrize("given", ["input", "output"])
def test_inputs_or_outputs_alone_are_completed_with_default_batch(tmp_path: Path, given: str) -> None:
    """Triton's ONNX Runtime auto-complete runs unless config.pbtxt gives inputs AND outputs: the
    missing side comes from the file, max_batch_size (not given) becomes the default, and the model
    batches dynamically."""
    text = f'{given} [ {{ name: "{given[0]}" data_type: TYPE_FP32 dims: [ 4 ] }} ]'
    spec = build(text, [t("i", None, 4)], [t("o", None, 4)], tmp_path=tmp_path, default_max_batch_size=8)
    assert spec.max_batch_size == 8 and spec.config.HasField("dynamic_batching")
    assert spec.inputs["i"].dims == (4,) and spec.outputs["o"].dims == (4,)
    assert [t.name for t in spec.config.input] == ["i"] and [t.name for t in spec.config.output] == ["o"]


def test_inputs_alone_on_a_model_that_cannot_batch(tmp_path: Path) -> None:
    text = 'input [ { name: "i" data_type: TYPE_FP32 dims: [ 2, 4 ] } ]'
    spec = build(text, [t("i", 2, 4)], [t("o", 2, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 0 and not spec.config.HasField("dynamic_batching")
    assert spec.outputs["o"].dims == (2, 4)


def test_inputs_alone_with_max_batch_size_keep_it(tmp_path: Path) -> None:
    text = 'max_batch_size: 2 input [ { name: "i" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    spec = build(text, [t("i", None, 4)], [t("o", None, 4)], tmp_path=tmp_path, default_max_batch_size=8)
    assert spec.max_batch_size == 2 and spec.outputs["o"].dims == (4,)


def test_inputs_and_outputs_given_are_not_completed(tmp_path: Path) -> None:
    """Both given: no auto-complete (as Triton), so max_batch_size stays 0 and the dims must
    include the first dimension."""
    spec = build(full(mbs=0, dims="-1, 4", odims="-1, 4"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 0 and spec.inputs["x"].dims == (-1, 4)
    with pytest.raises(ModelConfigError, match="rank"):
        build(full(mbs=0).replace("max_batch_size: 0", ""), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_commented_max_batch_size_does_not_count(tmp_path: Path) -> None:
    """A commented-out line is not a setting: the default applies as without the line."""
    text = '# max_batch_size: 0\nname: "m"\nparameters { key: "max_batch_size" value { string_value: "1" } }\n'
    (tmp_path / "config.pbtxt").write_text(text)
    raw = C.read_config(tmp_path)
    assert raw.config.name == "m" and not raw.max_batch_size_given
    spec = build(text, [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 4


@pytest.mark.parametrize(
    "text, given",
    [
        ("max_batch_size: 0", True),
        ("name: 'm'\nmax_batch_size : 3  # batch", True),
        ("name: 'm'", False),
        ("", False),
    ],
)
def test_read_config_reports_max_batch_size_given(tmp_path: Path, text: str, given: bool) -> None:
    (tmp_path / "config.pbtxt").write_text(text)
    assert C.read_config(tmp_path).max_batch_size_given is given


def test_read_config_without_file(tmp_path: Path) -> None:
    raw = C.read_config(tmp_path)
    assert raw.config == mc.ModelConfig() and not raw.max_batch_size_given


@pytest.mark.parametrize(
    "text",
    [
        "name: 'm' max_batch_size: {",
        "no_such_field: 1",
        "max_batch_size: 99999999999",
        "input [{ name: 'x' data_type: TYPE_NOPE }]",
    ],
)
def test_unparsable_config(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.pbtxt").write_text(text)
    with pytest.raises(ModelConfigError, match=r"config\.pbtxt does not parse"):
        C.read_config(tmp_path)


def test_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_bytes(b"name: '\xff\xfe'")
    with pytest.raises(ModelConfigError, match="does not parse"):
        C.read_config(tmp_path)


# ---- config that contradicts the model ----


def test_config_names_another_model(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"names the model 'other' but its directory is 'm'"):
        build('name: "other"', [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_config_with_same_name_is_fine(tmp_path: Path) -> None:
    assert build('name: "m"', [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path).name == "m"


FULL = """
max_batch_size: {mbs}
input [ {{ name: "{iname}" data_type: {dtype} dims: [ {dims} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {odims} ] }} ]
"""


def full(mbs: int = 4, iname: str = "x", dtype: str = "TYPE_FP32", dims: str = "4", odims: str = "4") -> str:
    return FULL.format(mbs=mbs, iname=iname, dtype=dtype, dims=dims, odims=odims)


def test_full_config_matches(tmp_path: Path) -> None:
    spec = build(full(dims="-1"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 4
    assert spec.inputs["x"].dims == (4,)  # -1 in the config takes the file's size


def test_dtype_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError) as info:
        build(full(dtype="TYPE_INT32"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert str(info.value) == "input 'x' is TYPE_INT32 in config.pbtxt but TYPE_FP32 in the ONNX file"


def test_output_dtype_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"output 'y' is TYPE_FP32 in config.pbtxt but TYPE_INT64"):
        build(full(), [t("x", None, 4)], [t("y", None, 4, onnx_type=INT64)], tmp_path=tmp_path)


def test_rank_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"'x' has dims \[4, 2\].*has rank 1 \(after the batch dimension\)"):
        build(full(dims="4, 2"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_rank_mismatch_when_batch_dim_is_included_in_dims(tmp_path: Path) -> None:
    """Triton's dims exclude the batch dim; a config that repeats it is one rank too many."""
    with pytest.raises(ModelConfigError, match="rank"):
        build(full(dims="-1, 4"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_dims_contradict(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"input 'x' has dims \[5\] .*contradicts the ONNX file's \[4\]"):
        build(full(dims="5"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_batch_dim_not_dynamic(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"max_batch_size > 0 needs a dynamic first dimension.*which has 1"):
        build(full(), [t("x", 1, 4)], [t("y", 1, 4)], tmp_path=tmp_path)


def test_batched_scalar(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="a scalar"):
        build(full(dims=""), [t("x")], [t("y", None, 4)], tmp_path=tmp_path)


def test_non_batched_config_keeps_first_dim(tmp_path: Path) -> None:
    spec = build(full(mbs=0, dims="1, 4", odims="1, 4"), [t("x", 1, 4)], [t("y", 1, 4)], tmp_path=tmp_path)
    assert spec.max_batch_size == 0 and spec.inputs["x"].dims == (1, 4)


def test_input_not_in_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"input 'nope', which the ONNX file does not have \(it has \['x'\]\)"):
        build(full(iname="nope"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_input_missing_from_config(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"needs inputs \['z'\]"):
        build(full(), [t("x", None, 4), t("z", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_output_not_in_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"declares output 'y'"):
        build(full(), [t("x", None, 4)], [t("out", None, 4)], tmp_path=tmp_path)


def test_duplicate_input(tmp_path: Path) -> None:
    text = full() + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    with pytest.raises(ModelConfigError, match=r"input 'x' appears twice"):
        build(text, [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_invalid_datatype_and_dims(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="has no data_type"):
        build('input [{ name: "x" dims: [4] }]', [t("x", 4)], [t("y", 4)], tmp_path=tmp_path)
    with pytest.raises(ModelConfigError, match="has dim -3"):
        build(full(dims="-3"), [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_negative_max_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="max_batch_size must be >= 0"):
        build("max_batch_size: -2", [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_integer_types(tmp_path: Path) -> None:
    spec = build(None, [t("x", None, 2, onnx_type=INT32)], [t("y", None, 2, onnx_type=INT64)], tmp_path=tmp_path)
    assert spec.inputs["x"].datatype.v2 == "INT32" and spec.outputs["y"].datatype.v2 == "INT64"


def test_instance_group_completed() -> None:
    done = C.complete(
        parse("instance_group [{ count: 0 kind: KIND_AUTO }, { count: 3 }]"),
        name="m",
        inputs=[t("x", None)],
        outputs=[t("y", None)],
        max_batch_size_given=False,
        default_max_batch_size=4,
    )
    # KIND_AUTO stays until the engine is chosen (the repository then sets KIND_CPU or KIND_GPU).
    assert [(g.count, g.kind) for g in done.instance_group] == [(1, mc.ModelInstanceGroup.KIND_AUTO)] * 1 + [
        (3, mc.ModelInstanceGroup.KIND_AUTO)
    ]
    assert C.instance_count(done) == 4


# ---- --disable-auto-complete-config ----


def test_with_auto_complete_disabled_the_config_is_taken_as_written() -> None:
    inputs, outputs = [t("x", None, 4)], [t("y", None, 4)]  # a file that batches
    written = parse(
        "input [{ name: 'x' data_type: TYPE_FP32 dims: [-1, 4] }]\n"
        "output [{ name: 'y' data_type: TYPE_FP32 dims: [-1, 4] }]"
    )
    done = C.complete(written, name="m", inputs=inputs, outputs=outputs, max_batch_size_given=False,
                      default_max_batch_size=4, auto_complete_allowed=False)  # fmt: skip
    assert done.max_batch_size == 0 and not done.HasField("dynamic_batching")  # not filled in
    auto = C.complete(parse(""), name="m", inputs=inputs, outputs=outputs, max_batch_size_given=False,
                      default_max_batch_size=4)  # fmt: skip
    assert auto.max_batch_size == 4 and auto.HasField("dynamic_batching")  # what auto-complete would have done
    for text in ("", "input [{ name: 'x' data_type: TYPE_FP32 dims: [-1, 4] }]"):
        with pytest.raises(ModelConfigError, match="must declare its inputs and outputs"):
            C.complete(parse(text), name="m", inputs=inputs, outputs=outputs, max_batch_size_given=False,
                       default_max_batch_size=4, auto_complete_allowed=False)  # fmt: skip


# ---- optional inputs: initializers the ONNX file lets a request override (Triton's ONNX Runtime backend) ----


def _with_initializer() -> tuple[list[TensorInfo], list[TensorInfo]]:
    """x is a graph input; b an initializer the file lets a request override (optional)."""
    b = TensorInfo("b", FP32, (4,), optional=True)
    return [t("x", 4), b], [t("y", 4)]


def test_an_overridable_initializer_is_an_optional_input_and_not_auto_completed(tmp_path: Path) -> None:
    inputs, outputs = _with_initializer()
    auto = build(None, inputs, outputs, tmp_path=tmp_path)  # completed from the file: only what must be sent
    assert list(auto.inputs) == ["x"] and auto.max_batch_size == 0
    declared = build(
        "max_batch_size: 0\ninput [{ name: 'x' data_type: TYPE_FP32 dims: [4] }, "
        "{ name: 'b' data_type: TYPE_FP32 dims: [4] optional: true }]",
        inputs,
        outputs,
        tmp_path=tmp_path,
    )
    assert declared.inputs["b"].optional and not declared.inputs["x"].optional


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            "max_batch_size: 0\ninput [{ name: 'x' data_type: TYPE_FP32 dims: [4] optional: true }]",
            "input 'x' is optional in config.pbtxt but the ONNX file needs it in every run",
        ),
        (
            "max_batch_size: 4\ninput [{ name: 'x' data_type: TYPE_FP32 dims: [4] }, "
            "{ name: 'b' data_type: TYPE_FP32 dims: [4] optional: true }]",
            "optional input 'b' is not supported for models that support batching",
        ),
    ],
)
def test_optional_inputs_triton_refuses_are_refused(tmp_path: Path, text: str, named: str) -> None:
    inputs, outputs = _with_initializer()
    if "max_batch_size: 4" in text:  # a file whose inputs and outputs batch
        inputs = [t("x", None, 4), TensorInfo("b", FP32, (None, 4), optional=True)]
        outputs = [t("y", None, 4)]
    with pytest.raises(ModelConfigError, match=re.escape(named)):
        build(text, inputs, outputs, tmp_path=tmp_path)


# ---- fields we do not implement ----


@pytest.mark.parametrize(
    "text, named",
    [
        ("optimization { priority: PRIORITY_MAX }", "optimization"),
        ("response_cache { enable: true }", "response_cache"),
        ("parameters { key: 'k' value { string_value: 'v' } }", "parameters ignored: k"),
        ("input [{ name: 'x' format: FORMAT_NCHW }]", "format"),
        (
            "optimization { execution_accelerators { cpu_execution_accelerator [{ name: 'openvino' }] } }",
            "cpu_execution_accelerator 'openvino' ignored",
        ),
    ],
)
def test_performance_hints_warn(text: str, named: str) -> None:
    hints = C.check_supported(parse(text))
    assert any(named in h for h in hints), hints


def test_onnxruntime_parameters_are_read_not_ignored() -> None:
    cfg = parse(
        "parameters { key: 'intra_op_thread_count' value { string_value: '1' } }"
        " parameters { key: 'inter_op_thread_count' value { string_value: '2' } }"
        " parameters { key: 'execution_mode' value { string_value: '1' } }"
        " parameters { key: 'enable_mem_arena' value { string_value: '0' } }"
    )
    assert C.check_supported(cfg) == ["parameters ignored: enable_mem_arena"]
    assert C.ort_parameters(cfg) == C.OrtParameters(intra_op_threads=1, inter_op_threads=2, parallel_execution=True)
    assert C.ort_parameters(parse("")) == C.OrtParameters()


@pytest.mark.parametrize("value", ["-1", "two", "", "2000", "\u00b2"])  # "²".isdigit() is True
def test_bad_onnxruntime_parameter_fails_the_load(value: str) -> None:
    with pytest.raises(ModelConfigError, match="'intra_op_thread_count' must be an integer from 0 to 1024"):
        C.check_supported(parse(f"parameters {{ key: 'intra_op_thread_count' value {{ string_value: '{value}' }} }}"))


def test_supported_config_has_no_hints() -> None:
    cfg = parse(
        'name: "m" backend: "onnxruntime" max_batch_size: 8 instance_group [{ count: 2 kind: KIND_CPU }]'
        ' version_policy { all {} } input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]'
    )
    assert C.check_supported(cfg) == []
    assert C.check_supported(parse('platform: "onnxruntime_onnx"')) == []


@pytest.mark.parametrize(
    "text, named",
    [
        ("sequence_batching {}", "sequence_batching is not supported"),
        (
            "ensemble_scheduling { step [{ model_name: 'a' model_version: -1 }] }",
            "ensemble_scheduling is not supported",
        ),
        ("model_transaction_policy { decoupled: true }", "decoupled"),
        ("backend: 'pytorch'", "backend 'pytorch' is not served"),
        ("platform: 'tensorrt_plan'", "platform 'tensorrt_plan' is not served"),
        ("runtime: 'model.py'", "runtime 'model.py'"),
        ("instance_group [{ kind: KIND_MODEL }]", "KIND_MODEL"),
        ("instance_group [{ name: 'g' kind: KIND_CPU gpus: [0] }]", "'g' has kind KIND_CPU but lists gpus \\[0\\]"),
        ("instance_group [{ kind: KIND_GPU gpus: [-1] }]", "a GPU id is >= 0"),
        ("input [{ name: 'x' allow_ragged_batch: true }]", "allow_ragged_batch"),
        ("input [{ name: 'x' is_shape_tensor: true }]", "is_shape_tensor"),
        ("batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: 'n' }]", "batch_input"),
        (
            "optimization { execution_accelerators { cpu_execution_accelerator [{ name: 'dnnl' }] } }",
            "cpu_execution_accelerator 'dnnl' is not known",
        ),
    ],
)
def test_fields_that_change_results_are_fatal(text: str, named: str) -> None:
    with pytest.raises(ModelConfigError, match=named):
        C.check_supported(parse(text))


def test_all_fatal_fields_are_named_at_once() -> None:
    with pytest.raises(ModelConfigError) as info:
        C.check_supported(parse("backend: 'pytorch' sequence_batching {} response_cache {}"))
    message = str(info.value)
    assert "pytorch" in message and "sequence_batching" in message
    assert "response_cache" not in message


def test_model_filename() -> None:
    assert C.model_filename(mc.ModelConfig()) == "model.onnx"
    assert C.model_filename(parse("default_model_filename: 'net.onnx'")) == "net.onnx"
    for bad in ("../model.onnx", "a/b.onnx", "..", "a\\\\b"):
        with pytest.raises(ModelConfigError, match="plain file name"):
            C.model_filename(parse(f"default_model_filename: '{bad}'"))


# ---- version policy ----


def policy(text: str) -> mc.ModelVersionPolicy:
    return text_format.Parse(text, mc.ModelVersionPolicy())


@pytest.mark.parametrize(
    "text, available, chosen",
    [
        ("", [3, 1, 2], [3]),
        ("latest { num_versions: 1 }", [1, 2, 3], [3]),
        ("latest { num_versions: 2 }", [1, 2, 3], [2, 3]),
        ("latest { num_versions: 5 }", [7, 2], [2, 7]),
        ("all {}", [3, 1, 2], [1, 2, 3]),
        ("specific { versions: [3, 1] }", [1, 2, 3], [1, 3]),
        ("specific { versions: [2, 2] }", [1, 2, 3], [2]),
    ],
)
def test_version_policy(text: str, available: list[int], chosen: list[int]) -> None:
    assert C.select_versions(policy(text), available) == chosen


def test_version_policy_latest_zero() -> None:
    with pytest.raises(ModelConfigError, match="num_versions >= 1"):
        C.select_versions(policy("latest { num_versions: 0 }"), [1, 2])


def test_version_policy_specific_missing() -> None:
    """As Triton (VersionsToLoad): the named versions that exist load; the others are reported."""
    assert C.select_versions(policy("specific { versions: [4, 1, 6] }"), [1, 2]) == [1]
    assert missing_versions(policy("specific { versions: [4, 1, 6, 4] }"), [1, 2]) == [4, 6]
    assert missing_versions(policy("specific { versions: [1] }"), [1, 2]) == []
    assert missing_versions(policy("latest { num_versions: 5 }"), [1, 2]) == []


def test_version_policy_specific_none_exists() -> None:
    with pytest.raises(ModelConfigError, match=r"none of the versions \[3, 4\] .* has a directory \(found \[1, 2\]\)"):
        C.select_versions(policy("specific { versions: [4, 3] }"), [1, 2])


def test_version_policy_specific_empty() -> None:
    """An empty list would serve nothing and say nothing: it is an error that says so."""
    with pytest.raises(ModelConfigError, match="names no versions"):
        C.select_versions(policy("specific {}"), [1, 2])


# ---- dynamic_batching, checked on the completed config ----

DYNAMIC = [t("x", None, 4)], [t("y", None, 4)]  # a file whose first dimension is dynamic: batched at the default 4


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # max_batch_size left out: completed from the file (4), then checked as if written (they were skipped)
        (
            "dynamic_batching { preferred_batch_size: [64] }",
            "preferred_batch_size [64] must be within 1..max_batch_size (4)",
        ),
        ("dynamic_batching { priority_levels: 3000000 }", "priority_levels 3000000 is above 1024"),
        ("dynamic_batching { max_queue_delay_microseconds: 3600000000 }", "above 60000000 (one minute)"),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 9 }",
            "default_priority_level 9 must be within",
        ),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 1\n"
            "priority_queue_policy { key: 3 value {} } }",
            "priority_queue_policy levels [3] are outside 1..priority_levels (2)",
        ),
        # a model that cannot batch has no preferred batch size (Triton refuses it too)
        ("max_batch_size: 0\ndynamic_batching { preferred_batch_size: [4] }", "must be within 1..max_batch_size (0)"),
        ("max_batch_size: 4\ndynamic_batching { preferred_batch_size: [0, 4] }", "preferred_batch_size [0]"),
    ],
)
def test_dynamic_batching_values_are_checked_whoever_set_max_batch_size(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ModelConfigError, match=re.escape(named)):
        build(text, *DYNAMIC, tmp_path=tmp_path)


def test_priority_queue_policies_need_priority_levels(tmp_path: Path) -> None:
    """Without priority_levels there is one queue under the default policy (as Triton's PriorityQueue): a
    priority_queue_policy is not applied, and the load says so."""
    text = "dynamic_batching { priority_queue_policy { key: 1 value { max_queue_size: 3 } } }"
    spec = build(text, *DYNAMIC, tmp_path=tmp_path)
    assert spec.batching.queue_policies == (C.QueuePolicy(),)
    assert C.batching_hints(spec.config) == [
        "dynamic_batching priority_queue_policy ignored: priority_levels is not set (one queue)"
    ]


def test_dynamic_batching_of_a_model_that_cannot_batch_is_named(tmp_path: Path) -> None:
    text = "max_batch_size: 0\ndynamic_batching { priority_levels: 2 default_priority_level: 1 }"
    spec = build(text, *DYNAMIC, tmp_path=tmp_path)
    assert spec.max_batch_size == 0 and not spec.batching.dynamic
    (hint,) = C.batching_hints(spec.config)
    assert "max_batch_size 0" in hint and "not applied" in hint
    assert C.batching_hints(build("max_batch_size: 4\ndynamic_batching {}", *DYNAMIC, tmp_path=tmp_path).config) == []


# ---- model_warmup samples ----

WARM = [t("x", None, 3)], [t("y", None, 3)]
ONE_SAMPLE = np.array([1.0, 2.0, 3.0], np.float32)


def _warm(tmp_path: Path, sample: str, files: dict[str, bytes]) -> list[C.WarmupSample]:
    for file, data in files.items():
        path = tmp_path / "m" / "warmup" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    spec = build(f"max_batch_size: 8\nmodel_warmup [ {{ name: 'w' {sample} }} ]", *WARM, tmp_path=tmp_path)
    return C.warmup_samples(spec, tmp_path / "m")


def _from_file(file: str, batch_size: int = 3) -> str:
    tensor = f"data_type: TYPE_FP32 dims: [3] input_data_file: '{file}'"
    return f"batch_size: {batch_size} inputs {{ key: 'x' value {{ {tensor} }} }}"


def test_a_warmup_file_holds_one_sample_repeated_over_the_batch(tmp_path: Path) -> None:
    """Triton's layout: the file is one sample, sent batch_size times; a longer file gives its start."""
    (sample,) = _warm(tmp_path, _from_file("x.bin"), {"x.bin": ONE_SAMPLE.tobytes() + b"\0" * 20})
    assert sample.inputs["x"].shape == (3, 3)
    assert (sample.inputs["x"] == ONE_SAMPLE).all()
    (nested,) = _warm(tmp_path, _from_file("in/x.bin", 1), {"in/x.bin": ONE_SAMPLE.tobytes()})
    assert nested.inputs["x"].tolist() == [ONE_SAMPLE.tolist()]


@pytest.mark.parametrize(
    ("file", "data", "named"),
    [
        ("short.bin", b"\0" * 5, "a sample of dims [3] (FP32) needs 12 bytes, warmup/short.bin has 5"),
        ("../escape.bin", b"\0" * 12, "no file warmup/../escape.bin"),
    ],
)
def test_a_warmup_file_that_cannot_serve_is_named(tmp_path: Path, file: str, data: bytes, named: str) -> None:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "warmup").mkdir(exist_ok=True)
    (tmp_path / "m" / "warmup" / file).write_bytes(data)
    with pytest.raises(ModelConfigError, match=re.escape(named)):
        _warm(tmp_path, _from_file(file), {})


def test_a_warmup_sample_must_fit_the_inputs_dims(tmp_path: Path) -> None:
    zeros = "inputs { key: 'x' value { data_type: TYPE_FP32 dims: [2] zero_data: true } }"
    with pytest.raises(ModelConfigError, match=re.escape("'x': dims [2] do not fit the input's dims [3]")):
        _warm(tmp_path, f"batch_size: 1 {zeros}", {})


def test_a_reshaped_warmup_sample_must_fit_the_model_file(tmp_path: Path) -> None:
    """dims [-1] reshaped to [-1] where the ONNX file fixes 4: a sample of 3 is refused naming the shapes (as a
    request of 3 is), not left to fail inside ONNX Runtime; a sample of 4 is reshaped and kept."""
    config = (
        "max_batch_size: 8\ninput [{ name: 'x' data_type: TYPE_FP32 dims: [-1] reshape: { shape: [-1] } }]\n"
        "model_warmup [{ name: 'w' batch_size: 2 inputs { key: 'x' value { data_type: TYPE_FP32 dims: [%d] "
        "zero_data: true } } }]"
    )
    spec = build(config % 3, [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    with pytest.raises(ModelConfigError, match=re.escape("dims [3] reshaped as config.pbtxt says are [3], but the")):
        C.warmup_samples(spec, tmp_path / "m")
    spec = build(config % 4, [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    (sample,) = C.warmup_samples(spec, tmp_path / "m")
    assert sample.inputs["x"].shape == (2, 4)


@pytest.mark.parametrize(
    ("data_type", "named"),
    [("data_type: TYPE_INT32", "data_type TYPE_INT32 is not the input's TYPE_FP32"), ("", "data_type TYPE_INVALID")],
)
def test_a_warmup_sample_has_the_inputs_data_type(tmp_path: Path, data_type: str, named: str) -> None:
    """Triton makes the sample of the type the sample names and the model refuses it: the load fails."""
    zeros = f"inputs {{ key: 'x' value {{ {data_type} dims: [3] zero_data: true }} }}"
    with pytest.raises(ModelConfigError, match=re.escape(named)):
        _warm(tmp_path, f"batch_size: 1 {zeros}", {})


def test_a_warmup_sample_of_batch_size_0_is_skipped(tmp_path: Path) -> None:
    zeros = "inputs { key: 'x' value { data_type: TYPE_FP32 dims: [3] zero_data: true } }"
    assert _warm(tmp_path, f"batch_size: 0 {zeros}", {}) == []
    (sample,) = _warm(tmp_path, f"batch_size: 2 {zeros}", {})
    assert sample.inputs["x"].shape == (2, 3)


@pytest.mark.parametrize(
    ("tensor", "named"),
    [
        ("name: 'x' data_type: TYPE_FP32 dims: [0]", "dim 0 in [0]: a dimension is -1 (any) or 1 or more"),
        ("name: 'x' data_type: TYPE_FP32 dims: [-2]", "dim -2"),
        ("name: 'x' dims: [3]", "tensor 'x' has no data_type"),
    ],
)
def test_a_declared_tensor_needs_a_datatype_and_real_dims(tmp_path: Path, tensor: str, named: str) -> None:
    with pytest.raises(ModelConfigError, match=re.escape(named)):
        build(f"max_batch_size: 8\ninput [{{ {tensor} }}]", *WARM, tmp_path=tmp_path)


# ---- reshape: the shape clients send and the shape the model file has ----

VECTOR = [t("x", None)], [t("y", None)]  # x[N] -> y[N]: nothing after the batch dimension


def test_a_batched_vector_is_completed_as_triton_does(tmp_path: Path) -> None:
    """Triton's AutoCompleteIO: no dims after the batch one is dims [1] with reshape { shape: [] }."""
    spec = build(None, *VECTOR, tmp_path=tmp_path)
    assert spec.max_batch_size == 4
    for tensor in (spec.inputs["x"], spec.outputs["y"]):
        assert tensor.dims == (1,) and tensor.model_dims == ()
    assert list(spec.config.input[0].dims) == [1] and spec.config.input[0].HasField("reshape")
    assert list(spec.config.input[0].reshape.shape) == []


def test_a_triton_written_reshape_loads(tmp_path: Path) -> None:
    text = (
        "max_batch_size: 8\n"
        "input [{ name: 'x' data_type: TYPE_FP32 dims: [1] reshape: { shape: [] } }]\n"
        "output [{ name: 'y' data_type: TYPE_FP32 dims: [1] reshape: { shape: [] } }]"
    )
    spec = build(text, *VECTOR, tmp_path=tmp_path)
    assert spec.inputs["x"].dims == (1,) and spec.inputs["x"].model_dims == ()
    square = build(
        "max_batch_size: 8\ninput [{ name: 'x' data_type: TYPE_FP32 dims: [4] reshape: { shape: [2, 2] } }]\n"
        "output [{ name: 'y' data_type: TYPE_FP32 dims: [-1, 4] reshape: { shape: [-1, 2, 2] } }]",
        [t("x", None, 2, 2)],
        [t("y", None, None, 2, 2)],
        tmp_path=tmp_path,
    )
    assert square.inputs["x"].model_dims == (2, 2) and square.outputs["y"].model_dims == (-1, 2, 2)
    assert square.outputs["y"].to_client((5, 2, 2)) == (5, 4)
    # Triton's rule: as many -1, the k-th of one standing for the k-th of the other
    image = build(
        "max_batch_size: 0\n"
        "input [{ name: 'x' data_type: TYPE_FP32 dims: [3, -1, -1] reshape: { shape: [1, 3, -1, -1] } }]",
        [t("x", 1, 3, None, None)],
        [t("y", 1, 3, None, None)],
        tmp_path=tmp_path,
    )
    assert image.inputs["x"].to_model((3, 224, 160)) == (1, 3, 224, 160)


@pytest.mark.parametrize(
    ("tensor", "named"),
    [
        ("dims: [4] reshape: { shape: [3] }", "reshape [3] does not hold what dims [4] hold"),
        ("dims: [-1, -1] reshape: { shape: [-1] }", "reshape [-1] does not hold what dims [-1, -1] hold"),
        ("dims: [4] reshape: { shape: [-1] }", "reshape [-1] does not hold"),  # a size to a -1: Triton refuses it
        ("dims: [2, -1] reshape: { shape: [-1] }", "reshape [-1] does not hold"),
        ("dims: [4] reshape: { shape: [0, 4] }", "reshape dim 0"),
        ("dims: [4] reshape: { shape: [4, 1] }", "has reshape [4, 1] in config.pbtxt but the ONNX file's shape [4]"),
    ],
)
def test_a_reshape_that_cannot_hold_is_refused(tmp_path: Path, tensor: str, named: str) -> None:
    text = f"max_batch_size: 8\ninput [{{ name: 'x' data_type: TYPE_FP32 {tensor} }}]"
    with pytest.raises(ModelConfigError, match=re.escape(named)):
        build(text, [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)


def test_a_batched_vector_without_reshape_says_what_to_write(tmp_path: Path) -> None:
    text = "max_batch_size: 8\ninput [{ name: 'x' data_type: TYPE_FP32 dims: [1] }]"
    with pytest.raises(ModelConfigError, match=re.escape("dims: [ 1 ] with reshape: { shape: [ ] }")):
        build(text, *VECTOR, tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("text", "dynamic"),
    [
        ("max_batch_size: 8", True),  # Triton's AutoCompleteMaxBatch: its own max_batch_size above 1 too
        ("max_batch_size: 1", False),
        ("max_batch_size: 8\nsequence_batching {}", False),  # a scheduler given: kept (and refused later)
        (None, True),  # the default, 4
    ],
)
def test_auto_complete_turns_dynamic_batching_on_as_triton(tmp_path: Path, text: str | None, dynamic: bool) -> None:
    done = C.complete(
        parse(text or ""),
        name="m",
        inputs=[t("x", None, 4)],
        outputs=[t("y", None, 4)],
        max_batch_size_given=text is not None,
        default_max_batch_size=4,
    )
    assert done.HasField("dynamic_batching") == dynamic


def test_a_config_with_inputs_and_outputs_is_not_completed(tmp_path: Path) -> None:
    text = (
        "max_batch_size: 8\ninput [{ name: 'x' data_type: TYPE_FP32 dims: [4] }]\n"
        "output [{ name: 'y' data_type: TYPE_FP32 dims: [4] }]"
    )
    spec = build(text, [t("x", None, 4)], [t("y", None, 4)], tmp_path=tmp_path)
    assert not spec.config.HasField("dynamic_batching") and not spec.batching.dynamic
