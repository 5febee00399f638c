"""Server settings: every option has one name, one default and one place (this file).

Each option is a command-line flag of ``tensorgate serve`` and a ``TENSORGATE_*`` environment
variable of the same name (``--grpc-port`` is ``TENSORGATE_GRPC_PORT``); the flag wins over the
variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorgate.frontend.grpc_experiments import DEFAULT as GRPC_EXPERIMENTS_DEFAULT


class ControlMode(enum.Enum):
    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


# Triton's protocol groups, as its --grpc-restricted-protocol names them.
PROTOCOLS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)


@dataclass(frozen=True)
class Restriction:
    """RPC groups served only to calls that carry the header ``key`` with the value ``value``."""

    protocols: frozenset[str]
    key: str
    value: str

    def __str__(self) -> str:
        return f"{','.join(sorted(self.protocols))}:{self.key}=<hidden>"


def _restriction(text: str) -> Restriction | None:
    """``PROTOCOL[,PROTOCOL...]:KEY=VALUE`` (Triton's format); empty: nothing restricted."""
    if not text.strip():
        return None
    groups, sep, header = text.partition(":")
    key, eq, value = header.partition("=")
    protocols = frozenset(g.strip() for g in groups.split(",") if g.strip())
    # The messages never hold the value (a secret): argparse writes an ArgumentTypeError's message alone.
    if not sep or not eq or not key.strip() or not value or not protocols:
        raise argparse.ArgumentTypeError("expected PROTOCOL[,PROTOCOL...]:KEY=VALUE (the value is not shown)")
    unknown = sorted(protocols - set(PROTOCOLS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown protocol group(s) {unknown}; known: {', '.join(PROTOCOLS)}")
    return Restriction(protocols, key.strip().lower(), value)


def _address(text: str) -> str:
    """A host to bind: not empty (each server would read "" its own way, the metrics server not at all)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty address: give 0.0.0.0 (every IPv4 interface), :: or a host")
    return text


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class Settings:
    """Typed settings of one server process. Field metadata drives the CLI and the environment."""

    model_repository: Path = field(
        default=Path("./model_repo"),
        metadata={"help": "directory of models: <repo>/<model>/[config.pbtxt] and <version>/model.onnx", "type": Path},
    )
    host: str = field(
        default="0.0.0.0",
        metadata={"help": "address the gRPC, HTTP/REST and metrics servers bind", "type": _address},
    )
    grpc_address: str = field(default="", metadata={"help": "address the gRPC server binds (empty: --host)"})
    http_address: str = field(default="", metadata={"help": "address the HTTP/REST server binds (empty: --host)"})
    metrics_address: str = field(default="", metadata={"help": "address the metrics server binds (empty: --host)"})
    grpc_tls_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM certificate chain: serve gRPC over TLS (with --grpc-tls-key)", "type": Path},
    )
    grpc_tls_key: Path | None = field(
        default=None, metadata={"help": "PEM private key of --grpc-tls-cert", "type": Path}
    )
    grpc_tls_client_ca: Path | None = field(
        default=None,
        metadata={
            "help": "PEM CA certificates: mutual TLS, every client must present a certificate they signed",
            "type": Path,
        },
    )
    grpc_keepalive_time_ms: int = field(
        default=7_200_000, metadata={"min": 1, "help": "idle time before the server pings a client (gRPC's default)"}
    )
    grpc_keepalive_timeout_ms: int = field(
        default=20_000,
        metadata={"min": 1, "help": "how long a keepalive ping may go unanswered before the connection closes"},
    )
    grpc_max_connection_age_ms: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "close connections older than this (clients reconnect, so load spreads over new replicas); "
            "0: never",
        },
    )
    grpc_port: int = field(
        default=8001,
        metadata={"min": 0, "max": 65535, "help": "port of the KServe V2 gRPC service (0 picks a free one)"},
    )
    http_port: int = field(
        default=8000,
        metadata={
            "min": -1,
            "max": 65535,
            "help": "port of the KServe V2 HTTP/REST API (0 picks a free one, -1 disables it)",
        },
    )
    metrics_port: int = field(
        default=8002,
        metadata={"min": -1, "max": 65535, "help": "port of the Prometheus /metrics endpoint (-1 disables it)"},
    )
    model_control_mode: ControlMode = field(
        default=ControlMode.NONE,
        metadata={
            "help": "none: load every model at start; poll: also pick up added, changed and removed models "
            "while serving; explicit: load and unload only on request (RepositoryModelLoad/Unload, --load-model)",
            "type": ControlMode,
        },
    )
    repository_poll_secs: float = field(
        default=15.0, metadata={"min": 0.1, "help": "seconds between repository scans in poll mode"}
    )
    load_model: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "in explicit mode, models to load at start (comma-separated or repeated; '*' loads all)",
            "type": _names,
        },
    )
    default_max_batch_size: int = field(
        default=4,
        metadata={
            "min": 0,
            "help": "max_batch_size given to a model without config.pbtxt whose first dimension is dynamic "
            "(Triton's default-max-batch-size)",
        },
    )
    disable_auto_complete_config: bool = field(
        default=False,
        metadata={
            "help": "take each config.pbtxt as written (Triton's --disable-auto-complete-config): no inputs, "
            "outputs, max_batch_size or dynamic batching filled in from the ONNX file, so a model must have a "
            "config.pbtxt declaring its inputs and outputs",
            "type": _bool,
        },
    )
    grpc_max_message_bytes: int = field(
        default=64 * 2**20,
        metadata={
            "min": 1,
            "max": 2**31 - 1,  # gRPC's limit (a C int)
            "help": "largest gRPC message accepted or sent, in bytes, after decompression (a request "
            "holds its tensors: raise it for bigger ones; each message in flight can cost the server "
            "this much memory)",
        },
    )
    grpc_max_pending_calls: int = field(
        default=1000,
        metadata={
            "min": 0,
            "help": "calls gRPC may hold for the server before the server takes them; above this gRPC "
            "cancels new calls at random (the client sees CANCELLED, with no message), above 3 x this "
            "every new call. This is the server's admission limit when it cannot keep up: those calls "
            "wait before any model's queue, where max_queue_size cannot see them. 0: gRPC's default "
            "(1000)",
        },
    )
    grpc_stream_max_outstanding: int = field(
        default=1024,
        metadata={
            "min": 1,
            "help": "messages of one ModelStreamInfer stream that may be unanswered at once (running, queued, or "
            "answered but not yet taken by gRPC to send); at this many the server reads no more of the stream "
            "until an answer goes (HTTP/2 flow control then holds the client's writes). gRPC sends up to the "
            "client's flow-control window beyond it, so a stream holds about this many answers plus that window",
        },
    )
    max_shared_memory_regions: int = field(
        default=256,
        metadata={
            "min": 0,
            "help": "system shared memory regions clients may register at once (Triton's extension); each holds "
            "its object's file descriptor until unregistered, so the bound keeps clients from using up the "
            "process's descriptors; beyond it a register answers RESOURCE_EXHAUSTED. 0: the extension is off "
            "(every register is refused)",
        },
    )
    grpc_so_reuseport: bool = field(
        default=False,
        metadata={
            "help": "let other processes bind the same gRPC port (off: a leftover server cannot steal traffic)",
            "type": _bool,
        },
    )
    grpc_experiments: str = field(
        default=GRPC_EXPERIMENTS_DEFAULT,
        metadata={
            "help": "gRPC core experiments for the server process (gRPC's GRPC_EXPERIMENTS: comma-separated names, "
            "'-name' turns one off); a GRPC_EXPERIMENTS already in the environment wins. The default serves "
            "connections with gRPC's iomgr listener, polled by the thread that takes the server's calls, instead "
            "of EventEngine's I/O threads, which hand over every read and write: 25-40 µs less server CPU a "
            "request under load (bench/RESULTS.md). Empty: gRPC's own defaults. On the command line write "
            "--grpc-experiments=-name (with '=')"
        },
    )
    grpc_restricted_protocol: Restriction | None = field(
        default=None,
        metadata={
            "help": "serve these RPC groups only to calls with this header, as Triton's flag of the same name: "
            "PROTOCOL[,PROTOCOL...]:KEY=VALUE, e.g. model-repository:admin-key=SECRET; groups: "
            + ", ".join(PROTOCOLS)
            + ". The standard grpc.health.v1 service stays open for probes; empty: nothing restricted",
            "type": _restriction,
            "secret": True,
        },
    )
    strict_readiness: bool = field(
        default=False,
        metadata={
            "help": "ServerReady only while every model asked to load is READY (Triton's default is true; "
            "tensorgate's is false so that one broken model does not take a serving pod out of rotation)",
            "type": _bool,
        },
    )
    max_queue_wait_ms: int = field(
        default=1000,
        metadata={
            "min": 0,
            "help": "admission bound: a request that would wait longer than this in its model's queue (the requests "
            "queued ahead times the recent cost of one) is refused at once with RESOURCE_EXHAUSTED, counted as "
            "REJECTED; admitted requests then wait at most about this long. A model's parameter max_queue_wait_ms "
            "overrides it; 0: no bound",
        },
    )
    execution_timeout_ms: int = field(
        default=60_000,
        metadata={
            "min": 0,
            "help": "a batch still running after this long is stopped: its requests fail with UNAVAILABLE and the "
            "instance serves again. A model's parameter execution_timeout_ms overrides it; 0: none",
        },
    )
    inline_execution_us: int = field(
        default=250,
        metadata={
            "min": 0,
            "help": "run a batch on the event loop instead of the instance's worker thread when the "
            "instance's batches of its size (input bytes, by powers of two) typically take less than this many "
            "microseconds there (below the cost of the hop to the thread and back, as measured in "
            "bench/RESULTS.md); 0 always uses the worker thread",
        },
    )
    metrics_interval_ms: int = field(
        default=2000,
        metadata={"min": 1, "help": "how often the GPU and CPU gauges are read (Triton's --metrics-interval-ms)"},
    )
    allow_gpu_metrics: bool = field(
        default=True,
        metadata={"help": "export the nv_gpu_* gauges, read with NVML (Triton's --allow-gpu-metrics)", "type": _bool},
    )
    allow_cpu_metrics: bool = field(
        default=True,
        metadata={"help": "export the nv_cpu_* gauges, read from /proc (Triton's --allow-cpu-metrics)", "type": _bool},
    )
    engine_cache_dir: Path = field(
        default=Path.home() / ".cache" / "tensorgate",
        metadata={"help": "where built engines and accepted FP16 models are kept between runs", "type": Path},
    )
    tensorrt_workspace_bytes: int = field(
        default=1 << 30,
        metadata={
            "min": 1,
            "help": "TensorRT: the most GPU memory an engine build may take for its tactics (the builder's workspace "
            "pool), which also bounds each execution context's scratch memory; builds run one at a time per GPU, "
            "on the GPU that serves, so this is what a build can take from serving. Part of the engine cache key",
        },
    )
    tensorrt_builder_optimization_level: int = field(
        default=3,
        metadata={
            "help": "TensorRT builder optimization level, 0-5 (higher: longer builds, maybe faster engines); part of "
            "the engine cache key",
            "choices": [0, 1, 2, 3, 4, 5],
        },
    )
    ort_cuda_gpu_mem_limit_bytes: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "ONNX Runtime on CUDA: the most GPU memory each instance's arena may hold (gpu_mem_limit); a "
            "model's parameter gpu_mem_limit overrides it. 0: no limit (ONNX Runtime's default)",
        },
    )
    ort_cuda_arena_extend_strategy: str = field(
        default="kSameAsRequested",
        metadata={
            "help": "ONNX Runtime on CUDA: how each instance's arena grows (arena_extend_strategy): by what is "
            "asked (kSameAsRequested) or to the next power of two (kNextPowerOfTwo, ONNX Runtime's default); a "
            "model's parameter arena_extend_strategy (0 or 1, as Triton's) overrides it",
            "choices": ["kNextPowerOfTwo", "kSameAsRequested"],
        },
    )
    ort_cuda_cudnn_conv_algo_search: str = field(
        default="HEURISTIC",
        metadata={
            "help": "ONNX Runtime on CUDA: how cuDNN picks convolution algorithms (cudnn_conv_algo_search). "
            "EXHAUSTIVE (ONNX Runtime's and Triton's default) benchmarks every algorithm again for each new input "
            "shape, i.e. each batch size dynamic batching forms; HEURISTIC picks at once; DEFAULT uses one fixed "
            "algorithm. A model's parameter cudnn_conv_algo_search (0, 1, 2, as Triton's) overrides it",
            "choices": ["EXHAUSTIVE", "HEURISTIC", "DEFAULT"],
        },
    )
    fp16_rtol: float = field(
        default=1e-2,
        metadata={
            "min": 0,
            "help": "accuracy gate: largest error of an FP16 model's output, relative to FP32's, that is "
            "accepted; above it the model keeps FP32",
        },
    )
    exit_timeout_secs: float = field(
        default=30.0,
        metadata={
            "min": 0.1,
            "help": "on SIGTERM/SIGINT, the process exits within this many seconds (drain delay included): "
            "requests in flight get until then to finish, work still running after it is abandoned (exit 1)",
        },
    )
    drain_delay_secs: float = field(
        default=0.0,
        metadata={
            "min": 0,
            "help": "on SIGTERM/SIGINT, readiness turns NOT_SERVING at once but requests are still taken for this "
            "many seconds, so that those already on their way (load balancers, Kubernetes endpoints not yet "
            "updated) are answered; must be shorter than --exit-timeout-secs",
        },
    )
    log_level: str = field(
        default="INFO",
        metadata={"help": "log level", "choices": ["DEBUG", "INFO", "WARNING", "ERROR"], "type": str.upper},
    )


def _parser_type(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    explicit = f.metadata.get("type")
    if explicit is not None:
        return explicit  # type: ignore[no-any-return]
    convert: Callable[[str], Any] = {"int": int, "float": float, "str": str}[str(f.type)]
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if low is None and high is None:
        return convert

    def bounded(text: str) -> Any:
        """The value, within the setting's bounds (a poll interval of 0 would spin a core, a stream
        bound of 0 would never read a message...): refused at start with the reason, not obeyed."""
        value = convert(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            limits = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"{text!r}: must be {limits}")
        return value

    return bounded


def _flag(f: dataclasses.Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def host_port(host: str, port: int | str) -> str:
    """``host:port`` as gRPC parses it and as logs show it: an IPv6 literal in brackets (``[::1]:8001``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def env_name(name: str) -> str:
    return "TENSORGATE_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Add one flag per setting; defaults come from the environment where it sets them."""
    environ = os.environ if environ is None else environ
    for f in dataclasses.fields(Settings):
        convert = _parser_type(f)
        default = f.default
        env = env_name(f.name)
        if env in environ:
            try:
                default = convert(environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                shown = "<not shown: it holds a secret>" if f.metadata.get("secret") else repr(environ[env])
                parser.error(f"{env}={shown}: {exc}")
        shown = default.value if isinstance(default, enum.Enum) else default
        if f.name == "load_model":
            parser.add_argument(
                _flag(f),
                action="append",
                type=convert,
                default=None,
                help=f"{f.metadata['help']} [env {env}]",
            )
            parser.set_defaults(_load_model_env=list(default))  # type: ignore[arg-type]
            continue
        kwargs: dict[str, Any] = {"type": convert, "default": default}
        if isinstance(default, enum.Enum):
            kwargs["choices"] = list(type(default))
            kwargs["metavar"] = "{" + ",".join(m.value for m in type(default)) + "}"
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if convert is _bool:  # `--flag` alone is true, as Triton's --disable-auto-complete-config
            kwargs.update(nargs="?", const=True)
        parser.add_argument(_flag(f), help=f"{f.metadata['help']} (default {shown}) [env {env}]", **kwargs)
    # Triton's older spelling of the same switch (its strict model config is auto-complete turned off)
    parser.add_argument(
        "--strict-model-config",
        dest="disable_auto_complete_config",
        type=_bool,
        nargs="?",
        const=True,
        default=argparse.SUPPRESS,
        help="Triton's older name for --disable-auto-complete-config",
    )


def from_namespace(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "load_model":
            given = args.load_model
            names = [n for group in given for n in group] if given else args._load_model_env
            values[f.name] = tuple(names)
        else:
            values[f.name] = getattr(args, f.name)
    return Settings(**values)
