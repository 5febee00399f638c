"""A recording stand-in for the ``tensorrt`` and ``cuda`` (cuda-python) modules, for contract tests.

NOT TensorRT and NOT a GPU. It is written from NVIDIA's documentation of the calls tensorgate makes,
and behaves as that documentation says where our code depends on it:

- TensorRT Python API (ICudaEngine, IExecutionContext, IOutputAllocator, IBuilder, OnnxParser):
  ``engine.get_tensor_shape`` has -1 on every dynamic dim; ``get_tensor_profile_shape(name, 0)``
  is [min, opt, max]; ``context.set_input_shape`` returns False outside the profile, and
  ``context.get_tensor_shape`` of an output is its real shape once the inputs are set, still -1
  where the shape depends on the data; such outputs get their memory from the context's
  IOutputAllocator during ``execute_async_v3`` (``reallocate_output_async``, then
  ``notify_shape``); a network with dynamic inputs needs an optimization profile; ``parse`` of
  bytes cannot find weights kept as external data, ``parse_from_file`` can.
- cuda-python's runtime bindings: every call returns a tuple led by a ``cudaError_t``; the current
  device is per host thread (``cudaSetDevice``); ``cudaStreamCreateWithFlags(cudaStreamNonBlocking)``.

It also checks what the documentation makes our responsibility, and fails as the real thing would
fail (or would silently compute garbage): a kernel enqueued while the calling thread's current
device is not the engine's, copies past the end of an allocation, an I/O tensor without an address
or with memory smaller than its shape. The network "computes" by running the ONNX file with ONNX
Runtime on the CPU, so results can be compared. It records every call (with the thread that made
it) for the tests to inspect.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import threading
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

# ---- cuda-python's runtime (cuda.bindings.runtime) ----


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


OK = cudaError_t.cudaSuccess


@dataclass
class Allocation:
    size: int
    kind: str  # "device" or "pinned"
    device: int
    buffer: Any


@dataclass
class Stream:
    handle: int
    flags: int
    device: int

    def __int__(self) -> int:
        return self.handle


@dataclass
class Event:
    handle: int
    recorded: bool = False


@dataclass
class Props:
    name: bytes
    major: int
    minor: int


class Cuda:
    """The state behind the stand-in ``cuda.bindings.runtime`` module."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamDefault = 0
    cudaStreamNonBlocking = 1

    def __init__(self, devices: int = 2) -> None:
        self.devices = devices
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []  # (thread, function, args)
        self.allocations: dict[int, Allocation] = {}
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self._current = threading.local()
        self._lock = threading.Lock()
        self._next_handle = 0x1000

    def _record(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((threading.current_thread().name, name, args))

    def _handle(self) -> int:
        with self._lock:
            self._next_handle += 0x10
            return self._next_handle

    def current_device(self) -> int:
        return int(getattr(self._current, "device", 0))

    # -- devices --

    def cudaSetDevice(self, device: int) -> tuple[cudaError_t]:
        self._record("cudaSetDevice", device)
        if not 0 <= device < self.devices:
            return (cudaError_t.cudaErrorInvalidDevice,)
        self._current.device = device
        return (OK,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[cudaError_t, Props | None]:
        self._record("cudaGetDeviceProperties", device)
        if not 0 <= device < self.devices:
            return cudaError_t.cudaErrorInvalidDevice, None
        return OK, Props(b"NVIDIA Stand-in GPU", 9, 0)

    # -- memory --

    def _allocate(self, name: str, size: int, kind: str) -> tuple[cudaError_t, int]:
        self._record(name, size)
        if size <= 0:
            return cudaError_t.cudaErrorInvalidValue, 0
        buffer = ctypes.create_string_buffer(size)
        address = ctypes.addressof(buffer)
        with self._lock:
            self.allocations[address] = Allocation(size, kind, self.current_device(), buffer)
        return OK, address

    def cudaMalloc(self, size: int) -> tuple[cudaError_t, int]:
        return self._allocate("cudaMalloc", size, "device")

    def cudaMallocHost(self, size: int) -> tuple[cudaError_t, int]:
        return self._allocate("cudaMallocHost", size, "pinned")

    def _free(self, name: str, address: int, kind: str) -> tuple[cudaError_t]:
        self._record(name, address)
        with self._lock:
            found = self.allocations.get(address)
            if found is None or found.kind != kind:
                return (cudaError_t.cudaErrorInvalidValue,)
            del self.allocations[address]
        return (OK,)

    def cudaFree(self, address: int) -> tuple[cudaError_t]:
        return self._free("cudaFree", address, "device")

    def cudaFreeHost(self, address: int) -> tuple[cudaError_t]:
        return self._free("cudaFreeHost", address, "pinned")

    def region(self, address: int, nbytes: int, kind: str) -> Allocation:
        """The allocation of ``kind`` that holds [address, address + nbytes), else AssertionError."""
        with self._lock:
            for base, found in self.allocations.items():
                if found.kind == kind and base <= address and address + nbytes <= base + found.size:
                    return found
        raise AssertionError(f"{nbytes} bytes at {address:#x} are not inside one {kind} allocation")

    def cudaMemcpyAsync(
        self, dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: Stream
    ) -> tuple[cudaError_t]:
        self._record("cudaMemcpyAsync", dst, src, count, kind, stream)
        if not isinstance(stream, Stream) or stream.handle not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        source, target = {
            cudaMemcpyKind.cudaMemcpyHostToDevice: ("pinned", "device"),
            cudaMemcpyKind.cudaMemcpyDeviceToHost: ("device", "pinned"),
        }[kind]
        self.region(src, count, source)
        self.region(dst, count, target)
        ctypes.memmove(dst, src, count)
        return (OK,)

    # -- streams and events --

    def cudaStreamCreate(self) -> tuple[cudaError_t, Stream]:
        return self._stream("cudaStreamCreate", self.cudaStreamDefault)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[cudaError_t, Stream]:
        return self._stream("cudaStreamCreateWithFlags", flags)

    def _stream(self, name: str, flags: int) -> tuple[cudaError_t, Stream]:
        self._record(name, flags)
        stream = Stream(self._handle(), flags, self.current_device())
        self.streams[stream.handle] = stream
        return OK, stream

    def cudaStreamSynchronize(self, stream: Stream) -> tuple[cudaError_t]:
        self._record("cudaStreamSynchronize", stream)
        return (OK,) if stream.handle in self.streams else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaStreamDestroy(self, stream: Stream) -> tuple[cudaError_t]:
        self._record("cudaStreamDestroy", stream)
        return (OK,) if self.streams.pop(stream.handle, None) else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaEventCreate(self) -> tuple[cudaError_t, Event]:
        self._record("cudaEventCreate")
        event = Event(self._handle())
        self.events[event.handle] = event
        return OK, event

    def cudaEventRecord(self, event: Event, stream: Stream) -> tuple[cudaError_t]:
        self._record("cudaEventRecord", event, stream)
        if event.handle not in self.events or stream.handle not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        event.recorded = True
        return (OK,)

    def cudaEventElapsedTime(self, start: Event, end: Event) -> tuple[cudaError_t, float]:
        self._record("cudaEventElapsedTime", start, end)
        if not (start.recorded and end.recorded):
            return cudaError_t.cudaErrorInvalidResourceHandle, 0.0
        return OK, 0.25  # ms: a quarter of a millisecond for every span, so tests can see it moved

    def cudaEventDestroy(self, event: Event) -> tuple[cudaError_t]:
        self._record("cudaEventDestroy", event)
        return (OK,) if self.events.pop(event.handle, None) else (cudaError_t.cudaErrorInvalidResourceHandle,)

    # -- for the tests --

    def named(self, name: str) -> list[tuple[str, tuple[Any, ...]]]:
        """(thread, args) of every call of ``name``."""
        with self._lock:
            return [(thread, args) for thread, called, args in self.calls if called == name]

    def live(self, kind: str) -> list[Allocation]:
        with self._lock:
            return [a for a in self.allocations.values() if a.kind == kind]


# ---- tensorrt ----


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


ONNX_TO_TRT = {
    1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 3: DataType.INT8, 2: DataType.UINT8,
    6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL, 17: DataType.FP8, 22: DataType.INT4, 23: DataType.FP4,
}  # fmt: skip
NUMPY_OF_TRT = {
    DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.BF16: np.uint16, DataType.INT8: np.int8,
    DataType.UINT8: np.uint8, DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_,
}  # fmt: skip


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class IOutputAllocator:
    """Base class: as the documentation says, a subclass must call ``IOutputAllocator.__init__``."""

    def __init__(self) -> None:
        self._initialised = True


class IProgressMonitor:
    def __init__(self) -> None:
        self._initialised = True


@dataclass
class NetTensor:
    name: str
    dtype: DataType
    shape: tuple[int, ...]  # -1: dynamic
    onnx_dims: tuple[str | int, ...]  # as the ONNX file declares them (dim_param or dim_value)


@dataclass
class Network:
    flags: int
    inputs: list[NetTensor] = field(default_factory=list)
    outputs: list[NetTensor] = field(default_factory=list)
    model_path: str = ""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> NetTensor:
        return self.inputs[i]


def _net_tensors(values: Sequence[Any]) -> list[NetTensor]:
    found = []
    for value in values:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)
        found.append(NetTensor(value.name, ONNX_TO_TRT.get(tensor.elem_type, DataType.FP8), shape, dims))
    return found


class OnnxParser:
    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]

    def _fill(self, model: onnx.ModelProto, path: str) -> bool:
        initializers = {i.name for i in model.graph.initializer}
        self.network.inputs = _net_tensors([v for v in model.graph.input if v.name not in initializers])
        self.network.outputs = _net_tensors(model.graph.output)
        self.network.model_path = path
        return True

    def parse(self, data: bytes, path: str | None = None) -> bool:
        STATE.trt_calls.append(("parse", len(data)))
        model = onnx.load_from_string(data)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer) and path is None:
            self.errors.append("Failed to open external weights file (parse() has no model path to find it from)")
            return False
        return self._fill(model, path or "")

    def parse_from_file(self, path: str) -> bool:
        STATE.trt_calls.append(("parse_from_file", path))
        model = onnx.load(path)  # external data found beside the file
        return self._fill(model, path)


