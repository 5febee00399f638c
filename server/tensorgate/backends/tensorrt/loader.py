"""The TensorRT loader adapter: what the repository calls to load one instance of a model version
on TensorRT (``backends.loaders()`` registers it where tensorrt and cuda-python are installed).

For each instance: the optimization profile from the model's inputs and the options' batch bounds,
the cache key (model and external-data bytes, TensorRT version, GPU, precision, profile, builder
options), then the engine: already deserialised for another instance of the version on this GPU
(shared), else from the engine cache, else built (one build at a time per GPU) and cached. Each
instance gets its own execution context, stream and buffers over the shared engine.
"""

from __future__ import annotations

from pathlib import Path

from tensorgate.backends.base import BackendLoadError, BackendOptions
from tensorgate.backends.tensorrt import engine, libs
from tensorgate.backends.tensorrt.build import (
    BuildOptions,
    cache_key,
    device_facts,
    load_or_build,
    model_digest,
    onnx_inputs,
    profile_shapes,
)
from tensorgate.backends.tensorrt.cache import EngineCache
from tensorgate.backends.tensorrt.engine import TensorRTBackend


def build_options(options: BackendOptions, timing_cache: Path | None) -> BuildOptions:
    return BuildOptions(
        workspace_bytes=options.workspace_bytes,
        timing_cache=timing_cache,
        builder_optimization_level=options.builder_optimization_level,
    )


def load(model_file: Path, options: BackendOptions) -> TensorRTBackend:
    device = options.device_index
    if device is None:
        raise BackendLoadError(f"TensorRT runs on a GPU, not on {options.device!r}")
    missing = libs.missing()
    if missing:
        raise BackendLoadError(missing)
    try:
        inputs = onnx_inputs(model_file)
    except ImportError as exc:
        raise BackendLoadError(f"onnx is not installed ({exc}); install tensorgate[gpu]") from None
    shapes = profile_shapes(inputs, options.max_batch_size, options.opt_batch_size, dict(options.dims))
    facts = device_facts(device)
    cache_dir = options.cache_dir
    version = str(libs.trt().__version__)
    timing = cache_dir / f"timing-{version}-{facts.slug}.cache" if cache_dir is not None else None
    build = build_options(options, timing)
    key = cache_key(model_digest(model_file), options.precision.value, shapes, build, facts)
    cache = EngineCache(cache_dir) if cache_dir is not None else None
    model = options.model or model_file.stem

    def plan() -> bytes:
        return load_or_build(model, model_file, key, shapes, build, cache, device)

    return TensorRTBackend(engine.acquire(key.digest, device, plan))
