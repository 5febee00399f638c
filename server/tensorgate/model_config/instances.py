"""The instances of a model version: how many, where they may run (instance_group, the TensorRT
accelerator) and the ONNX Runtime session settings Triton's ``parameters`` ask for (threads, and the
CUDA execution provider's options)."""

from __future__ import annotations

from dataclasses import dataclass

from tensorgate.backends.base import Precision
from tensorgate.errors import ModelConfigError
from tensorgate.model_config.limits import integer_parameter, integer_parameter_problems
from tensorgate.proto import model_config_pb2 as mc

# Triton's ONNX Runtime backend reads these from the model's `parameters` (string values): the
# threads of each instance's session and whether independent operators may run in parallel.
ORT_PARAMETERS: dict[str, tuple[int, int]] = {  # name -> allowed range
    "intra_op_thread_count": (0, 1024),  # 0: ONNX Runtime's default (one per core)
    "inter_op_thread_count": (0, 1024),
    "execution_mode": (0, 1),  # 0 sequential, 1 parallel
}


# Triton's ONNX Runtime backend reads these CUDA execution provider settings from the model's
# `parameters` too (integers in string values; Triton's README calls this form deprecated but keeps
# it): name -> allowed range, and the ONNX Runtime option value each integer stands for.
ORT_CUDA_PARAMETERS: dict[str, tuple[int, int]] = {
    "cudnn_conv_algo_search": (0, 2),  # 0 EXHAUSTIVE, 1 HEURISTIC, 2 DEFAULT
    "gpu_mem_limit": (0, 2**64 - 1),  # bytes
    "arena_extend_strategy": (0, 1),  # 0 kNextPowerOfTwo, 1 kSameAsRequested
    "do_copy_in_default_stream": (0, 1),
}
_ORT_CUDA_VALUES: dict[str, tuple[str, ...]] = {
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
}
# CUDA provider options tensorgate sets itself for each instance; a config may not.
RESERVED_CUDA_OPTIONS = ("device_id", "user_compute_stream", "has_user_compute_stream")


