"""TensorRT engines: build (strongly typed, optimization profile over the batch, timing cache,
workspace limit, progress logged), cache on disk, and run with one CUDA stream per instance.

NOT YET RUN: TensorRT cannot be installed on the development machines (PyPI holds only stubs that
download from NVIDIA) nor on the GPU machine lent so far; the GPU image installs it. So nothing here
has executed; the repository does not register this loader yet (engines.py reports TensorRT as not
built). ``tensorrt`` and ``cuda-python`` are imported inside functions only, so a CPU install never
needs them. API names follow TensorRT 10.x/11.x's Python API and cuda-python's runtime bindings.

FP16 is already in the ONNX graph when it gets here (TensorRT 11 removed BuilderFlag.FP16; see
backends/fp16.py), so the network is created strongly typed and precision is not a builder flag.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tensorgate.backends.base import BackendExecuteError, BackendLoadError, TensorInfo
from tensorgate.backends.engine_cache import CacheKey, EngineCache, Profile

log = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendLoadError(f"tensorrt is not installed ({exc}); the GPU image has it") from None
    return tensorrt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise BackendLoadError(f"cuda-python is not installed ({exc}); install tensorgate[gpu]") from None
    return runtime


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendExecuteError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class BuildOptions:
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None
    builder_optimization_level: int = 3

    def as_key(self) -> dict[str, str | int | float | bool]:
        return {"workspace_bytes": self.workspace_bytes, "optimization_level": self.builder_optimization_level}


class _Progress:
    """Logs the builder's phases (TensorRT calls it from its own threads)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started: dict[str, float] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.started[phase_name] = time.monotonic()
        if parent_phase is None:
            log.info("event=engine_build_phase model=%s phase=%r steps=%d", self.model, phase_name, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        began = self.started.pop(phase_name, None)
        if began is not None and time.monotonic() - began > 5:
            log.info(
                "event=engine_build_phase_done model=%s phase=%r seconds=%.1f",
                self.model,
                phase_name,
                time.monotonic() - began,
            )


def build_plan(model: str, onnx_bytes: bytes, shapes: Shapes, options: BuildOptions) -> bytes:
    """Parse the ONNX graph and build a serialized engine with one optimization profile."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendLoadError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.builder_optimization_level
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    monitor_type = getattr(trt, "IProgressMonitor", None)
    if monitor_type is not None:
        progress = _Progress(model)
        monitor = type(
            "Monitor",
            (monitor_type,),
            {
                "__init__": lambda self: monitor_type.__init__(self),
                "phase_start": lambda self, n, p, s: progress.phase_start(n, p, s),
                "step_complete": lambda self, n, s: progress.step_complete(n, s),
                "phase_finish": lambda self, n: progress.phase_finish(n),
            },
        )()
        config.progress_monitor = monitor
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendLoadError("TensorRT failed to build the engine (see its log above)")
    if options.timing_cache is not None:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("event=engine_built model=%s seconds=%.1f bytes=%d", model, time.monotonic() - started, serialized.nbytes)
    return bytes(serialized)


def cache_key(onnx_bytes: bytes, precision: str, shapes: Shapes, options: BuildOptions, device: int) -> CacheKey:
    trt = _trt()
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return CacheKey(
        model_sha256=CacheKey.hash_model(onnx_bytes),
        tensorrt_version=str(trt.__version__),
        gpu_name=name,
        compute_capability=f"{props.major}.{props.minor}",
        precision=precision,
        profiles=(Profile(dict(shapes)),),
        builder_options=options.as_key(),
    )


def load_or_build(
    model: str,
    onnx_bytes: bytes,
    precision: str,
    shapes: Shapes,
    options: BuildOptions,
    cache: EngineCache,
    device: int,
) -> bytes:
    """The plan from the cache, else built now and cached (a corrupt cached plan is rebuilt)."""
    key = cache_key(onnx_bytes, precision, shapes, options, device)
    plan = cache.load(key)
    if plan is not None:
        log.info("event=engine_cache_hit model=%s digest=%s", model, key.digest)
        return plan
    log.info("event=engine_build_started model=%s digest=%s precision=%s", model, key.digest, precision)
    plan = build_plan(model, onnx_bytes, shapes, options)
    cache.store(key, plan)
    return plan


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

    ENGINE = "tensorrt"

    def __init__(self, plan: bytes, device: int, max_shapes: Mapping[str, tuple[int, ...]]) -> None:
        trt = _trt()
        self._cudart = cudart = _cudart()
        _check(cudart.cudaSetDevice(device))
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendLoadError("TensorRT cannot deserialize the plan (built by another version or GPU?)")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._bindings: dict[str, _Binding] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(max_shapes.get(name, tuple(self._engine.get_tensor_shape(name))))
            if any(d < 0 for d in shape):
                raise BackendLoadError(f"tensor {name!r} has no bounded shape {shape}; give it in the profile")
            binding = _Binding(name, dtype, is_input, capacity=int(np.prod(shape)) * dtype.itemsize, shape=shape)
            binding.device = _check(cudart.cudaMalloc(binding.capacity))
            binding.host = _check(cudart.cudaMallocHost(binding.capacity))
            self._context.set_tensor_address(name, binding.device)
            self._bindings[name] = binding
        self._inputs = tuple(
            TensorInfo(b.name, _onnx_type(b.dtype), (None, *b.shape[1:])) for b in self._bindings.values() if b.is_input
        )
        self._outputs = tuple(
            TensorInfo(b.name, _onnx_type(b.dtype), (None, *b.shape[1:]))
            for b in self._bindings.values()
            if not b.is_input
        )

    @property
    def engine(self) -> str:
        return self.ENGINE

    @property
    def inputs(self) -> Sequence[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorInfo]:
        return self._outputs

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
            _check(cudart.cudaMemcpyAsync(binding.device, binding.host, data.nbytes, h2d, self._stream))
            if not self._context.set_input_shape(name, data.shape):
                raise BackendExecuteError(f"input {name!r} shape {data.shape} is outside the engine's profile")
        if not self._context.execute_async_v3(self._stream):
            raise BackendExecuteError("TensorRT execute_async_v3 failed")
        shapes = {name: tuple(self._context.get_tensor_shape(name)) for name in output_names}
        for name in output_names:
            binding = self._bindings[name]
            nbytes = int(np.prod(shapes[name])) * binding.dtype.itemsize
            _check(cudart.cudaMemcpyAsync(binding.host, binding.device, nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        out: dict[str, np.ndarray] = {}
        for name in output_names:
            binding = self._bindings[name]
            count = int(np.prod(shapes[name]))
            buffer = (ctypes.c_byte * (count * binding.dtype.itemsize)).from_address(binding.host)
            out[name] = np.frombuffer(memoryview(buffer), dtype=binding.dtype, count=count).reshape(shapes[name]).copy()
        return out

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


def profile_shapes(
    inputs: Sequence[TensorInfo], max_batch: int, opt_batch: int, dims: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max of each input: batch 1 / the preferred batch / max_batch_size; other dynamic dims
    from ``dims`` (the config's fixed values), else 1 / their max."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
    for info in inputs:
        fixed = list((dims or {}).get(info.name, []))
        rest = [
            d if d is not None else (fixed[i] if i < len(fixed) and fixed[i] > 0 else None)
            for i, d in enumerate(info.shape[1:])
        ]
        if any(d is None for d in rest):
            raise BackendLoadError(f"input {info.name!r} has dynamic dims {info.shape}: give them in config.pbtxt")
        tail = tuple(int(d) for d in rest if d is not None)
        shapes[info.name] = ((1, *tail), (max(1, opt_batch), *tail), (max_batch, *tail))
    return shapes
