"""The FP16 pipeline: convert, check against FP32, accept or refuse with a reason (see DESIGN.md)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tensorgate.backends.fp16.accuracy import DEFAULT_TOLERANCE, AccuracyReport, Tolerance, check_accuracy
from tensorgate.backends.fp16.convert import DEFAULT_BLOCK_OPS, convert_to_fp16
from tensorgate.backends.fp16.errors import Fp16Error
from tensorgate.backends.fp16.graph import FLOAT16, as_model, cast_to
from tensorgate.backends.fp16.samples import default_samples


@dataclass(frozen=True)
class Fp16Result:
    """What :func:`fp16_pipeline` decided. ``model`` is the FP16 model if accepted, else None."""

    accepted: bool
    reason: str
    model: bytes | None = None
    report: AccuracyReport | None = None


def fp16_pipeline(
    model_bytes: bytes,
    samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    *,
    block_ops: Collection[str] = DEFAULT_BLOCK_OPS,
) -> Fp16Result:
    """Convert an FP32 model to FP16, check it against FP32 on ``samples``, and accept or refuse it.

    Never raises for a model it cannot handle: a refusal's ``reason`` says why (conversion failed,
    a model did not run, or which output was out of tolerance and by how much), for the caller to
    log before it keeps FP32. ``samples`` default to :func:`default_samples`.
    """
    try:
        model = as_model(model_bytes)
        fp16_model = convert_to_fp16(model, block_ops)
        if not any(t.data_type == FLOAT16 for t in fp16_model.graph.initializer) and not any(
            cast_to(n) == FLOAT16 for n in fp16_model.graph.node
        ):
            return Fp16Result(False, "FP16 refused: the model has no FP32 computation to convert")
        chosen = default_samples(model) if samples is None else samples
        report = check_accuracy(model, fp16_model, chosen, tolerance)
    except (Fp16Error, ValueError) as exc:
        return Fp16Result(False, f"FP16 refused: {exc}")
    if not report.passed:
        return Fp16Result(False, f"FP16 refused: {report.reason}", report=report)
    return Fp16Result(True, f"FP16 accepted: {report.reason}", model=fp16_model.SerializeToString(), report=report)
