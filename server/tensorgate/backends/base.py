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
from typing import Protocol, runtime_checkable

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
    # An initializer the file lets a request override (ONNX Runtime's overridable initializers): an
    # input config.pbtxt may declare, as optional, and no request needs to send.
    optional: bool = False


@dataclass(frozen=True)
class BackendOptions:
    """How to load one instance.

    The GPU engines read more of it: TensorRT builds one optimization profile over the batches the
    scheduler forms (``max_batch_size``, ``opt_batch_size``; the other dynamic dims from ``dims``),
    with its builder bounded by ``workspace_bytes``, and keeps the engine and the timing cache under
    ``cache_dir``; ONNX Runtime on CUDA takes its execution provider options from ``cuda_options``
    (ONNX Runtime's own option names, string values) on top of tensorgate's defaults."""

    intra_op_threads: int = 0  # 0 lets the engine decide
    inter_op_threads: int = 1
    parallel_execution: bool = False  # independent operators may run at the same time (inter-op threads)
    device: str = "cpu"  # "cpu" or "cuda:N" (N: the CUDA device ordinal this process sees)
    precision: Precision = Precision.FP32  # what the engine builds in (the model file already carries FP16)
    model: str = ""  # the model's name, for logs and the engine cache's progress lines
    max_batch_size: int = 0  # 0: the model does not batch (its first dimension is not the batch)
    opt_batch_size: int = 0  # the batch TensorRT tunes for (0: max_batch_size)
    dims: tuple[tuple[str, tuple[int, ...]], ...] = ()  # config dims of each input (no batch dim; -1 any)
    cache_dir: Path | None = None  # where built engines and the timing cache are kept (None: not kept)
    workspace_bytes: int = 1 << 30  # TensorRT builder workspace bound
    builder_optimization_level: int = 3
    cuda_options: tuple[tuple[str, str], ...] = ()  # ONNX Runtime CUDA execution provider options
    op_libraries: tuple[str, ...] = ()  # custom-op libraries ONNX Runtime registers (model_operations)

    @property
    def device_index(self) -> int | None:
        """The CUDA device ordinal of ``device``; None on the CPU."""
        if not self.device.startswith("cuda"):
            return None
        _, _, index = self.device.partition(":")
        return int(index) if index else 0


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
        """Stop the batch handed to the instance as soon as the engine can (called on the event loop
        while the batch is on the worker thread: before ``execute`` starts or while it runs; ``execute``
        then raises). The stop holds until :meth:`reset_terminate`. An engine that cannot stop a run
        lets it end."""
        ...

    def reset_terminate(self) -> None:
        """Forget a stop once its batch has returned (called on the event loop, never while a batch
        runs), so the next batch runs. ``execute`` itself never clears a stop: one asked while the
        batch waited for the worker thread would be lost."""
        ...

    def close(self) -> None:
        """Release what the instance holds (sessions, device memory)."""
        ...


@dataclass(frozen=True)
class Phases:
    """Where the last batch's time went inside ``execute`` (ns): copies to the device, the engine's
    run and copies back. Triton counts the copies in compute_input / compute_output, not compute_infer."""

    copy_in_ns: int = 0
    copy_out_ns: int = 0


@runtime_checkable
class ReportsPhases(Protocol):
    """A backend that copies to and from a device says how long the last batch's copies took."""

    def last_phases(self) -> Phases: ...


class BackendLoader(Protocol):
    def __call__(self, model_file: Path, options: BackendOptions) -> Backend: ...
