"""The accuracy gate: a candidate's outputs against the reference's, per output, with the reason a
refusal gives (see DESIGN.md, The gate and Tolerance)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from tensorgate.backends.fp16.emulation import fp16_emulation
from tensorgate.backends.fp16.errors import AccuracyCheckError, first_line
from tensorgate.backends.fp16.graph import FLOAT16, as_model, real_inputs
from tensorgate.backends.fp16.samples import FLOAT_TYPES

FP16_MAX = 65504.0


@dataclass(frozen=True)
class Tolerance:
    """How far a candidate's outputs may be from the reference's (see DESIGN.md, Tolerance)."""

    rtol: float = 1e-2
    """Largest allowed ``|cand - ref| / max(|ref|, rms(ref), atol)`` of any element of a float output."""
    atol: float = 1e-4
    """Smallest magnitude errors are measured against (outputs whose RMS is below it)."""
    max_mismatch_fraction: float = 0.0
    """Fraction of elements of an integer, bool or string output allowed to differ."""


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class OutputAccuracy:
    """How one output of the candidate compares with the reference, over all samples."""

    name: str
    elements: int
    max_abs_error: float
    """Largest ``|cand - ref|`` where both are finite (float outputs)."""
    max_rel_error: float
    """Largest ``|cand - ref| / max(|ref|, rms(ref), atol)`` where both are finite (float outputs)."""
    new_nonfinite: int
    """Elements that are inf/NaN in the candidate but finite in the reference."""
    nonfinite_mismatch: int
    """Elements that are inf/NaN in the reference and something else in the candidate."""
    mismatches: int
    """Elements that differ (integer, bool and string outputs)."""
    passed: bool
    detail: str
    """One line: why it failed, or its worst error."""


@dataclass(frozen=True)
class AccuracyReport:
    outputs: tuple[OutputAccuracy, ...]
    samples: int
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def reason(self) -> str:
        """Why it failed (every failing output), or the worst error if it passed."""
        failed = [o for o in self.outputs if not o.passed]
        if failed:
            return "; ".join(o.detail for o in failed)
        if not self.outputs:
            return "no outputs compared"
        worst = max(self.outputs, key=lambda o: o.max_rel_error)
        count = f"{len(self.outputs)} output{'s' if len(self.outputs) != 1 else ''}"
        return f"{count} within tolerance over {self.samples} samples (worst: {worst.detail})"


def _first(sample: int, mask: np.ndarray) -> tuple[tuple[np.intp, ...], str]:
    """The index of the first true element of ``mask``, and that place in words."""
    at = np.unravel_index(int(np.argmax(mask)), mask.shape)
    return at, f"sample {sample} index {list(map(int, at))}"


@dataclass
class _OutputStats:
    name: str
    ref_label: str
    cand_label: str
    tolerance_atol: float
    elements: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    new_nonfinite: int = 0
    first_new_nonfinite: str = ""
    nonfinite_mismatch: int = 0
    first_nonfinite_mismatch: str = ""
    mismatches: int = 0
    first_mismatch: str = ""
    numeric: bool = True
    problems: list[str] = field(default_factory=list)

    def add(self, sample: int, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            self.problems.append(
                f"sample {sample}: shape {list(cand.shape)} in {self.cand_label}, {list(ref.shape)} in {self.ref_label}"
            )
            return
        self.elements += ref.size
        if ref.size == 0:
            return
        if ref.dtype.kind in "fc" and cand.dtype.kind in "fc":
            self._add_float(sample, ref.astype(np.float64), cand.astype(np.float64))
        else:
            self.numeric = False
            differ = np.asarray(ref != cand, dtype=np.bool_)
            count = int(differ.sum())
            if count and not self.mismatches:
                at, where = _first(sample, differ)
                self.first_mismatch = f"{where}: {self.ref_label} {ref[at]!r}, {self.cand_label} {cand[at]!r}"
            self.mismatches += count

    def _add_float(self, sample: int, ref: np.ndarray, cand: np.ndarray) -> None:
        ref_finite = np.isfinite(ref)
        cand_finite = np.isfinite(cand)
        new_nonfinite = ref_finite & ~cand_finite
        if new_nonfinite.any():
            if not self.new_nonfinite:
                at, where = _first(sample, new_nonfinite)
                self.first_new_nonfinite = f"{where}: {self.ref_label} {ref[at]:.6g}, {self.cand_label} {cand[at]}"
            self.new_nonfinite += int(new_nonfinite.sum())
        same_nonfinite = (np.isnan(ref) & np.isnan(cand)) | (np.isinf(ref) & (ref == cand))
        mismatch = ~ref_finite & ~same_nonfinite
        if mismatch.any():
            if not self.nonfinite_mismatch:
                at, where = _first(sample, mismatch)
                self.first_nonfinite_mismatch = f"{where}: {self.ref_label} {ref[at]}, {self.cand_label} {cand[at]:.6g}"
            self.nonfinite_mismatch += int(mismatch.sum())
        both = ref_finite & cand_finite
        if not both.any():
            return
        finite_ref = ref[ref_finite]
        scale = max(self.tolerance_atol, math.sqrt(float(np.mean(np.square(finite_ref)))))
        diff = np.where(both, np.abs(np.where(both, cand, 0.0) - np.where(both, ref, 0.0)), 0.0)
        rel = diff / np.maximum(np.abs(np.where(both, ref, 0.0)), scale)
        self.max_abs = max(self.max_abs, float(diff.max()))
        flat = int(np.argmax(rel))
        if float(rel.flat[flat]) >= self.max_rel:
            self.max_rel = float(rel.flat[flat])
            at = np.unravel_index(flat, ref.shape)
            self.worst = (
                f"sample {sample} index {list(map(int, at))}: {self.ref_label} {ref[at]:.6g}, "
                f"{self.cand_label} {cand[at]:.6g}, |diff| {diff[at]:.3g}, scale {max(abs(ref[at]), scale):.3g}"
            )

    def result(self, tolerance: Tolerance) -> OutputAccuracy:
        name = repr(self.name)
        if self.problems:
            passed, detail = False, f"output {name}: " + "; ".join(self.problems)
        elif self.new_nonfinite:
            passed = False
            detail = (
                f"output {name}: {self.new_nonfinite} of {self.elements} values are inf/NaN in {self.cand_label} "
                f"but finite in {self.ref_label} (first at {self.first_new_nonfinite}): an intermediate value "
                f"overflowed FP16's range (|x| > {FP16_MAX:g})"
            )
        elif self.nonfinite_mismatch:
            passed = False
            detail = (
                f"output {name}: {self.nonfinite_mismatch} of {self.elements} values are inf/NaN in "
                f"{self.ref_label} but differ in {self.cand_label} (first at {self.first_nonfinite_mismatch})"
            )
        elif not self.numeric:
            fraction = self.mismatches / self.elements if self.elements else 0.0
            passed = fraction <= tolerance.max_mismatch_fraction
            detail = f"output {name}: {self.mismatches} of {self.elements} values differ"
            if self.mismatches:
                detail += f" (first at {self.first_mismatch})"
            if not passed:
                detail += f", more than the allowed fraction {tolerance.max_mismatch_fraction:g}"
        else:
            passed = self.max_rel <= tolerance.rtol
            relation = "<=" if passed else ">"
            detail = (
                f"output {name}: max relative error {self.max_rel:.3g} {relation} rtol {tolerance.rtol:g}, "
                f"max abs error {self.max_abs:.3g}"
            )
            if self.worst:
                detail += f" (worst at {self.worst})"
        return OutputAccuracy(
            name=self.name,
            elements=self.elements,
            max_abs_error=self.max_abs,
            max_rel_error=self.max_rel,
            new_nonfinite=self.new_nonfinite,
            nonfinite_mismatch=self.nonfinite_mismatch,
            mismatches=self.mismatches,
            passed=passed,
            detail=detail,
        )


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    *,
    reference_label: str = "FP32",
    candidate_label: str = "FP16",
) -> AccuracyReport:
    """Compare outputs already computed (one mapping per sample; every reference output is compared).

    :func:`check_accuracy` uses it; so can a check of a built engine's outputs against FP32.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference samples but {len(candidate)} candidate samples")
    names = list(reference[0]) if reference else []
    stats = {name: _OutputStats(name, reference_label, candidate_label, tolerance.atol) for name in names}
    for sample, (ref_outputs, cand_outputs) in enumerate(zip(reference, candidate, strict=True)):
        for name in names:
            if name not in cand_outputs:
                stats[name].problems.append(f"sample {sample}: missing from {candidate_label}")
                continue
            stats[name].add(sample, np.asarray(ref_outputs[name]), np.asarray(cand_outputs[name]))
    return AccuracyReport(
        outputs=tuple(s.result(tolerance) for s in stats.values()), samples=len(reference), tolerance=tolerance
    )


