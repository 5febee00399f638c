"""Model control through a real server and tritonclient: poll mode (added, changed, removed and
broken models, reloads under traffic), explicit load/unload (with config overrides), and model names
that try to leave the repository."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, index_of, peak_rss_bytes, wait_for
from models import slow, write_config
from repository_helpers import (
    BAD_NAMES,
    EXPLICIT,
    GARBAGE,
    POLL,
    add_const,
    error_of,
    infer,
    model_with_versions,
    publish,
    states,
    status,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

# ---- poll mode ----


def test_poll_adds_changes_and_removes_models(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    repo = tmp_path / "repo"
    model_with_versions(repo / "a", 1)
    server = start_server(repo, *POLL)
    client = server.client
    assert infer(client, "a") == (1.0, "1")

    # added
    publish(tmp_path, repo / "b", lambda d: model_with_versions(d, 1))
    wait_for(lambda: client.is_model_ready("b"), timeout=10)
    assert infer(client, "b") == (1.0, "1")

    # a new version directory: served, and the old version (default policy: latest 1) is not
    publish(tmp_path, repo / "b" / "2", lambda d: add_const(d / "model.onnx", 2.0))
    wait_for(lambda: client.is_model_ready("b", "2"), timeout=10)
    assert infer(client, "b") == (2.0, "2")
    assert not client.is_model_ready("b", "1")

    # a changed config: both versions served
    publish(tmp_path, repo / "b" / "config.pbtxt", lambda p: p.write_text("version_policy { all {} }"))
    wait_for(lambda: client.is_model_ready("b", "1"), timeout=10)
    assert infer(client, "b", "1") == (1.0, "1") and infer(client, "b", "2") == (2.0, "2")

    # a changed file in place: the new model answers
    publish(tmp_path, repo / "b" / "2" / "model.onnx", lambda p: add_const(p, 20.0))
    wait_for(lambda: infer(client, "b")[0] == 20.0, timeout=10)

    # removed
    os.replace(repo / "a", tmp_path / "a.removed")
    wait_for(lambda: "a" not in index_of(client), timeout=10)
    assert not client.is_model_ready("a")
    assert status(error_of(infer, client, "a")) == "NOT_FOUND"
    assert infer(client, "b", "1") == (1.0, "1")  # the others are untouched

    # added back under the same name, different contents
    publish(tmp_path, repo / "a", lambda d: add_const(d / "3" / "model.onnx", 3.0))
    wait_for(lambda: client.is_model_ready("a"), timeout=10)
    assert infer(client, "a") == (3.0, "3")

    log = server.log
    assert "event=model_added model=b" in log and "event=model_removed model=a" in log
    assert "internal_error" not in log and "repository_poll_failed" not in log


def test_poll_broken_model_and_failed_reload(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    repo = tmp_path / "repo"
    model_with_versions(repo / "m", 1)
    server = start_server(repo, *POLL)
    client = server.client

    # a broken model added while serving is UNAVAILABLE with its reason, then fixed
    def broken(d: Path) -> None:
        (d / "1").mkdir(parents=True)
        (d / "1" / "model.onnx").write_bytes(GARBAGE)

    publish(tmp_path, repo / "late", broken)
    wait_for(lambda: "late" in index_of(client), timeout=10)
    wait_for(lambda: states(client, "late") == {"UNAVAILABLE"}, timeout=10)
    assert "cannot load model.onnx" in index_of(client)["late"][0][2]
    publish(tmp_path, repo / "late" / "1" / "model.onnx", lambda p: add_const(p, 7.0))
    wait_for(lambda: client.is_model_ready("late"), timeout=10)
    assert infer(client, "late") == (7.0, "1")

    # a change that breaks a serving model leaves the loaded model serving (Triton does the same)
    publish(tmp_path, repo / "m" / "1" / "model.onnx", lambda p: p.write_bytes(GARBAGE))
    wait_for(lambda: "event=model_changed model=m" in server.log, timeout=10)
    wait_for(lambda: "level=ERROR" in server.log.split("event=model_changed model=m")[-1], timeout=10)
    assert client.is_model_ready("m")
    assert infer(client, "m") == (1.0, "1")
    # ... and the index and the log say that its reload failed, and why
    [(version, state, reason)] = index_of(client)["m"]
    assert (version, state) == ("1", "READY") and "the last reload failed" in reason, reason
    assert "cannot load model.onnx" in reason
    assert "kept_versions=1" in server.log.split("event=model_changed model=m")[-1]
    publish(tmp_path, repo / "m" / "config.pbtxt", lambda p: p.write_text("sequence_batching {}"))
    wait_for(lambda: "sequence_batching is not supported" in server.log, timeout=10)
    assert infer(client, "m") == (1.0, "1")
    wait_for(lambda: "sequence_batching is not supported" in index_of(client)["m"][0][2], timeout=10)
    # and a fix is picked up, and the reason is gone
    (repo / "m" / "config.pbtxt").unlink()
    publish(tmp_path, repo / "m" / "1" / "model.onnx", lambda p: add_const(p, 11.0))
    wait_for(lambda: infer(client, "m")[0] == 11.0, timeout=10)
    assert index_of(client)["m"] == [("1", "READY", "")]


def test_poll_reload_does_not_fail_requests_in_flight(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    size, rows, work = 256, 64, 32
    repo = tmp_path / "repo"
    add_const(repo / "m" / "1" / "model.onnx", 1.0, size, work)
    write_config(repo / "m", "max_batch_size: 64")
    server = start_server(repo, *POLL)

    stop = threading.Event()
    seen: list[list[float]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def hammer(out: list[float]) -> None:
        client = grpcclient.InferenceServerClient(server.url)
        try:
            while not stop.is_set():
                out.append(infer(client, "m", rows=rows, size=size, timeout=5)[0])
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=hammer, args=(out,), daemon=True) for out in seen]
    for thread in threads:
        thread.start()
    try:

        def answered(value: float) -> bool:
            if errors:
                raise AssertionError(f"a request failed during a reload: {errors[0]}")
            return all(value in out for out in seen)

        wait_for(lambda: answered(1.0), timeout=10)
        # the same version rewritten in place
        publish(tmp_path, repo / "m" / "1" / "model.onnx", lambda p: add_const(p, 2.0, size, work))
        wait_for(lambda: answered(2.0), timeout=15)
        # a new version that replaces version 1 (default policy serves the latest only)
        publish(tmp_path, repo / "m" / "2", lambda d: add_const(d / "model.onnx", 3.0, size, work))
        wait_for(lambda: answered(3.0), timeout=15)
        # a config change that reloads every version
        config = "max_batch_size: 64 version_policy { all {} }"
        publish(tmp_path, repo / "m" / "config.pbtxt", lambda p: p.write_text(config))
        wait_for(lambda: server.client.is_model_ready("m", "1"), timeout=10)
        count = sum(len(out) for out in seen)
        wait_for(lambda: sum(len(out) for out in seen) > count + 20, timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, f"requests failed during reloads: {[str(e) for e in errors]}"
    for out in seen:
        assert set(out) == {1.0, 2.0, 3.0}
        assert out == sorted(out), "an older model answered after a newer one had"
    # version 1 rewritten and the config change each replaced what served (it goes on serving: not "unloaded");
    # version 2's arrival took version 1 out of the policy: that one is unloaded
    assert server.log.count("event=model_version_replaced model=m") >= 2
    assert server.log.count("event=model_unloaded model=m version=1") >= 1


# ---- explicit mode ----


@pytest.fixture
def explicit_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    model_with_versions(repo / "a", 1)
    add_const(repo / "b" / "1" / "model.onnx", 5.0)
    model_with_versions(repo / "c", 1, 2)
    return repo


def test_explicit_load_and_unload(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(explicit_repo, *EXPLICIT, "--load-model", "a", "--load-model", "ghost")
    client = server.client
    assert client.is_model_ready("a") and infer(client, "a") == (1.0, "1")
    assert not client.is_model_ready("b") and not client.is_model_ready("c")
    index = index_of(client)
    assert set(index) == {"a", "b", "c"}
    assert index["b"] == [("", "", "")] and index["c"] == [("", "", "")]
    # a --load-model name with no directory is named in the log, and the server still starts
    assert any(
        "level=ERROR" in line and "model=ghost" in line and "no model directory" in line
        for line in server.log.splitlines()
    ), server.log

    client.load_model("b")
    assert client.is_model_ready("b") and infer(client, "b") == (5.0, "1")
    client.unload_model("b")
    assert not client.is_model_ready("b") and not client.is_model_ready("b", "1")
    err = error_of(infer, client, "b")
    assert status(err) == "NOT_FOUND" and "Request for unknown model: 'b' has no available versions" in err.message()
    assert index_of(client)["b"] == [("1", "UNAVAILABLE", "unloaded")]  # the version the unload took (as Triton)
    assert infer(client, "a") == (1.0, "1")  # others untouched
    client.load_model("b")  # and back
    assert infer(client, "b") == (5.0, "1")
    client.unload_model("c")  # unloading a model that is not loaded is fine
    assert not client.is_model_ready("c")

    err = error_of(client.load_model, "ghost")
    assert status(err) == "NOT_FOUND" and "ghost" in err.message()
    client.unload_model("ghost")  # not in the repository: nothing to unload, nothing done (as Triton)
    assert "ghost" not in index_of(client)


def test_explicit_load_with_config_override(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(explicit_repo, *EXPLICIT)
    client = server.client
    client.load_model("c", config='{"version_policy": {"all": {}}}')
    assert client.is_model_ready("c", "1") and client.is_model_ready("c", "2")
    assert infer(client, "c", "1") == (1.0, "1") and infer(client, "c") == (2.0, "2")

    # an override that leaves max_batch_size out has it completed from the file, as config.pbtxt would
    two_cpu_instances = '{"version_policy": {"all": {}}, "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}'
    client.load_model("c", config=two_cpu_instances)
    completed = client.get_model_config("c").config
    assert completed.max_batch_size == 4 and list(completed.input[0].dims) == [4], completed
    assert client.get_model_config("c").config.instance_group[0].count == 2

    # an override that contradicts the file fails with the reason; what was serving keeps serving
    bad = '{"max_batch_size": 8, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}]}'
    err = error_of(client.load_model, "c", config=bad)
    assert status(err) == "INVALID_ARGUMENT" and "TYPE_INT32" in err.message(), err
    assert err.message().startswith("load failed for model 'c': "), err  # Triton's words
    assert infer(client, "c", "1") == (1.0, "1")
    err = error_of(client.load_model, "c", config='{"sequence_batching": {}}')
    assert "sequence_batching is not supported" in err.message()
    err = error_of(client.load_model, "c", config="{not json")
    assert status(err) == "INVALID_ARGUMENT" and "not a valid model config" in err.message()
    err = error_of(client.load_model, "c", config='{"name": "other"}')
    assert "names the model 'other'" in err.message()
    err = error_of(client.load_model, "c", config="[]")
    assert status(err) == "INVALID_ARGUMENT" and "a model config as a JSON object, not list" in err.message(), err
    assert infer(client, "c", "1") == (1.0, "1")

    # the override was for that load only: a plain load reads the disk again (latest 1)
    client.load_model("c")
    assert client.is_model_ready("c", "2") and not client.is_model_ready("c", "1")
    assert status(error_of(infer, client, "c", "1")) == "NOT_FOUND"


def _warmup(dims: str, count: int = 1) -> str:
    """A config override with one warmup sample of ``dims`` run ``count`` times."""
    return (
        f'{{"model_warmup": [{{"name": "w", "batch_size": 1, "count": {count}, '
        f'"inputs": {{"INPUT0": {{"data_type": "TYPE_FP32", "dims": {dims}, "random_data": true}}}}}}]}}'
    )


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (_warmup("[4096, 65536]"), "above 1073741824 bytes"),
        (_warmup("[4611686018427387904, 8]"), "above 1073741824 bytes"),
        (_warmup("[4]", count=20_000_000), "count 20000000 is above the 1000 runs"),
        # a client naming a native library for the server to load and run
        ('{"model_operations": {"op_library_filename": ["/tmp/x.so"]}}', "may not set model_operations"),
    ],
)
def test_a_config_override_cannot_make_the_server_allocate_or_run_without_bound(
    explicit_repo: Path, start_server: Callable[..., Server], config: str, words: str
) -> None:
    """A few hundred bytes of RepositoryModelLoad asking for gigabytes of warmup data, or twenty million
    warmup runs, fail the load with the reason before anything is allocated or run."""
    server = start_server(explicit_repo, *EXPLICIT)
    client = server.client
    before = peak_rss_bytes(server.proc.pid)
    err = error_of(client.load_model, "c", config=config)
    assert status(err) == "INVALID_ARGUMENT" and words in err.message(), err
    assert peak_rss_bytes(server.proc.pid) - before < 64 << 20
    client.load_model("c")
    assert infer(client, "c") == (2.0, "2")


def test_repository_requests_raw_fields(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    """Fields tritonclient does not set, as Triton answers them: a repository_name (one repository is
    served: UNIMPLEMENTED, nothing done) and a config parameter that is not a string."""
    server = start_server(explicit_repo, *EXPLICIT, "--load-model", "a")
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            lambda: stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(repository_name="other")),
            lambda: stub.RepositoryModelLoad(
                service_pb2.RepositoryModelLoadRequest(repository_name="other", model_name="b")
            ),
            lambda: stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(repository_name="other", model_name="a")
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
            assert "'repository_name' specification is not supported" in refused.value.details()  # type: ignore[attr-defined]
        load = service_pb2.RepositoryModelLoadRequest(model_name="b")
        load.parameters["config"].bytes_param = b"{}"
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(load)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "invalid value type for load parameter 'config', expected string_param" in refused.value.details()  # type: ignore[attr-defined]
    assert infer(server.client, "a") == (1.0, "1") and not server.client.is_model_ready("b")


def test_a_load_or_unload_whose_client_goes_still_runs_to_its_end(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """A client's deadline passing during RepositoryModelLoad (a warmup of about a second) or
    RepositoryModelUnload (requests still running) does not cut the change short: the model ends READY,
    or unloaded with its instances released, not stuck LOADING/UNLOADING with a half-built engine
    behind (each abandoned load leaked a worker thread and an ONNX Runtime session)."""
    repo = tmp_path / "repo"
    slow(repo / "warm" / "1" / "model.onnx", layers=16)
    warmup = "inputs { key: 'INPUT0' value: { data_type: TYPE_FP32 dims: [ 512 ] zero_data: true } }"
    write_config(
        repo / "warm", f"max_batch_size: 8\nmodel_warmup [ {{ name: 'w' batch_size: 8 count: 100 {warmup} }} ]"
    )
    slow(repo / "busy" / "1" / "model.onnx", layers=64)
    write_config(repo / "busy", "max_batch_size: 64")
    server = start_server(repo, *EXPLICIT, "--load-model", "busy")
    client = server.client
    for loads in (1, 2, 3):  # a load, then two reloads
        err = error_of(client.load_model, "warm", client_timeout=0.05)
        assert status(err) == "DEADLINE_EXCEEDED", err
        wait_for(lambda: server.log.count("event=model_ready model=warm") == loads, timeout=30)  # noqa: B023
        assert index_of(client)["warm"] == [("1", "READY", "")]
    client.unload_model("warm")
    # every version those loads made was released: the two a reload replaced and the one unloaded
    wait_for(lambda: server.log.count("event=model_version_replaced model=warm version=1") == 2, timeout=10)
    wait_for(lambda: server.log.count("event=model_unloaded model=warm version=1") == 1, timeout=10)

    x = np.zeros((64, 512), np.float32)
    tensor = grpcclient.InferInput("INPUT0", [64, 512], "FP32")
    tensor.set_data_from_numpy(x)
    answers: list[Any] = []
    running = [
        threading.Thread(target=lambda: answers.append(client.infer("busy", [tensor]).as_numpy("OUTPUT0").shape))
        for _ in range(6)
    ]
    for t in running:
        t.start()
    wait_for(
        lambda: client.get_inference_statistics("busy").model_stats[0].execution_count >= 1, timeout=10, interval=0.01
    )
    err = error_of(client.unload_model, "busy", client_timeout=0.05)
    assert status(err) == "DEADLINE_EXCEEDED", err
    for t in running:
        t.join(30)
    assert answers == [(64, 512)] * 6  # the requests the unload waited for were answered
    wait_for(lambda: index_of(client)["busy"] == [("1", "UNAVAILABLE", "unloaded")], timeout=10)
    wait_for(lambda: "event=model_unloaded model=busy version=1" in server.log, timeout=10)


def test_explicit_reload_failure_keeps_serving(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(explicit_repo, *EXPLICIT, "--load-model", "b")
    client = server.client
    assert infer(client, "b") == (5.0, "1")
    (explicit_repo / "b" / "1" / "model.onnx").write_bytes(GARBAGE)
    err = error_of(client.load_model, "b")
    assert status(err) == "INVALID_ARGUMENT" and "cannot load model.onnx" in err.message(), err
    assert client.is_model_ready("b") and infer(client, "b") == (5.0, "1")
    assert states(client, "b") == {"READY"}
    add_const(explicit_repo / "b" / "1" / "model.onnx", 6.0)
    client.load_model("b")
    assert infer(client, "b") == (6.0, "1")


def test_counters_continue_across_a_reload_and_start_over_after_an_unload(
    explicit_repo: Path, start_server: Callable[..., Server]
) -> None:
    """As Triton's: a reloaded version keeps its metric reporter (the old one is alive while the new one
    loads), so its counters go on; an unloaded model's series go, and a later load starts from zero."""
    server = start_server(explicit_repo, *EXPLICIT, "--load-model", "c")
    client = server.client

    def answered(version: str) -> tuple[float, int]:
        counter = server.sample(f'nv_inference_request_success{{model="c",version="{version}"}}')
        stats = client.get_inference_statistics("c", version).model_stats[0].inference_stats.success.count
        return counter, int(stats)

    for _ in range(3):
        assert infer(client, "c") == (2.0, "2")
    assert answered("2") == (3, 3)
    client.load_model("c", config='{"version_policy": {"all": {}}}')  # a reload: version 2 again, and 1
    assert answered("2") == (3, 3) and answered("1") == (0, 0)
    assert infer(client, "c") == (2.0, "2") and infer(client, "c", "1") == (1.0, "1")
    assert answered("2") == (4, 4) and answered("1") == (1, 1)
    client.unload_model("c")
    assert 'model="c"' not in server.exposition()
    client.load_model("c")
    assert answered("2") == (0, 0)
    assert infer(client, "c") == (2.0, "2") and answered("2") == (1, 1)


