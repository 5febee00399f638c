"""PyTriton serving the bench's models: NVIDIA's Python-first way to put a Python function behind Triton.

    <triton venv>/bin/python bench/pytriton_server.py ONNX_REPO GRPC_PORT HTTP_PORT MODEL [MODEL ...]

One of bench/run.py's Triton peers (bench/triton_python.py starts it with the interpreter of
scripts/install_triton_python.sh, which has PyTriton): Triton's C++ frontend and dynamic batcher, its Python
backend stub as a proxy, and each batch handed over shared memory to an ``@batch`` function in this process that
runs the model's ONNX file in ONNX Runtime with tensorgate's session settings (all graph optimizations, intra-op
threads = cores, no spinning). Same max_batch_size (64) and dims as the bench's config.pbtxt files. Stops on
SIGTERM like the other servers of the bench.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


def dims(config: str, section: str) -> tuple[int, ...]:
    """The dims of the config.pbtxt's first ``input`` or ``output``."""
    block = re.search(section + r" \[ \{.*?dims: \[([^\]]*)\]", config)
    if block is None:
        raise ValueError(f"no {section} dims in the config")
    return tuple(int(d) for d in block[1].split(","))


def infer_function(model_file: Path) -> Callable[..., dict[str, np.ndarray]]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])

    @batch
    def infer(INPUT0: np.ndarray) -> dict[str, np.ndarray]:  # the model's input name
        (result,) = session.run(["OUTPUT0"], {"INPUT0": INPUT0})
        return {"OUTPUT0": result}

    return infer


def stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # leaves Triton's context: PyTriton stops its tritonserver


def main(argv: list[str]) -> None:
    repo, grpc_port, http_port, models = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3:]
    signal.signal(signal.SIGTERM, stop)
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=grpc_port, http_address="127.0.0.1",
                          http_port=http_port, allow_metrics=False)  # fmt: skip
    # No access token: perf_analyzer reads the statistics endpoint, which PyTriton guards by default.
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        for name in models:
            text = (repo / name / "config.pbtxt").read_text()
            triton.bind(
                model_name=name,
                infer_func=infer_function(repo / name / "1" / "model.onnx"),
                inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=dims(text, "input"))],
                outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=dims(text, "output"))],
                config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
            )
        with contextlib.suppress(KeyboardInterrupt):
            triton.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
