"""ONNX Runtime on CUDA, what of it runs on a CPU: the provider options (a pure function), where they
come from (server flags, config.pbtxt parameters as Triton's ONNX Runtime backend names them), the
IOBinding path (driven through real ONNX Runtime with host memory standing in for the device: this
checks our IOBinding calls and buffer reuse, not CUDA), and device copies counted as
compute_input / compute_output. The same backend on a GPU is in tests/test_gpu.py."""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import trt_standin
from google.protobuf import text_format
from models import add_sub, identity
from tensorgate import model_config
from tensorgate.backends import onnxruntime_cpu, onnxruntime_cuda
from tensorgate.backends.base import BackendLoadError, BackendOptions, Engine, Phases, TensorInfo
from tensorgate.backends.onnxruntime_cuda import BoundRunner, provider_options
from tensorgate.errors import ModelConfigError
from tensorgate.instance import Instance
from tensorgate.proto import model_config_pb2 as mc
from tensorgate.repository.engine_plan import Candidate
from tensorgate.repository.loader import instance_options
from tensorgate.request import InferRequest
from tensorgate.settings import Settings


def test_provider_options_default_to_heuristic_search_and_exact_arena_growth() -> None:
    assert provider_options(0, None) == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "device_id": "0",
    }


def test_provider_options_take_the_instance_stream_and_device_last() -> None:
    options = provider_options(3, 0x7F00, [("cudnn_conv_algo_search", "EXHAUSTIVE"), ("gpu_mem_limit", "1024")])
    assert options == {
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": "1024",
        "device_id": "3",
        "has_user_compute_stream": "1",
        "user_compute_stream": str(0x7F00),
    }
    with pytest.raises(BackendLoadError, match="'user_compute_stream' is set by tensorgate"):
        provider_options(0, None, [("user_compute_stream", "1")])


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def cuda_options(settings: Settings, text: str = "") -> dict[str, str]:
    instances = model_config.instance_settings(parse(text))
    return dict(instance_options(instances, Candidate(Engine.ORT_CUDA, device=1), settings).cuda_options)


def test_cuda_options_come_from_the_flags_then_the_models_triton_parameters() -> None:
    assert cuda_options(Settings()) == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
    }
    flags = Settings(ort_cuda_gpu_mem_limit_bytes=2 << 30, ort_cuda_cudnn_conv_algo_search="DEFAULT")
    assert cuda_options(flags)["gpu_mem_limit"] == str(2 << 30)
    text = (
        "parameters { key: 'cudnn_conv_algo_search' value { string_value: '0' } }"
        " parameters { key: 'gpu_mem_limit' value { string_value: '4294967200' } }"
        " parameters { key: 'arena_extend_strategy' value { string_value: '0' } }"
        " parameters { key: 'do_copy_in_default_stream' value { string_value: '1' } }"
    )
    assert cuda_options(flags, text) == {
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "gpu_mem_limit": "4294967200",
        "do_copy_in_default_stream": "1",
    }
    assert model_config.check_supported(parse(text)) == []  # read, so not "ignored"
    accelerator = (
        "optimization { execution_accelerators { gpu_execution_accelerator [ { name: 'cuda' "
        "parameters { key: 'cudnn_conv_use_max_workspace' value: '0' } "
        "parameters { key: 'cudnn_conv_algo_search' value: 'HEURISTIC' } } ] } }"
    )
    both = cuda_options(Settings(), text + " " + accelerator)
    assert both["cudnn_conv_algo_search"] == "HEURISTIC" and both["cudnn_conv_use_max_workspace"] == "0"
    assert cuda_options(Settings(), accelerator)["arena_extend_strategy"] == "kSameAsRequested"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("parameters { key: 'cudnn_conv_algo_search' value { string_value: '3' } }", "from 0 to 2"),
        ("parameters { key: 'arena_extend_strategy' value { string_value: 'kSameAsRequested' } }", "from 0 to 1"),
        ("parameters { key: 'gpu_mem_limit' value { string_value: '-1' } }", "'gpu_mem_limit' must be an integer"),
        (
            "optimization { execution_accelerators { gpu_execution_accelerator [ { name: 'cuda' "
            "parameters { key: 'device_id' value: '1' } } ] } }",
            "'device_id' is set by tensorgate",
        ),
    ],
)
def test_bad_cuda_parameters_fail_the_load_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ModelConfigError, match=problem):
        model_config.check_supported(parse(text))


