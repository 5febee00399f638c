"""The model repository through a real server and tritonclient: broken models beside good ones,
version policies and the layout rules (the control modes, poll and explicit: test_model_control.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Server, index_of
from models import write_config
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
from tensorgate.repository import layout


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
