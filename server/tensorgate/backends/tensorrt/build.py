"""Building TensorRT engines: strongly typed, one optimization profile over the batch, timing cache,
workspace limit, progress logged; and the plan from the engine cache, else built and cached.

FP16 is already in the ONNX graph when it gets here (TensorRT 11 removed BuilderFlag.FP16; see
backends/fp16/DESIGN.md), so the network is created strongly typed and precision is not a builder flag.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tensorgate.backends.base import BackendLoadError, TensorInfo
from tensorgate.backends.tensorrt import libs
from tensorgate.backends.tensorrt.cache import CacheKey, EngineCache, Profile, Shapes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None
    builder_optimization_level: int = 3

    def as_key(self) -> dict[str, str | int | float | bool]:
        return {"workspace_bytes": self.workspace_bytes, "optimization_level": self.builder_optimization_level}


class _Progress:
    """Logs the builder's phases (TensorRT calls it from its own threads)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started: dict[str, float] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.started[phase_name] = time.monotonic()
        if parent_phase is None:
            log.info("event=engine_build_phase model=%s phase=%r steps=%d", self.model, phase_name, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        began = self.started.pop(phase_name, None)
        if began is not None and time.monotonic() - began > 5:
            log.info(
                "event=engine_build_phase_done model=%s phase=%r seconds=%.1f",
                self.model,
                phase_name,
                time.monotonic() - began,
            )


def build_plan(model: str, onnx_bytes: bytes, shapes: Shapes, options: BuildOptions) -> bytes:
    """Parse the ONNX graph and build a serialized engine with one optimization profile."""
    trt = libs.trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendLoadError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.builder_optimization_level
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    monitor_type = getattr(trt, "IProgressMonitor", None)
    if monitor_type is not None:
        progress = _Progress(model)
        monitor = type(
            "Monitor",
            (monitor_type,),
            {
                "__init__": lambda self: monitor_type.__init__(self),
                "phase_start": lambda self, n, p, s: progress.phase_start(n, p, s),
                "step_complete": lambda self, n, s: progress.step_complete(n, s),
                "phase_finish": lambda self, n: progress.phase_finish(n),
            },
        )()
        config.progress_monitor = monitor
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendLoadError("TensorRT failed to build the engine (see its log above)")
    if options.timing_cache is not None:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("event=engine_built model=%s seconds=%.1f bytes=%d", model, time.monotonic() - started, serialized.nbytes)
    return bytes(serialized)


def cache_key(onnx_bytes: bytes, precision: str, shapes: Shapes, options: BuildOptions, device: int) -> CacheKey:
    trt = libs.trt()
    cudart = libs.cudart()
    props = libs.check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return CacheKey(
        model_sha256=CacheKey.hash_model(onnx_bytes),
        tensorrt_version=str(trt.__version__),
        gpu_name=name,
        compute_capability=f"{props.major}.{props.minor}",
        precision=precision,
        profiles=(Profile(dict(shapes)),),
        builder_options=options.as_key(),
    )


def load_or_build(
    model: str,
    onnx_bytes: bytes,
    precision: str,
    shapes: Shapes,
    options: BuildOptions,
    cache: EngineCache,
    device: int,
) -> bytes:
    """The plan from the cache, else built now and cached (a corrupt cached plan is rebuilt)."""
    key = cache_key(onnx_bytes, precision, shapes, options, device)
    plan = cache.load(key)
    if plan is not None:
        log.info("event=engine_cache_hit model=%s digest=%s", model, key.digest)
        return plan
    log.info("event=engine_build_started model=%s digest=%s precision=%s", model, key.digest, precision)
    plan = build_plan(model, onnx_bytes, shapes, options)
    cache.store(key, plan)
    return plan


def profile_shapes(
    inputs: Sequence[TensorInfo], max_batch: int, opt_batch: int, dims: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max of each input: batch 1 / the preferred batch / max_batch_size; other dynamic dims
    from ``dims`` (the config's fixed values), else 1 / their max."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
    for info in inputs:
        fixed = list((dims or {}).get(info.name, []))
        rest = [
            d if d is not None else (fixed[i] if i < len(fixed) and fixed[i] > 0 else None)
            for i, d in enumerate(info.shape[1:])
        ]
        if any(d is None for d in rest):
            raise BackendLoadError(f"input {info.name!r} has dynamic dims {info.shape}: give them in config.pbtxt")
        tail = tuple(int(d) for d in rest if d is not None)
        shapes[info.name] = ((1, *tail), (max(1, opt_batch), *tail), (max_batch, *tail))
    return shapes