class HostMemory:
    """Host memory in the device's place, for the IOBinding path on a CPU (IOBinding's "cpu" device)."""

    device_type = "cpu"
    device_id = 0

    def __init__(self) -> None:
        self.buffers: dict[int, Any] = {}
        self.allocated: list[int] = []
        self.selected = 0

    def select(self) -> None:
        self.selected += 1

    def allocate(self, nbytes: int) -> tuple[int, int]:
        self.allocated.append(nbytes)
        pair = (ctypes.create_string_buffer(nbytes), ctypes.create_string_buffer(nbytes))
        for buffer in pair:
            self.buffers[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(pair[0]), ctypes.addressof(pair[1])

    def free(self, device: int, host: int) -> None:
        del self.buffers[device], self.buffers[host]

    def to_device(self, device: int, host: int, nbytes: int) -> None:
        ctypes.memmove(device, host, nbytes)

    def to_host(self, host: int, device: int, nbytes: int) -> None:
        ctypes.memmove(host, device, nbytes)

    def mark(self) -> int:
        return time.perf_counter_ns()

    def elapsed_ns(self, start: int, end: int) -> int:
        return end - start

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_iobinding_binds_each_batch_to_reused_buffers_and_matches_session_run(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(add_sub(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    memory = HostMemory()
    runner = BoundRunner(session, ort.RunOptions(), memory)
    rng = np.random.default_rng(0)
    for rows in (2, 8, 3, 8, 1):
        a, b = (rng.standard_normal((rows, 16)).astype(np.float32) for _ in range(2))
        out = runner.run({"INPUT0": a, "INPUT1": b}, ["OUTPUT1", "OUTPUT0"])
        assert list(out) == ["OUTPUT1", "OUTPUT0"]
        expected = session.run(["OUTPUT1", "OUTPUT0"], {"INPUT0": a, "INPUT1": b})
        np.testing.assert_array_equal(out["OUTPUT1"], expected[0])
        np.testing.assert_array_equal(out["OUTPUT0"], expected[1])
    # Four tensors, each allocated for 2 rows, then grown once for 8: reused for every other batch.
    assert sorted(memory.allocated) == [128] * 4 + [512] * 4
    assert memory.selected == 5  # the device is selected on the running thread for every batch
    assert runner.phases.copy_in_ns > 0 and runner.phases.copy_out_ns > 0
    runner.close()
    assert not memory.buffers


def test_iobinding_leaves_outputs_it_cannot_size_to_onnx_runtime(tmp_path: Path) -> None:
    model = identity(tmp_path / "m.onnx", shape=("n", "m"))  # no dim says how big the output is
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    runner = BoundRunner(session, ort.RunOptions(), HostMemory())
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(runner.run({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"], x)


def test_the_cuda_backend_gives_onnx_runtime_its_own_non_blocking_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cuda-python stand-in (tests/trt_standin.py): our calls, not a GPU."""
    state = trt_standin.State(devices=2)
    for name, module in trt_standin.modules(state).items():
        monkeypatch.setitem(sys.modules, name, module)
    seen: list[Any] = []

    def no_cuda_here(path: str, sess_options: Any = None, providers: Any = None) -> Any:
        seen.append(providers)
        raise RuntimeError("CUDAExecutionProvider is not available on this machine")

    monkeypatch.setattr(onnxruntime_cpu.ort, "InferenceSession", no_cuda_here)
    model = identity(tmp_path / "m.onnx")
    with pytest.raises(BackendLoadError, match="ONNX Runtime cannot load"):
        onnxruntime_cuda.load(model, BackendOptions(device="cuda:1", cuda_options=(("gpu_mem_limit", "64"),)))
    ((stream_thread, (flags,)),) = state.cuda.named("cudaStreamCreateWithFlags")
    assert flags == state.cuda.cudaStreamNonBlocking
    assert (stream_thread, (1,)) in state.cuda.named("cudaSetDevice")  # the stream lives on the instance's GPU
    ((name, options), _) = seen[0]
    assert name == "CUDAExecutionProvider"
    assert options["device_id"] == "1" and options["gpu_mem_limit"] == "64"
    assert options["has_user_compute_stream"] == "1" and int(options["user_compute_stream"]) >= 0x1000
    assert not state.cuda.streams and not state.cuda.events  # the failed load released them


class CopyingBackend:
    """Reports, as a GPU backend does, that part of ``execute`` was copies to and from the device."""

    engine = Engine.ORT_CUDA
    inputs: Sequence[TensorInfo] = (TensorInfo("x", 1, (None, 4)),)
    outputs: Sequence[TensorInfo] = (TensorInfo("y", 1, (None, 4)),)

    def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        time.sleep(0.02)
        return {"y": inputs["x"]}

    def last_phases(self) -> Phases:
        return Phases(copy_in_ns=5_000_000, copy_out_ns=3_000_000)

    def terminate(self) -> None:
        pass

    def reset_terminate(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_standin_backend_our_instance_counts_reported_copies_as_compute_input_and_output_not_infer() -> None:
    """Our Instance's accounting, with a stand-in backend (CopyingBackend: no device, no CUDA) that
    reports copy times as a GPU backend would: they move from compute_infer to compute_input/output."""
    instance = Instance("m", 0, CopyingBackend())
    x = np.ones((2, 4), np.float32)
    result = instance.run([InferRequest(id="", inputs={"x": x}, outputs=("y",), batch_size=2)], ("y",), True)
    assert result.error is None
    assert result.input_ns >= 5_000_000 and result.output_ns >= 3_000_000
    assert result.infer_ns >= 20_000_000 - 8_000_000 - 2_000_000  # the run itself, less the copies
    assert result.input_ns + result.infer_ns + result.output_ns == result.total_ns
    instance.close()
