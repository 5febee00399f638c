"""The model.py of bench/run.py's Triton peer: a Triton Python-backend model that runs an ONNX file in ONNX Runtime.

Copied as ``<model>/1/model.py`` into the Triton repository bench/triton_python.py writes; it runs inside Triton's
Python backend stub (an interpreter of its own, which imports ``triton_python_backend_utils``), not in the bench.
It is what a Triton user who serves a model from Python writes, done well: Triton's dynamic batcher hands
``execute`` every request of a batch at once, and they run as one ONNX Runtime call on their inputs joined
along the batch axis, the answer split back by each request's rows. The session has tensorgate's default ONNX
Runtime settings (all graph optimizations, intra-op threads = cores / instances, no spinning), so that the two
servers differ in how they serve, not in the engine. The ONNX file and the thread count come from the config's
``parameters``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend stub


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(parameters["intra_op_threads"]["string_value"])
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            parameters["onnx_file"]["string_value"], sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        (result,) = self.session.run([self.output], {self.input: batch})
        responses, start = [], 0
        for array in arrays:
            rows = array.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, result[start : start + rows])]))
            start += rows
        return responses
