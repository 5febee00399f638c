"""What of the TensorRT backend runs without TensorRT: the lazy imports and the profile shapes.
Building and running engines needs TensorRT on a GPU (the GPU image); those tests are in test_gpu.py's
spirit and skip without it."""

from __future__ import annotations

import importlib.util

import pytest
from tensorgate.backends import tensorrt as trt_backend
from tensorgate.backends.base import BackendLoadError, TensorInfo


def test_module_imports_without_tensorrt_and_says_what_is_missing() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(BackendLoadError, match="tensorrt is not installed"):
        trt_backend.build_plan("m", b"", {}, trt_backend.BuildOptions())


def test_profile_over_the_batch_dimension() -> None:
    inputs = [TensorInfo("x", 1, (None, 3, 64, 64)), TensorInfo("ids", 7, (None, None))]
    shapes = trt_backend.profile_shapes(inputs, max_batch=32, opt_batch=8, dims={"ids": [128]})
    assert shapes["x"] == ((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))
    assert shapes["ids"] == ((1, 128), (8, 128), (32, 128))


def test_unbounded_dims_are_refused_with_the_input_named() -> None:
    with pytest.raises(BackendLoadError, match="'ids'"):
        trt_backend.profile_shapes([TensorInfo("ids", 7, (None, None))], max_batch=4, opt_batch=4)
