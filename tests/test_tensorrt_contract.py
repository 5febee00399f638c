"""Contract tests of the TensorRT backend (backends/tensorrt/) and its wiring into the server.

They check OUR CALLS against a stand-in of the ``tensorrt`` and ``cuda`` (cuda-python) modules
written from NVIDIA's documentation (tests/trt_standin.py), injected into ``sys.modules`` for each
test only: -1 on dynamic dims from the engine and real shapes from the context once the inputs are
set, the output allocator for data-dependent shapes, the CUDA device current per host thread, copies
that must stay inside their allocations. They run on the CPU and say nothing of a GPU: not of speed,
not of TensorRT's numerics, not that the real libraries accept every call (tests/test_gpu.py does
that, on a GPU). The stand-in "computes" by running the ONNX file with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trt_standin
from models import identity, save
from onnx import TensorProto, helper, numpy_helper
from tensorgate import backends
from tensorgate.backends import onnxruntime_cpu
from tensorgate.backends.base import BackendLoadError, BackendOptions, Engine, Precision
from tensorgate.backends.tensorrt import engine as trt_engine
from tensorgate.backends.tensorrt import loader as trt_loader
from tensorgate.build import build
from tensorgate.instance import Instance
from tensorgate.logs import QuoteValues
from tensorgate.repository import Repository
from tensorgate.repository.engine_plan import Capabilities
from tensorgate.request import InferRequest
from tensorgate.settings import Settings

TWO_GPUS = Capabilities(gpus=("NVIDIA Stand-in GPU", "NVIDIA Stand-in GPU"), tensorrt_version="10.13.0.stand-in")


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[trt_standin.State]:
    state = trt_standin.State(devices=2)
    for name, module in trt_standin.modules(state).items():
        monkeypatch.setitem(sys.modules, name, module)
    yield state
    assert trt_engine.live_engines() == 0, "an engine outlived every instance that used it"


def options(tmp_path: Path, **kw: object) -> BackendOptions:
    base: dict[str, object] = {
        "device": "cuda:1",
        "max_batch_size": 8,
        "opt_batch_size": 4,
        "dims": (("INPUT0", (16,)),),
        "cache_dir": tmp_path / "cache",
        "model": "m",
        "workspace_bytes": 256 << 20,
    }
    base.update(kw)
    return BackendOptions(**base)  # type: ignore[arg-type]


def test_registry_has_tensorrt_only_where_its_libraries_are(
    standin: trt_standin.State, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Engine.TENSORRT in backends.loaders() and backends.tensorrt_missing() is None
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it now fails, as without the package
    assert Engine.TENSORRT not in backends.loaders()
    assert "tensorrt is not installed" in (backends.tensorrt_missing() or "")
    monkeypatch.setitem(sys.modules, "tensorrt", trt_standin.modules(standin)["tensorrt"])
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):  # no cuda-python
        monkeypatch.setitem(sys.modules, name, None)
    assert Engine.TENSORRT not in backends.loaders()
    assert "cuda-python" in (backends.tensorrt_missing() or "")


def test_build_uses_the_file_path_a_strongly_typed_network_and_the_batch_profile(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    model = identity(tmp_path / "m" / "1" / "model.onnx")
    backend = trt_loader.load(model, options(tmp_path))
    try:
        ((device, parsed, config),) = standin.builds_started
        assert parsed == str(model)
        assert device == 1  # built on the instance's GPU: cudaSetDevice on the building thread first
        assert ("parse_from_file", str(model)) in standin.trt_calls
        assert config.pools[trt_standin.MemoryPoolType.WORKSPACE] == 256 << 20
        assert config.profiles[0].shapes == {"INPUT0": ((1, 16), (4, 16), (8, 16))}
        assert backend.shared_engine.engine.plan["strongly_typed"]
    finally:
        backend.close()


def test_buffers_are_sized_from_the_profile_maximum_not_the_engines_minus_one(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    model = identity(tmp_path / "m" / "1" / "model.onnx")
    backend = trt_loader.load(model, options(tmp_path))
    try:
        engine = backend.shared_engine.engine
        assert engine.get_tensor_shape("INPUT0") == (-1, 16) and engine.get_tensor_shape("OUTPUT0") == (-1, 16)
        # 8 rows of 16 float32 for the input (the profile's max) and the output (the context's shape
        # once the input is set to that max): 512 bytes each, device and pinned host.
        assert sorted(a.size for a in standin.cuda.live("device")) == [512, 512]
        assert sorted(a.size for a in standin.cuda.live("pinned")) == [512, 512]
        assert [(t.name, t.shape) for t in backend.inputs] == [("INPUT0", (None, 16))]
        for rows in (3, 8, 1):
            x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
            out = backend.execute({"INPUT0": x}, ["OUTPUT0"])
            np.testing.assert_array_equal(out["OUTPUT0"], x)
        copies = [args[2] for _, args in standin.cuda.named("cudaMemcpyAsync")]
        assert copies == [3 * 64, 3 * 64, 8 * 64, 8 * 64, 1 * 64, 1 * 64]  # only the rows of each batch
        with pytest.raises(Exception, match="outside the engine's profile"):
            backend.execute({"INPUT0": np.zeros((9, 16), np.float32)}, ["OUTPUT0"])
        assert not standin.errors
    finally:
        backend.close()
    assert not standin.cuda.live("device") and not standin.cuda.live("pinned") and not standin.cuda.streams


def test_instances_share_one_engine_each_with_its_own_context_and_non_blocking_stream(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    model = identity(tmp_path / "m" / "1" / "model.onnx")
    first = trt_loader.load(model, options(tmp_path))
    second = trt_loader.load(model, options(tmp_path))
    assert len(standin.deserialized) == 1 and first.shared_engine is second.shared_engine
    assert first.shared_engine.engine.contexts == 2
    streams = [args for _, args in standin.cuda.named("cudaStreamCreateWithFlags")]
    assert streams == [(standin.cuda.cudaStreamNonBlocking,)] * 2
    assert not standin.cuda.named("cudaStreamCreate"), "a stream on the legacy default-stream semantics"
    assert first._stream is not second._stream
    first.close()
    assert trt_engine.live_engines() == 1  # the second instance still uses it
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(second.execute({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"], x)
    second.close()
    assert trt_engine.live_engines() == 0


def test_the_device_is_selected_on_the_thread_that_runs_the_batch(standin: trt_standin.State, tmp_path: Path) -> None:
    model = identity(tmp_path / "m" / "1" / "model.onnx")
    backend = trt_loader.load(model, options(tmp_path, device="cuda:1"))
    instance = Instance("m", 0, backend)
    try:
        done = threading.Event()
        results = []

        def finished(result: object) -> None:
            results.append(result)
            done.set()

        x = np.ones((2, 16), np.float32)
        instance.submit([InferRequest(id="", inputs={"INPUT0": x}, outputs=("OUTPUT0",), batch_size=2)],
                        ("OUTPUT0",), True, finished)  # fmt: skip
        assert done.wait(10)
        ((thread, device, _),) = standin.executions
        assert thread.startswith("tg-m_0") and device == 1, standin.executions
        assert (thread, (1,)) in standin.cuda.named("cudaSetDevice")
        assert not standin.errors

        # The stand-in does catch the bug this guards against: a thread whose current device is
        # another GPU (every new thread starts on device 0) cannot run the engine's context.
        def on_device_zero() -> None:
            standin.cuda.cudaSetDevice(0)
            assert not backend._context.execute_async_v3(backend._stream_handle)

        worker = threading.Thread(target=on_device_zero)
        worker.start()
        worker.join()
        assert standin.errors and "device 0" in standin.errors[0]
    finally:
        instance.close()


def _nonzero_model(path: Path) -> Path:
    """A static input (3, 4) and an output whose shape depends on the data: NonZero's (2, nz)."""
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["INPUT0"], ["OUTPUT0"]), helper.make_node("Identity", ["INPUT0"], ["COPY"])],
        "nonzero",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [3, 4])],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.INT64, [2, "nz"]),
            helper.make_tensor_value_info("COPY", TensorProto.FLOAT, [3, 4]),
        ],
    )
    return save(graph, path)


