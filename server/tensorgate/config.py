"""Model configuration: Triton's config.pbtxt, completed from the ONNX file and checked against it.

The canonical config is the ``ModelConfig`` protobuf (field names and numbers as Triton's), so a
Triton model repository parses unchanged. :class:`ModelSpec` is the typed view the request path
uses. What we do not implement is never silently ignored: fields that change what a model computes
or how its requests are scheduled fail the load; performance hints are named in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from tensorgate import datatypes
from tensorgate.backends.base import TensorInfo
from tensorgate.datatypes import DataType
from tensorgate.errors import ModelConfigError
from tensorgate.proto import model_config_pb2 as mc

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
PLATFORMS = ("", "onnxruntime_onnx")
BACKENDS = ("", "onnxruntime", "onnx")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as requests see it; ``dims`` exclude the batch dim, -1 is any size."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    optional: bool = False

    @cached_property
    def fixed_dims(self) -> tuple[int, ...] | None:
        """``dims`` when none is -1 (a shape check is then one tuple comparison), else None."""
        return None if -1 in self.dims else self.dims


@dataclass(frozen=True)
class ModelSpec:
    """What the request path needs to know of one loaded model version."""

    name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    config: mc.ModelConfig = field(compare=False)

    @cached_property
    def batched(self) -> bool:
        return self.max_batch_size > 0


def read_config(model_dir: Path) -> tuple[mc.ModelConfig, bool]:
    """Parse ``config.pbtxt`` if present. Returns the config and whether max_batch_size was given
    (proto3 cannot tell an explicit 0 from an absent field, and Triton treats them differently)."""
    path = model_dir / CONFIG_FILE
    config = mc.ModelConfig()
    if not path.is_file():
        return config, False
    try:
        text = path.read_text(encoding="utf-8")
        text_format.Parse(text, config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{CONFIG_FILE} does not parse: {exc}") from exc
    return config, _sets_max_batch_size(text)


def _sets_max_batch_size(text: str) -> bool:
    """Whether parsed config text sets max_batch_size at its top level (a comment does not count)."""
    tokenizer = text_format.Tokenizer(text.splitlines())
    depth = 0
    while not tokenizer.AtEnd():
        token = tokenizer.token
        if token in ("{", "[", "<"):
            depth += 1
        elif token in ("}", "]", ">"):
            depth -= 1
        elif depth == 0 and token == "max_batch_size":
            return True
        tokenizer.NextToken()
    return False


def check_supported(config: mc.ModelConfig) -> list[str]:
    """Raise for fields that change results or scheduling; return warnings for ignored hints."""
    fatal: list[str] = []
    hints: list[str] = []
    if config.platform not in PLATFORMS:
        fatal.append(f"platform {config.platform!r} is not served (tensorgate runs ONNX models: onnxruntime_onnx)")
    if config.backend not in BACKENDS:
        fatal.append(f"backend {config.backend!r} is not served (tensorgate runs ONNX models: onnxruntime)")
    if config.runtime:
        fatal.append(f"runtime {config.runtime!r} is not supported")
    for name in ("sequence_batching", "ensemble_scheduling"):
        if config.HasField(name):
            fatal.append(f"{name} is not supported")
    if config.batch_input or config.batch_output:
        fatal.append("batch_input/batch_output are not supported")
    if config.model_transaction_policy.decoupled:
        fatal.append("decoupled models (model_transaction_policy) are not supported")
    if config.HasField("model_repository_agents") and config.model_repository_agents.agents:
        fatal.append("model_repository_agents are not supported")
    for tensor in (*config.input, *config.output):
        if tensor.HasField("reshape"):
            fatal.append(f"tensor {tensor.name!r}: reshape is not supported")
        if tensor.is_shape_tensor:
            fatal.append(f"tensor {tensor.name!r}: is_shape_tensor is not supported")
        if getattr(tensor, "is_non_linear_format_io", False):
            fatal.append(f"tensor {tensor.name!r}: is_non_linear_format_io is not supported")
    for tensor in config.input:
        if tensor.allow_ragged_batch:
            fatal.append(f"input {tensor.name!r}: allow_ragged_batch is not supported")
        if tensor.format != mc.ModelInput.FORMAT_NONE:
            hints.append(f"input {tensor.name!r}: format is informational only")
    for tensor in config.output:
        if tensor.label_filename:
            hints.append(f"output {tensor.name!r}: label_filename ignored (classification extension not implemented)")
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            fatal.append("instance_group kind KIND_MODEL is not supported (use KIND_CPU)")
        if group.HasField("rate_limiter") or group.passive or group.host_policy or group.profile:
            hints.append("instance_group rate_limiter/passive/host_policy/profile ignored")
    for name in ("response_cache", "model_operations"):
        if config.HasField(name):
            hints.append(f"{name} is ignored")
    optimization = mc.ModelOptimizationPolicy()
    optimization.CopyFrom(config.optimization)
    optimization.ClearField("execution_accelerators")  # chooses the engine (engines.py)
    if optimization.ListFields():
        hints.append(f"optimization {', '.join(f.name for f, _ in optimization.ListFields())} ignored")
    if config.HasField("dynamic_batching"):
        fatal.extend(_batching_problems(config))
        if config.dynamic_batching.preserve_ordering:
            hints.append("dynamic_batching.preserve_ordering ignored (each request has its own RPC)")
    for warmup in config.model_warmup:
        for input_name, spec in warmup.inputs.items():
            if spec.WhichOneof("input_data_type") is None:
                fatal.append(
                    f"model_warmup {warmup.name!r} input {input_name!r}: set zero_data, random_data or input_data_file"
                )
    if config.cc_model_filenames:
        hints.append("cc_model_filenames ignored")
    fatal.extend(_ort_parameter_problems(config))
    ignored = sorted(k for k in config.parameters if k not in ORT_PARAMETERS)
    if ignored:
        hints.append(f"parameters ignored: {', '.join(ignored)}")
    if fatal:
        raise ModelConfigError("; ".join(fatal))
    return hints


def _batching_problems(config: mc.ModelConfig) -> list[str]:
    db = config.dynamic_batching
    problems: list[str] = []
    if config.max_batch_size == 0:
        return problems  # Triton ignores the dynamic batcher of a model that cannot batch
    too_big = [p for p in db.preferred_batch_size if p < 1 or p > config.max_batch_size]
    if too_big:
        problems.append(
            f"dynamic_batching preferred_batch_size {too_big} must be within 1..max_batch_size "
            f"({config.max_batch_size})"
        )
    if db.priority_levels and not 1 <= db.default_priority_level <= db.priority_levels:
        problems.append(
            f"dynamic_batching default_priority_level {db.default_priority_level} must be within "
            f"1..priority_levels ({db.priority_levels})"
        )
    outside = sorted(k for k in db.priority_queue_policy if not 1 <= k <= max(1, db.priority_levels))
    if outside:
        problems.append(
            f"dynamic_batching priority_queue_policy levels {outside} are outside 1..priority_levels "
            f"({db.priority_levels})"
        )
    return problems


def warmup_batches(
    config: mc.ModelConfig, spec: ModelSpec, model_dir: Path
) -> list[tuple[str, dict[str, np.ndarray], int]]:
    """The model_warmup samples as (name, inputs, count), ready to execute. Data files are read from
    ``<model>/warmup/``; random data is seeded, so every instance warms up on the same values."""
    rng = np.random.default_rng(0)
    batches: list[tuple[str, dict[str, np.ndarray], int]] = []
    for warmup in config.model_warmup:
        rows = max(1, warmup.batch_size)
        if spec.batched and rows > spec.max_batch_size:
            raise ModelConfigError(f"model_warmup {warmup.name!r}: batch_size {rows} exceeds max_batch_size")
        arrays: dict[str, np.ndarray] = {}
        for name, sample in warmup.inputs.items():
            tensor = spec.inputs.get(name)
            if tensor is None:
                raise ModelConfigError(f"model_warmup {warmup.name!r} names input {name!r}, which the model lacks")
            shape = ((rows,) if spec.batched else ()) + tuple(sample.dims)
            dtype = tensor.datatype
            which = sample.WhichOneof("input_data_type")
            count = int(np.prod(shape, dtype=np.int64))
            if which == "input_data_file":
                path = model_dir / "warmup" / sample.input_data_file
                if "/" in sample.input_data_file or not path.is_file():
                    raise ModelConfigError(f"model_warmup {warmup.name!r}: no file warmup/{sample.input_data_file}")
                raw = path.read_bytes()
                if dtype.is_bytes:
                    arrays[name] = datatypes.deserialize_bytes(raw, count).reshape(shape)
                else:
                    arrays[name] = np.frombuffer(raw, dtype=dtype.numpy, count=count).reshape(shape)
            elif which == "random_data" and not dtype.is_bytes and dtype.v2 != "BOOL":
                arrays[name] = rng.integers(0, 8, size=shape).astype(dtype.numpy)
            elif dtype.is_bytes:
                arrays[name] = np.full(shape, b"", dtype=np.object_)
            else:
                arrays[name] = np.zeros(shape, dtype=dtype.numpy)
        batches.append((warmup.name, arrays, max(1, warmup.count)))
    return batches


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


def complete(
    config: mc.ModelConfig,
    *,
    name: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    max_batch_size_given: bool,
    default_max_batch_size: int,
) -> mc.ModelConfig:
    """Fill what config.pbtxt leaves out from the ONNX file, as Triton's auto-complete does."""
    done = mc.ModelConfig()
    done.CopyFrom(config)
    if done.name and done.name != name:
        raise ModelConfigError(f"config.pbtxt names the model {done.name!r} but its directory is {name!r}")
    done.name = name
    if not done.platform and not done.backend:
        done.backend = "onnxruntime"
    if (
        not max_batch_size_given
        and not done.input
        and not done.output
        and _supports_batching((*inputs, *outputs))
        and default_max_batch_size > 0
    ):
        done.max_batch_size = default_max_batch_size
        if not done.HasField("dynamic_batching") and default_max_batch_size > 1:
            # As Triton's auto-complete: a model that batches by default also batches dynamically.
            done.dynamic_batching.SetInParent()
    strip = done.max_batch_size > 0
    if not done.input:
        _fill(done.input, inputs, strip)
    if not done.output:
        _fill(done.output, outputs, strip)
    if not done.instance_group:
        group = done.instance_group.add()
        group.count = 1
        group.kind = mc.ModelInstanceGroup.KIND_AUTO  # resolved once the engine is chosen
    for group in done.instance_group:
        if group.count < 1:
            group.count = 1
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
    if len(shape) != len(spec.dims):
        raise ModelConfigError(
            f"{what} has dims {list(spec.dims)} in config.pbtxt but the ONNX file's shape "
            f"{['?' if d is None else d for d in shape]} has rank {len(shape)}"
            + (" (after the batch dimension)" if batched else "")
        )
    dims: list[int] = []
    for want, have in zip(spec.dims, shape, strict=True):
        if want != -1 and have is not None and want != have:
            raise ModelConfigError(
                f"{what} has dims {list(spec.dims)} in config.pbtxt, which contradicts the ONNX file's "
                f"{['?' if d is None else d for d in shape]}"
            )
        dims.append(have if want == -1 and have is not None else want)
    return TensorSpec(spec.name, spec.datatype, tuple(dims), spec.optional)


