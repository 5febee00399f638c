"""ONNX Runtime on the CUDA execution provider (needs onnxruntime-gpu: the [gpu] extra).

Each instance has its own session, its own non-blocking CUDA stream, given to ONNX Runtime as
``user_compute_stream`` so the instance's copies and kernels are ordered on one stream and
instances overlap, and its own device buffers with pinned host staging, reused across batches
(grown to the largest batch seen, so warmup sizes them before the model is READY). A batch runs
through IOBinding: inputs are copied host -> device on the stream and bound by address; outputs
whose shape follows from the batch (static dims, and a first dim named like every input's first,
i.e. the batch) are bound to the instance's own device buffers and copied back on the stream;
others are left to ONNX Runtime to allocate on the device, then copied to the host.

The provider options are a pure function (:func:`provider_options`): tensorgate's defaults
(``cudnn_conv_algo_search`` HEURISTIC: EXHAUSTIVE, ONNX Runtime's default, benchmarks again for each
new input shape, i.e. each batch size dynamic batching forms; ``arena_extend_strategy``
kSameAsRequested), then the server's flags and the model's config (Triton's parameter names, see
model_config/instances.py), then what tensorgate sets per instance (``device_id``, the stream).

Models with string or bfloat16 tensors, or an install without cuda-python, run through
``session.run`` as on the CPU (ONNX Runtime copies), still on CUDA. The session is checked to really
run on CUDA (ONNX Runtime silently falls back to the CPU when CUDA or cuDNN libraries are missing).

NOT YET RUN ON A GPU: the IOBinding path is exercised on the CPU by the tests (the same code with
host memory standing in for the device, through real ONNX Runtime), the CUDA calls only against
the recording stand-in of tests/test_tensorrt_contract.py.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tensorgate.backends.base import BackendExecuteError, BackendLoadError, BackendOptions, Engine, Phases
from tensorgate.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend

log = logging.getLogger(__name__)

# tensorgate's defaults where ONNX Runtime's are wrong for a batching server (see the module doc).
DEFAULT_CUDA_OPTIONS: dict[str, str] = {
    "cudnn_conv_algo_search": "HEURISTIC",
    "arena_extend_strategy": "kSameAsRequested",
}
RESERVED_CUDA_OPTIONS = ("device_id", "user_compute_stream", "has_user_compute_stream")


def provider_options(device_id: int, stream: int | None, asked: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """The CUDA execution provider options of one instance (ONNX Runtime's names, string values):
    tensorgate's defaults, then ``asked`` (server flags, then the model's config; later wins), then
    the instance's device and, when it has one, its stream (``user_compute_stream``, the address of a
    ``cudaStream_t``; ``has_user_compute_stream`` 1)."""
    options = dict(DEFAULT_CUDA_OPTIONS)
    for key, value in asked:
        if key in RESERVED_CUDA_OPTIONS:
            raise BackendLoadError(f"CUDA provider option {key!r} is set by tensorgate for each instance")
        options[key] = str(value)
    options["device_id"] = str(device_id)
    if stream is not None:
        options["has_user_compute_stream"] = "1"
        options["user_compute_stream"] = str(int(stream))
    return options


_NUMPY_OF_ONNX: dict[int, np.dtype] = {
    onnx_type: np.dtype(name)
    for onnx_type, name in {
        1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
        9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
    }.items()
}  # fmt: skip


class Memory(Protocol):
    """Where an instance's bound tensors live and how bytes get there: the CUDA device through
    pinned host buffers on the instance's stream (``CudaMemory``), or, in the tests, host memory."""

    device_type: str  # as IOBinding names it: "cuda" or "cpu"
    device_id: int

    def select(self) -> None:
        """Make the device current on the calling thread (the one that runs the batch)."""

    def allocate(self, nbytes: int) -> tuple[int, int]:
        """(device pointer, pinned host pointer) of ``nbytes`` each."""
        ...

    def free(self, device: int, host: int) -> None: ...

    def to_device(self, device: int, host: int, nbytes: int) -> None:
        """Enqueue a copy on the instance's stream."""

    def to_host(self, host: int, device: int, nbytes: int) -> None:
        """Enqueue a copy on the instance's stream."""

    def mark(self) -> Any:
        """A point on the stream (a recorded event) whose time ``elapsed_ns`` reads after ``wait``."""

    def elapsed_ns(self, start: Any, end: Any) -> int: ...

    def wait(self) -> None:
        """Until everything enqueued on the stream has run."""

    def close(self) -> None: ...


