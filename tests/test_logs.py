"""The server's one-line logfmt logs: the time is one token (RFC 3339, UTC), every message is key=value
pairs, and every value reads back exactly with a logfmt parser, whatever it holds (a model directory named
'my model', a reason that is a sentence, a file name that is not UTF-8)."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import Server
from models import identity
from tensorgate.logs import QuoteValues, logfmt_value
from tensorgate.settings import host_port

SERVER_SOURCE = Path(__file__).resolve().parent.parent / "server" / "tensorgate"
# logfmt as Go's kr/logfmt, Loki's `| logfmt` and Vector's parse_logfmt read it: key=value pairs split by spaces,
# a value bare (no space, '=' or '"') or double-quoted with backslash escapes (written with JSON's here).
PAIR = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s="]*)(?: |$)')


def parse(line: str) -> dict[str, str]:
    """A logfmt line's pairs; fails unless the whole line is pairs."""
    pairs: dict[str, str] = {}
    at = 0
    while at < len(line):
        m = PAIR.match(line, at)
        assert m is not None, f"not logfmt from column {at}: {line[at : at + 80]!r} in {line!r}"
        key, value = m[1], m[2]
        pairs[key] = json.loads(value) if value.startswith('"') else value
        at = m.end()
    return pairs


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _log_calls() -> list[tuple[str, int, ast.expr | None]]:
    calls = []
    for path in sorted(SERVER_SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
            ):
                calls.append(
                    (
                        f"{path.relative_to(SERVER_SOURCE)}:{node.lineno}",
                        node.lineno,
                        node.args[0] if node.args else None,
                    )
                )
    return calls


def test_every_log_call_of_the_server_writes_key_value_pairs() -> None:
    calls = _log_calls()
    assert len(calls) > 50, "the scan found too few log calls: has the logger's name changed?"
    bad = []
    for where, _, message in calls:
        if not (isinstance(message, ast.Constant) and isinstance(message.value, str)):
            bad.append(f"{where}: the message is not a literal")
            continue
        tokens = message.value.split(" ")
        if tokens[0] != tokens[0].lstrip() or not tokens[0].startswith("event="):
            bad.append(f"{where}: starts with {tokens[0]!r}, not event=")
        bad += [f"{where}: {t!r} is not key=value" for t in tokens if not re.fullmatch(r"[a-z_][\w.]*=\S+", t, re.I)]
    assert not bad, "\n".join(bad)


ODD_VALUES = [
    "plain",
    "my model",
    'a"b=c',
    "",
    "tab\tname",
    os.fsdecode(b"latin\xe9"),  # a file name that is not UTF-8 (a lone surrogate in Python)
    "mod\u00e8le",
    "back\\slash",
    "line\nbreak",
    "model.onnx: shape [1,16] of FP32 needs 64 bytes, it has 12",
]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_a_value_reads_back_exactly(value: str) -> None:
    written = logfmt_value(value)
    assert written.isprintable() and written.encode("utf-8")  # one printable line, always encodable
    assert parse(f"key={written}") == {"key": value}
    assert (written == value) == bool(re.fullmatch(r'[^\s="\\]+', value) and value.isprintable())


def _formatted(message: str, *args: object) -> str:
    record = logging.LogRecord("tensorgate.test", logging.INFO, __file__, 1, message, args, None)
    assert QuoteValues().filter(record)
    return logging.Formatter("level=%(levelname)s %(message)s").format(record)


def test_arguments_of_every_kind_are_written_as_values() -> None:
    reason = ValueError("the file 'x y' is not a model")
    line = _formatted(
        "event=e path=%s error=%s reason=%r count=%d rows=%d seconds=%.2f ratio=%s none=%s",
        Path("/models/my model"),
        reason,
        "a sentence, with 'quotes'",
        3,
        np.int64(7),
        1.5,
        0.25,
        None,
    )
    assert parse(line) == {
        "level": "INFO",
        "event": "e",
        "path": "/models/my model",
        "error": "the file 'x y' is not a model",
        "reason": "a sentence, with 'quotes'",
        "count": "3",
        "rows": "7",
        "seconds": "1.50",
        "ratio": "0.25",
        "none": "None",
    }


def test_another_librarys_record_is_one_msg_value() -> None:
    record = logging.LogRecord("grpc._cython.cygrpc", logging.INFO, __file__, 1, "Task queue depth is %d", (3,), None)
    assert QuoteValues().filter(record)
    assert parse(logging.Formatter("logger=%(name)s %(message)s").format(record)) == {
        "logger": "grpc._cython.cygrpc",
        "msg": "Task queue depth is 3",
    }


def test_a_record_is_rewritten_once_whatever_handlers_it_passes() -> None:
    record = logging.LogRecord("tensorgate.x", logging.INFO, __file__, 1, "event=e model=%s", ("my model",), None)
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task was destroyed", (), None)
    for _ in range(2):
        assert QuoteValues().filter(record) and QuoteValues().filter(other)
    assert parse(record.getMessage()) == {"event": "e", "model": "my model"}
    assert parse(other.getMessage()) == {"msg": "Task was destroyed"}


def test_numbers_of_any_kind_keep_their_conversions() -> None:
    line = _formatted("event=e a=%d b=%.1f c=%d d=%s", np.bool_(True), np.array(3.0), np.array(3), np.float32(0.5))
    assert parse(line) == {"level": "INFO", "event": "e", "a": "1", "b": "3.0", "c": "3", "d": "0.5"}


def test_a_value_that_cannot_be_written_never_makes_the_log_call_raise(capsys: pytest.CaptureFixture[str]) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    log = logging.getLogger("tensorgate.test_unprintable")
    handler = logging.StreamHandler()
    handler.addFilter(QuoteValues())
    log.addHandler(handler)
    log.propagate = False  # this handler alone: pytest's own capture handler re-raises formatting errors
    try:
        log.error("event=e value=%s", Unprintable())  # logging reports it, as for any formatting error
        log.error("event=after value=%s", "fine")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "event=after value=fine" in err


@pytest.mark.parametrize(
    ("host", "port", "written"), [("0.0.0.0", 8001, "0.0.0.0:8001"), ("::1", 8000, "[::1]:8000"), ("[::]", 1, "[::]:1")]
)
def test_an_address_is_one_value(host: str, port: int, written: str) -> None:
    assert host_port(host, port) == written
    assert parse(_formatted("event=e address=%s", host_port(host, port)))["address"] == written


def test_odd_model_names_are_quoted_and_the_time_is_one_token(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    repo = tmp_path / "repo"
    names = ("my model", 'a"b=c', "plain")
    for name in names:
        identity(repo / name / "1" / "model.onnx")
    skipped = ("tab\tname", os.fsdecode(b"latin\xe9"), ".hidden dir")
    for name in skipped:
        identity(repo / name / "1" / "model.onnx")
    server = start_server(repo)
    assert server.client.is_model_ready("my model")
    assert server.stop() == 0
    lines = [line for line in server.log.splitlines() if line.startswith("ts=")]
    stamp = r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level="
    assert lines and all(re.match(stamp, line) for line in lines), lines[0]
    records = [parse(line) for line in lines]  # every line of the server's own, all pairs
    ready = {r["model"] for r in records if r.get("event") == "model_ready"}
    assert ready == set(names), records
    passed_over = {r["name"]: r["reason"] for r in records if r.get("event") == "model_dir_skipped"}
    assert set(passed_over) == set(skipped), records
    assert passed_over["tab\tname"] == "the name has a control character"
