"""gRPC core's experiments for this process (its ``GRPC_EXPERIMENTS`` configuration variable).

gRPC core reads the variable once, when it first starts, so it is set before the server imports gRPC
(``tensorgate serve`` does it first thing). tensorgate's default, ``-event_engine_listener``, serves
connections with gRPC's iomgr listener instead of its EventEngine one: with EventEngine, each read and
write runs on gRPC's own I/O threads and is handed to the thread that drains grpc.aio's completion queue;
with iomgr, that thread polls the sockets itself. Same calls, same answers, about 2.5 context switches a
request instead of 6-14, and 25-40 µs less server CPU a request under load: 6-8 % of tensorgate's, 12 % of
a bare grpc.aio echo's (bench/RESULTS.md, 2026-12-07).

A ``GRPC_EXPERIMENTS`` already in the environment is gRPC configured by hand, and wins. gRPC logs
"Unknown experiment" for a name it does not know (a gRPC release that dropped it) and goes on without it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

VARIABLE = "GRPC_EXPERIMENTS"
DEFAULT = "-event_engine_listener"


def apply(wanted: str, environ: MutableMapping[str, str] | None = None) -> tuple[str, str]:
    """Set ``GRPC_EXPERIMENTS`` to ``wanted`` unless the environment already sets it; returns what is in
    effect and where it comes from: ("...", "environment"), ("...", "tensorgate") or ("", "grpc-defaults")."""
    environ = os.environ if environ is None else environ
    if VARIABLE in environ:
        return environ[VARIABLE], "environment"
    wanted = wanted.strip()
    if not wanted:
        return "", "grpc-defaults"
    environ[VARIABLE] = wanted
    return wanted, "tensorgate"
