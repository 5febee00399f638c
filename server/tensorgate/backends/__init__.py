"""Engines that run a model. A backend knows one engine and nothing of the server.

:func:`loaders` is the registry the repository loads instances through: one loader per engine this
build can run. Each imports its engine's libraries only when called, so importing the registry never
imports ONNX Runtime's CUDA build or TensorRT. TensorRT is registered where ``tensorrt`` and
cuda-python are installed (found, not imported); elsewhere :func:`tensorrt_missing` says why not,
and the engine plan passes TensorRT over with that reason.
"""

from __future__ import annotations

from pathlib import Path

from tensorgate.backends.base import Backend, BackendLoader, BackendOptions, Engine


def _load_ort_cpu(model_file: Path, options: BackendOptions) -> Backend:
    from tensorgate.backends import onnxruntime_cpu

    return onnxruntime_cpu.load(model_file, options)


def _load_ort_cuda(model_file: Path, options: BackendOptions) -> Backend:
    from tensorgate.backends import onnxruntime_cuda  # only where onnxruntime-gpu is installed

    return onnxruntime_cuda.load(model_file, options)


def _load_tensorrt(model_file: Path, options: BackendOptions) -> Backend:
    from tensorgate.backends.tensorrt import loader  # imports tensorrt only when it loads

    return loader.load(model_file, options)


def tensorrt_missing() -> str | None:
    """Why this install cannot run TensorRT engines; None where it can."""
    from tensorgate.backends.tensorrt import libs

    return libs.missing()


def loaders() -> dict[Engine, BackendLoader]:
    """The engines this build can load, each with its loader."""
    found: dict[Engine, BackendLoader] = {Engine.ORT_CPU: _load_ort_cpu, Engine.ORT_CUDA: _load_ort_cuda}
    if tensorrt_missing() is None:
        found[Engine.TENSORRT] = _load_tensorrt
    return found
