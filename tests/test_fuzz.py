"""Property-based fuzzing of a real server process: whatever a client sends, on any RPC, the answer is a status
a client can act on (never UNKNOWN or INTERNAL, never a hang), its message is plain and bounded, the process
stays up, and afterwards a good request still gets the right answer with no internal error logged.

Requests come from tests/fuzz_strategies.py (shared with bench/hardening.py): ModelInferRequests from correct
to wild (model names, versions, datatypes, shapes, typed and raw contents, parameters, outputs), sent unary
(several at once, so they batch together) and on ModelStreamInfer, and random or corrupted bytes on every RPC
of inference.GRPCInferenceService and on grpc.health.v1.Health/Check. A second server in explicit
model-control mode takes fuzzed RepositoryModelLoad/Unload requests (config overrides in JSON). The cases the
fuzzing found are kept as fixed examples (``EDGE_CASES``), so they fail or pass on every run.

The tally of answers (status codes per method) is printed in the terminal summary and written to
``fuzz_report.json`` in pytest's base temporary directory. ``TENSORGATE_FUZZ_SCALE=10`` multiplies the number
of examples, for a longer hunt.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server, running
from fuzz_strategies import (
    HEALTH_CHECK,
    INFER,
    SERVICE,
    STREAM,
    UNARY_METHODS,
    Catalog,
    FuzzRequest,
    Tally,
    answer_problems,
    call_stream,
    call_unary,
    channel,
    describe,
    infer_requests,
    infer_round,
    model_names,
    raw_messages,
    raw_round,
    short,
    stream_problems,
    stream_round,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

FUZZ = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
# Examples per test (per RPC for the raw bytes); TENSORGATE_FUZZ_SCALE multiplies them.
_SCALE = float(os.environ.get("TENSORGATE_FUZZ_SCALE", "1"))
_BASE = {"infer": 300, "stream": 60, "raw": 30, "raw_stream": 30, "control": 40}
EXAMPLES = {k: max(1, round(v * _SCALE)) for k, v in _BASE.items()}
LOAD = f"/{SERVICE}/RepositoryModelLoad"
UNLOAD = f"/{SERVICE}/RepositoryModelUnload"


# ---------------------------------------------------------------------------------------------------------------
# fixtures


class _Summary:
    """A plugin registered by the ``tally`` fixture: the tally in pytest's terminal summary, with or without -s."""

    def __init__(self, tally: Tally, path: Path) -> None:
        self.tally, self.path = tally, path

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section("fuzzing: status codes by method")
        terminalreporter.write_line(f"cases (hypothesis examples) by test: {dict(self.tally.cases)}")
        terminalreporter.write_line(self.tally.table())
        terminalreporter.write_line(f"written to {self.path}")


@pytest.fixture(scope="module")
def tally(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tally]:
    result = Tally()
    path = tmp_path_factory.getbasetemp() / "fuzz_report.json"
    pytestconfig.pluginmanager.register(_Summary(result, path), "tensorgate-fuzz-summary")
    yield result
    path.write_text(result.dumps())
    print(f"\nfuzzing: {dict(result.cases)}\n{result.table()}\n(written to {path})")


@pytest.fixture(scope="module")
def catalog(server: Server) -> Catalog:
    found = Catalog.read(server.client)
    assert {m.name for m in found.models} >= {"add_sub", "identity", "string_identity"}, found
    return found


@pytest.fixture(scope="module")
def ch(server: Server) -> Iterator[grpc.Channel]:
    with channel(server.url) as c:
        yield c


@pytest.fixture(scope="module")
def control_server(repo: Path) -> Iterator[Server]:
    """A second server on the same repository where clients may load and unload models."""
    with running(repo, "--model-control-mode", "explicit", "--load-model", "*") as s:
        yield s


@pytest.fixture(scope="module")
def control_ch(control_server: Server) -> Iterator[grpc.Channel]:
    with channel(control_server.url) as c:
        yield c


def _alive(server: Server) -> None:
    assert server.proc.poll() is None, f"the server exited with {server.proc.returncode}:\n{server.log[-4000:]}"


# ---------------------------------------------------------------------------------------------------------------
# the cases the fuzzing found, kept as fixed examples (minimal reproducers)


def _load(config: str, model: str = "add_sub") -> bytes:
    request = pb.RepositoryModelLoadRequest(model_name=model)
    request.parameters["config"].string_param = config
    return bytes(request.SerializeToString())


def _infer(model: str, shape: list[int], datatype: str = "FP32", raw: bytes = bytes(64), name: str = "INPUT0") -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return bytes(request.SerializeToString())


