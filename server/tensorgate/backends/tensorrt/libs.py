"""``tensorrt`` and ``cuda-python``, imported when first needed (a CPU install has neither)."""

from __future__ import annotations

from typing import Any

from tensorgate.backends.base import BackendExecuteError, BackendLoadError


def trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendLoadError(f"tensorrt is not installed ({exc}); the GPU image has it") from None
    return tensorrt


def cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise BackendLoadError(f"cuda-python is not installed ({exc}); install tensorgate[gpu]") from None
    return runtime


def check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendExecuteError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)
