"""FP32 ONNX -> mixed-precision FP16 ONNX, and the accuracy gate that decides whether to use it.

TensorRT 11 builds strongly typed networks only, so FP16 is written into the ONNX graph before the
engine is built. This package does that, and checks the result, on the CPU with ONNX Runtime; it
imports nothing of the server (only numpy, onnx and onnxruntime)::

    FP32 model --convert_to_fp16--> FP16 model --check_accuracy (vs FP32, on samples)--> accept | refuse

:func:`fp16_pipeline` runs it; a refusal carries a reason for the caller to log before it keeps the
FP32 model. Why it converts, blocks, emulates and measures as it does: ``DESIGN.md`` beside this file.

Modules: ``graph`` (graph walks and edits), ``convert`` (the conversion and its block list),
``emulation`` (FP16 emulated in FP32 for the CPU), ``samples`` (random inputs), ``accuracy`` (the
gate and its reports), ``pipeline`` (all of it, accept or refuse), ``errors``.
"""

from __future__ import annotations

from tensorgate.backends.fp16.accuracy import (
    DEFAULT_TOLERANCE,
    FP16_MAX,
    AccuracyReport,
    OutputAccuracy,
    Tolerance,
    check_accuracy,
    compare_outputs,
)
from tensorgate.backends.fp16.convert import DEFAULT_BLOCK_OPS, convert_to_fp16
from tensorgate.backends.fp16.emulation import fp16_emulation
from tensorgate.backends.fp16.errors import AccuracyCheckError, Fp16ConversionError, Fp16Error
from tensorgate.backends.fp16.graph import FLOAT, FLOAT16
from tensorgate.backends.fp16.pipeline import Fp16Result, fp16_pipeline
from tensorgate.backends.fp16.samples import default_samples, sample_inputs

__all__ = [
    "DEFAULT_BLOCK_OPS",
    "DEFAULT_TOLERANCE",
    "FLOAT",
    "FLOAT16",
    "FP16_MAX",
    "AccuracyCheckError",
    "AccuracyReport",
    "Fp16ConversionError",
    "Fp16Error",
    "Fp16Result",
    "OutputAccuracy",
    "Tolerance",
    "check_accuracy",
    "compare_outputs",
    "convert_to_fp16",
    "default_samples",
    "fp16_emulation",
    "fp16_pipeline",
    "sample_inputs",
]