EdgeCase = tuple[str, str, Callable[[], bytes], str]  # id, method, payload, which server
EDGE_CASES: list[EdgeCase] = [
    ("health_check_malformed", HEALTH_CHECK, lambda: b"\x80", "server"),
    ("health_check_bad_utf8", HEALTH_CHECK, lambda: b"\x0a\x01\xff", "server"),
    ("infer_rank_3000", INFER, lambda: _infer("identity", [1] * 3000), "server"),
    ("infer_rank_3000_negative", INFER, lambda: _infer("identity", [-1] * 3000), "server"),
    ("infer_rank_5000_negative", INFER, lambda: _infer("identity", [-1] * 5000), "server"),  # status over 8 KiB
    ("infer_shape_2_62_by_0", INFER, lambda: _infer("identity", [4611686018427387904, 0]), "server"),
    ("infer_model_name_100k", INFER, lambda: _infer("m" * 100_000, [1, 16]), "server"),
    (
        "infer_version_10k",
        INFER,
        lambda: pb.ModelInferRequest(model_name="identity", model_version="9" * 10_000).SerializeToString(),
        "server",
    ),
    (
        "infer_version_4290_digits",  # an int Python parses (below its 4300-digit limit), echoed whole
        INFER,
        lambda: pb.ModelInferRequest(model_name="add_sub", model_version="9" * 4290).SerializeToString(),
        "server",
    ),
    ("infer_datatype_10k", INFER, lambda: _infer("identity", [1, 16], datatype="D" * 10_000), "server"),
    ("infer_input_name_10k", INFER, lambda: _infer("identity", [1, 16], name="I" * 10_000), "server"),
    (
        "metadata_name_100k",
        f"/{SERVICE}/ModelMetadata",
        lambda: pb.ModelMetadataRequest(name="m" * 100_000).SerializeToString(),
        "server",
    ),
    ("load_config_long_name", LOAD, lambda: _load('{"name": "' + "n" * 5000 + '"}'), "control_server"),
    ("load_config_long_field", LOAD, lambda: _load('{"' + "k" * 5000 + '": 1}'), "control_server"),
    ("load_config_long_input", LOAD, lambda: _load('{"input": [{"name": "' + "i" * 5000 + '"}]}'), "control_server"),
    ("load_config_deep_json", LOAD, lambda: _load("[" * 3000 + "]" * 3000), "control_server"),
]


@pytest.mark.parametrize(("path", "payload", "which"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES])
def test_edge_case(path: str, payload: Callable[[], bytes], which: str, request: pytest.FixtureRequest) -> None:
    """Each found case as a unary call (allowed status, plain bounded message) and, for ModelInfer, on a stream."""
    server: Server = request.getfixturevalue(which)
    tally: Tally = request.getfixturevalue("tally")
    data = payload()
    with channel(server.url) as c:
        answer = call_unary(c, path, data)
        tally.add(path, answer.code)
        problems = answer_problems(answer, data)
        if path == INFER:
            stream = call_stream(c, [data])
            tally.add_stream(stream)
            problems += stream_problems(stream, [answer.code != grpc.StatusCode.OK], data)
    _alive(server)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------------
# the fuzzing


@settings(FUZZ, max_examples=EXAMPLES["infer"])
@given(data=st.data())
def test_model_infer(data: st.DataObject, ch: grpc.Channel, server: Server, catalog: Catalog, tally: Tally) -> None:
    """1-4 ModelInferRequests at once (so they may share a batch): each gets an allowed status with a plain
    message; the correct ones get OK and the model's results."""
    requests = data.draw(st.lists(infer_requests(catalog), min_size=1, max_size=4), label="requests")
    tally.cases["model_infer"] += 1
    problems = infer_round(ch, requests, tally)
    _alive(server)
    assert not problems, "\n".join(problems)


@settings(FUZZ, max_examples=EXAMPLES["stream"])
@given(data=st.data())
def test_model_stream_infer(
    data: st.DataObject, ch: grpc.Channel, server: Server, catalog: Catalog, tally: Tally
) -> None:
    """A stream of 1-6 messages (requests from correct to wild, and corrupted bytes): one answer each."""
    messages = st.one_of(infer_requests(catalog), infer_requests(catalog), raw_messages(STREAM, catalog))
    items: list[FuzzRequest | bytes] = data.draw(st.lists(messages, min_size=1, max_size=6), label="messages")
    tally.cases["model_stream_infer"] += 1
    problems = stream_round(ch, items, tally)
    _alive(server)
    assert not problems, (
        "\n".join(problems) + "\n" + "\n".join(describe(i.message) for i in items if isinstance(i, FuzzRequest))
    )


@settings(FUZZ, max_examples=EXAMPLES["raw"])
@pytest.mark.parametrize("path", [*UNARY_METHODS, HEALTH_CHECK], ids=short)
@given(data=st.data())
def test_raw_bytes(
    path: str, data: st.DataObject, ch: grpc.Channel, server: Server, catalog: Catalog, tally: Tally
) -> None:
    """Random and corrupted bytes on every unary RPC and on the health check."""
    payload = data.draw(raw_messages(path, catalog), label="payload")
    tally.cases[f"raw {short(path)}"] += 1
    problems = raw_round(ch, path, payload, tally)
    _alive(server)
    assert not problems, "\n".join(problems)


