"""Completion and validation: config.pbtxt filled from the ONNX file (as Triton's auto-complete
does), then checked against it and turned into the typed :class:`ModelSpec`."""

from __future__ import annotations

from collections.abc import Sequence

from tensorgate import datatypes
from tensorgate.backends.base import TensorInfo
from tensorgate.datatypes import DataType
from tensorgate.errors import ModelConfigError, clip
from tensorgate.model_config.batching import batching_policy, batching_problems
from tensorgate.model_config.instances import instance_settings
from tensorgate.model_config.limits import limits
from tensorgate.model_config.parse import DEFAULT_MODEL_FILE
from tensorgate.model_config.spec import ModelSpec, RawConfig, TensorSpec
from tensorgate.proto import model_config_pb2 as mc


def _onnx_datatype(info: TensorInfo) -> DataType:
    try:
        return datatypes.BY_ONNX[info.onnx_type]
    except KeyError:
        raise ModelConfigError(f"tensor {info.name!r} has ONNX type {info.onnx_type}, which is not served") from None


def _supports_batching(infos: Sequence[TensorInfo]) -> bool:
    return all(len(t.shape) >= 1 and t.shape[0] is None for t in infos)


def _fill(target: object, infos: Sequence[TensorInfo], strip_batch: bool) -> None:
    for info in infos:
        tensor = target.add()  # type: ignore[attr-defined]
        tensor.name = info.name
        tensor.data_type = mc.DataType.Value(_onnx_datatype(info).config)
        shape = info.shape[1:] if strip_batch else info.shape
        tensor.dims.extend(-1 if d is None else d for d in shape)
        if not shape:  # Triton's AutoCompleteIO: no dims is dims [1], reshaped to [] when batched
            tensor.dims.append(1)
            if strip_batch:
                tensor.reshape.SetInParent()


def complete(
    config: mc.ModelConfig,
    *,
    name: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    max_batch_size_given: bool,
    default_max_batch_size: int,
    auto_complete_allowed: bool = True,
) -> mc.ModelConfig:
    """Fill what config.pbtxt leaves out from the ONNX file, as Triton's auto-complete does (unless
    ``auto_complete_allowed`` is false: --disable-auto-complete-config)."""
    done = mc.ModelConfig()
    done.CopyFrom(config)
    if done.name and done.name != name:
        raise ModelConfigError(f"config.pbtxt names the model {clip(done.name)!r} but its directory is {name!r}")
    done.name = name
    # As Triton's AutoCompleteBackendFields and NormalizeInstanceGroup, so ModelConfig reads as
    # Triton's does (tools such as model_analyzer read its platform): both the platform and the
    # backend, the model file name, and a name for each instance group.
    if not done.platform and not done.backend:
        done.backend = "onnxruntime"
    if done.backend == "onnxruntime" and not done.platform:
        done.platform = "onnxruntime_onnx"
    if done.platform == "onnxruntime_onnx" and not done.backend:
        done.backend = "onnxruntime"
    if not done.default_model_filename:
        done.default_model_filename = DEFAULT_MODEL_FILE
    # Triton's ONNX Runtime backend (src/onnxruntime.cc, ModelState::AutoCompleteConfig and
    # AutoCompleteMaxBatch): nothing is completed when config.pbtxt gives inputs (batch_input
    # counting as inputs) AND outputs. Otherwise, when every input and output of the ONNX file has a
    # dynamic first dimension and max_batch_size is not given, max_batch_size becomes the default
    # (--default-max-batch-size, 4), and a default above 1 turns dynamic batching on unless the
    # config has a scheduler; then the inputs, if none are given, and the outputs, if none are
    # given, are filled from the file (without the batch dimension when max_batch_size > 0).
    # A tensor with no dims gets dims [1], reshaped to [] when batched (AutoCompleteIO).
    # Where tensorgate differs: Triton cannot tell "max_batch_size: 0" from no max_batch_size
    # (proto3), and fills both; tensorgate keeps an explicit 0.
    if not auto_complete_allowed and not ((done.input or done.batch_input) and done.output):
        raise ModelConfigError(
            f"config.pbtxt declares {len(done.input)} inputs and {len(done.output)} outputs: with "
            "--disable-auto-complete-config nothing is filled in from the ONNX file, so a model's config.pbtxt "
            "must declare its inputs and outputs"
        )
    auto_complete = not ((done.input or done.batch_input) and done.output)
    required = [t for t in inputs if not t.optional]  # overridable initializers are not filled in
    batches = auto_complete and _supports_batching((*required, *outputs))
    if batches and not max_batch_size_given and default_max_batch_size > 0:
        done.max_batch_size = default_max_batch_size
    if batches and done.max_batch_size > 1 and done.WhichOneof("scheduling_choice") is None:
        # As Triton's AutoCompleteMaxBatch: a model that batches (the default or its own
        # max_batch_size) also batches dynamically.
        done.dynamic_batching.SetInParent()
    if done.HasField("dynamic_batching") and not done.dynamic_batching.preferred_batch_size and done.max_batch_size > 0:
        # Triton's NormalizeModelConfig: no preferred size is the largest batch (what the queue does with none).
        done.dynamic_batching.preferred_batch_size.append(done.max_batch_size)
    strip = done.max_batch_size > 0
    if not done.input:
        _fill(done.input, required, strip)
    if not done.output:
        _fill(done.output, outputs, strip)
    if not done.instance_group:
        group = done.instance_group.add()
        group.name = name  # as Triton names the group it adds; a group of config.pbtxt without a name: <model>_<i>
        group.count = 1
        group.kind = mc.ModelInstanceGroup.KIND_AUTO  # resolved once the engine is chosen
    for index, group in enumerate(done.instance_group):
        if group.count < 1:
            group.count = 1
        if not group.name:
            group.name = f"{name}_{index}"
    if not done.HasField("version_policy"):
        done.version_policy.latest.num_versions = 1
    return done


