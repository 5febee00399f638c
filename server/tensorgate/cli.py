"""The ``tensorgate`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from collections.abc import Sequence

from tensorgate import __version__, logs, settings
from tensorgate.frontend import grpc_experiments

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description="ONNX inference server (KServe V2 / Triton gRPC)")
    parser.add_argument("--version", action="version", version=f"tensorgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the models of a model repository over gRPC",
        description="Serve the ONNX models of a Triton-style model repository over the KServe V2 gRPC protocol. "
        "Every flag can also be set with the TENSORGATE_* environment variable shown.",
    )
    settings.add_arguments(serve)
    build = commands.add_parser(
        "build",
        help="build and cache every model's engines ahead of time (for an init container), then exit",
        description="Load the model repository as 'tensorgate serve' would, with the same flags and TENSORGATE_* "
        "environment, run every engine build the server would start in the background (FP16 conversion, accuracy "
        "gate, engine) to its end, keep the results in --engine-cache-dir and print one line per model version. "
        "Exit status 1 if a model failed to load or a build failed.",
    )
    settings.add_arguments(build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = settings.from_namespace(args)
    logs.configure(options.log_level)
    if importlib.util.find_spec("onnxruntime") is None:
        print(
            "tensorgate: ONNX Runtime is not installed; install tensorgate[cpu] (or tensorgate[gpu] on an "
            "NVIDIA machine)",
            file=sys.stderr,
        )
        return 2
    if args.command == "serve":
        # Before gRPC is imported: gRPC core reads its experiments once, when it starts.
        experiments, source = grpc_experiments.apply(options.grpc_experiments)
        log.info("event=grpc_experiments value=%s source=%s", experiments or "-", source)
        from tensorgate.server import serve  # imports onnxruntime and grpc only when serving

        return asyncio.run(serve(options))
    if args.command == "build":
        from tensorgate.build import build

        return asyncio.run(build(options, sys.stdout))
    return 2


if __name__ == "__main__":
    sys.exit(main())
