"""Running a TensorRT engine: one execution context with its own CUDA stream, and pinned host and
device buffers sized for the profile's maximum shapes."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from tensorgate.backends.base import BackendExecuteError, BackendLoadError, Engine, TensorInfo
from tensorgate.backends.tensorrt import libs


@dataclass
class _Binding:
    name: str
    dtype: np.dtype
    is_input: bool
    capacity: int = 0  # bytes allocated for max shapes
    device: int = 0  # device pointer
    host: int = 0  # pinned host pointer
    shape: tuple[int, ...] = field(default=())


class TensorRTBackend:
    """One execution context of a deserialized engine, with its own stream and buffers sized for
    the profile's maximum shapes, reused across batches."""

    ENGINE = Engine.TENSORRT

    def __init__(self, plan: bytes, device: int, max_shapes: Mapping[str, tuple[int, ...]]) -> None:
        trt = libs.trt()
        self._cudart = cudart = libs.cudart()
        libs.check(cudart.cudaSetDevice(device))
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendLoadError("TensorRT cannot deserialize the plan (built by another version or GPU?)")
        self._context = self._engine.create_execution_context()
        self._stream = libs.check(cudart.cudaStreamCreate())
        self._bindings: dict[str, _Binding] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(max_shapes.get(name, tuple(self._engine.get_tensor_shape(name))))
            if any(d < 0 for d in shape):
                raise BackendLoadError(f"tensor {name!r} has no bounded shape {shape}; give it in the profile")
            binding = _Binding(name, dtype, is_input, capacity=int(np.prod(shape)) * dtype.itemsize, shape=shape)
            binding.device = libs.check(cudart.cudaMalloc(binding.capacity))
            binding.host = libs.check(cudart.cudaMallocHost(binding.capacity))
            self._context.set_tensor_address(name, binding.device)
            self._bindings[name] = binding
        # The tensors as the Backend interface describes them (batch dimension dynamic); read-only.
        self.inputs: Final[Sequence[TensorInfo]] = tuple(
            TensorInfo(b.name, _onnx_type(b.dtype), (None, *b.shape[1:])) for b in self._bindings.values() if b.is_input
        )
        self.outputs: Final[Sequence[TensorInfo]] = tuple(
            TensorInfo(b.name, _onnx_type(b.dtype), (None, *b.shape[1:]))
            for b in self._bindings.values()
            if not b.is_input
        )

    @property
    def engine(self) -> Engine:
        return self.ENGINE

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in inputs.items():
            binding = self._bindings[name]
            data = np.ascontiguousarray(array, dtype=binding.dtype)
            if data.nbytes > binding.capacity:
                raise BackendExecuteError(f"input {name!r} of {data.nbytes} bytes exceeds the engine's profile")
            staging = np.ctypeslib.as_array((ctypes.c_byte * data.nbytes).from_address(binding.host))
            staging[:] = data.view(np.byte).reshape(-1)
            libs.check(cudart.cudaMemcpyAsync(binding.device, binding.host, data.nbytes, h2d, self._stream))
            if not self._context.set_input_shape(name, data.shape):
                raise BackendExecuteError(f"input {name!r} shape {data.shape} is outside the engine's profile")
        if not self._context.execute_async_v3(self._stream):
            raise BackendExecuteError("TensorRT execute_async_v3 failed")
        shapes = {name: tuple(self._context.get_tensor_shape(name)) for name in output_names}
        for name in output_names:
            binding = self._bindings[name]
            nbytes = int(np.prod(shapes[name])) * binding.dtype.itemsize
            libs.check(cudart.cudaMemcpyAsync(binding.host, binding.device, nbytes, d2h, self._stream))
        libs.check(cudart.cudaStreamSynchronize(self._stream))
        out: dict[str, np.ndarray] = {}
        for name in output_names:
            binding = self._bindings[name]
            count = int(np.prod(shapes[name]))
            buffer = (ctypes.c_byte * (count * binding.dtype.itemsize)).from_address(binding.host)
            out[name] = np.frombuffer(memoryview(buffer), dtype=binding.dtype, count=count).reshape(shapes[name]).copy()
        return out

    def terminate(self) -> None:
        """A TensorRT run on its stream cannot be stopped from outside: it ends on its own."""

    def close(self) -> None:
        cudart = self._cudart
        for binding in self._bindings.values():
            cudart.cudaFree(binding.device)
            cudart.cudaFreeHost(binding.host)
        cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine, self._runtime


_ONNX_OF_NUMPY: dict[str, int] = {
    "float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10,
}  # fmt: skip


def _onnx_type(dtype: np.dtype) -> int:
    try:
        return _ONNX_OF_NUMPY[dtype.name]
    except KeyError:
        raise BackendLoadError(f"TensorRT tensor type {dtype} is not served") from None
