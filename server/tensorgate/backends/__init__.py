"""Engines that run a model. A backend knows one engine and nothing of the server.

:func:`loaders` is the registry the repository loads instances through: one loader per engine this
build can run. Each imports its engine's libraries only when called, so importing the registry never
imports ONNX Runtime's CUDA build or TensorRT. TensorRT is not registered yet: its backend
(``backends/tensorrt/``) has no loader adapter (model options, cache, profile) and has never run.
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


def loaders() -> dict[Engine, BackendLoader]:
    """The engines this build can load, each with its loader."""
    return {Engine.ORT_CPU: _load_ort_cpu, Engine.ORT_CUDA: _load_ort_cuda}