def test_data_dependent_outputs_get_their_memory_from_the_output_allocator(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    model = _nonzero_model(tmp_path / "nz" / "1" / "model.onnx")
    backend = trt_loader.load(model, options(tmp_path, max_batch_size=0, dims=()))
    try:
        assert not standin.builds_started[0][2].profiles, "a static network needs no optimization profile"
        for count in (2, 9, 1):
            x = np.zeros((3, 4), np.float32)
            x.reshape(-1)[:count] = 1.0
            out = backend.execute({"INPUT0": x}, ["OUTPUT0", "COPY"])
            np.testing.assert_array_equal(out["OUTPUT0"], np.stack(np.nonzero(x)))
            np.testing.assert_array_equal(out["COPY"], x)
        assert set(backend._allocator.buffers) == {"OUTPUT0"}
        assert not standin.errors
    finally:
        backend.close()
    assert not standin.cuda.live("device") and not standin.cuda.live("pinned")


def _typed_identity(path: Path, elem_type: int) -> Path:
    return identity(path, elem_type=elem_type)


def test_fp8_and_int4_tensors_are_a_clear_load_failure_and_bf16_is_served_as_raw_bits(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    for elem_type, name in ((TensorProto.FLOAT8E4M3FN, "FP8"), (TensorProto.INT4, "INT4")):
        model = _typed_identity(tmp_path / name / "1" / "model.onnx", elem_type)
        with pytest.raises(BackendLoadError, match=rf"tensor 'INPUT0' has TensorRT type {name}, which tensorgate"):
            trt_loader.load(model, options(tmp_path))
    assert not standin.cuda.live("device")  # nothing left behind by the failed loads
    model = _typed_identity(tmp_path / "bf16" / "1" / "model.onnx", TensorProto.BFLOAT16)
    backend = trt_loader.load(model, options(tmp_path))
    try:
        assert [t.onnx_type for t in (*backend.inputs, *backend.outputs)] == [16, 16]
        bits = np.arange(32, dtype=np.uint16).reshape(2, 16) + 0x3F80
        np.testing.assert_array_equal(backend.execute({"INPUT0": bits}, ["OUTPUT0"])["OUTPUT0"], bits)
    finally:
        backend.close()


def _external_matmul(path: Path, scale: float) -> Path:
    w = np.full((16, 16), scale, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "w"], ["OUTPUT0"])],
        "mm",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return trt_standin.write_external(model, path)