def _check_tensor(kind: str, spec: TensorSpec, info: TensorInfo, batched: bool) -> TensorSpec:
    what = f"{kind} {spec.name!r}"
    actual = _onnx_datatype(info)
    if actual != spec.datatype:
        raise ModelConfigError(f"{what} is {spec.datatype.config} in config.pbtxt but {actual.config} in the ONNX file")
    shape = info.shape
    if batched:
        if not shape or shape[0] is not None:
            first = shape[0] if shape else "a scalar"
            raise ModelConfigError(
                f"{what}: max_batch_size > 0 needs a dynamic first dimension in the ONNX file, which has {first}; "
                "set max_batch_size: 0 or export the model with a dynamic batch axis"
            )
        shape = shape[1:]
    model_dims = spec.reshape
    if model_dims is None and not batched and not shape and spec.dims == (1,):
        model_dims = ()  # Triton's form for a scalar of a model that does not batch: dims [1], no reshape
    engine = spec.dims if model_dims is None else model_dims
    named = f"dims {list(engine)}" if model_dims is None else f"reshape {list(engine)}"
    file_shape = ["?" if d is None else d for d in shape]
    if len(shape) != len(engine):
        hint = ""
        if batched and not shape and model_dims is None:
            hint = "; a tensor with no dims after the batch one takes dims: [ 1 ] with reshape: { shape: [ ] }"
        raise ModelConfigError(
            f"{what} has {named} in config.pbtxt but the ONNX file's shape {file_shape} has rank {len(shape)}"
            + (" (after the batch dimension)" if batched else "")
            + hint
        )
    dims: list[int] = []
    for want, have in zip(engine, shape, strict=True):
        if want != -1 and have is not None and want != have:
            raise ModelConfigError(
                f"{what} has {named} in config.pbtxt, which contradicts the ONNX file's {file_shape}"
            )
        dims.append(have if want == -1 and have is not None else want)
    if model_dims is None:
        return TensorSpec(spec.name, spec.datatype, tuple(dims), spec.optional)
    return TensorSpec(spec.name, spec.datatype, spec.dims, spec.optional, reshape=model_dims, model_dims=tuple(dims))


