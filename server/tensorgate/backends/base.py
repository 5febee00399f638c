"""The one interface every engine implements.

A backend instance is one loaded copy of a model (one per model instance). It is handed a whole
batch as named arrays already concatenated by the scheduler and returns named arrays; it never sees
requests, protobuf or the event loop. ``execute`` is called from one worker thread at a time.

Tensors cross this interface as numpy arrays on the host. Element types are ONNX
``TensorProto.DataType`` numbers; STRING tensors are object arrays of ``bytes``, BFLOAT16 tensors
are ``uint16`` arrays of raw bit patterns.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class Engine(enum.Enum):
    """What runs a model, named as users see it (logs, metrics, ``tensorgate build``)."""

    TENSORRT = "tensorrt"
    ORT_CUDA = "onnxruntime-cuda"
    ORT_CPU = "onnxruntime-cpu"


class Precision(enum.Enum):
    FP16 = "fp16"
    FP32 = "fp32"


@dataclass(frozen=True)
class TensorInfo:
    """An input or output as the model file declares it. ``None`` in ``shape`` is a dynamic dim."""

    name: str
    onnx_type: int
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class BackendOptions:
    """How to load one instance."""

    intra_op_threads: int = 0  # 0 lets the engine decide
    inter_op_threads: int = 1
    parallel_execution: bool = False  # independent operators may run at the same time (inter-op threads)
    device: str = "cpu"
    precision: Precision = Precision.FP32  # what the engine builds in (the model file already carries FP16)


class BackendLoadError(Exception):
    """The model file cannot be loaded by this engine; the message says why."""


class BackendExecuteError(Exception):
    """The engine failed on a batch that passed validation."""


class BackendInputError(BackendExecuteError, ValueError):
    """A batch holds a value this engine cannot take (the caller's fault, not the model's)."""


class Backend(Protocol):
    """One loaded instance of a model on one engine."""

    @property
    def engine(self) -> Engine:
        """What runs the model."""
        ...

    @property
    def inputs(self) -> Sequence[TensorInfo]: ...

    @property
    def outputs(self) -> Sequence[TensorInfo]: ...

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one batch; returns exactly the outputs named."""
        ...

    def terminate(self) -> None:
        """Stop the batch running now as soon as the engine can (called from another thread while
        ``execute`` runs; ``execute`` then raises). An engine that cannot stop a run lets it end."""
        ...

    def close(self) -> None:
        """Release what the instance holds (sessions, device memory)."""
        ...


class BackendLoader(Protocol):
    def __call__(self, model_file: Path, options: BackendOptions) -> Backend: ...
