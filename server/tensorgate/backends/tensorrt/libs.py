"""``tensorrt`` and ``cuda-python``, imported when first needed (a CPU install has neither)."""

from __future__ import annotations

import importlib.util
from typing import Any

from tensorgate.backends.base import BackendExecuteError, BackendLoadError

TENSORRT_MISSING = "tensorrt is not installed (the GPU image has it; PyPI's wheels are stubs that download from NVIDIA)"
CUDA_PYTHON_MISSING = "cuda-python is not installed (install tensorgate[gpu])"


def _findable(name: str) -> bool:
    """Whether ``name`` could be imported, without importing it (its parent packages aside)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or blocked in sys.modules
        return False


def missing() -> str | None:
    """Why this install cannot run TensorRT engines (None: tensorrt and cuda-python are there).
    Cheap: finds the packages without importing them."""
    if not _findable("tensorrt"):
        return TENSORRT_MISSING
    if not (_findable("cuda.bindings.runtime") or _findable("cuda.cudart")):
        return CUDA_PYTHON_MISSING
    return None


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


def check(result: Any, what: str = "", loading: bool = False) -> Any:
    """cuda-python returns (error, value...) tuples; raise on error, return the value(s). ``loading``:
    the call belongs to loading an instance (a BackendLoadError), else to running a batch."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        error = BackendLoadError if loading else BackendExecuteError
        raise error(f"CUDA error {getattr(err, 'name', err)}" + (f" in {what}" if what else ""))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