class CudaMemory:
    """Device memory, pinned host memory and copies on one non-blocking stream (cuda-python)."""

    device_type = "cuda"

    def __init__(self, cudart: Any, device_id: int) -> None:
        from tensorgate.backends.tensorrt.libs import check

        self._cudart = cudart
        self._check = check
        self.device_id = device_id
        check(cudart.cudaSetDevice(device_id), "cudaSetDevice", loading=True)
        self.stream = check(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags", loading=True
        )
        self._events = [check(cudart.cudaEventCreate(), "cudaEventCreate", loading=True) for _ in range(4)]
        self._next_event = 0

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def select(self) -> None:
        self._check(self._cudart.cudaSetDevice(self.device_id), "cudaSetDevice")

    def allocate(self, nbytes: int) -> tuple[int, int]:
        device = int(self._check(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
        host = int(self._check(self._cudart.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        return device, host

    def free(self, device: int, host: int) -> None:
        self._cudart.cudaFree(device)
        self._cudart.cudaFreeHost(host)

    def to_device(self, device: int, host: int, nbytes: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._cudart.cudaMemcpyAsync(device, host, nbytes, kind, self.stream), "cudaMemcpyAsync")

    def to_host(self, host: int, device: int, nbytes: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._cudart.cudaMemcpyAsync(host, device, nbytes, kind, self.stream), "cudaMemcpyAsync")

    def mark(self) -> Any:
        event = self._events[self._next_event % len(self._events)]
        self._next_event += 1
        self._check(self._cudart.cudaEventRecord(event, self.stream), "cudaEventRecord")
        return event

    def elapsed_ns(self, start: Any, end: Any) -> int:
        ms = self._check(self._cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime")
        return int(float(ms) * 1_000_000)

    def wait(self) -> None:
        self._check(self._cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        cudart = self._cudart
        cudart.cudaSetDevice(self.device_id)
        cudart.cudaStreamSynchronize(self.stream)
        for event in self._events:
            cudart.cudaEventDestroy(event)
        cudart.cudaStreamDestroy(self.stream)


@dataclass
class _Buffer:
    device: int = 0
    host: int = 0
    capacity: int = 0
    view: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))  # the pinned host bytes


def _host_view(pointer: int, nbytes: int) -> np.ndarray:
    if nbytes == 0:
        return np.empty(0, np.uint8)
    return np.frombuffer(memoryview((ctypes.c_ubyte * nbytes).from_address(pointer)).cast("B"), dtype=np.uint8)


@dataclass(frozen=True)
class _Output:
    name: str
    dtype: np.dtype
    tail: tuple[int, ...] | None  # its dims after the batch when only the batch varies, else None


class BoundRunner:
    """Runs batches of one session through IOBinding, over ``memory``'s buffers (one per tensor,
    grown to the largest batch seen, reused). Not thread-safe: one instance, one worker thread."""

    def __init__(self, session: Any, run_options: Any, memory: Memory) -> None:
        self._session = session
        self._run_options = run_options
        self._memory = memory
        self._binding = session.io_binding()
        self._buffers: dict[str, _Buffer] = {}
        self._outputs = _bindable_outputs(session)
        self.phases = Phases()

    def _buffer(self, name: str, nbytes: int) -> _Buffer:
        buffer = self._buffers.setdefault(name, _Buffer())
        if buffer.capacity < nbytes:
            if buffer.capacity:
                self._memory.free(buffer.device, buffer.host)
            capacity = max(nbytes, 2 * buffer.capacity)
            buffer.device, buffer.host = self._memory.allocate(capacity)
            buffer.capacity = capacity
            buffer.view = _host_view(buffer.host, capacity)
        return buffer

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        memory, binding = self._memory, self._binding
        memory.select()
        started = time.perf_counter_ns()
        rows: set[int] = set()
        staged: list[tuple[_Buffer, int]] = []
        binding.clear_binding_inputs()
        for name, array in inputs.items():
            data = np.ascontiguousarray(array)
            buffer = self._buffer(name, data.nbytes)
            buffer.view[: data.nbytes] = data.reshape(-1).view(np.uint8)
            staged.append((buffer, data.nbytes))
            binding.bind_input(name, memory.device_type, memory.device_id, data.dtype, list(data.shape), buffer.device)
            rows.add(data.shape[0] if data.ndim else -1)
        host_in = time.perf_counter_ns() - started
        first = memory.mark()
        for buffer, nbytes in staged:
            memory.to_device(buffer.device, buffer.host, nbytes)
        copied_in = memory.mark()
        batch = rows.pop() if len(rows) == 1 else None
        ours: list[tuple[str, np.dtype, tuple[int, ...], _Buffer]] = []
        theirs: list[str] = []
        binding.clear_binding_outputs()
        for name in output_names:
            spec = self._outputs.get(name)
            if spec is not None and spec.tail is not None and batch is not None and batch >= 0:
                shape = (batch, *spec.tail)
                buffer = self._buffer(name, int(np.prod(shape, dtype=np.int64)) * spec.dtype.itemsize)
                binding.bind_output(name, memory.device_type, memory.device_id, spec.dtype, list(shape), buffer.device)
                ours.append((name, spec.dtype, shape, buffer))
            else:
                binding.bind_output(name, memory.device_type, memory.device_id)  # ONNX Runtime allocates it
                theirs.append(name)
        try:
            self._session.run_with_iobinding(binding, self._run_options)
        except Exception as exc:
            raise BackendExecuteError(f"ONNX Runtime failed: {exc}") from exc
        ran = memory.mark()
        for _, dtype, shape, buffer in ours:
            memory.to_host(buffer.host, buffer.device, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        copied_out = memory.mark()
        memory.wait()
        unpacked = time.perf_counter_ns()
        out: dict[str, np.ndarray] = {}
        for name, dtype, shape, buffer in ours:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out[name] = buffer.view[:nbytes].view(dtype).reshape(shape).copy()
        if theirs:  # get_outputs() follows the order the outputs were bound in: output_names'
            values = dict(zip(output_names, binding.get_outputs(), strict=True))
            for name in theirs:
                out[name] = values[name].numpy()  # a device OrtValue: ONNX Runtime copies it to the host
        self.phases = Phases(
            copy_in_ns=host_in + memory.elapsed_ns(first, copied_in),
            copy_out_ns=memory.elapsed_ns(ran, copied_out) + time.perf_counter_ns() - unpacked,
        )
        return {name: out[name] for name in output_names}

    def close(self) -> None:
        for buffer in self._buffers.values():
            if buffer.capacity:
                self._memory.free(buffer.device, buffer.host)
        self._buffers.clear()


def _bindable_outputs(session: Any) -> dict[str, _Output]:
    """Each numeric output, with its dims after the batch where its shape follows from the batch:
    every dim static but the first, which has the same symbolic name as every input's first."""
    firsts = {tuple(i.shape or ())[:1] for i in session.get_inputs()}
    batch_symbol = next(iter(firsts))[0] if len(firsts) == 1 and next(iter(firsts)) else None
    found: dict[str, _Output] = {}
    from tensorgate.backends.onnxruntime_cpu import _ORT_TYPES

    for arg in session.get_outputs():
        dtype = _NUMPY_OF_ONNX.get(_ORT_TYPES.get(arg.type, -1))
        if dtype is None:
            continue
        shape = list(arg.shape or ())
        tail: tuple[int, ...] | None = None
        if (
            shape
            and isinstance(batch_symbol, str)
            and shape[0] == batch_symbol
            and all(isinstance(d, int) and d >= 0 for d in shape[1:])
        ):
            tail = tuple(int(d) for d in shape[1:])
        found[arg.name] = _Output(arg.name, dtype, tail)
    return found


class OnnxRuntimeCudaBackend(OnnxRuntimeCpuBackend):
    ENGINE = Engine.ORT_CUDA

    def __init__(self, model_file: Path, options: BackendOptions, memory: Memory | None = None) -> None:
        self._device_id = options.device_index or 0
        self._memory: Memory | None = memory if memory is not None else _cuda_memory(self._device_id)
        self._runner: BoundRunner | None = None
        try:
            super().__init__(model_file, options)
            if self._memory is not None and self._plain:
                self._runner = BoundRunner(self._session, self._run_options, self._memory)
        except BaseException:
            if self._memory is not None:
                self._memory.close()
            raise

    def providers(self, options: BackendOptions) -> list[str | tuple[str, dict[str, str]]]:
        stream = self._memory.stream_handle if isinstance(self._memory, CudaMemory) else None
        return [
            ("CUDAExecutionProvider", provider_options(self._device_id, stream, options.cuda_options)),
            "CPUExecutionProvider",
        ]

    def last_phases(self) -> Phases:
        return self._runner.phases if self._runner is not None else Phases()

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        if self._runner is None:
            return super().execute(inputs, output_names)
        return self._runner.run(inputs, output_names)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        super().close()
        if self._memory is not None:
            self._memory.close()


def _cuda_memory(device_id: int) -> CudaMemory | None:
    """The instance's stream and buffers through cuda-python; None (logged) where it is missing."""
    from tensorgate.backends.tensorrt import libs

    try:
        cudart = libs.cudart()
    except BackendLoadError as exc:
        log.warning("event=ort_cuda_without_stream reason=%s copies=%s", str(exc), "on ONNX Runtime's own stream")
        return None
    return CudaMemory(cudart, device_id)


def load(model_file: Path, options: BackendOptions) -> OnnxRuntimeCudaBackend:
    return OnnxRuntimeCudaBackend(model_file, options)