def test_external_data_weights_are_found_and_are_part_of_the_cache_key(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    model = _external_matmul(tmp_path / "mm" / "1" / "model.onnx", 0.5)
    assert (model.parent / "model.onnx.data").is_file()
    backend = trt_loader.load(model, options(tmp_path))
    x = np.ones((2, 16), np.float32)
    try:
        np.testing.assert_allclose(backend.execute({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"], np.full((2, 16), 8.0))
        assert [c for c in standin.trt_calls if c[0] == "parse"] == []  # parse(bytes) would lose the weights
    finally:
        backend.close()
    # New weights in the external file, the same graph file: a new engine, not the cached one.
    (model.parent / "model.onnx.data").write_bytes(np.full((16, 16), 0.25, np.float32).tobytes())
    backend = trt_loader.load(model, options(tmp_path))
    try:
        np.testing.assert_allclose(backend.execute({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"], np.full((2, 16), 4.0))
        assert len(standin.builds_started) == 2
    finally:
        backend.close()


def test_a_cached_engine_is_not_built_again_and_the_timing_cache_is_kept(
    standin: trt_standin.State, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = identity(tmp_path / "m" / "1" / "model.onnx")
    trt_loader.load(model, options(tmp_path)).close()
    with caplog.at_level(logging.INFO):
        trt_loader.load(model, options(tmp_path)).close()
    assert len(standin.builds_started) == 1 and "event=engine_cache_hit model=m" in caplog.text
    (timing,) = (tmp_path / "cache").glob("timing-*.cache")
    assert timing.name == "timing-10.13.0.stand-in-NVIDIA-Stand-in-GPU-sm90.cache"
    assert timing.read_bytes() == b"+entry"
    other = identity(tmp_path / "other" / "1" / "model.onnx", shape=("batch", 8))
    trt_loader.load(other, options(tmp_path, dims=(("INPUT0", (8,)),))).close()
    assert timing.read_bytes() == b"+entry+entry"  # the second build started from the first's cache
    assert not list((tmp_path / "cache").glob(".*.tmp")), "a temporary file was left behind"


def test_standin_our_loader_starts_one_build_at_a_time_per_device_and_a_waiting_load_finds_the_plan_cached(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    """Our loader's serialization of builds, against the stand-in (which counts builder calls that
    overlap): one at a time per device ordinal, and a load waiting on the same engine takes the cached
    plan. Says nothing of TensorRT on a GPU."""
    standin.build_seconds = 0.3
    a = identity(tmp_path / "a" / "1" / "model.onnx")
    b = identity(tmp_path / "b" / "1" / "model.onnx", shape=("batch", 8))
    jobs = [
        (a, options(tmp_path, device="cuda:0")),
        (b, options(tmp_path, device="cuda:0", dims=(("INPUT0", (8,)),))),
        (a, options(tmp_path, device="cuda:0")),  # the same engine as the first: waits, then a cache hit
    ]
    loaded: list[object] = []
    threads = [threading.Thread(target=lambda j=j: loaded.append(trt_loader.load(*j))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert standin.most_concurrent == 1
        assert sorted(Path(path).parent.parent.name for _, path, _ in standin.builds_started) == ["a", "b"]
    finally:
        for backend in loaded:
            backend.close()  # type: ignore[attr-defined]


def _stand_in_repository(repo: Path, cache: Path) -> Repository:
    return Repository(
        Settings(model_repository=repo, engine_cache_dir=cache, inline_execution_us=1_000_000),
        loaders=backends.loaders(),
        capabilities=TWO_GPUS,
    )


CONFIG = """
max_batch_size: 8
dynamic_batching { }
instance_group [{ kind: KIND_GPU count: 1 gpus: [0, 1] }]
optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt"
  parameters { key: "precision_mode" value: "FP32" } } ] } }
"""


def test_standin_our_repository_moves_to_the_tensorrt_loader_with_one_instance_per_listed_device_never_inline(
    standin: trt_standin.State, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Our repository and scheduler against the stand-in and two stand-in GPUs given as data: the
    version moves from ONNX Runtime on the CPU to our TensorRT backend, one instance per device
    ordinal listed, every batch on a worker thread. The "engine" runs ONNX Runtime on the CPU: this
    shows our calls, not TensorRT's behaviour on a GPU."""
    from models import write_config

    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")
    write_config(tmp_path / "repo" / "m", CONFIG)
    repo = _stand_in_repository(tmp_path / "repo", tmp_path / "cache")

    async def run() -> None:
        await repo.start()
        for _ in range(400):
            if repo.get("m").engine is Engine.TENSORRT:
                break
            await asyncio.sleep(0.02)
        served = repo.get("m")
        assert served.engine is Engine.TENSORRT and served.precision is Precision.FP32
        scheduler = served.scheduler
        assert [i.backend.shared_engine.device for i in scheduler.instances] == [0, 1]  # type: ignore[attr-defined]
        assert all(p.inline_execution_ns == 0 for p in scheduler.placements)  # never on the event loop
        x = np.arange(32, dtype=np.float32).reshape(2, 16)
        for _ in range(40):  # far past the measurements that would move a cheap CPU model inline
            out = await scheduler.infer(InferRequest(id="", inputs={"INPUT0": x}, outputs=("OUTPUT0",), batch_size=2))
            np.testing.assert_array_equal(out["OUTPUT0"], x)
        await repo.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    main = threading.main_thread().name
    assert standin.executions and all(thread != main for thread, _, _ in standin.executions)
    assert {device for _, device, _ in standin.executions} <= {0, 1} and not standin.errors
    assert len(standin.builds_started) == 1  # GPU 1 is the same model of GPU: the cached plan serves it
    assert "event=engine_switched model=m version=1 from=onnxruntime-cpu to=tensorrt" in caplog.text
    assert "devices=cuda:0,cuda:1" in caplog.text


def test_standin_tensorgate_build_calls_our_tensorrt_loader_and_keeps_the_plan(
    standin: trt_standin.State, tmp_path: Path
) -> None:
    """``tensorgate build`` drives our TensorRT loader (against the stand-in) and keeps the plan file it
    writes in the cache; the plan is the stand-in's bytes, not a TensorRT engine."""
    from models import write_config

    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")
    write_config(tmp_path / "repo" / "m", CONFIG)
    settings = Settings(model_repository=tmp_path / "repo", engine_cache_dir=tmp_path / "cache")
    out = __import__("io").StringIO()
    status = asyncio.run(build(settings, out, lambda s: _stand_in_repository(s.model_repository, tmp_path / "cache")))
    assert status == 0, out.getvalue()
    assert out.getvalue().startswith("m 1: built tensorrt (fp32) in "), out.getvalue()
    assert list((tmp_path / "cache" / "tensorrt").glob("*.plan"))


def test_without_tensorrt_the_cpu_path_is_unchanged_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")
    repo = Repository(
        Settings(model_repository=tmp_path / "repo"),
        loaders={**backends.loaders(), Engine.ORT_CPU: onnxruntime_cpu.load},
        # The machine has a GPU and TensorRT's package (as probed), but this process cannot import it.
        capabilities=Capabilities(gpus=("NVIDIA H100",), tensorrt_version="10.13"),
    )

    async def run() -> None:
        await repo.start()
        assert repo.get("m").engine is Engine.ORT_CPU
        await repo.stop()

    caplog.handler.addFilter(QuoteValues())  # the server's log handler's filter: values as logfmt writes them
    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert 'engine=tensorrt reason="tensorrt is not installed' in caplog.text


def test_a_model_with_external_weights_is_built_fp32_from_its_own_file(
    standin: trt_standin.State, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The FP16 conversion works on an in-memory model and would leave external weights behind."""
    model = _external_matmul(tmp_path / "repo" / "mm" / "1" / "model.onnx", 0.5)
    repo = _stand_in_repository(tmp_path / "repo", tmp_path / "cache")

    async def run() -> None:
        await repo.start()
        await repo.upgrades.wait()
        served = repo.get("mm")
        assert served.engine is Engine.TENSORRT and served.precision is Precision.FP32
        x = np.ones((2, 16), np.float32)
        out = await served.scheduler.infer(
            InferRequest(id="", inputs={"INPUT0": x}, outputs=("OUTPUT0",), batch_size=2)
        )
        np.testing.assert_allclose(out["OUTPUT0"], np.full((2, 16), 8.0))
        await repo.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert "event=fp16_refused model=mm version=1" in caplog.text and "external data" in caplog.text
    assert [Path(path) for _, path, _ in standin.builds_started] == [model]


FP16_CONFIG = CONFIG.replace('value: "FP32"', 'value: "FP16"').replace("gpus: [0, 1]", "gpus: [0]")


@pytest.mark.parametrize("error", [0.0, 0.05])
def test_a_built_fp16_engine_is_checked_against_fp32_before_it_serves(
    standin: trt_standin.State, tmp_path: Path, caplog: pytest.LogCaptureFixture, error: float
) -> None:
    """The engine built in FP16 runs the warmup (else random) samples beside FP32 ONNX Runtime before
    traffic moves to it: within --fp16-rtol (1%) it serves; 5% off (the stand-in told to add that
    error to its outputs: real kernels are not modelled) it is refused, logged and counted, and the
    model keeps serving on the engine it had. This checks our gate, not a GPU's numerics."""
    from models import write_config

    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")
    write_config(tmp_path / "repo" / "m", FP16_CONFIG)
    standin.output_error = error
    repo = _stand_in_repository(tmp_path / "repo", tmp_path / "cache")

    async def run() -> Engine:
        await repo.start()
        for _ in range(400):
            if repo.get("m").engine is Engine.TENSORRT or "event=fp16_refused" in caplog.text:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        engine = repo.get("m").engine
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        out = await repo.get("m").scheduler.infer(InferRequest(id="", inputs={"INPUT0": x}, outputs=("OUTPUT0",)))
        np.testing.assert_allclose(out["OUTPUT0"], x * (1 + error) if engine is Engine.TENSORRT else x)
        await repo.stop()
        return engine

    with caplog.at_level(logging.INFO):
        engine = asyncio.run(run())
    if error == 0.0:
        assert engine is Engine.TENSORRT
        assert "event=fp16_engine_accepted model=m version=1" in caplog.text
    else:
        assert engine is Engine.ORT_CPU
        assert "event=fp16_refused model=m version=1 engine=tensorrt stage=built_engine" in caplog.text
        assert "the built tensorrt FP16 engine" in caplog.text
        assert "event=engine_switched" not in caplog.text
