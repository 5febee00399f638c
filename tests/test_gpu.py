"""GPU tests: run only on a machine with an NVIDIA GPU, nvidia-ml-py and onnxruntime-gpu (the
[gpu] extra); skipped with the reason otherwise. Never faked: the point is the real device."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT
from tensorgate.repository.engine_plan import Capabilities

CAPS = Capabilities.detect()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CAPS.gpus, reason=f"no GPU: {CAPS.no_gpu_reason}"),
    pytest.mark.skipif(not CAPS.ort_cuda, reason="onnxruntime has no CUDAExecutionProvider (install tensorgate[gpu])"),
]


def _gpu_memory_used() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    finally:
        pynvml.nvmlShutdown()


def test_models_run_on_onnxruntime_cuda(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repo", repo)
    server = start_server(repo)
    assert "engine=onnxruntime-cuda" in server.log, server.log
    a = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    inputs = [grpcclient.InferInput(n, [4, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    result = server.client.infer("add_sub", inputs)
    reference = ort.InferenceSession(str(repo / "add_sub" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference.run(None, {"INPUT0": a, "INPUT1": a})[0])
    assert server.client.get_model_config("add_sub").config.instance_group[0].kind == 1  # KIND_GPU


def test_unload_frees_gpu_memory(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from models import identity, slow

    repo = tmp_path / "repo"
    identity(repo / "tiny" / "1" / "model.onnx")  # loads first: the CUDA context is in the baseline
    slow(repo / "big" / "1" / "model.onnx", size=4096, layers=8)  # 64 MB of weights on the device
    server = start_server(repo, "--model-control-mode", "explicit", "--load-model", "tiny")
    base = _gpu_memory_used()
    server.client.load_model("big")
    loaded = _gpu_memory_used()
    assert loaded - base > 32 << 20, (base, loaded)
    server.client.unload_model("big")
    deadline = time.monotonic() + 30
    while _gpu_memory_used() - base > 16 << 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _gpu_memory_used() - base <= 16 << 20, f"GPU memory not released after unload: {base} -> {loaded}"