@settings(FUZZ, max_examples=EXAMPLES["raw_stream"])
@given(data=st.data())
def test_raw_bytes_stream(
    data: st.DataObject, ch: grpc.Channel, server: Server, catalog: Catalog, tally: Tally
) -> None:
    """Random and corrupted bytes on ModelStreamInfer: each message answered, the stream stays open."""
    payloads = data.draw(st.lists(raw_messages(STREAM, catalog), min_size=1, max_size=5), label="messages")
    tally.cases["raw ModelStreamInfer"] += 1
    problems = stream_round(ch, payloads, tally)
    _alive(server)
    assert not problems, "\n".join(problems)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 8), st.floats(), st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )


_CONFIG_KEYS = (
    "name", "platform", "backend", "max_batch_size", "input", "output", "instance_group", "dynamic_batching",
    "version_policy", "optimization", "parameters", "model_warmup", "sequence_batching", "default_model_filename",
    "maxBatchSize", "dynamicBatching",
)  # fmt: skip


def _config_overrides(catalog: Catalog) -> st.SearchStrategy[str]:
    """JSON text for a load request's ``config`` parameter: fields of ModelConfig with any JSON values, broken
    JSON and non-objects. Nested keys are short random text, so no override reaches a field that costs the
    server memory per unit (instance_group.count, dynamic_batching.priority_levels: see the report)."""
    tensor = st.fixed_dictionaries(
        {
            "name": st.sampled_from(("INPUT0", "INPUT1", "TEXT", "X")),
            "data_type": st.sampled_from(("TYPE_FP32", "TYPE_STRING", "TYPE_FOO", 7)),
        },
        optional={"dims": st.lists(st.integers(-2, 20), max_size=3)},
    )
    fields = st.dictionaries(
        st.sampled_from(_CONFIG_KEYS),
        st.one_of(
            _json_values(),
            st.lists(tensor, max_size=2),
            st.builds(lambda n: [{"count": n, "kind": "KIND_CPU"}], st.integers(-1, 2)),
            st.sampled_from(catalog.names or ("add_sub",)),
        ),
        max_size=4,
    )
    return st.one_of(
        fields.map(json.dumps),
        _json_values().map(json.dumps),
        st.text(max_size=30),
        st.builds(lambda n: '{"name": "' + "n" * n + '"}', st.integers(1000, 20_000)),
    )


@settings(FUZZ, max_examples=EXAMPLES["control"])
@given(data=st.data())
def test_model_control(
    data: st.DataObject, control_ch: grpc.Channel, control_server: Server, catalog: Catalog, tally: Tally
) -> None:
    """RepositoryModelLoad/Unload with fuzzed names and parameters (config overrides, file: keys), each followed
    by ModelReady and ModelInfer on that name: allowed statuses only, and the server stays up."""
    name = data.draw(model_names(catalog), label="model")
    load = pb.RepositoryModelLoadRequest(model_name=name)
    keys = st.lists(st.sampled_from(("config", "config", "file:1/model.onnx", "", "x")), max_size=2, unique=True)
    for key in data.draw(keys, label="parameters"):
        if key == "config":
            load.parameters[key].string_param = data.draw(_config_overrides(catalog), label="config")
        elif key.startswith("file:"):
            load.parameters[key].bytes_param = data.draw(st.binary(max_size=64), label="file")
        else:
            load.parameters[key].bool_param = True
    calls = [(LOAD, load.SerializeToString())]
    if data.draw(st.booleans(), label="unload"):
        calls.append((UNLOAD, pb.RepositoryModelUnloadRequest(model_name=name).SerializeToString()))
    calls.append((f"/{SERVICE}/ModelReady", pb.ModelReadyRequest(name=name).SerializeToString()))
    calls.append((INFER, pb.ModelInferRequest(model_name=name).SerializeToString()))
    tally.cases["model_control"] += 1
    for path, payload in calls:
        answer = call_unary(control_ch, path, payload, timeout=30.0)
        tally.add(f"{path} (explicit mode)", answer.code)
        _alive(control_server)
        problems = answer_problems(answer, payload)
        tally.problems += problems
        assert not problems, f"{short(path)}: {problems}\nload request:\n{describe(load)}"


# ---------------------------------------------------------------------------------------------------------------
# afterwards


def _internal_errors_metric(server: Server) -> float:
    text = server.exposition()
    found = re.search(r"^tensorgate_internal_errors(?:_total)?(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert found, "tensorgate_internal_errors is not exported"
    return float(found.group(1))


@pytest.mark.parametrize("which", ["server", "control_server"])
def test_still_serving_after_fuzzing(which: str, request: pytest.FixtureRequest, tally: Tally) -> None:
    """After all of the above (this test runs last in the module): alive, right answers, nothing internal."""
    server: Server = request.getfixturevalue(which)
    _alive(server)
    client = server.client
    if which == "control_server":  # the fuzzing may have unloaded it, or left an override in place
        client.load_model("add_sub")
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - 1)
    log = server.log
    for marker in ("event=internal_error", "raised by servicer method"):
        lines = [line for line in log.splitlines() if marker in line]
        assert not lines, f"{len(lines)} log lines with {marker!r}, the first: {lines[0]}"
    assert _internal_errors_metric(server) == 0
    tally.cases[f"after {which}"] += 1
