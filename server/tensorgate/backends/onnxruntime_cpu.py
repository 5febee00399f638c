"""ONNX Runtime on the CPU execution provider."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tensorgate.backends.base import (
    BackendExecuteError,
    BackendInputError,
    BackendLoadError,
    BackendOptions,
    Engine,
    TensorInfo,
)

# ONNX Runtime's own logger writes colored lines to stderr; its errors reach our log as exceptions.
ort.set_default_logger_severity(4)

STRING = 8
BFLOAT16 = 16

# ONNX Runtime's type strings ("tensor(float)") to ONNX TensorProto element types.
_ORT_TYPES: dict[str, int] = {
    "tensor(float)": 1,
    "tensor(uint8)": 2,
    "tensor(int8)": 3,
    "tensor(uint16)": 4,
    "tensor(int16)": 5,
    "tensor(int32)": 6,
    "tensor(int64)": 7,
    "tensor(string)": STRING,
    "tensor(bool)": 9,
    "tensor(float16)": 10,
    "tensor(double)": 11,
    "tensor(uint32)": 12,
    "tensor(uint64)": 13,
    "tensor(bfloat16)": BFLOAT16,
}


def _tensor_info(arg: ort.NodeArg, optional: bool = False) -> TensorInfo:
    onnx_type = _ORT_TYPES.get(arg.type)
    if onnx_type is None:
        raise BackendLoadError(f"tensor {arg.name!r} has type {arg.type}, which tensorgate cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorInfo(arg.name, onnx_type, shape, optional)


def _bf16_to_numpy(value: ort.OrtValue) -> np.ndarray:
    """Copy a CPU bfloat16 OrtValue's raw 16-bit patterns into a uint16 array (numpy has no bf16)."""
    shape = tuple(value.shape())
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dtype=np.uint16)
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.frombuffer(memoryview(buffer), dtype=np.uint16, count=count).reshape(shape).copy()


def _bf16_value(array: np.ndarray) -> ort.OrtValue:
    """A bfloat16 OrtValue over a uint16 array of raw 16-bit patterns."""
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array, dtype=np.uint16), BFLOAT16)


