"""The model repository through a real server and tritonclient: broken models beside good ones,
version policies and the layout rules (the control modes, poll and explicit: test_model_control.py)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, index_of
from models import identity, save, write_config
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families
from repository_helpers import (
    BAD_NAMES,
    GARBAGE,
    add_const,
    error_of,
    full_config,
    infer,
    model_with_versions,
    status,
)
from tensorgate.backends import onnxruntime_cpu
from tensorgate.backends.base import BackendOptions, Engine
from tensorgate.logs import logfmt_value
from tensorgate.repository import Repository, layout
from tensorgate.repository.engine_plan import Capabilities
from tensorgate.settings import Settings
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def module_servers() -> Iterator[list[Server]]:
    """Servers shared by the tests of one group; each must exit 0 when the module is done."""
    started: list[Server] = []
    yield started
    for server in started:
        code = server.stop()
        assert code == 0, f"server exited with {code}:\n{server.log}"


# ---- broken models next to good ones ----


def _corrupt(d: Path) -> None:
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.onnx").write_bytes(GARBAGE)


def _no_version_dir(d: Path) -> None:
    add_const(d / "model.onnx", 1.0)  # the file where the version directory should be
    (d / "v1").mkdir()


def _no_model_file(d: Path) -> None:
    add_const(d / "1" / "model.onnx.bak", 1.0)


def _empty_model_dir(d: Path) -> None:
    (d / "1" / "model.onnx").mkdir(parents=True)  # the directory form, without the model in it
    add_const(d / "1" / "model.onnx" / "other.onnx", 1.0)


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
        _with_config('input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 3 ] } } ]'),
        "reshape [3] does not hold what dims [4] hold",
    ),
    "unparsable": (_with_config("max_batch_size: [ {"), "config.pbtxt does not parse"),
    "misnamed": (_with_config('name: "other"'), "names the model 'other' but its directory is 'misnamed'"),
    "no_version_dir": (_no_version_dir, "no version directory"),
    "no_model_file": (_no_model_file, "version 1 has no model file model.onnx"),
    "empty_model_dir": (_empty_model_dir, "version 1 has no model file model.onnx/model.onnx"),
    "empty_specific": (_with_config("version_policy { specific {} }"), "version_policy specific names no versions"),
    "no_specific_version": (
        _with_config("version_policy { specific { versions: [ 3, 2 ] } }"),
        "none of the versions [2, 3] version_policy specific names has a directory (found [1])",
    ),
    "unknown_cpu_accelerator": (
        _with_config('optimization { execution_accelerators { cpu_execution_accelerator [ { name: "dnnl" } ] } }'),
        "cpu_execution_accelerator 'dnnl' is not known",
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
        repo / "good_hinted",
        'response_cache { enable: true } parameters { key: "k" value { string_value: "v" } }\n'
        'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }',
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
    err = error_of(infer, client, name)  # Triton's code and words (clients match them), then why
    assert status(err) == "NOT_FOUND" and expected in err.message(), err
    assert err.message().startswith(f"Request for unknown model: '{name}' has no available versions"), err
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
    assert any("cpu_execution_accelerator 'openvino' ignored" in line for line in hints), hints


def test_one_bad_version_fails_the_whole_model(broken_server: Server) -> None:
    """As Triton's model lifecycle: a version that cannot load aborts the model's load, so no version of it
    serves (its good version 2 included) and the index and every request say why."""
    client = broken_server.client
    rows = index_of(client)["half"]
    assert rows[0][:2] == ("1", "UNAVAILABLE") and "cannot load model.onnx" in rows[0][2]
    assert all(state != "READY" for _, state, _ in rows), rows
    assert not client.is_model_ready("half") and not client.is_model_ready("half", "2")
    err = error_of(infer, client, "half")
    assert status(err) == "NOT_FOUND" and "cannot load model.onnx" in err.message()
    err = error_of(infer, client, "half", "1")
    assert status(err) == "UNAVAILABLE" and "version 1 is not at ready state: it failed to load" in err.message()


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
        err = error_of(call, "good")  # Triton's code and words
        assert status(err) == "UNAVAILABLE", err
        assert err.message().startswith("explicit model load / unload is not allowed if polling is enabled")
        assert "mode 'none'" in err.message() and "--model-control-mode=explicit" in err.message()
    assert infer(client, "good") == (1.0, "1")  # the refused unload did nothing


# ---- version policies ----

POLICIES: dict[str, tuple[str | None, list[int]]] = {
    "latest2": ("version_policy { latest { num_versions: 2 } }", [2, 3]),
    "all": ("version_policy { all {} }", [1, 2, 3]),
    "specific": ("version_policy { specific { versions: [ 1, 3 ] } }", [1, 3]),
    # as Triton: the named versions that have a directory load, the others are reported
    "specific_missing": ("version_policy { specific { versions: [ 7, 3, 1, 5 ] } }", [1, 3]),
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
    (repo / "default" / "warmup").mkdir()  # model_warmup's data files: not a version, nothing to say
    # Triton ignores version directories with leading zeros (and says so): "01" is not version 1
    model_with_versions(repo / "zeros", 1, config="version_policy { all {} }")
    add_const(repo / "zeros" / "01" / "model.onnx", 10.0)
    add_const(repo / "zeros" / "04" / "model.onnx", 40.0)
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
            assert f"Request for unknown model: '{name}' version {v} is not found (served: {served})" in err.message()
    # no version: the highest ready one answers
    assert client.is_model_ready(name)
    assert infer(client, name) == (float(max(served)), str(max(served)))
    # metadata: with no version every ready one, with one only it (as Triton)
    assert list(client.get_model_metadata(name).versions) == [str(v) for v in served]
    assert list(client.get_model_metadata(name, str(served[0])).versions) == [str(served[0])]
    assert client.get_model_metadata(name).versions == [str(v) for v in served]
    for bad in ("4", "0", "-1"):
        assert not client.is_model_ready(name, bad)
        assert status(error_of(infer, client, name, bad)) == "NOT_FOUND"
    for bad in ("latest", "1.0"):  # not a version number: INVALID_ARGUMENT, also for ModelReady (as Triton)
        assert status(error_of(client.is_model_ready, name, bad)) == "INVALID_ARGUMENT"
        assert status(error_of(infer, client, name, bad)) == "INVALID_ARGUMENT"


def _warnings(server: Server, event: str, model: str) -> list[str]:
    return [
        line
        for line in server.log.splitlines()
        if "level=WARNING" in line and f"event={event} " in line and f"model={model} " in line
    ]


def test_missing_specific_versions_are_logged(versions_server: Server) -> None:
    lines = _warnings(versions_server, "model_versions_missing", "specific_missing")
    assert len(lines) == 1 and "versions=5,7" in lines[0], versions_server.log
    assert not _warnings(versions_server, "model_versions_missing", "specific")


def test_version_directories_with_leading_zeros_are_ignored(versions_server: Server) -> None:
    client = versions_server.client
    assert index_of(client)["zeros"] == [("1", "READY", "")]
    assert infer(client, "zeros", "1") == (1.0, "1")
    assert status(error_of(infer, client, "zeros", "4")) == "NOT_FOUND"
    for name in ("01", "04"):
        lines = [line for line in _warnings(versions_server, "version_dir_ignored", "zeros") if f"dir={name} " in line]
        assert len(lines) == 1 and "leading zeros" in lines[0], versions_server.log


def test_other_version_directories_are_named(versions_server: Server) -> None:
    lines = _warnings(versions_server, "version_dir_ignored", "default")
    assert {line.split("dir=")[1].split(" ")[0] for line in lines} == {"0", "latest"}, lines


# ---- the model file as a directory (ONNX models with external data) ----


def _external(path: Path, value: float) -> Path:
    """add_const's model with its constant in ``weights.bin`` beside it (ONNX external data, which
    ONNX Runtime reads relative to the model file's directory)."""
    add_const(path, value)
    onnx.save_model(
        onnx.load(str(path)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (path.parent / "weights.bin").stat().st_size > 0
    return path


WARMUP = (
    'model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: '
    '{ data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x" } } } ]'
)


@pytest.fixture(scope="module")
def model_dir_server(tmp_path_factory: pytest.TempPathFactory, module_servers: list[Server]) -> Server:
    repo = tmp_path_factory.mktemp("model_dir") / "repo"
    # Triton's ONNX Runtime backend: when <version>/model.onnx is a directory, the model is in it
    _external(repo / "external" / "1" / "model.onnx" / "model.onnx", 5.0)
    add_const(repo / "plain_in_dir" / "1" / "model.onnx" / "model.onnx", 6.0)
    # ... always as model.onnx, whatever default_model_filename names the directory
    _external(repo / "named" / "1" / "net.onnx" / "model.onnx", 7.0)
    write_config(repo / "named", 'default_model_filename: "net.onnx"')
    # warmup data stays under <model>/warmup/
    _external(repo / "warmed" / "1" / "model.onnx" / "model.onnx", 8.0)
    write_config(repo / "warmed", f"max_batch_size: 4\n{WARMUP}")
    (repo / "warmed" / "warmup").mkdir()
    (repo / "warmed" / "warmup" / "x").write_bytes(np.ones(4, np.float32).tobytes())
    server = Server(repo)
    module_servers.append(server)
    return server


@pytest.mark.parametrize("name, value", [("external", 5.0), ("plain_in_dir", 6.0), ("named", 7.0), ("warmed", 8.0)])
def test_model_file_as_a_directory(model_dir_server: Server, name: str, value: float) -> None:
    client = model_dir_server.client
    assert index_of(client)[name] == [("1", "READY", "")], model_dir_server.log
    assert infer(client, name) == (value, "1")


def test_warmup_of_a_model_in_a_directory_ran(model_dir_server: Server, tmp_path: Path) -> None:
    assert "event=model_warmup model=warmed version=1 sample=w runs=1 instances=1 " in model_dir_server.log
    # What each instance ran, which the server does not expose (warmup runs are in no statistics): the
    # same model, with two instances, loaded in this process on ONNX Runtime instances that record
    # every batch they run (its shape and distinct values) and whether the model served yet.
    shutil.copytree(model_dir_server.repo / "warmed", tmp_path / "repo" / "warmed")
    write_config(tmp_path / "repo" / "warmed", f"max_batch_size: 4\ninstance_group [ {{ count: 2 }} ]\n{WARMUP}")
    runs: list[list[tuple[bool, tuple[int, ...], list[float]]]] = []
    loaded: list[Repository] = []

    class Recording(onnxruntime_cpu.OnnxRuntimeCpuBackend):
        def __init__(self, model_file: Path, options: BackendOptions) -> None:
            super().__init__(model_file, options)
            self.runs: list[tuple[bool, tuple[int, ...], list[float]]] = []
            runs.append(self.runs)

        def execute(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
            x = inputs["INPUT0"]
            self.runs.append((loaded[0].is_ready("warmed"), tuple(x.shape), np.unique(x).tolist()))
            return super().execute(inputs, output_names)

    repository = Repository(
        Settings(model_repository=tmp_path / "repo"),
        loaders={Engine.ORT_CPU: Recording},
        capabilities=Capabilities(no_gpu_reason="a CPU test"),
    )
    loaded.append(repository)

    async def load() -> None:
        await repository.start()
        assert repository.is_ready("warmed")
        await repository.stop()

    asyncio.run(load())
    # each instance ran the sample once, from <model>/warmup/x (ones), before the model was ready
    assert runs == [[(False, (1, 4), [1.0])]] * 2, runs


# ---- model directory names ----

# Triton serves any directory of the repository as a model, whatever its name.
ODD_NAMES = {
    "resnet50+fp16": 11.0,
    "bert@v2": 12.0,
    "mod\u00e8le": 13.0,
    "has space": 14.0,
    "-dash": 15.0,
    "a%20b": 16.0,
}
# What is not served, and the reason the log gives.
SKIPPED = {".hidden": "hidden", "tab\tname": "control character", os.fsdecode(b"latin\xe9"): "not valid UTF-8"}


@pytest.fixture(scope="module")
def names_server(tmp_path_factory: pytest.TempPathFactory, module_servers: list[Server]) -> Server:
    repo = tmp_path_factory.mktemp("names") / "repo"
    for name, value in ODD_NAMES.items():
        add_const(repo / name / "1" / "model.onnx", value)
    for name in SKIPPED:
        add_const(repo / name / "1" / "model.onnx", 1.0)
    server = Server(repo)  # HTTP on a free port (Server.http_port)
    module_servers.append(server)
    return server


def _http(port: int, method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body))
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


def test_odd_model_names_are_served(names_server: Server) -> None:
    client = names_server.client
    index = index_of(client)
    assert set(index) == set(ODD_NAMES), index
    for name, value in ODD_NAMES.items():
        assert index[name] == [("1", "READY", "")]
        assert infer(client, name) == (value, "1")
        assert client.get_model_metadata(name).name == name


@pytest.mark.parametrize("name", sorted(ODD_NAMES))
def test_odd_model_names_over_http(names_server: Server, name: str) -> None:
    http_port = names_server.http_port
    quoted = urllib.parse.quote(name, safe="")
    paths = {quoted} | ({name} if name.isascii() and " " not in name and "%" not in name else set())
    for path in paths:
        code, metadata = _http(http_port, "GET", f"/v2/models/{path}")
        assert code == 200 and metadata["name"] == name, (path, metadata)
        request = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
        code, result = _http(http_port, "POST", f"/v2/models/{path}/versions/1/infer", request)
        assert code == 200 and result["model_name"] == name, (path, result)
        assert result["outputs"][0]["data"] == [ODD_NAMES[name]] * 4  # type: ignore[index]
    code, _ = _http(http_port, "GET", f"/v2/models/{quoted}/ready")
    assert code == 200


def test_odd_model_names_in_metrics(names_server: Server) -> None:
    for name in ODD_NAMES:
        infer(names_server.client, name)
    families = {f.name: f for f in text_string_to_metric_families(names_server.exposition())}
    answered = {s.labels["model"]: s.value for s in families["nv_inference_request_success"].samples}
    assert set(answered) == set(ODD_NAMES) and all(v >= 1 for v in answered.values()), answered


def test_skipped_model_directories_are_logged_once(names_server: Server) -> None:
    index_of(names_server.client)  # another look at the repository: nothing logged again
    lines = [line for line in names_server.log.splitlines() if "event=model_dir_skipped" in line]
    for name, why in SKIPPED.items():
        named = [line for line in lines if f"name={logfmt_value(name)} " in line]
        assert len(named) == 1 and "level=WARNING" in named[0] and why in named[0], (name, lines)
    assert len(lines) == len(SKIPPED), lines


# ---- the layout rules on their own (no server) ----


@pytest.mark.parametrize(
    "name", ["a", "model_1", "ResNet-50.v2", "_x", "9", "a+b", "a@b", "é", "a b", "a\\b", "~", "a" * 255]
)
def test_valid_model_names(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    assert layout.skip_reason(name) is None
    assert layout.model_dir(tmp_path, name) == tmp_path / name
    assert layout.model_names(tmp_path) == [name]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_are_not_repository_entries(tmp_path: Path, name: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    assert layout.model_dir(tmp_path, name) is None
    assert layout.model_dir(tmp_path / "sub", "a") is None  # no such repository


@pytest.mark.parametrize("name", [".hidden", ".", "..", "a\nb", "a\x7fb", os.fsdecode(b"\xff")])
def test_entries_that_are_not_models(name: str) -> None:
    assert layout.skip_reason(name)


def test_version_dirs(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "01", "007", "0", "-1", "latest", "1.0", "\u0661", "99999999999999999999", "warmup"):
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file is not a version directory")
    found = layout.version_dirs(tmp_path)
    assert found.versions == {1: tmp_path / "1", 2: tmp_path / "2", 10: tmp_path / "10"}
    assert set(found.ignored) == {"01", "007", "0", "-1", "latest", "1.0", "\u0661", "99999999999999999999"}
    assert "leading zeros" in found.ignored["01"]


def test_model_file_in_a_directory(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").mkdir()
    (tmp_path / "net.onnx").write_bytes(b"")
    assert layout.model_file(tmp_path, "model.onnx") == tmp_path / "model.onnx" / "model.onnx"
    assert layout.model_file(tmp_path, "net.onnx") == tmp_path / "net.onnx"
    assert layout.model_file(tmp_path, "none.onnx") == tmp_path / "none.onnx"


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


# ---- reshape: Triton's form for tensors with no dims after the batch one, and scalars ----


def test_reshaped_tensors_are_served_in_tritons_shapes(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    """A model taking x[N] is served, as by Triton, with dims [1] reshaped to []: clients send [N, 1] and get
    [N, 1] back (auto-completed, or from a config Triton wrote); a reshape of [4] to [2, 2] and a scalar of a
    model that does not batch (dims [1]) go through the model in its own shapes."""
    repo = tmp_path / "repo"
    identity(repo / "vec" / "1" / "model.onnx", shape=["batch"])
    identity(repo / "vec_triton" / "1" / "model.onnx", shape=["batch"])
    write_config(
        repo / "vec_triton",
        'max_batch_size: 8\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]',
    )
    identity(repo / "square" / "1" / "model.onnx", shape=["batch", 2, 2])
    write_config(
        repo / "square",
        "max_batch_size: 8\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]',
    )
    identity(repo / "scalar" / "1" / "model.onnx", shape=[])
    identity(repo / "image" / "1" / "model.onnx", shape=[1, 3, "h", "w"])  # a model that does not batch
    write_config(
        repo / "image",
        "max_batch_size: 0\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] reshape: { shape: [ 1, 3, -1, -1 ] } } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] reshape: { shape: [ 1, 3, -1, -1 ] } } ]',
    )
    client = start_server(repo).client

    def call(model: str, data: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        out = client.infer(model, [tensor]).as_numpy("OUTPUT0")
        assert out is not None
        return out

    column = np.array([[1.0], [2.0], [3.0]], np.float32)
    for model in ("vec", "vec_triton"):
        assert call(model, column).tolist() == column.tolist()
        meta = client.get_model_metadata(model)
        assert [list(t.shape) for t in (*meta.inputs, *meta.outputs)] == [[-1, 1], [-1, 1]], meta
    config = client.get_model_config("vec").config
    assert list(config.input[0].dims) == [1] and config.input[0].HasField("reshape")
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert call("square", rows).tolist() == rows.tolist()
    assert call("scalar", np.array([5.0], np.float32)).tolist() == [5.0]
    picture = np.arange(30, dtype=np.float32).reshape(3, 2, 5)  # the k-th -1 of dims is the k-th of reshape
    assert call("image", picture).tolist() == picture.tolist()
    with pytest.raises(InferenceServerException) as refused:
        call("vec", np.array([1.0, 2.0], np.float32))
    assert "INVALID_ARGUMENT" in str(refused.value.status()) and "expects [batch<=4,1]" in refused.value.message()


def test_an_output_of_unknown_rank_passes_as_the_model_made_it(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """ONNX Runtime reports an output whose rank it cannot infer (a Reshape to a shape given at run time) as it
    reports a scalar, which auto-complete writes as Triton's dims [1]: a one-element output goes as [1], any other
    as the model made it (it was answered INTERNAL for not fitting a scalar)."""
    repo = tmp_path / "repo"
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        "unknown_rank",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("s", TensorProto.INT64, ["k"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    save(graph, repo / "free" / "1" / "model.onnx")
    client = start_server(repo).client
    for shape in ([2], [1, 2], [2, 1]):
        x = grpcclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.array([3.0, 4.0], np.float32))
        s = grpcclient.InferInput("s", [len(shape)], "INT64")
        s.set_data_from_numpy(np.array(shape, np.int64))
        y = client.infer("free", [x, s]).as_numpy("y")
        assert y is not None and list(y.shape) == shape and y.ravel().tolist() == [3.0, 4.0], (shape, y)
