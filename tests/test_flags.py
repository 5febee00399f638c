"""Server-wide flags of ``tensorgate serve`` (README, Options) and what each changes, against a server
started without the flag on the same repository. The models carry no parameter of their own, so
what the flagged server does differently comes from the flag alone."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, held_and_queued, running, wait_for
from models import identity, slow, write_config
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

CPU_FAMILIES = {"nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"}
LONG_ROWS = 1024  # a batch of the slow model that runs for most of a second on two cores
SHORT_ROWS = 128  # one that runs for about a sixth of a second


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``slow``: one instance, every request its own batch, no parameters; ``auto``: no config.pbtxt,
    its first dim dynamic (auto-completed: max_batch_size from --default-max-batch-size); ``broken``:
    a file that is not ONNX (its load failure is logged at ERROR)."""
    path = tmp_path_factory.mktemp("flags") / "repo"
    slow(path / "slow" / "1" / "model.onnx", layers=512)
    write_config(
        path / "slow",
        "max_batch_size: 1024\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 512 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 512 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n",
    )
    identity(path / "auto" / "1" / "model.onnx")
    (path / "broken" / "1").mkdir(parents=True)
    (path / "broken" / "1" / "model.onnx").write_bytes(b"not an ONNX file")
    return path


@pytest.fixture(scope="module")
def quiet(repo: Path) -> Iterator[Server]:
    """A server with the flags of the metrics page, auto-completion and logging set against their defaults."""
    with running(
        repo, "--allow-cpu-metrics", "false", "--default-max-batch-size", "2", "--log-level", "WARNING"
    ) as server:
        yield server


def rows_input(rows: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [rows, 512], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 512), np.float32))
    return tensor


def failures(server: Server, model: str = "slow") -> dict[str, float]:
    """nv_inference_request_failure of ``model``, by reason."""
    families = {f.name: f for f in text_string_to_metric_families(server.exposition())}
    return {
        s.labels["reason"]: s.value
        for s in families["nv_inference_request_failure"].samples
        if s.labels["model"] == model and s.value
    }


def test_allow_cpu_metrics_false_leaves_out_the_cpu_families(server: Server, quiet: Server) -> None:
    shown = {f.name for f in text_string_to_metric_families(server.exposition())}
    assert shown >= CPU_FAMILIES, shown
    left = {f.name for f in text_string_to_metric_families(quiet.exposition())}
    assert not CPU_FAMILIES & left, left
    assert "nv_inference_request_success" in left  # the page itself still serves the model series


def test_default_max_batch_size_sets_an_auto_completed_models_batch(server: Server, quiet: Server) -> None:
    tensor = grpcclient.InferInput("INPUT0", [3, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((3, 16), np.float32))
    config = server.client.get_model_config("auto").config
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    server.client.infer("auto", [tensor])
    config = quiet.client.get_model_config("auto").config
    assert config.max_batch_size == 2 and config.HasField("dynamic_batching")
    with pytest.raises(InferenceServerException) as refused:
        quiet.client.infer("auto", [tensor])  # 3 rows: above the batch of 2
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", refused.value


def test_log_level_warning_leaves_out_the_info_lines(server: Server, quiet: Server) -> None:
    assert "level=INFO " in server.log and "event=model_instances model=slow" in server.log
    lines = quiet.log.splitlines()
    assert not [line for line in lines if "level=INFO " in line], lines[:5]
    # it still logs: the broken model's load failure, at ERROR
    assert [line for line in lines if "level=ERROR " in line and "event=model_version_failed model=broken" in line]


def test_execution_timeout_ms_stops_a_long_batch(server: Server, repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    assert server.client.infer("slow", [rows_input(LONG_ROWS)]).as_numpy("OUTPUT0").shape == (LONG_ROWS, 512)
    timed = start_server(repo, "--execution-timeout-ms", "50")
    with pytest.raises(InferenceServerException) as stopped:
        timed.client.infer("slow", [rows_input(LONG_ROWS)])
    assert stopped.value.status() == "StatusCode.UNAVAILABLE", stopped.value
    assert "execution timeout of 50 ms" in str(stopped.value), stopped.value
    assert "event=execution_timeout model=slow version=1 instance=slow_0 requests=1 execution_timeout_ms=50" in (
        timed.log
    )
    wait_for(lambda: "event=instance_recovered instance=slow_0" in timed.log, 30)  # the run was stopped
    stats = timed.client.get_inference_statistics("slow").model_stats[0].inference_stats
    assert (stats.success.count, stats.fail.count) == (0, 1)
    assert failures(timed) == {"OTHER": 1.0}


def _queue_behind_a_long_batch(server: Server) -> tuple[str | None, str]:
    """Measure the cost of a request, then with a long batch running and one request queued behind
    it, send another: its status (None: answered) and message. All requests sent are answered."""
    client = grpcclient.InferenceServerClient(server.url)
    client.infer("slow", [rows_input(SHORT_ROWS)])  # the recent cost of one request
    answers: queue.Queue[object] = queue.Queue()
    client.async_infer("slow", [rows_input(LONG_ROWS)], lambda result, error: answers.put(error))
    wait_for(lambda: held_and_queued(server, "slow") == (1, 0), 10, 0.005)  # it runs
    client.async_infer("slow", [rows_input(SHORT_ROWS)], lambda result, error: answers.put(error))
    wait_for(lambda: held_and_queued(server, "slow") == (2, 1), 10, 0.005)  # it waits behind it
    try:
        client.infer("slow", [rows_input(SHORT_ROWS)])
        outcome: tuple[str | None, str] = (None, "")
    except InferenceServerException as exc:
        outcome = (exc.status(), str(exc))
    assert [answers.get(timeout=60) for _ in range(2)] == [None, None]
    client.close()
    return outcome


def test_max_queue_wait_ms_refuses_what_would_wait_longer(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    # the default bound, 1000 ms, admits a request behind one that costs about a sixth of a second (a
    # server of its own: the recent cost of a request, which the bound is measured in, is that one's)
    default = start_server(repo)
    assert _queue_behind_a_long_batch(default) == (None, "")
    assert "REJECTED" not in failures(default)
    # 50 ms: far below that cost (and far above how late the event loop runs, which the bound also refuses)
    bounded = start_server(repo, "--max-queue-wait-ms", "50")
    status, message = _queue_behind_a_long_batch(bounded)
    assert status == "StatusCode.RESOURCE_EXHAUSTED", (status, message)
    assert "the 1 requests queued ahead would take about" in message, message
    assert "above its bound of 50 ms" in message and "--max-queue-wait-ms" in message, message
    assert failures(bounded) == {"REJECTED": 1.0}
    assert "event=overloaded model=slow version=1 queued=1 " in bounded.log
