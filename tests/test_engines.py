"""Engine selection: the plan from config and machine, and the fallback when an engine fails to load.

These run on the CPU: the machine's capabilities are given to the planner as data, never faked into
the process, and the engine that fails is a loader that raises as a missing CUDA library would.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from google.protobuf import text_format
from models import identity
from tensorgate import engines
from tensorgate.backends import onnxruntime_cpu
from tensorgate.backends.base import Backend, BackendLoadError, BackendOptions
from tensorgate.engines import Capabilities, Engine, Precision
from tensorgate.errors import ModelConfigError
from tensorgate.proto import model_config_pb2 as mc
from tensorgate.repository import Repository
from tensorgate.settings import Settings

GPU = Capabilities(
    gpus=("NVIDIA H100",), tensorrt_version="10.13", ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")
)
CPU_ONLY = Capabilities(no_gpu_reason="NVML found no GPU")


def config(text: str = "") -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def engines_of(plan: engines.EnginePlan) -> list[Engine]:
    return [c.engine for c in plan.candidates]


def test_gpu_machine_prefers_tensorrt_fp16_then_cuda_then_cpu() -> None:
    plan = engines.plan(config(), GPU)
    assert engines_of(plan) == [Engine.TENSORRT, Engine.ORT_CUDA, Engine.ORT_CPU]
    assert plan.candidates[0].precision is Precision.FP16 and not plan.passed_over


def test_cpu_machine_says_why_it_skips_the_gpu_engines() -> None:
    plan = engines.plan(config(), CPU_ONLY)
    assert engines_of(plan) == [Engine.ORT_CPU]
    assert plan.passed_over == ((Engine.TENSORRT, "NVML found no GPU"), (Engine.ORT_CUDA, "NVML found no GPU"))


def test_kind_cpu_stays_on_the_cpu() -> None:
    plan = engines.plan(config("instance_group [{ kind: KIND_CPU }]"), GPU)
    assert engines_of(plan) == [Engine.ORT_CPU]
    assert all("KIND_CPU" in why for _, why in plan.passed_over)


def test_missing_tensorrt_and_cuda_provider_are_named() -> None:
    caps = Capabilities(gpus=("NVIDIA H100",), no_tensorrt_reason="tensorrt is not installed")
    plan = engines.plan(config("instance_group [{ kind: KIND_GPU gpus: [0] }]"), caps)
    assert engines_of(plan) == [Engine.ORT_CPU]
    reasons = dict(plan.passed_over)
    assert "tensorrt is not installed" in reasons[Engine.TENSORRT]
    assert "CUDAExecutionProvider" in reasons[Engine.ORT_CUDA]


def test_tensorrt_not_in_this_build_steps_down_to_cuda() -> None:
    plan = engines.plan(config(), GPU, tensorrt_available=lambda: "not built yet")
    assert engines_of(plan) == [Engine.ORT_CUDA, Engine.ORT_CPU]
    assert dict(plan.passed_over)[Engine.TENSORRT] == "not built yet"


def test_precision_mode_from_config() -> None:
    text = (
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP32" } } ] } }'
    )
    assert engines.plan(config(text), GPU).candidates[0].precision is Precision.FP32
    with pytest.raises(ModelConfigError, match="openvino"):
        engines.plan(
            config('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "openvino" } ] } }'),
            GPU,
        )
    with pytest.raises(ModelConfigError, match="INT8"):
        engines.plan(
            config(
                'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
                'parameters { key: "precision_mode" value: "INT8" } } ] } }'
            ),
            GPU,
        )


def test_gpu_index_beyond_the_machine_fails() -> None:
    with pytest.raises(ModelConfigError, match="GPU 3"):
        engines.plan(config("instance_group [{ kind: KIND_GPU gpus: [3] }]"), GPU)


def test_detect_on_this_machine_reports_reasons() -> None:
    caps = Capabilities.detect()
    assert "CPUExecutionProvider" in caps.ort_providers
    if not caps.gpus:
        assert caps.no_gpu_reason


def test_repository_falls_back_when_an_engine_fails_to_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")

    def cuda_without_libraries(model_file: Path, options: BackendOptions) -> Backend:
        assert options.device == "cuda:0"
        raise BackendLoadError("ONNX Runtime did not start CUDAExecutionProvider (libcudnn.so.9 missing)")

    repo = Repository(
        Settings(model_repository=tmp_path / "repo"),
        loaders={Engine.ORT_CUDA: cuda_without_libraries, Engine.ORT_CPU: onnxruntime_cpu.load},
        capabilities=GPU,
    )

    async def run() -> None:
        await repo.start()
        served = repo.get("m")
        assert served.engine == "onnxruntime-cpu"
        kinds = [g.kind for g in served.spec.config.instance_group]
        assert kinds == [mc.ModelInstanceGroup.KIND_CPU]
        await repo.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    text = caplog.text
    assert "event=engine_passed_over model=m version=1 engine=tensorrt" in text
    assert "event=engine_fallback model=m version=1 engine=onnxruntime-cuda" in text and "libcudnn" in text