@dataclass
class OptimizationProfile:
    shapes: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)

    def set_shape(self, name: str, low: Sequence[int], opt: Sequence[int], high: Sequence[int]) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+entry"


class BuilderConfig:
    def __init__(self) -> None:
        self.pools: dict[MemoryPoolType, int] = {}
        self.builder_optimization_level = 3
        self.profiles: list[OptimizationProfile] = []
        self.timing_cache: TimingCache | None = None
        self.progress_monitor: Any = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(bytes(data))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        assert self.timing_cache is not None
        return self.timing_cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.device = STATE.cuda.current_device()  # the builder works on the creating thread's device

    def create_network(self, flags: int) -> Network:
        return Network(flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        STATE.builds_started.append((self.device, network.model_path, config))
        with STATE.lock:
            STATE.building[self.device] = STATE.building.get(self.device, 0) + 1
            STATE.most_concurrent = max(STATE.most_concurrent, STATE.building[self.device])
        try:
            time.sleep(STATE.build_seconds)
            profile = config.profiles[0].shapes if config.profiles else {}
            for tensor in network.inputs:
                if -1 in tensor.shape and tensor.name not in profile:
                    return None  # "Network has dynamic or shape inputs, but no optimization profile"
                for shape in profile.get(tensor.name, ()):
                    fixed = all(t in (-1, s) for t, s in zip(tensor.shape, shape, strict=False))
                    if len(shape) != len(tensor.shape) or not fixed:
                        return None
            plan = {
                "model": network.model_path,
                "device": self.device,
                "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
                "strongly_typed": bool(network.flags & 2),
                "inputs": [[t.name, t.dtype.name, list(t.shape), list(t.onnx_dims)] for t in network.inputs],
                "outputs": [[t.name, t.dtype.name, list(t.shape), list(t.onnx_dims)] for t in network.outputs],
                "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
            }
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 1)
                config.progress_monitor.step_complete("Building engine", 0)
                config.progress_monitor.phase_finish("Building engine")
            return json.dumps(plan).encode()
        finally:
            with STATE.lock:
                STATE.building[self.device] -= 1


