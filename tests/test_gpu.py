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


# ---- issue 13: the GPU path (TensorRT wired in, shared engines, ORT CUDA with IOBinding) ----
# These need the real device and libraries; the same wiring is checked on the CPU against a
# stand-in in tests/test_tensorrt_contract.py, which says nothing of a GPU.

from tensorgate.backends.tensorrt import libs as trt_libs  # noqa: E402 (after the module's skip marks)

TENSORRT_MISSING = trt_libs.missing()
needs_tensorrt = pytest.mark.skipif(TENSORRT_MISSING is not None, reason=f"no TensorRT here: {TENSORRT_MISSING}")
needs_two_gpus = pytest.mark.skipif(len(CAPS.gpus) < 2, reason=f"needs two GPUs, this machine has {len(CAPS.gpus)}")


def _wait_for_log(server, text: str, timeout: float = 900.0) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while text not in server.log:
        assert time.monotonic() < deadline, f"{text!r} not logged in {timeout:.0f} s:\n{server.log[-4000:]}"
        time.sleep(0.5)
    return str(server.log)


def _infer_many(server, model: str, batches: list[np.ndarray]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Send every batch at once (so the dynamic batcher can merge them); their OUTPUT0s in order."""
    import queue

    answers: queue.Queue[tuple[int, object]] = queue.Queue()
    for i, x in enumerate(batches):
        tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        server.client.async_infer(
            model, [tensor], callback=lambda result, error, i=i: answers.put((i, error or result))
        )
    out: dict[int, np.ndarray] = {}
    for _ in batches:
        i, result = answers.get(timeout=60)
        assert not isinstance(result, Exception), result
        out[i] = result.as_numpy("OUTPUT0")  # type: ignore[attr-defined]
    return [out[i] for i in range(len(batches))]


@needs_tensorrt
def test_tensorrt_fp16_serves_batches_on_two_instances(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from models import slow, write_config

    repo = tmp_path / "repo"
    slow(repo / "m" / "1" / "model.onnx", size=256, layers=8)
    write_config(
        repo / "m",
        "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"
        "instance_group [{ count: 2 kind: KIND_GPU gpus: [0] }]\n",
    )
    server = start_server(repo, "--engine-cache-dir", str(tmp_path / "cache"))
    log = _wait_for_log(server, "event=engine_switched model=m version=1 from=onnxruntime-cuda to=tensorrt")
    assert "event=fp16_accepted model=m version=1" in log
    assert "engine=tensorrt count=2 devices=cuda:0,cuda:0" in log
    assert log.count("event=tensorrt_instance gpu=0") >= 2  # two contexts over the one engine
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(64)]
    reference = ort.InferenceSession(str(repo / "m" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for x, y in zip(batches, _infer_many(server, "m", batches), strict=True):
        np.testing.assert_allclose(y, reference.run(None, {"INPUT0": x})[0], rtol=2e-2, atol=2e-2)
    stats = server.client.get_inference_statistics("m").model_stats[0]
    assert stats.execution_count < stats.inference_count, "no two requests were batched together"


@needs_tensorrt
def test_fp16_refused_for_an_overflowing_model_builds_fp32(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from test_engines import _matmul_model

    repo = tmp_path / "repo"
    _matmul_model(repo / "m" / "1" / "model.onnx", 1e3)  # intermediate values beyond FP16's 65504
    server = start_server(repo, "--engine-cache-dir", str(tmp_path / "cache"))
    log = _wait_for_log(server, "event=engine_switched model=m version=1 from=onnxruntime-cuda to=tensorrt")
    assert "event=fp16_refused model=m version=1" in log and "precision=fp32 gpu=0" in log
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    (y,) = _infer_many(server, "m", [x])
    reference = ort.InferenceSession(str(repo / "m" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, reference.run(None, {"INPUT0": x})[0], rtol=1e-2)


def test_onnxruntime_cuda_runs_through_iobinding_on_its_own_stream(tmp_path: Path) -> None:
    from models import add_sub
    from tensorgate.backends import onnxruntime_cuda
    from tensorgate.backends.base import BackendOptions

    model = add_sub(tmp_path / "m.onnx")
    backend = onnxruntime_cuda.load(model, BackendOptions(device="cuda:0"))
    try:
        assert backend._runner is not None, "IOBinding is not used (is cuda-python installed?)"
        options = backend._session.get_provider_options()["CUDAExecutionProvider"]
        assert options["cudnn_conv_algo_search"] == "HEURISTIC" and int(options["user_compute_stream"]) != 0
        reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(2)
        for rows in (1, 8, 3, 16):
            a, b = (rng.standard_normal((rows, 16)).astype(np.float32) for _ in range(2))
            out = backend.execute({"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
            expected = reference.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
            np.testing.assert_allclose(out["OUTPUT0"], expected[0], rtol=1e-6)
            np.testing.assert_allclose(out["OUTPUT1"], expected[1], rtol=1e-6)
        phases = backend.last_phases()
        assert phases.copy_in_ns > 0 and phases.copy_out_ns > 0
    finally:
        backend.close()


@needs_tensorrt
def test_tensorrt_data_dependent_output_and_shared_engine(tmp_path: Path) -> None:
    from tensorgate.backends.base import BackendOptions
    from tensorgate.backends.tensorrt import engine as trt_engine
    from tensorgate.backends.tensorrt import loader as trt_loader
    from test_tensorrt_contract import _nonzero_model

    model = _nonzero_model(tmp_path / "nz" / "1" / "model.onnx")
    options = BackendOptions(device="cuda:0", cache_dir=tmp_path / "cache", model="nz")
    first, second = trt_loader.load(model, options), trt_loader.load(model, options)
    try:
        assert first.shared_engine is second.shared_engine and trt_engine.live_engines() == 1
        x = np.zeros((3, 4), np.float32)
        x[0, 1] = x[2, 3] = 5.0
        for backend in (first, second):
            out = backend.execute({"INPUT0": x}, ["OUTPUT0", "COPY"])
            np.testing.assert_array_equal(out["OUTPUT0"], np.stack(np.nonzero(x)))
    finally:
        first.close()
        second.close()
    assert trt_engine.live_engines() == 0


def test_gpu_numbering_matches_cuda(tmp_path: Path) -> None:
    """The names and UUIDs tensorgate numbers 0, 1, ... are CUDA's devices 0, 1, ... in this process."""
    try:
        cudart = trt_libs.cudart()
    except Exception as exc:
        pytest.skip(f"cuda-python is not installed: {exc}")
    for index, uuid in enumerate(CAPS.gpu_uuids):
        props = trt_libs.check(cudart.cudaGetDeviceProperties(index))
        raw = bytes(props.uuid.bytes) if hasattr(props.uuid, "bytes") else bytes(props.uuid)
        hexed = raw.hex()
        cuda_uuid = f"GPU-{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:32]}"
        assert cuda_uuid.lower() == uuid.lower(), (index, cuda_uuid, uuid)


@needs_two_gpus
def test_count_instances_on_each_listed_gpu(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from models import identity, write_config

    repo = tmp_path / "repo"
    identity(repo / "m" / "1" / "model.onnx")
    write_config(repo / "m", "instance_group [{ count: 2 kind: KIND_GPU gpus: [0, 1] }]\n")
    server = start_server(repo, "--engine-cache-dir", str(tmp_path / "cache"))
    assert "count=4 devices=cuda:0,cuda:0,cuda:1,cuda:1" in server.log, server.log
    x = np.ones((1, 16), np.float32)
    (y,) = _infer_many(server, "m", [x])
    np.testing.assert_array_equal(y, x)


@needs_tensorrt
def test_unloading_a_tensorrt_model_frees_its_gpu_memory(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from models import identity, slow

    repo = tmp_path / "repo"
    identity(repo / "tiny" / "1" / "model.onnx")
    slow(repo / "big" / "1" / "model.onnx", size=4096, layers=8)
    server = start_server(
        repo, "--model-control-mode", "explicit", "--load-model", "tiny", "--engine-cache-dir", str(tmp_path / "cache")
    )
    _wait_for_log(server, "event=engine_switched model=tiny version=1")
    base = _gpu_memory_used()
    server.client.load_model("big")
    _wait_for_log(server, "event=engine_switched model=big version=1 from=onnxruntime-cuda to=tensorrt")
    loaded = _gpu_memory_used()
    assert loaded - base > 16 << 20, (base, loaded)
    server.client.unload_model("big")
    deadline = time.monotonic() + 60
    while _gpu_memory_used() - base > 16 << 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _gpu_memory_used() - base <= 16 << 20, f"GPU memory not released after unload: {base} -> {loaded}"
