"""Which config.pbtxt fields tensorgate serves. A field we do not implement is never silently
ignored: one that changes results or scheduling fails the load, a performance hint is named in a warning."""

from __future__ import annotations

from tensorgate.errors import ModelConfigError
from tensorgate.model_config.instances import ORT_CUDA_PARAMETERS, ORT_PARAMETERS, ort_parameter_problems
from tensorgate.model_config.limits import LIMIT_PARAMETERS, limit_problems
from tensorgate.proto import model_config_pb2 as mc

PLATFORMS = ("", "onnxruntime_onnx")
BACKENDS = ("", "onnxruntime", "onnx")


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
        if tensor.is_shape_tensor:
            fatal.append(f"tensor {tensor.name!r}: is_shape_tensor is not supported")
        if getattr(tensor, "is_non_linear_format_io", False):
            fatal.append(f"tensor {tensor.name!r}: is_non_linear_format_io is not supported")
    for tensor in config.input:
        if tensor.allow_ragged_batch:
            fatal.append(f"input {tensor.name!r}: allow_ragged_batch is not supported")
        if tensor.format != mc.ModelInput.FORMAT_NONE:
            hints.append(f"input {tensor.name!r}: format is informational only")
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            fatal.append("instance_group kind KIND_MODEL is not supported (use KIND_CPU)")
        if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            fatal.append(
                f"instance_group {group.name or '(unnamed)'!r} has kind KIND_CPU but lists gpus {list(group.gpus)}"
            )
        if any(g < 0 for g in group.gpus):
            fatal.append(
                f"instance_group {group.name or '(unnamed)'!r} lists gpus {list(group.gpus)}: a GPU id is >= 0"
            )
        if group.HasField("rate_limiter") or group.passive or group.host_policy or group.profile:
            hints.append("instance_group rate_limiter/passive/host_policy/profile ignored")
    group_kinds = {g.kind for g in config.instance_group}
    if mc.ModelInstanceGroup.KIND_CPU in group_kinds and len(group_kinds) > 1:
        hints.append(
            "instance_group mixes KIND_CPU with GPU groups: a version runs on one engine, so on a GPU engine the "
            "KIND_CPU instances run on the GPU too"
        )
    if config.HasField("response_cache"):
        hints.append("response_cache is ignored")
    # Triton's ONNX Runtime backend knows one CPU accelerator, OpenVINO (an execution provider that
    # only speeds up), and refuses any other name ("unknown Execution Accelerator").
    for accelerator in config.optimization.execution_accelerators.cpu_execution_accelerator:
        if accelerator.name == "openvino":
            hints.append(
                "cpu_execution_accelerator 'openvino' ignored: tensorgate runs ONNX Runtime's CPU execution "
                "provider on the CPU"
            )
        else:
            fatal.append(f"cpu_execution_accelerator {accelerator.name!r} is not known (Triton's is 'openvino')")
    optimization = mc.ModelOptimizationPolicy()
    optimization.CopyFrom(config.optimization)
    # gpu_execution_accelerator chooses the engine (repository/engine_plan.py); cpu: just above
    optimization.ClearField("execution_accelerators")
    if optimization.ListFields():
        hints.append(f"optimization {', '.join(f.name for f, _ in optimization.ListFields())} ignored")
    # (dynamic_batching's values are checked on the completed config: max_batch_size may come from the file)
    if config.HasField("dynamic_batching") and config.dynamic_batching.preserve_ordering:
        hints.append("dynamic_batching.preserve_ordering ignored (each request has its own RPC)")
    for warmup in config.model_warmup:
        for input_name, spec in warmup.inputs.items():
            if spec.WhichOneof("input_data_type") is None:
                fatal.append(
                    f"model_warmup {warmup.name!r} input {input_name!r}: set zero_data, random_data or input_data_file"
                )
    if config.cc_model_filenames:
        hints.append("cc_model_filenames ignored")
    fatal.extend(ort_parameter_problems(config))
    fatal.extend(limit_problems(config))
    known = {*ORT_PARAMETERS, *ORT_CUDA_PARAMETERS, *LIMIT_PARAMETERS}
    ignored = sorted(k for k in config.parameters if k not in known)
    if ignored:
        hints.append(f"parameters ignored: {', '.join(ignored)}")
    if fatal:
        raise ModelConfigError("; ".join(fatal))
    return hints