def _spec_of(tensor: mc.ModelInput | mc.ModelOutput, optional: bool) -> TensorSpec:
    type_name = mc.DataType.Name(tensor.data_type)
    if type_name not in datatypes.BY_CONFIG:
        raise ModelConfigError(f"tensor {tensor.name!r} has data_type {type_name}, which is not supported")
    for d in tensor.dims:
        if d < -1:
            raise ModelConfigError(f"tensor {tensor.name!r} has invalid dim {d}")
    return TensorSpec(tensor.name, datatypes.BY_CONFIG[type_name], tuple(tensor.dims), optional)


def validate(config: mc.ModelConfig, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> ModelSpec:
    """Check a completed config against the ONNX file and build the request-path view."""
    if config.max_batch_size < 0:
        raise ModelConfigError(f"max_batch_size must be >= 0, not {config.max_batch_size}")
    batched = config.max_batch_size > 0
    onnx_inputs = {t.name: t for t in inputs}
    onnx_outputs = {t.name: t for t in outputs}
    spec_inputs: dict[str, TensorSpec] = {}
    for tensor in config.input:
        if tensor.name in spec_inputs:
            raise ModelConfigError(f"input {tensor.name!r} appears twice in config.pbtxt")
        if tensor.name not in onnx_inputs:
            raise ModelConfigError(
                f"config.pbtxt declares input {tensor.name!r}, which the ONNX file does not have "
                f"(it has {sorted(onnx_inputs)})"
            )
        spec_inputs[tensor.name] = _check_tensor(
            "input", _spec_of(tensor, tensor.optional), onnx_inputs[tensor.name], batched
        )
    missing = sorted(set(onnx_inputs) - set(spec_inputs))
    if missing:
        raise ModelConfigError(f"the ONNX file needs inputs {missing}, which config.pbtxt does not declare")
    spec_outputs: dict[str, TensorSpec] = {}
    for tensor in config.output:
        if tensor.name in spec_outputs:
            raise ModelConfigError(f"output {tensor.name!r} appears twice in config.pbtxt")
        if tensor.name not in onnx_outputs:
            raise ModelConfigError(
                f"config.pbtxt declares output {tensor.name!r}, which the ONNX file does not have "
                f"(it has {sorted(onnx_outputs)})"
            )
        spec_outputs[tensor.name] = _check_tensor("output", _spec_of(tensor, False), onnx_outputs[tensor.name], batched)
    return ModelSpec(config.name, config.max_batch_size, spec_inputs, spec_outputs, config)


def model_filename(config: mc.ModelConfig) -> str:
    name = config.default_model_filename or DEFAULT_MODEL_FILE
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ModelConfigError(f"default_model_filename {name!r} must be a plain file name")
    return name


# Triton's ONNX Runtime backend reads these from the model's `parameters` (string values): the
# threads of each instance's session and whether independent operators may run in parallel.
ORT_PARAMETERS: dict[str, tuple[int, int]] = {  # name -> allowed range
    "intra_op_thread_count": (0, 1024),  # 0: ONNX Runtime's default (one per core)
    "inter_op_thread_count": (0, 1024),
    "execution_mode": (0, 1),  # 0 sequential, 1 parallel
}


@dataclass(frozen=True)
class OrtParameters:
    """The ONNX Runtime session settings a config asks for; None where it leaves the choice to us."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    parallel_execution: bool = False


def _ort_parameter_problems(config: mc.ModelConfig) -> list[str]:
    problems = []
    for key, (low, high) in ORT_PARAMETERS.items():
        if key not in config.parameters:
            continue
        text = config.parameters[key].string_value.strip()
        if not text.isdigit() or not low <= int(text) <= high:
            problems.append(f"parameters {key!r} must be an integer from {low} to {high} in string_value, not {text!r}")
    return problems


def ort_parameters(config: mc.ModelConfig) -> OrtParameters:
    """The ONNX Runtime settings of a config already passed by check_supported."""

    def value(key: str) -> int | None:
        return int(config.parameters[key].string_value) if key in config.parameters else None

    return OrtParameters(
        intra_op_threads=value("intra_op_thread_count"),
        inter_op_threads=value("inter_op_thread_count"),
        parallel_execution=value("execution_mode") == 1,
    )


def instance_count(config: mc.ModelConfig) -> int:
    return sum(max(1, g.count) for g in config.instance_group) or 1
