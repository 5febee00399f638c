"""The FP16 step before an engine build: convert, check against FP32, and pick the model file.

TensorRT engines are strongly typed, so FP16 must be in the ONNX graph. Before a candidate engine
that asks for FP16 is built, the FP32 model is converted (backends/fp16/) and its outputs are
compared with FP32 on the model's warmup data (or random data in each input's range). Accepted:
the FP16 graph is written next to the engine cache and built. Refused: the engine is built in
FP32, the reason is logged and ``tensorgate_fp16_gate_total`` counts every verdict. No silent FP16 loss.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tensorgate.backends.base import Precision
from tensorgate.metrics.events import FP16_GATE
from tensorgate.repository.engine_plan import Candidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildInput:
    """What an engine build starts from: the model file (the FP16 graph once accepted) and the
    candidate with the precision it gets."""

    model_file: Path
    candidate: Candidate


def prepare(
    name: str,
    version: int,
    model_file: Path,
    candidate: Candidate,
    samples: Sequence[Mapping[str, np.ndarray]] | None,
    cache_dir: Path,
    rtol: float,
) -> BuildInput:
    """What to build ``candidate`` from."""
    if candidate.precision is not Precision.FP16:
        return BuildInput(model_file, candidate)
    from tensorgate.backends import fp16  # needs onnx: only GPU installs (the [gpu] extra) get here

    if _has_external_data(model_file):
        # The FP16 pipeline converts an in-memory model: weights kept beside the file (every model
        # over 2 GB) would not come along. Build FP32 from the file itself rather than lose them.
        why = "the model keeps its weights as external data, which the FP16 conversion does not handle yet"
        return _refused(name, version, model_file, candidate, why)
    tolerance = fp16.Tolerance(rtol=rtol)
    original = model_file.read_bytes()
    digest = hashlib.sha256(original + repr(tolerance).encode()).hexdigest()[:24]
    target = cache_dir / "fp16" / name / str(version) / f"{digest}.onnx"
    if target.is_file():
        log.info("event=fp16_reused model=%s version=%d path=%s", name, version, target)
        return BuildInput(target, candidate)
    result = fp16.fp16_pipeline(original, samples, tolerance)
    if not result.accepted or result.model is None:
        return _refused(name, version, model_file, candidate, result.reason)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(result.model)
    os.replace(tmp, target)
    FP16_GATE.labels(name, str(version), "accepted").inc()
    log.info("event=fp16_accepted model=%s version=%d detail=%s", name, version, result.reason)
    return BuildInput(target, candidate)


def _refused(name: str, version: int, model_file: Path, candidate: Candidate, reason: str) -> BuildInput:
    """FP16 refused: counted, logged with why, and the engine built in FP32 from the file itself."""
    FP16_GATE.labels(name, str(version), "refused").inc()
    log.warning(
        "event=fp16_refused model=%s version=%d engine=%s reason=%s keeps=fp32",
        name,
        version,
        candidate.engine.value,
        reason,
    )
    return BuildInput(model_file, replace(candidate, precision=Precision.FP32))


def _has_external_data(model_file: Path) -> bool:
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
