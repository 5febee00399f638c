"""The server's one-line key=value logs: the time is one token (RFC 3339, UTC), and a value with a
space, '=' or a quote (a model directory may be named so) is written quoted, so the line still
splits into its keys and values."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from conftest import Server
from models import identity

VALUE = r'("(?:[^"\\]|\\.)*"|[^\s"]*)'


def test_odd_model_names_are_quoted_and_the_time_is_one_token(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    repo = tmp_path / "repo"
    names = ("my model", 'a"b=c', "plain")
    for name in names:
        identity(repo / name / "1" / "model.onnx")
    server = start_server(repo)
    assert server.client.is_model_ready("my model")
    assert server.stop() == 0
    lines = [line for line in server.log.splitlines() if line.startswith("ts=")]
    stamp = r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level="
    assert lines and all(re.match(stamp, line) for line in lines), lines[0]
    ready = [line for line in lines if "event=model_ready " in line]
    models = {m[1] for line in ready if (m := re.search(rf" model={VALUE} version=", line))}
    assert models == {json.dumps("my model"), json.dumps('a"b=c'), "plain"}, ready
    assert {json.loads(m) if m.startswith('"') else m for m in models} == set(names)
