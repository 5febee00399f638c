"""gRPC core's experiments: what ``tensorgate serve`` sets before gRPC starts, and that gRPC knows them.

The speed it buys is measured in bench/ (bench/account.py's identity variants), not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import Server
from tensorgate.frontend import grpc_experiments


def test_sets_the_variable_when_the_environment_does_not() -> None:
    environ: dict[str, str] = {}
    assert grpc_experiments.apply("-event_engine_listener", environ) == ("-event_engine_listener", "tensorgate")
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_listener"}


def test_a_variable_set_by_hand_wins() -> None:
    environ = {"GRPC_EXPERIMENTS": "-event_engine_callback_cq"}
    assert grpc_experiments.apply("-event_engine_listener", environ) == ("-event_engine_callback_cq", "environment")
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_callback_cq"}


def test_empty_leaves_grpcs_defaults() -> None:
    environ: dict[str, str] = {}
    assert grpc_experiments.apply("  ", environ) == ("", "grpc-defaults")
    assert environ == {}


CALLS = 200


def _io_thread_wakeups(server: Server) -> int:
    """Context switches of gRPC's EventEngine I/O threads (named "event_engine") while one connection makes
    CALLS identity calls, each answered right. With EventEngine's listener they read and write every call's
    bytes (about 4 switches a call, ~790 in all, measured); with iomgr's, the thread that takes the calls polls
    the socket itself and they only wake for gRPC's timers, ~17 times a second whatever the load (9-22 in all
    here, where the calls take ~0.3 s). A count, not a timing: the bounds below leave 10 s for the calls."""
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    request = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    request.set_data_from_numpy(data)

    def switches() -> int:
        total = 0
        for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
            try:
                if (task / "comm").read_text().strip() != "event_engine":
                    continue
                status = (task / "status").read_text()
            except FileNotFoundError:  # the thread ended
                continue
            for line in status.splitlines():
                name, _, value = line.partition(":")
                if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                    total += int(value)
        return total

    server.client.infer("identity", [request])  # the connection is up
    before = switches()
    for _ in range(CALLS):
        result = server.client.infer("identity", [request])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    return switches() - before


def test_the_default_reaches_grpc_which_knows_it(start_server, repo: Path) -> None:  # type: ignore[no-untyped-def]
    if "GRPC_EXPERIMENTS" in os.environ:
        pytest.skip("GRPC_EXPERIMENTS is set in the tests' own environment, which the server inherits and keeps")
    server = start_server(repo)
    wakeups = _io_thread_wakeups(server)
    assert f"event=grpc_experiments value={grpc_experiments.DEFAULT} source=tensorgate" in server.log
    # gRPC core names every experiment it does not know (a gRPC release that dropped this one) and goes on.
    assert "Unknown experiment" not in server.log, server.log
    assert wakeups < CALLS, (
        f"gRPC's I/O threads woke {wakeups} times for {CALLS} calls: the iomgr listener is not in use "
        "(has this gRPC release changed the experiment or its threads?)"
    )


def test_empty_leaves_grpc_alone_and_the_environment_wins(start_server, repo: Path) -> None:  # type: ignore[no-untyped-def]
    plain = start_server(repo, "--grpc-experiments=")
    assert _io_thread_wakeups(plain) >= 2 * CALLS  # gRPC's defaults: its I/O threads carry every call
    assert "event=grpc_experiments value=- source=grpc-defaults" in plain.log

    by_hand = start_server(repo, env={"GRPC_EXPERIMENTS": "-event_engine_callback_cq"})
    assert _io_thread_wakeups(by_hand) >= 2 * CALLS  # not tensorgate's default: EventEngine's listener is on
    assert "event=grpc_experiments value=-event_engine_callback_cq source=environment" in by_hand.log
    assert "Unknown experiment" not in by_hand.log, by_hand.log
