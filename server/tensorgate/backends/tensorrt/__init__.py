"""TensorRT engines: build (strongly typed, optimization profile over the batch, timing cache,
workspace limit, progress logged), cache on disk, and run with one CUDA stream per instance.

NOT YET RUN: TensorRT cannot be installed on the development machines (PyPI holds only stubs that
download from NVIDIA) nor on the GPU machine lent so far; the GPU image installs it. So nothing here
has executed; the repository does not register this loader yet (engines.py reports TensorRT as not
built). ``tensorrt`` and ``cuda-python`` are imported inside functions only (``libs``), so a CPU
install never needs them. API names follow TensorRT 10.x/11.x's Python API and cuda-python's runtime
bindings.

Modules: ``cache`` (the on-disk engine cache and its key), ``build`` (building a plan, or loading it
from the cache), ``engine`` (running one), ``libs`` (the lazy imports).
"""

from __future__ import annotations

from tensorgate.backends.tensorrt.build import BuildOptions, build_plan, cache_key, load_or_build, profile_shapes
from tensorgate.backends.tensorrt.cache import CacheKey, EngineCache, Profile, Shapes
from tensorgate.backends.tensorrt.engine import TensorRTBackend

__all__ = [
    "BuildOptions",
    "CacheKey",
    "EngineCache",
    "Profile",
    "Shapes",
    "TensorRTBackend",
    "build_plan",
    "cache_key",
    "load_or_build",
    "profile_shapes",
]
