"""Dynamic batching end to end: a real server, real clients, answers checked against ONNX Runtime."""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from conftest import Server, held_and_queued, wait_for
from models import identity, lookup, save, slow, write_config
from onnx import TensorProto, helper, numpy_helper
from tensorgate.backends import onnxruntime_cpu
from tensorgate.backends.base import BackendLoader, BackendOptions, Engine
from tensorgate.repository import Repository
from tensorgate.repository.engine_plan import Capabilities
from tensorgate.scheduler.placement import Placement
from tensorgate.settings import Settings
from tritonclient.utils import InferenceServerException

SLOW_ROWS = 512  # rows that keep the slow model busy for tens of ms


def seq_model(path: Path) -> Path:
    """FP32 [batch, seq, 8] -> MatMul [8, 4] + 1 -> [batch, seq, 4]: batches over any seq length."""
    w = np.arange(32, dtype=np.float32).reshape(8, 4) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["h"]), helper.make_node("Add", ["h", "one"], ["Y"])],
        "seq",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "seq", 4])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ones(4, np.float32), "one")],
    )
    return save(graph, path)


def slow_infer(client: grpcclient.InferenceServerClient, model: str = "slow", **kw: object) -> np.ndarray:
    data = np.ones((SLOW_ROWS, 512), np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], **kw).as_numpy("OUTPUT0")  # type: ignore[arg-type, no-any-return]


def stats(server: Server, model: str) -> object:
    return server.client.get_inference_statistics(model).model_stats[0]


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_300_concurrent_mixed_requests_get_their_own_rows(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    path = seq_model(repo / "seq" / "1" / "model.onnx")
    # 20 ms of queue delay: the client, on the same cores, sends a request every 0.1-0.5 ms, so each
    # wait gathers enough of each of the three shapes to batch whatever the machine's load (with 2 ms a
    # loaded machine's client sent too few per window, and the executions bound below failed)
    write_config(repo / "seq", "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n")
    server = start_server(repo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    sent: dict[str, np.ndarray] = {}
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    for i in range(300):
        rows, seq = int(rng.integers(1, 5)), int(rng.choice([3, 7, 11]))
        x = rng.standard_normal((rows, seq, 8)).astype(np.float32)
        sent[str(i)] = x
        tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.async_infer("seq", [tensor], lambda result, error: answers.put((result, error)), request_id=str(i))
    for _ in range(300):
        result, error = answers.get(timeout=60)
        assert error is None, error
        rid = result.get_response().id  # type: ignore[attr-defined]
        got = result.as_numpy("Y")  # type: ignore[attr-defined]
        np.testing.assert_array_equal(got, session.run(None, {"X": sent.pop(rid)})[0])
    client.close()
    assert not sent
    s = stats(server, "seq")
    assert s.inference_stats.success.count == 300  # type: ignore[attr-defined]
    assert s.execution_count < 150, f"{s.execution_count} executions for 300 requests: batching did not batch"  # type: ignore[attr-defined]
    assert max(b.batch_size for b in s.batch_stats) > 4  # type: ignore[attr-defined]
    assert all(b.batch_size <= 16 for b in s.batch_stats)  # type: ignore[attr-defined]


def test_derived_config_batches_dynamically(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    seq_model(repo / "seq" / "1" / "model.onnx")
    server = start_server(repo)
    config = server.client.get_model_config("seq").config
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")


def _slow_repo(tmp_path: Path, config: str, layers: int = 64) -> Path:
    repo = tmp_path / "repo"
    slow(repo / "slow" / "1" / "model.onnx", layers=layers)
    write_config(repo / "slow", f"max_batch_size: 1024\n{config}\n")
    return repo


def rows_input(rows: int, value: float = 1.0) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [rows, 512], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 512), value, np.float32))
    return tensor


