"""Engine selection: the plan from config and machine, and the fallback when an engine fails to load.

These run on the CPU: the machine's capabilities are given to the planner as data, never faked into
the process, and the engine that fails is a loader that raises as a missing CUDA library would.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from google.protobuf import text_format
from models import identity
from tensorgate import model_config
from tensorgate.backends import onnxruntime_cpu
from tensorgate.backends.base import Backend, BackendLoadError, BackendOptions, Engine, Precision
from tensorgate.errors import ModelConfigError
from tensorgate.proto import model_config_pb2 as mc
from tensorgate.repository import Repository, engine_plan
from tensorgate.repository.engine_plan import Capabilities
from tensorgate.request import InferRequest
from tensorgate.settings import Settings

GPU = Capabilities(
    gpus=("NVIDIA H100",), tensorrt_version="10.13", ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")
)
CPU_ONLY = Capabilities(no_gpu_reason="NVML found no GPU")


def config(text: str = "") -> model_config.InstanceSettings:
    """The instance settings engine_plan.plan reads, from config.pbtxt text."""
    return model_config.instance_settings(text_format.Parse(text, mc.ModelConfig()))


def engines_of(plan: engine_plan.EnginePlan) -> list[Engine]:
    return [c.engine for c in plan.candidates]


def test_gpu_machine_prefers_tensorrt_fp16_then_cuda_then_cpu() -> None:
    plan = engine_plan.plan(config(), GPU)
    assert engines_of(plan) == [Engine.TENSORRT, Engine.ORT_CUDA, Engine.ORT_CPU]
    assert plan.candidates[0].precision is Precision.FP16 and not plan.passed_over


def test_cpu_machine_says_why_it_skips_the_gpu_engines() -> None:
    plan = engine_plan.plan(config(), CPU_ONLY)
    assert engines_of(plan) == [Engine.ORT_CPU]
    assert plan.passed_over == ((Engine.TENSORRT, "NVML found no GPU"), (Engine.ORT_CUDA, "NVML found no GPU"))


def test_kind_cpu_stays_on_the_cpu() -> None:
    plan = engine_plan.plan(config("instance_group [{ kind: KIND_CPU }]"), GPU)
    assert engines_of(plan) == [Engine.ORT_CPU]
    assert all("KIND_CPU" in why for _, why in plan.passed_over)


def test_missing_tensorrt_and_cuda_provider_are_named() -> None:
    caps = Capabilities(gpus=("NVIDIA H100",), no_tensorrt_reason="tensorrt is not installed")
    plan = engine_plan.plan(config("instance_group [{ kind: KIND_GPU gpus: [0] }]"), caps)
    assert engines_of(plan) == [Engine.ORT_CPU]
    reasons = dict(plan.passed_over)
    assert "tensorrt is not installed" in reasons[Engine.TENSORRT]
    assert "CUDAExecutionProvider" in reasons[Engine.ORT_CUDA]


def test_tensorrt_not_in_this_build_steps_down_to_cuda() -> None:
    plan = engine_plan.plan(config(), GPU, tensorrt_missing="not built yet")
    assert engines_of(plan) == [Engine.ORT_CUDA, Engine.ORT_CPU]
    assert dict(plan.passed_over)[Engine.TENSORRT] == "not built yet"


def test_precision_mode_from_config() -> None:
    text = (
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP32" } } ] } }'
    )
    assert engine_plan.plan(config(text), GPU).candidates[0].precision is Precision.FP32
    with pytest.raises(ModelConfigError, match="openvino"):
        engine_plan.plan(
            config('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "openvino" } ] } }'),
            GPU,
        )
    with pytest.raises(ModelConfigError, match="INT8"):
        engine_plan.plan(
            config(
                'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
                'parameters { key: "precision_mode" value: "INT8" } } ] } }'
            ),
            GPU,
        )


def test_gpu_index_beyond_the_machine_fails() -> None:
    with pytest.raises(ModelConfigError, match="GPU 3"):
        engine_plan.plan(config("instance_group [{ kind: KIND_GPU gpus: [3] }]"), GPU)


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
        assert served.engine is Engine.ORT_CPU
        kinds = [g.kind for g in served.spec.config.instance_group]
        assert kinds == [mc.ModelInstanceGroup.KIND_CPU]
        await repo.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    text = caplog.text
    assert "event=engine_passed_over model=m version=1 engine=tensorrt" in text
    assert "event=engine_fallback model=m version=1 engine=onnxruntime-cuda" in text and "libcudnn" in text


class SlowBuiltEngine(onnxruntime_cpu.OnnxRuntimeCpuBackend):
    """Stands in for an engine that takes long to build (TensorRT): same answers, slow to load."""

    ENGINE = Engine.TENSORRT
    build_seconds = 1.0
    fail = False
    gate: threading.Event | None = None  # set: the build waits for the test to open it instead of sleeping
    builds_ended = 0

    def __init__(self, model_file: Path, options: BackendOptions) -> None:
        if self.gate is not None:
            assert self.gate.wait(60), "the test never let the build finish"
        else:
            time.sleep(self.build_seconds)
        type(self).builds_ended += 1
        if self.fail:
            raise BackendLoadError("engine build failed: out of workspace memory")
        super().__init__(model_file, options)


def _gpu_repository(repo: Path, engine: type[SlowBuiltEngine]) -> Repository:
    def no_cuda(model_file: Path, options: BackendOptions) -> Backend:
        raise BackendLoadError("ONNX Runtime did not start CUDAExecutionProvider")

    return Repository(
        Settings(model_repository=repo),
        loaders={Engine.TENSORRT: engine, Engine.ORT_CUDA: no_cuda, Engine.ORT_CPU: onnxruntime_cpu.load},
        capabilities=GPU,
    )


async def _traffic(repo: Repository, stop: asyncio.Event, seen: list[Engine]) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    while not stop.is_set():
        served = repo.get("m")
        out = await served.scheduler.infer(InferRequest(id="", inputs={"INPUT0": x}, outputs=("OUTPUT0",)))
        np.testing.assert_array_equal(out["OUTPUT0"], x)
        seen.append(served.engine)
        await asyncio.sleep(0)


def test_serves_on_the_fallback_while_the_engine_builds_then_moves_without_dropping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")

    class Gated(SlowBuiltEngine):
        gate = threading.Event()

    repo = _gpu_repository(tmp_path / "repo", Gated)

    async def run() -> list[str]:
        await repo.start()  # returns while the build is held: READY on the fallback before it ends
        assert Gated.builds_ended == 0 and repo.get("m").engine is Engine.ORT_CPU
        stop, seen = asyncio.Event(), []
        workers = [asyncio.create_task(_traffic(repo, stop, seen)) for _ in range(4)]
        while len(seen) < 20:  # served on the fallback while the build is held
            await asyncio.sleep(0.01)
        Gated.gate.set()
        started = time.monotonic()
        while repo.get("m").engine is not Engine.TENSORRT and time.monotonic() - started < 60:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)  # any failed request would raise here
        assert repo.get("m").stats.inference_count == len(seen)  # statistics continue across the switch
        await repo.stop()
        return seen

    with caplog.at_level(logging.INFO):
        seen = asyncio.run(run())
    assert seen[0] is Engine.ORT_CPU and seen[-1] is Engine.TENSORRT
    switch = seen.index(Engine.TENSORRT)
    assert all(engine is Engine.TENSORRT for engine in seen[switch:]), "traffic went back to the old engine"
    assert "event=engine_switched model=m version=1 from=onnxruntime-cpu to=tensorrt" in caplog.text


def test_a_failed_background_build_keeps_the_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")

    class Failing(SlowBuiltEngine):
        build_seconds = 0.2
        fail = True

    repo = _gpu_repository(tmp_path / "repo", Failing)

    async def run() -> None:
        await repo.start()
        for _ in range(200):  # the build's failure (after 0.2 s) is logged; at most 10 s on a slow machine
            if "event=engine_fallback model=m version=1 engine=tensorrt" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert repo.get("m").engine is Engine.ORT_CPU and repo.is_ready("m")
        await repo.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert "event=engine_fallback model=m version=1 engine=tensorrt" in caplog.text
    assert "out of workspace memory" in caplog.text and "keeps=onnxruntime-cpu" in caplog.text


def test_unload_during_the_build_drops_it(tmp_path: Path) -> None:
    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")

    class Gated(SlowBuiltEngine):
        gate = threading.Event()

    repo = _gpu_repository(tmp_path / "repo", Gated)

    async def run() -> None:
        await repo.start()
        await repo.unload("m")
        Gated.gate.set()  # the build ends after the unload
        await repo.upgrades.wait()
        assert Gated.builds_ended == 1  # it did end, and what it built was dropped
        assert not repo.is_ready("m")
        await repo.stop()

    asyncio.run(run())


class RecordingEngine(SlowBuiltEngine):
    """The slow engine, remembering what it was asked to build."""

    build_seconds = 0.1
    built: ClassVar[list[tuple[Path, Precision]]] = []

    def __init__(self, model_file: Path, options: BackendOptions) -> None:
        RecordingEngine.built.append((model_file, options.precision))
        super().__init__(model_file, options)


def _matmul_model(path: Path, scale: float) -> None:
    from models import save
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((16, 16)) * scale).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "w"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["OUTPUT0"])],
        "mm",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    save(graph, path)


REFUSED = {"model": "m", "version": "1", "outcome": "refused"}


@pytest.mark.parametrize(("scale", "accepted"), [(0.25, True), (1e3, False)])
def test_fp16_gate_decides_what_the_engine_builds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, scale: float, accepted: bool
) -> None:
    from prometheus_client import REGISTRY

    _matmul_model(tmp_path / "repo" / "m" / "1" / "model.onnx", scale)
    RecordingEngine.built = []
    repo = Repository(
        Settings(model_repository=tmp_path / "repo", engine_cache_dir=tmp_path / "cache"),
        loaders={Engine.TENSORRT: RecordingEngine, Engine.ORT_CPU: onnxruntime_cpu.load},
        capabilities=GPU,
    )
    refused_before = REGISTRY.get_sample_value("tensorgate_fp16_gate_total", REFUSED) or 0

    async def run() -> None:
        await repo.start()
        deadline = time.monotonic() + 20
        while repo.get("m").engine is not Engine.TENSORRT and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert repo.get("m").engine is Engine.TENSORRT
        await repo.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    (built_file, built_precision), *_ = RecordingEngine.built
    refused = REGISTRY.get_sample_value("tensorgate_fp16_gate_total", REFUSED) or 0
    if accepted:
        assert built_precision is Precision.FP16 and built_file.is_relative_to(tmp_path / "cache" / "fp16")
        assert "event=fp16_accepted model=m version=1" in caplog.text and refused == refused_before
    else:
        assert built_precision is Precision.FP32 and built_file == tmp_path / "repo" / "m" / "1" / "model.onnx"
        assert "event=fp16_refused model=m version=1" in caplog.text and "65504" in caplog.text
        assert refused == refused_before + 1


def test_stopping_does_not_wait_for_an_engine_still_building(tmp_path: Path) -> None:
    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")

    class Held(SlowBuiltEngine):
        gate = threading.Event()

    repo = _gpu_repository(tmp_path / "repo", Held)

    async def run() -> None:
        await repo.start()
        await asyncio.sleep(0.2)  # the build has started
        await repo.stop()

    try:
        asyncio.run(run())  # asyncio.run also waits for its default executor's threads
        assert Held.builds_ended == 0  # stopped with the build still held: stop did not wait for it
    finally:
        Held.gate.set()  # let the abandoned build's thread end


# ---- GPU numbering and instance placement (issue 13): pure decisions, on the CPU ----

NVML = [
    engine_plan.NvmlGpu("GPU-bbbb-0002", "NVIDIA L4", "00000000:81:00.0"),
    engine_plan.NvmlGpu("GPU-aaaa-0001", "NVIDIA H100", "00000000:3B:00.0"),
    engine_plan.NvmlGpu("GPU-cccc-0003", "NVIDIA A10", "00000000:C1:00.0"),
]


@pytest.mark.parametrize(
    ("visible", "uuids", "why"),
    [
        (None, ["GPU-aaaa-0001", "GPU-bbbb-0002", "GPU-cccc-0003"], ""),  # PCI bus order, not NVML's
        ("2,0", ["GPU-cccc-0003", "GPU-aaaa-0001"], ""),  # CUDA enumerates in the order given
        ("GPU-bbbb", ["GPU-bbbb-0002"], ""),  # a unique UUID prefix
        ("1,7,0", ["GPU-bbbb-0002"], "'7' names no single GPU"),  # CUDA stops at an invalid entry
        ("GPU-", [], "'GPU-' names no single GPU"),  # ambiguous prefix
        ("", [], "hides every GPU"),
        ("-1", [], "names no single GPU"),
    ],
)
def test_gpus_are_numbered_as_cuda_numbers_them(visible: str | None, uuids: list[str], why: str) -> None:
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    found, reason = engine_plan.cuda_devices(NVML, environ)
    assert [g.uuid for g in found] == uuids
    assert why in reason and (why or not reason)


def test_detect_maps_nvml_to_cuda_order_and_pins_the_device_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    class Pci:
        def __init__(self, bus: str) -> None:
            self.busId = bus.encode()

    gpus = {i: g for i, g in enumerate(NVML)}
    nvml = types.SimpleNamespace(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetUUID=lambda g: g.uuid,
        nvmlDeviceGetName=lambda g: g.name.encode(),
        nvmlDeviceGetPciInfo=lambda g: Pci(g.pci_bus_id),
    )
    module = types.ModuleType("pynvml")
    module.__dict__.update(vars(nvml))
    module.__spec__ = __import__("importlib").machinery.ModuleSpec("pynvml", None)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", module)
    environ = {"CUDA_VISIBLE_DEVICES": "GPU-cccc,0"}  # the process environment detect() reads and sets
    monkeypatch.setattr(engine_plan.os, "environ", environ)
    caps = Capabilities.detect()
    assert caps.gpus == ("NVIDIA A10", "NVIDIA H100") and caps.gpu_uuids == ("GPU-cccc-0003", "GPU-aaaa-0001")
    assert environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # set before any CUDA library starts


def test_instance_group_count_is_per_listed_gpu_as_in_triton() -> None:
    assert config("instance_group [{ count: 2 kind: KIND_GPU gpus: [0, 1] }]").gpu_devices(2) == (0, 0, 1, 1)
    assert config("instance_group [{ count: 2 kind: KIND_GPU }]").gpu_devices(3) == (0, 0, 1, 1, 2, 2)  # every GPU
    assert config("").gpu_devices(2) == (0, 1)  # Triton's default: one instance on each GPU
    two_groups = config("instance_group [{ count: 1 gpus: [1] }, { count: 2 gpus: [0] }]")
    assert two_groups.gpu_devices(2) == (1, 0, 0) and two_groups.count == 3
    mixed = config("instance_group [{ count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_GPU gpus: [1] }]")
    assert mixed.gpu_devices(2) == (1, 1, 1)
    hints = model_config.check_supported(
        text_format.Parse("instance_group [{ kind: KIND_CPU }, { kind: KIND_GPU }]", mc.ModelConfig())
    )
    assert any("mixes KIND_CPU" in h for h in hints)


def test_every_listed_gpu_must_exist() -> None:
    two = Capabilities(gpus=("A", "B"), tensorrt_version="10")
    assert engine_plan.plan(config("instance_group [{ gpus: [1, 0] }]"), two).candidates[0].device == 1
    with pytest.raises(ModelConfigError, match="GPU 2 but this process sees 2"):
        engine_plan.plan(config("instance_group [{ gpus: [0, 2] }]"), two)


class CudaStandIn(onnxruntime_cpu.OnnxRuntimeCpuBackend):
    """ONNX Runtime on the CPU reporting itself as the CUDA engine, remembering its device."""

    ENGINE = Engine.ORT_CUDA
    devices: ClassVar[list[str]] = []

    def __init__(self, model_file: Path, options: BackendOptions) -> None:
        CudaStandIn.devices.append(options.device)
        super().__init__(model_file, options)


def test_the_repository_places_count_instances_on_each_gpu_and_never_inline(tmp_path: Path) -> None:
    from models import write_config

    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")
    write_config(tmp_path / "repo" / "m", "instance_group [{ count: 2 kind: KIND_GPU gpus: [0, 1] }]")
    CudaStandIn.devices = []
    caps = Capabilities(gpus=("A", "B"), ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    repo = Repository(
        Settings(model_repository=tmp_path / "repo", inline_execution_us=1_000_000),
        loaders={Engine.ORT_CUDA: CudaStandIn, Engine.ORT_CPU: onnxruntime_cpu.load},
        capabilities=caps,
    )

    async def run() -> None:
        await repo.start()
        served = repo.get("m")
        assert served.engine is Engine.ORT_CUDA and len(served.scheduler.instances) == 4
        assert all(p.inline_execution_ns == 0 for p in served.scheduler.placements)
        await repo.stop()

    asyncio.run(run())
    assert CudaStandIn.devices == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
