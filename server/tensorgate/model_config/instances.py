"""The instances of a model version: how many, where they may run (instance_group, the TensorRT
accelerator) and the ONNX Runtime session settings Triton's ``parameters`` ask for."""

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


@dataclass(frozen=True)
class OrtParameters:
    """The ONNX Runtime session settings a config asks for; None where it leaves the choice to us."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    parallel_execution: bool = False


@dataclass(frozen=True)
class InstanceSettings:
    """Where and how a model version's instances run, as its config asks."""

    count: int = 1
    cpu_only: bool = False  # every instance_group is KIND_CPU
    gpus: tuple[int, ...] = ()  # the GPUs instance_group names (none: the first)
    tensorrt: bool = False  # optimization.execution_accelerators asks for TensorRT
    precision: Precision | None = None  # the TensorRT precision_mode it asks for
    ort: OrtParameters = OrtParameters()

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
        gpus=tuple(g for group in config.instance_group for g in group.gpus),
        tensorrt=tensorrt,
        precision=precision,
        ort=ort_parameters(config),
    )


def _accelerator(config: mc.ModelConfig) -> tuple[bool, Precision | None]:
    """Whether config.pbtxt asks for TensorRT, and in which precision."""
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name != "tensorrt":
            raise ModelConfigError(f"gpu_execution_accelerator {accelerator.name!r} is not supported (only 'tensorrt')")
        mode = accelerator.parameters.get("precision_mode", "").upper()
        if mode not in ("", "FP16", "FP32"):
            raise ModelConfigError(f"tensorrt precision_mode {mode!r} is not supported (FP16 or FP32)")
        return True, Precision(mode.lower()) if mode else None
    return False, None


def ort_parameter_problems(config: mc.ModelConfig) -> list[str]:
    return integer_parameter_problems(config, ORT_PARAMETERS)


def ort_parameters(config: mc.ModelConfig) -> OrtParameters:
    """The ONNX Runtime settings of a config already passed by check_supported."""
    return OrtParameters(
        intra_op_threads=integer_parameter(config, "intra_op_thread_count"),
        inter_op_threads=integer_parameter(config, "inter_op_thread_count"),
        parallel_execution=integer_parameter(config, "execution_mode") == 1,
    )
