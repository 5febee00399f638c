"""Model configuration: Triton's config.pbtxt plus the ONNX file, turned into one checked, typed
:class:`ModelSpec`.

The canonical config is the ``ModelConfig`` protobuf (field names and numbers as Triton's), so a
Triton model repository parses unchanged. The steps, one module each: ``parse`` (config.pbtxt),
``supported`` (what we serve; nothing is silently ignored), ``completion`` (filled from the ONNX
file, validated against it), ``warmup``, ``instances`` (count, placement, ONNX Runtime parameters),
``version_policy``, ``batching`` (the scheduler's policy) and ``limits`` (queue wait, execution
time). Below the repository nothing sees the protobuf config: the scheduler gets a
:class:`BatchingPolicy`, the request path a :class:`ModelSpec`.
"""

from tensorgate.model_config.batching import (
    BatchingPolicy,
    QueuePolicy,
    TimeoutAction,
    batching_hints,
    batching_policy,
)
from tensorgate.model_config.completion import complete, model_spec, validate
from tensorgate.model_config.instances import (
    InstanceGroup,
    InstanceSettings,
    OrtParameters,
    instance_count,
    instance_settings,
    ort_parameters,
)
from tensorgate.model_config.labels import with_labels
from tensorgate.model_config.limits import Limits
from tensorgate.model_config.parse import CONFIG_FILE, model_filename, read_config
from tensorgate.model_config.spec import ModelSpec, RawConfig, TensorSpec
from tensorgate.model_config.supported import check_supported
from tensorgate.model_config.version_policy import select_versions
from tensorgate.model_config.warmup import WarmupSample, warmup_samples

__all__ = [
    "CONFIG_FILE",
    "BatchingPolicy",
    "InstanceGroup",
    "InstanceSettings",
    "Limits",
    "ModelSpec",
    "OrtParameters",
    "QueuePolicy",
    "RawConfig",
    "TensorSpec",
    "TimeoutAction",
    "WarmupSample",
    "batching_hints",
    "batching_policy",
    "check_supported",
    "complete",
    "instance_count",
    "instance_settings",
    "model_filename",
    "model_spec",
    "ort_parameters",
    "read_config",
    "select_versions",
    "validate",
    "warmup_samples",
    "with_labels",
]
