"""ONNX Runtime on the CUDA execution provider (needs onnxruntime-gpu: the [gpu] extra).

Not yet run on a GPU: the session is checked to really run on CUDA (ONNX Runtime silently falls
back to the CPU when CUDA or cuDNN libraries are missing). Pinned staging buffers, IOBinding and
one CUDA stream per instance are still to come.
"""

from __future__ import annotations

from pathlib import Path

from tensorgate.backends.base import BackendOptions, Engine
from tensorgate.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend


class OnnxRuntimeCudaBackend(OnnxRuntimeCpuBackend):
    ENGINE = Engine.ORT_CUDA

    def providers(self, options: BackendOptions) -> list[str | tuple[str, dict[str, str]]]:
        device = options.device.removeprefix("cuda:") if options.device.startswith("cuda:") else "0"
        return [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]


def load(model_file: Path, options: BackendOptions) -> OnnxRuntimeCudaBackend:
    return OnnxRuntimeCudaBackend(model_file, options)