class OnnxRuntimeCpuBackend:
    """One ONNX Runtime inference session on the CPU (subclasses change the execution provider)."""

    ENGINE = Engine.ORT_CPU

    def providers(self, options: BackendOptions) -> list[str | tuple[str, dict[str, str]]]:
        return ["CPUExecutionProvider"]

    def __init__(self, model_file: Path, options: BackendOptions) -> None:
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        if options.parallel_execution:
            session_options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        session_options.log_severity_level = 3
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for library in options.op_libraries:  # as Triton's ONNX Runtime backend: RegisterCustomOpsLibrary
            try:
                session_options.register_custom_ops_library(library)
            except Exception as exc:
                raise BackendLoadError(
                    f"model_operations op_library_filename {library!r} cannot be registered: {exc}"
                ) from exc
        try:
            providers = self.providers(options)
            self._session = ort.InferenceSession(str(model_file), sess_options=session_options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise BackendLoadError(f"ONNX Runtime cannot load {model_file.name}: {exc}") from exc
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        active = self._session.get_providers()
        if not active or active[0] != wanted:
            # ONNX Runtime silently falls back to the CPU when e.g. the CUDA libraries are missing.
            raise BackendLoadError(f"ONNX Runtime did not start {wanted} (it runs {active}); see its log for why")
        # One RunOptions for every run: terminate() sets its flag from another thread, and ONNX
        # Runtime stops the run at its next operator; each run clears it first. The scheduler calls
        # terminate() only while a batch runs, never between runs, so no stale request stops a later one.
        self._run_options = ort.RunOptions()
        # A failing run: ONNX Runtime's own ERROR lines (colour codes, not key=value) would repeat what its
        # exception says, which the scheduler logs as event=execute_failed; FATAL only during runs.
        self._run_options.log_severity_level = 4
        # The graph's inputs, then the initializers a request may override (as Triton's ONNX Runtime
        # backend merges them in: config.pbtxt may declare them as optional inputs).
        self._inputs = (
            *(_tensor_info(a) for a in self._session.get_inputs()),
            *(
                _tensor_info(a, optional=True)
                for a in self._session.get_overridable_initializers()
                if a.type in _ORT_TYPES  # one of a type no request can carry is simply not offered
            ),
        )
        self._outputs = tuple(_tensor_info(a) for a in self._session.get_outputs())
        self._input_types = {t.name: t.onnx_type for t in self._inputs}
        self._output_types = {t.name: t.onnx_type for t in self._outputs}
        self._bf16_inputs = any(t.onnx_type == BFLOAT16 for t in self._inputs)
        # Neither strings nor bfloat16 anywhere: numpy arrays go to ONNX Runtime and come back as they are.
        self._plain = not any(t.onnx_type in (STRING, BFLOAT16) for t in (*self._inputs, *self._outputs))
        if any(t.onnx_type == BFLOAT16 for t in self._outputs) and STRING in self._input_types.values():
            # bfloat16 outputs need run_with_ort_values, whose inputs must all be OrtValues, and
            # ONNX Runtime's Python API cannot make an OrtValue of strings.
            raise BackendLoadError(
                f"{model_file.name} has string inputs and bfloat16 outputs, which ONNX Runtime's Python API "
                "cannot run together; cast the bfloat16 outputs to float32 or float16"
            )

    @property
    def engine(self) -> Engine:
        return self.ENGINE

    @property
    def inputs(self) -> Sequence[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorInfo]:
        return self._outputs

    def _feed(self, name: str, array: np.ndarray) -> np.ndarray:
        if self._input_types.get(name) == STRING:
            try:
                return np.array(
                    [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)],
                    dtype=np.object_,
                ).reshape(array.shape)
            except UnicodeDecodeError as exc:
                raise BackendInputError(
                    f"input {name!r}: an element is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                    "ONNX string tensors hold UTF-8 text"
                ) from None
        return array

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        names = list(output_names)
        run_options = self._run_options  # terminate is set by terminate() and cleared by reset_terminate() only
        if self._plain:
            try:
                return dict(zip(names, self._session.run(names, inputs, run_options), strict=True))
            except Exception as exc:
                raise BackendExecuteError(f"ONNX Runtime failed: {exc}") from exc
        feeds = {name: self._feed(name, array) for name, array in inputs.items()}
        try:
            if any(self._output_types.get(name) == BFLOAT16 for name in names):
                results = self._run_with_ort_values(feeds, names)
            elif self._bf16_inputs:  # run() takes OrtValues among numpy feeds (and strings, unlike OrtValues)
                results = self._session.run(
                    names,
                    {
                        name: _bf16_value(array) if self._input_types.get(name) == BFLOAT16 else array
                        for name, array in feeds.items()
                    },
                    run_options,
                )
            else:
                results = self._session.run(names, feeds, run_options)
        except BackendExecuteError:
            raise
        except Exception as exc:
            raise BackendExecuteError(f"ONNX Runtime failed: {exc}") from exc
        out: dict[str, np.ndarray] = {}
        for name, value in zip(names, results, strict=True):
            if self._output_types.get(name) == STRING:
                value = np.array(
                    [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value.reshape(-1)],
                    dtype=np.object_,
                ).reshape(value.shape)
            out[name] = value
        return out

    def _run_with_ort_values(self, feeds: Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        values: dict[str, ort.OrtValue] = {}
        for name, array in feeds.items():
            if self._input_types.get(name) == BFLOAT16:
                values[name] = _bf16_value(array)
            else:
                values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        results = self._session.run_with_ort_values(names, values, self._run_options)
        return [
            _bf16_to_numpy(value) if self._output_types.get(name) == BFLOAT16 else value.numpy()
            for name, value in zip(names, results, strict=True)
        ]

    def terminate(self) -> None:
        self._run_options.terminate = True

    def reset_terminate(self) -> None:
        self._run_options.terminate = False

    def close(self) -> None:
        del self._session


def load(model_file: Path, options: BackendOptions) -> OnnxRuntimeCpuBackend:
    return OnnxRuntimeCpuBackend(model_file, options)
