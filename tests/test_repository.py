"""The model repository through a real server and tritonclient: broken models beside good ones,
version policies, poll mode, explicit load/unload, and model names that try to leave the repository."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, index_of, wait_for
from models import save, write_config
from onnx import TensorProto, helper, numpy_helper
from tensorgate.repository import layout
from tritonclient.utils import InferenceServerException

POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "0.5")
EXPLICIT = ("--model-control-mode", "explicit")
SIZE = 4


def add_const(path: Path, value: float, size: int = SIZE, work: int = 0) -> Path:
    """FP32 [batch, size] -> INPUT0 + value. ``work`` > 0 adds that many MatMuls whose result is
    multiplied by zero: the same answer, more time per request."""
    nodes = [helper.make_node("Add", ["INPUT0", "c"], ["sum" if work else "OUTPUT0"])]
    inits = [numpy_helper.from_array(np.full((size,), value, np.float32), "c")]
    if work:
        w = (np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros((size,), np.float32), "zero")]
        last = "INPUT0"
        for i in range(work):
            nodes.append(helper.make_node("MatMul", [last, "w"], [f"h{i}"]))
            last = f"h{i}"
        nodes += [helper.make_node("Mul", [last, "zero"], ["z"]), helper.make_node("Add", ["sum", "z"], ["OUTPUT0"])]
    graph = helper.make_graph(
        nodes,
        "add_const",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", size])],
        initializer=inits,
    )
    return save(graph, path)


def model_with_versions(model_dir: Path, *numbers: int, config: str | None = None) -> Path:
    """Version n adds n, so an answer says which version computed it."""
    for n in numbers:
        add_const(model_dir / str(n) / "model.onnx", float(n))
    if config is not None:
        write_config(model_dir, config)
    return model_dir


def full_config(name: str, dtype: str = "TYPE_FP32", dims: str = str(SIZE), input_name: str = "INPUT0") -> str:
    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        f'input [ {{ name: "{input_name}" data_type: {dtype} dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
    )


def publish(tmp_path: Path, target: Path, build: Callable[[Path], object]) -> None:
    """Build a file or directory beside the repository, then rename it into place at once."""
    staging = Path(tempfile.mkdtemp(dir=tmp_path)) / target.name
    build(staging)
    os.replace(staging, target)


def infer(
    client: grpcclient.InferenceServerClient,
    name: str,
    version: str = "",
    rows: int = 2,
    size: int = SIZE,
    timeout: float = 30.0,
) -> tuple[float, str]:
    """(the constant the model added, the version that answered)."""
    x = np.arange(rows * size, dtype=np.float32).reshape(rows, size)
    tensor = grpcclient.InferInput("INPUT0", [rows, size], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(name, [tensor], model_version=version, client_timeout=timeout)
    added = np.unique(result.as_numpy("OUTPUT0") - x)
    assert added.size == 1, added
    return float(added[0]), result.get_response().model_version


def error_of(call: Callable[..., object], *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def status(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


def states(client: grpcclient.InferenceServerClient, name: str) -> set[str]:
    return {state for _, state, _ in index_of(client).get(name, [])}


@pytest.fixture(scope="module")
def module_servers() -> Iterator[list[Server]]:
    """Servers shared by the tests of one group; each must exit 0 when the module is done."""
    started: list[Server] = []
    yield started
    for server in started:
        code = server.stop()
        assert code == 0, f"server exited with {code}:\n{server.log}"


# ---- broken models next to good ones ----

GARBAGE = b"\x08\x07garbage, not an ONNX file\xff\xfe" * 32


def _corrupt(d: Path) -> None:
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.onnx").write_bytes(GARBAGE)


def _no_version_dir(d: Path) -> None:
    add_const(d / "model.onnx", 1.0)  # the file where the version directory should be
    (d / "v1").mkdir()


def _no_model_file(d: Path) -> None:
    add_const(d / "1" / "model.onnx.bak", 1.0)


def _with_config(text: str) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        add_const(d / "1" / "model.onnx", 1.0)
        write_config(d, text.replace("NAME", d.name))

    return build


# name: (what to put in <repo>/<name>, text the reason must contain)
BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt": (_corrupt, "ONNX Runtime cannot load model.onnx"),
    "wrong_dtype": (
        _with_config(full_config("NAME", dtype="TYPE_INT32")),
        "is TYPE_INT32 in config.pbtxt but TYPE_FP32 in the ONNX file",
    ),
    "wrong_dims": (
        _with_config(full_config("NAME", dims="5")),
        "has dims [5] in config.pbtxt, which contradicts the ONNX file",
    ),
    "wrong_rank": (_with_config(full_config("NAME", dims="2, 2")), "has rank 1"),
    "wrong_input": (
        _with_config(full_config("NAME", input_name="IMAGE")),
        "declares input 'IMAGE', which the ONNX file does not have",
    ),
    "sequence": (_with_config("sequence_batching {}"), "sequence_batching is not supported"),
    "ensemble": (
        _with_config('ensemble_scheduling { step [ { model_name: "good" model_version: -1 } ] }'),
        "ensemble_scheduling is not supported",
    ),
    "pytorch": (_with_config('backend: "pytorch"'), "backend 'pytorch' is not served"),
    "decoupled": (_with_config("model_transaction_policy { decoupled: true }"), "decoupled models"),
    "reshaped": (
        _with_config('input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 4 ] } } ]'),
        "reshape is not supported",
    ),
    "unparsable": (_with_config("max_batch_size: [ {"), "config.pbtxt does not parse"),
    "misnamed": (_with_config('name: "other"'), "names the model 'other' but its directory is 'misnamed'"),
    "no_version_dir": (_no_version_dir, "no version directory"),
    "no_model_file": (_no_model_file, "version 1 has no model file model.onnx"),
    "empty_specific": (_with_config("version_policy { specific {} }"), "version_policy specific names no versions"),
    "missing_version": (
        _with_config("version_policy { specific { versions: [ 1, 2 ] } }"),
        "names versions [2] that have no directory",
    ),
    "escaping_filename": (
        _with_config('default_model_filename: "../../good/1/model.onnx"'),
        "must be a plain file name",
    ),
}

GOOD = {"good": 1.0, "good_config": 2.0, "good_hinted": 3.0}


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory, module_servers: list[Server]) -> Server:
    repo = tmp_path_factory.mktemp("broken") / "repo"
    add_const(repo / "good" / "1" / "model.onnx", GOOD["good"])
    add_const(repo / "good_config" / "1" / "model.onnx", GOOD["good_config"])
    write_config(repo / "good_config", full_config("good_config"))
    add_const(repo / "good_hinted" / "1" / "model.onnx", GOOD["good_hinted"])
    write_config(
        repo / "good_hinted", 'response_cache { enable: true } parameters { key: "k" value { string_value: "v" } }'
    )
    # version 1 is corrupt, version 2 is fine: the model serves version 2
    (repo / "half" / "1").mkdir(parents=True)
    (repo / "half" / "1" / "model.onnx").write_bytes(GARBAGE)
    add_const(repo / "half" / "2" / "model.onnx", 2.0)
    write_config(repo / "half", "version_policy { all {} }")
    for name, (build, _) in BROKEN.items():
        (repo / name).mkdir(parents=True)
        build(repo / name)
    server = Server(repo)
    module_servers.append(server)
    return server


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_model_is_unavailable_with_reason(broken_server: Server, name: str) -> None:
    expected = BROKEN[name][1]
    client = broken_server.client
    rows = index_of(client)[name]
    assert {state for _, state, _ in rows} == {"UNAVAILABLE"}, rows
    assert any(expected in reason for _, _, reason in rows), rows
    assert not client.is_model_ready(name)
    err = error_of(infer, client, name)
    assert status(err) == "UNAVAILABLE" and expected in err.message(), err
    logged = [
        line
        for line in broken_server.log.splitlines()
        if "level=ERROR" in line and f"model={name} " in line and expected.split("'")[0] in line
    ]
    assert logged, f"no ERROR line names {name!r} and {expected!r}:\n{broken_server.log}"


def test_good_models_serve_beside_broken_ones(broken_server: Server) -> None:
    client = broken_server.client
    assert client.is_server_live() and client.is_server_ready()
    for name, value in GOOD.items():
        assert client.is_model_ready(name)
        assert index_of(client)[name] == [("1", "READY", "")]
        assert infer(client, name) == (value, "1")
    assert "internal_error" not in broken_server.log
    assert "event=config_field_ignored model=good_hinted" in broken_server.log
    hints = [line for line in broken_server.log.splitlines() if "model=good_hinted" in line and "level=WARNING" in line]
    assert any("response_cache" in line for line in hints) and any("parameters ignored: k" in line for line in hints)


def test_one_bad_version_leaves_the_others_serving(broken_server: Server) -> None:
    client = broken_server.client
    rows = index_of(client)["half"]
    assert rows[0][:2] == ("1", "UNAVAILABLE") and "cannot load model.onnx" in rows[0][2]
    assert rows[1:] == [("2", "READY", "")]
    assert infer(client, "half") == (2.0, "2")
    assert infer(client, "half", "2") == (2.0, "2")
    assert not client.is_model_ready("half", "1")
    err = error_of(infer, client, "half", "1")
    assert status(err) == "UNAVAILABLE" and "version 1 failed to load" in err.message()


def test_index_lists_every_model_directory(broken_server: Server) -> None:
    assert set(index_of(broken_server.client)) == {*BROKEN, *GOOD, "half"}


@pytest.mark.parametrize("name", ["../good", "..", "good/1", "/good", "", "nope", "good\n"])
def test_infer_to_a_name_not_in_the_repository(broken_server: Server, name: str) -> None:
    err = error_of(infer, broken_server.client, name)
    assert status(err) == "NOT_FOUND", err
    assert not broken_server.client.is_model_ready(name)


def test_load_and_unload_refused_in_none_mode(broken_server: Server) -> None:
    client = broken_server.client
    for call in (client.load_model, client.unload_model):
        err = error_of(call, "good")
        assert status(err) == "FAILED_PRECONDITION", err
        assert "model control mode 'none'" in err.message() and "explicit" in err.message()
    assert infer(client, "good") == (1.0, "1")  # the refused unload did nothing


# ---- version policies ----

POLICIES: dict[str, tuple[str | None, list[int]]] = {
    "latest2": ("version_policy { latest { num_versions: 2 } }", [2, 3]),
    "all": ("version_policy { all {} }", [1, 2, 3]),
    "specific": ("version_policy { specific { versions: [ 1, 3 ] } }", [1, 3]),
    "default": (None, [3]),
    "latest1_config": ("max_batch_size: 4", [3]),
}


@pytest.fixture(scope="module")
def versions_server(tmp_path_factory: pytest.TempPathFactory, module_servers: list[Server]) -> Server:
    repo = tmp_path_factory.mktemp("versions") / "repo"
    for name, (config, _) in POLICIES.items():
        model_with_versions(repo / name, 1, 2, 3, config=config)
    # entries that are not version directories are ignored
    (repo / "default" / "0").mkdir()
    (repo / "default" / "latest").mkdir()
    (repo / "default" / "notes.txt").write_text("not a version")
    server = Server(repo)
    module_servers.append(server)
    return server


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_version_policy(versions_server: Server, name: str) -> None:
    served = POLICIES[name][1]
    client = versions_server.client
    assert index_of(client)[name] == [(str(v), "READY", "") for v in served]
    for v in (1, 2, 3):
        assert client.is_model_ready(name, str(v)) is (v in served), v
        if v in served:
            assert infer(client, name, str(v)) == (float(v), str(v))
        else:
            err = error_of(infer, client, name, str(v))
            assert status(err) == "NOT_FOUND", err
            assert f"has no version {v} loaded (served: {served})" in err.message()
    # no version: the highest ready one answers
    assert client.is_model_ready(name)
    assert infer(client, name) == (float(max(served)), str(max(served)))
    assert client.get_model_metadata(name).versions == [str(v) for v in served]
    for bad in ("4", "0", "-1", "latest", "1.0"):
        assert not client.is_model_ready(name, bad)
        assert status(error_of(infer, client, name, bad)) == "NOT_FOUND"


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
    publish(tmp_path, repo / "m" / "config.pbtxt", lambda p: p.write_text("sequence_batching {}"))
    wait_for(lambda: "sequence_batching is not supported" in server.log, timeout=10)
    assert infer(client, "m") == (1.0, "1")
    # and a fix is picked up
    (repo / "m" / "config.pbtxt").unlink()
    publish(tmp_path, repo / "m" / "1" / "model.onnx", lambda p: add_const(p, 11.0))
    wait_for(lambda: infer(client, "m")[0] == 11.0, timeout=10)


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
    assert server.log.count("event=model_unloaded model=m") >= 3


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
    assert status(err) in ("UNAVAILABLE", "NOT_FOUND") and "'b'" in err.message()
    assert index_of(client)["b"] == [("", "UNAVAILABLE", "unloaded")]
    assert infer(client, "a") == (1.0, "1")  # others untouched
    client.load_model("b")  # and back
    assert infer(client, "b") == (5.0, "1")
    client.unload_model("c")  # unloading a model that is not loaded is fine
    assert not client.is_model_ready("c")

    err = error_of(client.load_model, "ghost")
    assert status(err) == "NOT_FOUND" and "ghost" in err.message()
    err = error_of(client.unload_model, "ghost")
    assert status(err) == "NOT_FOUND" and "ghost" in err.message()
    assert "ghost" not in index_of(client)


def test_explicit_load_with_config_override(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(explicit_repo, *EXPLICIT)
    client = server.client
    client.load_model("c", config='{"version_policy": {"all": {}}}')
    assert client.is_model_ready("c", "1") and client.is_model_ready("c", "2")
    assert infer(client, "c", "1") == (1.0, "1") and infer(client, "c") == (2.0, "2")

    # an override that contradicts the file fails with the reason; what was serving keeps serving
    bad = '{"max_batch_size": 8, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}]}'
    err = error_of(client.load_model, "c", config=bad)
    assert status(err) == "INVALID_ARGUMENT" and "TYPE_INT32" in err.message(), err
    assert infer(client, "c", "1") == (1.0, "1")
    err = error_of(client.load_model, "c", config='{"sequence_batching": {}}')
    assert "sequence_batching is not supported" in err.message()
    err = error_of(client.load_model, "c", config="{not json")
    assert status(err) == "INVALID_ARGUMENT" and "not a valid model config" in err.message()
    err = error_of(client.load_model, "c", config='{"name": "other"}')
    assert "names the model 'other'" in err.message()
    assert infer(client, "c", "1") == (1.0, "1")

    # the override was for that load only: a plain load reads the disk again (latest 1)
    client.load_model("c")
    assert client.is_model_ready("c", "2") and not client.is_model_ready("c", "1")
    assert status(error_of(infer, client, "c", "1")) == "NOT_FOUND"


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


def test_explicit_load_all_at_start(explicit_repo: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(explicit_repo, *EXPLICIT, "--load-model", "*")
    client = server.client
    assert all(client.is_model_ready(n) for n in ("a", "b", "c"))
    assert infer(client, "c") == (2.0, "2")


BAD_NAMES = ["../outside", "..", ".", "a/1", "a/../a", "/etc", "/tmp", ".hidden", "", " a", "a\n", "a\x00", "~"]


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
        err = error_of(client.unload_model, name)
        assert status(err) in ("NOT_FOUND", "INVALID_ARGUMENT"), (name, err)
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
        assert status(err) == "FAILED_PRECONDITION" and "'poll'" in err.message(), err
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


def test_version_directory_without_model_file(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    """A version directory without its model file fails that version only; the rest keep serving."""
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


# ---- the layout rules on their own (no server) ----


@pytest.mark.parametrize("name", ["a", "model_1", "ResNet-50.v2", "_x", "9"])
def test_valid_model_names(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    assert layout.valid_model_name(name)
    assert layout.model_dir(tmp_path, name) == tmp_path / name


@pytest.mark.parametrize("name", [*BAD_NAMES, "a" * 256, "a\nb", "a b", "a\\b"])
def test_invalid_model_names(tmp_path: Path, name: str) -> None:
    (tmp_path / "a").mkdir()
    assert not layout.valid_model_name(name)
    assert layout.model_dir(tmp_path, name) is None
    assert layout.model_dir(tmp_path / "sub", "a") is None  # no such repository


def test_fingerprint_sees_every_change(tmp_path: Path) -> None:
    model = tmp_path / "m"
    add_const(model / "1" / "model.onnx", 1.0)
    seen = {layout.fingerprint(model)}
    changes: list[Callable[[], object]] = [
        lambda: (model / "2").mkdir(),  # an empty version directory
        lambda: add_const(model / "2" / "model.onnx", 2.0),
        lambda: write_config(model, "max_batch_size: 4"),
        lambda: os.replace(model / "2", model / "3"),
        lambda: shutil.rmtree(model / "3"),
    ]
    for change in changes:
        change()
        now = layout.fingerprint(model)
        assert now not in seen
        seen.add(now)
    assert layout.fingerprint(model) == layout.fingerprint(model)