def test_full_queue_answers_unavailable(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = _slow_repo(
        tmp_path, "dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { max_queue_size: 1 } }"
    )
    server = start_server(repo)
    codes: list[str] = []

    def send(_: int) -> None:
        client = grpcclient.InferenceServerClient(server.url)
        try:
            slow_infer(client)
            codes.append("OK")
        except InferenceServerException as exc:
            assert "Exceeds maximum queue size" in str(exc) and "max_queue_size 1" in str(exc)  # Triton's words
            codes.append(str(exc.status()))
        finally:
            client.close()

    run_threads(8, send)
    assert "StatusCode.UNAVAILABLE" in codes and "OK" in codes
    s = stats(server, "slow")
    assert s.inference_stats.fail.count == codes.count("StatusCode.UNAVAILABLE")  # type: ignore[attr-defined]
    assert server.client.is_server_live()
    slow_infer(server.client)


async def _flood(url: str, calls: int) -> collections.Counter[str]:
    """Send ``calls`` identity requests at once from one asyncio client; the status of each."""
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    tensor = aioclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(data)
    async with aioclient.InferenceServerClient(url) as client:
        await client.is_server_ready()

        async def one() -> str:
            try:
                result = await client.infer("identity", [tensor])
            except InferenceServerException as exc:
                return str(exc.status())
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
            return "OK"

        return collections.Counter(await asyncio.gather(*(one() for _ in range(calls))))


def test_calls_above_the_grpc_pending_limit_are_cancelled_and_the_rest_served(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    identity(tmp_path / "repo" / "identity" / "1" / "model.onnx")
    # Calls wait in gRPC until the event loop takes them; above --grpc-max-pending-calls gRPC sheds
    # new ones. A tiny limit and 900 calls at once make it shed; the server keeps serving.
    tight = start_server(tmp_path / "repo", "--grpc-max-pending-calls", "2")
    codes = asyncio.run(_flood(tight.url, 900))
    assert codes["OK"] > 0 and codes["StatusCode.CANCELLED"] > 0, codes
    assert set(codes) == {"OK", "StatusCode.CANCELLED"}, codes
    assert asyncio.run(_flood(tight.url, 1)) == {"OK": 1}
    # The default (random drops above 1000 waiting, all above 3000) lets a burst under 1000 through.
    roomy = start_server(tmp_path / "repo")
    codes = asyncio.run(_flood(roomy.url, 900))
    assert codes == {"OK": 900}, (codes, [line for line in roomy.log.splitlines() if "event=overloaded" in line])


def test_queue_timeout_answers_unavailable(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = _slow_repo(
        tmp_path,
        "dynamic_batching { default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 1000 "
        "allow_timeout_override: true } }",
    )
    server = start_server(repo)
    outcomes: list[str] = []

    def send(_: int) -> None:
        client = grpcclient.InferenceServerClient(server.url)
        try:
            slow_infer(client)
            outcomes.append("OK")
        except InferenceServerException as exc:
            assert "timed out" in str(exc), exc
            outcomes.append(str(exc.status()))
        finally:
            client.close()

    run_threads(6, send)
    assert "StatusCode.UNAVAILABLE" in outcomes and "OK" in outcomes


def test_priority_parameter(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    """With the only instance busy, a request of priority 1 sent after two of the default level (2;
    one of them asks for priority 5, beyond the levels: the default level, as Triton) runs before them."""
    # 600 rows: no two queued requests fit one batch (max_batch_size 1024), so each runs alone and the
    # order the answers come back in is the order the batches ran in.
    repo = _slow_repo(tmp_path, "dynamic_batching { priority_levels: 2 default_priority_level: 2 }", layers=512)
    server = start_server(repo)
    client = grpcclient.InferenceServerClient(server.url)
    done: queue.Queue[tuple[str, object]] = queue.Queue()

    def send(name: str, rows: int, **kw: object) -> None:
        client.async_infer("slow", [rows_input(rows)], lambda result, error: done.put((name, error)), **kw)  # type: ignore[arg-type]

    send("busy", 1024)
    wait_for(lambda: held_and_queued(server, "slow") == (1, 0), 10, 0.005)  # it runs
    send("default", 600)
    wait_for(lambda: held_and_queued(server, "slow") == (2, 1), 10, 0.005)
    send("beyond_levels", 600, priority=5)
    wait_for(lambda: held_and_queued(server, "slow") == (3, 2), 10, 0.005)
    send("first", 600, priority=1)
    # all three queued behind the busy batch at once: the order below is the scheduler's choice
    wait_for(lambda: held_and_queued(server, "slow") == (4, 3), 10, 0.005)
    finished = [done.get(timeout=60) for _ in range(4)]
    assert all(error is None for _, error in finished), finished
    assert [name for name, _ in finished] == ["busy", "first", "default", "beyond_levels"]
    client.close()


def test_cancelled_and_expired_requests_never_run(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = _slow_repo(tmp_path, "dynamic_batching { }")
    server = start_server(repo)
    # Three requests at once keep the only instance busy without a gap (one batch, then the other
    # two together): sent one after another, the instance would be idle between them, and a request
    # arriving then would run before its cancellation reached the server.
    busy = [threading.Thread(target=slow_infer, args=(grpcclient.InferenceServerClient(server.url),)) for _ in range(3)]
    for thread in busy:
        thread.start()
    wait_for(lambda: server.holds_all("slow", 3), 10, 0.005)  # none still on its way
    client = grpcclient.InferenceServerClient(server.url)
    data = np.full((SLOW_ROWS, 512), 2, np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    errors: queue.Queue[object] = queue.Queue()
    call = client.async_infer("slow", [tensor], lambda result, error: errors.put(error))
    call.cancel()
    with pytest.raises(InferenceServerException, match="Deadline"):
        client.infer("slow", [tensor], client_timeout=0.001)
    for thread in busy:
        thread.join(30)
    time.sleep(0.3)
    s = stats(server, "slow")
    # Only the three 'busy' requests ran: the cancelled one and the expired one never did.
    assert s.inference_count == 3 * SLOW_ROWS, s  # type: ignore[attr-defined]
    client.close()


# Inputs and outputs given: Triton's auto-complete does not run, so no dynamic batching is added (with them
# left to the file, a max_batch_size above 1 turns it on, as Triton's AutoCompleteMaxBatch does).
SLOW_IO = (
    'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 512 ] } ]\n'
    'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 512 ] } ]\n'
)


def test_instances_run_concurrently(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    """The default scheduler: each request its own batch, spread over the instances. With two
    instances, a small request sent while a long batch runs is answered while that batch still runs;
    with one, it waits for it."""
    one = _slow_repo(tmp_path / "one", SLOW_IO + "instance_group [ { count: 1 kind: KIND_CPU } ]", layers=256)
    two = _slow_repo(tmp_path / "two", SLOW_IO + "instance_group [ { count: 2 kind: KIND_CPU } ]", layers=256)
    servers = {"one": start_server(one), "two": start_server(two)}
    for name, server in servers.items():
        run_threads(4, lambda _, url=server.url: slow_infer(grpcclient.InferenceServerClient(url)))
        busy = [b.batch_size for b in stats(server, "slow").batch_stats]  # type: ignore[attr-defined]
        assert busy == [SLOW_ROWS], (name, busy)
    assert "instances=2" in servers["two"].log
    # Two instances share the cores; one gets ONNX Runtime's default (a thread per core).
    assert f"count=2 devices=cpu intra_op_threads={max(1, (os.cpu_count() or 1) // 2)} " in servers["two"].log
    assert "count=1 devices=cpu intra_op_threads=default " in servers["one"].log
    for name, server in servers.items():
        before = stats(server, "slow").inference_stats.success.count  # type: ignore[attr-defined]
        client = grpcclient.InferenceServerClient(server.url)
        long_done = threading.Event()
        client.async_infer("slow", [rows_input(1024)], lambda result, error, done=long_done: done.set())
        wait_for(lambda server=server: held_and_queued(server, "slow") == (1, 0), 10, 0.005)  # the long batch runs
        client.infer("slow", [rows_input(1)])
        answered = stats(server, "slow").inference_stats.success.count - before  # type: ignore[attr-defined]
        if name == "two":
            # the small request ran on the other instance and was answered while the long batch ran
            assert answered == 1 and not long_done.is_set(), (answered, held_and_queued(server, "slow"))
            assert held_and_queued(server, "slow") == (1, 0)
        else:
            assert answered == 2  # it waited: the long batch was answered first
        assert long_done.wait(60)
        client.close()


def test_onnxruntime_thread_parameters_reach_the_session(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    params = "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in (("intra_op_thread_count", 1), ("inter_op_thread_count", 2), ("execution_mode", 1))
    )
    server = start_server(_slow_repo(tmp_path, "instance_group [ { count: 2 kind: KIND_CPU } ]\n" + params))
    assert "count=2 devices=cpu intra_op_threads=1 inter_op_threads=2 parallel_execution=true" in server.log
    assert "parameters ignored" not in server.log
    options = BackendOptions(intra_op_threads=1, inter_op_threads=2, parallel_execution=True)
    backend = onnxruntime_cpu.load(tmp_path / "repo" / "slow" / "1" / "model.onnx", options)
    expected = backend.execute({"INPUT0": np.ones((SLOW_ROWS, 512), np.float32)}, ["OUTPUT0"])["OUTPUT0"]
    np.testing.assert_array_equal(slow_infer(server.client), expected)
    got = backend._session.get_session_options()
    assert (got.intra_op_num_threads, got.inter_op_num_threads) == (1, 2)
    assert got.execution_mode == ort.ExecutionMode.ORT_PARALLEL


# One batch an instance ran: each input's name, shape and distinct values; and whether the model was
# ready (served) when it ran.
Run = tuple[bool, tuple[tuple[str, tuple[int, ...], tuple[float, ...]], ...]]


def recording_loader(runs: dict[str, list[list[Run]]], ready: Callable[[str], bool]) -> BackendLoader:
    """ONNX Runtime on the CPU, each instance recording every batch it runs: an instance loaded for
    model ``m`` appends its own list of runs to ``runs[m]`` (in the order the instances load)."""

    class Recording(onnxruntime_cpu.OnnxRuntimeCpuBackend):
        def __init__(self, model_file: Path, options: BackendOptions) -> None:
            super().__init__(model_file, options)
            self.model = options.model
            self.runs: list[Run] = []
            runs.setdefault(options.model, []).append(self.runs)

        def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
            seen = tuple(sorted((n, tuple(a.shape), tuple(np.unique(a).tolist())) for n, a in inputs.items()))
            self.runs.append((ready(self.model), seen))
            return super().execute(inputs, output_names)

    return Recording


def test_warmup_runs_on_every_instance_before_ready(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    seq_model(repo / "seq" / "1" / "model.onnx")
    (repo / "seq" / "warmup").mkdir()
    (repo / "seq" / "warmup" / "x.bin").write_bytes(np.ones((2, 3, 8), np.float32).tobytes())
    write_config(
        repo / "seq",
        """max_batch_size: 8
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [
  { name: "zeros" batch_size: 4 count: 3
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 5, 8 ] zero_data: true } } },
  { name: "file" batch_size: 2
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3, 8 ] input_data_file: "x.bin" } } }
]""",
    )
    seq_model(repo / "broken" / "1" / "model.onnx")
    write_config(
        repo / "broken",
        'max_batch_size: 8\nmodel_warmup [ { name: "w" batch_size: 1 inputs { key: "X" value: { data_type: TYPE_FP32 '
        'dims: [ 3, 8 ] input_data_file: "missing.bin" } } } ]',
    )
    server = start_server(repo)
    assert "event=model_warmup model=seq version=1 sample=zeros runs=3 instances=2" in server.log
    assert "sample=file " in server.log
    assert server.client.is_model_ready("seq") and not server.client.is_model_ready("broken")
    reasons = {m.name: m.reason for m in server.client.get_model_repository_index().models}
    assert "missing.bin" in reasons["broken"]
    assert stats(server, "seq").inference_count == 0  # type: ignore[attr-defined]

    # What each instance ran, which the server does not expose (warmup runs are in no statistics): the
    # same repository loaded in this process, on ONNX Runtime instances that record their runs.
    runs: dict[str, list[list[Run]]] = {}
    loaded: list[Repository] = []
    repository = Repository(
        Settings(model_repository=repo),
        loaders={Engine.ORT_CPU: recording_loader(runs, lambda name: loaded[0].is_ready(name))},
        capabilities=Capabilities(no_gpu_reason="a CPU test"),
    )
    loaded.append(repository)

    async def load() -> None:
        await repository.start()
        assert repository.is_ready("seq") and not repository.is_ready("broken")
        await repository.stop()

    asyncio.run(load())
    zeros: Run = (False, (("X", (4, 5, 8), (0.0,)),))
    from_file: Run = (False, (("X", (2, 3, 8), (1.0,)),))
    # every instance: each sample, its count of times, in config order, all before the model was ready
    assert runs["seq"] == [[zeros, zeros, zeros, from_file]] * 2, runs["seq"]
    assert runs["broken"] == [[]]  # its sample's file is missing: nothing ran


def test_timeout_parameter_must_be_an_integer(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    repo = tmp_path / "repo"
    seq_model(repo / "seq" / "1" / "model.onnx")
    server = start_server(repo)
    request = service_pb2.ModelInferRequest(model_name="seq")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 1, 8])
    request.raw_input_contents.append(np.zeros(8, np.float32).tobytes())
    request.parameters["timeout"].string_param = "soon"
    with grpc.insecure_channel(server.url) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'timeout'" in info.value.details()


def test_an_engine_failure_fails_that_request_only(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    """A model that fails inside ONNX Runtime for some values (Gather with an index beyond its table)
    answers INTERNAL naming the failure, on the worker thread and on the event loop, and keeps serving."""
    repo = tmp_path / "repo"
    lookup(repo / "lookup" / "1" / "model.onnx")
    write_config(repo / "lookup", "max_batch_size: 8\ndynamic_batching { }\n")
    server = start_server(repo)
    client = grpcclient.InferenceServerClient(server.url)

    def infer(index: int) -> np.ndarray:
        tensor = grpcclient.InferInput("INPUT0", [1, 1], "INT64")
        tensor.set_data_from_numpy(np.array([[index]], np.int64))
        return client.infer("lookup", [tensor]).as_numpy("OUTPUT0")  # type: ignore[no-any-return]

    for _ in range(Placement.WARMUP_EXECUTIONS + 2):  # on the worker thread first, then on the event loop
        with pytest.raises(InferenceServerException, match="failed to execute: ONNX Runtime failed") as info:
            infer(7)
        assert info.value.status() == "StatusCode.INTERNAL"
        np.testing.assert_array_equal(infer(2), [[12.0]])
    assert "event=execute_failed model=lookup" in server.log
    # ONNX Runtime's own ERROR line for each failed run (colour codes, not key=value) is not written
    assert "E:onnxruntime" not in server.log, server.log[-2000:]
    client.close()


def test_a_request_the_engine_fails_does_not_fail_the_requests_batched_with_it(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    """Eight requests batched together (a queue delay holds them), one with an index beyond the table:
    the engine fails the batch, each request runs again alone, and only that one fails (its value is
    in no other answer); each of the seven others gets its own row. Statistics: 7 successes in 7 runs
    of one, 1 BACKEND failure."""
    repo = tmp_path / "repo"
    lookup(repo / "lookup" / "1" / "model.onnx")
    # the batch goes when the 8th request arrives (a preferred size: max_batch_size); the delay only bounds the wait
    write_config(repo / "lookup", "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 10000000 }\n")
    server = start_server(repo)

    async def send_all() -> list[np.ndarray | BaseException]:
        client = aioclient.InferenceServerClient(server.url)

        async def one(index: int) -> np.ndarray:
            tensor = aioclient.InferInput("INPUT0", [1, 1], "INT64")
            tensor.set_data_from_numpy(np.array([[index]], np.int64))
            return (await client.infer("lookup", [tensor])).as_numpy("OUTPUT0")  # type: ignore[no-any-return]

        try:
            return await asyncio.gather(*(one(i) for i in (0, 1, 2, 3, 99, 0, 1, 2)), return_exceptions=True)
        finally:
            await client.close()

    answers = asyncio.run(send_all())
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert len(failed) == 1 and answers[4] is failed[0]
    assert isinstance(failed[0], InferenceServerException) and failed[0].status() == "StatusCode.INTERNAL"
    assert "idx=99" in str(failed[0])
    assert [float(a[0, 0]) for a in answers if not isinstance(a, BaseException)] == [10, 11, 12, 13, 10, 11, 12]
    stats = grpcclient.InferenceServerClient(server.url).get_inference_statistics("lookup").model_stats[0]
    assert stats.inference_stats.success.count == 7 and stats.inference_stats.fail.count == 1
    assert stats.execution_count == 7 and {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {1: 7}
    assert "event=batch_failed_rerun_alone instance=lookup_0 requests=8" in server.log
    assert 'nv_inference_request_failure{model="lookup",reason="BACKEND",version="1"} 1.0' in server.exposition()