@dataclass(frozen=True)
class OrtParameters:
    """The ONNX Runtime session settings a config asks for; None where it leaves the choice to us.

    ``cuda``: CUDA execution provider options (ONNX Runtime's names and string values), from the
    ``parameters`` above and from a ``gpu_execution_accelerator { name: "cuda" }``, whose
    parameters are ONNX Runtime's own option names (Triton's form), in that order (later wins)."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    parallel_execution: bool = False
    cuda: tuple[tuple[str, str], ...] = ()
    op_libraries: tuple[str, ...] = ()  # model_operations.op_library_filename: custom-op libraries to register


@dataclass(frozen=True)
class InstanceGroup:
    """One ``instance_group``: ``count`` instances of ``kind``, on each of ``gpus`` on a GPU."""

    count: int = 1
    kind: int = mc.ModelInstanceGroup.KIND_AUTO
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class InstanceSettings:
    """Where and how a model version's instances run, as its config asks."""

    count: int = 1  # instances on the CPU (each group's count, summed)
    cpu_only: bool = False  # every instance_group is KIND_CPU
    gpus: tuple[int, ...] = ()  # the GPUs instance_group names (none: every GPU)
    tensorrt: bool = False  # optimization.execution_accelerators asks for TensorRT
    precision: Precision | None = None  # the TensorRT precision_mode it asks for
    ort: OrtParameters = OrtParameters()
    groups: tuple[InstanceGroup, ...] = ()  # as config.pbtxt gives them (none: Triton's default group)

    def gpu_devices(self, visible: int) -> tuple[int, ...]:
        """The CUDA device of each instance when the version runs on a GPU engine, as Triton places
        them: a group's ``count`` instances on EACH GPU it lists, on every one of the ``visible``
        GPUs where it lists none (so the default, no instance_group, is one instance per GPU). A
        KIND_CPU group of a config that also has GPU groups runs its instances on the GPU engine too
        (one engine per version), on the first GPU of the others."""
        if visible <= 0:
            return ()
        groups = self.groups or (InstanceGroup(),)
        every = tuple(range(visible))
        devices: list[int] = []
        cpu_instances = 0
        for group in groups:
            if group.kind == mc.ModelInstanceGroup.KIND_CPU:
                cpu_instances += group.count
                continue
            for gpu in group.gpus or every:
                devices.extend([gpu] * group.count)
        first = devices[0] if devices else 0
        return tuple(devices) + (first,) * cpu_instances

    def intra_op_threads(self, cores: int) -> int:
        """Threads of each instance's session: one instance lets ONNX Runtime use every core (0);
        several share the cores so they don't oversubscribe; the config's parameter wins."""
        if self.ort.intra_op_threads is not None:
            return self.ort.intra_op_threads
        return 0 if self.count == 1 else max(1, cores // self.count)

    @property
    def inter_op_threads(self) -> int:
        return 1 if self.ort.inter_op_threads is None else self.ort.inter_op_threads


def instance_count(config: mc.ModelConfig) -> int:
    return sum(max(1, g.count) for g in config.instance_group) or 1


def instance_settings(config: mc.ModelConfig) -> InstanceSettings:
    """The instance settings of a config already passed by ``check_supported``."""
    kinds = {g.kind for g in config.instance_group} or {mc.ModelInstanceGroup.KIND_AUTO}
    tensorrt, precision = _accelerator(config)
    return InstanceSettings(
        count=instance_count(config),
        cpu_only=kinds == {mc.ModelInstanceGroup.KIND_CPU},
        gpus=tuple(dict.fromkeys(g for group in config.instance_group for g in group.gpus)),
        tensorrt=tensorrt,
        precision=precision,
        ort=ort_parameters(config),
        groups=tuple(InstanceGroup(max(1, g.count), g.kind, tuple(g.gpus)) for g in config.instance_group),
    )


def _accelerator(config: mc.ModelConfig) -> tuple[bool, Precision | None]:
    """Whether config.pbtxt asks for TensorRT, and in which precision (a "cuda" accelerator only
    sets ONNX Runtime's CUDA options: ``ort_parameters``)."""
    tensorrt, precision = False, None
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "cuda":
            continue
        if accelerator.name != "tensorrt":
            raise ModelConfigError(
                f"gpu_execution_accelerator {accelerator.name!r} is not supported ('tensorrt' or 'cuda')"
            )
        mode = accelerator.parameters.get("precision_mode", "").upper()
        if mode not in ("", "FP16", "FP32"):
            raise ModelConfigError(f"tensorrt precision_mode {mode!r} is not supported (FP16 or FP32)")
        if not tensorrt:
            tensorrt, precision = True, Precision(mode.lower()) if mode else None
    return tensorrt, precision


def cuda_accelerator_problems(config: mc.ModelConfig) -> list[str]:
    """What is wrong with a ``gpu_execution_accelerator { name: "cuda" }``'s parameters."""
    problems = []
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name != "cuda":
            continue
        for key, value in accelerator.parameters.items():
            if key in RESERVED_CUDA_OPTIONS:
                problems.append(f"cuda accelerator parameter {key!r} is set by tensorgate for each instance")
            elif not key or not value.strip():
                problems.append(f"cuda accelerator parameter {key!r} needs a value")
    return problems


def ort_parameter_problems(config: mc.ModelConfig) -> list[str]:
    return (
        integer_parameter_problems(config, ORT_PARAMETERS)
        + integer_parameter_problems(config, ORT_CUDA_PARAMETERS)
        + cuda_accelerator_problems(config)
    )


def ort_parameters(config: mc.ModelConfig) -> OrtParameters:
    """The ONNX Runtime settings of a config already passed by check_supported."""
    return OrtParameters(
        intra_op_threads=integer_parameter(config, "intra_op_thread_count"),
        inter_op_threads=integer_parameter(config, "inter_op_thread_count"),
        parallel_execution=integer_parameter(config, "execution_mode") == 1,
        cuda=ort_cuda_options(config),
        op_libraries=tuple(config.model_operations.op_library_filename),
    )


def ort_cuda_options(config: mc.ModelConfig) -> tuple[tuple[str, str], ...]:
    """The CUDA execution provider options a config asks for, as ONNX Runtime names them: the
    integer ``parameters`` Triton reads (mapped to ONNX Runtime's values), then the parameters of a
    "cuda" accelerator, passed as they are (ONNX Runtime checks them when the session starts)."""
    options: dict[str, str] = {}
    for key in ORT_CUDA_PARAMETERS:
        value = integer_parameter(config, key)
        if value is None:
            continue
        names = _ORT_CUDA_VALUES.get(key)
        options[key] = names[value] if names is not None else str(value)
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "cuda":
            options.update((k, v.strip()) for k, v in sorted(accelerator.parameters.items()))
    return tuple(options.items())
