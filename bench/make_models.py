"""Write the batching benchmark's model repository (ONNX models and Triton config.pbtxt files).

    python bench/make_models.py [REPO_DIR] [--models identity,mlp,...]      (default: bench/model_repo)

identity      FP32 [batch, 16] echoed back: pure serving overhead
mlp           FP32 [batch, 256] -> Gemm+Relu 1024 -> Gemm+Relu 1024 -> Gemm 16 (about 5 MB of weights)
mlp_nobatch   the same file, same max_batch_size, no dynamic_batching block (each request runs alone)
cnn           FP32 [batch, 3, 64, 64] -> 3x (Conv 3x3 stride 2 + Relu: 96, 192, 384 channels)
              -> GlobalAveragePool -> Flatten -> Gemm 10 (about 3.3 MB of weights, ~87 M multiply-adds a sample)
cnn_nobatch   the same file without dynamic_batching
cnn_small     (not in the default set) the same layers with 16, 32, 64 channels: ~2.8 M multiply-adds, far
              cheaper than one gRPC request here, so it measures serving overhead, not batching

Every model has max_batch_size 64, one CPU instance, input INPUT0 and output OUTPUT0. Weights come
from a fixed numpy seed, so the files are the same on every run.

Why the CNN is this wide: the target "cnn c16 >= 0.8 x raw ORT at batch 16" only measures the server
when a sample's compute outweighs a request's fixed cost several times over. On the 2-core machine a
request costs at least ~300 core-µs (gRPC server ~150, perf_analyzer client ~150, see
shared/notes/grpc-overhead.md), so the ratio can reach 0.8 only if a sample costs >= ~1.2 core-ms. This
CNN runs ~1,000 samples/s in raw ORT on 2 cores (~2 core-ms a sample); cnn_small runs ~33,000, which no
Python gRPC server can serve one sample per request.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 9  # onnx >= 1.23 writes IR 14 by default, which onnxruntime refuses
OPSET = 17
MAX_BATCH_SIZE = 64
DEFAULT_REPO = Path(__file__).resolve().parent / "model_repo"
INPUT = "INPUT0"
OUTPUT = "OUTPUT0"


@dataclass(frozen=True)
class ModelInfo:
    """What the benchmark needs to know about one model of the repository."""

    name: str
    file: str  # the model whose model.onnx this one serves (itself, or the batching twin)
    input_dims: tuple[int, ...]  # without the batch dimension
    dynamic_batching: bool


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("identity", "identity", (16,), True),
        ModelInfo("mlp", "mlp", (256,), True),
        ModelInfo("mlp_nobatch", "mlp", (256,), False),
        ModelInfo("cnn", "cnn", (3, 64, 64), True),
        ModelInfo("cnn_nobatch", "cnn", (3, 64, 64), False),
        ModelInfo("cnn_small", "cnn_small", (3, 64, 64), True),
    )
}
DEFAULT_MODELS = ("identity", "mlp", "mlp_nobatch", "cnn", "cnn_nobatch")
CNN_CHANNELS = (3, 96, 192, 384)
CNN_SMALL_CHANNELS = (3, 16, 32, 64)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tensorgate-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _weight(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-initialised weights, so activations keep a sensible scale through the layers."""
    weight: np.ndarray = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return weight


def identity_graph() -> onnx.GraphProto:
    shape: list[str | int] = ["batch", 16]
    return helper.make_graph(
        [helper.make_node("Identity", [INPUT], [OUTPUT])],
        "identity",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, shape)],
    )


def mlp_graph(seed: int = 1) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    widths = [256, 1024, 1024, 16]
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    last = INPUT
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        w, b = f"fc{i}.weight", f"fc{i}.bias"
        initializers.append(numpy_helper.from_array(_weight(rng, (n_in, n_out), n_in), w))
        initializers.append(numpy_helper.from_array((rng.standard_normal(n_out) * 0.01).astype(np.float32), b))
        final = i == len(widths) - 2
        gemm_out = OUTPUT if final else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [last, w, b], [gemm_out], name=f"fc{i}"))
        if not final:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}"], name=f"relu{i}"))
            last = f"relu{i}"
    return helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 16])],
        initializer=initializers,
    )


def cnn_graph(channels: tuple[int, ...] = CNN_CHANNELS, seed: int = 2) -> onnx.GraphProto:
    """Conv 3x3 stride 2 + Relu per channel step, global average pool, Gemm to 10 classes."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    last = INPUT
    for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
        w, b = f"conv{i}.weight", f"conv{i}.bias"
        initializers.append(numpy_helper.from_array(_weight(rng, (c_out, c_in, 3, 3), c_in * 9), w))
        initializers.append(numpy_helper.from_array((rng.standard_normal(c_out) * 0.01).astype(np.float32), b))
        nodes.append(
            helper.make_node(
                "Conv",
                [last, w, b],
                [f"conv{i}"],
                name=f"conv{i}",
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        last = f"relu{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [last], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1))
    initializers.append(numpy_helper.from_array(_weight(rng, (channels[-1], 10), channels[-1]), "fc.weight"))
    initializers.append(numpy_helper.from_array(np.zeros(10, dtype=np.float32), "fc.bias"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], [OUTPUT], name="fc"))
    return helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )


def config_text(info: ModelInfo, output_dims: tuple[int, ...]) -> str:
    dims = ", ".join(str(d) for d in info.input_dims)
    out_dims = ", ".join(str(d) for d in output_dims)
    text = f"""name: "{info.name}"
backend: "onnxruntime"
max_batch_size: {MAX_BATCH_SIZE}
input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {out_dims} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
    if info.dynamic_batching:
        text += "dynamic_batching { }\n"
    return text


OUTPUT_DIMS = {"identity": (16,), "mlp": (16,), "cnn": (10,), "cnn_small": (10,)}
GRAPHS: dict[str, Callable[[], onnx.GraphProto]] = {
    "identity": identity_graph,
    "mlp": mlp_graph,
    "cnn": cnn_graph,
    "cnn_small": lambda: cnn_graph(CNN_SMALL_CHANNELS),
}


def model_file(repo: Path, name: str) -> Path:
    return repo / name / "1" / "model.onnx"


def build(repo: Path = DEFAULT_REPO, models: list[str] | None = None) -> Path:
    """Write (or rewrite) the repository; returns it. ``models`` limits which models are written."""
    wanted = [MODELS[m] for m in (models or DEFAULT_MODELS)]
    written: dict[str, Path] = {}
    for info in wanted:
        target = model_file(repo, info.name)
        if info.file not in written:
            own = info.file == info.name
            source = model_file(repo, info.file) if own else repo / ".build" / info.file / "model.onnx"
            _save(GRAPHS[info.file](), source)
            written[info.file] = source
        if written[info.file] != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(written[info.file], target)
        (repo / info.name / "config.pbtxt").write_text(config_text(info, OUTPUT_DIMS[info.file]))
    shutil.rmtree(repo / ".build", ignore_errors=True)
    for name in set(MODELS) - {m.name for m in wanted}:  # only our own models, nothing else in the directory
        shutil.rmtree(repo / name, ignore_errors=True)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", nargs="?", type=Path, default=DEFAULT_REPO, help="repository directory to write")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    args = parser.parse_args()
    repo = build(args.repo, [m for m in args.models.split(",") if m])
    for path in sorted(repo.glob("*/1/model.onnx")):
        print(f"{path.relative_to(repo)}  {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