class Runtime:
    def __init__(self, logger: Logger) -> None:
        pass

    def deserialize_cuda_engine(self, plan: bytes) -> CudaEngine | None:
        STATE.deserialized.append(threading.current_thread().name)
        try:
            return CudaEngine(json.loads(plan), STATE.cuda.current_device())
        except ValueError:
            return None


class CudaEngine:
    def __init__(self, plan: dict[str, Any], device: int) -> None:
        self.plan = plan
        self.device = device
        self.tensors: list[tuple[str, TensorIOMode, DataType, tuple[int, ...], tuple[Any, ...]]] = [
            (name, mode, DataType[dtype], tuple(shape), tuple(dims))
            for key, mode in (("inputs", TensorIOMode.INPUT), ("outputs", TensorIOMode.OUTPUT))
            for name, dtype, shape, dims in plan[key]
        ]
        self._session: ort.InferenceSession | None = None
        self.contexts = 0

    def _find(self, name: str) -> tuple[str, TensorIOMode, DataType, tuple[int, ...], tuple[Any, ...]]:
        return next(t for t in self.tensors if t[0] == name)

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, i: int) -> str:
        return self.tensors[i][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._find(name)[1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._find(name)[2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._find(name)[3]  # -1 on every dynamic dim, as the documentation says

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        assert profile_index == 0
        return [tuple(s) for s in self.plan["profile"][name]]

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    def create_execution_context(self) -> ExecutionContext:
        self.contexts += 1
        return ExecutionContext(self)

    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = ort.InferenceSession(self.plan["model"], providers=["CPUExecutionProvider"])
        return self._session


class ExecutionContext:
    def __init__(self, engine: CudaEngine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}
        self.runs = 0

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        _, mode, _, declared, _ = self.engine._find(name)
        shape = tuple(int(d) for d in shape)
        if mode is not TensorIOMode.INPUT or len(shape) != len(declared):
            return False
        if any(d != -1 and d != s for d, s in zip(declared, shape, strict=True)):
            return False
        if -1 in declared:
            low, _, high = self.engine.get_tensor_profile_shape(name, 0)
            if any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
                return False
        self.input_shapes[name] = shape
        return True

    def _dynamic_outputs(self) -> set[str]:
        """Outputs whose shape depends on the data: a dim named like no input's dim."""
        named = {d for t in self.engine.tensors if t[1] is TensorIOMode.INPUT for d in t[4] if isinstance(d, str)}
        return {
            t[0]
            for t in self.engine.tensors
            if t[1] is TensorIOMode.OUTPUT and any(isinstance(d, str) and d not in named for d in t[4])
        }

    def _feeds(self, zeros: bool) -> dict[str, np.ndarray]:
        feeds = {}
        for name, _, dtype, _, _ in (t for t in self.engine.tensors if t[1] is TensorIOMode.INPUT):
            shape = self.input_shapes[name]
            npdtype = np.dtype(NUMPY_OF_TRT[dtype])
            if zeros:
                feeds[name] = np.zeros(shape, npdtype)
                continue
            nbytes = int(np.prod(shape)) * npdtype.itemsize
            STATE.cuda.region(self.addresses[name], nbytes, "device")
            raw = ctypes.string_at(self.addresses[name], nbytes)
            feeds[name] = np.frombuffer(raw, npdtype).reshape(shape).copy()
        return feeds

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        _, mode, _, declared, _ = self.engine._find(name)
        if mode is TensorIOMode.INPUT:
            return self.input_shapes.get(name, declared)
        if -1 not in declared:
            return declared
        inputs = [t[0] for t in self.engine.tensors if t[1] is TensorIOMode.INPUT]
        if name in self._dynamic_outputs() or any(n not in self.input_shapes for n in inputs):
            return declared  # -1 until known: from the data (after a run) or the inputs (once set)
        out = self._run([name], self._feeds(zeros=True))[0]  # shape inference, as TensorRT's own
        return tuple(out.shape)

    def _run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The ONNX file on ONNX Runtime's CPU provider, bfloat16 tensors as uint16 bit patterns."""
        from tensorgate.backends.onnxruntime_cpu import _bf16_to_numpy

        kinds = {t[0]: t[2] for t in self.engine.tensors}
        values = {
            name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, 16)
            if kinds[name] is DataType.BF16
            else ort.OrtValue.ortvalue_from_numpy(array)
            for name, array in feeds.items()
        }
        results = self.engine.session().run_with_ort_values(names, values)
        arrays = [
            _bf16_to_numpy(value) if kinds[name] is DataType.BF16 else value.numpy()
            for name, value in zip(names, results, strict=True)
        ]
        if STATE.output_error:
            arrays = [a * (1 + STATE.output_error) if a.dtype.kind == "f" else a for a in arrays]
        return arrays

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def set_output_allocator(self, name: str, allocator: Any) -> bool:
        if not getattr(allocator, "_initialised", False):
            raise TypeError("IOutputAllocator.__init__ was not called")  # pybind would fail too
        self.allocators[name] = allocator
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        STATE.executions.append((threading.current_thread().name, STATE.cuda.current_device(), stream_handle))
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(): incompatible function arguments (stream_handle: int)")
        stream = STATE.cuda.streams.get(stream_handle)
        if stream is None:
            return False
        if STATE.cuda.current_device() != self.engine.device or stream.device != self.engine.device:
            # CUDA would launch on the calling thread's current device: a wrong-device failure.
            STATE.errors.append(
                f"enqueue on device {STATE.cuda.current_device()} (stream on {stream.device}) for an engine on "
                f"device {self.engine.device}"
            )
            return False
        inputs = [t[0] for t in self.engine.tensors if t[1] is TensorIOMode.INPUT]
        if any(n not in self.input_shapes or n not in self.addresses for n in inputs):
            STATE.errors.append("an input has no shape or address")
            return False
        outputs = [t for t in self.engine.tensors if t[1] is TensorIOMode.OUTPUT]
        results = self._run([t[0] for t in outputs], self._feeds(zeros=False))
        dynamic = self._dynamic_outputs()
        for (name, _, dtype, _, _), value in zip(outputs, results, strict=True):
            data = np.ascontiguousarray(value, dtype=NUMPY_OF_TRT[dtype])
            if name in dynamic:
                allocator = self.allocators.get(name)
                if allocator is None:
                    STATE.errors.append(f"output {name!r} has a data-dependent shape and no output allocator")
                    return False
                address = allocator.reallocate_output_async(name, 0, data.nbytes, 256, stream)
                allocator.notify_shape(name, data.shape)
            else:
                address = self.addresses.get(name)
                if address is None:
                    STATE.errors.append(f"output {name!r} has no address")
                    return False
            if data.nbytes:
                STATE.cuda.region(int(address), data.nbytes, "device")
                ctypes.memmove(int(address), data.ctypes.data, data.nbytes)
        self.runs += 1
        return True


class State:
    """Everything the stand-in remembers, reset for each test."""

    def __init__(self, devices: int = 2, build_seconds: float = 0.0) -> None:
        self.cuda = Cuda(devices)
        self.lock = threading.Lock()
        self.build_seconds = build_seconds
        self.building: dict[int, int] = {}
        self.most_concurrent = 0
        self.builds_started: list[tuple[int, str, BuilderConfig]] = []
        self.deserialized: list[str] = []  # threads that deserialised an engine
        self.executions: list[tuple[str, int, int]] = []  # (thread, current device, stream handle)
        self.errors: list[str] = []
        self.trt_calls: list[tuple[str, Any]] = []
        # Relative error added to every float output, to stand for an engine whose FP16 kernels lose
        # accuracy (a real engine's numerics are not modelled; this lets tests see the gate refuse).
        self.output_error = 0.0


STATE = State()


def _module(name: str, attrs: dict[str, Any], package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    # importlib.util.find_spec (how tensorgate looks for the libraries without importing them)
    # reads __spec__ of a module already in sys.modules.
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    return module


def modules(state: State) -> dict[str, types.ModuleType]:
    """The stand-in modules, by the names tensorgate imports them as, over ``state``."""
    global STATE
    STATE = state
    cuda = state.cuda
    runtime = _module(
        "cuda.bindings.runtime",
        {name: getattr(cuda, name) for name in dir(cuda) if name.startswith("cuda")},
    )
    bindings = _module("cuda.bindings", {"runtime": runtime}, package=True)
    cuda_pkg = _module("cuda", {"bindings": bindings}, package=True)
    tensorrt = _module(
        "tensorrt",
        {
            "__version__": "10.13.0.stand-in",
            "Logger": Logger,
            "DataType": DataType,
            "TensorIOMode": TensorIOMode,
            "MemoryPoolType": MemoryPoolType,
            "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
            "IOutputAllocator": IOutputAllocator,
            "IProgressMonitor": IProgressMonitor,
            "Builder": Builder,
            "OnnxParser": OnnxParser,
            "Runtime": Runtime,
        },
    )
    return {"cuda": cuda_pkg, "cuda.bindings": bindings, "cuda.bindings.runtime": runtime, "tensorrt": tensorrt}


def write_external(model: onnx.ModelProto, path: Path) -> Path:
    """Save ``model`` with its initializers as external data beside it (as every model over 2 GB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)  # fmt: skip
    return path
