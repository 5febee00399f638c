"""Running a TensorRT engine: one deserialised engine per model version and device, shared by its
instances; each instance owns an execution context, a non-blocking CUDA stream, CUDA events for
timing its copies, and pinned host and device buffers sized for the optimization profile's maximum
shapes.

Sizes follow TensorRT's documentation: ``ICudaEngine.get_tensor_shape`` has -1 for every dynamic
dim, so buffers are sized by setting each input to its profile maximum on the context
(``set_input_shape``) and reading the outputs' shapes from the context (``get_tensor_shape``). An
output still -1 there has a data-dependent shape: TensorRT asks an ``IOutputAllocator`` for its
memory while it runs and says its shape (``notify_shape``).

The CUDA device is current per host thread, so it is selected on the thread that runs each batch
(the instance's worker) and on the thread that closes the instance, not only where it was loaded.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from tensorgate.backends.base import BackendExecuteError, BackendLoadError, Engine, Phases, TensorInfo
from tensorgate.backends.tensorrt import libs

log = logging.getLogger(__name__)

BFLOAT16 = 16  # ONNX's type number; the Backend interface carries bf16 as uint16 bit patterns

# TensorRT's tensor types (DataType member names) -> numpy dtype, ONNX type number.
_SERVED: dict[str, tuple[np.dtype, int]] = {
    "FLOAT": (np.dtype(np.float32), 1),
    "HALF": (np.dtype(np.float16), 10),
    "BF16": (np.dtype(np.uint16), BFLOAT16),  # raw bit patterns, two bytes an element as on the device
    "INT8": (np.dtype(np.int8), 3),
    "UINT8": (np.dtype(np.uint8), 2),
    "INT32": (np.dtype(np.int32), 6),
    "INT64": (np.dtype(np.int64), 7),
    "BOOL": (np.dtype(np.bool_), 9),
}


def _type_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None)
    return str(name) if name else str(dtype).rsplit(".", 1)[-1]


def served_type(tensor: str, dtype: Any) -> tuple[np.dtype, int]:
    """The numpy dtype and ONNX type a TensorRT tensor crosses the Backend interface as; a type
    numpy and the protocol cannot carry (FP8, INT4, FP4...) is a load failure naming the tensor."""
    name = _type_name(dtype)
    try:
        return _SERVED[name]
    except KeyError:
        raise BackendLoadError(
            f"tensor {tensor!r} has TensorRT type {name}, which tensorgate cannot serve "
            f"(served: {', '.join(_SERVED)}); keep the model's inputs and outputs in one of those types"
        ) from None


@dataclass(frozen=True)
class TensorDesc:
    """One I/O tensor of an engine. ``engine_shape``: as the engine reports it, -1 on each dynamic
    dim; ``max_shape``: an input's profile maximum (its shape when static), an output's engine shape
    (its maximum is known only from a context whose inputs are set)."""

    name: str
    is_input: bool
    dtype: np.dtype
    onnx_type: int
    engine_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


class SharedEngine:
    """One deserialised ICudaEngine on one device, used by every instance of a model version there."""

    def __init__(self, plan: bytes, device: int, key: tuple[str, int]) -> None:
        trt = libs.trt()
        cudart = libs.cudart()
        self.device = device
        self.key = key
        self.users = 0
        libs.check(cudart.cudaSetDevice(device), "cudaSetDevice", loading=True)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendLoadError("TensorRT cannot deserialize the plan (built by another version or GPU?)")
        tensors = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape_io = getattr(self.engine, "is_shape_inference_io", None)
            if shape_io is not None and shape_io(name):
                raise BackendLoadError(f"tensor {name!r} is a shape tensor, which tensorgate does not serve")
            dtype, onnx_type = served_type(name, self.engine.get_tensor_dtype(name))
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            largest = shape
            if is_input and any(d < 0 for d in shape):
                largest = tuple(int(d) for d in self.engine.get_tensor_profile_shape(name, 0)[2])
            tensors.append(TensorDesc(name, is_input, dtype, onnx_type, shape, largest))
        self.tensors: tuple[TensorDesc, ...] = tuple(tensors)

    def close(self) -> None:
        del self.engine, self.runtime


_ENGINES: dict[tuple[str, int], SharedEngine] = {}
_ENGINES_LOCK = threading.Lock()


def acquire(digest: str, device: int, plan: Callable[[], bytes]) -> SharedEngine:
    """The engine of plan ``digest`` on ``device``, deserialised by its first user (``plan()`` gives
    the bytes: from the cache, or built); later users share it."""
    key = (digest, device)
    with _ENGINES_LOCK:  # loads of one version's instances are sequential; a build is never under it
        shared = _ENGINES.get(key)
        if shared is not None:
            shared.users += 1
            return shared
    made = SharedEngine(plan(), device, key)
    with _ENGINES_LOCK:
        shared = _ENGINES.setdefault(key, made)
        shared.users += 1
    if shared is not made:
        made.close()  # another load made it meanwhile
    return shared


def release(shared: SharedEngine) -> None:
    """One user fewer; the last one frees the engine (its weights on the device)."""
    with _ENGINES_LOCK:
        shared.users -= 1
        last = shared.users <= 0
        if last:
            _ENGINES.pop(shared.key, None)
    if last:
        shared.close()


def live_engines() -> int:
    """Engines deserialised now (for tests and logs)."""
    with _ENGINES_LOCK:
        return len(_ENGINES)


@dataclass
class _Binding:
    name: str
    dtype: np.dtype
    is_input: bool
    capacity: int = 0  # bytes allocated, for the profile's max shapes
    device: int = 0  # device pointer
    host: int = 0  # pinned host pointer
    host_view: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))  # the pinned bytes
    max_shape: tuple[int, ...] = ()
    data_dependent: bool = False  # its memory comes from the output allocator


def _pinned_view(pointer: int, nbytes: int) -> np.ndarray:
    if nbytes == 0:
        return np.empty(0, np.uint8)
    return np.frombuffer(memoryview((ctypes.c_ubyte * nbytes).from_address(pointer)).cast("B"), dtype=np.uint8)


def _output_allocator(trt: Any, cudart: Any) -> Any:
    """An IOutputAllocator (TensorRT calls it from ``execute_async_v3`` for outputs whose shape
    depends on the data): grows a device buffer per output, remembers the shape TensorRT reports."""

    class OutputAllocator(trt.IOutputAllocator):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
            self.shapes: dict[str, tuple[int, ...]] = {}

        def _grow(self, name: str, size: int) -> int:
            pointer, capacity = self.buffers.get(name, (0, 0))
            if pointer and capacity >= size:
                return pointer
            if pointer:
                cudart.cudaFree(pointer)  # the last batch that used it has finished (execute syncs)
            pointer = int(libs.check(cudart.cudaMalloc(max(size, 1)), "cudaMalloc"))
            self.buffers[name] = (pointer, max(size, 1))
            return pointer

        def reallocate_output(self, tensor_name: str, memory: Any, size: int, alignment: int) -> int:
            return self._grow(tensor_name, int(size))

        def reallocate_output_async(self, tensor_name: str, memory: Any, size: int, alignment: int, stream: Any) -> int:
            return self._grow(tensor_name, int(size))

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def free(self) -> None:
            for pointer, _ in self.buffers.values():
                cudart.cudaFree(pointer)
            self.buffers.clear()

    return OutputAllocator()


class TensorRTBackend:
    """One instance: an execution context of a shared engine, its own non-blocking CUDA stream and
    buffers sized for the profile's maximum shapes, reused across batches."""

    ENGINE = Engine.TENSORRT

    def __init__(self, shared: SharedEngine) -> None:
        trt = libs.trt()
        self._cudart = cudart = libs.cudart()
        self._shared = shared
        self._device = device = shared.device
        self._bindings: dict[str, _Binding] = {}
        self._allocator: Any = None
        self._events: list[Any] = []
        self._stream: Any = None
        self._phases = Phases()
        try:
            libs.check(cudart.cudaSetDevice(device), "cudaSetDevice", loading=True)
            self._context = shared.engine.create_execution_context()
            if self._context is None:
                raise BackendLoadError("TensorRT cannot create an execution context (out of device memory?)")
            # Non-blocking: no implicit synchronisation with the legacy default stream (other
            # libraries' work on stream 0 never serialises with this instance's batches).
            self._stream = libs.check(
                cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                "cudaStreamCreateWithFlags",
                loading=True,
            )
            self._stream_handle = int(self._stream)
            self._events = [libs.check(cudart.cudaEventCreate(), "cudaEventCreate", loading=True) for _ in range(4)]
            self._allocate(trt, cudart)
        except BaseException:
            self._free()
            release(shared)
            raise
        # The tensors as the Backend interface describes them (the engine's dynamic dims None); read-only.
        described = [TensorInfo(t.name, t.onnx_type, _dynamic_none(t.engine_shape)) for t in shared.tensors]
        pairs = list(zip(described, shared.tensors, strict=True))
        self.inputs: Final[Sequence[TensorInfo]] = tuple(d for d, t in pairs if t.is_input)
        self.outputs: Final[Sequence[TensorInfo]] = tuple(d for d, t in pairs if not t.is_input)

    def _allocate(self, trt: Any, cudart: Any) -> None:
        """Size every buffer for the profile's maximum: inputs from the profile, outputs from the
        context once every input is set to its maximum shape."""
        context = self._context
        for t in self._shared.tensors:
            if t.is_input and not context.set_input_shape(t.name, t.max_shape):
                raise BackendLoadError(f"TensorRT refused input {t.name!r} at its profile maximum {t.max_shape}")
        for t in self._shared.tensors:
            shape = t.max_shape if t.is_input else tuple(int(d) for d in context.get_tensor_shape(t.name))
            binding = _Binding(t.name, t.dtype, t.is_input, max_shape=shape)
            if any(d < 0 for d in shape):  # an output whose shape depends on the data
                binding.data_dependent = True
                if self._allocator is None:
                    self._allocator = _output_allocator(trt, cudart)
                if not context.set_output_allocator(t.name, self._allocator):
                    raise BackendLoadError(f"TensorRT refused an output allocator for {t.name!r}")
            else:
                binding.capacity = int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
                size = max(binding.capacity, 1)
                binding.device = int(libs.check(cudart.cudaMalloc(size), "cudaMalloc", loading=True))
                binding.host = int(libs.check(cudart.cudaMallocHost(size), "cudaMallocHost", loading=True))
                binding.host_view = _pinned_view(binding.host, binding.capacity)
                if not context.set_tensor_address(t.name, binding.device):
                    raise BackendLoadError(f"TensorRT refused the address of {t.name!r}")
            self._bindings[t.name] = binding
        sizes = (f"{b.name}:{'data-dependent' if b.data_dependent else b.capacity}" for b in self._bindings.values())
        log.info("event=tensorrt_instance gpu=%d buffer_bytes=%s", self._device, ",".join(sizes))

    @property
    def engine(self) -> Engine:
        return self.ENGINE

    @property
    def shared_engine(self) -> SharedEngine:
        return self._shared

    def last_phases(self) -> Phases:
        return self._phases

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        check = libs.check
        context, stream = self._context, self._stream
        check(cudart.cudaSetDevice(self._device), "cudaSetDevice")  # CUDA's device is per host thread
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        started = time.perf_counter_ns()
        staged: list[tuple[_Binding, int]] = []
        for name, binding in self._bindings.items():
            if not binding.is_input:
                continue
            array = inputs.get(name)
            if array is None:
                raise BackendExecuteError(f"input {name!r} is missing")
            data = np.ascontiguousarray(array, dtype=binding.dtype)
            if data.nbytes > binding.capacity or not context.set_input_shape(name, data.shape):
                raise BackendExecuteError(
                    f"input {name!r} of shape {list(data.shape)} is outside the engine's profile (at most "
                    f"{list(binding.max_shape)})"
                )
            binding.host_view[: data.nbytes] = data.reshape(-1).view(np.uint8)
            staged.append((binding, data.nbytes))
        host_in = time.perf_counter_ns() - started
        first, copied_in, ran, copied_out = self._events
        check(cudart.cudaEventRecord(first, stream), "cudaEventRecord")
        for binding, nbytes in staged:
            check(cudart.cudaMemcpyAsync(binding.device, binding.host, nbytes, h2d, stream), "cudaMemcpyAsync")
        check(cudart.cudaEventRecord(copied_in, stream), "cudaEventRecord")
        if not context.execute_async_v3(self._stream_handle):
            raise BackendExecuteError("TensorRT execute_async_v3 failed (see its log)")
        check(cudart.cudaEventRecord(ran, stream), "cudaEventRecord")
        wanted = [self._output(name) for name in output_names]
        if any(b.data_dependent for b in wanted):
            # Their shapes (notify_shape) and memory are final once the run has ended.
            check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        shapes: dict[str, tuple[int, ...]] = {}
        for binding in wanted:
            shape = self._shape_of(binding)
            nbytes = int(np.prod(shape, dtype=np.int64)) * binding.dtype.itemsize
            source = binding.device
            if binding.data_dependent:
                source = self._allocator.buffers[binding.name][0]
                self._grow_host(binding, nbytes)
            shapes[binding.name] = shape
            if nbytes:
                check(cudart.cudaMemcpyAsync(binding.host, source, nbytes, d2h, stream), "cudaMemcpyAsync")
        check(cudart.cudaEventRecord(copied_out, stream), "cudaEventRecord")
        check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        unpacked = time.perf_counter_ns()
        out: dict[str, np.ndarray] = {}
        for binding in wanted:
            shape = shapes[binding.name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * binding.dtype.itemsize
            out[binding.name] = binding.host_view[:nbytes].view(binding.dtype).reshape(shape).copy()
        host_out = time.perf_counter_ns() - unpacked
        self._phases = Phases(
            copy_in_ns=host_in + self._elapsed_ns(first, copied_in),
            copy_out_ns=self._elapsed_ns(ran, copied_out) + host_out,
        )
        return out

    def _output(self, name: str) -> _Binding:
        binding = self._bindings.get(name)
        if binding is None or binding.is_input:
            raise BackendExecuteError(f"the engine has no output {name!r}")
        return binding

    def _shape_of(self, binding: _Binding) -> tuple[int, ...]:
        if binding.data_dependent:
            reported: tuple[int, ...] | None = self._allocator.shapes.get(binding.name)
            if reported is None:
                raise BackendExecuteError(f"TensorRT did not report the shape of output {binding.name!r}")
            return reported
        shape = tuple(int(d) for d in self._context.get_tensor_shape(binding.name))
        if any(d < 0 for d in shape):
            raise BackendExecuteError(f"TensorRT has no shape for output {binding.name!r} ({shape})")
        return shape

    def _grow_host(self, binding: _Binding, nbytes: int) -> None:
        """Pinned memory for a data-dependent output of ``nbytes`` (kept for later batches)."""
        if binding.capacity >= nbytes and binding.host:
            return
        cudart = self._cudart
        if binding.host:
            cudart.cudaFreeHost(binding.host)
        binding.capacity = max(nbytes, 2 * binding.capacity, 1)
        binding.host = int(libs.check(cudart.cudaMallocHost(binding.capacity), "cudaMallocHost"))
        binding.host_view = _pinned_view(binding.host, binding.capacity)

    def _elapsed_ns(self, start: Any, end: Any) -> int:
        ms = libs.check(self._cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime")
        return int(float(ms) * 1_000_000)

    def terminate(self) -> None:
        """A TensorRT run on its stream cannot be stopped from outside: it ends on its own."""

    def reset_terminate(self) -> None:
        """Nothing to forget (terminate() does nothing)."""

    def close(self) -> None:
        self._free()
        release(self._shared)

    def _free(self) -> None:
        """Release what this instance holds, on its device (close runs on another thread)."""
        cudart = self._cudart
        cudart.cudaSetDevice(self._device)
        if self._stream is not None:
            cudart.cudaStreamSynchronize(self._stream)
        for binding in self._bindings.values():
            if binding.device:
                cudart.cudaFree(binding.device)
            if binding.host:
                cudart.cudaFreeHost(binding.host)
        self._bindings.clear()
        if self._allocator is not None:
            self._allocator.free()
        for event in self._events:
            cudart.cudaEventDestroy(event)
        self._events = []
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self.__dict__.pop("_context", None)


def _dynamic_none(shape: tuple[int, ...]) -> tuple[int | None, ...]:
    return tuple(None if d < 0 else d for d in shape)
