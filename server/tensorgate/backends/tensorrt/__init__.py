"""TensorRT engines: build (strongly typed, optimization profile over the batch, timing cache,
workspace limit, one build at a time per GPU, progress logged), cache on disk, and run: one engine
per model version and GPU shared by its instances, each with its own execution context and
non-blocking CUDA stream.

NOT YET RUN ON A GPU: TensorRT cannot be installed on the development machines (PyPI holds only
stubs that download from NVIDIA). What runs here: the profile arithmetic, the cache and its locks,
and tests/test_tensorrt_contract.py, which drives this package through a recording stand-in of the
``tensorrt`` and ``cuda`` modules written from NVIDIA's documentation (it checks our calls, not a
GPU). ``tensorrt`` and ``cuda-python`` are imported inside functions only (``libs``), so a CPU
install never needs them. API names follow TensorRT 10.x/11.x's Python API and cuda-python's
runtime bindings.

Modules: ``cache`` (the on-disk engine cache, its key, atomic writes and locks), ``build`` (building
a plan, or loading it from the cache), ``engine`` (the shared engine and one instance's context,
stream and buffers), ``loader`` (the adapter the repository calls), ``libs`` (the lazy imports).
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