def _session(model: onnx.ModelProto, level: ort.GraphOptimizationLevel, what: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind exception types
        raise AccuracyCheckError(f"ONNX Runtime cannot load the {what} model: {first_line(exc)}") from exc


def _run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, dict(feeds))
    except Exception as exc:
        raise AccuracyCheckError(f"ONNX Runtime failed running the {what} model: {first_line(exc)}") from exc
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def _feeds(model: onnx.ModelProto, sample: Mapping[str, np.ndarray], emulated: bool) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for vi in real_inputs(model):
        if vi.name not in sample:
            raise AccuracyCheckError(f"the samples have no value for input {vi.name!r}")
        value = np.asarray(sample[vi.name])
        elem_type = vi.type.tensor_type.elem_type
        if elem_type == FLOAT16:
            value = value.astype(np.float16)
            if emulated:
                value = value.astype(np.float32)
        elif elem_type in FLOAT_TYPES:
            value = value.astype(FLOAT_TYPES[elem_type])
        feeds[vi.name] = value
    return feeds


def check_accuracy(
    reference: onnx.ModelProto | bytes,
    candidate: onnx.ModelProto | bytes,
    samples: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    *,
    emulate_fp16: bool = True,
) -> AccuracyReport:
    """Run both models with ONNX Runtime on the CPU on every sample and compare every output.

    With ``emulate_fp16`` (the default) the candidate runs as :func:`fp16_emulation`, so its FP16
    tensors are rounded and overflow as they would on a GPU; without it, as it is (ONNX Runtime's
    CPU provider then computes most FP16 nodes in FP32, hiding FP16 overflow). Raises
    :class:`AccuracyCheckError` if a model cannot be loaded or run, ValueError if there are no samples.
    """
    if not samples:
        raise ValueError("check_accuracy needs at least one sample")
    ref_model = as_model(reference)
    cand_model = as_model(candidate)
    run_model = fp16_emulation(cand_model) if emulate_fp16 else cand_model
    ref_session = _session(ref_model, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "reference")
    # No optimization: the graph runs as written, every FP16 round trip included.
    cand_session = _session(run_model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "candidate")
    ref_outputs: list[dict[str, np.ndarray]] = []
    cand_outputs: list[dict[str, np.ndarray]] = []
    for sample in samples:
        ref_outputs.append(_run(ref_session, _feeds(ref_model, sample, emulated=False), "reference"))
        cand_outputs.append(_run(cand_session, _feeds(cand_model, sample, emulated=emulate_fp16), "candidate"))
    return compare_outputs(ref_outputs, cand_outputs, tolerance)
