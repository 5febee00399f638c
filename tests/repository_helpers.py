"""Models and client calls shared by the repository tests (test_repository.py, test_model_control.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import index_of
from models import save, write_config
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

GARBAGE = b"\x08\x07garbage, not an ONNX file\xff\xfe" * 32
BAD_NAMES = ["../outside", "..", ".", "a/1", "a/../a", "/etc", "/tmp", ".hidden", "", " a", "a\n", "a\x00", "~"]
POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "0.5")
EXPLICIT = ("--model-control-mode", "explicit")
SIZE = 4


def add_const(path: Path, value: float, size: int = SIZE, work: int = 0) -> Path:
    """FP32 [batch, size] -> INPUT0 + value. ``work`` > 0 adds that many MatMuls whose result is
    multiplied by zero: the same answer, more time per request."""
    nodes = [helper.make_node("Add", ["INPUT0", "c"], ["sum" if work else "OUTPUT0"])]
    inits = [numpy_helper.from_array(np.full((size,), value, np.float32), "c")]
    if work:
        w = (np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros((size,), np.float32), "zero")]
        last = "INPUT0"
        for i in range(work):
            nodes.append(helper.make_node("MatMul", [last, "w"], [f"h{i}"]))
            last = f"h{i}"
        nodes += [helper.make_node("Mul", [last, "zero"], ["z"]), helper.make_node("Add", ["sum", "z"], ["OUTPUT0"])]
    graph = helper.make_graph(
        nodes,
        "add_const",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", size])],
        initializer=inits,
    )
    return save(graph, path)


def model_with_versions(model_dir: Path, *numbers: int, config: str | None = None) -> Path:
    """Version n adds n, so an answer says which version computed it."""
    for n in numbers:
        add_const(model_dir / str(n) / "model.onnx", float(n))
    if config is not None:
        write_config(model_dir, config)
    return model_dir


def full_config(name: str, dtype: str = "TYPE_FP32", dims: str = str(SIZE), input_name: str = "INPUT0") -> str:
    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        f'input [ {{ name: "{input_name}" data_type: {dtype} dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
    )


def publish(tmp_path: Path, target: Path, build: Callable[[Path], object]) -> None:
    """Build a file or directory beside the repository, then rename it into place at once."""
    staging = Path(tempfile.mkdtemp(dir=tmp_path)) / target.name
    build(staging)
    os.replace(staging, target)


def infer(
    client: grpcclient.InferenceServerClient,
    name: str,
    version: str = "",
    rows: int = 2,
    size: int = SIZE,
    timeout: float = 30.0,
) -> tuple[float, str]:
    """(the constant the model added, the version that answered)."""
    x = np.arange(rows * size, dtype=np.float32).reshape(rows, size)
    tensor = grpcclient.InferInput("INPUT0", [rows, size], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(name, [tensor], model_version=version, client_timeout=timeout)
    added = np.unique(result.as_numpy("OUTPUT0") - x)
    assert added.size == 1, added
    return float(added[0]), result.get_response().model_version


def error_of(call: Callable[..., object], *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def status(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


def states(client: grpcclient.InferenceServerClient, name: str) -> set[str]:
    return {state for _, state, _ in index_of(client).get(name, [])}
