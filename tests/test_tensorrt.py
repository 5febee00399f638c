"""What of the TensorRT backend runs without TensorRT: the lazy imports and the profile shapes.
Building and running engines needs TensorRT on a GPU (the GPU image): tests/test_gpu.py, skipped
without it; tests/test_tensorrt_contract.py checks our calls against a stand-in of the libraries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tensorgate.backends import tensorrt as trt_backend
from tensorgate.backends.base import BackendLoadError, TensorInfo


def test_module_imports_without_tensorrt_and_says_what_is_missing() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(BackendLoadError, match="tensorrt is not installed"):
        trt_backend.build_plan("m", Path("model.onnx"), {}, trt_backend.BuildOptions())


def test_profile_over_the_batch_dimension() -> None:
    inputs = [TensorInfo("x", 1, (None, 3, 64, 64)), TensorInfo("ids", 7, (None, None))]
    shapes = trt_backend.profile_shapes(inputs, max_batch=32, opt_batch=8, dims={"ids": [128]})
    assert shapes["x"] == ((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))
    assert shapes["ids"] == ((1, 128), (8, 128), (32, 128))


def test_unbounded_dims_are_refused_with_the_input_named() -> None:
    with pytest.raises(BackendLoadError, match="'ids'"):
        trt_backend.profile_shapes([TensorInfo("ids", 7, (None, None))], max_batch=4, opt_batch=4)


def test_profile_opt_is_the_preferred_batch_within_bounds() -> None:
    x = [TensorInfo("x", 1, (None, 4))]
    assert trt_backend.profile_shapes(x, max_batch=8, opt_batch=0)["x"] == ((1, 4), (8, 4), (8, 4))
    assert trt_backend.profile_shapes(x, max_batch=8, opt_batch=32)["x"] == ((1, 4), (8, 4), (8, 4))


def test_a_model_that_does_not_batch_gets_its_own_fixed_shape() -> None:
    inputs = [TensorInfo("img", 1, (3, None, None)), TensorInfo("k", 7, (1,))]
    shapes = trt_backend.profile_shapes(inputs, max_batch=0, opt_batch=0, dims={"img": [3, 224, 224]})
    assert shapes == {"img": ((3, 224, 224),) * 3, "k": ((1,),) * 3}
    with pytest.raises(BackendLoadError, match=r"'img' has dynamic dims \(3, -1, -1\)"):
        trt_backend.profile_shapes(inputs, max_batch=0, opt_batch=0, dims={"img": [3, -1, -1]})


def test_a_fixed_first_dim_is_not_varied() -> None:
    shapes = trt_backend.profile_shapes([TensorInfo("x", 1, (1, 4))], max_batch=8, opt_batch=4)
    assert shapes["x"] == ((1, 4), (1, 4), (1, 4))