def _spec_of(tensor: mc.ModelInput | mc.ModelOutput, optional: bool) -> TensorSpec:
    type_name = mc.DataType.Name(tensor.data_type)
    if tensor.data_type == mc.TYPE_INVALID:
        raise ModelConfigError(f"tensor {tensor.name!r} has no data_type (e.g. data_type: TYPE_FP32)")
    if type_name not in datatypes.BY_CONFIG:
        raise ModelConfigError(f"tensor {tensor.name!r} has data_type {type_name}, which is not supported")
    dims = tuple(tensor.dims)
    model_dims = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
    for what, values in (("dim", dims), ("reshape dim", model_dims or ())):
        for d in values:
            if d < -1 or d == 0:
                raise ModelConfigError(
                    f"tensor {tensor.name!r} has {what} {d} in {list(values)}: a dimension is -1 (any) or 1 or more"
                )
    if model_dims is not None and _runs(dims) != _runs(model_dims):
        # Triton's ValidateIOShape: the same -1s, and as many elements between them.
        raise ModelConfigError(
            f"tensor {tensor.name!r}: reshape {list(model_dims)} does not hold what dims {list(dims)} hold "
            "(each needs the same number of -1, and as many elements before, between and after them)"
        )
    return TensorSpec(tensor.name, datatypes.BY_CONFIG[type_name], dims, optional, reshape=model_dims)


def _runs(dims: tuple[int, ...]) -> list[int]:
    """The element counts of the fixed sizes before, between and after the -1s of ``dims``."""
    runs = [1]
    for d in dims:
        if d == -1:
            runs.append(1)
        else:
            runs[-1] *= d
    return runs


def _declared(
    kind: str,
    declared: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    infos: Sequence[TensorInfo],
    batched: bool,
) -> dict[str, TensorSpec]:
    """The inputs or outputs config.pbtxt declares, each checked against the ONNX file's."""
    in_file = {t.name: t for t in infos}
    specs: dict[str, TensorSpec] = {}
    for tensor in declared:
        if tensor.name in specs:
            raise ModelConfigError(f"{kind} {tensor.name!r} appears twice in config.pbtxt")
        if tensor.name not in in_file:
            raise ModelConfigError(
                f"config.pbtxt declares {kind} {tensor.name!r}, which the ONNX file does not have "
                f"(it has {sorted(in_file)})"
            )
        optional = isinstance(tensor, mc.ModelInput) and tensor.optional
        if optional and batched:  # as Triton: requests of a batch must all give the same inputs
            raise ModelConfigError(f"optional input {tensor.name!r} is not supported for models that support batching")
        if optional and not in_file[tensor.name].optional:
            raise ModelConfigError(
                f"input {tensor.name!r} is optional in config.pbtxt but the ONNX file needs it in every run "
                "(only an initializer the file lets a request override can be optional)"
            )
        specs[tensor.name] = _check_tensor(kind, _spec_of(tensor, optional), in_file[tensor.name], batched)
    return specs


def validate(config: mc.ModelConfig, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> ModelSpec:
    """Check a completed config against the ONNX file and build the request-path view."""
    if config.max_batch_size < 0:
        raise ModelConfigError(f"max_batch_size must be >= 0, not {config.max_batch_size}")
    problems = batching_problems(config)
    if problems:
        raise ModelConfigError("; ".join(problems))
    batched = config.max_batch_size > 0
    spec_inputs = _declared("input", config.input, inputs, batched)
    missing = sorted({t.name for t in inputs if not t.optional} - set(spec_inputs))
    if missing:
        raise ModelConfigError(f"the ONNX file needs inputs {missing}, which config.pbtxt does not declare")
    spec_outputs = _declared("output", config.output, outputs, batched)
    return ModelSpec(
        config.name,
        config.max_batch_size,
        spec_inputs,
        spec_outputs,
        config,
        batching=batching_policy(config),
        instances=instance_settings(config),
        limits=limits(config),
    )


def model_spec(
    raw: RawConfig,
    *,
    name: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    default_max_batch_size: int,
    gpu: bool,
    auto_complete_allowed: bool = True,
) -> ModelSpec:
    """The spec of one model version: its config completed from the model file's tensors, KIND_AUTO
    instance groups resolved to where the chosen engine runs (``gpu``), checked against the file."""
    completed = complete(
        raw.config,
        name=name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size_given=raw.max_batch_size_given,
        default_max_batch_size=default_max_batch_size,
        auto_complete_allowed=auto_complete_allowed,
    )
    for group in completed.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    return validate(completed, inputs, outputs)
