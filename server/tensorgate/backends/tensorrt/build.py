"""Building TensorRT engines: strongly typed, one optimization profile over the batch, timing cache,
workspace limit, progress logged; and the plan from the engine cache, else built and cached.

FP16 is already in the ONNX graph when it gets here (TensorRT 11 removed BuilderFlag.FP16; see
backends/fp16/DESIGN.md), so the network is created strongly typed and precision is not a builder flag.

The ONNX file is parsed from its path (``OnnxParser.parse_from_file``), not from bytes, so weights
kept beside it as external data (every model over 2 GB) are found. Builds are serialised: one at a
time per GPU (``gpu_build_slot``), since each takes up to the workspace bound of the GPU that is
serving; a load that waited for another build looks in the cache again before building. The timing
cache is read and written under a lock, and written atomically (a temporary file renamed over it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorgate.backends.base import BackendLoadError, TensorInfo
from tensorgate.backends.tensorrt import libs
from tensorgate.backends.tensorrt.cache import CacheKey, EngineCache, Profile, Shapes, atomic_write, locked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    workspace_bytes: int = 1 << 30
    timing_cache: Path | None = None
    builder_optimization_level: int = 3

    def as_key(self) -> dict[str, str | int | float | bool]:
        return {"workspace_bytes": self.workspace_bytes, "optimization_level": self.builder_optimization_level}


@dataclass(frozen=True)
class DeviceFacts:
    """What of a GPU a plan is tied to (TensorRT plans run only on the GPU model they were built on)."""

    name: str
    compute_capability: str

    @property
    def slug(self) -> str:
        """A file-name-safe form, e.g. ``NVIDIA-H100-80GB-HBM3-sm90``."""
        name = "".join(c if c.isalnum() else "-" for c in self.name).strip("-")
        return f"{name}-sm{self.compute_capability.replace('.', '')}"


def device_facts(device: int) -> DeviceFacts:
    cudart = libs.cudart()
    props = libs.check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties", loading=True)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceFacts(name.rstrip("\x00"), f"{props.major}.{props.minor}")


class _Progress:
    """Logs the builder's phases (TensorRT calls it from its own threads)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started: dict[str, float] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.started[phase_name] = time.monotonic()
        if parent_phase is None:
            log.info("event=engine_build_phase model=%s phase=%s steps=%d", self.model, phase_name, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        began = self.started.pop(phase_name, None)
        if began is not None and time.monotonic() - began > 5:
            log.info(
                "event=engine_build_phase_done model=%s phase=%s seconds=%.1f",
                self.model,
                phase_name,
                time.monotonic() - began,
            )


# ---- the model file ----


def onnx_inputs(model_file: Path) -> list[TensorInfo]:
    """The graph inputs of an ONNX file (initializers listed as inputs left out); its weights are not
    read, so a model with external data costs only its graph."""
    import onnx  # the [gpu] extra has it (the FP16 conversion needs it too)

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise BackendLoadError(f"cannot read {model_file.name} as ONNX: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        inputs.append(TensorInfo(value.name, int(tensor.elem_type), dims))
    return inputs


def external_data_files(model_file: Path) -> list[Path]:
    """The files an ONNX model keeps its weights in besides itself (external data), in order."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    found: dict[Path, None] = {}
    tensors = list(model.graph.initializer) + [
        a.t for node in model.graph.node for a in node.attribute if a.HasField("t")
    ]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location:
                found[model_file.parent / location] = None
    return list(found)


_DIGESTS: dict[tuple[tuple[str, int, int], ...], str] = {}
_DIGESTS_LOCK = threading.Lock()


def model_digest(model_file: Path) -> str:
    """SHA-256 of the model file and of each external data file it names (the weights change the
    engine as much as the graph). Kept per (path, size, mtime) of every one of those files, so each
    instance of a version does not hash gigabytes again."""
    files = [model_file, *external_data_files(model_file)]
    for path in files:
        if not path.is_file():
            raise BackendLoadError(f"{model_file.name} keeps weights in {path.name}, which is missing")
    key = tuple((str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest.hexdigest()
    return digest.hexdigest()


# ---- building ----

_BUILD_SLOTS: dict[int, threading.Lock] = {}
_BUILD_SLOTS_GUARD = threading.Lock()


@contextlib.contextmanager
def gpu_build_slot(device: int, model: str) -> Iterator[None]:
    """One engine build at a time on each GPU of this process (logged when one has to wait)."""
    with _BUILD_SLOTS_GUARD:
        slot = _BUILD_SLOTS.setdefault(device, threading.Lock())
    if not slot.acquire(blocking=False):
        log.info("event=engine_build_queued model=%s gpu=%d reason=%s", model, device, "another build runs on this GPU")
        slot.acquire()
    try:
        yield
    finally:
        slot.release()


def build_plan(model: str, model_file: Path, shapes: Shapes, options: BuildOptions, device: int = 0) -> bytes:
    """Parse the ONNX file and build a serialized engine on ``device``, with one optimization
    profile for the inputs that have dynamic dims (a static network needs none)."""
    trt = libs.trt()
    libs.check(libs.cudart().cudaSetDevice(device), "cudaSetDevice", loading=True)  # the builder uses this thread's
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendLoadError(f"TensorRT cannot parse {model_file.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.builder_optimization_level
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tuple(tensor.shape)):
            dynamic.append(tensor.name)
    if dynamic:
        profile = builder.create_optimization_profile()
        for name in dynamic:
            if name not in shapes:
                raise BackendLoadError(f"input {name!r} has dynamic dims and no profile shapes")
            low, opt, high = shapes[name]
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    _use_timing_cache(config, options.timing_cache)
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
        with locked(options.timing_cache):
            atomic_write(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    plan = bytes(serialized)
    seconds = time.monotonic() - started
    log.info("event=engine_built model=%s gpu=%d seconds=%.1f bytes=%d", model, device, seconds, len(plan))
    return plan


def _use_timing_cache(config: Any, path: Path | None) -> None:
    """Start the build from the timing cache on disk (read under its lock), else from an empty one."""
    data = b""
    if path is not None:
        with locked(path):
            data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False) and data:
        why = "TensorRT refused it (another GPU or version)"
        log.warning("event=timing_cache_ignored path=%s reason=%s", path, why)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def cache_key(digest: str, precision: str, shapes: Shapes, options: BuildOptions, facts: DeviceFacts) -> CacheKey:
    return CacheKey(
        model_sha256=digest,
        tensorrt_version=str(libs.trt().__version__),
        gpu_name=facts.name,
        compute_capability=facts.compute_capability,
        precision=precision,
        profiles=(Profile(dict(shapes)),),
        builder_options=options.as_key(),
    )


def load_or_build(
    model: str,
    model_file: Path,
    key: CacheKey,
    shapes: Shapes,
    options: BuildOptions,
    cache: EngineCache | None,
    device: int,
) -> bytes:
    """The plan of ``key`` from the cache, else built now on ``device`` and cached (a corrupt cached
    plan is rebuilt). Waits for the GPU's build slot, then looks in the cache again: the build it
    waited for may have been this same engine."""
    plan = cache.load(key) if cache is not None else None
    if plan is not None:
        log.info("event=engine_cache_hit model=%s digest=%s", model, key.digest)
        return plan
    with gpu_build_slot(device, model):
        plan = cache.load(key) if cache is not None else None
        if plan is not None:
            log.info("event=engine_cache_hit model=%s digest=%s after=wait", model, key.digest)
            return plan
        log.info(
            "event=engine_build_started model=%s digest=%s precision=%s gpu=%d",
            model,
            key.digest,
            key.precision,
            device,
        )
        plan = build_plan(model, model_file, shapes, options, device)
        if cache is not None:
            try:
                cache.store(key, plan)
            except OSError as exc:  # a cache volume this user cannot write (an NFS or SMB share without fsGroup)
                log.warning(
                    "event=engine_cache_write_failed model=%s digest=%s dir=%s reason=%s next=%s",
                    model,
                    key.digest,
                    cache.directory,
                    str(exc),
                    "serve the engine built, uncached (the next start builds it again)",
                )
    return plan


def profile_shapes(
    inputs: Sequence[TensorInfo], max_batch: int, opt_batch: int, dims: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max of each input. With ``max_batch`` > 0 the first dim is the batch: 1 / ``opt_batch``
    (0: max) / ``max_batch``; the other dynamic dims take the config's ``dims`` (which exclude the
    batch dim), fixed. With ``max_batch`` 0 the model does not batch: every dim is the file's or the
    config's, and min = opt = max. A dim neither fixes is refused, naming the input."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
    batched = max_batch > 0
    for info in inputs:
        fixed = list((dims or {}).get(info.name, []))
        rest_dims = info.shape[1:] if batched else info.shape
        rest = [
            d if d is not None else (fixed[i] if i < len(fixed) and fixed[i] > 0 else None)
            for i, d in enumerate(rest_dims)
        ]
        if any(d is None for d in rest) or (batched and not info.shape):
            raise BackendLoadError(
                f"input {info.name!r} has dynamic dims {tuple(-1 if d is None else d for d in info.shape)}: "
                "give them in config.pbtxt (TensorRT's profile needs a bound for each)"
            )
        tail = tuple(int(d) for d in rest if d is not None)
        if not batched:
            shapes[info.name] = (tail, tail, tail)
            continue
        first = info.shape[0]
        if first is not None:  # a fixed first dim in the file: the profile cannot vary it
            shapes[info.name] = ((first, *tail), (first, *tail), (first, *tail))
            continue
        opt = min(max(1, opt_batch or max_batch), max_batch)
        shapes[info.name] = ((1, *tail), (opt, *tail), (max_batch, *tail))
    return shapes