def test_explicit_load_all_at_start(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(explicit_repo, *EXPLICIT, "--load-model", "*")
    client = server.client
    assert all(client.is_model_ready(n) for n in ("a", "b", "c"))
    assert infer(client, "c") == (2.0, "2")


def test_model_names_cannot_leave_the_repository(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    repo = tmp_path / "repo"
    model_with_versions(repo / "a", 1)
    model_with_versions(repo / ".hidden", 1)  # a hidden directory is not a model
    model_with_versions(tmp_path / "outside", 1)  # a real model just outside the repository
    model_with_versions(repo / "a" / "1" / "nested", 1)
    server = start_server(repo, *EXPLICIT)
    client = server.client
    for name in BAD_NAMES:
        err = error_of(client.load_model, name)
        assert status(err) in ("NOT_FOUND", "INVALID_ARGUMENT"), (name, err)
        client.unload_model(name)  # nothing to unload: nothing done (as Triton)
        assert status(error_of(infer, client, name)) == "NOT_FOUND", name
        assert not client.is_model_ready(name)
    assert index_of(client) == {"a": [("", "", "")]}
    assert "event=model_ready" not in server.log
    client.load_model("a")
    assert index_of(client) == {"a": [("1", "READY", "")]}
    assert server.log.count("event=model_ready") == 1
    assert status(error_of(infer, client, "../repo/a")) == "NOT_FOUND"
    assert status(error_of(client.load_model, "../repo/a")) == "NOT_FOUND"


def test_load_refused_in_poll_mode(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    repo = tmp_path / "repo"
    model_with_versions(repo / "a", 1)
    client = start_server(repo, *POLL).client
    for call in (client.load_model, client.unload_model):
        err = error_of(call, "a")
        assert status(err) == "UNAVAILABLE" and "'poll'" in err.message(), err
        assert err.message().startswith("explicit model load / unload is not allowed if polling is enabled")
    assert infer(client, "a") == (1.0, "1")


def test_server_with_a_missing_repository_still_serves(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    repo = tmp_path / "repo"
    server = start_server(repo, *POLL)
    assert server.client.is_server_live() and index_of(server.client) == {}
    publish(tmp_path, repo, lambda d: model_with_versions(d / "a", 1))
    wait_for(lambda: server.client.is_model_ready("a"), timeout=10)
    assert infer(server.client, "a") == (1.0, "1")
    shutil.rmtree(repo)
    wait_for(lambda: not server.client.is_model_ready("a"), timeout=10)


def test_a_failed_reload_keeps_strict_readiness_and_a_broken_new_version_loses_it(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """--strict-readiness after reloads that fail: one whose serving version's file broke leaves the model
    serving and the server ready (Triton's readiness reads the serving versions); one that adds a broken
    version is not ready (that version does not serve), and the old ones still answer. The versions the
    failed load built are released without a model_unloaded line (they never served)."""
    repo = tmp_path / "repo"
    model_with_versions(repo / "m", 1, config="version_policy { all {} }")
    server = start_server(repo, *EXPLICIT, "--load-model", "m", "--strict-readiness", "true")
    client = server.client
    assert client.is_server_ready()
    (repo / "m" / "1" / "model.onnx").write_bytes(b"broken")
    err = error_of(client.load_model, "m")
    assert "the versions loaded before keep serving" in err.message()
    assert client.is_server_ready() and client.is_model_ready("m", "1") and infer(client, "m") == (1.0, "1")

    model_with_versions(repo / "m", 1)  # version 1 whole again, and a version 2 that cannot load
    (repo / "m" / "2").mkdir()
    (repo / "m" / "2" / "model.onnx").write_bytes(b"broken too")
    err = error_of(client.load_model, "m")
    assert "version 2" in err.message()
    assert not client.is_server_ready() and infer(client, "m") == (1.0, "1")
    # the log says when and why readiness changed (the pod leaves its Service's endpoints on it)
    assert server.log.count("event=readiness_changed ready=true") == 1  # at the start, not at the first failure
    assert "event=readiness_changed ready=false strict_readiness=true model=m reason=" in server.log
    rows = {v: (state, reason) for v, state, reason in index_of(client)["m"]}
    assert rows["1"][0] == "READY" and rows["2"][0] == "UNAVAILABLE"
    assert server.log.count("event=model_unloaded model=m") == 0
    assert server.log.count("event=model_version_released model=m version=1") == 1  # the rebuilt 1 of the 2nd


def test_version_directory_without_model_file(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    """A version directory without its model file fails the reload (the model loads whole or not at all, as
    Triton); the versions serving before keep serving, and the index says why the new one is not."""
    repo = tmp_path / "repo"
    model_with_versions(repo / "m", 1, config="version_policy { all {} }")
    server = start_server(repo, *POLL)
    client = server.client
    (repo / "m" / "2").mkdir()
    wait_for(lambda: ("2", "UNAVAILABLE") in [r[:2] for r in index_of(client)["m"]], timeout=10)
    reason = dict((v, r) for v, _, r in index_of(client)["m"])["2"]
    assert "version 2 has no model file model.onnx" in reason
    assert infer(client, "m") == (1.0, "1")
    publish(tmp_path, repo / "m" / "2" / "model.onnx", lambda p: add_const(p, 2.0))
    wait_for(lambda: client.is_model_ready("m", "2"), timeout=10)
    assert infer(client, "m") == (2.0, "2")


def test_model_control_restricted_to_a_header(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    """As Triton's --grpc-restricted-protocol: RepositoryIndex/Load/Unload need the header and its
    value; inference, metadata and the health service need nothing."""
    server = start_server(
        explicit_repo, *EXPLICIT, "--load-model", "a", "--grpc-restricted-protocol", "model-repository:Admin-Key=s3cret"
    )
    client = server.client
    for call in (lambda: client.load_model("b"), lambda: client.unload_model("a"), client.get_model_repository_index):
        err = error_of(call)
        assert status(err) == "UNAVAILABLE" and "expecting header 'admin-key'" in err.message(), err
        assert "s3cret" not in err.message()
    err = error_of(client.load_model, "b", headers={"admin-key": "s3cre"})
    assert status(err) == "UNAVAILABLE"
    assert infer(client, "a") == (1.0, "1") and client.is_server_ready() and client.get_model_metadata("a")
    client.load_model("b", headers={"admin-key": "s3cret"})
    assert infer(client, "b") == (5.0, "1")
    client.unload_model("b", headers={"admin-key": "s3cret"})
    assert not client.is_model_ready("b")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert "s3cret" not in server.log


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("model-repository", "expected PROTOCOL"),
        ("model-repository:key", "expected PROTOCOL"),
        ("nope:k=S3CRETVALUE", "unknown protocol group(s) ['nope']"),
        (":k=S3CRETVALUE", "expected PROTOCOL"),
    ],
)
def test_a_malformed_restriction_is_refused_at_start_without_its_secret(tmp_path: Path, value: str, why: str) -> None:
    """The reason is said, the header's value (a secret, often from a Kubernetes Secret) never: not from the
    flag, not from the environment."""
    from conftest import serve_command

    done = subprocess.run(
        serve_command(tmp_path, 0, -1, "--grpc-restricted-protocol", value), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "--grpc-restricted-protocol" in done.stderr, done.stderr
    assert why in done.stderr and "S3CRETVALUE" not in done.stderr, done.stderr
    env = {**os.environ, "TENSORGATE_GRPC_RESTRICTED_PROTOCOL": value}
    done = subprocess.run(serve_command(tmp_path, 0, -1), capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and why in done.stderr and "S3CRETVALUE" not in done.stderr, done.stderr


def test_a_request_decoded_off_the_loop_keeps_its_version_through_a_reload_and_an_unload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BYTES request large enough to be decoded on a worker thread has chosen its version when a
    reload or an unload retires it: it is answered by that version, and the unload waits for it.
    In process, with the real repository, scheduler and codec, so that the change certainly begins
    while the request is being decoded (the decode waits for the test's word)."""
    from models import identity
    from onnx import TensorProto
    from tensorgate import datatypes
    from tensorgate.frontend import codec
    from tensorgate.frontend.service import InferenceService, ServerState
    from tensorgate.proto import inference_pb2 as pb
    from tensorgate.repository import ModelState, Repository
    from tensorgate.settings import ControlMode, Settings

    repo = tmp_path / "repo"
    identity(repo / "s" / "1" / "model.onnx", TensorProto.STRING, ("batch", "n"))
    elements = codec.BYTES_ELEMENTS_ON_LOOP + 1  # decoded on a worker thread
    values = np.array([f"{i}".encode() for i in range(elements)], dtype=np.object_)
    request = pb.ModelInferRequest(model_name="s")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, elements])
    request.raw_input_contents.append(datatypes.serialize_bytes(values))

    decoding, go_on = threading.Event(), threading.Event()
    decode = codec.decode_request

    def gated(*args: Any) -> Any:
        decoding.set()
        assert go_on.wait(10)
        return decode(*args)

    monkeypatch.setattr(codec, "decode_request", gated)

    async def main() -> None:
        settings = Settings(model_repository=repo, model_control_mode=ControlMode.EXPLICIT, load_model=("s",))
        repository = Repository(settings)
        await repository.start()
        service = InferenceService(repository, ServerState())
        try:
            for action in ("reload", "unload"):
                decoding.clear()
                go_on.clear()
                call = asyncio.create_task(service.model_infer(request))
                assert await asyncio.to_thread(decoding.wait, 10)
                chosen = repository.get("s")  # the version the request holds
                change = asyncio.create_task(repository.load("s") if action == "reload" else repository.unload("s"))
                for _ in range(1000):  # until the change retires that version (its scheduler is closing)
                    if chosen.state is ModelState.UNLOADING:
                        break
                    await asyncio.sleep(0.01)
                assert chosen.state is ModelState.UNLOADING, action
                await asyncio.sleep(0.05)
                if action == "unload":
                    assert not change.done(), "the unload did not wait for the request that holds its version"
                go_on.set()
                response = await call
                await change
                answered = datatypes.deserialize_bytes(response.raw_output_contents[0], elements)
                assert list(answered) == list(values), action
        finally:
            go_on.set()
            await repository.stop()

    asyncio.run(main())
