"""The checked, typed model spec: everything below the repository knows of a model version's config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from tensorgate.datatypes import DataType
from tensorgate.model_config.batching import BatchingPolicy
from tensorgate.model_config.instances import InstanceSettings
from tensorgate.model_config.limits import Limits
from tensorgate.proto import model_config_pb2 as mc


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as requests see it; ``dims`` exclude the batch dim, -1 is any size.

    ``reshape``: the shape the model takes instead (config.pbtxt's ``reshape``, or Triton's ``dims: [1]``
    for a scalar, as ``()``), which requests are reshaped to and outputs from; None: ``dims``. As Triton,
    the k-th -1 of one is the k-th -1 of the other (config checks make the sizes between them agree).
    ``model_dims``: ``reshape`` with the sizes the model file fixes filled in."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None
    model_dims: tuple[int, ...] | None = None

    @property
    def engine_dims(self) -> tuple[int, ...]:
        """The dims the engine sees (after the batch dim)."""
        return self.dims if self.model_dims is None else self.model_dims

    def accepts(self, dims: Sequence[int]) -> bool:
        """Whether ``dims`` (after the batch dim) fit ``dims`` of the spec, -1 taking any size."""
        return len(dims) == len(self.dims) and all(w in (-1, d) for w, d in zip(self.dims, dims, strict=True))

    def to_model(self, dims: tuple[int, ...]) -> tuple[int, ...]:
        """A tensor's dims as a client sent them (after the batch dim), in the model's shape."""
        assert self.reshape is not None
        return _carry_sizes(dims, self.dims, self.reshape)

    def to_client(self, dims: tuple[int, ...]) -> tuple[int, ...]:
        """An output's dims as the model made them (after the batch dim), in the shape clients see."""
        assert self.reshape is not None
        return _carry_sizes(dims, self.reshape, self.dims)

    @cached_property
    def fixed_dims(self) -> tuple[int, ...] | None:
        """``dims`` when none is -1 (a shape check is then one tuple comparison), else None."""
        return None if -1 in self.dims else self.dims


@dataclass(frozen=True)
class ModelSpec:
    """One model version's config, completed from its ONNX file and checked against it.

    ``config`` is the completed protobuf, kept only to answer the ModelConfig RPC and to read the
    warmup samples; the request path and the scheduler use the typed fields."""

    name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    config: mc.ModelConfig = field(compare=False)
    batching: BatchingPolicy = field(default_factory=BatchingPolicy)
    instances: InstanceSettings = field(default_factory=lambda: InstanceSettings())
    limits: Limits = field(default_factory=Limits)
    # Each output's class labels (its label_filename's lines), for the classification extension.
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @cached_property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        """Every output, in the config's order: what a request that names none gets."""
        return tuple(self.outputs)

    @cached_property
    def bytes_inputs(self) -> bool:
        return any(t.datatype.is_bytes for t in self.inputs.values())

    @cached_property
    def bytes_outputs(self) -> bool:
        return any(t.datatype.is_bytes for t in self.outputs.values())


@dataclass(frozen=True)
class RawConfig:
    """config.pbtxt as parsed (or a load request's override), before completion from the ONNX file.

    ``max_batch_size_given``: whether the text sets max_batch_size (proto3 cannot tell an explicit 0
    from an absent field, and Triton treats them differently)."""

    config: mc.ModelConfig
    max_batch_size_given: bool


def _carry_sizes(dims: tuple[int, ...], pattern: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """``target`` with its k-th -1 replaced by the size ``dims`` has at the k-th -1 of ``pattern`` (Triton's
    reading of a reshape, both ways); ValueError if ``dims`` and ``pattern`` differ in rank."""
    sizes = iter([d for d, want in zip(dims, pattern, strict=True) if want == -1])
    return tuple(next(sizes) if d == -1 else d for d in target)
